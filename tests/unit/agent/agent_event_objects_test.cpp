// An agent's own event objects (agent::add_timer, agent::add_inbox): the one handle model, on
// the agent's context, destroyed with the agent.
#include <mailroom/agent/agent.hpp>

#include <mailroom/mailroom.hpp>

#include "all_stats.hpp"
#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

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

/// Sets a flag for its scope and counts scopes that overlapped another one.
struct serial_check {
    std::atomic<bool> inside{false};
    std::atomic<int> overlaps{0};
    template <class F>
    void run(F&& f) {
        if (inside.exchange(true)) ++overlaps;
        f();
        inside = false;
    }
};

TEST(agent_event_objects, a_timer_and_an_inbox_of_an_agent_call_back_on_its_context) {
    environment env;
    serial_check serial;
    std::atomic<int> fires{0}, pings{0}, messages{0};
    std::atomic<int> elsewhere{0};  // callbacks that did not run as the agent
    event_handle timer;
    inbox_handle inbox;
    test::add_probe(env, [&](probe& p) {
        p.set_name("owner");
        auto here = [&] {
            if (internal::current_context_name() != "owner") ++elsewhere;
        };
        timer = p.add_timer(0ms, 1ms, [&, here] { serial.run([&] { here(), ++fires; }); });
        inbox = p.add_inbox<ping>([&, here](ping x) { serial.run([&] { here(), pings += x.n; }); });
        p.subscribe(p.direct_mbox(), [&](go) {
            serial.run([&] {
                std::this_thread::sleep_for(100us);  // a handler long enough to overlap a fire
                ++messages;
            });
        });
    });
    EXPECT_TRUE(timer);
    EXPECT_TRUE(inbox);
    for (int i = 0; i < 50; ++i) send<ping>(inbox.address(), 1);
    ASSERT_TRUE(test::eventually([&] { return fires.load() >= 5 && pings.load() == 50; }));
    EXPECT_EQ(elsewhere.load(), 0);
    EXPECT_EQ(serial.overlaps.load(), 0);
    timer.destroy();
    inbox.destroy();
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

TEST(agent_event_objects, a_timer_added_before_the_agent_starts_fires_after_on_start) {
    environment env;
    std::atomic<bool> started{false};
    std::atomic<int> early{0}, fired{0};
    coop c(env);
    auto& p = c.make_agent<probe>();
    // In the constructor's place (before binding) and in configure(): both wait for on_start.
    event_handle before = p.add_timer(0ms, 0ns, [&] { early += !started.load(), ++fired; });
    event_handle in_configure;
    p.on_configure = [&](probe& self) {
        in_configure = self.add_timer(0ms, 0ns, [&] { early += !started.load(), ++fired; });
        std::this_thread::sleep_for(5ms);  // the timer thread fires meanwhile
    };
    p.on_start_fn = [&](probe&) { started = true; };
    register_coop(std::move(c));
    ASSERT_TRUE(test::eventually([&] { return fired.load() == 2; }));
    EXPECT_EQ(early.load(), 0);
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

TEST(agent_event_objects, objects_destroyed_before_the_agent_is_bound_or_in_a_rolled_back_registration_are_retired) {
    environment env;
    {
        coop c(env);
        auto& p = c.make_agent<probe>();
        // Destroyed before the agent has a queue: the retire waits for the agent's start.
        p.add_timer(1h, 0ns, [] {}).destroy();
        p.add_inbox<ping>([](ping) {}).destroy();
        event_handle kept = p.add_timer(1h, 0ns, [] {});
        kept.detach();
        register_coop(std::move(c));
    }
    {
        coop c(env);
        auto& p = c.make_agent<probe>();
        event_handle t = p.add_timer(1h, 0ns, [] {});
        p.on_configure = [](probe& self) {
            self.add_inbox<ping>([](ping) {}).detach();
            throw std::runtime_error("configure fails");
        };
        EXPECT_THROW(register_coop(std::move(c)), std::runtime_error);
        EXPECT_FALSE(t) << "a rolled-back agent's timer is live";
    }
    const auto mid = test::all_stats_of(env);
    EXPECT_EQ(mid.event_objects_created, 5u);
    env.stop();
    EXPECT_TRUE(test::join_within(env));
    const auto st = test::all_stats_of(env);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_EQ(st.timers_pending, 0u);
}

// Guarantee 2 on an agent's timer: the callback is held until shutdown() has begun, and must
// have returned when shutdown() returns on this thread.
TEST(agent_event_objects, shutdown_of_an_agents_timer_from_another_thread_waits_for_its_running_callback) {
    environment env;
    std::atomic<bool> in_callback{false}, stopping{false};
    probe* agent = nullptr;
    test::add_probe(env, [&](probe& p) { agent = &p; });
    event_handle t = agent->add_timer(0ms, 1ms, [&] {
        in_callback = true;
        for (auto end = std::chrono::steady_clock::now() + 5s; !stopping && std::chrono::steady_clock::now() < end;)
            std::this_thread::yield();
        std::this_thread::sleep_for(20ms);  // still running after shutdown() began
        in_callback = false;
    });
    ASSERT_TRUE(test::eventually([&] { return in_callback.load(); }));
    stopping = true;
    EXPECT_TRUE(t.shutdown());
    EXPECT_FALSE(in_callback.load()) << "shutdown() returned while the callback was running";
    EXPECT_FALSE(t);
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

// The same, stress-style: timers of an agent shut down from this thread at random moments of
// their firing; no callback may run or start once shutdown() returned. Bounded in rounds and
// time.
TEST(agent_event_objects, no_callback_of_an_agents_timer_runs_after_shutdown_returns_under_churn) {
    environment env;
    probe* agent = nullptr;
    test::add_probe(env, [&](probe& p) { agent = &p; });
    std::atomic<int> violations{0}, fires{0};
    std::mt19937 rng(7);
    const auto end = std::chrono::steady_clock::now() + 5s;
    const long rounds = test::rounds(300);
    for (long i = 0; i < rounds && std::chrono::steady_clock::now() < end; ++i) {
        auto returned = std::make_shared<std::atomic<bool>>(false);
        auto running = std::make_shared<std::atomic<bool>>(false);
        event_handle t = agent->add_timer(0ms, 1ms, [&, returned, running] {
            if (returned->load()) ++violations;
            running->store(true);
            std::this_thread::sleep_for(std::chrono::microseconds(50));
            running->store(false);
            ++fires;
        });
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
        if (i % 2)
            t.shutdown();
        else
            t.destroy();
        if (running->load()) ++violations;
        returned->store(true);
    }
    std::this_thread::sleep_for(5ms);  // a fire that slipped through would show up now
    EXPECT_EQ(violations.load(), 0);
    EXPECT_GT(fires.load(), 0);
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

TEST(agent_event_objects, a_timer_shut_down_inside_its_own_callback_does_not_wait) {
    environment env;
    std::promise<bool> shut;
    auto h = std::make_shared<event_handle>();
    std::atomic<int> calls{0};
    test::add_probe(env, [&](probe& p) {
        *h = p.add_timer(0ms, 1ms, [&, h] {
            if (++calls == 1) shut.set_value(h->shutdown());
        });
    });
    auto f = shut.get_future();
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "shutdown() inside its own callback deadlocked";
    EXPECT_TRUE(f.get());
    EXPECT_FALSE(*h);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(calls.load(), 1);
    h->destroy();
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

TEST(agent_event_objects, an_agents_objects_are_destroyed_with_its_cooperation) {
    environment env;
    std::atomic<bool> finished{false};
    std::atomic<int> after_finish{0}, fires{0}, pings{0};
    auto captured = std::make_shared<int>(1);
    std::weak_ptr<int> capture_alive = captured;
    event_handle outside;  // held by the test, not by the agent
    inbox_handle inbox;
    coop_handle ch = introduce_coop(env, {}, [&](coop& c) {
        auto& p = c.make_agent<probe>();
        p.on_configure = [&, cap = std::move(captured)](probe& self) {
            outside = self.add_timer(0ms, 1ms, [&, cap] { after_finish += finished.load(), ++fires; });
            self.add_timer(0ms, 1ms, [&] { after_finish += finished.load(); }).detach();
            inbox = self.add_inbox<ping>([&](ping) { after_finish += finished.load(), ++pings; });
        };
        p.on_finish_fn = [&](probe&) { finished = true; };
    });
    send<ping>(inbox.address(), 1);
    ASSERT_TRUE(test::eventually([&] { return fires.load() >= 3 && pings.load() == 1; }));
    // Deregistered from another thread while the timers keep firing.
    std::thread([&] { ch.deregister(); }).join();
    ASSERT_TRUE(test::eventually([&] { return agent_stats_of(env).agents_destroyed == 1; }));
    EXPECT_FALSE(outside) << "an object of a finished agent is live";
    EXPECT_FALSE(inbox);
    EXPECT_TRUE(capture_alive.expired()) << "the callback's captures outlived the agent";
    const auto st = test::all_stats_of(env);
    EXPECT_EQ(st.event_objects_created, 3u);
    EXPECT_EQ(st.event_objects_destroyed, 3u);
    send<ping>(inbox.address(), 1);  // counted lost, never run
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(after_finish.load(), 0);
    EXPECT_EQ(outside.shutdown(), false);  // shut by the agent's end already
    outside.destroy();
    inbox.destroy();
    env.stop();
    EXPECT_TRUE(test::join_within(env));
}

TEST(agent_event_objects, an_inbox_destroyed_in_on_finish_is_freed) {
    // Its retire comes after the agent's own end: the agent's end lets go of its table entry.
    environment env;
    auto in = std::make_shared<inbox_handle>();
    test::add_probe(
        env, [&](probe& p) { *in = p.add_inbox<ping>([](ping) {}); }, {}, {}, [in](probe&) { in->destroy(); });
    send<ping>(in->address(), 1);
    env.stop();
    EXPECT_TRUE(test::join_within(env));
    const auto st = test::all_stats_of(env);
    EXPECT_EQ(st.event_objects_created, 1u);
    EXPECT_EQ(st.event_objects_destroyed, 1u);
}

TEST(agent_event_objects, an_object_added_in_on_finish_goes_with_the_agent_and_handles_stay_safe_after_the_environment_is_gone) {
    event_handle timer;
    inbox_handle inbox;
    mbox address;
    {
        environment env;
        std::promise<std::string> refused;
        std::atomic<int> late{0};
        test::add_probe(
            env,
            [&](probe& p) {
                timer = p.add_timer(1h, 0ns, [] {});
                inbox = p.add_inbox<ping>([](ping) {});
                address = inbox.address();
            },
            {}, {},
            [&](probe& p) {
                // on_finish: the agent is still there, its objects not yet destroyed.
                try {
                    p.add_timer(0ms, 1ms, [&] { ++late; }).detach();
                    refused.set_value("");
                } catch (const session_destroyed_error& e) {
                    refused.set_value(e.what());
                }
            });
        EXPECT_TRUE(timer);
        env.stop();
    EXPECT_TRUE(test::join_within(env));
        auto f = refused.get_future();
        ASSERT_EQ(f.wait_for(1s), std::future_status::ready);
        EXPECT_EQ(f.get(), "") << "adding in on_finish is allowed (the objects go right after it)";
        EXPECT_EQ(late.load(), 0);
        const auto st = test::all_stats_of(env);
        EXPECT_EQ(st.event_objects_created, 3u);
        EXPECT_EQ(st.event_objects_destroyed, 3u);
    }
    EXPECT_FALSE(timer);
    EXPECT_FALSE(inbox);
    EXPECT_FALSE(timer.shutdown());
    EXPECT_FALSE(inbox.shutdown());
    EXPECT_THROW(send<ping>(address, 1), environment_stopped_error);
    timer.destroy();
    inbox.detach();
    EXPECT_FALSE(inbox);
}

}  // namespace
