#include <mailroom/mbox/limits.hpp>

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include "probe.hpp"

#include <mailroom/mbox/limit_table.hpp>
#include <mailroom/session/context.hpp>

#include <gtest/gtest.h>

#include <algorithm>
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

struct ping {
    int n = 0;
};
struct pong {
    int n = 0;
};
struct overflow {
    int n = 0;
};
struct hold final : mailroom::signal {};
struct tick final : mailroom::signal {};
struct heavy {
    int n = 0;
    std::size_t limit_bytes() const noexcept { return 100; }
};

/// Blocks an agent in a handler (of `hold`) until released, so that what is sent meanwhile
/// waits in its queue. Every wait is bounded.
struct blocker {
    std::atomic<bool> holding{false};
    std::atomic<bool> released{false};

    void subscribe(probe& p) {
        p.subscribe<hold>(p.direct_mbox(), [this] {
            holding = true;
            test::eventually([this] { return released.load(); }, 20s);
        });
    }
    /// Sends `hold` and waits until the handler runs.
    bool engage(const mbox& m) {
        send<hold>(m);
        return test::wait_set(holding);
    }
    void release() { released = true; }

    /// Releases the blocker when a failed assertion leaves the test early (declared after the
    /// environment, it runs before the environment's teardown waits for the handler).
    struct guard {
        blocker& b;
        ~guard() { b.release(); }
    };
};

/// sent = delivered + lost + ignored + discarded + cancelled + dropped.
void expect_books_balance(const environment_stats& s) {
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped)
        << "sent " << s.messages_sent << " delivered " << s.messages_delivered << " lost " << s.messages_lost
        << " ignored " << s.messages_ignored << " discarded " << s.messages_discarded << " cancelled "
        << s.messages_cancelled << " dropped " << s.messages_dropped;
}

const limit_stats* stats_for(const std::vector<limit_stats>& v, message_type t) {
    for (auto& s : v)
        if (s.type == t) return &s;
    return nullptr;
}

/// What the tests here start from: an environment, and a blocker (declared around it so that
/// it is released, even by a failed assertion, before the environment's teardown waits for the
/// handler it holds).
struct limits : ::testing::Test {
    blocker b;
    environment env;
    blocker::guard unblock{b};

    /// Stops the environment and joins it; false if it did not end within the bound.
    bool stop_in_time() {
        env.stop();
        return test::join_within(env);
    }
};

TEST_F(limits, drop_reaction_drops_and_counts_what_exceeds_the_limit) {
    std::atomic<int> handled{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(3, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++handled; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 10; ++i) send<ping>(m, i);
    auto ls = limit_stats_of(*agent);
    const limit_stats* s = stats_for(ls, message_type_of<ping>());
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->queued, 3u);
    EXPECT_EQ(s->dropped, 7u);
    EXPECT_EQ(s->bounds.messages, 3u);
    EXPECT_EQ(s->reaction, limit_reaction::drop);
    EXPECT_EQ(env.stats().messages_dropped, 7u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 3; }));
    // Each message left the count as its handling began: the limit takes 3 again.
    ASSERT_TRUE(test::eventually([&] { return stats_for(limit_stats_of(*agent), message_type_of<ping>())->queued == 0; }));
    ASSERT_TRUE(stop_in_time());
    auto st = env.stats();
    EXPECT_EQ(st.messages_dropped, 7u);
    EXPECT_EQ(st.messages_lost, 0u);
    expect_books_balance(st);
}

TEST_F(limits, limiting_one_type_leaves_the_others_unlimited) {
    std::atomic<int> pings{0}, pongs{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.limit<ping>(2, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++pings; });
        p.subscribe(p.direct_mbox(), [&](const pong&) { ++pongs; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 20; ++i) {
        send<ping>(m, i);
        send<pong>(m, i);
    }
    b.release();
    ASSERT_TRUE(test::eventually([&] { return pings.load() == 2 && pongs.load() == 20; }));
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 18u);
    expect_books_balance(env.stats());
}

