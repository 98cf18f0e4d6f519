#include <mailroom/mbox/timer.hpp>

#include <mailroom/mailroom.hpp>

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::probe;
using clock_type = std::chrono::steady_clock;

// The first deadline of periodic timers: long enough that the timer thread cannot fire (and
// re-arm) an entry while send_periodic is still inside timer_service::arm(), which reads the
// entry's deadline after queueing it (a data race in the dispatch layer, reported).
constexpr auto first_period = 10ms;

struct wake {
    int n = 0;
};
struct block final : mailroom::signal {};
struct sentinel final : mailroom::signal {};
struct tick final : mailroom::signal {};

TEST(timer, send_delayed_delivers_once_and_not_before_the_delay) {
    environment env;
    std::atomic<int> got{0};
    std::atomic<std::int64_t> at{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const wake& w) {
            at = clock_type::now().time_since_epoch().count();
            got += w.n;
        });
    });
    const auto start = clock_type::now();
    auto h = send_delayed<wake>(m, 30ms, 1);
    EXPECT_TRUE(h);
    ASSERT_TRUE(test::eventually([&] { return got.load() > 0; }));
    EXPECT_GE(clock_type::time_point(clock_type::duration(at.load())) - start, 30ms);
    std::this_thread::sleep_for(40ms);
    EXPECT_EQ(got.load(), 1);
    EXPECT_EQ(env.stats().timers_fired, 1u);
    EXPECT_TRUE(h);  // a fired one-shot still counts until cancelled
}

TEST(timer, a_one_shot_message_is_moved_to_its_receiver) {
    environment env;
    std::atomic<int> value{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](std::unique_ptr<int> v) { value = *v; });
    });
    auto h = send_delayed<std::unique_ptr<int>>(m, 1ms, std::make_unique<int>(42));
    ASSERT_TRUE(test::eventually([&] { return value.load() == 42; }));
}

TEST(timer, send_periodic_repeats_until_cancelled) {
    environment env;
    std::atomic<int> got{0};
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe<tick>(p.direct_mbox(), [&] { ++got; }); });
    auto h = send_periodic<tick>(m, first_period, 2ms);
    ASSERT_TRUE(test::eventually([&] { return got.load() >= 4; }));
    EXPECT_TRUE(h.cancel());
    EXPECT_FALSE(h);
    const int after = got.load();
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(got.load(), after);  // nothing once cancel() returned
    EXPECT_FALSE(h.cancel());
}

TEST(timer, a_periodic_message_is_the_same_instance_each_time) {
    environment env;
    std::mutex mu;
    std::vector<const void*> seen;
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const wake& w) {
            std::lock_guard g(mu);
            seen.push_back(&w);
        });
    });
    auto h = send_periodic<wake>(m, first_period, 1ms, 5);
    ASSERT_TRUE(test::eventually([&] {
        std::lock_guard g(mu);
        return seen.size() >= 3;
    }));
    h.cancel();
    std::lock_guard g(mu);
    for (auto* p : seen) EXPECT_EQ(p, seen.front());
}

TEST(timer, a_periodic_timer_with_no_period_raises_usage_error) {
    environment env;
    mbox m = make_mpmc_mbox(env);
    EXPECT_THROW((void)send_periodic<tick>(m, 1ms, 0ms), usage_error);
    EXPECT_THROW((void)send_periodic<wake>(m, 1ms, -5ms, 1), usage_error);
    EXPECT_THROW((void)send_delayed<tick>(mbox(), 1ms), usage_error);
    EXPECT_EQ(env.stats().timers_armed, 0u);
}

// The receiver is busy in a long handler while the timer fires into its queue; cancel() from
// another thread must still keep the queued message from being handled (guarantee 2).
struct cancel_case {
    const char* name;
    bool drop_handle;  // cancel by destroying the handle instead of cancel()
    bool periodic;
};

class timer_cancel : public testing::TestWithParam<cancel_case> {};

