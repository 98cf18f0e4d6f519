// A bounded chain behaves the same whichever its memory: a preallocated one (capacity 2 or more)
// is a lock-free ring, a dynamic one a ring under a mutex (docs/mchains.md, "Threads"). Each
// test runs on both, with capacities that are and are not powers of two, and laps the ring.

#include <mailroom/mbox/mchain.hpp>

#include <mailroom/mbox/timer.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "mchain_support.hpp"
#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::bounded;
using mailroom::test::eventually;
using mailroom::test::expect_balanced;
using mailroom::test::tracked;

namespace {

class bounded_chain : public testing::TestWithParam<mchain_memory> {
protected:
    mchain make(std::size_t capacity, mchain_overflow on_overflow = mchain_overflow::drop_newest,
                std::chrono::nanoseconds wait = 0ns, std::string name = {}) {
        return make_mchain(env, {.name = std::move(name), .capacity = capacity, .memory = GetParam(),
                                 .on_overflow = on_overflow, .wait_for_space = wait});
    }
    environment env;
};

}  // namespace

INSTANTIATE_TEST_SUITE_P(memory, bounded_chain, testing::Values(mchain_memory::preallocated, mchain_memory::dynamic),
                         [](const testing::TestParamInfo<mchain_memory>& i) {
                             return i.param == mchain_memory::preallocated ? "preallocated" : "dynamic";
                         });

TEST_P(bounded_chain, laps_of_a_small_chain_keep_order_and_exact_counts) {
    for (std::size_t cap : {2u, 3u, 4u, 7u}) {
        mchain ch = make(cap);
        int next_in = 0, next_out = 0, ignored = 0;
        bool in_order = true;
        // Fill, half drain, refill: the positions wrap the ring many times.
        for (int lap = 0; lap < 50; ++lap) {
            while (ch.size() < cap) send<int>(ch, next_in++);
            send<double>(ch, 0.5);  // full: dropped (drop_newest)
            receive(from(ch).extract_n(cap / 2 + 1).no_wait(), [&](int i) { in_order = in_order && i == next_out++; });
        }
        send<double>(ch, 0.5);  // room: stored, then ignored below
        receive(from(ch).no_wait(), [&](int i) { in_order = in_order && i == next_out++; });
        EXPECT_TRUE(in_order) << "capacity " << cap;
        const mchain_stats s = ch.stats();
        ignored = static_cast<int>(s.ignored);
        EXPECT_EQ(next_out, next_in) << "capacity " << cap;
        EXPECT_EQ(s.stored, static_cast<std::uint64_t>(next_in) + 1);
        EXPECT_EQ(s.extracted, s.stored);
        EXPECT_EQ(s.handled, static_cast<std::uint64_t>(next_in));
        EXPECT_EQ(ignored, 1);
        EXPECT_EQ(s.dropped_newest, 50u);
        EXPECT_EQ(s.size, 0u);
        EXPECT_EQ(s.high_water, cap);
        EXPECT_TRUE(ch.empty());
    }
    expect_balanced(env);
}

TEST_P(bounded_chain, remove_oldest_keeps_the_newest_on_every_lap) {
    mchain ch = make(3, mchain_overflow::remove_oldest);
    for (int i = 0; i < 100; ++i) send<tracked>(ch, i);
    EXPECT_EQ(tracked::live.load(), 3);
    std::vector<int> got;
    receive(from(ch).no_wait(), [&](const tracked& t) { got.push_back(t.v); });
    EXPECT_EQ(got, (std::vector<int>{97, 98, 99}));
    EXPECT_EQ(ch.stats().removed_oldest, 97u);
    EXPECT_EQ(ch.stats().extracted, 3u);  // the removed are not extracted
    EXPECT_EQ(env.stats().messages_dropped, 97u);
    expect_balanced(env);
}

TEST_P(bounded_chain, throw_error_names_the_chain_and_keeps_the_content) {
    mchain ch = make(2, mchain_overflow::throw_error, 0ns, "orders");
    send<tracked>(ch, 1);
    send<tracked>(ch, 2);
    try {
        send<tracked>(ch, 3);
        FAIL() << "no mchain_overflow_error";
    } catch (const mchain_overflow_error& e) {
        EXPECT_NE(std::string(e.what()).find("mchain 'orders'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(tracked::live.load(), 2);
    EXPECT_EQ(ch.stats().refused_full, 1u);
    EXPECT_EQ(ch.size(), 2u);
    ch.close(mchain_close::drop_content);
    EXPECT_EQ(tracked::live.load(), 0);
    expect_balanced(env);
}

TEST_P(bounded_chain, abort_reaction_aborts_naming_the_chain) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            mchain ch = make(2, mchain_overflow::abort, 0ns, "fatal");
            for (int i = 0; i < 3; ++i) send<int>(ch, i);
        },
        "mchain 'fatal' is full");
}

