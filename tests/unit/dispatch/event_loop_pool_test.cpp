#include <mailroom/dispatch/event_loop_pool.hpp>

#include <mailroom/core/error.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "dispatcher_kinds.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using test::binds_in_a_fifo_order;
using test::binds_plainly;
using test::binds_to_a_group;

static_assert(binds_plainly<event_loop_pool::handle>);
static_assert(!binds_to_a_group<event_loop_pool::handle> && !binds_in_a_fifo_order<event_loop_pool::handle>);

TEST(event_loop_pool, contexts_are_pinned_to_the_least_loaded_loop_and_run_there) {
    environment env({.name = "loops"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
    EXPECT_EQ(pool.kind(), "event_loop_pool");
    session a(env, {.name = "a", .bind = pool.bind()});
    session b(env, {.name = "b", .bind = pool.bind()});
    session c(env, {.name = "c", .bind = pool.bind()});
    auto ta = test::where_it_runs(a);
    auto tb = test::where_it_runs(b);
    auto tc = test::where_it_runs(c);
    EXPECT_EQ(ta.name, "ev/0");
    EXPECT_EQ(tb.name, "ev/1");
    EXPECT_EQ(tc.name, "ev/0");
    EXPECT_NE(ta.id, tb.id);
    EXPECT_EQ(ta.id, tc.id);
    // Pinned: the same loop every time.
    for (int i = 0; i < 20; ++i) EXPECT_EQ(test::where_it_runs(b).id, tb.id);
    auto st = pool.stats();
    EXPECT_EQ(st.threads, 2u);
    EXPECT_EQ(st.bound_contexts, 3u);
    ASSERT_EQ(st.workers.size(), 2u);
    // `handled` counts demands, not callbacks: a call posted to a session while its previous
    // demand still runs goes in that demand, and the last may still be finishing (counted as
    // it returns). Both loops ran some, and never more demands than the 23 calls.
    EXPECT_GE(st.workers[0].handled, 1u);
    EXPECT_GE(st.workers[1].handled, 1u);
    EXPECT_LE(st.workers[0].handled + st.workers[1].handled, 23u);
    auto loops = pool.loops();
    ASSERT_EQ(loops.size(), 2u);
    EXPECT_EQ(loops[0].contexts, 2u);
    EXPECT_EQ(loops[1].contexts, 1u);
    EXPECT_GT(loops[0].cycles + loops[1].cycles, 0u);
}

TEST(event_loop_pool, bind_loop_pins_to_the_named_loop_and_refuses_one_it_does_not_have) {
    environment env({.name = "loops"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
    session s(env, {.name = "s", .bind = pool.bind_loop(1)});
    EXPECT_EQ(test::where_it_runs(s).name, "ev/1");
    try {
        (void)pool.bind_loop(2);
        ADD_FAILURE() << "bind_loop(2) of a 2-loop pool did not raise";
    } catch (const binding_error& e) {
        EXPECT_NE(std::string(e.what()).find("'ev'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(test::kind_error_of<thread_pool::handle>(env.find_dispatcher("ev")),
              "dispatcher 'ev' of environment 'loops' is event_loop_pool, not thread_pool");
    EXPECT_TRUE(dispatcher_cast<event_loop_pool::handle>(env.find_dispatcher("ev")) == pool);
}

TEST(event_loop_pool, timers_of_a_context_bound_to_a_loop_fire_on_that_loop_thread) {
    environment env;
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
    session s(env, {.name = "s", .bind = pool.bind_loop(1)});
    const auto loop_thread = test::where_it_runs(s).id;
    std::promise<std::thread::id> fired;
    auto f = fired.get_future();
    auto t = s.add_timer(5ms, 0ns, [&] { fired.set_value(std::this_thread::get_id()); });
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "the timer did not fire within 10 s";
    EXPECT_EQ(f.get(), loop_thread);
}

TEST(event_loop_pool, a_loop_parked_in_epoll_is_woken_by_a_post_from_another_thread) {
    environment env;
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 1, .spin = 0ns});
    session s(env, {.name = "s", .bind = pool.bind()});
    std::atomic<int> ran{0};
    for (int i = 0; i < 50; ++i) {
        std::this_thread::sleep_for(200us);  // long enough for the loop to park again
        std::promise<void> done;
        auto f = done.get_future();
        s.post([&] {
            ran.fetch_add(1);
            done.set_value();
        });
        ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "post " << i << " was not run within 10 s";
    }
    EXPECT_EQ(ran.load(), 50);
    EXPECT_GT(pool.stats().workers[0].parks, 0u);
}

}  // namespace
