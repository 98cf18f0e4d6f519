#pragma once
/// The timer service: one thread per environment running a hierarchical timing wheel.

#include <mailroom/export.hpp>
#include <mailroom/queue/mpsc_queue.hpp>
#include <mailroom/queue/worker_mailbox.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

namespace mailroom::internal {

/// A timer the service can hold. Reference counted: the service holds one reference while the
/// timer is armed, a handle holds one, and each delivery in flight holds one.
///
/// Cancellation (the guarantee SObjectizer's issue #73 asks for): `cancel()` sets a flag that
/// every delivery checks as it begins, under a counter of deliveries running. When cancel()
/// returns on a thread that is not running one of this timer's deliveries, none is running and
/// none will begin, even for messages already queued. Inside a delivery it does not wait.
class MAILROOM_EXPORT timer_entry : public mpsc_node {
public:
    timer_entry() noexcept = default;
    timer_entry(const timer_entry&) = delete;
    timer_entry& operator=(const timer_entry&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
    }

    /// Any thread. Returns true if this call cancelled it (false if it was already cancelled).
    /// Waits for deliveries running on other threads to finish, unless the caller is itself
    /// inside a delivery of this timer.
    bool cancel() noexcept;
    bool cancelled() const noexcept { return (state_.load(std::memory_order_acquire) & cancelled_bit) != 0; }

    /// Any thread. Declares that nobody will cancel this timer any more (its handle let go of
    /// it): deliveries may then skip begin_delivery/end_delivery and the reference they would
    /// hold, which spares the receiving thread a cache line per delivery.
    void mark_uncancellable() noexcept { uncancellable_.store(true, std::memory_order_relaxed); }
    bool cancellable() const noexcept { return !uncancellable_.load(std::memory_order_relaxed); }

    /// Called by the receiving side just before running the handler; false means "cancelled:
    /// drop it". On true, end_delivery() must follow.
    bool begin_delivery() noexcept;
    void end_delivery() noexcept;

    std::int64_t deadline_ns = 0;  ///< on now_ns()'s clock
    std::int64_t period_ns = 0;    ///< 0 for a one-shot timer

protected:
    virtual ~timer_entry() = default;
    /// On the timer thread when due; delivers (queues) the message. Must not throw.
    virtual void fire() noexcept = 0;
    /// Frees the entry; called once, by whoever drops the last reference.
    virtual void destroy() noexcept = 0;

private:
    friend class timer_service;
    static constexpr std::uint32_t cancelled_bit = 0x8000'0000u;

    std::atomic<std::uint32_t> refs_{1};
    // cancelled_bit | number of deliveries running now
    std::atomic<std::uint32_t> state_{0};
    std::atomic<bool> uncancellable_{false};
};

/// Counters of a timer service.
struct timer_service_stats {
    std::uint64_t armed = 0;
    std::uint64_t fired = 0;      ///< deliveries queued (a periodic timer fires many times)
    std::uint64_t cancelled = 0;  ///< entries that left the wheel cancelled
    std::uint64_t pending = 0;    ///< entries in the wheel or on their way to it
};

class MAILROOM_EXPORT timer_service {
public:
    /// Starts the thread. `tick` is the wheel's resolution: a timer fires within one tick after
    /// its deadline.
    explicit timer_service(std::chrono::nanoseconds tick = std::chrono::milliseconds(1));
    ~timer_service();
    timer_service(const timer_service&) = delete;
    timer_service& operator=(const timer_service&) = delete;

    /// Any thread. Takes over the caller's reference to `e` (the service's reference); returns
    /// false (and releases it) when the service is stopped. One exchange, no lock; wakes the
    /// timer thread only when it sleeps past this deadline.
    bool arm(timer_entry* e) noexcept;

    /// Stops and joins the thread, releasing every entry still armed. Idempotent; never from
    /// the timer thread itself.
    void stop() noexcept;

    timer_service_stats stats() const noexcept;
    std::chrono::nanoseconds tick() const noexcept { return std::chrono::nanoseconds(tick_ns_); }

private:
    struct wheel;
    struct stop_node : mpsc_node {};

    void run() noexcept;
    void drain_commands(wheel& w, bool& running) noexcept;
    void release_all(wheel* w) noexcept;
    /// Releases a cancelled (or abandoned) entry and counts it.
    void drop(timer_entry* e) noexcept;

    std::int64_t tick_ns_;
    worker_mailbox commands_;
    alignas(cache_line) std::atomic<std::int64_t> sleep_until_{0};
    std::atomic<bool> stopped_{false};
    std::atomic<std::uint64_t> armed_{0};
    std::atomic<std::uint64_t> fired_{0};
    std::atomic<std::uint64_t> cancelled_{0};
    std::atomic<std::uint64_t> removed_{0};  // left the wheel; written by the timer thread
    stop_node stop_;
    std::unique_ptr<wheel> wheel_;
    std::thread thread_;
};

}  // namespace mailroom::internal
