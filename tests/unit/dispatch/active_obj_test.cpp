#include <mailroom/dispatch/active_obj.hpp>

#include <mailroom/session/session.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include "dispatcher_kinds.hpp"
#include "test_support.hpp"

#include <optional>

namespace {

using namespace mailroom;

static_assert(test::binds_plainly<active_obj::handle>);
static_assert(!test::binds_to_a_group<active_obj::handle> && !test::binds_in_a_fifo_order<active_obj::handle>);

TEST(active_obj, each_context_bound_through_its_handle_runs_on_a_thread_of_its_own) {
    environment env;
    active_obj::handle own = active_obj::make_dispatcher(env, "own");
    EXPECT_EQ(own.kind(), "active_obj");
    EXPECT_EQ(own.stats().threads, 0u);  // no thread before a context is bound
    std::optional<session> a(std::in_place, env, session_options{.name = "a", .bind = own.bind()});
    session b(env, {.name = "b", .bind = own.bind()});
    auto ta = test::where_it_runs(*a);
    auto tb = test::where_it_runs(b);
    EXPECT_EQ(ta.name, "own");
    EXPECT_EQ(tb.name, "own");
    EXPECT_NE(ta.id, tb.id);
    EXPECT_EQ(own.stats().bound_contexts, 2u);
    a.reset();  // its thread goes with it
    EXPECT_TRUE(test::eventually([&] { return own.stats().bound_contexts == 1; }));
}

TEST(active_obj, found_by_name_it_casts_back_to_its_handle_and_not_to_another_kind) {
    environment env({.name = "casts"});
    auto own = active_obj::make_dispatcher(env, "own");
    EXPECT_TRUE(dispatcher_cast<active_obj::handle>(env.find_dispatcher("own")) == own);
    EXPECT_EQ(test::kind_error_of<thread_pool::handle>(env.find_dispatcher("own")),
              "dispatcher 'own' of environment 'casts' is active_obj, not thread_pool");
}

}  // namespace
