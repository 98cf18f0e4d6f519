// The edges of an environment's teardown (DESIGN guarantees 3 and 4): destroying it from inside
// every kind of callback it runs, join() where it would wait for itself, handles that outlive
// it, binders of another environment, the order of a cooperation's notifications, and what a
// teardown pays and joins.

#include <mailroom/env/environment.hpp>

#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/mailroom.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/core/handle_access.hpp>

#include "../agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
using mailroom::test::probe;

struct go final : mailroom::signal {};
struct add {
    int a = 0, b = 0;
};

// ---- destroying the environment from inside its own callbacks ----

std::string thread_names() {
    std::string out;
    for (const auto& n : test::thread_names()) out += " " + n;
    return out;
}

// An environment on the heap that a callback destroys. Records what the callback saw (join()
// raising, the destruction returning) and when the teardown completed (on_stopped), so that a
// broken teardown fails the test instead of hanging it.
class inside {
public:
    explicit inside(std::string name, environment_options o = {}) {
        std::thread([] {}).join();  // ThreadSanitizer starts a thread of its own with the first one
        threads_before_ = test::thread_count();
        o.name = std::move(name);
        o.on_stopped = [this](const teardown_report&) {
            stopped_after_return_ = returned_.load();
            stopped_.set_value();
        };
        env_ = new environment(std::move(o));
    }

    environment& env() { return *env_; }

    // What the callback does: join() must raise (it would wait for itself), then the
    // environment is destroyed, and the destruction returns at once.
    void destroy_here() {
        environment* e = env_.exchange(nullptr);
        if (!e) return;
        try {
            e->join();
        } catch (const usage_error& ex) {
            join_error_ = ex.what();
        }
        delete e;
        returned_ = true;
    }

    // The test's side: the callback's destruction returned, the teardown completed, and every
    // thread the environment started is gone.
    // `let_go` drops what the test still holds of the environment (its last owners).
    void expect_torn_down(const std::string& name, const std::function<void()>& let_go = {}) {
        ASSERT_TRUE(test::wait_set(returned_, 20s)) << "destroying the environment from its callback did not return";
        ASSERT_EQ(stopped_.get_future().wait_for(20s), std::future_status::ready) << "the teardown never completed";
        if (let_go) let_go();
        EXPECT_TRUE(stopped_after_return_) << "the teardown completed before the destroying callback returned";
        EXPECT_NE(join_error_.find(name), std::string::npos) << "join() from the callback: '" << join_error_ << "'";
        // At most as many as before: a thread of an earlier test (liburcu's, say) may still have
        // been on its way out when they were counted.
        EXPECT_TRUE(test::eventually([&] { return test::thread_count() <= threads_before_; }))
            << test::thread_count() << " threads, " << threads_before_ << " before" << thread_names();
    }

private:
    std::atomic<environment*> env_{nullptr};
    std::atomic<bool> returned_{false};
    std::atomic<bool> stopped_after_return_{false};
    std::string join_error_;
    std::promise<void> stopped_;
    int threads_before_ = 0;
};

TEST(teardown_edges, destroying_the_environment_from_a_handler_completes_once_the_handler_returns) {
    inside in("from-handler");
    mbox m = test::add_probe(in.env(), [&](probe& p) { p.subscribe<go>(p.direct_mbox(), [&] { in.destroy_here(); }); });
    send<go>(m);
    in.expect_torn_down("from-handler");
}

TEST(teardown_edges, destroying_the_environment_from_a_session_callback_completes) {
    inside in("from-session");
    session s(in.env());
    s.post([&] { in.destroy_here(); });
    in.expect_torn_down("from-session");
    s.destroy();  // the environment is gone: a no-op
}

TEST(teardown_edges, destroying_the_environment_from_a_timer_callback_completes) {
    inside in("from-timer");
    session s(in.env());
    s.add_timer(1ms, 0ns, [&] { in.destroy_here(); }).detach();
    s.detach();
    in.expect_torn_down("from-timer");
}

