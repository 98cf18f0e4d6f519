#include <mailroom/mbox/mbox.hpp>

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::probe;

struct quote {
    int price = 0;
};
struct trade {
    int volume = 0;
};
struct tick final : mailroom::signal {};
struct flush final : mailroom::signal {};

TEST(mbox, handles_report_kind_id_and_name) {
    environment env;
    mbox anon = make_mpmc_mbox(env);
    mbox named = make_named_mbox(env, "quotes");
    mbox direct = test::add_probe(env, {});
    EXPECT_EQ(anon.kind(), mbox_kind::mpmc);
    EXPECT_EQ(named.kind(), mbox_kind::mpmc);
    EXPECT_EQ(direct.kind(), mbox_kind::direct);
    EXPECT_NE(anon.id(), named.id());
    EXPECT_NE(anon.id(), direct.id());
    EXPECT_NE(anon.name().find(std::to_string(anon.id())), std::string::npos) << anon.name();
    EXPECT_NE(named.name().find("quotes"), std::string::npos);
    EXPECT_NE(direct.name().find("agent"), std::string::npos);
    EXPECT_TRUE(anon);
    EXPECT_FALSE(mbox());
    EXPECT_FALSE(anon == named);
    EXPECT_TRUE(anon == mbox(anon));
}

TEST(mbox, sending_through_an_empty_handle_raises_usage_error) {
    EXPECT_THROW(send<quote>(mbox(), 1), usage_error);
    EXPECT_THROW(send<tick>(mbox()), usage_error);
}

TEST(mbox, publishing_with_no_subscriber_is_not_a_loss) {
    environment env;
    mbox topic = make_mpmc_mbox(env);
    for (int i = 0; i < 10; ++i) send<quote>(topic, i);
    send<tick>(topic);
    auto s = test::all_stats_of(env);
    EXPECT_EQ(s.messages_lost, 0u);
    EXPECT_EQ(s.messages_sent, 0u);
    EXPECT_EQ(s.messages_discarded, 0u);
}

TEST(mbox, mpmc_delivers_each_type_to_its_subscribers_only) {
    environment env;
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mbox topic = make_mpmc_mbox(env);
    std::atomic<int> quotes{0}, trades{0}, ticks{0};
    constexpr int quote_subs = 3;
    for (int i = 0; i < quote_subs; ++i)
        test::add_probe(env, [&](probe& p) { p.subscribe(topic, [&](const quote& q) { quotes += q.price; }); },
                        {.bind = pool.bind_fifo(thread_pool::fifo::agent)});
    test::add_probe(env, [&](probe& p) {
        p.subscribe(topic, [&](const trade& t) { trades += t.volume; });
        p.subscribe<tick>(topic, [&] { ++ticks; });
    });
    send<quote>(topic, 10);
    send<trade>(topic, 7);
    send<tick>(topic);
    send<flush>(topic);  // nobody: dropped, not lost
    ASSERT_TRUE(test::eventually([&] { return quotes.load() == 30 && trades.load() == 7 && ticks.load() == 1; }));
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(quotes.load(), 30);
    auto s = test::all_stats_of(env);
    EXPECT_EQ(s.messages_sent, 5u);  // 3 quotes, 1 trade, 1 tick
    EXPECT_EQ(s.messages_lost, 0u);
}

TEST(mbox, an_agent_may_subscribe_to_several_mboxes_and_tell_them_apart) {
    environment env;
    mbox a = make_mpmc_mbox(env), b = make_mpmc_mbox(env);
    std::atomic<int> from_a{0}, from_b{0};
    test::add_probe(env, [&](probe& p) {
        p.subscribe(a, [&](const quote& q) { from_a += q.price; });
        p.subscribe(b, [&](const quote& q) { from_b += q.price; });
    });
    send<quote>(a, 1);
    send<quote>(b, 100);
    ASSERT_TRUE(test::eventually([&] { return from_a.load() == 1 && from_b.load() == 100; }));
}

