#pragma once
// A worker thread over a worker_mailbox: the engine of one_thread, active_obj and active_group.

#include <mailroom/dispatch/demand.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/queue/worker_mailbox.hpp>

#include <atomic>
#include <string>
#include <thread>

namespace mailroom::internal {

class worker final : public event_queue {
public:
    explicit worker(std::chrono::nanoseconds spin) noexcept;
    ~worker();

    void push(demand* d) noexcept override { mailbox_.push(d); }

    /// Starts the thread (again, after a join) for the dispatcher `owner`. Not thread-safe
    /// against itself.
    void start(const std::string& thread_name, const dispatcher_impl* owner);
    /// Queues a stop behind everything queued so far; any thread, including the worker itself.
    void request_stop() noexcept;
    /// True once the thread left its loop (joining will not block for long).
    bool finished() const noexcept { return finished_.load(std::memory_order_acquire); }
    /// Joins the thread; never from the worker itself.
    void join() noexcept;
    /// With the thread joined: drains what is left, discarding it.
    void discard_all() noexcept;

    worker_stats stats() const noexcept;

private:
    struct stop_demand : demand {
        worker* owner = nullptr;
    };
    static void on_stop(demand* d, demand_mode) noexcept;
    void run() noexcept;

    worker_mailbox mailbox_;
    heartbeat heartbeat_;
    stop_demand stop_;
    bool running_ = false;
    std::atomic<bool> finished_{false};
    std::thread thread_;
};

}  // namespace mailroom::internal
