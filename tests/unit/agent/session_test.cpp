#include <mailroom/session/session.hpp>
#include "all_stats.hpp"

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

using namespace std::chrono_literals;
using mailroom::test::eventually;
using mailroom::test::join_within;
using mailroom::test::wait_set;

namespace {

struct ping {
    int n = 0;
};

// Blocks until `flag` is set (bounded, so that a broken test fails instead of hanging).
void block_until(const std::atomic<bool>& flag) {
    ASSERT_TRUE(wait_set(flag, std::chrono::seconds(20)));
}

// Runs `close` (a shutdown() or destroy()) on another thread while a callback is blocked on
// `release`, and checks that it returns only after the callback finished.
template <class Close>
void expect_close_waits_for_callback(Close close, std::atomic<bool>& release, const std::atomic<bool>& finished) {
    std::atomic<bool> returned{false}, finished_before_return{false};
    std::thread closer([&] {
        close();
        finished_before_return = finished.load();
        returned = true;
    });
    std::this_thread::sleep_for(30ms);
    EXPECT_FALSE(returned.load()) << "it returned while the callback was running";
    release = true;
    closer.join();
    EXPECT_TRUE(returned.load());
    EXPECT_TRUE(finished_before_return.load());
}

TEST(session, posted_calls_run_serially_on_the_context) {
    mailroom::environment env;
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mailroom::session s(env, {.name = "serial", .bind = pool.bind()});
    std::atomic<int> inside{0}, overlaps{0}, ran{0};
    auto body = [&] {
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        std::this_thread::yield();
        inside.fetch_sub(1);
        ran.fetch_add(1);
    };
    auto tick = s.add_timer(0ms, 1ms, body);
    constexpr int per_thread = 2000;
    std::vector<std::thread> posters;
    for (int t = 0; t < 2; ++t)
        posters.emplace_back([&] {
            for (int i = 0; i < per_thread; ++i) ASSERT_TRUE(s.post(body));
        });
    for (auto& t : posters) t.join();
    // Every callback yields: on a loaded machine each yield may cost a time slice.
    ASSERT_TRUE(eventually([&] { return ran.load() >= 2 * per_thread; }, std::chrono::seconds(60)))
        << ran.load() << " ran";
    EXPECT_EQ(overlaps.load(), 0);
    EXPECT_EQ(s.name(), "serial");
    s.destroy();
    EXPECT_FALSE(s);
}

TEST(session, post_runs_on_another_thread_and_with_the_environment_current) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<bool> done{false};
    std::thread::id where;
    EXPECT_TRUE(s.post([&] {
        where = std::this_thread::get_id();
        // join() from the session's own thread is misuse: the environment knows this thread.
        EXPECT_THROW(env.join(), mailroom::usage_error);
        done = true;
    }));
    ASSERT_TRUE(wait_set(done));
    EXPECT_NE(where, std::this_thread::get_id());
    // The run is counted after the callback returns, so `done` can be seen before the count.
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).callbacks_run >= 1; }));
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(session_stats_of(env).callbacks_run, 1u);
}

TEST(session, one_shot_timer_fires_once) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> fired{0};
    auto t = s.add_timer(2ms, 0ms, [&] { fired.fetch_add(1); });
    ASSERT_TRUE(eventually([&] { return fired.load() == 1; }));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(fired.load(), 1);
    EXPECT_TRUE(t);  // a fired one-shot is not shut down
}

TEST(session, periodic_timer_fires_until_shut_down) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> fired{0};
    auto t = s.add_timer(0ms, 1ms, [&] { fired.fetch_add(1); });
    ASSERT_TRUE(eventually([&] { return fired.load() >= 3; }));
    EXPECT_TRUE(t.shutdown());
    EXPECT_FALSE(t);
    const int at_shutdown = fired.load();
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(fired.load(), at_shutdown);
    EXPECT_FALSE(t.shutdown());  // already shut
    EXPECT_THROW((void)s.add_timer(0ms, -1ms, [] {}), mailroom::usage_error);
}

TEST(session, inbox_delivers_by_value_by_const_ref_and_move_only) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> sum{0}, refs{0}, owned{0};
    auto a = s.add_inbox<ping>([&](ping p) { sum.fetch_add(p.n); });
    auto b = s.add_inbox<ping>([&](const ping& p) { refs.fetch_add(p.n); });
    auto c = s.add_inbox<std::unique_ptr<int>>([&](std::unique_ptr<int>&& p) { owned.fetch_add(*p); });
    for (int i = 1; i <= 10; ++i) {
        mailroom::send<ping>(a.address(), ping{i});
        mailroom::send<ping>(b.address(), ping{i});
        mailroom::send(c.address(), std::make_unique<int>(i));
    }
    mailroom::send<int>(a.address(), 5);  // not its type: ignored
    ASSERT_TRUE(eventually([&] { return sum.load() == 55 && refs.load() == 55 && owned.load() == 55; }));
    EXPECT_EQ(a.address().kind(), mailroom::mbox_kind::direct);
    EXPECT_NE(a.address().name().find("inbox"), std::string::npos);
    // A delivery is counted once its callback returned: the last one may not be yet.
    EXPECT_TRUE(eventually([&] { return env.stats().messages_delivered >= 30; }));
    auto st = mailroom::test::all_stats_of(env);
    EXPECT_EQ(st.messages_ignored, 1u);
    EXPECT_EQ(st.messages_delivered, 30u);
}