TEST_F(limits, default_limit_covers_unlisted_types_together_and_a_listed_type_keeps_its_own) {
    std::atomic<int> pings{0}, pongs{0}, ticks{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(5, limit_drop);
        p.limit<any_other_message>(3, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++pings; });
        p.subscribe(p.direct_mbox(), [&](const pong&) { ++pongs; });
        p.subscribe<tick>(p.direct_mbox(), [&] { ++ticks; });
    });
    ASSERT_TRUE(b.engage(m));  // `hold` itself was counted by the default limit, then taken out
    for (int i = 0; i < 10; ++i) {
        send<ping>(m, i);
        send<pong>(m, i);
        send<tick>(m);
    }
    auto ls = limit_stats_of(*agent);
    ASSERT_EQ(ls.size(), 2u);
    const limit_stats* other = stats_for(ls, message_type_of<any_other_message>());
    ASSERT_NE(other, nullptr);
    EXPECT_EQ(other->queued, 3u);  // pongs and ticks share the default's count
    EXPECT_EQ(other->dropped, 17u);
    EXPECT_EQ(stats_for(ls, message_type_of<ping>())->dropped, 5u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return pings.load() == 5 && pongs.load() + ticks.load() == 3; }));
    // Removing ping's own limit puts ping under the default.
    agent->remove_limit<ping>();
    ASSERT_TRUE(test::eventually([&] { return stats_for(limit_stats_of(*agent), message_type_of<any_other_message>())->queued == 0; }));
    EXPECT_EQ(limit_stats_of(*agent).size(), 1u);
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 22u);
    expect_books_balance(env.stats());
}

TEST_F(limits, bytes_limit_bounds_what_the_queued_messages_weigh) {
    std::atomic<int> handled{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<heavy>({.messages = 1000, .bytes = 350}, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const heavy&) { ++handled; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 10; ++i) send<heavy>(m, i);
    const auto ls = limit_stats_of(*agent);
    const limit_stats* s = stats_for(ls, message_type_of<heavy>());
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->queued, 3u);
    EXPECT_EQ(s->queued_bytes, 300u);
    EXPECT_EQ(s->dropped, 7u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 3; }));
    ASSERT_TRUE(stop_in_time());
    expect_books_balance(env.stats());
}

TEST_F(limits, redirect_reaction_sends_the_rest_on_to_another_mbox) {
    std::atomic<int> first{0}, second{0}, sum{0};
    auto own = active_obj::make_dispatcher(env, "own");
    mbox spare = test::add_probe(
        env,
        [&](probe& p) {
            p.subscribe(p.direct_mbox(), [&](const ping& x) {
                ++second;
                sum += x.n;
            });
        },
        {.bind = own.bind()});
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(2, limit_redirect{spare});
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++first; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 10; ++i) send<ping>(m, i);
    ASSERT_TRUE(test::eventually([&] { return second.load() == 8; }));
    EXPECT_EQ(sum.load(), 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9);  // the ones over the limit, unchanged
    EXPECT_EQ(stats_for(limit_stats_of(*agent), message_type_of<ping>())->redirected, 8u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return first.load() == 2; }));
    ASSERT_TRUE(stop_in_time());
    auto st = env.stats();
    EXPECT_EQ(st.messages_redirected, 8u);
    EXPECT_EQ(st.messages_dropped, 0u);
    EXPECT_EQ(st.messages_sent, 1u + 10u);  // hold, 2 pings here, 8 counted where they went
    expect_books_balance(st);
}

