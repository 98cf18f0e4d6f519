#pragma once
/// Thin wrappers over the Linux futex: park a thread on a 32-bit word, wake it.

#include <mailroom/export.hpp>

#include <atomic>
#include <cstdint>

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

}  // namespace mailroom::internal
