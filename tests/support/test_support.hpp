#pragma once
// Helpers shared by the tests: bounded waits (a test never hangs), sanitizer detection
// (stress loops run fewer rounds under a sanitizer, whose instrumentation is 5-20x slower), and
// one collector for what callbacks hand a test from other threads.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

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

/// What a callback hands a test from any thread (a watchdog's stall reports, teardown overruns,
/// an environment's log lines), in the order it came, with the thread each came on; a test
/// waits for what it expects with a bounded wait. Read `items` and `threads` under `m`.
template <class T>
class collector {
public:
    /// Any thread: keeps `item` and wakes the waiters.
    void add(T item) {
        std::lock_guard g(m);
        items.push_back(std::move(item));
        threads.push_back(std::this_thread::get_id());
        cv.notify_all();
    }
    /// A callback that keeps what it is given (for an on_stall, on_overrun, ... option).
    std::function<void(const T&)> adder() {
        return [this](const T& item) { add(item); };
    }
    /// Waits up to `limit` until `pred(items)` holds; its last value.
    template <class Pred>
    bool wait_until(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        std::unique_lock g(m);
        return cv.wait_for(g, limit, [&] { return pred(items); });
    }
    std::size_t count() {
        std::lock_guard g(m);
        return items.size();
    }

    std::mutex m;
    std::condition_variable cv;
    std::vector<T> items;                  // under m
    std::vector<std::thread::id> threads;  // under m: the thread each item came on
};

/// The lines an environment logs: `environment_options::log = lines.sink()`.
class log_lines : public collector<std::string> {
public:
    std::function<void(std::string_view)> sink() {
        return [this](std::string_view line) { add(std::string(line)); };
    }
    /// True if a line logged so far contains `part`.
    bool has(std::string_view part) {
        std::lock_guard g(m);
        return contains(items, part);
    }
    /// Waits up to `limit` for a line that contains `part`.
    bool wait_for(std::string_view part, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
        return wait_until([&](const std::vector<std::string>& lines) { return contains(lines, part); }, limit);
    }

private:
    static bool contains(const std::vector<std::string>& lines, std::string_view part) {
        for (auto& l : lines)
            if (l.find(part) != std::string::npos) return true;
        return false;
    }
};

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
