#pragma once
// Helpers shared by the tests: bounded waits (a test never hangs) and sanitizer detection
// (stress loops run fewer rounds under a sanitizer, whose instrumentation is 5-20x slower).

#include <chrono>
#include <thread>

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

}  // namespace mailroom::test
