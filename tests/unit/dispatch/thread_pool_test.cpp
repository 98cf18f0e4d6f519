#include <mailroom/dispatch/thread_pool.hpp>

#include <mailroom/session/session.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/active_group.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include "dispatcher_kinds.hpp"

#include <string>

namespace {

using namespace mailroom;
using test::binds_in_a_fifo_order;
using test::binds_plainly;
using test::binds_to_a_group;

// Only a thread_pool handle binds in a FIFO order of its choosing (bind_fifo on another kind
// does not compile).
static_assert(binds_plainly<thread_pool::handle> && binds_in_a_fifo_order<thread_pool::handle>);
static_assert(!binds_to_a_group<thread_pool::handle>);
static_assert(!binds_in_a_fifo_order<one_thread::handle> && !binds_in_a_fifo_order<active_group::handle>);

TEST(thread_pool, contexts_bound_through_its_handle_run_on_its_workers) {
    environment env;
    thread_pool::handle pool =
        thread_pool::make_dispatcher(env, "pool", {.threads = 2, .order = thread_pool::fifo::agent});
    EXPECT_EQ(pool.kind(), "thread_pool");
    EXPECT_EQ(pool.stats().threads, 2u);
    session plain(env, {.name = "plain", .bind = pool.bind()});
    session per_agent(env, {.name = "per-agent", .bind = pool.bind_fifo(thread_pool::fifo::agent)});
    session per_coop(env, {.name = "per-coop", .bind = pool.bind_fifo(thread_pool::fifo::cooperation)});
    for (session* s : {&plain, &per_agent, &per_coop}) {
        const std::string seen = test::where_it_runs(*s).name;
        EXPECT_TRUE(seen == "pool#0" || seen == "pool#1") << s->name() << " ran on '" << seen << "'";
    }
    EXPECT_EQ(pool.stats().bound_contexts, 3u);
    EXPECT_THROW(thread_pool::handle().bind_fifo(thread_pool::fifo::agent), usage_error);
}

TEST(thread_pool, found_by_name_it_casts_back_to_its_handle_and_not_to_another_kind) {
    environment env({.name = "casts"});
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 1});
    auto back = dispatcher_cast<thread_pool::handle>(env.find_dispatcher("pool"));
    EXPECT_TRUE(back == pool);
    session s(env, {.name = "found", .bind = back.bind_fifo(thread_pool::fifo::agent)});
    EXPECT_EQ(test::where_it_runs(s).name, "pool#0");
    EXPECT_EQ(test::kind_error_of<one_thread::handle>(env.find_dispatcher("pool")),
              "dispatcher 'pool' of environment 'casts' is thread_pool, not one_thread");
}

}  // namespace
