// Hierarchical states of agents: initial sub-states, enter/exit order, inheritance and suppress,
// history, transfer_to_state and its loops, just_switch_to, time limits, the thread rules and
// the books.
#include <mailroom/agent/state.hpp>

#include <mailroom/mailroom.hpp>

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

struct ping {
    int n = 0;
};
struct pong {
    int n = 0;
};
struct call {
    std::function<void()> f;
};

/// An agent whose states are declared by the test (in configure(), kept in `owned`), which logs
/// enters and exits, and runs test code on its own context through an inbox (an event object:
/// it reaches the agent whatever state it is in).
class machine final : public agent {
public:
    using hook = std::function<void(machine&)>;

    using agent::change_state;
    using agent::default_state;
    using agent::env;
    using agent::set_exception_policy;
    using agent::set_name;
    using agent::subscribe;
    using agent::unsubscribe;

    hook on_configure, on_start_fn;
    std::vector<std::string> log;  // the agent's context only
    std::deque<std::unique_ptr<state>> owned;
    inbox_handle runner;

    state& top(std::string name, state_options o = {}) {
        owned.push_back(std::make_unique<state>(*this, std::move(name), o));
        return logged(*owned.back());
    }
    state& sub(state& parent, std::string name, state_options o = {}) {
        owned.push_back(std::make_unique<state>(parent, std::move(name), o));
        return logged(*owned.back());
    }
    state& logged(state& s) {
        s.on_enter([this, &s]() noexcept { log.push_back("+" + s.name()); });
        s.on_exit([this, &s]() noexcept { log.push_back("-" + s.name()); });
        return s;
    }

    /// Runs `f` on the agent's context and waits for it (bounded); rethrows what it threw.
    void run(std::function<void()> f) {
        auto p = std::make_shared<std::promise<void>>();
        auto fut = p->get_future();
        send(runner.address(), call{[p, f = std::move(f)] {
                 try {
                     f();
                     p->set_value();
                 } catch (...) {
                     p->set_exception(std::current_exception());
                 }
             }});
        ASSERT_EQ(fut.wait_for(10s), std::future_status::ready) << "the agent did not run the call";
        fut.get();
    }
    /// The log so far (emptied), read on the agent's context.
    std::vector<std::string> take_log() {
        std::vector<std::string> out;
        run([&] { out.swap(log); });
        return out;
    }
    std::string where() {
        std::string out;
        run([&] { out = current_state_path(); });
        return out;
    }

protected:
    void configure() override {
        runner = add_inbox<call>([](call c) { c.f(); });
        if (on_configure) on_configure(*this);
    }
    void on_start() override {
        if (on_start_fn) on_start_fn(*this);
    }
};

/// Registers one machine configured by `configure`; it lives until `env` is joined.
machine& add_machine(environment& env, machine::hook configure, machine::hook start = {}) {
    coop c(env);
    auto& m = c.make_agent<machine>();
    m.set_name("fsm");
    m.on_configure = std::move(configure);
    m.on_start_fn = std::move(start);
    register_coop(std::move(c));
    return m;
}

/// The books of guarantee 6 balance once `env` is joined.
void expect_books_balance(environment& env) {
    const environment_stats s = env.stats();
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped);
}

using log_t = std::vector<std::string>;

std::string level(std::size_t i) {
    std::string name(1, 'l');
    name.append(std::to_string(i));
    return name;
}

