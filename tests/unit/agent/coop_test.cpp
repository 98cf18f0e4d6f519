#include <mailroom/agent/coop.hpp>

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
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

struct config_failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// What the agents of one cooperation did.
struct tally {
    std::atomic<int> started{0}, handled{0}, finished{0}, destroyed{0};
};

// Checks that an environment still registers and runs agents.
void expect_environment_works(environment& env) {
    std::atomic<int> got{0};
    mbox m = test::add_probe(env, [&](probe& p) { p.subscribe(p.direct_mbox(), [&](const ping& x) { got += x.n; }); });
    send<ping>(m, 3);
    EXPECT_TRUE(test::eventually([&] { return got.load() == 3; }));
}

// ---- guarantee 5: all or nothing ----

TEST(coop, a_failing_configure_rolls_everything_back) {
    environment env;
    mbox topic = make_mpmc_mbox(env);
    tally t;
    coop c(env, {.name = "doomed"});
    std::vector<mbox> boxes;
    for (int i = 0; i < 4; ++i) {
        auto& p = c.make_agent<probe>(&t.destroyed);
        boxes.push_back(p.direct_mbox());
        p.on_start_fn = [&](probe&) { ++t.started; };
        p.on_finish_fn = [&](probe&) { ++t.finished; };
        p.on_configure = [&, i](probe& self) {
            if (i == 2) throw config_failure("third agent refuses");
            self.subscribe(self.direct_mbox(), [&](const ping&) { ++t.handled; });
            self.subscribe(topic, [&](const ping&) { ++t.handled; });
            // Messages sent during the registration, to this agent and to the earlier ones.
            for (auto& b : boxes) send<ping>(b, i);
            send<ping>(topic, i);
        };
    }
    EXPECT_EQ(c.size(), 4u);
    try {
        register_coop(std::move(c));
        ADD_FAILURE() << "register_coop did not rethrow";
    } catch (const config_failure& e) {
        EXPECT_STREQ(e.what(), "third agent refuses");
    }
    EXPECT_EQ(t.destroyed.load(), 4);
    EXPECT_EQ(t.started.load(), 0);
    EXPECT_EQ(t.finished.load(), 0);
    send<ping>(topic, 99);  // the rolled-back subscriptions are gone
    send<ping>(boxes[0], 99);
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(t.handled.load(), 0);
    auto s = test::all_stats_of(env);
    EXPECT_EQ(s.agents_created, 4u);
    EXPECT_EQ(s.agents_destroyed, 4u);
    EXPECT_EQ(s.coops_registered, 0u);
    expect_environment_works(env);
    // The name is free again.
    EXPECT_NO_THROW(introduce_coop(env, {.name = "doomed"}, [](coop& c2) { c2.make_agent<probe>(); }));
}

TEST(coop, binding_to_a_shut_down_dispatcher_rolls_back_with_binding_error) {
    environment env;
    auto closed = one_thread::make_dispatcher(env, "closed");
    closed.shutdown();
    EXPECT_FALSE(closed);
    tally t;
    coop c(env, {.name = "unbindable"});
    auto& first = c.make_agent<probe>(&t.destroyed);
    first.on_configure = [&](probe& self) {
        self.subscribe(self.direct_mbox(), [&](const ping&) { ++t.handled; });
        send<ping>(self.direct_mbox(), 1);
    };
    first.on_start_fn = [&](probe&) { ++t.started; };
    auto& second = c.make_agent_with_binder<probe>(closed.bind(), &t.destroyed);
    second.on_start_fn = [&](probe&) { ++t.started; };
    c.make_agent<probe>(&t.destroyed);
    try {
        register_coop(std::move(c));
        ADD_FAILURE() << "no binding_error";
    } catch (const binding_error& e) {
        EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
    }
    EXPECT_EQ(t.destroyed.load(), 3);
    EXPECT_EQ(t.started.load(), 0);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(t.handled.load(), 0);
    expect_environment_works(env);
}

TEST(coop, a_cooperation_dropped_unregistered_destroys_its_agents) {
    environment env;
    std::atomic<int> destroyed{0};
    {
        coop c(env);
        c.make_agent<probe>(&destroyed);
        c.make_agent<probe>(&destroyed);
    }
    EXPECT_EQ(destroyed.load(), 2);
    EXPECT_EQ(agent_stats_of(env).agents_destroyed, 2u);
}