TEST_P(timer_cancel, a_message_already_queued_is_not_handled_after_cancel) {
    environment env;
    std::atomic<bool> inside{false}, release{false}, saw_sentinel{false};
    std::atomic<int> ticks{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe<block>(p.direct_mbox(), [&] {
            inside = true;
            test::wait_set(release);
        });
        p.subscribe<tick>(p.direct_mbox(), [&] { ++ticks; });
        p.subscribe<sentinel>(p.direct_mbox(), [&] { saw_sentinel = true; });
    });
    send<block>(m);
    ASSERT_TRUE(test::wait_set(inside));
    auto h = GetParam().periodic ? send_periodic<tick>(m, first_period, 1ms) : send_delayed<tick>(m, 1ms);
    // Wait until the timer fired: its message sits in the blocked receiver's queue.
    ASSERT_TRUE(test::eventually([&] { return env.stats().timers_fired >= 1; }));
    if (GetParam().drop_handle)
        h = timer_handle();
    else
        EXPECT_TRUE(h.cancel());
    EXPECT_FALSE(h);
    send<sentinel>(m);
    release = true;
    ASSERT_TRUE(test::wait_set(saw_sentinel));
    EXPECT_EQ(ticks.load(), 0);
    auto s = env.stats();
    EXPECT_GE(s.messages_cancelled, 1u);
    EXPECT_EQ(s.messages_cancelled, s.timers_fired);  // every queued copy was dropped
}

INSTANTIATE_TEST_SUITE_P(ways, timer_cancel,
                         testing::Values(cancel_case{"cancel", false, false}, cancel_case{"drop", true, false},
                                         cancel_case{"cancel_periodic", false, true},
                                         cancel_case{"drop_periodic", true, true}),
                         [](const testing::TestParamInfo<cancel_case>& i) { return std::string(i.param.name); });

TEST(timer, dropping_the_handle_before_it_fires_cancels) {
    environment env;
    std::atomic<int> got{0};
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe<tick>(p.direct_mbox(), [&] { ++got; }); });
    // Due in 300 ms: at 10 ms, a test thread preempted that long between arming a timer and
    // dropping its handle let it fire (and be handled) first.
    { auto h = send_delayed<tick>(m, 300ms); }
    auto moved_over = send_delayed<tick>(m, 300ms);
    moved_over = send_delayed<tick>(m, 300ms);  // the first one is cancelled by the assignment
    timer_handle taker(std::move(moved_over));
    EXPECT_FALSE(moved_over);
    EXPECT_TRUE(taker);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 1; }));
    std::this_thread::sleep_for(30ms);
    EXPECT_EQ(got.load(), 1);
    EXPECT_TRUE(test::eventually([&] { return env.stats().timers_pending == 0; }));
    EXPECT_EQ(env.stats().timers_cancelled, 2u);
}

TEST(timer, detach_and_post_delayed_let_the_timer_run) {
    environment env;
    std::atomic<int> got{0};
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe(p.direct_mbox(), [&](const wake& w) { got += w.n; }); });
    {
        auto h = send_delayed<wake>(m, 5ms, 1);
        h.detach();
        EXPECT_FALSE(h);
    }
    post_delayed<wake>(m, 5ms, 10);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 11; }));
}

TEST(timer, cancel_inside_the_timers_own_handler_does_not_wait_and_stops_it) {
    environment env;
    std::atomic<int> got{0};
    auto handle = std::make_shared<timer_handle>();  // used on the agent's thread only
    std::atomic<bool> cancelled{false};
    test::add_probe(
        env,
        [&](probe& p) {
            p.subscribe<tick>(p.direct_mbox(), [&] {
                if (++got == 3) {
                    const bool first = handle->cancel();
                    *handle = timer_handle();  // and drop it, inside its own delivery
                    cancelled = first;
                }
            });
        },
        {}, [&](probe& p) { *handle = send_periodic<tick>(p.direct_mbox(), first_period, 1ms); });
    ASSERT_TRUE(test::wait_set(cancelled));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(got.load(), 3);
}

TEST(timer, timers_to_an_mpmc_mbox_reach_every_subscriber) {
    environment env;
    mbox topic = make_mpmc_mbox(env);
    std::atomic<int> got{0};
    for (int i = 0; i < 3; ++i) test::add_probe(env, [&](probe& p) { p.subscribe<tick>(topic, [&] { ++got; }); });
    auto h = send_delayed<tick>(topic, 1ms);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 3; }));
}