TEST(mbox, a_finishing_subscriber_leaves_its_topics_and_loses_nothing) {
    // Quotes published while a subscriber's cooperation deregisters are not losses: the
    // subscriber leaves the topic when it starts finishing, and what was already queued behind
    // its finish is counted ignored, never lost (guarantee 6 is about direct sends).
    environment env;
    mbox topic = make_mpmc_mbox(env);
    std::atomic<bool> in_handler{false}, release{false}, finished{false};
    std::atomic<int> handled{0};
    coop_options o;
    o.on_deregistered = [&](std::string_view, dereg_reason) { finished = true; };
    coop c(env, std::move(o));
    auto& p = c.make_agent<probe>();
    p.on_configure = [&](probe& self) {
        self.subscribe(topic, [&](const quote&) {
            ++handled;
            in_handler = true;
            while (!release.load()) std::this_thread::yield();
        });
    };
    auto h = register_coop(std::move(c));
    send<quote>(topic, 1);
    ASSERT_TRUE(test::wait_set(in_handler));
    h.deregister();  // the finish demand queues behind the running handler
    for (int i = 0; i < 10; ++i) send<quote>(topic, i);  // behind the finish
    release = true;
    ASSERT_TRUE(test::wait_set(finished));
    // The ten behind the finish run (and count) after it, on the agent's worker.
    ASSERT_TRUE(test::eventually([&] { return env.stats().messages_ignored == 10; }));
    for (int i = 0; i < 10; ++i) send<quote>(topic, i);  // after it left: nobody listens
    auto s = test::all_stats_of(env);
    EXPECT_EQ(handled.load(), 1);
    EXPECT_EQ(s.messages_lost, 0u);
    EXPECT_EQ(s.messages_ignored, 10u);
    EXPECT_EQ(s.messages_sent, 11u);
}

TEST(mbox, named_mboxes_are_found_by_name_and_unique) {
    environment env({.name = "registry"});
    mbox q = make_named_mbox(env, "quotes");
    EXPECT_TRUE(find_named_mbox(env, "quotes") == q);
    EXPECT_TRUE(named_mbox(env, "quotes") == q);
    EXPECT_FALSE(find_named_mbox(env, "trades"));
    mbox t = named_mbox(env, "trades");  // made on first use
    EXPECT_TRUE(find_named_mbox(env, "trades") == t);
    EXPECT_FALSE(t == q);
    try {
        make_named_mbox(env, "quotes");
        ADD_FAILURE() << "duplicate named mbox";
    } catch (const duplicate_name_error& e) {
        EXPECT_NE(std::string(e.what()).find("quotes"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("registry"), std::string::npos) << e.what();
    }
    // Names are per environment.
    environment other;
    EXPECT_FALSE(find_named_mbox(other, "quotes"));
    EXPECT_NO_THROW(make_named_mbox(other, "quotes"));
    // A subscriber through a found handle gets what is published through the original.
    std::atomic<int> got{0};
    test::add_probe(env, [&](probe& p) { p.subscribe(find_named_mbox(env, "quotes"), [&](const quote&) { ++got; }); });
    send<quote>(q, 1);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 1; }));
}

TEST(mbox, subscribe_and_unsubscribe_while_other_threads_publish) {
    environment env;
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mbox topic = make_mpmc_mbox(env);
    std::atomic<bool> stop{false};
    std::atomic<int> late{0};     // deliveries after unsubscribe returned
    std::atomic<int> cycles{0};
    constexpr int agents = 4;
    for (int i = 0; i < agents; ++i) {
        auto subscribed = std::make_shared<bool>(false);  // the agent's own state
        test::add_probe(env, [&, subscribed](probe& p) {
            p.subscribe<tick>(p.direct_mbox(), [&, &p = p, subscribed] {
                if (*subscribed) {
                    EXPECT_TRUE(p.unsubscribe<quote>(topic));
                    *subscribed = false;
                    ++cycles;
                } else {
                    p.subscribe(topic, [&, subscribed](const quote&) {
                        if (!*subscribed) ++late;
                    });
                    *subscribed = true;
                }
                if (!stop.load()) send<tick>(p.direct_mbox());
            });
            send<tick>(p.direct_mbox());
        },
                        {.bind = pool.bind_fifo(thread_pool::fifo::agent)});
    }
    std::vector<std::thread> publishers;
    for (int t = 0; t < 2; ++t)
        publishers.emplace_back([&] {
            const auto end = std::chrono::steady_clock::now() + (test::sanitized ? 150ms : 300ms);
            while (std::chrono::steady_clock::now() < end) send<quote>(topic, 1);
        });
    for (auto& t : publishers) t.join();
    ASSERT_TRUE(test::eventually([&] { return cycles.load() >= agents; }));
    stop = true;
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    EXPECT_EQ(late.load(), 0);
    auto s = test::all_stats_of(env);
    EXPECT_GT(s.messages_delivered, 0u);
    EXPECT_EQ(s.agents_created, s.agents_destroyed);
}

}  // namespace
