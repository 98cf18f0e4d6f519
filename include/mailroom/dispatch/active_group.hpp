#pragma once
/// The active_group dispatcher: a worker thread per named group, started with the group's first
/// context and stopped with its last. Its params, its handle and its factory.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace mailroom::active_group {

/// How the dispatcher runs.
struct params {
    /// Bounded spin before a worker parks.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long a handler may run before it is reported, and what follows.
    watchdog_params watchdog{};
};

/// An active_group dispatcher. Any thread may use it.
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "active_group";

    using kind_handle::kind_handle;

    /// A binder to the group named `group`: the contexts it binds share the group's thread.
    /// Raises binding_error naming the dispatcher when `group` is empty (and, as every binder
    /// does, when a context is bound after the dispatcher was shut down); usage_error on an
    /// empty handle.
    binder bind_group(std::string group) const;
    /// A context on an active_group dispatcher needs a group: use bind_group.
    binder bind() const = delete;
};

/// Adds an active_group dispatcher named `name` to `host` (an environment); it starts no thread
/// until a group gets its first context. Raises duplicate_name_error when the name is taken,
/// environment_stopped_error when the environment is stopping. Any thread.
MAILROOM_EXPORT handle make_dispatcher(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace mailroom::active_group