TEST(state, an_agent_starts_in_its_default_state_and_a_composite_state_is_entered_down_to_its_initial_sub_states) {
    environment env;
    state* working = nullptr;
    state* busy = nullptr;
    state* writing = nullptr;
    auto& m = add_machine(env, [&](machine& a) {
        working = &a.top("working");
        a.sub(*working, "idle");
        busy = &a.sub(*working, "busy", {.initial = true});
        a.sub(*busy, "reading");
        writing = &a.sub(*busy, "writing", {.initial = true});
    });
    EXPECT_EQ(m.where(), "default");
    m.run([&] { m.change_state(*working); });
    EXPECT_EQ(m.where(), "working.busy.writing");
    EXPECT_EQ(m.current_state_path(), "working.busy.writing");  // any thread
    EXPECT_TRUE(m.is_in(*working));
    EXPECT_TRUE(m.is_in(*busy));
    EXPECT_TRUE(m.is_in(*writing));
    EXPECT_FALSE(m.is_in(m.default_state()));
    EXPECT_EQ(m.take_log(), (log_t{"+working", "+busy", "+writing"}));
    EXPECT_EQ(writing->path(), "working.busy.writing");
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, exit_handlers_run_from_the_innermost_state_up_to_the_common_ancestor_then_enter_handlers_down) {
    environment env;
    state *a_ = nullptr, *a1 = nullptr, *a12 = nullptr, *a2 = nullptr, *a21 = nullptr, *b = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        a_ = &x.top("a");
        a1 = &x.sub(*a_, "a1", {.initial = true});
        a12 = &x.sub(*a1, "a12", {.initial = true});
        a2 = &x.sub(*a_, "a2");
        a21 = &x.sub(*a2, "a21", {.initial = true});
        b = &x.top("b");
        x.change_state(*a12);  // legal in configure(): the agent's own context
    });
    EXPECT_EQ(m.take_log(), (log_t{"+a", "+a1", "+a12"}));
    m.run([&] { m.change_state(*a21); });
    EXPECT_EQ(m.take_log(), (log_t{"-a12", "-a1", "+a2", "+a21"})) << "the common ancestor 'a' is neither left nor entered";
    m.run([&] { m.change_state(*b); });
    EXPECT_EQ(m.take_log(), (log_t{"-a21", "-a2", "-a", "+b"}));
    m.run([&] { m.change_state(*b); });
    EXPECT_EQ(m.take_log(), log_t{}) << "a change to the state the agent is in does nothing";
    m.run([&] { m.change_state(m.default_state()); });
    EXPECT_EQ(m.take_log(), log_t{"-b"});
    EXPECT_EQ(m.where(), "default");
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, a_parent_state_handles_what_its_sub_states_do_not_and_suppress_in_a_child_hides_it_counted_ignored) {
    environment env;
    state *parent = nullptr, *plain = nullptr, *own = nullptr, *quiet = nullptr, *other = nullptr;
    mbox topic = make_mpmc_mbox(env);
    auto& m = add_machine(env, [&](machine& x) {
        parent = &x.top("parent");
        plain = &x.sub(*parent, "plain", {.initial = true});
        own = &x.sub(*parent, "own");
        quiet = &x.sub(*parent, "quiet");
        other = &x.top("other");
        parent->event(x.direct_mbox(), [&x](const ping& p) { x.log.push_back("parent " + std::to_string(p.n)); });
        own->event(x.direct_mbox(), [&x](const ping& p) { x.log.push_back("own " + std::to_string(p.n)); });
        quiet->suppress<ping>(x.direct_mbox());
        // A topic too: the reactions are per (mbox, type), whatever the kind of mbox.
        parent->event(topic, [&x](const pong& p) { x.log.push_back("topic " + std::to_string(p.n)); });
        quiet->suppress<pong>(topic);
        x.change_state(*parent);
    });
    const mbox to = m.direct_mbox();
    const auto ignored0 = env.stats().messages_ignored;
    send<ping>(to, 1);
    send<pong>(topic, 2);
    m.run([&] { m.change_state(*own); });
    send<ping>(to, 3);
    send<pong>(topic, 4);
    m.run([&] { m.change_state(*quiet); });
    send<ping>(to, 5);  // suppressed: ignored
    send<pong>(topic, 6);  // suppressed: ignored
    m.run([&] { m.change_state(*other); });
    send<ping>(to, 7);  // no handler in 'other': ignored
    EXPECT_EQ(m.take_log(), (log_t{"+parent", "+plain", "parent 1", "topic 2", "-plain", "+own", "own 3", "topic 4",
                                   "-own", "+quiet", "-quiet", "-parent", "+other"}));
    EXPECT_EQ(env.stats().messages_ignored - ignored0, 3u) << "suppressed twice, and no handler once";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    expect_books_balance(env);
}