// A message or a posted callable aligned beyond what the block pool gives (a cache-line aligned
// struct) gets its alignment: each lives in its own block, so a misaligned one shows in a few.
struct alignas(64) wide {
    int n = 0;
};

TEST(session, over_aligned_messages_and_posted_calls_keep_their_alignment) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> got{0}, misaligned{0};
    auto in = s.add_inbox<wide>([&](const wide& w) {
        if (reinterpret_cast<std::uintptr_t>(&w) % alignof(wide) != 0) misaligned.fetch_add(1);
        got.fetch_add(w.n);
    });
    constexpr int rounds = 32;
    for (int i = 1; i <= rounds; ++i) {
        mailroom::send<wide>(in.address(), wide{i});
        wide captured{i};
        ASSERT_TRUE(s.post([&, captured] {
            if (reinterpret_cast<std::uintptr_t>(&captured) % alignof(wide) != 0) misaligned.fetch_add(1);
            got.fetch_add(captured.n);
        }));
    }
    ASSERT_TRUE(eventually([&] { return got.load() == rounds * (rounds + 1); }));
    EXPECT_EQ(misaligned.load(), 0);
}

TEST(session, delayed_send_to_an_inbox_respects_its_timer) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> got{0};
    auto in = s.add_inbox<ping>([&](const ping&) { got.fetch_add(1); });
    auto t = mailroom::send_delayed<ping>(in.address(), 1ms, ping{1});
    ASSERT_TRUE(eventually([&] { return got.load() == 1; }));
    auto cancelled = mailroom::send_delayed<ping>(in.address(), 10s, ping{2});
    cancelled.cancel();
    EXPECT_EQ(got.load(), 1);
}

// Guarantee 2, the foreign-thread half: shutdown() must not return while the callback runs.
TEST(session, shutdown_from_a_foreign_thread_waits_for_the_running_callback) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<bool> entered{false}, release{false}, finished{false};
    auto in = s.add_inbox<ping>([&](const ping&) {
        entered = true;
        block_until(release);
        finished = true;
    });
    mailroom::send<ping>(in.address(), ping{});
    ASSERT_TRUE(wait_set(entered));
    expect_close_waits_for_callback([&] { in.shutdown(); }, release, finished);
}

// The same for a whole session: destroy() waits for a running posted call.
TEST(session, destroy_from_a_foreign_thread_waits_for_the_running_callback) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<bool> entered{false}, release{false}, finished{false};
    s.post([&] {
        entered = true;
        block_until(release);
        finished = true;
    });
    ASSERT_TRUE(wait_set(entered));
    expect_close_waits_for_callback([&] { s.destroy(); }, release, finished);
}

// Many rounds of a shutdown racing a firing timer: no callback may start after shutdown()
// returned, even one whose delivery was already queued.
TEST(session, shutdown_racing_a_firing_timer_never_lets_a_callback_through) {
    mailroom::environment env;
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mailroom::session s(env, {.bind = pool.bind()});
    std::atomic<int> violations{0}, fired{0};
    std::mt19937 rng(7);
    const long n = mailroom::test::rounds(300);
    for (long round = 0; round < n; ++round) {
        auto shut = std::make_shared<std::atomic<bool>>(false);
        auto fired_here = std::make_shared<std::atomic<int>>(0);
        auto t = s.add_timer(0ms, 1ms, [shut, fired_here, &violations, &fired] {
            if (shut->load()) violations.fetch_add(1);
            fired_here->fetch_add(1);
            fired.fetch_add(1);
        });
        // Some deliveries queued behind a slow callback make the race likelier.
        for (int i = 0; i < 3; ++i) s.post([] { std::this_thread::sleep_for(std::chrono::microseconds(20)); });
        // The shutdown races a timer that is firing: wait (bounded, however loaded the machine)
        // for its first callback, then for a random part of its period or a few periods.
        ASSERT_TRUE(eventually([&] { return fired_here->load() > 0; }, 10s)) << "round " << round;
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1500));
        t.shutdown();
        shut->store(true);
    }
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(violations.load(), 0);
    EXPECT_GE(fired.load(), n);
}

TEST(session, shutdown_from_its_own_callback_does_not_wait_and_stops_further_callbacks) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> calls{0};
    std::atomic<bool> returned{false};
    mailroom::event_handle t;
    // Deliveries queue up behind the first callback; none of them may run after it shut down.
    std::atomic<bool> go{false};
    s.post([&] { block_until(go); });
    t = s.add_timer(0ms, 1ms, [&] {
        calls.fetch_add(1);
        t.shutdown();
        returned = true;
    });
    // Let several periods come up behind the blocked call (one fire queued, the rest skipped).
    ASSERT_TRUE(eventually([&] { return env.stats().timers_fired + env.stats().timers_skipped >= 3; }));
    go = true;
    ASSERT_TRUE(wait_set(returned));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_GT(env.stats().timers_skipped, 0u);
}

