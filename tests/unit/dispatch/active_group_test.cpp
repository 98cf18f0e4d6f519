#include <mailroom/dispatch/active_group.hpp>

#include <mailroom/session/session.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include "dispatcher_kinds.hpp"

#include <string>

namespace {

using namespace mailroom;
using test::binds_in_a_fifo_order;
using test::binds_plainly;
using test::binds_to_a_group;

// What used to be misuse found at run time (bind_group on a dispatcher of another kind, a plain
// bind() on a group dispatcher) does not compile: only active_group::handle binds to a group,
// and it has no bind() without one.
static_assert(binds_to_a_group<active_group::handle>);
static_assert(!binds_plainly<active_group::handle> && !binds_in_a_fifo_order<active_group::handle>);
static_assert(!binds_to_a_group<one_thread::handle> && !binds_to_a_group<thread_pool::handle>);

TEST(active_group, contexts_bound_to_one_group_share_its_thread_and_other_groups_do_not) {
    environment env;
    active_group::handle groups = active_group::make_dispatcher(env, "grp");
    EXPECT_EQ(groups.kind(), "active_group");
    session a1(env, {.name = "a1", .bind = groups.bind_group("a")});
    session a2(env, {.name = "a2", .bind = groups.bind_group("a")});
    session b1(env, {.name = "b1", .bind = groups.bind_group("b")});
    auto t1 = test::where_it_runs(a1);
    auto t2 = test::where_it_runs(a2);
    auto t3 = test::where_it_runs(b1);
    EXPECT_EQ(t1.name, "grp:a");
    EXPECT_EQ(t3.name, "grp:b");
    EXPECT_EQ(t1.id, t2.id);
    EXPECT_NE(t1.id, t3.id);
    EXPECT_EQ(groups.stats().bound_contexts, 3u);
}

TEST(active_group, a_binding_without_a_group_raises_binding_error_naming_the_dispatcher) {
    environment env;
    auto groups = active_group::make_dispatcher(env, "grp");
    // Through the generic handle (a dispatcher found by name) a plain bind() still compiles.
    try {
        env.find_dispatcher("grp").bind();
        ADD_FAILURE() << "an active_group dispatcher bound a context to no group";
    } catch (const binding_error& e) {
        EXPECT_NE(std::string(e.what()).find("dispatcher 'grp' is active_group"), std::string::npos) << e.what();
    }
    try {
        groups.bind_group("");
        ADD_FAILURE() << "an active_group dispatcher took an empty group name";
    } catch (const binding_error& e) {
        EXPECT_STREQ(e.what(), "dispatcher 'grp' (active_group): the group name is empty");
    }
    EXPECT_THROW(active_group::handle().bind_group("a"), usage_error);
    EXPECT_EQ(groups.stats().bound_contexts, 0u);
}

TEST(active_group, found_by_name_it_casts_back_to_its_handle_and_not_to_another_kind) {
    environment env({.name = "casts"});
    auto groups = active_group::make_dispatcher(env, "grp");
    EXPECT_TRUE(dispatcher_cast<active_group::handle>(env.find_dispatcher("grp")) == groups);
    EXPECT_EQ(test::kind_error_of<active_group::handle>(env.default_dispatcher()),
              "dispatcher 'default' of environment 'casts' is one_thread, not active_group");
}

}  // namespace