TEST_F(limits, transform_reaction_sends_another_message_instead) {
    std::atomic<int> overflows{0}, sum{0}, pings{0};
    auto own = active_obj::make_dispatcher(env, "own");
    mbox spare = test::add_probe(
        env,
        [&](probe& p) {
            p.subscribe(p.direct_mbox(), [&](const overflow& o) {
                ++overflows;
                sum += o.n;
            });
        },
        {.bind = own.bind()});
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(2, limit_transform{[spare](const ping& x) {
                          // Odd ones are transformed, even ones dropped (an empty result).
                          return x.n % 2 ? transformed::make<overflow>(spare, x.n * 10) : transformed();
                      }});
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++pings; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 10; ++i) send<ping>(m, i);
    ASSERT_TRUE(test::eventually([&] { return overflows.load() == 4; }));
    EXPECT_EQ(sum.load(), (3 + 5 + 7 + 9) * 10);
    const auto ls = limit_stats_of(*agent);
    const limit_stats* s = stats_for(ls, message_type_of<ping>());
    EXPECT_EQ(s->transformed, 4u);
    EXPECT_EQ(s->dropped, 4u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return pings.load() == 2; }));
    ASSERT_TRUE(stop_in_time());
    auto st = env.stats();
    EXPECT_EQ(st.messages_transformed, 4u);
    EXPECT_EQ(st.messages_dropped, 4u);
    expect_books_balance(st);
}

TEST_F(limits, a_redirect_loop_between_two_agents_over_their_limits_ends_at_depth_32_with_a_counted_drop) {
    mbox a_box = make_mpmc_mbox(env);  // the loop goes through a topic each agent listens to
    mbox b_box = make_mpmc_mbox(env);
    std::atomic<int> handled{0};
    test::add_probe(env, [&](probe& p) {
        p.limit<ping>(0, limit_redirect{b_box});
        p.subscribe(a_box, [&](const ping&) { ++handled; });
    });
    test::add_probe(env, [&](probe& p) {
        p.limit<ping>(0, limit_redirect{a_box});
        p.subscribe(b_box, [&](const ping&) { ++handled; });
    });
    send<ping>(a_box, 1);  // returns: the chain is capped
    auto st = env.stats();
    EXPECT_EQ(st.messages_redirected, 32u);
    EXPECT_EQ(st.messages_dropped, 1u);
    EXPECT_EQ(st.messages_sent, 1u);
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(handled.load(), 0);
    expect_books_balance(env.stats());
}

TEST_F(limits, limit_declared_after_traffic_started_is_honoured_by_the_next_send) {
    // A send tests the receiver's start byte, in which the first limit of the record raises a
    // bit: declared while messages flow, from another thread, it must take the next send.
    std::atomic<int> handled{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++handled; });
    });
    for (int i = 0; i < 3; ++i) send<ping>(m, i);  // no limit yet
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 3; }));
    ASSERT_TRUE(b.engage(m));
    std::thread([&] { agent->limit<ping>(2, limit_drop); }).join();
    for (int i = 0; i < 5; ++i) send<ping>(m, i);  // 2 queued, 3 dropped
    auto s = *stats_for(limit_stats_of(*agent), message_type_of<ping>());
    EXPECT_EQ(s.queued, 2u);
    EXPECT_EQ(s.dropped, 3u);
    b.release();
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 5; }));
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 3u);
    expect_books_balance(env.stats());
}

TEST_F(limits, limit_changed_at_run_time_from_another_thread_applies_to_the_next_send) {
    std::atomic<int> handled{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(2, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++handled; });
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 5; ++i) send<ping>(m, i);  // 2 queued, 3 dropped
    std::thread([&] { agent->limit<ping>(4, limit_drop); }).join();
    for (int i = 0; i < 5; ++i) send<ping>(m, i);  // 2 more queued, 3 dropped
    auto s = *stats_for(limit_stats_of(*agent), message_type_of<ping>());
    EXPECT_EQ(s.bounds.messages, 4u);
    EXPECT_EQ(s.queued, 4u);
    EXPECT_EQ(s.dropped, 6u);
    std::thread([&] { agent->remove_limit<ping>(); }).join();
    for (int i = 0; i < 5; ++i) send<ping>(m, i);  // no limit: all queued
    EXPECT_TRUE(limit_stats_of(*agent).empty());
    b.release();
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 9; }));
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 6u);
    expect_books_balance(env.stats());
}