TEST_P(bounded_chain, senders_waiting_for_space_all_get_in_as_a_receiver_drains) {
    mchain ch = make(2, mchain_overflow::throw_error, 10s);
    constexpr int senders = 3, each = 200;
    std::vector<std::thread> tx;
    for (int p = 0; p < senders; ++p)
        tx.emplace_back([&, p] {
            for (int i = 0; i < each; ++i) send<int>(ch, p * each + i);
        });
    std::vector<int> last(senders, -1);
    bool in_order = true;
    receive_result r = bounded([&] {
        return receive(from(ch).handle_n(senders * each).total_time(10s), [&](int v) {
            in_order = in_order && v > last[v / each];
            last[v / each] = v;
        });
    });
    for (auto& t : tx) t.join();
    EXPECT_EQ(r.status, receive_status::handled_n);
    EXPECT_TRUE(in_order) << "one sender's messages came out of order";
    EXPECT_EQ(ch.stats().refused_full, 0u);
    EXPECT_LE(ch.stats().high_water, 2u);
    expect_balanced(env);
}

TEST_P(bounded_chain, sender_waits_up_to_the_timeout_then_applies_the_reaction) {
    mchain ch = make(2, mchain_overflow::drop_newest, 30ms);
    send<int>(ch, 1);
    send<int>(ch, 2);
    const auto t0 = std::chrono::steady_clock::now();
    bounded([&] { send<int>(ch, 3); });
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 25ms);
    EXPECT_EQ(ch.stats().dropped_newest, 1u);
    EXPECT_EQ(ch.size(), 2u);
    expect_balanced(env);
}

TEST_P(bounded_chain, a_full_chain_drops_timer_messages_instead_of_blocking_the_timer_thread) {
    mchain ch = make(2, mchain_overflow::throw_error, 10s);
    send<int>(ch, 1);
    send<int>(ch, 2);
    timer_handle t = send_delayed<int>(ch, 1ms, 3);
    mchain probe = make_mchain(env);
    timer_handle t2 = send_delayed<int>(probe, 5ms, 4);
    EXPECT_EQ(receive(probe, 5s, [](int) {}).handled, 1u);
    EXPECT_EQ(ch.stats().dropped_newest, 1u);
    expect_balanced(env);
}

TEST_P(bounded_chain, close_retaining_content_then_dropping_it) {
    mchain ch = make(4);
    for (int i = 0; i < 3; ++i) send<tracked>(ch, i);
    ch.close(mchain_close::retain_content);
    send<tracked>(ch, 99);  // counted lost
    EXPECT_EQ(ch.stats().refused_closed, 1u);
    int got = -1;
    EXPECT_EQ(receive(from(ch).extract_n(1), [&](const tracked& t) { got = t.v; }).extracted, 1u);
    EXPECT_EQ(got, 0);
    ch.close(mchain_close::drop_content);  // a second close drops what the first retained
    EXPECT_EQ(tracked::live.load(), 0);
    receive_result r = bounded([&] { return receive(from(ch), [](const tracked&) {}); });
    EXPECT_EQ(r.status, receive_status::closed);
    EXPECT_EQ(r.extracted, 0u);
    EXPECT_EQ(ch.stats().discarded, 2u);
    EXPECT_EQ(env.stats().messages_lost, 1u);
    expect_balanced(env);
}