TEST(coop, a_duplicate_name_raises_and_destroys_the_rejected_agents) {
    environment env({.name = "names"});
    introduce_coop(env, {.name = "unique"}, [](coop& c) { c.make_agent<probe>(); });
    tally t;
    coop c(env, {.name = "unique"});
    auto& p = c.make_agent<probe>(&t.destroyed);
    p.on_configure = [&](probe&) { ++t.handled; };
    p.on_start_fn = [&](probe&) { ++t.started; };
    try {
        register_coop(std::move(c));
        ADD_FAILURE() << "duplicate name accepted";
    } catch (const duplicate_name_error& e) {
        EXPECT_NE(std::string(e.what()).find("unique"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("names"), std::string::npos) << e.what();
    }
    EXPECT_EQ(t.handled.load(), 0);  // never configured
    EXPECT_EQ(t.started.load(), 0);
    EXPECT_EQ(t.destroyed.load(), 1);
    auto s = test::all_stats_of(env);
    EXPECT_EQ(s.agents_created, 2u);
    EXPECT_EQ(s.agents_destroyed, 1u);
}

TEST(coop, registering_after_stop_raises_and_destroys_the_agents) {
    environment env({.name = "stopped-env"});
    tally t;
    coop c(env, {.name = "late"});
    c.make_agent<probe>(&t.destroyed);
    env.stop();
    try {
        register_coop(std::move(c));
        ADD_FAILURE() << "registered in a stopping environment";
    } catch (const environment_stopped_error& e) {
        EXPECT_NE(std::string(e.what()).find("stopped-env"), std::string::npos) << e.what();
    }
    EXPECT_EQ(t.destroyed.load(), 1);
    ASSERT_TRUE(test::join_within(env));
}

TEST(coop, registering_twice_or_after_move_raises_usage_error) {
    environment env;
    coop c(env);
    c.make_agent<probe>();
    register_coop(std::move(c));
    EXPECT_THROW(register_coop(std::move(c)), usage_error);  // NOLINT(bugprone-use-after-move)
    EXPECT_THROW(c.make_agent<probe>(), usage_error);
}

// ---- parents and children ----

TEST(coop, deregistering_the_parent_finishes_children_first) {
    std::mutex mu;
    std::vector<std::string> events;
    auto note = [&](std::string e) {
        std::lock_guard g(mu);
        events.push_back(std::move(e));
    };
    std::atomic<int> started{0};
    std::atomic<int> deregistered{0};
    environment env;  // after what its agents use: the bystander finishes as it is destroyed
    auto threads = active_obj::make_dispatcher(env, "threads");
    auto make = [&](const std::string& name, const coop_handle& parent, int agents) {
        coop_options o{.name = name, .bind = threads.bind(), .parent = parent};
        o.on_deregistered = [&, name](std::string_view n, dereg_reason r) {
            EXPECT_EQ(n, name);
            note("dereg " + name + " " + to_string(r));
            ++deregistered;
        };
        coop c(env, std::move(o));
        for (int i = 0; i < agents; ++i) {
            auto& p = c.make_agent<probe>();
            p.on_start_fn = [&](probe&) { ++started; };
            p.on_finish_fn = [&, name](probe&) {
                std::this_thread::sleep_for(1ms);  // a slow child must still finish first
                note("finish " + name);
            };
        }
        return register_coop(std::move(c));
    };
    auto parent = make("parent", {}, 2);
    auto child_a = make("child_a", parent, 2);
    auto child_b = make("child_b", parent, 1);
    auto grandchild = make("grandchild", child_a, 1);
    auto bystander = make("bystander", {}, 1);
    ASSERT_TRUE(test::eventually([&] { return started.load() == 7; }));

    std::thread foreign([&] { parent.deregister(); });  // from a foreign thread
    foreign.join();
    ASSERT_TRUE(test::eventually([&] { return deregistered.load() == 4; }));
    EXPECT_FALSE(parent);
    EXPECT_FALSE(grandchild);
    EXPECT_TRUE(bystander);

    std::lock_guard g(mu);
    auto pos = [&](const std::string& e) {
        auto it = std::find(events.begin(), events.end(), e);
        return it == events.end() ? -1 : static_cast<int>(it - events.begin());
    };
    auto last = [&](const std::string& e) {
        auto it = std::find(events.rbegin(), events.rend(), e);
        return it == events.rend() ? -1 : static_cast<int>(events.rend() - it - 1);
    };
    for (const char* e : {"dereg parent normal", "dereg child_a parent_deregistered",
                          "dereg child_b parent_deregistered", "dereg grandchild parent_deregistered"})
        EXPECT_GE(pos(e), 0) << e;
    EXPECT_LT(pos("dereg grandchild parent_deregistered"), pos("finish child_a"));
    EXPECT_LT(last("finish child_a"), pos("finish parent"));
    EXPECT_LT(last("finish child_b"), pos("finish parent"));
    EXPECT_LT(pos("dereg child_a parent_deregistered"), pos("finish parent"));
    EXPECT_LT(pos("dereg child_b parent_deregistered"), pos("finish parent"));
    EXPECT_EQ(pos("finish bystander"), -1);
}

TEST(coop, a_child_registering_while_its_parent_deregisters_follows_the_parent) {
    environment env;
    std::mutex mu;
    std::vector<std::string> events;
    auto note = [&](std::string e) {
        std::lock_guard g(mu);
        events.push_back(std::move(e));
    };
    std::atomic<int> deregistered{0};
    coop_options po{.name = "parent"};
    po.on_deregistered = [&](std::string_view, dereg_reason r) {
        note(std::string("dereg parent ") + to_string(r));
        ++deregistered;
    };
    auto parent = introduce_coop(env, std::move(po), [&](coop& c) {
        c.make_agent<probe>().on_finish_fn = [&](probe&) { note("finish parent"); };
    });
    coop_options co{.name = "child", .parent = parent};
    co.on_deregistered = [&](std::string_view, dereg_reason r) {
        note(std::string("dereg child ") + to_string(r));
        ++deregistered;
    };
    coop c(env, std::move(co));
    auto& p = c.make_agent<probe>();
    // The parent is deregistered while the child is half way through its registration.
    p.on_configure = [&](probe&) { parent.deregister(); };
    p.on_finish_fn = [&](probe&) { note("finish child"); };
    auto child = register_coop(std::move(c));
    if (!test::eventually([&] { return deregistered.load() == 2; }, 5s)) {
        child.deregister();  // an orphan would keep the environment from stopping
        FAIL() << "the child outlived its parent";
    }
    env.stop();
    ASSERT_TRUE(test::join_within(env, 10s));
    std::lock_guard g(mu);
    EXPECT_EQ(events, (std::vector<std::string>{"finish child", "dereg child parent_deregistered", "finish parent",
                                                "dereg parent normal"}));
}

TEST(coop, an_agent_registers_a_child_of_its_own_cooperation) {
    environment env;
    std::atomic<bool> child_finished{false}, parent_gone{false};
    std::atomic<dereg_reason> child_reason{dereg_reason::normal};
    std::string own_name;
    coop_options o;
    o.name = "parent";
    o.on_deregistered = [&](std::string_view, dereg_reason) { parent_gone = true; };
    coop c(env, std::move(o));
    auto& p = c.make_agent<probe>();
    p.on_start_fn = [&](probe& self) {
        coop_handle mine = self.cooperation();
        own_name = mine.name();
        coop_options co;
        co.parent = mine;
        co.on_deregistered = [&](std::string_view, dereg_reason r) {
            child_reason = r;
            child_finished = true;
        };
        coop child(self.env(), std::move(co));
        child.make_agent<probe>();
        register_coop(std::move(child));
    };
    auto h = register_coop(std::move(c));
    ASSERT_TRUE(test::eventually([&] { return agent_stats_of(env).coops_registered == 2; }));
    EXPECT_EQ(own_name, "parent");
    h.deregister();
    ASSERT_TRUE(test::wait_set(parent_gone));
    EXPECT_TRUE(child_finished.load());
    EXPECT_EQ(child_reason.load(), dereg_reason::parent_deregistered);
}

TEST(coop, a_child_of_a_deregistered_parent_cannot_register) {
    environment env;
    std::atomic<bool> gone{false};
    coop_options o{.name = "old-parent"};
    o.on_deregistered = [&](std::string_view, dereg_reason) { gone = true; };
    auto parent = introduce_coop(env, std::move(o), [](coop& c) { c.make_agent<probe>(); });
    parent.deregister();
    ASSERT_TRUE(test::wait_set(gone));
    std::atomic<int> destroyed{0};
    coop c(env, {.parent = parent});
    c.make_agent<probe>(&destroyed);
    EXPECT_THROW(register_coop(std::move(c)), usage_error);
    EXPECT_EQ(destroyed.load(), 1);
}

TEST(coop, notifications_report_registration_and_the_reason) {
    environment env;
    std::mutex mu;
    std::vector<std::string> events;
    std::thread::id registered_on;
    std::atomic<bool> gone{false};
    coop_options o{.name = "notified"};
    o.on_registered = [&](const coop_handle& h) {
        std::lock_guard g(mu);
        EXPECT_TRUE(h);
        EXPECT_EQ(h.name(), "notified");
        registered_on = std::this_thread::get_id();
        events.push_back("registered");
    };
    o.on_deregistered = [&](std::string_view name, dereg_reason r) {
        std::lock_guard g(mu);
        events.push_back(std::string(name) + " " + to_string(r));
        gone = true;
    };
    coop c(env, std::move(o));
    auto& p = c.make_agent<probe>();
    // The agent deregisters its own cooperation at once, with a reason of the user's.
    p.on_start_fn = [](probe& self) { self.deregister_coop(dereg_reason(int(dereg_reason::user_defined) + 1)); };
    auto h = register_coop(std::move(c));
    EXPECT_EQ(h.name(), "notified");
    ASSERT_TRUE(test::wait_set(gone));
    std::lock_guard g(mu);
    EXPECT_EQ(registered_on, std::this_thread::get_id());
    EXPECT_EQ(events, (std::vector<std::string>{"registered", "notified user_defined"}));
}

TEST(coop, deregister_from_a_handler_and_twice) {
    environment env;
    std::atomic<int> reason{-1};
    std::atomic<int> deregs{0};
    std::atomic<int> finished{0};
    coop_options o;
    o.on_deregistered = [&](std::string_view, dereg_reason r) {
        reason = static_cast<int>(r);
        ++deregs;
    };
    coop c(env, std::move(o));
    auto& p = c.make_agent<probe>();
    p.on_configure = [](probe& self) {
        self.subscribe<go>(self.direct_mbox(), [&self] {
            self.deregister_coop(dereg_reason::normal);
            self.deregister_coop(dereg_reason::shutdown);  // the second call does nothing
        });
    };
    p.on_finish_fn = [&](probe&) { ++finished; };
    mbox m = p.direct_mbox();
    auto h = register_coop(std::move(c));
    EXPECT_TRUE(h);
    EXPECT_FALSE(h.name().empty());
    send<go>(m);
    ASSERT_TRUE(test::eventually([&] { return deregs.load() == 1; }));
    EXPECT_EQ(reason.load(), static_cast<int>(dereg_reason::normal));
    EXPECT_EQ(finished.load(), 1);
    h.deregister();  // after it is gone: nothing
    EXPECT_FALSE(h);
    std::this_thread::sleep_for(2ms);
    EXPECT_EQ(deregs.load(), 1);
}

TEST(coop, messages_queued_before_deregistration_are_handled_before_on_finish) {
    environment env;
    std::atomic<int> handled{0};
    std::atomic<int> at_finish{-1};
    std::atomic<bool> started{false}, release{false};
    coop c(env);
    auto& p = c.make_agent<probe>();
    p.on_configure = [&](probe& self) { self.subscribe(self.direct_mbox(), [&](const ping&) { ++handled; }); };
    p.on_start_fn = [&](probe&) {
        started = true;
        test::wait_set(release);
    };
    p.on_finish_fn = [&](probe&) { at_finish = handled.load(); };
    mbox m = p.direct_mbox();
    auto h = register_coop(std::move(c));
    ASSERT_TRUE(test::wait_set(started));
    for (int i = 0; i < 10; ++i) send<ping>(m, i);
    h.deregister();
    release = true;
    ASSERT_TRUE(test::eventually([&] { return at_finish.load() >= 0; }));
    EXPECT_EQ(at_finish.load(), 10);
}

// ---- thread_pool FIFO units ----

class fifo_units : public testing::TestWithParam<thread_pool::fifo> {};

TEST_P(fifo_units, cooperation_serialises_the_coop_agent_runs_agents_in_parallel) {
    environment env;
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    const bool serial = GetParam() == thread_pool::fifo::cooperation;
    std::atomic<int> in_flight{0}, max_in_flight{0};
    std::atomic<int> handled{0};
    std::atomic<int> met{0};
    constexpr int per_agent = 200;
    coop c(env, {.bind = pool.bind_fifo(GetParam())});
    std::vector<mbox> boxes;
    for (int i = 0; i < 2; ++i) {
        auto& p = c.make_agent<probe>();
        boxes.push_back(p.direct_mbox());
        p.on_configure = [&](probe& self) {
            self.subscribe(self.direct_mbox(), [&](const ping& x) {
                int now = in_flight.fetch_add(1) + 1;
                int seen = max_in_flight.load();
                while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
                }
                if (x.n == 0 && !serial) {
                    // Rendezvous: with a queue per agent both first handlers run at once.
                    ++met;
                    test::eventually([&] { return met.load() == 2; }, 5s);
                }
                in_flight.fetch_sub(1);
                ++handled;
            });
        };
    }
    register_coop(std::move(c));
    for (int n = 0; n < per_agent; ++n)
        for (auto& b : boxes) send<ping>(b, n);
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 2 * per_agent; }, 30s));
    if (serial)
        EXPECT_EQ(max_in_flight.load(), 1);
    else
        EXPECT_EQ(max_in_flight.load(), 2);
}

