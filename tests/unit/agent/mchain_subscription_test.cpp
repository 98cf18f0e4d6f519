// A session or an agent subscribed to an mchain: the chain feeds the serial context as an event
// object of the one handle model (docs/lifetimes.md), without a polling thread.

#include <mailroom/session/session.hpp>

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/mbox/mchain.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;

namespace {

void expect_balanced(environment& env) {
    const environment_stats s = env.stats();
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored +
                                   s.messages_discarded + s.messages_cancelled + s.messages_dropped)
        << "sent " << s.messages_sent << " delivered " << s.messages_delivered << " lost " << s.messages_lost
        << " ignored " << s.messages_ignored << " discarded " << s.messages_discarded;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = 10s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

}  // namespace

TEST(mchain_subscription, session_handles_what_a_foreign_thread_puts_into_the_chain_in_order) {
    environment env;
    session s(env, {.name = "consumer"});
    mchain ch = make_mchain(env, {.name = "feed", .capacity = 64, .wait_for_space = 5s});
    std::vector<int> got;
    std::atomic<int> done{0};
    std::atomic<std::thread::id> ran_on{};
    event_handle sub = s.subscribe(
        ch,
        [&](int i) {
            got.push_back(i);
            ran_on = std::this_thread::get_id();
        },
        [&](const std::string&) { ++done; });
    std::thread producer([&] {
        for (int i = 0; i < 1000; ++i) send<int>(ch, i);
        send<std::string>(ch, "end");
    });
    producer.join();
    ASSERT_TRUE(wait_until([&] { return done.load() == 1; }));
    ASSERT_EQ(got.size(), 1000u);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(got[i], i);
    EXPECT_NE(ran_on.load(), std::this_thread::get_id());
    EXPECT_TRUE(sub);
    EXPECT_EQ(ch.stats().handled, 1001u);
    expect_balanced(env);
}

TEST(mchain_subscription, what_was_in_the_chain_before_subscribing_is_handled) {
    environment env;
    session s(env);
    mchain ch = make_mchain(env);
    for (int i = 0; i < 100; ++i) send<int>(ch, i);
    std::atomic<int> n{0};
    event_handle sub = s.subscribe(ch, [&](int) { ++n; });
    ASSERT_TRUE(wait_until([&] { return n.load() == 100; }));
}

TEST(mchain_subscription, shutdown_from_a_foreign_thread_while_messages_flow_returns_when_no_handler_runs) {
    for (int round = 0; round < 20; ++round) {
        environment env;
        session s(env);
        mchain ch = make_mchain(env, {.capacity = 256, .wait_for_space = 10ms});
        std::atomic<bool> shut{false};
        std::atomic<int> after{0};
        std::atomic<int> handled{0};
        event_handle sub = s.subscribe(ch, [&](int) {
            if (shut.load()) ++after;
            ++handled;
            std::this_thread::yield();
        });
        std::atomic<bool> stop{false};
        std::thread producer([&] {
            while (!stop) send<int>(ch, 1);
        });
        ASSERT_TRUE(wait_until([&] { return handled.load() > 50; }));
        EXPECT_TRUE(sub.shutdown());
        shut = true;
        const int at_shutdown = handled.load();
        std::this_thread::sleep_for(2ms);
        EXPECT_EQ(after.load(), 0);
        EXPECT_EQ(handled.load(), at_shutdown);
        EXPECT_FALSE(sub);
        stop = true;
        producer.join();
        // What it did not take stays in the chain, for anyone else.
        const std::size_t left = ch.size();
        receive(from(ch).no_wait(), [](int) {});
        EXPECT_EQ(ch.stats().extracted, ch.stats().stored);
        (void)left;
        expect_balanced(env);
    }
}

TEST(mchain_subscription, destroying_the_session_stops_the_subscription_and_leaves_the_chain_usable) {
    environment env;
    mchain ch = make_mchain(env);
    std::atomic<int> n{0};
    {
        session s(env);
        event_handle sub = s.subscribe(ch, [&](int) { ++n; });
        sub.detach();
        send<int>(ch, 1);
        ASSERT_TRUE(wait_until([&] { return n.load() == 1; }));
    }
    send<int>(ch, 2);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(n.load(), 1);
    EXPECT_EQ(ch.size(), 1u);
    int got = 0;
    receive(ch, 1s, [&](int i) { got = i; });
    EXPECT_EQ(got, 2);
}

