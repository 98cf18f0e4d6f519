#pragma once
/// Thin wrappers over the Linux futex: park a thread on a 32-bit word, wake it.

#include <mailroom/export.hpp>

#include <atomic>
#include <cstdint>
#include <thread>

namespace mailroom::internal {

/// Sleeps while `*word == expected`, at most `timeout_ns` (negative: no limit). May return spuriously.
MAILROOM_EXPORT void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                                std::int64_t timeout_ns = -1) noexcept;

/// Wakes up to `count` threads sleeping on `word`.
MAILROOM_EXPORT void futex_wake(std::atomic<std::uint32_t>& word, int count = 1) noexcept;

/// One iteration of a spin-wait loop: tells the CPU this core is spinning.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

/// Backoff of a consumer that found a push mid-way (a producer swapped the tail but has not
/// linked its node yet, perhaps preempted between the two): pause instructions for a bounded
/// spin, then yield the core, which the producer may need to finish its push.
class spin_backoff {
public:
    void pause() noexcept {
        if (spins_ < limit) {
            ++spins_;
            cpu_relax();
        } else {
            std::this_thread::yield();
        }
    }
    /// After progress: the next mid-way push starts a fresh spin.
    void reset() noexcept { spins_ = 0; }

private:
    static constexpr unsigned limit = 64;
    unsigned spins_ = 0;
};

}  // namespace mailroom::internal