TEST(session, shutdown_of_another_object_of_the_same_session_does_not_wait) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> b_calls{0};
    std::atomic<bool> done{false};
    auto b = s.add_timer(0ms, 1ms, [&] { b_calls.fetch_add(1); });
    ASSERT_TRUE(eventually([&] { return b_calls.load() > 0; }));
    int b_at = 0;
    auto a = s.add_inbox<ping>([&](const ping&) {
        b.shutdown();
        b_at = b_calls.load();
        done = true;
    });
    mailroom::send<ping>(a.address(), ping{});
    ASSERT_TRUE(wait_set(done));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(b_calls.load(), b_at);
}

TEST(session, destroy_from_its_own_callback) {
    mailroom::environment env;
    mailroom::session s(env);
    auto tracker = std::make_shared<int>(0);
    std::weak_ptr<int> watch = tracker;
    std::atomic<int> calls{0};
    std::atomic<bool> done{false};
    mailroom::inbox_handle in;
    in = s.add_inbox<ping>([&, tracker](const ping&) {
        calls.fetch_add(1);
        in.destroy();
        EXPECT_EQ(*tracker, 0);  // what the callback captured lives until it returned
        done = true;
    });
    tracker.reset();
    for (int i = 0; i < 5; ++i) mailroom::send<ping>(in.address(), ping{});
    ASSERT_TRUE(wait_set(done));
    // The callback (with what it captured) is destroyed on the context, afterwards; the object
    // is counted destroyed after that.
    ASSERT_TRUE(eventually([&] { return watch.expired(); }));
    EXPECT_TRUE(eventually([&] { return session_stats_of(env).event_objects_destroyed >= 1; }));
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(calls.load(), 1);
    auto st = mailroom::test::all_stats_of(env);
    EXPECT_EQ(st.event_objects_created, 1u);
    EXPECT_EQ(st.event_objects_destroyed, 1u);
}

TEST(session, destroy_from_another_sessions_callback) {
    mailroom::environment env;
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mailroom::session x(env, {.bind = pool.bind()});
    mailroom::session y(env, {.bind = pool.bind()});
    std::atomic<bool> shut{false};
    std::atomic<int> violations{0}, calls{0};
    auto t = y.add_timer(0ms, 1ms, [&] {
        if (shut.load()) violations.fetch_add(1);
        calls.fetch_add(1);
    });
    ASSERT_TRUE(eventually([&] { return calls.load() > 2; }));
    std::atomic<bool> done{false};
    x.post([&] {
        t.destroy();
        shut = true;
        done = true;
    });
    ASSERT_TRUE(wait_set(done));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(violations.load(), 0);
    // And a whole session from another session's callback.
    done = false;
    x.post([&] {
        y.destroy();
        done = true;
    });
    ASSERT_TRUE(wait_set(done));
    EXPECT_FALSE(y);
}

// A session is destroyed on one thread while a callback of another session shuts one of its
// objects down: neither waits for the other forever, and nothing runs afterwards.
TEST(session, destroying_a_session_while_another_session_shuts_one_of_its_objects) {
    mailroom::environment env;
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    const long n = mailroom::test::rounds(200);
    std::atomic<int> violations{0};
    mailroom::session x(env, {.bind = pool.bind()});
    for (long round = 0; round < n; ++round) {
        auto y = std::make_unique<mailroom::session>(env, mailroom::session_options{.bind = pool.bind()});
        auto dead = std::make_shared<std::atomic<bool>>(false);
        auto t = std::make_shared<mailroom::event_handle>(y->add_timer(0ms, 1ms, [dead, &violations] {
            if (dead->load()) violations.fetch_add(1);
        }));
        std::atomic<bool> done{false};
        x.post([&, t] {
            t->shutdown();
            done = true;
        });
        y->destroy();
        dead->store(true);
        ASSERT_TRUE(wait_set(done));
        t->destroy();  // its session is gone: a no-op
    }
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(violations.load(), 0);
    env.stop();
    ASSERT_TRUE(join_within(env));
    auto st = mailroom::test::all_stats_of(env);
    EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
}

TEST(session, a_handle_going_out_of_scope_destroys_its_object) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> fired{0};
    // Due in 300 ms: at 20 ms, a test thread preempted that long between arming the timer and
    // leaving the scope let it fire first.
    const auto armed = std::chrono::steady_clock::now();
    { auto t = s.add_timer(300ms, 0ms, [&] { fired.fetch_add(1); }); }
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).event_objects_destroyed == 1; }));
    std::this_thread::sleep_until(armed + 320ms);  // past its due time
    EXPECT_EQ(fired.load(), 0);
}

TEST(session, detach_keeps_an_object_alive_until_its_session_dies) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<int> fired{0};
    s.add_timer(0ms, 1ms, [&] { fired.fetch_add(1); }).detach();
    const int before = fired.load();
    ASSERT_TRUE(eventually([&] { return fired.load() > before + 3; }));
    EXPECT_EQ(session_stats_of(env).event_objects_destroyed, 0u);
    s.destroy();
    const int at_destroy = fired.load();
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(fired.load(), at_destroy);
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).event_objects_destroyed == 1; }));
}

