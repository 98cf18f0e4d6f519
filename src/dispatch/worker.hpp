#pragma once
// A dispatcher's worker thread over a worker_mailbox: the one copy of what every such thread
// does (its start with a name, current_dispatcher, the heartbeat and the watchdog's attach and
// detach, the batch drain with a heartbeat around each demand, the stop, the join and the last
// discard). Kinds differ only in how an idle thread waits: a `worker` (one_thread, active_obj,
// active_group) parks on its mailbox's futex; an event loop (event_loop_impl.hpp) in
// epoll_wait, between batches of fd callbacks.

#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/demand.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/export.hpp>
#include <mailroom/queue/worker_mailbox.hpp>

#include <atomic>
#include <cstddef>
#include <string>
#include <thread>

namespace mailroom::internal {

class MAILROOM_EXPORT worker_thread : public event_queue {
public:
    worker_thread(const worker_thread&) = delete;
    worker_thread& operator=(const worker_thread&) = delete;

    void push(demand* d) noexcept override { mailbox_.push(d); }

    /// Starts the thread (again, after a join) for the dispatcher `owner`, named `thread_name`
    /// (cut to 15 characters), listed with the watchdog as worker `index` (npos: the next in
    /// start order). Not thread-safe against itself.
    void start(const std::string& thread_name, const dispatcher_impl* owner,
               std::size_t index = static_cast<std::size_t>(-1));
    /// Queues a stop behind everything queued so far; any thread, including the worker itself.
    void request_stop() noexcept;
    /// True once the thread left its loop (joining will not block for long).
    bool finished() const noexcept { return finished_.load(std::memory_order_acquire); }
    /// Joins the thread; never from the worker itself.
    void join() noexcept;
    /// With the thread joined: drains what is left, discarding it.
    void discard_all() noexcept;

    worker_stats stats() const noexcept;
    /// What the thread publishes; for a kind's describe_worker.
    const heartbeat& beat() const noexcept { return heartbeat_; }

protected:
    explicit worker_thread(std::chrono::nanoseconds spin) noexcept;
    /// A kind's destructor discards what is left while its own members live (discard_all()).
    ~worker_thread();

    /// The thread's loop: runs until drain() says a stop ran. Called on the thread, with
    /// current_dispatcher, tls_heartbeat and the watchdog's listing in place.
    virtual void run() noexcept = 0;
    /// Runs every demand queued now, in a batch, each under the heartbeat; false once a stop
    /// ran (the loop must end).
    bool drain() noexcept;
    /// False once a stop ran.
    bool running() const noexcept { return running_; }
    /// True while the thread was started and not joined (a kind's destructor checks it first).
    bool joinable() const noexcept { return thread_.joinable(); }

    worker_mailbox mailbox_;
    heartbeat heartbeat_;

private:
    struct stop_demand : demand {
        worker_thread* owner = nullptr;
    };
    static void on_stop(demand* d, demand_mode) noexcept;

    stop_demand stop_;
    bool running_ = false;
    std::atomic<bool> finished_{false};
    std::thread thread_;
};

/// A worker thread that parks on its mailbox: the engine of one_thread, active_obj and
/// active_group.
class worker final : public worker_thread {
public:
    explicit worker(std::chrono::nanoseconds spin) noexcept : worker_thread(spin) {}
    ~worker() {
        if (joinable()) fatal("worker destroyed with its thread still running");
        discard_all();
    }

private:
    void run() noexcept override {
        while (drain()) mailbox_.wait();
    }
};

}  // namespace mailroom::internal
