#pragma once
/// The job_queue dispatcher: a named executor for blocking work (libmtev's jobq). Jobs run on
/// threads of their own, started on demand between the queue's concurrency knobs, never on the
/// workers that run sessions and agents. Its params, its handle, its statistics and its factory;
/// post_job(), which carries a job's completion back to the posting session or agent, is in
/// <mailroom/session/job.hpp>. See docs/job-queues.md.

#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <typeinfo>

namespace mailroom {

/// A job queue's knobs break min <= floor <= desired <= max (or max is 0); the message names
/// the queue and the knobs.
class MAILROOM_EXPORT job_queue_limits_error final : public error {
public:
    using error::error;
};

/// post_job() found the queue's backlog full (try_post_job() returns an empty job instead).
/// Counted as a refusal either way.
class MAILROOM_EXPORT job_queue_full_error final : public error {
public:
    using error::error;
};

/// Where a job is. The last five are final.
enum class job_state : std::uint8_t {
    queued,     ///< in the backlog, not started
    running,    ///< on a job thread
    succeeded,  ///< returned a result
    failed,     ///< threw; the exception is carried to the completion
    cancelled,  ///< cancel() came before it started: it never ran
    expired,    ///< its deadline passed before it started: it never ran
    discarded,  ///< still queued when the queue was shut down: it never ran
};
MAILROOM_EXPORT const char* to_string(job_state s) noexcept;

namespace job_queue {

/// Which queued job of one poster starts first.
enum class order : std::uint8_t { fifo, lifo };

/// How the queue runs. Concurrency knobs: min <= floor <= desired <= max.
struct params {
    /// The lowest floor set_floor() accepts.
    std::size_t min = 0;
    /// Threads kept alive when idle (started at once).
    std::size_t floor = 0;
    /// Jobs run at the same time at most; set_desired() changes it at run time.
    std::size_t desired = 4;
    /// The highest desired set_desired() accepts.
    std::size_t max = 64;
    /// A thread above the floor that found no job for this long exits.
    std::chrono::nanoseconds idle_time = std::chrono::seconds(1);
    /// Jobs queued and not started at most (0: unbounded).
    std::size_t backlog = 0;
    /// Within one poster's sub-queue; posters are always served round-robin.
    job_queue::order order = order::fifo;
    /// A job not started within this time of its posting is dropped (expired); one that runs
    /// past it is counted overran and reported by the watchdog while it runs (when the
    /// watchdog is on). Zero: no deadline.
    std::chrono::nanoseconds deadline{0};
    /// How long a thread that ran out of jobs spins, looking for the next one, before it sleeps
    /// (one thread at a time; never past `idle_time`): a post that a spinning thread sees needs
    /// no wake-up, which costs tens of microseconds. Zero: it sleeps at once.
    std::chrono::nanoseconds spin = default_worker_spin;
    /// The run-time watchdog: how long one job may run before it is reported (with its name,
    /// its poster and its thread's stack), and what follows. As for every dispatcher.
    watchdog_params watchdog{};
};

/// A snapshot of a job queue. Readable at any time, also after its environment stopped.
struct stats {
    std::string name;
    std::size_t min = 0, floor = 0, desired = 0, max = 0;
    std::size_t threads = 0;       ///< job threads alive
    std::size_t idle_threads = 0;  ///< of which waiting for a job
    std::size_t running = 0;       ///< jobs running now
    std::size_t backlog = 0;       ///< jobs queued, not started
    std::uint64_t posted = 0;      ///< accepted into the backlog
    std::uint64_t refused = 0;     ///< refused: backlog full (try_post_job, post_job) or queue shut down
    std::uint64_t completed = 0;   ///< ran to the end (succeeded + failed)
    std::uint64_t failed = 0;      ///< of which threw
    std::uint64_t cancelled = 0;   ///< cancelled before they started
    std::uint64_t expired = 0;     ///< dropped at their deadline, never started
    std::uint64_t overran = 0;     ///< ran past their deadline
    std::uint64_t discarded = 0;   ///< still queued at shutdown
    /// Completions (then, co_await) that found their session or agent gone: not run, destroyed.
    std::uint64_t completions_dropped = 0;
    std::uint64_t threads_started = 0;
    std::uint64_t threads_exited = 0;  ///< idle above the floor (or at shutdown)
    std::uint64_t wakeups = 0;         ///< posts that woke a sleeping thread
    std::uint64_t spin_takes = 0;      ///< jobs a spinning thread found, no wake-up needed
    std::chrono::nanoseconds wait_total{0}, wait_max{0};  ///< posted -> started
    std::chrono::nanoseconds run_total{0}, run_max{0};    ///< started -> finished
};

/// A job_queue dispatcher. Any thread may use it. Sessions and agents cannot be bound to it
/// (bind() raises binding_error): it runs jobs, posted with post_job().
class MAILROOM_EXPORT handle final : public kind_handle<handle> {
public:
    /// What `dispatcher::kind()` says of it.
    static constexpr std::string_view kind_name = "job_queue";