TEST(session, a_detached_session_lives_until_the_environment_stops) {
    std::atomic<int> fired{0};
    mailroom::environment env;
    {
        mailroom::session s(env, {.name = "detached"});
        s.add_timer(0ms, 1ms, [&] { fired.fetch_add(1); }).detach();
        s.detach();
        EXPECT_FALSE(s);
    }
    ASSERT_TRUE(eventually([&] { return fired.load() > 3; }));
    env.stop();
    ASSERT_TRUE(join_within(env));
    const int at_join = fired.load();
    auto st = mailroom::test::all_stats_of(env);
    EXPECT_EQ(st.sessions_created, 1u);
    EXPECT_EQ(st.sessions_destroyed, 1u);
    EXPECT_EQ(st.event_objects_destroyed, 1u);
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(fired.load(), at_join);
}

TEST(session, operations_on_destroyed_objects_are_no_ops_or_typed_errors) {
    mailroom::environment env;
    mailroom::session s(env);
    auto in = s.add_inbox<ping>([](const ping&) {});
    mailroom::mbox addr = in.address();
    in.destroy();
    EXPECT_FALSE(in);
    EXPECT_FALSE(in.shutdown());
    in.destroy();
    in.detach();
    EXPECT_NO_THROW(mailroom::send<ping>(addr, ping{}));  // counted lost, like a gone agent
    EXPECT_EQ(env.stats().messages_lost, 1u);

    auto t = s.add_timer(1h, 0ms, [] {});
    s.destroy();
    EXPECT_FALSE(s);
    EXPECT_FALSE(t);  // destroyed with its session
    EXPECT_FALSE(t.shutdown());
    t.destroy();
    EXPECT_FALSE(s.post([] {}));
    EXPECT_THROW((void)s.add_timer(0ms, 0ms, [] {}), mailroom::session_destroyed_error);
    EXPECT_THROW((void)s.add_inbox<ping>([](ping) {}), mailroom::session_destroyed_error);
    s.destroy();
    EXPECT_EQ(s.name(), "");

    mailroom::event_handle empty;
    EXPECT_FALSE(empty);
    EXPECT_FALSE(empty.shutdown());
    empty.destroy();
}

TEST(session, adding_to_a_session_destroyed_by_its_environment_raises_session_destroyed_error) {
    mailroom::environment env;
    mailroom::session s(env, {.name = "late"});
    env.stop();
    ASSERT_TRUE(join_within(env));
    EXPECT_FALSE(s);
    try {
        (void)s.add_timer(0ms, 0ms, [] {});
        FAIL() << "no error";
    } catch (const mailroom::session_destroyed_error& e) {
        EXPECT_NE(std::string(e.what()).find("'late'"), std::string::npos);
    }
    EXPECT_THROW(mailroom::session{env}, mailroom::environment_stopped_error);
}

TEST(session, environment_destruction_with_producers_sending_to_inboxes) {
    auto env = std::make_unique<mailroom::environment>();
    std::atomic<long> handled{0};
    mailroom::session s(*env);
    auto in = s.add_inbox<ping>([&](const ping&) { handled.fetch_add(1); });
    mailroom::mbox addr = in.address();
    in.detach();
    s.detach();
    std::atomic<int> stopped{0};
    std::vector<std::thread> producers;
    for (int t = 0; t < 2; ++t)
        producers.emplace_back([&, addr] {
            for (long i = 0; i < 10'000'000; ++i) {
                try {
                    mailroom::send<ping>(addr, ping{});
                } catch (const mailroom::environment_stopped_error&) {
                    stopped.fetch_add(1);
                    return;
                }
                if (i % 64 == 0) std::this_thread::yield();
            }
        });
    ASSERT_TRUE(eventually([&] { return handled.load() > 100; }));
    env->stop();
    ASSERT_TRUE(join_within(*env));
    // The producers end on environment_stopped_error; one may still be between counting a
    // message sent and counting it lost, so the books are read once they are gone.
    for (auto& p : producers) p.join();
    auto st = mailroom::test::all_stats_of(*env);
    env.reset();
    EXPECT_EQ(stopped.load(), 2);
    EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_EQ(st.messages_sent,
              st.messages_delivered + st.messages_lost + st.messages_ignored + st.messages_discarded +
                  st.messages_cancelled + st.messages_dropped);
}

TEST(session, environment_destruction_destroys_remaining_sessions_and_objects) {
    std::atomic<int> captured_alive{0};
    struct capture {
        std::atomic<int>* alive;
        explicit capture(std::atomic<int>* a) : alive(a) { alive->fetch_add(1); }
        capture(const capture& o) : alive(o.alive) { alive->fetch_add(1); }
        ~capture() { alive->fetch_sub(1); }
    };
    mailroom::test::all_stats st;
    {
        mailroom::environment env;
        auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(env, "own");
        std::vector<mailroom::session> keep;
        for (int i = 0; i < 6; ++i) {
            mailroom::binder b = i % 3 == 0 ? pool.bind() : i % 3 == 1 ? own.bind() : mailroom::binder();
            mailroom::session s(env, {.bind = b});
            capture c(&captured_alive);
            s.add_timer(0ms, 1ms, [c] {}).detach();
            s.add_inbox<ping>([c](const ping&) {}).detach();
            s.post([c] {});
            if (i % 2) keep.push_back(std::move(s));
            else s.detach();
        }
        env.stop();
        ASSERT_TRUE(join_within(env));
        st = mailroom::test::all_stats_of(env);
        EXPECT_EQ(captured_alive.load(), 0);
        EXPECT_FALSE(keep.front());
    }
    EXPECT_EQ(st.sessions_created, 6u);
    EXPECT_EQ(st.sessions_destroyed, 6u);
    EXPECT_EQ(st.event_objects_created, 12u);
    EXPECT_EQ(st.event_objects_destroyed, 12u);
    EXPECT_EQ(mailroom::test::threads_named("own"), 0);
}