TEST(teardown_edges, destroying_the_environment_from_on_start_completes) {
    inside in("from-start");
    test::add_probe(in.env(), {}, {}, [&](probe&) { in.destroy_here(); });
    in.expect_torn_down("from-start");
}

TEST(teardown_edges, destroying_the_environment_from_on_finish_completes) {
    inside in("from-finish");
    coop_handle h;
    test::add_probe(in.env(), {}, {.on_registered = [&](const coop_handle& c) { h = c; }}, {},
                    [&](probe&) { in.destroy_here(); });
    h.deregister();
    in.expect_torn_down("from-finish");
}

TEST(teardown_edges, destroying_the_environment_from_on_registered_completes) {
    inside in("from-registered");
    // on_registered runs on the registering thread (this one): not a worker of the environment.
    test::add_probe(in.env(), {}, {.on_registered = [&](const coop_handle&) { in.destroy_here(); }});
    in.expect_torn_down("from-registered");
}

TEST(teardown_edges, destroying_the_environment_from_on_deregistered_completes) {
    inside in("from-deregistered");
    coop_handle h;
    test::add_probe(in.env(), {},
                    {.on_registered = [&](const coop_handle& c) { h = c; },
                     .on_deregistered = [&](std::string_view, dereg_reason) { in.destroy_here(); }});
    h.deregister();
    in.expect_torn_down("from-deregistered");
}

TEST(teardown_edges, destroying_the_environment_from_an_empty_cooperations_on_deregistered_completes) {
    inside in("from-empty-coop");
    // An empty cooperation finishes on the thread that deregisters it (this one).
    coop c(in.env(), {.on_deregistered = [&](std::string_view, dereg_reason) { in.destroy_here(); }});
    coop_handle h = register_coop(std::move(c));
    h.deregister();
    in.expect_torn_down("from-empty-coop");
}

// An agent whose destructor runs a function.
class doomed final : public agent {
public:
    std::function<void()> on_destroy;
    ~doomed() override {
        if (on_destroy) on_destroy();
    }
};

TEST(teardown_edges, destroying_the_environment_from_an_agents_destructor_completes) {
    inside in("from-destructor");
    coop c(in.env());
    c.make_agent<doomed>().on_destroy = [&] { in.destroy_here(); };
    coop_handle h = register_coop(std::move(c));
    h.deregister();
    in.expect_torn_down("from-destructor");
}

TEST(teardown_edges, destroying_the_environment_from_a_rolled_back_agents_destructor_completes) {
    inside in("from-rollback");
    coop c(in.env());
    c.make_agent<doomed>().on_destroy = [&] { in.destroy_here(); };
    auto& bad = c.make_agent<probe>();
    bad.on_configure = [](probe&) { throw std::runtime_error("no"); };
    EXPECT_THROW(register_coop(std::move(c)), std::runtime_error);
    in.expect_torn_down("from-rollback");
}

TEST(teardown_edges, destroying_the_environment_from_a_then_continuation_completes) {
    {
        // liburcu starts a thread of its own for the process on first use: start it before
        // counting.
        environment warm;
        session s(warm);
        auto calc = register_named(s, "warm", [](incoming& r) { r.reply<int>(0); });
        (void)request<int>(warm, "warm", add{}).wait();
    }
    inside in("from-then");
    struct handles {
        session server, client;
        named_handle calc;
    };
    auto h = std::make_unique<handles>(handles{session(in.env()), session(in.env()), {}});
    h->calc = register_named(h->server, "calc", [](incoming& r) { r.reply<int>(r.as<add>().a + r.as<add>().b); });
    h->client.post([&] {
        auto r = request<int>(in.env(), "calc", add{1, 2});
        r.then(h->client, [&](const outgoing<int>&) { in.destroy_here(); });
    });
    // The named object's handle holds the core (and the named layer's reclamation thread)
    // until it goes.
    in.expect_torn_down("from-then", [&] { h.reset(); });
}

