#include <mailroom/env/environment.hpp>

#include <mailroom/env/env_core.hpp>
#include <mailroom/mailroom.hpp>
#include <mailroom/core/handle_access.hpp>
#include "all_stats.hpp"

#include "../agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
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
struct go final : mailroom::signal {};

// ---- several environments ----

TEST(environment, independent_environments_in_one_process) {
    environment a({.name = "alpha"});
    environment b({.name = "beta"});
    std::atomic<int> got_a{0}, got_b{0};
    mbox ma = test::add_probe(a, [&](probe& p) { p.subscribe(p.direct_mbox(), [&](const ping&) { ++got_a; }); });
    mbox mb = test::add_probe(b, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&, &p = p](const ping& m) {
            ++got_b;
            if (m.n == 2) p.stop_environment();  // stops beta only
        });
    });
    for (int i = 0; i < 5; ++i) send<ping>(ma, i);
    send<ping>(mb, 1);
    send<ping>(mb, 2);
    ASSERT_TRUE(test::join_within(b));
    EXPECT_EQ(got_b.load(), 2);
    EXPECT_TRUE(b.stopping());
    EXPECT_FALSE(a.stopping());
    // alpha carries on after beta stopped, and each counts only its own messages.
    send<ping>(ma, 5);
    ASSERT_TRUE(test::eventually([&] { return got_a.load() == 6; }));
    // A delivery is counted once its handler returned: the last one may not be yet.
    EXPECT_TRUE(test::eventually([&] { return a.stats().messages_delivered >= 6; }));
    EXPECT_EQ(a.stats().messages_delivered, 6u);
    EXPECT_EQ(b.stats().messages_delivered, 2u);
    EXPECT_NE(internal::core_of(a)->id(), internal::core_of(b)->id());
    EXPECT_THROW(send<ping>(mb, 3), environment_stopped_error);
    EXPECT_NO_THROW(send<ping>(ma, 7));
}

// ---- stop() from any thread ----

TEST(environment, stop_from_a_foreign_thread) {
    environment env;
    std::atomic<bool> finished{false};
    test::add_probe(env, {}, {}, {}, [&](probe&) { finished = true; });
    std::thread t([&] { env.stop(); });
    ASSERT_TRUE(test::join_within(env));
    t.join();
    EXPECT_TRUE(env.stopping());
    EXPECT_TRUE(finished.load());  // join() returned after the cooperations were deregistered
    env.stop();                    // idempotent
    env.join();                    // a second join returns at once
}

TEST(environment, stop_from_a_handler) {
    environment env;
    std::atomic<bool> finished{false};
    mbox m = test::add_probe(
        env, [](probe& p) { p.subscribe<go>(p.direct_mbox(), [&p] { p.stop_environment(); }); }, {}, {},
        [&](probe&) { finished = true; });
    EXPECT_FALSE(env.stopping());
    send<go>(m);
    ASSERT_TRUE(test::join_within(env));
    EXPECT_TRUE(finished.load());
}

TEST(environment, stop_through_the_environment_handle_from_a_handler) {
    environment env;
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe<go>(p.direct_mbox(), [&] { env.stop(); }); });
    send<go>(m);
    ASSERT_TRUE(test::join_within(env));
}

TEST(environment, join_from_a_handler_raises_usage_error) {
    environment env({.name = "self-joiner"});
    std::string error;
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe<go>(p.direct_mbox(), [&, &p = p] {
            try {
                p.env().join();
            } catch (const usage_error& e) {
                error = e.what();
            }
            p.stop_environment();
        });
    });
    send<go>(m);
    ASSERT_TRUE(test::join_within(env));
    EXPECT_NE(error.find("self-joiner"), std::string::npos) << error;
}

// ---- threads and teardown ----

TEST(environment, destruction_joins_every_thread_it_started) {
    std::thread([] {}).join();  // ThreadSanitizer starts a thread of its own with the first one
    const int before = test::thread_count();
    {
        environment env;
        auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 3});
        auto objs = active_obj::make_dispatcher(env, "objs");
        auto groups = active_group::make_dispatcher(env, "groups");
        one_thread::make_dispatcher(env, "spare");
        std::atomic<int> started{0};
        auto start = [&](probe&) { ++started; };
        for (auto b : {pool.bind(), objs.bind(), objs.bind(), groups.bind_group("g1"), groups.bind_group("g2")})
            test::add_probe(env, {}, {.bind = b}, start);
        ASSERT_TRUE(test::eventually([&] { return started.load() == 5; }));
        // timer, default, pool x3, 2 active objects, 2 groups, spare
        EXPECT_GE(test::thread_count(), before + 10);
        auto t = send_delayed<ping>(make_mpmc_mbox(env), 1h, 1);
        t.detach();
    }
    EXPECT_EQ(test::thread_count(), before);
}

