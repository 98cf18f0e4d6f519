#pragma once
/// The active_obj dispatcher: a worker thread per bound context, started at binding and stopped
/// when the context is gone. Its params, its handle and its factory.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace mailroom::active_obj {

/// How the dispatcher runs.
struct params {
    /// Bounded spin before a worker parks.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long a handler may run before it is reported, and what follows.
    watchdog_params watchdog{};
};

/// An active_obj dispatcher. Any thread may use it.
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "active_obj";

    using kind_handle::kind_handle;
    // bind(): a binder that gives each context it binds a thread of its own (inherited).
};

/// Adds an active_obj dispatcher named `name` to `host` (an environment); it starts no thread
/// until a context is bound. Raises duplicate_name_error when the name is taken,
/// environment_stopped_error when the environment is stopping. Any thread.
MAILROOM_EXPORT handle make_dispatcher(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace mailroom::active_obj