TEST_F(limits, a_change_of_reaction_racing_sends_loses_no_message) {
    std::atomic<int> here{0}, there{0};
    mbox spare = test::add_probe(env, [&](probe& p) { p.subscribe(p.direct_mbox(), [&](const ping&) { ++there; }); });
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(1, limit_drop);
        p.subscribe(p.direct_mbox(), [&](const ping&) {
            ++here;
            std::this_thread::yield();
        });
    });
    std::atomic<bool> done{false};
    std::thread flipper([&] {
        for (int i = 0; !done.load(); ++i) {
            if (i % 2) agent->limit<ping>(1, limit_drop);
            else agent->limit<ping>({.messages = 2, .bytes = 1000}, limit_redirect{spare});
        }
    });
    constexpr int n = 20000;
    for (int i = 0; i < n; ++i) send<ping>(m, i);
    done = true;
    flipper.join();
    ASSERT_TRUE(test::eventually([&] {
        auto s = env.stats();
        return static_cast<std::uint64_t>(here.load() + there.load()) + s.messages_dropped == n;
    }));
    auto s = env.stats();
    EXPECT_EQ(s.messages_redirected, static_cast<std::uint64_t>(there.load()));
    ASSERT_TRUE(stop_in_time());
    expect_books_balance(env.stats());
}

TEST_F(limits, timer_messages_over_their_limit_are_dropped_and_counted_never_aborting) {
    std::atomic<int> ticks{0};
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<tick>(1, limit_abort);  // abort for sends from threads; a timer's are dropped
        b.subscribe(p);
        p.subscribe<tick>(p.direct_mbox(), [&] { ++ticks; });
    });
    ASSERT_TRUE(b.engage(m));
    timer_handle t = send_periodic<tick>(m, 0ms, 1ms);
    std::vector<timer_handle> once;
    for (int i = 0; i < 5; ++i) once.push_back(send_delayed<tick>(m, 1ms));
    ASSERT_TRUE(test::eventually([&] {
        auto s = limit_stats_of(*agent);
        return !s.empty() && s[0].dropped >= 10;
    }));
    t.shutdown();
    b.release();
    ASSERT_TRUE(stop_in_time());
    auto st = env.stats();
    EXPECT_GE(st.messages_dropped, 10u);
    EXPECT_EQ(st.limit_aborts, 0u);
    expect_books_balance(st);
}

TEST_F(limits, a_session_limit_bounds_its_inboxes) {
    std::atomic<bool> holding{false}, released{false};
    std::atomic<int> handled{0};
    session s(env, {.name = "slow"});
    s.limit<ping>(2, limit_drop);
    inbox_handle in = s.add_inbox<ping>([&](const ping&) { ++handled; });
    ASSERT_TRUE(s.post([&] {
        holding = true;
        test::eventually([&] { return released.load(); }, 20s);
    }));
    ASSERT_TRUE(test::wait_set(holding));
    for (int i = 0; i < 10; ++i) send<ping>(in.address(), i);
    auto ls = limit_stats_of(s);
    ASSERT_EQ(ls.size(), 1u);
    EXPECT_EQ(ls[0].dropped, 8u);
    released = true;
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 2; }));
    s.destroy();
    EXPECT_THROW(s.limit<ping>(2, limit_drop), session_destroyed_error);
    ASSERT_TRUE(stop_in_time());
    expect_books_balance(env.stats());
}