// A timer entry that records, when the timer service releases it, whether the dispatcher's
// thread is still there.
struct probe_timer final : internal::timer_entry {
    std::function<void()> on_destroy;
    internal::fire_result fire() noexcept override { return internal::fire_result::none; }
    void destroy() noexcept override {
        on_destroy();
        delete this;
    }
};

TEST(environment, teardown_runs_children_then_parents_then_dispatchers_then_timers) {
    std::mutex m;
    std::vector<std::string> events;
    auto note = [&](std::string e) {
        std::lock_guard g(m);
        events.push_back(std::move(e));
    };
    {
        environment env({.name = "ordered"});
        auto disp = active_obj::make_dispatcher(env, "ord-disp");
        std::atomic<int> started{0};
        // One probe per cooperation; its on_finish notes itself and checks that intake is
        // still open while cooperations are being deregistered.
        auto make = [&](const std::string& name, const coop_handle& parent) {
            coop_options o{.name = name, .bind = disp.bind(), .parent = parent};
            o.on_deregistered = [&](std::string_view n, dereg_reason r) {
                note("dereg " + std::string(n) + " " + to_string(r));
            };
            coop c(env, std::move(o));
            auto& p = c.make_agent<probe>();
            p.on_start_fn = [&](probe&) { ++started; };
            p.on_finish_fn = [&, name](probe& self) {
                note("finish " + name);
                try {
                    send<ping>(self.direct_mbox(), 0);
                } catch (const environment_stopped_error&) {
                    note("intake closed too early");
                }
            };
            return register_coop(std::move(c));
        };
        coop_handle parent = make("parent", {});
        coop_handle child = make("child", parent);
        make("grandchild", child);
        ASSERT_TRUE(test::eventually([&] { return started.load() == 3; }));
        ASSERT_EQ(test::threads_named("ord-disp"), 3);
        auto* t = new probe_timer;
        t->deadline_ns = std::numeric_limits<std::int64_t>::max() / 2;
        t->on_destroy = [&] {
            note("timers released, dispatcher threads left: " + std::to_string(test::threads_named("ord-disp")));
        };
        internal::core_of(env)->timers().arm(t);
    }
    std::vector<std::string> expected = {
        "finish grandchild",
        "dereg grandchild parent_deregistered",
        "finish child",
        "dereg child parent_deregistered",
        "finish parent",
        "dereg parent shutdown",
        "timers released, dispatcher threads left: 0",
    };
    EXPECT_EQ(events, expected);
}

// ---- sending after the stop ----

TEST(environment, sending_after_the_stop_raises_environment_stopped_error) {
    auto env = std::make_unique<environment>(environment_options{.name = "gone-env"});
    mbox direct = test::add_probe(*env, [](probe& p) { p.subscribe(p.direct_mbox(), [](const ping&) {}); });
    mbox anon = make_mpmc_mbox(*env);
    mbox named = make_named_mbox(*env, "quotes");
    env->stop();
    env->join();
    for (const mbox& m : {direct, anon, named}) {
        try {
            send<ping>(m, 1);
            ADD_FAILURE() << "no error sending through " << m.name();
        } catch (const environment_stopped_error& e) {
            std::string what = e.what();
            EXPECT_NE(what.find(m.name()), std::string::npos) << what;
            EXPECT_NE(what.find("gone-env"), std::string::npos) << what;
        }
    }
    EXPECT_NE(named.name().find("quotes"), std::string::npos);
    env.reset();  // the handles outlive the environment object
    EXPECT_THROW(send<ping>(direct, 2), environment_stopped_error);
    EXPECT_THROW(send<go>(anon), environment_stopped_error);
    EXPECT_THROW(send<ping>(named, 3), environment_stopped_error);
    EXPECT_THROW((void)send_delayed<ping>(direct, 1ms, 4), environment_stopped_error);
}