TEST(teardown_edges, join_from_on_deregistered_raises_usage_error_instead_of_waiting_for_itself) {
    environment env({.name = "self-waiter"});
    std::string error;
    std::atomic<bool> called{false};
    coop_handle h;
    test::add_probe(env, {},
                    {.on_registered = [&](const coop_handle& c) { h = c; },
                     .on_deregistered =
                         [&](std::string_view, dereg_reason) {
                             try {
                                 env.stop();
                                 env.join();
                             } catch (const usage_error& e) {
                                 error = e.what();
                             }
                             called = true;
                         }});
    h.deregister();
    ASSERT_TRUE(test::wait_set(called, 20s)) << "join() in on_deregistered never returned";
    EXPECT_NE(error.find("self-waiter"), std::string::npos) << error;
    ASSERT_TRUE(test::join_within(env));
}

// ---- handles that outlive their environment ----

TEST(teardown_edges, session_and_event_handles_stay_safe_after_the_environment_is_gone) {
    auto env = std::make_unique<environment>(environment_options{.name = "gone"});
    session s(*env, {.name = "orphan"});
    event_handle t = s.add_timer(1h, 0ns, [] {});
    event_handle t2 = s.add_timer(1h, 0ns, [] {});
    std::weak_ptr<internal::env_core> core = internal::core_of(*env);
    env.reset();
    ASSERT_TRUE(core.expired());  // nothing holds the core any more: it is freed
    EXPECT_FALSE(s);
    EXPECT_EQ(s.name(), "orphan");
    EXPECT_FALSE(s.post([] {}));
    EXPECT_THROW((void)s.add_timer(1ms, 0ns, [] {}), session_destroyed_error);
    EXPECT_THROW((void)s.add_inbox<int>([](int) {}), session_destroyed_error);
    EXPECT_FALSE(t);
    EXPECT_FALSE(t.shutdown());
    t.destroy();
    t2.detach();
    s.destroy();
    s.destroy();
}

// A thread that found the session open and was preempted right there, through the whole
// teardown, must find the environment still there when it resumes: the environment's
// destruction waits for it, instead of freeing what it is about to touch.
TEST(teardown_edges, a_post_preempted_after_finding_the_session_open_is_waited_for_by_the_teardown) {
    struct paused {
        std::atomic<bool> entered{false};
        std::atomic<bool> destroyed{false};
        std::atomic<bool> destroyed_while_inside{false};
    } p;
    internal::set_post_call_hook(
        [](void* arg) {
            auto* p = static_cast<paused*>(arg);
            p->entered = true;
            // Long enough for a destruction that does not wait to complete; one that waits
            // completes only after this returns.
            p->destroyed_while_inside = test::wait_set(p->destroyed, 500ms);
        },
        &p);
    std::atomic<std::uint64_t> discarded{0};
    auto env = std::make_unique<environment>(environment_options{
        .name = "preempted", .on_stopped = [&](const teardown_report& r) { discarded = r.callbacks_discarded; }});
    session s(*env, {.name = "poster"});
    std::atomic<bool> ran{false};
    std::atomic<bool> posted{false};
    std::thread poster([&] { posted = s.post([&] { ran = true; }); });
    ASSERT_TRUE(test::wait_set(p.entered, 20s));
    std::weak_ptr<internal::env_core> core = internal::core_of(*env);
    env.reset();
    p.destroyed = true;
    poster.join();
    internal::set_post_call_hook(nullptr, nullptr);
    EXPECT_FALSE(p.destroyed_while_inside) << "the environment was destroyed while a post was about to touch it";
    EXPECT_TRUE(core.expired());
    // Refused (the poster is told), or queued before the dispatchers stopped and then run or
    // discarded (and counted).
    EXPECT_TRUE(!posted || ran || discarded == 1) << "ran: " << ran << ", discarded: " << discarded;
    s.destroy();
}

