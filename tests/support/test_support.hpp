#pragma once
// Helpers shared by the tests: bounded waits (a test never hangs) and sanitizer detection
// (stress loops run fewer rounds under a sanitizer, whose instrumentation is 5-20x slower).

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <thread>

#include <unistd.h>

namespace mailroom::test {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// Rounds for a stress loop: `full` normally, a tenth under a sanitizer.
constexpr long rounds(long full) { return sanitized ? full / 10 : full; }

/// Polls `pred` until it holds or `limit` passes; returns its last value.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= end) return pred();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
}

/// Resident set size of this process, from /proc/self/statm (0 if it cannot be read).
inline std::size_t resident_bytes() {
    long pages_total = 0, pages_resident = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
        std::fclose(f);
    }
    return static_cast<std::size_t>(pages_resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace mailroom::test
