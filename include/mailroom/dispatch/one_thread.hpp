#pragma once
/// The one_thread dispatcher: one worker thread shared by every context bound to it. Its
/// params, its handle and its factory.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace mailroom::one_thread {

/// How the dispatcher runs.
struct params {
    /// Bounded spin before the worker parks.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long a handler may run before it is reported, and what follows.
    watchdog_params watchdog{};
};

/// A one_thread dispatcher. Any thread may use it.
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "one_thread";

    using kind_handle::kind_handle;
    // bind(): a binder to the one worker (inherited).
};

/// Adds a one_thread dispatcher named `name` to `host` (an environment) and starts its thread.
/// Raises duplicate_name_error when the name is taken, environment_stopped_error when the
/// environment is stopping. Any thread.
MAILROOM_EXPORT handle make_dispatcher(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace mailroom::one_thread
