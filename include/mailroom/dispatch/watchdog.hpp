#pragma once
/// The run-time watchdog's settings and reports: each dispatcher has a timeout; a handler that
/// runs past it is reported while it still runs, with its stack (docs/watchdog.md).

#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace mailroom {

/// What the watchdog does when a handler runs past its dispatcher's timeout.
enum class stall_action : unsigned char {
    report,    ///< log the report (the environment's log, else stderr), again at 2x, 4x, ..., and when it resumes
    callback,  ///< call watchdog_params::on_stall with each report, on the watcher thread
    abort,     ///< log the first report, then abort the process (for a supervisor to restart it)
};

/// A handler, fd callback or job that runs (or ran) past its dispatcher's timeout (or a job
/// past its deadline).
struct stall_report {
    std::string environment;                 ///< the environment's name
    std::string dispatcher;                  ///< the dispatcher's (or job queue's) name
    std::size_t worker = 0;                  ///< the worker's index in the dispatcher (a job queue's threads: in start order)
    int thread_id = 0;                       ///< the worker's kernel thread id
    /// "agent 'name' of cooperation 'coop'", "session 'name'", "unknown ..."; for a job "job #12
    /// posted by session 'name'" (or "... posted from a thread that runs no session or agent").
    std::string context;
    /// Readable; "timer callback", "posted call", "fd 7 callback" (an fd watcher's on an event
    /// loop), "job 'name'" (job_options::name, else the callable's type), or "" when unknown.
    std::string message_type;
    bool job = false;                        ///< a job on a job queue (where blocking work belongs)
    bool past_deadline = false;              ///< a job reported because it runs past its deadline (job_queue::params::deadline)
    std::chrono::nanoseconds running_for{};  ///< so far (or in all, when resumed), measured by the watcher
    std::chrono::nanoseconds timeout{};      ///< the dispatcher's timeout
    bool resumed = false;                    ///< false: still running; true: the worker went on (the last report)
    std::vector<std::string> stack;          ///< the stalled thread's frames, innermost first (not when resumed)
    std::string stack_note;                  ///< why `stack` is empty, when it is
    std::string text;                        ///< the whole report as one text (what `report` logs)
};

/// A dispatcher's watchdog: part of each kind's params (`one_thread::params::watchdog`, ...).
struct watchdog_params {
    /// How long a handler may run before it is reported; zero: this dispatcher is not watched.
    std::chrono::nanoseconds timeout = std::chrono::seconds(5);
    stall_action action = stall_action::report;
    /// For stall_action::callback: called on the environment's watcher thread (never the
    /// stalled one), with each report, the resumed one included. It should return soon: it
    /// holds up the watching of every dispatcher of the environment. An exception it throws is
    /// logged. Empty: the report is logged instead.
    std::function<void(const stall_report&)> on_stall{};
};

/// Called by a handler that runs long on purpose and still makes progress: the watchdog counts
/// its dispatcher's timeout again from now (libmtev's eventer_heartbeat). A relaxed store on a
/// worker thread; does nothing on other threads.
MAILROOM_EXPORT void extend_deadline() noexcept;

}  // namespace mailroom
