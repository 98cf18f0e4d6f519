#include <mailroom/mbox/event_handle.hpp>

#include <mailroom/mailroom.hpp>

#include <test_support.hpp>

#include "all_stats.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
struct quote {
    int price = 0;
};

// ---- one handle ----

TEST(event_handle, a_send_delayed_timer_has_the_one_handle_and_its_verbs) {
    static_assert(std::is_same_v<timer_handle, event_handle>, "send_delayed returns the one event handle");
    environment env;
    std::atomic<int> got{0};
    session s(env);
    auto in = s.add_inbox<ping>([&](ping p) { got += p.n; });

    event_handle h = send_delayed<ping>(in.address(), 1h, 1);
    EXPECT_TRUE(h);
    EXPECT_TRUE(h.shutdown());
    EXPECT_FALSE(h);  // live means not shut down
    EXPECT_FALSE(h.shutdown()) << "a second shutdown() claims to have shut it";
    EXPECT_FALSE(h.cancel()) << "cancel() is shutdown()'s synonym";
    h.destroy();
    EXPECT_FALSE(h);
    EXPECT_FALSE(h.shutdown());  // empty: a no-op

    // detach(): the timer runs on without its handle.
    event_handle d = send_delayed<ping>(in.address(), 0ms, 10);
    d.detach();
    EXPECT_FALSE(d);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 10; }));

    // destroy() from another thread, the handle moved there.
    event_handle far = send_delayed<ping>(in.address(), 1h, 100);
    std::thread([h = std::move(far)]() mutable { h.destroy(); }).join();
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(got.load(), 10);
    EXPECT_TRUE(test::eventually([&] { return env.stats().timers_pending == 0; })) << "a destroyed timer stays in the wheel";
}

TEST(event_handle, every_kind_of_event_object_is_held_and_shut_down_by_the_one_handle) {
    environment env;
    session s(env);
    std::atomic<int> calls{0};
    std::atomic<bool> all_shut{false};
    std::atomic<int> late{0};
    auto count = [&] {
        if (all_shut.load()) ++late;
        ++calls;
    };
    mbox topic = make_mpmc_mbox(env);
    auto target = s.add_inbox<ping>([&](ping) { count(); });
    auto inbox = s.add_inbox<ping>([&](ping) { count(); });
    const mbox inbox_address = inbox.address();

    std::vector<event_handle> all;
    all.push_back(send_periodic<ping>(target.address(), 1ms, 1ms, 1));
    all.push_back(s.add_timer(1ms, 1ms, [&] { count(); }));
    all.push_back(std::move(inbox).to_event_handle());
    all.push_back(s.subscribe<quote>(topic, [&](const quote&) { count(); }));
    all.push_back(register_named(s, "echo", [&](incoming&) { count(); }).to_event_handle());
    for (auto& h : all) EXPECT_TRUE(h);

    send<ping>(inbox_address, 1);
    send<quote>(topic, 1);
    send_to(env, "echo", ping{1});
    ASSERT_TRUE(test::eventually([&] { return calls.load() >= 8; }));

    for (auto& h : all) EXPECT_TRUE(h.shutdown());
    all_shut = true;
    for (auto& h : all) EXPECT_FALSE(h);
    target.shutdown();  // the timer's receiver: after the timer, so that it sees no late fire

    // Nothing reaches a callback any more, whichever kind it was.
    send<ping>(inbox_address, 1);
    send<quote>(topic, 1);
    EXPECT_THROW(send_to(env, "echo", ping{1}), no_such_object_error);
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(late.load(), 0);
    all.clear();
    s.destroy();
    env.stop();
    env.join();
    const auto st = test::all_stats_of(env);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
}

// ---- no slicing ----

TEST(event_handle, handles_that_carry_more_than_their_object_cannot_be_sliced) {
    // An inbox_handle or named_handle seen as an event_handle& could be emptied by an
    // assignment that leaves its address or name behind; neither converts.
    static_assert(!std::is_convertible_v<inbox_handle&, event_handle&>);
    static_assert(!std::is_convertible_v<named_handle&, event_handle&>);
    static_assert(!std::is_constructible_v<event_handle, inbox_handle&&>);
    static_assert(!std::is_constructible_v<event_handle, named_handle&&>);
    static_assert(!std::is_convertible_v<inbox_handle&, extended_handle&> ||
                  !std::is_move_assignable_v<extended_handle>);
    static_assert(!std::is_move_constructible_v<extended_handle>);
    static_assert(std::is_nothrow_move_constructible_v<event_handle> && !std::is_copy_constructible_v<event_handle>);

    // The explicit way keeps the object's meaning: the address still reaches the inbox, and
    // the plain handle shuts it down.
    environment env;
    session s(env);
    std::atomic<int> got{0};
    auto in = s.add_inbox<ping>([&](ping p) { got += p.n; });
    const mbox address = in.address();
    event_handle plain = std::move(in).to_event_handle();
    EXPECT_FALSE(in);
    EXPECT_TRUE(plain);
    send<ping>(address, 3);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 3; }));
    plain.shutdown();
    send<ping>(address, 3);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(got.load(), 3);
}

}  // namespace
