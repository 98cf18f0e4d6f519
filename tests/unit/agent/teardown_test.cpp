// The teardown deadline (issue 3, guarantee 4): a handler that does not return while the
// environment is torn down is reported (dispatcher, worker, agent or session, message type,
// how long), and the teardown follows its policy; the teardown report counts what was
// discarded.

#include "probe.hpp"

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;
using test::probe;

namespace {

struct quote {
    int px = 0;
};

// Records overrun reports and what was logged; `release` lets the stuck handler return.
struct watch {
    std::mutex mu;
    std::vector<handler_overrun> overruns;
    std::vector<std::string> logged;
    std::atomic<bool> release{false};
    std::atomic<int> reports{0};
    int release_after = 1;  // reports before the handler is let go

    environment_options options(std::chrono::milliseconds deadline, std::string name = "torn") {
        environment_options o;
        o.name = std::move(name);
        o.teardown_deadline = deadline;
        o.log = [this](std::string_view t) {
            std::lock_guard g(mu);
            logged.emplace_back(t);
        };
        o.on_overrun = [this](const handler_overrun& r) {
            {
                std::lock_guard g(mu);
                overruns.push_back(r);
            }
            if (reports.fetch_add(1) + 1 >= release_after) release = true;
        };
        return o;
    }

    // What a stuck handler does: waits for the watch (bounded, so a broken test fails).
    void block() const { test::eventually([&] { return release.load(); }, 30s); }
};

}  // namespace

TEST(teardown, a_stuck_agent_handler_is_reported_with_agent_coop_and_message_type) {
    watch w;
    auto env = std::make_unique<environment>(w.options(60ms));
    std::atomic<bool> inside{false};
    coop_options co;
    co.name = "gateway";
    mbox m = test::add_probe(
        *env,
        [&](probe& p) {
            p.set_name("order-router");
            p.subscribe(p.direct_mbox(), [&](const quote&) {
                inside = true;
                w.block();
            });
        },
        std::move(co));
    send<quote>(m, 1);
    ASSERT_TRUE(test::wait_set(inside));
    const auto t0 = std::chrono::steady_clock::now();
    env->stop();
    teardown_report r = env->join();
    const auto waited = std::chrono::steady_clock::now() - t0;
    ASSERT_EQ(r.overruns.size(), 1u);
    const handler_overrun& o = r.overruns[0];
    EXPECT_EQ(o.dispatcher, "default");
    EXPECT_EQ(o.worker, 0u);
    EXPECT_EQ(o.context, "agent 'order-router' of cooperation 'gateway'");
    EXPECT_NE(o.message_type.find("quote"), std::string::npos) << o.message_type;
    EXPECT_GE(o.running_for, 60ms);
    EXPECT_LE(o.running_for, waited);
    EXPECT_NE(o.text.find("order-router"), std::string::npos);
    EXPECT_NE(o.text.find("report_and_wait"), std::string::npos);
    EXPECT_EQ(env->stats().teardown_overruns, 1u);
    // Reported through the log as well, and the same report for a second join.
    {
        std::lock_guard g(w.mu);
        bool found = false;
        for (auto& l : w.logged) found = found || l == o.text;
        EXPECT_TRUE(found);
    }
    EXPECT_EQ(env->join().overruns.size(), 1u);
}

TEST(teardown, a_stuck_session_callback_is_reported_with_the_session_and_what_runs) {
    watch w;
    auto env = std::make_unique<environment>(w.options(60ms));
    std::atomic<bool> inside{false};
    session s(*env, {.name = "risk-poller"});
    s.post([&] {
        inside = true;
        w.block();
    });
    s.detach();
    ASSERT_TRUE(test::wait_set(inside));
    env->stop();
    teardown_report r = env->join();
    ASSERT_EQ(r.overruns.size(), 1u);
    EXPECT_EQ(r.overruns[0].context, "session 'risk-poller'");
    EXPECT_EQ(r.overruns[0].message_type, "posted call");
}

TEST(teardown, an_inbox_callback_shows_its_message_type_and_a_timer_its_kind) {
    for (int kind = 0; kind < 2; ++kind) {
        watch w;
        auto env = std::make_unique<environment>(w.options(60ms));
        std::atomic<bool> inside{false};
        session s(*env, {.name = "feed"});
        auto stuck = [&] {
            inside = true;
            w.block();
        };
        inbox_handle in;
        event_handle t;
        if (kind == 0) {
            in = s.add_inbox<quote>([&](const quote&) { stuck(); });
            send<quote>(in.address(), 3);
        } else {
            t = s.add_timer(1ms, 0ns, stuck);
        }
        ASSERT_TRUE(test::wait_set(inside));
        env->stop();
        teardown_report r = env->join();
        ASSERT_EQ(r.overruns.size(), 1u);
        EXPECT_EQ(r.overruns[0].context, "session 'feed'");
        if (kind == 0)
            EXPECT_NE(r.overruns[0].message_type.find("quote"), std::string::npos);
        else
            EXPECT_EQ(r.overruns[0].message_type, "timer callback");
    }
}

TEST(teardown, report_and_wait_reports_again_at_twice_the_deadline_and_keeps_waiting) {
    watch w;
    w.release_after = 2;
    auto env = std::make_unique<environment>(w.options(50ms));
    std::atomic<bool> inside{false}, returned{false};
    mbox m = test::add_probe(*env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const quote&) {
            inside = true;
            w.block();
            returned = true;
        });
    });
    send<quote>(m, 1);
    ASSERT_TRUE(test::wait_set(inside));
    env->stop();
    teardown_report r = env->join();
    // join() returned only after the handler did: the teardown stays synchronous.
    EXPECT_TRUE(returned.load());
    ASSERT_EQ(r.overruns.size(), 2u);
    EXPECT_GE(r.overruns[0].running_for, 50ms);
    EXPECT_GE(r.overruns[1].running_for, 100ms);
    EXPECT_GT(r.overruns[1].running_for, r.overruns[0].running_for);
}