TEST(state, shallow_history_restores_the_direct_sub_state_and_deep_history_the_innermost_one) {
    environment env;
    state *shallow = nullptr, *deep = nullptr, *none = nullptr, *away = nullptr;
    state *s_b = nullptr, *s_b2 = nullptr, *d_b2 = nullptr, *n_b2 = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        // Three alike composites: a { a1 (initial) { a11 (initial), a12 }, b { b1 (initial), b2 } }.
        auto build = [&x](const char* name, state_history h, state*& b, state*& b2) -> state& {
            state& top = x.top(name, {.history = h});
            state& a = x.sub(top, "a", {.initial = true});
            x.sub(a, "a1", {.initial = true});
            x.sub(a, "a2");
            b = &x.sub(top, "b");
            x.sub(*b, "b1", {.initial = true});
            b2 = &x.sub(*b, "b2");
            return top;
        };
        state* unused = nullptr;
        shallow = &build("shallow", state_history::shallow, s_b, s_b2);
        deep = &build("deep", state_history::deep, unused, d_b2);
        none = &build("none", state_history::none, unused, n_b2);
        away = &x.top("away");
    });
    m.run([&] {
        m.change_state(*s_b2);
        m.change_state(*away);
        m.change_state(*shallow);
    });
    EXPECT_EQ(m.where(), "shallow.b.b1") << "shallow history: back to 'b', then 'b' enters its initial sub-state";
    m.run([&] {
        m.change_state(*d_b2);
        m.change_state(*away);
        m.change_state(*deep);
    });
    EXPECT_EQ(m.where(), "deep.b.b2") << "deep history: back to the innermost state it was left in";
    m.run([&] {
        m.change_state(*n_b2);
        m.change_state(*away);
        m.change_state(*none);
    });
    EXPECT_EQ(m.where(), "none.a.a1") << "no history: the initial sub-states";
    m.take_log();
    // History is what the state was last in, the current stay included: a change to 'deep'
    // while in deep.b.b2 goes nowhere.
    m.run([&] {
        m.change_state(*d_b2);
        m.change_state(*deep);
    });
    EXPECT_EQ(m.where(), "deep.b.b2");
    EXPECT_EQ(m.take_log(), (log_t{"-a1", "-a", "-none", "+deep", "+b", "+b2"}));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, transfer_to_state_handles_the_message_again_in_the_target_state_and_just_switch_to_does_not) {
    environment env;
    state *idle = nullptr, *busy = nullptr, *done = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        idle = &x.top("idle");
        busy = &x.top("busy");
        done = &x.top("done");
        idle->transfer_to_state<ping>(x.direct_mbox(), *busy);
        busy->event(x.direct_mbox(), [&x](const ping& p) { x.log.push_back("busy " + std::to_string(p.n)); });
        busy->just_switch_to<pong>(x.direct_mbox(), *done);
        done->event(x.direct_mbox(), [&x](const pong& p) { x.log.push_back("done " + std::to_string(p.n)); });
        x.change_state(*idle);
    });
    m.take_log();
    send<ping>(m.direct_mbox(), 1);
    send<pong>(m.direct_mbox(), 2);  // switches to 'done', not handled there
    send<pong>(m.direct_mbox(), 3);  // handled in 'done'
    EXPECT_EQ(m.take_log(), (log_t{"-idle", "+busy", "busy 1", "-busy", "+done", "done 3"}));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    const auto after = env.stats();
    EXPECT_EQ(after.messages_delivered, 3u + 2u)  // and the two take_log calls of the inbox
        << "a transferred message and a switching one are delivered: the agent reacted to them";
    EXPECT_EQ(after.messages_ignored, 0u);
    expect_books_balance(env);
}