TEST_F(limits, an_inbox_made_with_a_limit_has_its_own_count_beside_the_session_limit) {
    std::atomic<bool> holding{false}, released{false};
    std::atomic<int> limited{0}, other{0};
    session s(env, {.name = "desk"});
    s.limit<ping>(5, limit_drop);
    inbox_handle small = s.add_inbox<ping>([&](const ping&) { ++limited; }, {.messages = 2}, limit_drop);
    inbox_handle big = s.add_inbox<ping>([&](const ping&) { ++other; });
    ASSERT_TRUE(s.post([&] {
        holding = true;
        test::eventually([&] { return released.load(); }, 20s);
    }));
    ASSERT_TRUE(test::wait_set(holding));
    for (int i = 0; i < 10; ++i) {
        send<ping>(small.address(), i);
        send<ping>(big.address(), i);
    }
    auto ls = limit_stats_of(s);
    ASSERT_EQ(ls.size(), 2u);
    for (const limit_stats& x : ls) {
        EXPECT_EQ(x.dropped, x.inbox ? 8u : 5u);
        EXPECT_EQ(x.queued, x.inbox ? 2u : 5u);
    }
    released = true;
    ASSERT_TRUE(test::eventually([&] { return limited.load() == 2 && other.load() == 5; }));
    s.destroy();
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 13u);
    expect_books_balance(env.stats());
}

TEST_F(limits, a_session_subscription_made_with_a_limit_drops_publications_over_it) {
    std::atomic<bool> holding{false}, released{false};
    std::atomic<int> handled{0};
    mbox topic = make_mpmc_mbox(env);
    session s(env, {.name = "watcher"});
    event_handle sub = s.subscribe<ping>(topic, [&](const ping&) { ++handled; }, {.messages = 3}, limit_drop);
    ASSERT_TRUE(s.post([&] {
        holding = true;
        test::eventually([&] { return released.load(); }, 20s);
    }));
    ASSERT_TRUE(test::wait_set(holding));
    for (int i = 0; i < 10; ++i) send<ping>(topic, i);
    auto ls = limit_stats_of(s);
    ASSERT_EQ(ls.size(), 1u);
    EXPECT_TRUE(ls[0].inbox);
    EXPECT_EQ(ls[0].dropped, 7u);
    released = true;
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 3; }));
    s.destroy();
    ASSERT_TRUE(stop_in_time());
    EXPECT_EQ(env.stats().messages_dropped, 7u);
    expect_books_balance(env.stats());
}

TEST_F(limits, counts_are_given_back_by_messages_that_find_no_handler) {
    probe* agent = nullptr;
    std::atomic<int> handled{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(5, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++handled; });
        p.subscribe<tick>(p.direct_mbox(), [&p] { p.unsubscribe<ping>(p.direct_mbox()); });
    });
    ASSERT_TRUE(b.engage(m));
    send<tick>(m);
    for (int i = 0; i < 5; ++i) send<ping>(m, i);  // behind the tick: found without a handler
    b.release();
    ASSERT_TRUE(test::eventually([&] { return env.stats().messages_ignored == 5; }));
    // Ignored, yet given back: the limit takes 5 again.
    EXPECT_EQ(stats_for(limit_stats_of(*agent), message_type_of<ping>())->queued, 0u);
    EXPECT_EQ(handled.load(), 0);
    ASSERT_TRUE(stop_in_time());
    expect_books_balance(env.stats());
}

TEST_F(limits, counts_are_given_back_by_messages_still_queued_when_the_agent_goes_at_teardown) {
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(5, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [&](const ping&) {});
    });
    ASSERT_TRUE(b.engage(m));
    for (int i = 0; i < 5; ++i) send<ping>(m, i);
    // The record outlives the agent (the reference holds its arena): its slot is read after.
    internal::context_ref ref = internal::ref_of(*agent);
    internal::limit_table* t = ref.core->limits.load();
    ASSERT_NE(t, nullptr);
    std::uint8_t index = 0;
    internal::limit_slot& slot = t->find(message_type_of<ping>(), 0, index);
    ASSERT_EQ(index, 1u);
    EXPECT_EQ(slot.queued.load(), 5u);
    env.stop();  // the pings behind the hold are lost or discarded, never handled
    b.release();
    ASSERT_TRUE(test::join_within(env));
    EXPECT_EQ(slot.queued.load(), 0u);
    EXPECT_EQ(slot.queued_bytes.load(), 0u);
    expect_books_balance(env.stats());
}