TEST_P(bounded_chain, close_wakes_blocked_receivers_and_senders) {
    mchain full = make(2, mchain_overflow::throw_error, 30s);
    mchain empty = make(2);
    send<int>(full, 1);
    send<int>(full, 2);
    auto sender = std::async(std::launch::async, [&] { send<int>(full, 3); });
    auto receiver = std::async(std::launch::async, [&] { return receive(from(empty), [](int) {}); });
    ASSERT_TRUE(eventually([&] { return full.stats().senders_waiting == 1 && empty.stats().receivers_waiting == 1; }));
    full.close(mchain_close::drop_content);
    empty.close(mchain_close::retain_content);
    ASSERT_EQ(sender.wait_for(10s), std::future_status::ready);
    ASSERT_EQ(receiver.wait_for(10s), std::future_status::ready);
    sender.get();  // a send to a closed chain: counted lost, no exception
    EXPECT_EQ(receiver.get().status, receive_status::closed);
    EXPECT_EQ(full.stats().refused_closed, 1u);
    expect_balanced(env);
}

TEST_P(bounded_chain, one_message_wakes_one_of_several_blocked_receivers) {
    mchain ch = make(4);
    std::atomic<int> returned{0};
    std::vector<std::thread> rx;
    for (int i = 0; i < 3; ++i)
        rx.emplace_back([&] {
            receive(from(ch).extract_n(1).total_time(20s), [](int) {});
            ++returned;
        });
    ASSERT_TRUE(eventually([&] { return ch.stats().receivers_waiting == 3; }));
    send<int>(ch, 1);
    ASSERT_TRUE(eventually([&] { return returned.load() == 1; }));
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(ch.stats().wakeups, 1u);
    EXPECT_EQ(returned.load(), 1);
    ch.close(mchain_close::drop_content);
    for (auto& t : rx) t.join();
}

TEST_P(bounded_chain, send_case_waits_for_room_in_a_full_chain) {
    mchain full = make(2, mchain_overflow::throw_error);
    mchain other = make(2);
    send<int>(full, 1);
    send<int>(full, 2);
    std::thread taker([&] {
        std::this_thread::sleep_for(10ms);
        receive(full, 5s, [](int) {});
    });
    bool on_sent = false;
    receive_result r = bounded([&] {
        return select(from_all().handle_n(1).total_time(5s), send_case(full, 3, [&] { on_sent = true; }),
                      receive_case(other, [](int) {}));
    });
    taker.join();
    EXPECT_EQ(r.sent, 1u);
    EXPECT_TRUE(on_sent);
    std::vector<int> rest;
    receive(from(full).no_wait(), [&](int i) { rest.push_back(i); });
    EXPECT_EQ(rest, (std::vector<int>{2, 3}));
    expect_balanced(env);
}

TEST_P(bounded_chain, a_session_subscribed_takes_everything_and_a_waiting_sender_gets_in) {
    mchain ch = make(3, mchain_overflow::throw_error, 10s);
    session s(env);
    std::atomic<int> got{0};
    std::atomic<bool> in_order{true};
    std::atomic<int> last{-1};
    event_handle sub = s.subscribe(ch, [&](int i) {
        if (i != last.load() + 1) in_order = false;
        last = i;
        ++got;
    });
    bounded([&] {
        for (int i = 0; i < 2000; ++i) send<int>(ch, i);
    });
    ASSERT_TRUE(eventually([&] { return got.load() == 2000; }));
    EXPECT_TRUE(in_order.load());
    sub.shutdown();
    send<int>(ch, 7);  // stays in the chain for anyone else
    EXPECT_EQ(ch.size(), 1u);
    expect_balanced(env);
}

TEST_P(bounded_chain, environment_stop_wakes_a_waiting_sender_and_drops_the_content) {
    auto e = std::make_unique<environment>();
    mchain ch = make_mchain(*e, {.name = "full", .capacity = 2, .memory = GetParam(), .wait_for_space = 30s});
    send<tracked>(ch, 1);
    send<tracked>(ch, 2);
    auto fut = std::async(std::launch::async, [&] { send<tracked>(ch, 3); });
    ASSERT_TRUE(eventually([&] { return ch.stats().senders_waiting == 1; }));
    e->stop();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_THROW(fut.get(), environment_stopped_error);
    EXPECT_EQ(tracked::live.load(), 0);
    EXPECT_EQ(e->join().messages_discarded, 2u);
    expect_balanced(*e);
}

TEST_P(bounded_chain, last_handle_discards_and_counts_what_is_left) {
    {
        mchain ch = make(4);
        for (int i = 0; i < 3; ++i) send<tracked>(ch, i);
    }
    EXPECT_EQ(tracked::live.load(), 0);
    EXPECT_EQ(env.stats().messages_discarded, 3u);
    expect_balanced(env);
}