TEST(session, sessions_are_destroyed_after_cooperations_before_dispatchers) {
    mailroom::environment env;
    mailroom::session s(env);
    std::atomic<bool> session_alive_in_finish{false};
    std::atomic<int> ran_in_finish{0};
    mailroom::test::add_probe(
        env, [](mailroom::test::probe&) {}, {}, {},
        [&](mailroom::test::probe&) {
            session_alive_in_finish = static_cast<bool>(s);
            // A session is still usable while cooperations deregister.
            s.post([&] { ran_in_finish.fetch_add(1); });
        });
    env.stop();
    ASSERT_TRUE(join_within(env));
    EXPECT_TRUE(session_alive_in_finish.load());
    EXPECT_EQ(ran_in_finish.load() + session_stats_of(env).callbacks_refused, 1u);
}

TEST(session, a_throwing_callback_is_logged_and_counted) {
    std::atomic<int> logged{0};
    mailroom::environment env({.log = [&](std::string_view) { logged.fetch_add(1); }});
    mailroom::session s(env, {.name = "thrower"});
    std::atomic<bool> after{false};
    s.post([] { throw std::runtime_error("boom"); });
    s.post([&] { after = true; });
    ASSERT_TRUE(wait_set(after));
    EXPECT_EQ(logged.load(), 1);
    EXPECT_EQ(env.stats().handler_exceptions, 1u);
}

TEST(session, binding_to_a_shut_down_dispatcher_raises_binding_error) {
    mailroom::environment env;
    auto d = mailroom::one_thread::make_dispatcher(env, "gone");
    d.shutdown();
    EXPECT_THROW(mailroom::session(env, {.bind = d.bind()}), mailroom::binding_error);
    EXPECT_EQ(session_stats_of(env).sessions_created, 0u);
}

// The constructor checks the environment, then binds: the teardown may shut the dispatcher down
// in between. Whatever the moment, the creator learns that the environment stopped (not that a
// dispatcher it never named refused it).
TEST(session, creating_a_session_while_the_environment_stops_raises_environment_stopped_error) {
    const long rounds = mailroom::test::rounds(400);
    const auto limit = std::chrono::steady_clock::now() + 20s;
    long stopped_errors = 0, other_errors = 0;
    for (long round = 0; round < rounds && std::chrono::steady_clock::now() < limit; ++round) {
        mailroom::environment env;
        auto pool = mailroom::one_thread::make_dispatcher(env, "pool");
        std::atomic<long> created{0};
        std::atomic<bool> done{false};
        std::string other;
        std::thread creator([&] {
            // Bounded: the environment stops long before, and the loop ends at the first error.
            for (long i = 0; i < 10'000'000; ++i) {
                try {
                    mailroom::session s(env, {.bind = i % 2 ? pool.bind() : mailroom::binder{}});
                    created.fetch_add(1);
                } catch (const mailroom::environment_stopped_error& e) {
                    if (std::string_view(e.what()).find("session") == std::string_view::npos ||
                        std::string_view(e.what()).find(env.name()) == std::string_view::npos)
                        other = std::string("environment_stopped_error not naming both: ") + e.what();
                    break;
                } catch (const std::exception& e) {
                    other = typeid(e).name() + std::string(": ") + e.what();
                    break;
                }
            }
            done = true;
        });
        eventually([&] { return created.load() > round % 7; }, 5s);
        env.stop();
        const bool joined = join_within(env);
        creator.join();
        ASSERT_TRUE(joined);
        ASSERT_TRUE(done.load());
        if (other.empty())
            ++stopped_errors;
        else {
            ++other_errors;
            ADD_FAILURE() << "round " << round << ": " << other;
            break;
        }
        const auto st = mailroom::test::all_stats_of(env);
        EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    }
    EXPECT_EQ(other_errors, 0);
    EXPECT_GT(stopped_errors, 0);
}


// ---- subscriptions: a session's event object on an MPMC mbox ----

struct quote {
    int n = 0;
};