TEST(teardown, a_handler_that_returns_within_the_deadline_is_not_reported) {
    watch w;
    auto env = std::make_unique<environment>(w.options(std::chrono::milliseconds(test::sanitized ? 5000 : 2000)));
    std::atomic<bool> inside{false};
    mbox m = test::add_probe(*env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const quote&) {
            inside = true;
            std::this_thread::sleep_for(30ms);
        });
    });
    send<quote>(m, 1);
    ASSERT_TRUE(test::wait_set(inside));
    env->stop();
    teardown_report r = env->join();
    EXPECT_TRUE(r.overruns.empty());
    EXPECT_EQ(w.reports.load(), 0);
    EXPECT_EQ(env->stats().teardown_overruns, 0u);
}

TEST(teardown, a_zero_deadline_never_reports) {
    watch w;
    auto env = std::make_unique<environment>(w.options(0ms));
    std::atomic<bool> inside{false};
    session s(*env);
    s.post([&] {
        inside = true;
        std::this_thread::sleep_for(50ms);
    });
    s.detach();
    ASSERT_TRUE(test::wait_set(inside));
    env->stop();
    EXPECT_TRUE(env->join().overruns.empty());
}

TEST(teardown_death, the_abort_policy_reports_then_aborts) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            environment_options o;
            o.name = "doomed";
            o.teardown_deadline = 50ms;
            o.on_teardown_overrun = overrun_policy::abort;
            environment env(std::move(o));
            std::atomic<bool> inside{false};
            mbox m = test::add_probe(env, [&](probe& p) {
                p.set_name("wedged");
                p.subscribe(p.direct_mbox(), [&](const quote&) {
                    inside = true;
                    std::this_thread::sleep_for(60s);
                });
            });
            send<quote>(m, 1);
            test::wait_set(inside);
            env.stop();
            env.join();
        },
        "wedged.*quote.*policy: abort");
}

TEST(teardown, the_report_counts_what_was_discarded_and_logs_it) {
    // Producers on foreign threads keep sending to a session's inbox while the environment
    // stops: what is still queued when the dispatchers stop is discarded, counted, reported.
    watch w;
    auto env = std::make_unique<environment>(w.options(5000ms, "busy"));
    std::atomic<long> handled{0};
    session s(*env, {.name = "sink"});
    auto in = s.add_inbox<quote>([&](const quote&) { handled.fetch_add(1); });
    in.detach();
    s.detach();
    mbox addr = in.address();
    std::atomic<bool> go{true};
    std::vector<std::thread> producers;
    for (int t = 0; t < 2; ++t)
        producers.emplace_back([&, addr] {
            while (go.load()) {
                try {
                    send<quote>(addr, 1);
                } catch (const environment_stopped_error&) {
                    return;
                }
            }
        });
    ASSERT_TRUE(test::eventually([&] { return handled.load() > 1000; }));
    env->stop();
    teardown_report r = env->join();
    go = false;
    for (auto& p : producers) p.join();
    auto st = test::all_stats_of(*env);
    EXPECT_EQ(r.messages_discarded, st.messages_discarded);
    EXPECT_EQ(r.callbacks_discarded, st.callbacks_discarded);
    EXPECT_GT(r.took.count(), 0);
    std::lock_guard g(w.mu);
    bool summary = false;
    for (auto& l : w.logged) summary = summary || l.find("were still queued and were discarded") != std::string::npos;
    EXPECT_EQ(summary, r.messages_discarded + r.callbacks_discarded > 0);
}

// The report names an agent that its own thread renames, finishes, deletes and recycles right
// after: the watch may read only what cannot change or be freed under it. The handler learns of
// the report through relaxed atomics on purpose (no ordering between the two threads), so that
// ThreadSanitizer sees every access the watch makes against the agent thread's.
TEST(teardown, the_overrun_report_reads_nothing_the_agents_thread_renames_or_frees_under_it) {
    std::atomic<bool> inside{false}, reported{false};
    std::mutex mu;
    std::string context;
    environment_options o;
    o.name = "racy";
    o.teardown_deadline = 20ms;
    o.log = [](std::string_view) {};
    o.on_overrun = [&](const handler_overrun& r) {
        {
            std::lock_guard g(mu);
            if (context.empty()) context = r.context;
        }
        reported.store(true, std::memory_order_relaxed);
    };
    environment env(o);
    for (int i = 0; i < 4; ++i) {
        // Neighbours that finish and are recycled while the watch looks for the slow one.
        test::add_probe(env, [i](probe& p) { p.set_name("neighbour-" + std::to_string(i)); });
    }
    mbox m = test::add_probe(env, [&](probe& p) {
        p.set_name("slow");
        p.subscribe(p.direct_mbox(), [&, &p = p](const quote&) {
            p.set_name("slow-renamed");
            inside = true;
            test::eventually([&] { return reported.load(std::memory_order_relaxed); }, 30s);
            p.set_name("slow-leaving");
        });
    });
    send<quote>(m, 1);
    ASSERT_TRUE(test::wait_set(inside));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    std::lock_guard g(mu);
    EXPECT_NE(context.find("slow-renamed"), std::string::npos) << context;
}
