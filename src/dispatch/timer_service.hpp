#pragma once
/// The timer service: one thread per environment running a hierarchical timing wheel.

#include <mailroom/export.hpp>
#include <mailroom/queue/mpsc_queue.hpp>
#include <mailroom/queue/worker_mailbox.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

namespace mailroom::internal {

class timer_entry;
class timer_service;

/// What travels through the timer service's command queue: an entry to arm (`unlinks` null: the
/// node is the entry itself) or a request to take `unlinks` out of the wheel.
struct timer_command : mpsc_node {
    timer_entry* unlinks = nullptr;
};

/// What fire() did.
enum class fire_result : std::uint8_t {
    queued,   ///< a delivery was queued (counted fired)
    skipped,  ///< a periodic timer's previous fire is still queued or running: this period is skipped
    none,     ///< nothing to deliver any more (cancel() took the payload meanwhile)
};

/// A timer the service can hold. Reference counted: the service holds one reference while the
/// timer is armed, a handle holds one, and each delivery in flight holds one.
///
/// Cancellation (the guarantee SObjectizer's issue #73 asks for): `cancel()` sets a flag that
/// every delivery checks as it begins, under a counter of deliveries running. When cancel()
/// returns on a thread that is not running one of this timer's deliveries, none is running and
/// none will begin, even for messages already queued. Inside a delivery it does not wait.
///
/// Memory: the first cancel() lets the payload go at once (release_payload(), on the cancelling
/// thread) and tells the timer thread, which takes the entry out of its slot (O(1)) the next
/// time it wakes: within 256 ticks while anything is armed. A cancelled timer never waits in
/// the wheel for its deadline.
///
/// The service that armed an entry must still exist when the entry is first cancelled: an entry
/// keeps what keeps its service alive (an mbox's or a request's environment) until then, or, for
/// a session timer, is cancelled by the environment's teardown before the timer service stops.
class MAILROOM_EXPORT timer_entry : public timer_command {
public:
    timer_entry() noexcept { unlink_.unlinks = this; }
    timer_entry(const timer_entry&) = delete;
    timer_entry& operator=(const timer_entry&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
    }

    /// Any thread. Returns true if this call cancelled it (false if it was already cancelled).
    /// Waits for deliveries running on other threads to finish (spinning briefly, then parked
    /// on a futex that end_delivery() wakes), unless the caller is itself inside a delivery of
    /// this timer. The first call releases the payload and unlinks the entry from the wheel.
    bool cancel() noexcept;
    // seq_cst: a periodic fire() that put its payload back re-checks it against a cancel().
    bool cancelled() const noexcept { return (state_.load(std::memory_order_seq_cst) & cancelled_bit) != 0; }

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
    /// On the timer thread when due; delivers (queues) the message. Must not throw. An entry
    /// that keeps at most one fire waiting (a session timer) returns `skipped` while its previous
    /// fire is still queued or running, however slow its receiver.
    virtual fire_result fire() noexcept = 0;
    /// Lets go of what the timer carries (its message, its request); called once, by the first
    /// cancel(), on the cancelling thread, possibly while fire() runs on the timer thread: an
    /// implementation makes the two safe against each other (an atomic exchange of the pointer).
    virtual void release_payload() noexcept {}
    /// Frees the entry; called once, by whoever drops the last reference.
    virtual void destroy() noexcept = 0;

private:
    friend class timer_service;
    static constexpr std::uint32_t cancelled_bit = 0x8000'0000u;
    static constexpr std::uint32_t unlinking_bit = 0x4000'0000u;  // the first cancel() is telling the service
    static constexpr std::uint32_t waiting_bit = 0x2000'0000u;    // a cancel() sleeps on state_
    static constexpr std::uint32_t busy_mask = unlinking_bit | (waiting_bit - 1);
    static constexpr std::uint8_t no_slot = 0xFF;

    void notify_if_waiting(std::uint32_t before) noexcept;

