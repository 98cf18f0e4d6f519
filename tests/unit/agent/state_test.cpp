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
#include <string>
#include <thread>
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
                                   s.messages_cancelled);
}

using log_t = std::vector<std::string>;

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

}  // namespace
