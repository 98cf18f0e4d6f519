#pragma once
/// The environment: the container that owns dispatchers, the timer service, cooperations and
/// named mboxes. Several independent environments may live in one process.

#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom {

namespace internal {
class env_core;
struct handle_access;
}  // namespace internal

/// What happens when an agent's handler throws.
enum class exception_policy : std::uint8_t {
    inherit,          ///< take the cooperation's policy, then the environment's
    abort,            ///< log the exception and abort the process
    deregister_coop,  ///< log it and deregister the agent's cooperation (reason: handler_exception)
    log_and_continue, ///< log it, count it, and go on with the next message
};

/// What the environment does when, while it is torn down, a handler runs past
/// `environment_options::teardown_deadline`. A handler cannot be interrupted safely, so the
/// choice is between waiting (teardown stays synchronous: nothing is freed under a running
/// handler) and ending the process.
enum class overrun_policy : std::uint8_t {
    report_and_wait,  ///< report it, again at 2x, 4x, ... the deadline, and keep waiting
    abort,            ///< report it, then abort the process (for a supervisor to restart it)
};

/// A handler that had not returned `teardown_deadline` after the teardown began waiting.
struct handler_overrun {
    std::string dispatcher;             ///< the dispatcher's name
    std::size_t worker = 0;             ///< the worker's index in the dispatcher
    std::string context;                ///< "agent 'name' of cooperation 'coop'", "session 'name'", or "unknown"
    std::string message_type;           ///< readable; "timer callback", "posted call", or "" when unknown
    std::chrono::nanoseconds running_for{};  ///< at least this long (measured by the watcher)
    /// The run-time watchdog had reported this handler's stall: the text refers to it, and the
    /// teardown watch does not repeat it (the watchdog's reports go on).
    bool stall_reported = false;
    std::string text;                   ///< the line that was logged
};

/// What a teardown did: returned by environment::join().
struct teardown_report {
    std::chrono::nanoseconds took{};             ///< from the start of join() to its end
    std::uint64_t messages_discarded = 0;        ///< messages still queued when the dispatchers stopped
    std::uint64_t callbacks_discarded = 0;       ///< callbacks (timer fires, posted calls, inbox deliveries) still queued then
    std::vector<handler_overrun> overruns;       ///< handlers that ran past the deadline
};

struct environment_options {
    /// Names the environment in errors and logs.
    std::string name = "env";
    /// The default dispatcher (one_thread, named "default").
    one_thread::params default_dispatcher{};
    /// Resolution of the timer wheel.
    std::chrono::nanoseconds timer_tick = std::chrono::milliseconds(1);
    /// The policy of agents and cooperations that say `inherit`.
    exception_policy on_exception = exception_policy::abort;
    /// Where errors are logged (handler exceptions, discarded messages); stderr when empty.
    /// Called from any thread, possibly concurrently.
    std::function<void(std::string_view)> log{};
    /// How long the teardown waits for a running handler before it reports it (the dispatcher,
    /// worker, agent or session, message type and time); zero: never report.
    std::chrono::nanoseconds teardown_deadline = std::chrono::seconds(5);
    /// What follows the report (see overrun_policy).
    overrun_policy on_teardown_overrun = overrun_policy::report_and_wait;
    /// Called with each report, on the watching thread, before the policy applies.
    std::function<void(const handler_overrun&)> on_overrun{};
    /// Called once, with the report, when the teardown has completed: every thread the
    /// environment started has been joined and its cooperations and sessions are gone. Runs on
    /// the thread that completed the teardown: the one in join() or the destructor, or, when
    /// the environment was destroyed on one of its own threads, the teardown thread started for
    /// it (which ends right after). The environment object may be gone by then: use the report.
    std::function<void(const teardown_report&)> on_stopped{};
    /// The signal through which the run-time watchdog asks a stalled worker for its stack
    /// (docs/watchdog.md). Its handler is installed process-wide the first time it is needed,
    /// unless the program handles that signal itself (then reports say so and carry no stack);
    /// choose another (a real-time signal, SIGRTMIN + n) when the program uses SIGURG. Zero: no
    /// stacks. The dispatchers' timeouts and actions are in their params (`watchdog`).
    int watchdog_signal = SIGURG;
};

/// One dispatcher in the environment's snapshot: what `dispatcher::stats()` says of every kind
/// (threads, bound contexts, queue depth, each worker, the run-time watchdog's stalls) and the
/// figures of its kind, read from what its threads already publish (docs/env.md, "Statistics").
struct dispatcher_figures : dispatcher_stats {
    /// An event_loop_pool's loops, one entry per loop thread, as `event_loop_pool::handle::loops()`
    /// gives them: contexts pinned, fds watched now, fd callbacks run, cycles, their summed and
    /// longest time. Empty for the other kinds.
    std::vector<event_loop_pool::loop_stats> loops;
    /// A job queue's snapshot, as `job_queue::handle::job_stats()` gives it: its concurrency
    /// knobs, threads, backlog, jobs by outcome (completed, failed, cancelled, refused, expired,
    /// overran, discarded), wait and run time (sums and maxima). Empty for the other kinds.
    std::optional<job_queue::stats> jobs;
};