TEST(session, subscription_receives_the_shared_instance_or_a_copy) {
    mailroom::environment env;
    mailroom::session a(env), b(env), c(env);
    auto topic = mailroom::make_named_mbox(env, "quotes");
    std::atomic<const quote*> seen_a{nullptr}, seen_b{nullptr};
    std::atomic<int> copies{0};
    auto sa = a.subscribe<quote>(topic, [&](const quote& q) { seen_a = &q; });
    auto sb = b.subscribe<quote>(topic, [&](const quote& q) { seen_b = &q; });
    auto sc = c.subscribe<quote>(topic, [&](quote q) { copies.fetch_add(q.n); });
    mailroom::send<quote>(topic, quote{5});
    ASSERT_TRUE(eventually([&] { return seen_a.load() && seen_b.load() && copies.load() == 5; }));
    EXPECT_EQ(seen_a.load(), seen_b.load()) << "a fanned-out message is one shared instance";
    EXPECT_TRUE(sa);
    // An anonymous MPMC mbox works the same; a message of another type does not reach it.
    auto anon = mailroom::make_mpmc_mbox(env);
    std::atomic<int> got{0};
    auto sd = a.subscribe<quote>(anon, [&](const quote& q) { got.fetch_add(q.n); });
    mailroom::send<ping>(anon, ping{});
    mailroom::send<quote>(anon, quote{3});
    ASSERT_TRUE(eventually([&] { return got.load() == 3; }));
    EXPECT_EQ(session_stats_of(env).event_objects_created, 4u);
}

TEST(session, subscription_misuse_raises_typed_errors) {
    mailroom::environment env, other;
    mailroom::session s(env, {.name = "subs"});
    auto agent_mbox = mailroom::test::add_probe(env, [](mailroom::test::probe&) {});
    EXPECT_THROW((void)s.subscribe<quote>(agent_mbox, [](const quote&) {}), mailroom::subscription_error);
    auto in = s.add_inbox<quote>([](const quote&) {});
    EXPECT_THROW((void)s.subscribe<quote>(in.address(), [](const quote&) {}), mailroom::subscription_error);
    auto foreign = mailroom::make_mpmc_mbox(other);
    try {
        (void)s.subscribe<quote>(foreign, [](const quote&) {});
        FAIL() << "no error";
    } catch (const mailroom::subscription_error& e) {
        EXPECT_NE(std::string(e.what()).find("'subs'"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("another environment"), std::string::npos);
    }
    EXPECT_THROW((void)s.subscribe<quote>(mailroom::mbox{}, [](const quote&) {}), mailroom::subscription_error);
    auto topic = mailroom::make_mpmc_mbox(env);
    mailroom::session dead(env, {.name = "dead"});
    dead.destroy();
    EXPECT_THROW((void)dead.subscribe<quote>(topic, [](const quote&) {}), mailroom::session_destroyed_error);
    // A session destroyed through another handle (here: the environment's teardown).
    mailroom::session late(env, {.name = "late"});
    env.stop();
    ASSERT_TRUE(join_within(env));
    try {
        (void)late.subscribe<quote>(topic, [](const quote&) {});
        FAIL() << "no error";
    } catch (const mailroom::session_destroyed_error& e) {
        EXPECT_NE(std::string(e.what()).find("'late'"), std::string::npos);
    }
}

// Guarantee 2 for subscriptions: shutdown() on a foreign thread waits for the running callback.
TEST(session, subscription_shutdown_from_a_foreign_thread_waits_for_the_running_callback) {
    mailroom::environment env;
    mailroom::session s(env);
    auto topic = mailroom::make_mpmc_mbox(env);
    std::atomic<bool> entered{false}, release{false}, finished{false};
    std::atomic<int> calls{0};
    auto sub = s.subscribe<quote>(topic, [&](const quote&) {
        calls.fetch_add(1);
        entered = true;
        block_until(release);
        finished = true;
    });
    // The first one blocks; the rest are queued behind it and must be refused.
    for (int i = 0; i < 5; ++i) mailroom::send<quote>(topic, quote{i});
    ASSERT_TRUE(wait_set(entered));
    expect_close_waits_for_callback([&] { sub.shutdown(); }, release, finished);
    EXPECT_FALSE(sub);
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).callbacks_refused >= 4; }));
    EXPECT_EQ(calls.load(), 1);
    // Shut down, it left the topic: a publication now reaches nobody (not even counted sent).
    const auto sent = env.stats().messages_sent;
    mailroom::send<quote>(topic, quote{});
    EXPECT_EQ(env.stats().messages_sent, sent);
}

// Many rounds of a shutdown racing publications from another thread: no callback may start
// after shutdown() returned, not even for a publication already queued or in a snapshot.
TEST(session, subscription_shutdown_racing_publications_never_lets_a_callback_through) {
    auto env = std::make_unique<mailroom::environment>();
    auto pool = mailroom::thread_pool::make_dispatcher(*env, "pool", {.threads = 2});
    mailroom::session s(*env, {.bind = pool.bind()});
    auto topic = mailroom::make_mpmc_mbox(*env);
    std::atomic<int> violations{0}, called{0};
    std::atomic<bool> stop{false};
    std::thread publisher([&] {
        long i = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            mailroom::send<quote>(topic, quote{1});
            if (++i % 16 == 0) std::this_thread::yield();
        }
    });
    std::mt19937 rng(11);
    const long n = mailroom::test::rounds(300);
    for (long round = 0; round < n; ++round) {
        auto shut = std::make_shared<std::atomic<bool>>(false);
        auto sub = s.subscribe<quote>(topic, [shut, &violations, &called](const quote&) {
            if (shut->load()) violations.fetch_add(1);
            called.fetch_add(1);
        });
        // A slow call now and then lets publications queue up behind it.
        if (round % 3 == 0) s.post([] { std::this_thread::sleep_for(std::chrono::microseconds(50)); });
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1000));
        // The first round waits until the publisher is up, so that the race does happen.
        if (round == 0) {
            EXPECT_TRUE(eventually([&] { return called.load() > 0; }));
        }
        if (round % 2 == 0)
            sub.shutdown();
        else
            sub.destroy();
        shut->store(true);
    }
    std::this_thread::sleep_for(10ms);
    stop = true;
    publisher.join();
    EXPECT_EQ(violations.load(), 0);
    EXPECT_GT(called.load(), 0);
    s.destroy();
    env->stop();
    ASSERT_TRUE(join_within(*env));
    auto st = mailroom::test::all_stats_of(*env);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_EQ(st.messages_sent, st.messages_delivered + st.messages_lost + st.messages_ignored +
                                    st.messages_discarded + st.messages_cancelled + st.messages_dropped);
}