TEST_F(limits, redirect_to_an_empty_handle_or_a_32nd_type_is_refused_naming_the_agent) {
    std::atomic<bool> checked{false};
    test::add_probe(env, [&](probe& p) {
        p.set_name("picky");
        try {
            p.limit<ping>(1, limit_redirect{mbox()});
            ADD_FAILURE() << "no error";
        } catch (const usage_error& e) {
            EXPECT_NE(std::string(e.what()).find("picky"), std::string::npos) << e.what();
        }
        checked = true;
    });
    EXPECT_TRUE(checked.load());
    ASSERT_TRUE(stop_in_time());
}

TEST(limits_death, abort_reaction_aborts_naming_the_agent_and_the_type) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            blocker b;
            environment env;
            mbox m = test::add_probe(env, [&](probe& p) {
                p.set_name("strict");
                p.limit<ping>(1, limit_abort);
                b.subscribe(p);
                p.subscribe(p.direct_mbox(), [](const ping&) {});
            });
            b.engage(m);
            send<ping>(m, 1);
            send<ping>(m, 2);
            std::this_thread::sleep_for(20s);
        },
        "strict.*message limit reached for .*ping");
}

TEST(limits_death, log_then_abort_calls_the_callback_with_the_message_then_aborts) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            blocker b;
            environment env;
            mbox m = test::add_probe(env, [&](probe& p) {
                p.limit<ping>(1, limit_log_then_abort{[](const ping& x) {
                                  std::fprintf(stderr, "overloaded by ping %d\n", x.n);
                              }});
                b.subscribe(p);
                p.subscribe(p.direct_mbox(), [](const ping&) {});
            });
            b.engage(m);
            send<ping>(m, 1);
            send<ping>(m, 42);
            std::this_thread::sleep_for(20s);
        },
        "overloaded by ping 42");
}


TEST_F(limits, a_full_limit_never_shows_more_waiting_than_its_bound_while_sends_are_refused) {
    // Two threads keep sending to a blocked agent whose limit is full, so that nearly every
    // send is refused, while this thread reads the limit's count: it must never exceed the
    // limit, not even for the instant a refused send is being turned away.
    probe* agent = nullptr;
    mbox m = test::add_probe(env, [&](probe& p) {
        agent = &p;
        p.limit<ping>(4, limit_drop);
        b.subscribe(p);
        p.subscribe(p.direct_mbox(), [](const ping&) {});
    });
    ASSERT_TRUE(b.engage(m));
    std::atomic<bool> stop{false};
    std::vector<std::thread> senders;
    for (int t = 0; t < 2; ++t)
        senders.emplace_back([&] {
            for (int i = 0; i < 2'000'000 && !stop.load(std::memory_order_relaxed); ++i) send<ping>(m, i);
        });
    std::uint64_t most = 0, samples = 0;
    const auto until = std::chrono::steady_clock::now() + 300ms;
    while (std::chrono::steady_clock::now() < until) {
        const auto ls = limit_stats_of(*agent);
        const limit_stats* s = stats_for(ls, message_type_of<ping>());
        ASSERT_NE(s, nullptr);
        most = std::max(most, s->queued);
        ++samples;
    }
    stop = true;
    for (auto& th : senders) th.join();
    EXPECT_LE(most, 4u) << "over " << samples << " samples";
    const auto after = limit_stats_of(*agent);
    const limit_stats* s = stats_for(after, message_type_of<ping>());
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->queued, 4u);
    EXPECT_GT(s->dropped, 0u);
    b.release();
    ASSERT_TRUE(stop_in_time());
    expect_books_balance(env.stats());
}

}  // namespace