TEST(environment, registering_after_stop_raises_environment_stopped_error) {
    environment env({.name = "closing"});
    env.stop();
    try {
        coop c(env, {.name = "late"});
        ADD_FAILURE() << "a cooperation was created in a stopping environment";
    } catch (const environment_stopped_error& e) {
        EXPECT_NE(std::string(e.what()).find("closing"), std::string::npos) << e.what();
    }
    EXPECT_THROW(one_thread::make_dispatcher(env, "late"), environment_stopped_error);
}

// ---- named dispatchers ----

TEST(environment, named_public_dispatchers_of_each_kind) {
    environment env;
    auto one = one_thread::make_dispatcher(env, "one");
    auto obj = active_obj::make_dispatcher(env, "obj");
    auto grp = active_group::make_dispatcher(env, "grp");
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    for (const dispatcher& d : std::vector<dispatcher>{one, obj, grp, pool}) {
        EXPECT_TRUE(d);
        auto found = env.find_dispatcher(d.name());
        EXPECT_TRUE(found == d) << d.name();
        EXPECT_EQ(found.kind(), d.kind()) << d.name();
    }
    EXPECT_TRUE(env.find_dispatcher("default") == env.default_dispatcher());
    EXPECT_FALSE(env.find_dispatcher("nope"));
    EXPECT_FALSE(env.find_dispatcher("nope"));

    for (const char* taken : {"one", "obj", "pool", "default"}) {
        try {
            thread_pool::make_dispatcher(env, taken, {.threads = 1});
            ADD_FAILURE() << "duplicate dispatcher " << taken << " accepted";
        } catch (const duplicate_name_error& e) {
            EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
        }
    }
    EXPECT_THROW(active_obj::make_dispatcher(env, "grp"), duplicate_name_error);
    EXPECT_TRUE(env.find_dispatcher("one") == one);  // the original stays

    // Agents bound to each run on the dispatcher's threads, never on the caller's.
    std::mutex m;
    std::vector<std::thread::id> where;
    std::atomic<int> ran{0};
    int expected = 0;
    for (auto b : {one.bind(), obj.bind(), obj.bind(), grp.bind_group("a"), grp.bind_group("a"), pool.bind()}) {
        mbox mb = test::add_probe(env, [&](probe& p) {
            p.subscribe<go>(p.direct_mbox(), [&] {
                std::lock_guard g(m);
                where.push_back(std::this_thread::get_id());
                ++ran;
            });
        },
                                  {.bind = b});
        send<go>(mb);
        ++expected;
        ASSERT_TRUE(test::eventually([&] { return ran.load() == expected; }));  // keeps `where` in order
    }
    ASSERT_TRUE(test::eventually([&] { return ran.load() == 6; }));
    std::lock_guard g(m);
    for (auto id : where) EXPECT_NE(id, std::this_thread::get_id());
    EXPECT_NE(where[1], where[2]);  // active_obj: a thread per agent
    EXPECT_EQ(where[3], where[4]);  // active_group: one thread per group
    auto st = pool.stats();
    EXPECT_EQ(st.kind, "thread_pool");
    EXPECT_EQ(st.threads, 2u);
}

// ---- statistics ----

