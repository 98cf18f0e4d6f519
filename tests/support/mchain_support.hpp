#pragma once
// Helpers shared by the mchain tests: a message that counts its live instances, the books of
// guarantee 6, and bounded waits on threads that may block in a chain (a test never hangs).

#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <utility>

namespace mailroom::test {

/// Counts its live instances: a message that is dropped must be destroyed, not leaked.
struct tracked {
    static inline std::atomic<int> live{0};
    int v = 0;
    explicit tracked(int x) : v(x) { ++live; }
    tracked(const tracked& o) : v(o.v) { ++live; }
    tracked(tracked&& o) noexcept : v(o.v) { ++live; }
    ~tracked() { --live; }
};

/// The books of guarantee 6 balance, also while messages wait in a chain (it is counted at its
/// outcome).
inline void expect_balanced(const environment& env) {
    const environment_stats s = env.stats();
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped)
        << "sent " << s.messages_sent << " delivered " << s.messages_delivered << " lost " << s.messages_lost
        << " ignored " << s.messages_ignored << " discarded " << s.messages_discarded << " cancelled "
        << s.messages_cancelled << " dropped " << s.messages_dropped;
}

/// The result of `f`, which must be ready within `limit`; else the test fails and the run ends
/// (a thread blocked in a chain cannot be joined).
template <class T>
T get_bounded(std::future<T>& f, std::chrono::seconds limit = std::chrono::seconds(60)) {
    if (f.wait_for(limit) != std::future_status::ready) {
        ADD_FAILURE() << "a thread did not return within " << limit.count() << " s";
        std::abort();
    }
    return f.get();
}

/// Runs `f` on a thread of its own, and returns its result within `limit` (see get_bounded).
template <class F>
auto bounded(F f, std::chrono::seconds limit = std::chrono::seconds(10)) {
    auto fut = std::async(std::launch::async, std::move(f));
    return get_bounded(fut, limit);
}

}  // namespace mailroom::test
