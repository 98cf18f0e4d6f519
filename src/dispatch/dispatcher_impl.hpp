#pragma once
/// The interface every dispatcher kind implements; used by the environment and the agent layer.
/// Each kind's internal factory is in its own header (<kind>_impl.hpp), for the environment's
/// default dispatcher and for tests that run a dispatcher without an environment.

#include <mailroom/dispatch/demand.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/watchdog.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mailroom::internal {

/// Where one context was bound: its queue and what the binder needs to release it.
struct binding {
    event_queue* queue = nullptr;
    void* token = nullptr;
};

/// Two-phase binding (SObjectizer's disp_binder): prepare may throw; release cannot fail.
class MAILROOM_EXPORT binder_impl {
public:
    explicit binder_impl(const dispatcher_impl* target) noexcept : target_(target) {}
    virtual ~binder_impl();
    /// The dispatcher it binds to (the binder holds it alive).
    const dispatcher_impl& target() const noexcept { return *target_; }
    /// Binds one context of the cooperation `coop_key`. Throws binding_error naming the
    /// dispatcher when it was shut down.
    virtual binding prepare(const void* coop_key) = 0;
    /// Binds one more context of the cooperation `coop_key`, in the registration that bound an
    /// earlier one as `first` through this binder (not released since). A binder that puts a
    /// cooperation's contexts together shares `first` without its lock; the default prepares.
    virtual binding prepare_again(const binding& first, const void* coop_key) {
        (void)first;
        return prepare(coop_key);
    }
    /// Releases a binding. Any thread, including the bound context's own worker.
    virtual void release(const binding& b, const void* coop_key) noexcept = 0;

private:
    const dispatcher_impl* target_;
};

class MAILROOM_EXPORT dispatcher_impl : public std::enable_shared_from_this<dispatcher_impl> {
public:
    dispatcher_impl(std::string name, std::string kind);
    virtual ~dispatcher_impl();
    dispatcher_impl(const dispatcher_impl&) = delete;
    dispatcher_impl& operator=(const dispatcher_impl&) = delete;

    const std::string& name() const noexcept { return name_; }
    const std::string& kind() const noexcept { return kind_; }

    /// A binder with the kind's default binding (dispatcher::bind()); a kind's other ways to
    /// bind (a group, a FIFO order) are its own, declared in its internal header. Raises
    /// binding_error naming the dispatcher when the kind has no default (active_group).
    virtual std::shared_ptr<binder_impl> make_binder() = 0;

    /// Says who owns the dispatcher (an opaque tag: the environment's core) and its name, for
    /// the checks and errors of the layers above. Once, before the dispatcher is published.
    void set_owner(const void* tag, std::string owner_name) {
        owner_name_ = std::move(owner_name);
        owner_.store(tag, std::memory_order_release);
    }
    /// Any thread, including this dispatcher's own workers (which may start before set_owner).
    const void* owner() const noexcept { return owner_.load(std::memory_order_acquire); }
    /// The owner's name; read only after the dispatcher was published.
    const std::string& owner_name() const noexcept { return owner_name_; }

    /// Stops accepting bindings. Idempotent; any thread.
    void shutdown() noexcept { accepting_.store(false, std::memory_order_release); }
    bool accepting() const noexcept { return accepting_.load(std::memory_order_acquire); }

    /// Stops and joins every worker thread, then discards what is left in the queues. Called
    /// once, by the environment, after every context bound here is gone; never from a worker.
    virtual void join() noexcept = 0;

    /// After join(): discards what stale senders pushed since (each demand counts itself). The
    /// environment calls it once more after the timer thread stopped, so that a timer that
    /// fired into a joined dispatcher does not keep its message (and what it holds) alive.
    virtual void discard_queued() noexcept = 0;

