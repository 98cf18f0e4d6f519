#pragma once
// Readiness, blocking work and stalls in `mailroom demo`: a feed handler on an event_loop_pool
// (socketpairs written by a plain thread, read by fd watchers, each line published as a
// message), a job queue doing blocking work for an agent that gets every completion back and
// raises and lowers `desired` while the jobs run, and one deliberately slow handler that the
// watchdog reports, with its stack, while the rest of the demo carries on.

#include <mailroom/mailroom.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mailroom::tool {

/// Socketpairs of the feed handler, and the loops that watch their reading ends.
inline constexpr std::size_t feed_pairs = 4;
inline constexpr std::size_t feed_loops = 2;
/// The slow handler's dispatcher reports a handler after this long; the handler runs longer.
inline constexpr std::chrono::milliseconds slow_desk_timeout{50};
inline constexpr std::chrono::milliseconds slow_handler_time{400};

/// What the demo's job queue agent saw, and the knobs it turned. Written on its context only
/// (atomics: the report reads them from the main thread after the environment stopped).
struct job_counts {
    std::atomic<std::uint64_t> posted{0};             ///< accepted by try_post_job
    std::atomic<std::uint64_t> refused{0};            ///< try_post_job found the backlog full
    std::atomic<std::uint64_t> cancel_asked{0};       ///< cancel() called on a job just posted
    std::atomic<std::uint64_t> seen_succeeded{0};     ///< completions back on the agent
    std::atomic<std::uint64_t> seen_cancelled{0};
    std::atomic<std::uint64_t> seen_other{0};         ///< failed, expired or discarded (none expected)
    std::atomic<std::uint64_t> desired_changes{0};
    std::atomic<std::size_t> desired_low{0}, desired_high{0};
};

/// The part's figures and what its checks need, read once the environment has stopped.
struct io_report {
    // The feed handler.
    std::size_t loops = 0;
    std::size_t fds_watched = 0;
    std::uint64_t fd_callbacks = 0;  ///< readiness callbacks run, all loops
    std::uint64_t loop_cycles = 0;
    std::uint64_t max_cycle_ns = 0;
    std::uint64_t lines_written = 0;  ///< by the plain thread
    std::uint64_t lines_read = 0;     ///< by the watchers, each published on the "lines" topic
    std::uint64_t lines_handled = 0;  ///< by the agent subscribed to it
    std::uint64_t lines_out_of_order = 0;
    // The job queue.
    job_queue::stats jobs;
    std::uint64_t jobs_posted_seen = 0, jobs_refused_seen = 0, jobs_cancel_asked = 0;
    std::uint64_t jobs_seen_succeeded = 0, jobs_seen_cancelled = 0, jobs_seen_other = 0;
    std::uint64_t desired_changes = 0;
    std::size_t desired_low = 0, desired_high = 0;
    // The watchdog.
    bool slow_handler_ran = false;
    std::uint64_t stalls_reported = 0;  ///< reports while the handler still ran
    std::uint64_t stalls_resumed = 0;   ///< the closing report once it went on
    std::string first_stall;            ///< the first report's text
    std::string stall_context;          ///< whom the first report names
    std::size_t stall_frames = 0;       ///< frames of its stack
    std::string stall_stack_note;
};

/// Sets the part up (its dispatchers, agents, sessions, watchers and the writing thread).
/// join() after the environment stopped: joins the thread and closes the fds.
class io_demo {
public:
    io_demo(environment& env, const dispatcher& pool);
    io_demo(const io_demo&) = delete;
    io_demo& operator=(const io_demo&) = delete;
    ~io_demo() { join(); }

    void join();
    /// After join().
    io_report report() const;

private:
    struct pair_state {
        int fds[2] = {-1, -1};  // [0] read by a watcher, [1] written by the thread
        session reader;
        fd_watch_handle watch;
        std::string partial;     // on the reader's context: a line read in part
        std::string unsent;      // on the writing thread: what the socket did not take yet
        std::uint64_t next = 0;  // on the writing thread
    };

    void write_lines();
    void on_readable(pair_state& p, std::size_t index);

    environment& env_;
    event_loop_pool::handle loops_;
    job_queue::handle jobs_;
    mbox lines_;
    std::array<pair_state, feed_pairs> pairs_;
    std::atomic<std::uint64_t> lines_written_{0}, lines_read_{0};
    std::shared_ptr<std::atomic<std::uint64_t>> lines_handled_, lines_out_of_order_;
    std::shared_ptr<job_counts> job_counts_;
    // The watchdog's reports arrive on its own thread.
    struct stalls {
        std::mutex m;
        std::uint64_t reported = 0, resumed = 0;
        stall_report first;
        bool have_first = false;
    };
    std::shared_ptr<stalls> stalls_;
    session slow_desk_;
    std::atomic<bool> slow_ran_{false};
    std::thread thread_;
    bool joined_ = false;
};

/// The deliberately slow handler: blocks its worker for `how_long`. Exported (the tool links
/// with its symbols exported) so that the watchdog's stack names it.
void demo_slow_handler(std::chrono::milliseconds how_long);

}  // namespace mailroom::tool
