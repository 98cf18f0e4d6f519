#include <mailroom/queue/worker_mailbox.hpp>

#include <mailroom/core/clock.hpp>
#include <mailroom/queue/futex.hpp>

#include <unistd.h>

namespace mailroom::internal {

worker_mailbox::worker_mailbox(std::chrono::nanoseconds spin) noexcept : spin_ns_(spin.count()) {}

void worker_mailbox::wake() noexcept {
    if (state_.exchange(awake, std::memory_order_acq_rel) == parked) {
        wakes_.fetch_add(1, std::memory_order_relaxed);
        if (wake_fd_ >= 0) {
            const std::uint64_t one = 1;
            // An eventfd write fails only when the counter would overflow: it is then readable
            // anyway, and the reader wakes.
            [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
        } else {
            futex_wake(state_, 1);
        }
    }
}

void worker_mailbox::wait(std::int64_t deadline_ns) noexcept {
    if (queue_.maybe_nonempty()) return;
    // Spin first: a message that arrives within a wake-up's cost is picked up without any
    // system call on either side. The clock is read every few iterations only.
    std::int64_t now = now_ns();
    const std::int64_t spin_end = now + spin_ns_;
    for (unsigned i = 1; spin_ns_ > 0; ++i) {
        if (queue_.maybe_nonempty()) return;
        cpu_relax();
        if ((i & 15) == 0) {
            now = now_ns();
            if (now >= spin_end || (deadline_ns >= 0 && now >= deadline_ns)) break;
        }
    }
    // A deadline that passed while spinning ends the wait here: announcing `parked` would only
    // count a park that never sleeps and make writers pay for a futex wake nobody waits on.
    if (deadline_ns >= 0 && now_ns() >= deadline_ns) return;
    state_.store(parked, std::memory_order_seq_cst);
    if (queue_.maybe_nonempty()) {
        state_.store(awake, std::memory_order_relaxed);
        return;
    }
    parks_.fetch_add(1, std::memory_order_relaxed);
    while (state_.load(std::memory_order_acquire) == parked) {
        std::int64_t timeout = -1;
        if (deadline_ns >= 0) {
            timeout = deadline_ns - now_ns();
            if (timeout <= 0) break;
        }
        futex_wait(state_, parked, timeout);
    }
    state_.store(awake, std::memory_order_relaxed);
}

}  // namespace mailroom::internal