TEST(teardown_edges, inbox_timer_and_session_handles_stay_safe_while_an_mbox_keeps_the_core) {
    auto env = std::make_unique<environment>(environment_options{.name = "kept"});
    session s(*env);
    inbox_handle in = s.add_inbox<int>([](int) {});
    timer_handle tm = send_delayed<int>(make_mpmc_mbox(*env), 1h, 1);
    env.reset();  // the inbox's mbox still holds the core
    EXPECT_THROW(send<int>(in.address(), 1), environment_stopped_error);
    EXPECT_FALSE(in);
    in.destroy();
    tm.cancel();
    EXPECT_FALSE(tm);
    EXPECT_FALSE(tm.cancel());
    s.destroy();
}

TEST(teardown_edges, cooperation_handles_stay_safe_after_the_environment_is_gone) {
    auto env = std::make_unique<environment>(environment_options{.name = "gone"});
    coop_handle h = register_coop(coop(*env, {.name = "left"}));
    coop_handle with_agent;
    test::add_probe(*env, {}, {.name = "agents", .on_registered = [&](const coop_handle& c) { with_agent = c; }});
    EXPECT_TRUE(h);
    std::weak_ptr<internal::env_core> core = internal::core_of(*env);
    env.reset();
    EXPECT_FALSE(core.expired());  // the cooperation handles keep it
    EXPECT_FALSE(h);
    EXPECT_FALSE(with_agent);
    EXPECT_EQ(h.name(), "left");
    h.deregister();
    with_agent.deregister();
}

// ---- binders of another environment ----

// A binding error across environments names both environments and the object bound.
void expect_names_both_environments_and_the_object(const std::string& what) {
    EXPECT_NE(what.find("alpha"), std::string::npos) << what;
    EXPECT_NE(what.find("beta"), std::string::npos) << what;
    EXPECT_NE(what.find("stray"), std::string::npos) << what;
}

TEST(teardown_edges, binding_a_cooperation_to_another_environments_dispatcher_raises_binding_error) {
    environment b({.name = "beta"});
    environment a({.name = "alpha"});
    auto pool = thread_pool::make_dispatcher(b, "b-pool", {.threads = 1});
    std::atomic<int> destroyed{0};
    coop c(a, {.name = "stray", .bind = pool.bind()});
    c.make_agent<probe>(&destroyed);
    try {
        register_coop(std::move(c));
        ADD_FAILURE() << "a binder of environment 'beta' was accepted by environment 'alpha'";
    } catch (const binding_error& e) {
        expect_names_both_environments_and_the_object(e.what());
    }
    EXPECT_EQ(destroyed.load(), 1);  // rolled back
    // An agent's own binder is checked the same way.
    coop c2(a);
    c2.make_agent_with_binder<probe>(b.default_dispatcher().bind());
    EXPECT_THROW(register_coop(std::move(c2)), binding_error);
}

TEST(teardown_edges, binding_a_session_to_another_environments_dispatcher_raises_binding_error) {
    environment b({.name = "beta"});
    environment a({.name = "alpha"});
    try {
        session s(a, {.name = "stray", .bind = b.default_dispatcher().bind()});
        ADD_FAILURE() << "a binder of environment 'beta' was accepted by environment 'alpha'";
    } catch (const binding_error& e) {
        expect_names_both_environments_and_the_object(e.what());
    }
    EXPECT_EQ(session_stats_of(a).sessions_created, 0u);
}

// ---- notifications of one cooperation ----