INSTANTIATE_TEST_SUITE_P(orders, fifo_units,
                         testing::Values(thread_pool::fifo::cooperation, thread_pool::fifo::agent),
                         [](const testing::TestParamInfo<thread_pool::fifo>& i) {
                             return i.param == thread_pool::fifo::cooperation ? std::string("cooperation")
                                                                              : std::string("agent");
                         });

}  // namespace

// on_finish comes after the messages already queued (test above) and is the last thing: what is
// sent to the agent from then on is counted lost, never delivered (docs/agent.md).
TEST(coop, nothing_is_delivered_after_on_finish_and_what_comes_later_is_counted_lost) {
    environment env;
    std::atomic<int> handled{0};
    std::atomic<bool> finished{false};
    coop c(env);
    auto& p = c.make_agent<probe>();
    p.on_configure = [&](probe& self) { self.subscribe(self.direct_mbox(), [&](const ping&) { ++handled; }); };
    p.on_finish_fn = [&](probe& self) {
        for (int i = 0; i < 3; ++i) send<ping>(self.direct_mbox(), i);  // queued behind on_finish
        finished = true;
    };
    mbox m = p.direct_mbox();
    auto h = register_coop(std::move(c));
    send<ping>(m, 0);
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 1; }));
    h.deregister();
    ASSERT_TRUE(test::wait_set(finished));
    ASSERT_TRUE(test::eventually([&] { return env.stats().messages_lost == 3; }));
    send<ping>(m, 9);  // after the agent is gone
    EXPECT_EQ(env.stats().messages_lost, 4u);
    EXPECT_EQ(handled.load(), 1);
}