TEST(state, a_transfer_loop_is_refused_with_a_state_error_naming_the_states_before_any_change_of_state) {
    std::mutex lock;
    std::vector<std::string> logged;
    environment env(environment_options{.log = [&](std::string_view s) {
        std::lock_guard g(lock);
        logged.emplace_back(s);
    }});
    state *a = nullptr, *b = nullptr, *c = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        x.set_exception_policy(exception_policy::log_and_continue);
        a = &x.top("a");
        b = &x.top("b");
        c = &x.sub(*b, "c", {.initial = true});
        a->transfer_to_state<ping>(x.direct_mbox(), *b);   // to b.c
        c->transfer_to_state<ping>(x.direct_mbox(), *a);   // and back: a loop
        x.change_state(*a);
    });
    m.take_log();
    send<ping>(m.direct_mbox(), 1);
    EXPECT_EQ(m.where(), "a") << "the loop is found before any change of state";
    EXPECT_EQ(m.take_log(), log_t{}) << "no enter or exit handler ran";
    ASSERT_TRUE(test::eventually([&] { return env.stats().handler_exceptions == 1; }));
    {
        std::lock_guard g(lock);
        ASSERT_EQ(logged.size(), 1u);
        EXPECT_NE(logged[0].find("agent 'fsm'"), std::string::npos) << logged[0];
        EXPECT_NE(logged[0].find("'a' -> 'b.c' -> 'a'"), std::string::npos) << logged[0];
    }
    static_assert(std::is_base_of_v<error, state_error>, "a typed error derived from mailroom::error");
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    expect_books_balance(env);
}

TEST(state, a_time_limit_switches_to_its_target_when_the_time_in_the_state_runs_out) {
    environment env;
    std::atomic<bool> timed_out{false};
    state *waiting = nullptr, *inner = nullptr, *expired = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        waiting = &x.top("waiting");
        inner = &x.sub(*waiting, "inner", {.initial = true});
        x.sub(*waiting, "other");
        expired = &x.top("expired");
        waiting->time_limit(20ms, *expired);
        expired->on_enter([&]() noexcept { timed_out = true; });
        x.change_state(*waiting);
    });
    ASSERT_TRUE(test::wait_set(timed_out));
    EXPECT_EQ(m.where(), "expired");
    EXPECT_EQ(m.take_log(), (log_t{"+waiting", "+inner", "-inner", "-waiting"}));
    EXPECT_FALSE(m.is_in(*inner));
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

/// An agent with a state `limited` whose 1 ms time limit leads to `expired` (entries counted),
/// and a state `elsewhere`.
struct limited_machine {
    std::atomic<int> expired_entries{0};
    state *limited = nullptr, *expired = nullptr, *elsewhere = nullptr;
    machine* m = nullptr;

    explicit limited_machine(environment& env) {
        m = &add_machine(env, [this](machine& x) {
            limited = &x.top("limited");
            expired = &x.top("expired");
            elsewhere = &x.top("elsewhere");
            limited->time_limit(1ms, *expired);
            expired->on_enter([this]() noexcept { ++expired_entries; });
        });
    }
    /// On the agent's context: enters `limited` and stays on the context until the time limit's
    /// timer has fired (its callback is then queued behind the running call). False when it
    /// never fired.
    bool enter_and_wait_for_the_fire() {
        const auto fired0 = m->env_stats().timers_fired;  // before the entry arms the timer
        m->change_state(*limited);
        return test::eventually([&] { return m->env_stats().timers_fired > fired0; }, 5s);
    }
};