TEST(environment, stats_count_messages_agents_and_cooperations) {
    environment env({.on_exception = exception_policy::log_and_continue, .log = [](std::string_view) {}});
    const auto s0 = test::all_stats_of(env);
    EXPECT_EQ(s0.messages_sent, 0u);
    EXPECT_EQ(s0.agents_created, 0u);

    std::atomic<int> handled{0};
    std::atomic<int> destroyed{0};
    std::vector<mbox> boxes;
    coop c(env, {.name = "counted"});
    for (int i = 0; i < 3; ++i) {
        auto& p = c.make_agent<probe>(&destroyed);
        boxes.push_back(p.direct_mbox());
        p.on_configure = [&](probe& self) {
            self.subscribe(self.direct_mbox(), [&](const ping& m) {
                ++handled;
                if (m.n < 0) throw std::runtime_error("negative");
            });
        };
    }
    auto h = register_coop(std::move(c));
    auto after_reg = test::all_stats_of(env);
    EXPECT_EQ(after_reg.agents_created, 3u);
    EXPECT_EQ(after_reg.coops_registered, 1u);
    EXPECT_EQ(after_reg.agents_destroyed, 0u);

    mbox target = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const ping&) { ++handled; });
    });
    for (int i = 0; i < 10; ++i) send<ping>(target, i);
    send<go>(target);   // nobody subscribed to go: ignored
    send<ping>(target, -1);
    ASSERT_TRUE(test::eventually([&] { return env.stats().messages_delivered == 11; }));
    auto s1 = test::all_stats_of(env);
    EXPECT_EQ(s1.messages_sent, 12u);
    EXPECT_EQ(s1.messages_ignored, 1u);
    EXPECT_EQ(s1.messages_lost, 0u);
    EXPECT_EQ(s1.agents_created, 4u);
    EXPECT_EQ(s1.coops_registered, 2u);

    std::atomic<bool> gone{false};
    {
        coop_options o{.name = "short-lived"};
        o.on_deregistered = [&](std::string_view, dereg_reason) { gone = true; };
        coop c2(env, std::move(o));
        auto& p = c2.make_agent<probe>(&destroyed);
        p.on_configure = [](probe& self) { self.subscribe(self.direct_mbox(), [](const ping&) {}); };
        mbox m = p.direct_mbox();
        auto h2 = register_coop(std::move(c2));
        h2.deregister();
        ASSERT_TRUE(test::wait_set(gone));
        send<ping>(m, 1);
        send<ping>(m, 2);
    }
    auto s2 = test::all_stats_of(env);
    EXPECT_EQ(s2.messages_lost, 2u);
    EXPECT_EQ(s2.agents_destroyed, 1u);
    EXPECT_EQ(s2.coops_deregistered, 1u);
    EXPECT_EQ(s2.messages_sent, s1.messages_sent + 2);  // counted sent, then lost: nothing unseen

    // A handler exception under log_and_continue is counted.
    send<ping>(boxes.at(1), -5);
    ASSERT_TRUE(test::eventually([&] { return env.stats().handler_exceptions == 1; }));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    auto s3 = test::all_stats_of(env);
    EXPECT_EQ(s3.agents_created, 5u);
    EXPECT_EQ(s3.agents_destroyed, 5u);
    EXPECT_EQ(destroyed.load(), 4);
    EXPECT_EQ(s3.coops_registered, 3u);
    EXPECT_EQ(s3.coops_deregistered, 3u);
    EXPECT_EQ(s3.messages_sent, s3.messages_delivered + s3.messages_ignored + s3.messages_lost);
}

}  // namespace

// Extensions stop in the order of their phases, not in the order they were first used: a layer
// used first by a program (its registry made before any context) still stops after the
// contexts that list things in it.
namespace {
class ordered_extension final : public mailroom::internal::env_extension {
public:
    ordered_extension(int phase, std::string name, std::vector<std::string>& log, std::mutex& lock)
        : phase_(phase), name_(std::move(name)), log_(log), lock_(lock) {}
    int teardown_phase() const noexcept override { return phase_; }
    void begin_stop() noexcept override { note("begin " + name_); }
    void wait_stopped() noexcept override { note("wait " + name_); }

private:
    void note(std::string what) noexcept {
        std::lock_guard g(lock_);
        log_.push_back(std::move(what));
    }
    int phase_;
    std::string name_;
    std::vector<std::string>& log_;
    std::mutex& lock_;
};
}  // namespace

TEST(environment, extensions_stop_in_phase_order_whatever_order_they_were_first_used_in) {
    std::vector<std::string> log;
    std::mutex lock;
    static const int late_key = 0, early_key = 0, middle_key = 0;
    {
        mailroom::environment env;
        auto& core = *internal::core_of(env);
        core.extension<ordered_extension>(&late_key, [&] { return std::make_unique<ordered_extension>(300, "late", log, lock); });
        core.extension<ordered_extension>(&early_key, [&] { return std::make_unique<ordered_extension>(-5, "early", log, lock); });
        core.extension<ordered_extension>(&middle_key, [&] { return std::make_unique<ordered_extension>(150, "middle", log, lock); });
        env.stop();
        env.join();
    }
    const std::vector<std::string> expected{"begin early", "begin middle", "begin late",
                                            "wait early",  "wait middle",  "wait late"};
    EXPECT_EQ(log, expected);
}
