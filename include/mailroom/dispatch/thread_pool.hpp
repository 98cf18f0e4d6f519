#pragma once
/// The thread_pool dispatcher: N worker threads taking turns on the FIFO queues of their bound
/// contexts. Its params, its handle and its factory.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mailroom::thread_pool {

/// Which contexts of a thread pool keep FIFO order among themselves.
enum class fifo : std::uint8_t {
    cooperation,  ///< all agents of one cooperation share one queue: never run in parallel
    agent,        ///< each agent (or session) has its own queue: they may run in parallel
};

/// How the dispatcher runs.
struct params {
    /// Worker threads; 0 means one per hardware thread.
    std::size_t threads = 0;
    /// The FIFO unit of bind(); bind_fifo says it per binder.
    fifo order = fifo::cooperation;
    /// Demands a worker handles from one queue before moving on to the next ready queue.
    std::size_t max_demands_at_once = 16;
    /// Bounded spin before a worker parks.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long a handler may run before it is reported, and what follows.
    watchdog_params watchdog{};
};

/// A thread_pool dispatcher. Any thread may use it.
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "thread_pool";

    using kind_handle::kind_handle;
    // bind(): a binder with the dispatcher's own FIFO order, params::order (inherited).

    /// A binder with its own FIFO order. Raises usage_error on an empty handle.
    binder bind_fifo(fifo order) const;
};

/// Adds a thread_pool dispatcher named `name` to `host` (an environment) and starts its
/// threads. Raises duplicate_name_error when the name is taken, environment_stopped_error when
/// the environment is stopping. Any thread.
MAILROOM_EXPORT handle make_dispatcher(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace mailroom::thread_pool