TEST(teardown_edges, an_empty_cooperations_on_deregistered_never_runs_before_its_on_registered_returns) {
    environment env;
    std::mutex mu;
    std::vector<std::string> events;
    auto note = [&](std::string e) {
        std::lock_guard g(mu);
        events.push_back(std::move(e));
    };
    std::atomic<bool> deregistered{false};
    coop c(env, {.on_registered =
                     [&](const coop_handle& h) {
                         note("registered begins");
                         // Another thread deregisters it while this notification runs.
                         std::thread([c = coop_handle(h)]() mutable { c.deregister(); }).join();
                         note("registered ends");
                     },
                 .on_deregistered = [&](std::string_view, dereg_reason) {
                     note("deregistered");
                     deregistered = true;
                 }});
    register_coop(std::move(c));
    ASSERT_TRUE(test::wait_set(deregistered));
    std::lock_guard g(mu);
    EXPECT_EQ(events, (std::vector<std::string>{"registered begins", "registered ends", "deregistered"}));
}

TEST(teardown_edges, stopping_during_on_registered_deregisters_after_it) {
    environment env;
    std::atomic<bool> in_registered{false}, deregistered_early{false}, deregistered{false};
    coop c(env, {.on_registered =
                     [&](const coop_handle&) {
                         in_registered = true;
                         std::thread([&] { env.stop(); }).join();
                         deregistered_early = deregistered.load();
                         in_registered = false;
                     },
                 .on_deregistered = [&](std::string_view, dereg_reason r) {
                     EXPECT_FALSE(in_registered.load());
                     EXPECT_EQ(r, dereg_reason::shutdown);
                     deregistered = true;
                 }});
    register_coop(std::move(c));
    EXPECT_FALSE(deregistered_early.load());
    ASSERT_TRUE(test::join_within(env));
    EXPECT_TRUE(deregistered.load());
}

TEST(teardown_edges, deregister_coop_in_configure_deregisters_once_registration_commits) {
    environment env;
    const auto reason = dereg_reason(int(dereg_reason::user_defined) + 7);
    std::promise<dereg_reason> got;
    std::atomic<bool> started{false}, finished{false};
    coop_handle h = [&] {
        coop c(env, {.name = "short-lived",
                     .on_deregistered = [&](std::string_view, dereg_reason r) { got.set_value(r); }});
        auto& p = c.make_agent<probe>();
        p.on_configure = [reason](probe& self) { self.deregister_coop(reason); };
        p.on_start_fn = [&](probe&) { started = true; };
        p.on_finish_fn = [&](probe&) { finished = true; };
        return register_coop(std::move(c));
    }();
    auto f = got.get_future();
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "deregister_coop() in configure() was ignored";
    EXPECT_EQ(f.get(), reason);
    EXPECT_TRUE(started.load());
    EXPECT_TRUE(finished.load());
    EXPECT_FALSE(h);
}

// ---- what a teardown pays and joins ----

TEST(teardown_edges, the_teardown_pays_one_barrier_for_all_the_sessions_left) {
    auto env = std::make_unique<environment>();
    for (int i = 0; i < 50; ++i) session(*env).detach();
    const std::uint64_t before = internal::context_gate::barriers();
    env.reset();
    EXPECT_LE(internal::context_gate::barriers() - before, 2u);
}

TEST(teardown_edges, a_dispatcher_added_while_the_environment_stops_is_joined_or_refused) {
    const long rounds = test::rounds(200);
    for (long round = 0; round < rounds; ++round) {
        environment env;
        std::atomic<int> added{0};
        std::thread adder([&] {
            for (int i = 0;; ++i) {
                try {
                    std::string name = "d";  // not "d" + to_string(i): g++ 12 warns falsely (-Wrestrict)
                    name += std::to_string(i);
                    one_thread::make_dispatcher(env, name);
                    ++added;
                } catch (const environment_stopped_error&) {
                    return;
                }
            }
        });
        ASSERT_TRUE(test::eventually([&] { return added.load() > 0; }));
        env.stop();
        env.join();
        adder.join();
        for (const auto& d : env.dispatcher_stats_all())
            ASSERT_EQ(d.threads, 0u) << "round " << round << ": dispatcher '" << d.name
                                     << "' still has its thread after join()";
    }
}

}  // namespace