/// Counters of an environment: its messages, timers and queues; a consistent-enough snapshot
/// taken from any thread. Every message counted sent has one outcome: sent = delivered + lost +
/// ignored + discarded + cancelled + dropped once nothing is in flight. The layers above keep
/// their own counters and say how to read them
/// (agent_stats_of, session_stats_of, named_stats_of).
struct environment_stats {
    std::uint64_t messages_sent = 0;       ///< sent to a receiver (each receiver counts), then given one outcome below
    std::uint64_t messages_delivered = 0;  ///< a handler ran
    std::uint64_t messages_lost = 0;       ///< the receiver was gone (direct send after deregistration)
    std::uint64_t messages_ignored = 0;    ///< no handler for it: unsubscribed meanwhile, or an MPMC subscriber that left
    std::uint64_t messages_discarded = 0;  ///< still queued when the environment stopped
    std::uint64_t messages_cancelled = 0;  ///< timer messages whose timer was cancelled in the queue
    std::uint64_t messages_dropped = 0;    ///< over a message limit: dropped (the drop reaction, a timer's send, a redirect too deep)
    std::uint64_t messages_redirected = 0;   ///< over a message limit: sent on to another mbox (counted again there; not an outcome)
    std::uint64_t messages_transformed = 0;  ///< over a message limit: replaced by another message (counted where it went; not an outcome)
    std::uint64_t limit_aborts = 0;          ///< over a message limit whose reaction aborts (seen only by a log_then_abort callback)
    std::uint64_t handler_exceptions = 0;
    std::uint64_t timers_armed = 0;
    std::uint64_t timers_fired = 0;
    std::uint64_t timers_cancelled = 0;
    std::uint64_t timers_pending = 0;
    std::uint64_t timers_skipped = 0;  ///< periods skipped: the timer's previous fire was still queued or running
    std::size_t queue_depth = 0;  ///< demands queued in all dispatchers, approximately
    std::uint64_t teardown_overruns = 0;    ///< handlers reported running past the teardown deadline
    /// Deliveries a delivery filter refused on the sender's side: each is also counted sent and
    /// ignored (so the books balance), never lost.
    std::uint64_t messages_filtered = 0;
    /// Delivery filters that threw: logged, and their messages refused (among messages_filtered).
    std::uint64_t delivery_filter_exceptions = 0;
    std::uint64_t stalls_reported = 0;      ///< handlers the run-time watchdog reported (each stall once, however often repeated)
    std::uint64_t stalled_now = 0;          ///< of those, the ones still running
    std::chrono::nanoseconds longest_stall{};  ///< the longest a reported handler ran (so far, for one still running)
    /// Every dispatcher of the environment, the default one first, then in the order they were
    /// added: each with its kind's figures (loops, a job queue's) and its share of the
    /// watchdog's stalls. Read one dispatcher after another, each consistent enough on its own.
    std::vector<dispatcher_figures> dispatchers;
};

/// Owns everything that runs in it. Starts on construction. `stop()` from any thread begins an
/// orderly shutdown; destruction (or `join()`) waits for it: cooperations are deregistered
/// (children first), then sessions and their event objects are destroyed, then dispatchers
/// stop and their threads are joined, then the timer service. Every thread it started is
/// joined before the destructor returns.
///
/// Destroyed on one of its own threads (inside a handler, a session callback, a timer,
/// on_start, on_finish, on_registered, on_deregistered, an agent's destructor, a then()
/// continuation, on any worker of its dispatchers), the destructor does not wait for itself:
/// it stops the environment and hands the rest of the teardown to a thread of its own making,
/// then returns. The teardown completes as soon as the callbacks running return;
/// `environment_options::on_stopped` says when. The callback must not use the environment
/// object after destroying it; handles (mboxes, timers, sessions, cooperations) stay safe.
///
/// It is the host of its named dispatchers: each kind's factory adds one to it
/// (`thread_pool::make_dispatcher(env, "pool", {.threads = 2})`, see dispatch/<kind>.hpp).
class MAILROOM_EXPORT environment final : public dispatcher_host {
public:
    explicit environment(environment_options options = {});
    ~environment();
    environment(const environment&) = delete;
    environment& operator=(const environment&) = delete;

    const std::string& name() const noexcept;

    /// Any thread, including handlers. Begins the shutdown and returns at once: no new
    /// cooperation can be registered, and every registered one is deregistered.
    void stop() noexcept;

    /// Blocks until stop() was called (by anyone) and the shutdown has completed. Not from a
    /// thread of this environment, nor from inside any of its callbacks on another thread
    /// (on_registered, on_deregistered, an agent's destructor): it would wait for itself, so
    /// it raises usage_error naming the environment. While it waits, a handler running past
    /// `teardown_deadline` is reported and `on_teardown_overrun` applies. Returns what the
    /// teardown did (the same report to every caller); it is also logged when something was
    /// discarded or overran.
    teardown_report join();

    /// True once stop() was called.
    bool stopping() const noexcept;

    /// The one_thread dispatcher named "default".
    one_thread::handle default_dispatcher() const;

    /// The named dispatcher (the default one included), or an empty handle. Of any kind:
    /// `dispatcher_cast<thread_pool::handle>(env.find_dispatcher("pool"))` recovers the typed
    /// handle, and raises dispatcher_kind_error when the dispatcher is of another kind.
    dispatcher find_dispatcher(std::string_view name) const;

    /// A snapshot of the environment's counters and of every dispatcher's figures
    /// (environment_stats::dispatchers). Any thread, any time, also after join().
    environment_stats stats() const;
    /// Every dispatcher's `dispatcher::stats()`, without the kinds' figures. Any thread.
    std::vector<dispatcher_stats> dispatcher_stats_all() const;

private:
    friend struct internal::handle_access;  // the layers above reach the core through it
    std::shared_ptr<internal::dispatcher_impl> host_dispatcher(std::string_view name,
                                                               const internal::dispatcher_builder& build) override;

    std::shared_ptr<internal::env_core> core_;
};

}  // namespace mailroom
