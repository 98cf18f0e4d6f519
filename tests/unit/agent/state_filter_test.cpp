// Subscriptions by state compose with delivery filters and message limits: the filter decides on
// the sender's side what is queued at all, the limit bounds what waits, and the state decides on
// the agent's context which handler (if any) takes what arrived.

#include <mailroom/mailroom.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

struct reading {
    int v = 0;
};
struct close_gate final : signal {};

template <class Pred>
bool eventually(Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

/// What the agents below count, owned by the test: read after the environment joined, when the
/// agents are gone.
struct tally {
    std::atomic<int> handled{0};
    std::atomic<int> last{-1};
    std::atomic<bool> release{false};
};

class gate final : public agent {
public:
    gate(mbox topic, tally& t) : topic_(std::move(topic)), t_(t) {}

    state open_{*this, "open"};
    state closed_{*this, "closed"};

private:
    void configure() override {
        open_.event(topic_, [this](const reading& r) {
            t_.last.store(r.v);
            t_.handled.fetch_add(1);
        });
        open_.just_switch_to<close_gate>(direct_mbox(), closed_);
        // The subscription to (topic, reading) is the open state's: the filter goes with it.
        set_delivery_filter(topic_, [](const reading& r) { return r.v % 2 == 0; });
    }
    void on_start() override { change_state(open_); }

    mbox topic_;
    tally& t_;
};

TEST(state_filter, a_filter_on_a_subscription_made_in_a_state_refuses_on_the_sender_side_in_every_state) {
    tally t;
    environment env;
    mbox topic = make_mpmc_mbox(env);
    coop c(env);
    gate& g = c.make_agent<gate>(topic, t);
    const mbox to = g.direct_mbox();
    register_coop(std::move(c));
    ASSERT_TRUE(eventually([&] { return g.current_state_path() == "open"; }));

    for (int i = 0; i < 10; ++i) send<reading>(topic, i);
    ASSERT_TRUE(eventually([&] { return t.handled.load() == 5; })) << t.handled.load();
    EXPECT_EQ(t.last.load(), 8);
    send<close_gate>(to);
    ASSERT_TRUE(eventually([&] { return g.current_state_path() == "closed"; }));

    // Closed: the odd ones are still refused by the filter before anything is queued; the even
    // ones reach the agent and find no handler in this state (ignored).
    for (int i = 10; i < 20; ++i) send<reading>(topic, i);
    env.stop();
    env.join();
    EXPECT_EQ(t.handled.load(), 5);
    const environment_stats s = env.stats();
    EXPECT_EQ(s.messages_filtered, 10u);
    EXPECT_EQ(s.messages_ignored, 15u);  // 10 refused by the filter + 5 no state took
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped);
}

class slow_in_state final : public agent {
public:
    slow_in_state(mbox topic, tally& t) : topic_(std::move(topic)), t_(t) { limit<reading>(4, limit_drop); }

    state working_{*this, "working"};

private:
    void configure() override {
        working_.event(topic_, [this](const reading&) {
            while (!t_.release.load()) std::this_thread::sleep_for(100us);
            t_.handled.fetch_add(1);
        });
        set_delivery_filter(topic_, [](const reading& r) { return r.v >= 0; });
    }
    void on_start() override { change_state(working_); }

    mbox topic_;
    tally& t_;
};

TEST(state_filter, a_limit_bounds_what_waits_for_a_state_handler_behind_a_filter) {
    tally t;
    environment env;
    mbox topic = make_mpmc_mbox(env);
    coop c(env);
    slow_in_state& a = c.make_agent<slow_in_state>(topic, t);
    register_coop(std::move(c));
    ASSERT_TRUE(eventually([&] { return a.current_state_path() == "working"; }));

    send<reading>(topic, 0);  // taken by the handler, which then waits for `release`
    ASSERT_TRUE(eventually([&] {
        for (const limit_stats& l : limit_stats_of(a))
            if (l.queued == 0) return true;
        return false;
    }));
    for (int i = 1; i <= 20; ++i) send<reading>(topic, i);
    send<reading>(topic, -1);  // refused by the filter: never counts against the limit
    t.release.store(true);
    env.stop();
    env.join();
    const environment_stats s = env.stats();
    EXPECT_EQ(t.handled.load(), 5);  // the one running, then the four the limit let wait
    EXPECT_EQ(s.messages_dropped, 16u);
    EXPECT_EQ(s.messages_filtered, 1u);
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped);
}

}  // namespace
