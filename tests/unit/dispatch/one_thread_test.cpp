#include <mailroom/dispatch/one_thread.hpp>

#include <mailroom/session/session.hpp>
#include <mailroom/dispatch/active_obj.hpp>
#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include "dispatcher_kinds.hpp"

#include <type_traits>
#include <utility>

namespace {

using namespace mailroom;
using test::binds_in_a_fifo_order;
using test::binds_plainly;
using test::binds_to_a_group;

// One way to bind: neither to a group nor in a FIFO order (those do not compile), and the
// generic handle has neither either.
static_assert(binds_plainly<one_thread::handle>);
static_assert(!binds_to_a_group<one_thread::handle> && !binds_in_a_fifo_order<one_thread::handle>);
static_assert(!binds_to_a_group<dispatcher> && !binds_in_a_fifo_order<dispatcher>);
static_assert(std::is_same_v<decltype(std::declval<environment&>().default_dispatcher()), one_thread::handle>);

TEST(one_thread, contexts_bound_through_its_handle_share_its_one_thread) {
    environment env;
    one_thread::handle solo = one_thread::make_dispatcher(env, "solo");
    EXPECT_EQ(solo.name(), "solo");
    EXPECT_EQ(solo.kind(), "one_thread");
    session a(env, {.name = "a", .bind = solo.bind()});
    session b(env, {.name = "b", .bind = solo.bind()});
    auto ta = test::where_it_runs(a);
    auto tb = test::where_it_runs(b);
    EXPECT_EQ(ta.name, "solo");
    EXPECT_EQ(ta.id, tb.id);
    session elsewhere(env, {.name = "on-default"});
    EXPECT_EQ(test::where_it_runs(elsewhere).name, "default");
    EXPECT_EQ(solo.stats().bound_contexts, 2u);
}

TEST(one_thread, found_by_name_it_casts_back_to_its_handle_and_not_to_another_kind) {
    environment env({.name = "casts"});
    auto solo = one_thread::make_dispatcher(env, "solo", {.spin = std::chrono::nanoseconds(0)});
    EXPECT_TRUE(dispatcher_cast<one_thread::handle>(env.find_dispatcher("solo")) == solo);
    EXPECT_TRUE(dispatcher_cast<one_thread::handle>(env.find_dispatcher("default")) == env.default_dispatcher());
    EXPECT_FALSE(dispatcher_cast<one_thread::handle>(env.find_dispatcher("nope")));  // empty stays empty
    EXPECT_EQ(test::kind_error_of<active_obj::handle>(env.find_dispatcher("solo")),
              "dispatcher 'solo' of environment 'casts' is one_thread, not active_obj");
}

}  // namespace