TEST(mchain_subscription, two_subscribers_share_the_messages_each_taken_once) {
    environment env;
    session a(env), b(env);
    mchain ch = make_mchain(env);
    std::atomic<int> na{0}, nb{0};
    event_handle sa = a.subscribe(ch, [&](int) { ++na; });
    event_handle sb = b.subscribe(ch, [&](int) { ++nb; });
    for (int i = 0; i < 2000; ++i) send<int>(ch, i);
    ASSERT_TRUE(wait_until([&] { return na.load() + nb.load() == 2000; }));
    std::this_thread::sleep_for(2ms);
    EXPECT_EQ(na.load() + nb.load(), 2000);
}

TEST(mchain_subscription, message_without_a_handler_is_extracted_and_counted_ignored) {
    environment env;
    session s(env);
    mchain ch = make_mchain(env);
    std::atomic<int> n{0};
    event_handle sub = s.subscribe(ch, [&](int) { ++n; });
    send<double>(ch, 1.0);
    send<int>(ch, 1);
    ASSERT_TRUE(wait_until([&] { return n.load() == 1; }));
    EXPECT_EQ(ch.stats().ignored, 1u);
    EXPECT_EQ(env.stats().messages_ignored, 1u);
    expect_balanced(env);
}

TEST(mchain_subscription, subscribing_to_the_chains_mbox_as_a_topic_raises_naming_the_chain) {
    environment env;
    session s(env, {.name = "s"});
    mchain ch = make_mchain(env, {.name = "jobs"});
    try {
        auto h = s.subscribe<int>(ch.as_mbox(), [](int) {});
        FAIL() << "no subscription_error";
    } catch (const subscription_error& e) {
        EXPECT_NE(std::string(e.what()).find("mchain 'jobs'"), std::string::npos) << e.what();
    }
}

TEST(mchain_subscription, chain_of_another_environment_raises) {
    environment env1, env2;
    session s(env1);
    mchain ch = make_mchain(env2);
    EXPECT_THROW((void)s.subscribe(ch, [](int) {}), subscription_error);
}

namespace {
class chain_reader final : public agent {
public:
    chain_reader(mchain ch, std::atomic<int>* n) : ch_(std::move(ch)), n_(n) {}

protected:
    void configure() override { sub_ = subscribe(ch_, [this](int) { ++*n_; }); }

private:
    mchain ch_;
    std::atomic<int>* n_;
    event_handle sub_;
};
}  // namespace

TEST(mchain_subscription, agent_subscribes_to_a_chain_and_its_deregistration_ends_it) {
    environment env;
    mchain ch = make_mchain(env);
    std::atomic<int> n{0};
    for (int i = 0; i < 10; ++i) send<int>(ch, i);
    coop co(env);
    co.make_agent<chain_reader>(ch, &n);
    coop_handle c = register_coop(std::move(co));
    ASSERT_TRUE(wait_until([&] { return n.load() == 10; }));
    c.deregister();
    ASSERT_TRUE(wait_until([&] { return !c; }));
    send<int>(ch, 11);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(n.load(), 10);
    EXPECT_EQ(ch.size(), 1u);
}

TEST(mchain_subscription, environment_teardown_with_a_subscribed_session_discards_and_balances) {
    auto env = std::make_unique<environment>();
    session s(*env);
    mchain ch = make_mchain(*env);
    std::atomic<bool> block{true};
    std::atomic<int> n{0};
    event_handle sub = s.subscribe(ch, [&](int) {
        ++n;
        while (block) std::this_thread::sleep_for(100us);
    });
    for (int i = 0; i < 100; ++i) send<int>(ch, i);
    ASSERT_TRUE(wait_until([&] { return n.load() == 1; }));
    env->stop();
    block = false;
    env->join();
    expect_balanced(*env);
    EXPECT_GT(env->stats().messages_discarded, 0u);
}

TEST(mchain_subscription, handler_that_throws_is_counted_and_the_subscription_goes_on) {
    std::atomic<int> logged{0};
    environment env({.log = [&](std::string_view) { ++logged; }});
    session s(env);
    mchain ch = make_mchain(env);
    std::atomic<int> n{0};
    event_handle sub = s.subscribe(ch, [&](int i) {
        ++n;
        if (i == 3) throw std::runtime_error("bad job");
    });
    for (int i = 0; i < 10; ++i) send<int>(ch, i);
    ASSERT_TRUE(wait_until([&] { return n.load() == 10; }));
    EXPECT_EQ(env.stats().handler_exceptions, 1u);
    EXPECT_GE(logged.load(), 1);
    EXPECT_EQ(ch.stats().handled, 10u);
    expect_balanced(env);
}