TEST(session, subscription_shutdown_and_destroy_from_its_own_callback) {
    mailroom::environment env;
    mailroom::session s(env);
    auto topic = mailroom::make_mpmc_mbox(env);
    std::atomic<bool> go{false};
    // shutdown() inside its own callback: does not wait, and the publications queued behind it
    // are refused.
    std::atomic<int> calls{0};
    std::atomic<bool> returned{false};
    mailroom::event_handle sub;
    s.post([&] { block_until(go); });
    sub = s.subscribe<quote>(topic, [&](const quote&) {
        calls.fetch_add(1);
        sub.shutdown();
        returned = true;
    });
    for (int i = 0; i < 4; ++i) mailroom::send<quote>(topic, quote{i});
    go = true;
    ASSERT_TRUE(wait_set(returned));
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).callbacks_refused >= 3; }));
    EXPECT_EQ(calls.load(), 1);
    // A refused delivery is counted refused, then ignored: the third may sit between the two.
    EXPECT_TRUE(eventually([&] { return env.stats().messages_ignored >= 3; })) << env.stats().messages_ignored;
    // destroy() inside its own callback: what the callback captured lives until it returned,
    // and is destroyed afterwards.
    auto tracker = std::make_shared<int>(0);
    std::weak_ptr<int> watch = tracker;
    std::atomic<int> calls2{0};
    std::atomic<bool> done{false};
    mailroom::event_handle sub2;
    sub2 = s.subscribe<quote>(topic, [&, tracker](const quote&) {
        calls2.fetch_add(1);
        sub2.destroy();
        EXPECT_EQ(*tracker, 0);
        done = true;
    });
    tracker.reset();
    mailroom::send<quote>(topic, quote{});
    mailroom::send<quote>(topic, quote{});
    ASSERT_TRUE(wait_set(done));
    ASSERT_TRUE(eventually([&] { return watch.expired(); }));
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(calls2.load(), 1);
    EXPECT_FALSE(sub2);
}

TEST(session, session_destroy_removes_its_subscriptions_from_the_mbox) {
    mailroom::environment env;
    auto topic = mailroom::make_mpmc_mbox(env);
    auto tracker = std::make_shared<int>(0);
    std::weak_ptr<int> watch = tracker;
    std::atomic<int> calls{0};
    {
        mailroom::session s(env);
        auto sub = s.subscribe<quote>(topic, [&, tracker](const quote&) { calls.fetch_add(1); });
        sub.detach();  // owned by the session only
        (void)s.subscribe<ping>(topic, [tracker](const ping&) {}).detach();
        tracker.reset();
        mailroom::send<quote>(topic, quote{});
        ASSERT_TRUE(eventually([&] { return calls.load() == 1; }));
        s.destroy();
    }
    ASSERT_TRUE(eventually([&] { return watch.expired(); })) << "the callbacks were not destroyed";
    const auto before = env.stats();
    mailroom::send<quote>(topic, quote{});
    mailroom::send<ping>(topic, ping{});
    const auto after = env.stats();
    EXPECT_EQ(after.messages_sent, before.messages_sent) << "the mbox still lists the destroyed subscriptions";
    EXPECT_EQ(calls.load(), 1);
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).event_objects_destroyed == 2; }));
    EXPECT_EQ(session_stats_of(env).event_objects_created, 2u);
}