TEST(state, a_time_limit_cancelled_by_a_change_of_state_never_fires_even_when_its_callback_is_already_queued) {
    environment env;
    limited_machine lm(env);
    machine& m = *lm.m;
    for (int round = 0; round < 20; ++round) {
        bool queued = false;
        m.run([&] {
            queued = lm.enter_and_wait_for_the_fire();
            m.change_state(*lm.elsewhere);  // leave before the queued callback runs
        });
        ASSERT_TRUE(queued) << "the time limit's timer never fired";
        EXPECT_EQ(m.where(), "elsewhere");  // runs after the queued callback
    }
    EXPECT_EQ(lm.expired_entries.load(), 0) << "a cancelled time limit switched the agent";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, a_time_limit_of_an_earlier_stay_never_cuts_a_later_stay_short) {
    environment env;
    limited_machine lm(env);
    machine& m = *lm.m;
    bool queued = false;
    m.run([&] {
        queued = lm.enter_and_wait_for_the_fire();
        // Out and back in while the first stay's fire is queued; the new stay gets a long limit.
        m.change_state(*lm.elsewhere);
        lm.limited->time_limit(1h, *lm.expired);
        m.change_state(*lm.limited);
    });
    ASSERT_TRUE(queued) << "the time limit's timer never fired";
    EXPECT_EQ(m.where(), "limited");
    EXPECT_EQ(lm.expired_entries.load(), 0);
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, states_nest_max_depth_levels_deep_and_one_more_is_a_state_error_naming_it) {
    environment env;
    std::string refused;
    state* deepest = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        state* s = &x.top("l0");
        for (std::size_t i = 1; i < state::max_depth; ++i) s = &x.sub(*s, level(i), {.initial = true});
        deepest = s;
        try {
            x.sub(*s, "too_deep", {.initial = true});
        } catch (const state_error& e) {
            refused = e.what();
        }
    });
    static_assert(state::max_depth >= 16);
    EXPECT_NE(refused.find("agent 'fsm'"), std::string::npos) << refused;
    EXPECT_NE(refused.find("l31.too_deep"), std::string::npos) << refused;
    m.run([&] { m.change_state(*m.owned.front()); });
    std::string expected = "l0";
    for (std::size_t i = 1; i < state::max_depth; ++i) expected.append(1, '.').append(level(i));
    EXPECT_EQ(m.where(), expected);
    EXPECT_TRUE(m.is_in(*deepest));
    EXPECT_EQ(m.take_log().size(), state::max_depth);
    m.run([&] { m.change_state(m.default_state()); });
    EXPECT_EQ(m.take_log().size(), state::max_depth) << "every level left";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, changing_state_outside_the_agents_context_or_from_an_enter_handler_is_a_state_error_naming_the_agent) {
    environment env;
    state *a = nullptr, *b = nullptr, *composite = nullptr;
    std::string from_enter;
    auto& m = add_machine(env, [&](machine& x) {
        a = &x.top("a");
        b = &x.top("b");
        composite = &x.top("composite");
        x.sub(*composite, "no_initial");
        b->on_enter([&]() noexcept {
            try {
                x.change_state(*a);
            } catch (const state_error& e) {
                from_enter = e.what();
            }
        });
    });
    try {
        m.change_state(*a);  // the test's thread
        ADD_FAILURE() << "change_state from another thread was accepted";
    } catch (const state_error& e) {
        EXPECT_NE(std::string(e.what()).find("agent 'fsm'"), std::string::npos) << e.what();
    }
    m.run([&] { m.change_state(*b); });
    EXPECT_NE(from_enter.find("agent 'fsm'"), std::string::npos) << from_enter;
    EXPECT_NE(from_enter.find("enter or exit handler"), std::string::npos) << from_enter;
    EXPECT_EQ(m.where(), "b");
    EXPECT_THROW(m.run([&] { m.change_state(*composite); }), state_error) << "a composite state without an initial sub-state";
    EXPECT_EQ(m.where(), "b");
    // Another agent's state.
    state* foreign = nullptr;
    add_machine(env, [&](machine& y) { foreign = &y.top("foreign"); });
    EXPECT_THROW(m.run([&] { m.change_state(*foreign); }), state_error);
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, plain_subscriptions_belong_to_the_default_state_and_are_ignored_in_other_states) {
    environment env;
    state* other = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        // Subscribed before any state exists: moved into the default state when one is declared.
        x.subscribe(x.direct_mbox(), [&x](const ping& p) { x.log.push_back("ping " + std::to_string(p.n)); });
        other = &x.top("other");
        x.subscribe(x.direct_mbox(), [&x](const pong& p) { x.log.push_back("pong " + std::to_string(p.n)); });
    });
    const auto ignored0 = env.stats().messages_ignored;
    send<ping>(m.direct_mbox(), 1);
    send<pong>(m.direct_mbox(), 2);
    m.run([&] { m.change_state(*other); });
    send<ping>(m.direct_mbox(), 3);
    send<pong>(m.direct_mbox(), 4);
    m.run([&] { m.change_state(m.default_state()); });
    send<ping>(m.direct_mbox(), 5);
    EXPECT_EQ(m.take_log(), (log_t{"ping 1", "pong 2", "+other", "-other", "ping 5"}));
    EXPECT_EQ(env.stats().messages_ignored - ignored0, 2u);
    // Unsubscribing from inside the handler being removed, then subscribing again.
    m.run([&] {
        EXPECT_TRUE(m.unsubscribe<ping>(m.direct_mbox()));
        EXPECT_FALSE(m.unsubscribe<ping>(m.direct_mbox()));
    });
    send<ping>(m.direct_mbox(), 6);  // ignored
    m.run([&] { m.subscribe(m.direct_mbox(), [&m](const ping& p) { m.log.push_back("again " + std::to_string(p.n)); }); });
    send<ping>(m.direct_mbox(), 7);
    EXPECT_EQ(m.take_log(), (log_t{"again 7"}));
    EXPECT_THROW(m.run([&] { m.default_state().event(m.direct_mbox(), [](const pong&) {}); }), subscription_error)
        << "already subscribed in this state";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    expect_books_balance(env);
}

