// Session timers at their edges: what a destroyed timer still holds, a periodic timer slower
// than its period, and delays that make no sense.

#include <mailroom/session/session.hpp>

#include <mailroom/mailroom.hpp>

#include <test_support.hpp>
#include <all_stats.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using mailroom::test::eventually;

namespace {

TEST(session_timer, a_destroyed_timer_leaves_the_wheel_long_before_its_deadline) {
    mailroom::environment env;
    mailroom::session s(env, {.name = "poller"});
    auto token = std::make_shared<int>(0);
    std::weak_ptr<int> watch = token;
    for (int i = 0; i < 500; ++i) s.add_timer(1h, 0ms, [token] {}).destroy();
    s.add_timer(1h, 1h, [t = std::move(token)] {}).destroy();
    // The callbacks (and what they captured) go at retire, on the session's context.
    EXPECT_TRUE(eventually([&] { return watch.expired(); }, 10s));
    // The entries leave the wheel within a sweep of its first level, not in an hour.
    EXPECT_TRUE(eventually([&] { return env.stats().timers_pending == 0; }, 10s))
        << env.stats().timers_pending << " destroyed session timers still in the wheel";
    EXPECT_EQ(env.stats().timers_cancelled, 501u);
    EXPECT_EQ(env.stats().timers_fired, 0u);
}

TEST(session_timer, a_periodic_timer_slower_than_its_period_never_has_more_than_one_fire_queued) {
    mailroom::environment env;
    mailroom::session slow(env, {.name = "slow"});
    // The periods of the slow timer that came up, whether they fired or were skipped.
    const auto periods = [&] {
        auto st = mailroom::test::all_stats_of(env);
        return st.timers_fired + st.timers_skipped;
    };
    std::atomic<int> calls{0};
    auto handle = std::make_shared<mailroom::event_handle>();  // used on `slow` only
    std::atomic<bool> armed{false};
    std::atomic<bool> done{false};
    slow.post([&] {
        *handle = slow.add_timer(0ms, 1ms, [&] {
            if (calls.fetch_add(1) == 0) {
                // Slower than the period: fifty periods pass while this first call runs.
                EXPECT_TRUE(eventually([&] { return periods() >= 51; }, 20s));
                handle->shutdown();  // inside its own callback: nothing starts after this one
            }
        });
        armed = true;
    });
    ASSERT_TRUE(eventually([&] { return armed.load(); }, 10s));
    ASSERT_TRUE(eventually([&] { return calls.load() >= 1 && !*handle; }, 30s));
    // What was queued behind the slow call is refused once it comes up; a call posted now runs
    // after all of it.
    slow.post([&] { done = true; });
    ASSERT_TRUE(eventually([&] { return done.load(); }, 10s));
    auto st = mailroom::test::all_stats_of(env);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_LE(st.callbacks_refused, 1u) << "fires piled up behind a slow periodic timer";
    EXPECT_GE(st.timers_skipped, 40u) << "periods passed while a fire was queued or running must be counted";
    slow.post([handle] { handle->destroy(); });
}

TEST(session_timer, a_negative_delay_or_period_raises_usage_error_naming_the_session) {
    mailroom::environment env;
    mailroom::session s(env, {.name = "poller"});
    for (auto [delay, period] : {std::pair{-1ms, 0ms}, std::pair{-1ms, 5ms}, std::pair{0ms, -1ms}}) {
        try {
            (void)s.add_timer(delay, period, [] {});
            ADD_FAILURE() << "add_timer(" << delay.count() << " ms, " << period.count() << " ms) was accepted";
        } catch (const mailroom::usage_error& e) {
            EXPECT_NE(std::string(e.what()).find("'poller'"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("negative"), std::string::npos) << e.what();
        }
    }
    EXPECT_EQ(env.stats().timers_armed, 0u);
}

}  // namespace