TEST(timer, handles_dropped_in_any_order_and_after_the_environment_leak_nothing) {
    std::vector<timer_handle> survivors;
    std::atomic<int> got{0};
    {
        environment env;
        mbox m = test::add_probe(env, [&](probe& p) {
            p.subscribe<tick>(p.direct_mbox(), [&] { ++got; });
            p.subscribe(p.direct_mbox(), [&](const wake&) { ++got; });
        });
        mbox topic = make_named_mbox(env, "t");
        std::vector<timer_handle> hs;
        for (int i = 0; i < 8; ++i) {
            hs.push_back(send_delayed<wake>(m, std::chrono::milliseconds(i % 2 ? 1 : 10000), i));
            hs.push_back(send_periodic<wake>(topic, first_period, std::chrono::milliseconds(1 + i), i));
        }
        ASSERT_TRUE(test::eventually([&] { return got.load() >= 4; }));
        // Drop some from the back, some from the front, some cancelled first.
        hs[0].cancel();
        hs.erase(hs.begin(), hs.begin() + 3);
        hs.pop_back();
        hs[2].cancel();
        for (std::size_t i = 0; i < hs.size(); i += 2) survivors.push_back(std::move(hs[i]));
        hs.clear();
        post_delayed<wake>(m, 1h, 1);                    // still pending at the end
        send_periodic<tick>(m, 1h, 1h).detach();          // likewise
        survivors.push_back(send_delayed<tick>(m, 1h));  // outlives the environment
    }
    EXPECT_FALSE(survivors.empty());
    // The environment is gone: cancelling and dropping the rest must be safe.
    survivors[0].cancel();
    survivors.pop_back();
    survivors.clear();
}

// A message whose lifetime the test can see: it holds a token the test watches.
struct payload {
    std::shared_ptr<int> token;
    std::vector<char> ballast = std::vector<char>(4096);
};

TEST(timer, cancel_releases_the_message_at_once_and_the_timer_leaves_the_wheel_soon) {
    environment env;
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe(p.direct_mbox(), [](const payload&) {}); });
    auto one_shot_token = std::make_shared<int>(1);
    auto periodic_token = std::make_shared<int>(2);
    std::weak_ptr<int> one_shot = one_shot_token, periodic = periodic_token;
    auto h1 = send_delayed<payload>(m, 1h, std::exchange(one_shot_token, nullptr));
    auto h2 = send_periodic<payload>(m, 1h, 1h, std::exchange(periodic_token, nullptr));
    ASSERT_FALSE(one_shot.expired());
    ASSERT_FALSE(periodic.expired());
    // The handles are kept: cancel() alone must let the messages go, on this thread, now.
    EXPECT_TRUE(h1.cancel());
    EXPECT_TRUE(one_shot.expired()) << "a cancelled send_delayed kept its message";
    EXPECT_TRUE(h2.cancel());
    EXPECT_TRUE(periodic.expired()) << "a cancelled send_periodic kept its message";
    // The entries leave the wheel within a sweep, not in an hour.
    EXPECT_TRUE(test::eventually([&] { return env.stats().timers_pending == 0; }, 10s))
        << env.stats().timers_pending << " cancelled timers still in the wheel";
    EXPECT_EQ(env.stats().timers_cancelled, 2u);
    // Many dropped handles: the wheel holds none of them for long.
    for (int i = 0; i < 2000; ++i) (void)send_delayed<payload>(m, 1h, std::make_shared<int>(i));
    EXPECT_TRUE(test::eventually([&] { return env.stats().timers_pending == 0; }, 10s))
        << env.stats().timers_pending << " of 2000 cancelled timers still in the wheel";
    EXPECT_EQ(env.stats().timers_fired, 0u);
}

TEST(timer, a_negative_delay_raises_usage_error_naming_the_mbox) {
    environment env;
    mbox m = make_named_mbox(env, "quotes");
    const auto names_the_mbox = [](auto&& schedule) {
        try {
            schedule();
        } catch (const usage_error& e) {
            EXPECT_NE(std::string(e.what()).find("quotes"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("negative"), std::string::npos) << e.what();
            return true;
        }
        return false;
    };
    EXPECT_TRUE(names_the_mbox([&] { (void)send_delayed<tick>(m, -1ms); }));
    EXPECT_TRUE(names_the_mbox([&] { (void)send_delayed<wake>(m, -1ns, 1); }));
    EXPECT_TRUE(names_the_mbox([&] { (void)send_periodic<tick>(m, -5ms, 1ms); }));
    EXPECT_TRUE(names_the_mbox([&] { post_delayed<tick>(m, -1h); }));
    EXPECT_EQ(env.stats().timers_armed, 0u);
    auto h = send_delayed<tick>(m, 0ms);  // zero stays valid: due now
    EXPECT_TRUE(h);
}

}  // namespace