TEST(state, a_declined_message_is_counted_ignored_once_and_the_messages_after_it_count_as_they_should) {
    // What a handler leaves for after it returns (a decline, an added subscription) is one byte
    // of the context, tested once per message: it must be set by each decline, cleared after
    // it, and must not mix with a subscription added by the next handler.
    environment env;
    state *a = nullptr, *b = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        a = &x.top("a");
        b = &x.top("b");
        a->event(x.direct_mbox(), [&x, a](const ping& p) {
            x.log.push_back("ping " + std::to_string(p.n));
            if (p.n == 2)  // a new (mbox, type) from inside a handler: added after it returns
                a->event(x.direct_mbox(), [&x](const pong& q) { x.log.push_back("pong " + std::to_string(q.n)); });
        });
        x.change_state(*b);
    });
    m.take_log();
    const auto ignored0 = env.stats().messages_ignored;
    send<ping>(m.direct_mbox(), 1);  // no handler in 'b': declined
    m.run([&] { m.change_state(*a); });
    send<ping>(m.direct_mbox(), 2);  // handled; subscribes pong
    send<pong>(m.direct_mbox(), 3);  // handled by what ping 2 added
    m.run([&] { m.change_state(*b); });
    send<pong>(m.direct_mbox(), 4);  // declined
    send<ping>(m.direct_mbox(), 5);  // declined
    m.run([&] { m.change_state(*a); });
    send<ping>(m.direct_mbox(), 6);  // handled
    EXPECT_EQ(m.take_log(), (log_t{"-b", "+a", "ping 2", "pong 3", "-a", "+b", "-b", "+a", "ping 6"}));
    EXPECT_EQ(env.stats().messages_ignored - ignored0, 3u) << "declined three times, each counted once";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    expect_books_balance(env);
}