// ---- the one-agent shortcut ----

namespace {
class counter final : public agent {
public:
    counter(std::atomic<int>& sum, int bias) : sum_(sum), bias_(bias) {}

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const ping& p) { sum_ += p.n + bias_; });
    }

private:
    std::atomic<int>& sum_;
    int bias_;
};
}  // namespace

TEST(coop, register_agent_registers_one_agent_built_from_its_arguments_and_returns_its_direct_mbox) {
    environment env;
    std::atomic<int> sum{0};
    mbox to = register_agent<counter>(env, sum, 100);
    ASSERT_TRUE(to);
    EXPECT_EQ(to.kind(), mbox_kind::direct);
    send<ping>(to, 1);
    send<ping>(to, 2);
    EXPECT_TRUE(test::eventually([&] { return sum.load() == 203; })) << sum.load();
    const auto st = test::all_stats_of(env);
    EXPECT_EQ(st.agents_created, 1u);
    EXPECT_EQ(st.coops_registered, 1u);
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    EXPECT_EQ(agent_stats_of(env).agents_destroyed, 1u);
    EXPECT_THROW(register_agent<counter>(env, sum, 0), environment_stopped_error);
}

// The agent layer's counters are its own (environment_stats counts messages and timers only):
// agent_stats_of reads them, from any thread, during the run and after the teardown.
TEST(coop, agent_stats_of_counts_the_agents_and_cooperations_of_its_own_environment) {
    environment env;
    environment other;
    EXPECT_EQ(agent_stats_of(env).agents_created, 0u) << "no cooperation was ever made";
    std::atomic<int> sum{0};
    coop c(env);
    c.make_agent<counter>(sum, 0);
    c.make_agent<counter>(sum, 0);
    coop_handle h = register_coop(std::move(c));
    register_agent<counter>(env, sum, 0);
    agent_stats st = agent_stats_of(env);
    EXPECT_EQ(st.agents_created, 3u);
    EXPECT_EQ(st.coops_registered, 2u);
    EXPECT_EQ(st.agents_destroyed, 0u);
    EXPECT_EQ(st.coops_deregistered, 0u);
    EXPECT_EQ(agent_stats_of(other).agents_created, 0u) << "counters are per environment";
    h.deregister();
    EXPECT_TRUE(test::eventually([&] { return agent_stats_of(env).coops_deregistered == 1; }));
    EXPECT_TRUE(test::eventually([&] { return agent_stats_of(env).agents_destroyed == 2; }));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    st = agent_stats_of(env);
    EXPECT_EQ(st.agents_created, 3u);
    EXPECT_EQ(st.agents_destroyed, 3u);
    EXPECT_EQ(st.coops_registered, 2u);
    EXPECT_EQ(st.coops_deregistered, 2u);
}