    virtual dispatcher_stats stats() const = 0;
    /// stats() with the watchdog's counts: what dispatcher::stats() and the environment give.
    dispatcher_stats snapshot() const {
        dispatcher_stats s = stats();
        s.stalls_reported = stalls_reported.load(std::memory_order_relaxed);
        const auto now = stalled_now.load(std::memory_order_relaxed);
        s.stalled_now = now > 0 ? static_cast<std::size_t>(now) : 0;
        s.longest_stall = std::chrono::nanoseconds(longest_stall_ns.load(std::memory_order_relaxed));
        return s;
    }
    /// The watchdog's counts, written by the environment's watcher only; any thread reads.
    mutable std::atomic<std::uint64_t> stalls_reported{0};
    mutable std::atomic<std::int64_t> stalled_now{0};
    mutable std::atomic<std::int64_t> longest_stall_ns{0};

    /// The run-time watchdog's settings; set by the kind before the dispatcher is published,
    /// read by the environment's watcher.
    void set_watchdog(watchdog_params p) { watchdog_ = std::move(p); }
    const watchdog_params& watchdog() const noexcept { return watchdog_; }

    /// A worker thread the watchdog may sample and signal.
    struct watched_worker {
        heartbeat* beat = nullptr;
        std::size_t index = 0;  ///< as in stats().workers where the kind numbers them; else in start order
        int thread_id = 0;      ///< the kernel's id of the thread
    };
    /// Called by each worker thread as it starts, before it runs a demand, with its heartbeat
    /// and its index (npos: the next number in start order); readies the thread for stack
    /// capture. Not on the hot path. A worker that could not be listed (out of memory) is not
    /// watched.
    void attach_worker(heartbeat& beat, std::size_t index = static_cast<std::size_t>(-1)) const noexcept;
    /// Called by each worker thread before it ends (the heartbeat stays valid until then).
    void detach_worker(heartbeat& beat) const noexcept;
    /// What a kind knows of the demand a worker runs beyond its heartbeat's context and type,
    /// for the watchdog's and the teardown watch's reports.
    struct running_detail {
        /// Replaces the message type when not empty ("fd 7 callback", "job 'resize'").
        std::string what;
        /// The worker is a job queue's: blocking is what it is for, and the context is a job.
        bool job = false;
        std::uint64_t job_id = 0;
        /// The context that posted the job, as a heartbeat's context word (kind << shift | id);
        /// 0: posted from a thread that runs no session or agent.
        std::uint64_t poster = 0;
    };
    /// Describes what the worker with heartbeat `beat` runs now. Called by the environment's
    /// watchers with the worker listed (inside visit_workers), never on the hot path; the
    /// default knows nothing more.
    virtual running_detail describe_worker(const heartbeat& beat) const;

    /// Calls `f(watched_worker&)` for each live worker thread, holding them alive (a worker
    /// that ends waits in detach_worker). The environment's watcher only.
    template <class F>
    void visit_workers(F&& f) {
        std::lock_guard g(watched_lock_);
        for (auto& w : watched_) f(w);
    }

protected:
    /// Throws binding_error naming this dispatcher when it no longer accepts bindings.
    void check_accepting() const;

private:
    std::string name_;
    std::string kind_;
    std::atomic<bool> accepting_{true};
    std::atomic<const void*> owner_{nullptr};
    std::string owner_name_;
    watchdog_params watchdog_;
    mutable std::mutex watched_lock_;
    mutable std::vector<watched_worker> watched_;
    mutable std::size_t next_worker_index_ = 0;
};

/// The dispatcher whose worker thread this is, for the whole life of the thread; null on
/// threads that are not workers. Lets the environment recognise its own threads (a join or a
/// teardown started there would wait for itself).
MAILROOM_EXPORT const dispatcher_impl* current_dispatcher() noexcept;
/// Called by each worker thread as it starts.
MAILROOM_EXPORT void set_current_dispatcher(const dispatcher_impl* d) noexcept;

/// The dispatcher a handle refers to; raises usage_error on an empty handle.
MAILROOM_EXPORT dispatcher_impl& checked(const std::shared_ptr<dispatcher_impl>& impl);

/// A worker's statistics from its heartbeat (relaxed loads; any thread).
MAILROOM_EXPORT worker_stats read_heartbeat(const heartbeat& beat) noexcept;

}  // namespace mailroom::internal
