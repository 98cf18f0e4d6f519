#pragma once
/// The event_loop_pool dispatcher: N threads, each running an epoll loop that runs the demands
/// (messages, posted calls, timer fires) of the contexts pinned to it and calls back the fd
/// watchers of those contexts when their fds are ready. Its params, its handle and its factory.
/// See docs/event-loops.md.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::event_loop_pool {

/// How the dispatcher runs.
struct params {
    /// Loop threads; 0 means one per hardware thread.
    std::size_t threads = 1;
    /// Bounded spin on the loop's mailbox before a loop sleeps in epoll_wait.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long a message handler, posted call, timer callback or fd
    /// callback may run on a loop before it is reported, and what follows.
    watchdog_params watchdog{};
};

/// Counters of one loop thread (besides its worker_stats in dispatcher_stats::workers).
struct loop_stats {
    std::size_t contexts = 0;          ///< contexts pinned to this loop
    std::size_t fds_watched = 0;       ///< fds in its epoll set now
    std::uint64_t fd_callbacks = 0;    ///< readiness callbacks run
    std::uint64_t cycles = 0;          ///< loop iterations that found work
    std::uint64_t busy_ns = 0;         ///< time spent in those iterations (cycle time = busy_ns / cycles)
    std::uint64_t max_cycle_ns = 0;    ///< the longest such iteration
};

/// An event_loop_pool dispatcher. Any thread may use it.
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "event_loop_pool";

    using kind_handle::kind_handle;
    // bind(): each context bound through it is pinned to the loop with the fewest contexts
    // (the lowest index among equals) for its whole life (inherited).

    /// A binder that pins every context bound through it to loop `index` (below the thread
    /// count; otherwise binding_error naming the dispatcher).
    binder bind_loop(std::size_t index) const;

    /// One entry per loop thread. Any thread.
    std::vector<loop_stats> loops() const;
};

/// Adds an event_loop_pool dispatcher named `name` to `host` (an environment) and starts its
/// loop threads. Raises duplicate_name_error when the name is taken, environment_stopped_error
/// when the environment is stopping, mailroom::error when epoll or eventfd cannot be created.
/// Any thread.
MAILROOM_EXPORT handle make_dispatcher(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace mailroom::event_loop_pool