TEST(state, a_handler_that_unsubscribes_itself_in_its_state_runs_to_its_end_and_the_next_message_is_ignored) {
    environment env;
    state* s = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        s = &x.top("s");
        s->event(x.direct_mbox(), [&x, s](const ping& p) {
            EXPECT_TRUE(s->unsubscribe<ping>(x.direct_mbox()));
            s->event(x.direct_mbox(), [&x](const pong& q) { x.log.push_back("pong " + std::to_string(q.n)); });
            x.log.push_back("ping " + std::to_string(p.n));  // its captures are still alive
        });
        x.change_state(*s);
    });
    m.take_log();
    const auto ignored0 = env.stats().messages_ignored;
    send<ping>(m.direct_mbox(), 1);
    send<ping>(m.direct_mbox(), 2);
    send<pong>(m.direct_mbox(), 3);
    EXPECT_EQ(m.take_log(), (log_t{"ping 1", "pong 3"}));
    EXPECT_EQ(env.stats().messages_ignored - ignored0, 1u);
    env.stop();
    ASSERT_TRUE(test::join_within(env));
    expect_books_balance(env);
}

TEST(state, two_initial_sub_states_an_initial_top_level_state_a_sub_state_of_the_default_state_or_a_negative_time_limit_is_refused_naming_them) {
    environment env;
    std::vector<std::string> errors;
    add_machine(env, [&](machine& x) {
        state& parent = x.top("parent");
        x.sub(parent, "first", {.initial = true});
        auto refused = [&](auto&& declare) {
            try {
                declare();
                errors.emplace_back("accepted");
            } catch (const state_error& e) {
                errors.emplace_back(e.what());
            }
        };
        refused([&] { x.sub(parent, "second", {.initial = true}); });
        refused([&] { x.top("top", {.initial = true}); });
        refused([&] { x.sub(x.default_state(), "under_default"); });
        try {
            parent.time_limit(-1ms, parent);
            errors.emplace_back("accepted");
        } catch (const usage_error& e) {
            errors.emplace_back(e.what());
        }
    });
    ASSERT_EQ(errors.size(), 4u);
    EXPECT_NE(errors[3].find("state 'parent': a negative time_limit"), std::string::npos) << errors[3];
    EXPECT_NE(errors[0].find("'parent' would have two initial sub-states: 'first' and 'second'"), std::string::npos)
        << errors[0];
    EXPECT_NE(errors[1].find("state 'top' is top-level"), std::string::npos) << errors[1];
    EXPECT_NE(errors[2].find("'under_default' cannot be a sub-state of the default state"), std::string::npos)
        << errors[2];
    for (const auto& e : errors) EXPECT_NE(e.find("agent 'fsm'"), std::string::npos) << e;
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state, the_current_state_path_is_read_from_other_threads_while_the_agent_changes_state) {
    environment env;
    state *a = nullptr, *b = nullptr, *b1 = nullptr;
    auto& m = add_machine(env, [&](machine& x) {
        a = &x.top("a");
        b = &x.top("b");
        b1 = &x.sub(*b, "b1", {.initial = true});
    });
    std::atomic<int> changes{0};
    event_handle flip;
    m.run([&] {
        flip = m.add_timer(0ms, 1ms, [&] {
            m.change_state(m.is_in(*a) ? static_cast<const state&>(*b) : *a);
            ++changes;
        });
    });
    int bad = 0;
    const auto deadline = std::chrono::steady_clock::now() + 2s;
    for (int i = 0; (i < 2000 || changes.load() < 20) && std::chrono::steady_clock::now() < deadline; ++i) {
        const std::string p = m.current_state_path();
        bad += (p == "default" || p == "a" || p == "b" || p == "b.b1") ? 0 : 1;
        (void)m.is_in(*b1);
    }
    flip.shutdown();
    EXPECT_EQ(bad, 0);
    EXPECT_GE(changes.load(), 20) << "the agent changed state too rarely for the reads to race with it";
    env.stop();
    ASSERT_TRUE(test::join_within(env));
}

TEST(state_death, an_enter_handler_that_throws_terminates_the_process) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            environment env;
            std::atomic<bool> never{false};
            auto& m = add_machine(env, [](machine& x) {
                x.top("throws").on_enter([] { throw std::runtime_error("enter failed"); });
            });
            m.run([&] { m.change_state(*m.owned.front()); });
            test::wait_set(never, 20s);
        },
        "enter failed");
}

}  // namespace