    using kind_handle::kind_handle;

    /// Jobs run at the same time at most, from now on: running jobs finish, no new one starts
    /// above it; threads start at once when it grows. Any thread. Raises
    /// job_queue_limits_error naming the queue unless floor <= n <= max; usage_error on an
    /// empty handle.
    void set_desired(std::size_t n) const;
    /// Threads kept alive when idle. Any thread. Raises job_queue_limits_error naming the queue
    /// unless min <= n <= desired.
    void set_floor(std::size_t n) const;

    /// Waits until no job is queued or running (a condition variable, no polling), at most
    /// `timeout`; true when drained. Jobs posted meanwhile are waited for too. Raises
    /// usage_error naming the queue on a dispatcher's or a job queue's thread (it could wait
    /// for itself), unless it is drained already or `timeout` is zero (a poll).
    bool drain(std::chrono::nanoseconds timeout) const;

    /// A snapshot; any thread, also after the environment stopped.
    job_queue::stats job_stats() const;
};

/// Adds a job queue named `name` to `host` (an environment) and starts its floor threads.
/// Raises job_queue_limits_error naming it when the knobs are out of order,
/// duplicate_name_error when the name is taken, environment_stopped_error when the
/// environment is stopping. Any thread.
MAILROOM_EXPORT handle make_job_queue(dispatcher_host& host, std::string name, const params& p = {});

}  // namespace job_queue

namespace internal {

class job_queue_impl;

/// One job, type-erased: what the queue runs and the completion path waits on. Reference
/// counted (the queue, the handles and a pending completion each hold one).
///
/// Its state, the continuation's hand-over and the waiters share one atomic word, so that
/// posting, running and completing a job take no lock of the job's own: a state moves by a
/// compare-and-swap, and whichever of the finishing thread and the thread that sets the
/// continuation comes second runs it (see continue_with). A derived class owns the memory
/// (destroy()): the session layer builds jobs in the recycling pool.
class MAILROOM_EXPORT job_core {
public:
    job_core() noexcept = default;
    job_core(const job_core&) = delete;
    job_core& operator=(const job_core&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
    }

    job_state state() const noexcept { return static_cast<job_state>(word_.load(std::memory_order_acquire) & state_mask); }
    bool is_final() const noexcept { return state() >= job_state::succeeded; }
    std::uint64_t id() const noexcept { return id_; }
    /// The queue's name ("" before the job was posted).
    const std::string& queue_name() const noexcept;
    /// What the job threw (failed only).
    const std::exception_ptr& exception() const noexcept { return error_; }

    /// Before it started: it never runs, true. Running: requests stop through its stop_token,
    /// false. Any thread.
    bool cancel() noexcept;
    /// Names the job for the watchdog's reports: `name`, or when it is empty the readable
    /// `work_type` (the callable's); `poster` is the posting context as a heartbeat's context
    /// word (0: none). Before the job is posted.
    void label(std::string name, const std::type_info* work_type, std::uint64_t poster) noexcept {
        name_ = std::move(name);
        work_type_ = work_type;
        poster_context_ = poster;
    }
    /// What the watchdog calls the job (see label()); "" for an unlabelled one.
    std::string name() const;