    std::atomic<std::uint32_t> refs_{1};
    // cancelled_bit | unlinking_bit | waiting_bit | number of deliveries running now
    std::atomic<std::uint32_t> state_{0};
    std::atomic<bool> uncancellable_{false};
    // True from arm() until the service let go of the entry (a one-shot fired, a cancelled entry
    // dropped, the service stopped); false for good after that, so a cancel() of a timer that
    // already left (a fired one-shot whose handle is dropped) tells the service nothing.
    std::atomic<bool> in_service_{false};
    // Where the entry sits in the wheel: the timer thread's alone.
    std::uint8_t slot_level_ = no_slot;
    std::uint8_t slot_index_ = 0;
    std::uint32_t slot_pos_ = 0;
    std::atomic<timer_service*> service_{nullptr};  // set by arm()
    timer_command unlink_;                          // pushed by the first cancel()
};

/// Counters of a timer service.
struct timer_service_stats {
    std::uint64_t armed = 0;
    std::uint64_t fired = 0;      ///< deliveries queued (a periodic timer fires many times)
    std::uint64_t cancelled = 0;  ///< entries that left the wheel cancelled
    std::uint64_t pending = 0;    ///< entries in the wheel or on their way to it
    std::uint64_t skipped = 0;    ///< periods of periodic timers that passed without a fire (see fire())
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
    /// false when the service is stopped: the entry is then released and will not fire (it may
    /// have fired once if stop() ran during this call). One exchange, no lock; wakes the timer
    /// thread only when it sleeps past this deadline. An arm racing stop() never leaves the
    /// entry behind: the push and the check of the stopped flag are ordered so that either
    /// stop() drains it or this call does (under the stop lock, after stop() finished).
    bool arm(timer_entry* e) noexcept;

    /// Stops and joins the thread, releasing every entry still armed. Idempotent; never from
    /// the timer thread itself.
    void stop() noexcept;

    timer_service_stats stats() const noexcept;
    std::chrono::nanoseconds tick() const noexcept { return std::chrono::nanoseconds(tick_ns_); }
    /// The time of tick 0 on now_ns()'s clock: a deadline of `origin_ns() + n * tick()` is due
    /// at tick n, and fires when the wheel reaches it.
    std::int64_t origin_ns() const noexcept;
    /// Timer thread only (inside fire()): the tick being fired.
    std::uint64_t current_tick() const noexcept;

    /// Tests only: `hook(arg)` runs on the arming thread inside arm(), after its first check of
    /// the stopped flag and before the push (the window a concurrent stop() must not leak
    /// through). Set before any arm() and never changed while arming threads run.
    void set_arm_hook(void (*hook)(void*), void* arg) noexcept {
        arm_hook_ = hook;
        arm_hook_arg_ = arg;
    }

private:
    struct wheel;
    struct stop_node : timer_command {};
    friend class timer_entry;

    void run() noexcept;
    void drain_commands(wheel& w, bool& running) noexcept;
    void release_all(wheel* w) noexcept;
    /// Releases a cancelled (or abandoned) entry and counts it.
    void drop(timer_entry* e) noexcept;
    /// Any thread: the first cancel() of an entry this service armed.
    void unlink(timer_entry* e) noexcept;
    /// After a push: false when the service stopped meanwhile, in which case what was pushed
    /// has been drained (after stop() finished) by this call.
    bool after_push() noexcept;
    /// Releases what a command left in the queue holds: an entry to arm is dropped, an unlink
    /// request lets go of its reference.
    void discard_command(timer_command* c) noexcept;

    std::int64_t tick_ns_;
    worker_mailbox commands_;
    alignas(cache_line) std::atomic<std::int64_t> sleep_until_{0};
    std::atomic<bool> stopped_{false};
    std::atomic<std::uint64_t> armed_{0};
    std::atomic<std::uint64_t> fired_{0};
    std::atomic<std::uint64_t> cancelled_{0};
    std::atomic<std::uint64_t> removed_{0};  // left the wheel; written by the timer thread
    std::atomic<std::uint64_t> skipped_{0};
    // Held by stop() from setting `stopped_` until the queue is drained; a late pusher takes it
    // to drain what it pushed after that.
    std::mutex stop_lock_;
    stop_node stop_;
    void (*arm_hook_)(void*) = nullptr;
    void* arm_hook_arg_ = nullptr;
    std::unique_ptr<wheel> wheel_;
    std::thread thread_;
};

/// True on the thread of a timer service (while it fires timers): what a delivery made there
/// must not do is block or throw at the sender (an mchain that is full drops instead).
MAILROOM_EXPORT bool on_timer_thread() noexcept;

}  // namespace mailroom::internal
