#pragma once
/// The queue a worker thread sleeps on: many writers, one reader, lock-free, with ZeroMQ's
/// `active` flag so that a writer makes a system call only when the reader is parked.

#include <mailroom/export.hpp>
#include <mailroom/queue/mpsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace mailroom::internal {

/// Default bounded spin before a reader parks: about what waking a parked thread costs on the
/// virtual machines mailroom is measured on, so a reader never spins longer than a wake-up saves.
inline constexpr std::chrono::nanoseconds default_spin{std::chrono::microseconds(20)};

class MAILROOM_EXPORT worker_mailbox {
public:
    explicit worker_mailbox(std::chrono::nanoseconds spin = default_spin) noexcept;
    worker_mailbox(const worker_mailbox&) = delete;
    worker_mailbox& operator=(const worker_mailbox&) = delete;

    /// Any thread; never blocks and never allocates. Costs one exchange and one load while the
    /// reader is awake; a futex wake only when it is parked.
    void push(mpsc_node* n) noexcept {
        queue_.push(n);
        // The exchange in push() and this load are both seq_cst, as are the reader's store of
        // `parked` and its re-check of the queue: at least one side sees the other, so a message
        // can never sit in the queue while the reader sleeps.
        wake_if_parked();
    }

    /// Any thread. Pushes without waking a parked reader: for writers that know the reader will
    /// wake on its own early enough (the timer service's far deadlines). Not seen by a parked
    /// reader until it wakes; seen by a reader about to park (it re-checks the queue).
    void push_quiet(mpsc_node* n) noexcept { queue_.push(n); }

    /// Reader only. The oldest message, or nullptr.
    mpsc_node* pop() noexcept { return queue_.pop(); }

    /// Reader only. Returns when a message may be waiting, when `deadline_ns` (on now_ns()'s
    /// clock; negative means none) passes, or after wake(). Spins for the configured time first.
    void wait(std::int64_t deadline_ns = -1) noexcept;

    /// Any thread. Wakes the reader if it is parked (used to deliver a push, or to stop it).
    void wake() noexcept;

    /// Any thread. wake(), but costs only a load when the reader is awake. For a writer that
    /// used push_quiet() and then decided the reader must see its message now.
    void wake_if_parked() noexcept {
        if (state_.load(std::memory_order_seq_cst) == parked) wake();
    }

    /// Reader only. True when a push has started that pop() has not yet returned.
    bool maybe_nonempty() const noexcept { return queue_.maybe_nonempty(); }

    /// Before the reader first waits: wake() then signals the eventfd `fd` instead of the futex,
    /// for a reader that parks in epoll_wait with `fd` in its set (an event loop). The push path
    /// is unchanged: a system call only while the reader is parked.
    void use_wake_fd(int fd) noexcept { wake_fd_ = fd; }

    /// Reader only, for a reader that sleeps elsewhere (epoll_wait): announces `parked` and
    /// re-checks the queue. False: a message arrived, do not sleep (still awake). True: sleep
    /// until the wake fd is signalled, then call end_park().
    bool begin_park() noexcept {
        state_.store(parked, std::memory_order_seq_cst);
        if (queue_.maybe_nonempty()) {
            state_.store(awake, std::memory_order_relaxed);
            return false;
        }
        parks_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    /// Reader only, after a sleep that begin_park() allowed.
    void end_park() noexcept { state_.store(awake, std::memory_order_seq_cst); }

    /// How many times the reader parked, and how many futex wakes writers issued.
    std::uint64_t parks() const noexcept { return parks_.load(std::memory_order_relaxed); }
    std::uint64_t wakes() const noexcept { return wakes_.load(std::memory_order_relaxed); }

    std::chrono::nanoseconds spin() const noexcept { return std::chrono::nanoseconds(spin_ns_); }

private:
    static constexpr std::uint32_t awake = 0;
    static constexpr std::uint32_t parked = 1;

    mpsc_queue queue_;
    alignas(cache_line) std::atomic<std::uint32_t> state_{awake};
    std::atomic<std::uint64_t> wakes_{0};
    alignas(cache_line) std::atomic<std::uint64_t> parks_{0};
    std::int64_t spin_ns_;
    int wake_fd_ = -1;
};

}  // namespace mailroom::internal