// Guarantee 4 with publishers on foreign threads: the teardown destroys the subscriptions,
// and the publishers (from old snapshots included) never touch freed memory.
TEST(session, environment_destruction_with_publishers_on_foreign_threads) {
    auto env = std::make_unique<mailroom::environment>();
    auto pool = mailroom::thread_pool::make_dispatcher(*env, "pool", {.threads = 2});
    std::atomic<long> handled{0};
    mailroom::mbox topics[2] = {mailroom::make_named_mbox(*env, "quotes"), mailroom::make_mpmc_mbox(*env)};
    for (int i = 0; i < 4; ++i) {
        mailroom::session s(*env, {.bind = i % 2 ? pool.bind() : mailroom::binder{}});
        for (auto& t : topics) s.subscribe<quote>(t, [&](const quote&) { handled.fetch_add(1); }).detach();
        s.detach();
    }
    // A session that comes and goes while the publishers run. What the docs promise once the
    // environment stops: creating a session raises environment_stopped_error, subscribing with
    // a session the teardown destroyed raises session_destroyed_error. Anything else fails.
    std::atomic<bool> churn_stop{false};
    std::string churn_error;
    std::thread churn([&] {
        while (!churn_stop.load()) {
            try {
                mailroom::session s(*env);
                auto sub = s.subscribe<quote>(topics[0], [&](quote) { handled.fetch_add(1); });
                std::this_thread::sleep_for(std::chrono::microseconds(200));
            } catch (const mailroom::environment_stopped_error&) {
                return;
            } catch (const mailroom::session_destroyed_error&) {
                return;
            } catch (const std::exception& e) {
                churn_error = typeid(e).name() + std::string(": ") + e.what();
                return;
            }
        }
    });
    std::atomic<int> stopped{0};
    std::vector<std::thread> publishers;
    for (int t = 0; t < 2; ++t)
        publishers.emplace_back([&, t] {
            mailroom::mbox to = topics[t];
            for (long i = 0; i < 10'000'000; ++i) {
                try {
                    mailroom::send<quote>(to, quote{1});
                } catch (const mailroom::environment_stopped_error&) {
                    stopped.fetch_add(1);
                    return;
                }
                if (i % 64 == 0) std::this_thread::yield();
            }
        });
    EXPECT_TRUE(eventually([&] { return handled.load() > 1000; }));
    env->stop();
    const bool joined = join_within(*env);
    churn_stop = true;
    churn.join();
    for (auto& p : publishers) p.join();
    // After the publishers are gone: one in the middle of a fan-out counts it when it is done.
    auto st = mailroom::test::all_stats_of(*env);
    env.reset();
    ASSERT_TRUE(joined);
    EXPECT_EQ(churn_error, "") << "the churn thread got an error the docs do not promise";
    EXPECT_EQ(stopped.load(), 2);
    EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_EQ(st.messages_sent, st.messages_delivered + st.messages_lost + st.messages_ignored +
                                    st.messages_discarded + st.messages_cancelled + st.messages_dropped);
}

// The session layer's counters are its own (environment_stats counts messages and timers
// only): session_stats_of reads them, from any thread, during the run and after the teardown.
TEST(session, session_stats_of_counts_the_sessions_event_objects_and_callbacks_of_its_own_environment) {
    mailroom::environment env;
    mailroom::environment other;
    EXPECT_EQ(session_stats_of(env).sessions_created, 0u) << "no session was ever made";
    mailroom::session s(env, {.name = "counted"});
    std::atomic<bool> fired{false}, posted{false};
    auto t = s.add_timer(0ms, 0ms, [&] { fired = true; });
    ASSERT_TRUE(wait_set(fired));
    ASSERT_TRUE(s.post([&] { posted = true; }));
    ASSERT_TRUE(wait_set(posted));
    ASSERT_TRUE(eventually([&] { return session_stats_of(env).callbacks_run == 2; }))
        << session_stats_of(env).callbacks_run;
    mailroom::session_stats st = session_stats_of(env);
    EXPECT_EQ(st.sessions_created, 1u);
    EXPECT_EQ(st.sessions_destroyed, 0u);
    EXPECT_EQ(st.event_objects_created, 1u);
    EXPECT_EQ(st.event_objects_destroyed, 0u);
    EXPECT_EQ(st.callbacks_refused, 0u);
    EXPECT_EQ(session_stats_of(other).sessions_created, 0u) << "counters are per environment";
    t.destroy();
    s.destroy();
    ASSERT_TRUE(eventually([&] {
        const auto now = session_stats_of(env);
        return now.sessions_destroyed == 1 && now.event_objects_destroyed == 1;
    }));
    env.stop();
    ASSERT_TRUE(join_within(env));
    st = session_stats_of(env);
    EXPECT_EQ(st.sessions_created, 1u);
    EXPECT_EQ(st.sessions_destroyed, 1u);
    EXPECT_EQ(st.callbacks_run, 2u);
    EXPECT_EQ(st.callbacks_discarded, 0u);
}

// The dispatch layer knows no sessions: the session layer names its kind of context, and a
// busy worker's stats carry that name and the session's id.
TEST(session, worker_stats_name_the_session_a_busy_worker_runs) {
    mailroom::environment env;
    mailroom::session s(env, {.name = "busy"});
    std::atomic<bool> started{false}, release{false};
    ASSERT_TRUE(s.post([&] {
        started = true;
        wait_set(release);  // bounded: 10 s at most
    }));
    ASSERT_TRUE(wait_set(started));
    const mailroom::dispatcher_stats st = env.default_dispatcher().stats();
    ASSERT_EQ(st.workers.size(), 1u);
    EXPECT_TRUE(st.workers[0].busy);
    EXPECT_EQ(st.workers[0].running_kind, "session");
    EXPECT_NE(st.workers[0].running_id, 0u);
    release = true;
    ASSERT_TRUE(eventually([&] { return !env.default_dispatcher().stats().workers[0].busy; }));
    EXPECT_EQ(env.default_dispatcher().stats().workers[0].running_kind, "");
}

}  // namespace