    /// Blocks until final or `timeout` passed (a futex wait); true when final.
    bool wait_for(std::chrono::nanoseconds timeout) const noexcept;
    /// Takes the job's one continuation: usage_error naming the job when it has one already
    /// (then continue_with(); what the continuation needs may be set in between).
    void claim_continuation();
    /// After claim_continuation(): runs `fn(this, arg)` once the job is final, at once (on this
    /// thread) when it is, else on the thread that finishes it.
    void continue_with(void (*fn)(job_core*, void*) noexcept, void* arg) noexcept;

protected:
    virtual ~job_core() = default;
    /// The work threw `e` (on the job thread, before the job is final).
    void fail(std::exception_ptr e) noexcept { error_ = std::move(e); }
    /// Gives the job a stop state of its own: for work that takes a std::stop_token (others get
    /// an empty token and cost no allocation for it). In the constructor.
    void make_stoppable() { stop_ = std::stop_source(); }

private:
    friend class job_queue_impl;
    friend void job_completion_dropped(const job_core* j) noexcept;
    friend bool submit_job(const job_queue::handle& q, job_core* j, std::uint64_t poster, bool try_only);
    /// Runs the work on a job thread; returns succeeded, or failed with error_ set.
    virtual job_state run(std::stop_token st) noexcept = 0;
    /// Destroys the job and frees its memory (the last reference went).
    virtual void destroy() noexcept = 0;
    /// Moves the job from `from` to `to`; false when it was elsewhere. A move to a final state
    /// is followed by complete() on the same thread, outside the queue's lock.
    bool move(job_state from, job_state to) noexcept;
    /// Runs the continuation of a final job (when the move to final found it set) and wakes
    /// its waiters.
    void complete() noexcept;

    // word_: the state in the low byte, and the flags below.
    static constexpr std::uint32_t state_mask = 0xff;
    static constexpr std::uint32_t cont_claimed = 1u << 8;  // claim_continuation() (one per job)
    static constexpr std::uint32_t cont_ready = 1u << 9;    // cont_ and cont_arg_ are written
    static constexpr std::uint32_t has_waiters = 1u << 10;  // a wait_for() sleeps on the word

    std::atomic<std::uint32_t> refs_{1};
    std::atomic<std::uint32_t> word_{0};
    // Set by the move to a final state (the thread that made it reads it in complete()): the
    // continuation was ready then, so that thread runs it.
    bool run_cont_ = false;
    job_core* next_ = nullptr;  // the queue's: its intake, then its poster's sub-queue (under the queue's lock)
    std::uint64_t poster_ = 0;  // the queue's: which sub-queue the job goes to
    std::stop_source stop_{std::nostopstate};
    std::exception_ptr error_;
    std::uint64_t id_ = 0;
    clock::time_point queued_at_{};
    clock::time_point deadline_ = clock::time_point::max();
    std::string name_;                          // label(): empty unless given
    const std::type_info* work_type_ = nullptr;  // label()
    std::uint64_t poster_context_ = 0;          // label()
    std::shared_ptr<job_queue_impl> queue_;  // set once, by submit_job(): cancel() tells it
    void (*cont_)(job_core*, void*) noexcept = nullptr;
    void* cont_arg_ = nullptr;
};

/// Counts a completion of `j` that found its session or agent gone (job_stats). Any thread.
MAILROOM_EXPORT void job_completion_dropped(const job_core* j) noexcept;

/// Queues `j` (taking a reference of its own) on the job queue `q` for the poster `poster`
/// (its fair sub-queue). Returns false when the backlog is full and `try_only`; raises
/// job_queue_full_error naming the queue when it is full otherwise, environment_stopped_error
/// when the queue is shut down, usage_error on an empty handle. Any thread.
MAILROOM_EXPORT bool submit_job(const job_queue::handle& q, job_core* j, std::uint64_t poster, bool try_only);

}  // namespace internal

}  // namespace mailroom
