#include <mailroom/mbox/mchain.hpp>

#include <mailroom/mbox/timer.hpp>
#include <mailroom/named/named.hpp>

#include <gtest/gtest.h>

#include "mchain_support.hpp"

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
using mailroom::test::expect_balanced;
using mailroom::test::get_bounded;
using mailroom::test::tracked;

namespace {

struct tick final : signal {};

}  // namespace

TEST(mchain, unbounded_chain_keeps_order_and_receive_handles_by_type) {
    environment env;
    mchain ch = make_mchain(env, {.name = "jobs"});
    send<int>(ch, 1);
    send<std::string>(ch, "two");
    send<int>(ch, 3);
    send<tick>(ch);
    EXPECT_EQ(ch.size(), 4u);
    std::vector<std::string> seen;
    receive_result r = receive(
        from(ch).no_wait(), [&](int i) { seen.push_back(std::to_string(i)); },
        [&](const std::string& s) { seen.push_back(s); }, [&](const tick&) { seen.push_back("tick"); });
    EXPECT_EQ(r.status, receive_status::empty_timeout);
    EXPECT_EQ(r.extracted, 4u);
    EXPECT_EQ(r.handled, 4u);
    EXPECT_EQ(seen, (std::vector<std::string>{"1", "two", "3", "tick"}));
    const mchain_stats st = ch.stats();
    EXPECT_EQ(st.stored, 4u);
    EXPECT_EQ(st.handled, 4u);
    expect_balanced(env);
}

TEST(mchain, message_without_handler_is_counted_ignored) {
    environment env;
    mchain ch = make_mchain(env);
    send<double>(ch, 1.5);
    receive_result r = receive(from(ch).no_wait(), [](int) {});
    EXPECT_EQ(r.extracted, 1u);
    EXPECT_EQ(r.handled, 0u);
    EXPECT_EQ(ch.stats().ignored, 1u);
    EXPECT_EQ(env.stats().messages_ignored, 1u);
    expect_balanced(env);
}

TEST(mchain, drop_newest_keeps_the_oldest_and_counts_the_drop) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 2, .on_overflow = mchain_overflow::drop_newest});
    for (int i = 0; i < 5; ++i) send<tracked>(ch, i);
    EXPECT_EQ(ch.size(), 2u);
    EXPECT_EQ(tracked::live.load(), 2);
    std::vector<int> got;
    receive(from(ch).no_wait(), [&](const tracked& t) { got.push_back(t.v); });
    EXPECT_EQ(got, (std::vector<int>{0, 1}));
    EXPECT_EQ(ch.stats().dropped_newest, 3u);
    EXPECT_EQ(env.stats().messages_dropped, 3u);  // in the books too: sent, then dropped
    expect_balanced(env);
}

TEST(mchain, remove_oldest_keeps_the_newest_and_counts_the_removed_dropped) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 2, .memory = mchain_memory::preallocated,
                                  .on_overflow = mchain_overflow::remove_oldest});
    for (int i = 0; i < 5; ++i) send<tracked>(ch, i);
    EXPECT_EQ(tracked::live.load(), 2);
    std::vector<int> got;
    receive(from(ch).no_wait(), [&](const tracked& t) { got.push_back(t.v); });
    EXPECT_EQ(got, (std::vector<int>{3, 4}));
    EXPECT_EQ(ch.stats().removed_oldest, 3u);
    EXPECT_EQ(env.stats().messages_sent, 5u);  // the two handled and the three removed
    EXPECT_EQ(env.stats().messages_dropped, 3u);
    expect_balanced(env);
}

TEST(mchain, throw_error_raises_a_typed_error_naming_the_chain) {
    environment env;
    mchain ch = make_mchain(env, {.name = "orders", .capacity = 1, .on_overflow = mchain_overflow::throw_error});
    send<tracked>(ch, 1);
    try {
        send<tracked>(ch, 2);
        FAIL() << "no mchain_overflow_error";
    } catch (const mchain_overflow_error& e) {
        EXPECT_NE(std::string(e.what()).find("mchain 'orders'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(tracked::live.load(), 1);
    EXPECT_EQ(ch.stats().refused_full, 1u);
    ch.close(mchain_close::drop_content);
    EXPECT_EQ(tracked::live.load(), 0);
    expect_balanced(env);
}

TEST(mchain_death, abort_reaction_aborts_naming_the_chain) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            environment env;
            mchain ch = make_mchain(env, {.name = "fatal", .capacity = 1, .on_overflow = mchain_overflow::abort});
            send<int>(ch, 1);
            send<int>(ch, 2);
        },
        "mchain 'fatal' is full");
}

TEST(mchain, sender_waits_for_space_then_succeeds_when_a_receiver_makes_room) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 1, .on_overflow = mchain_overflow::throw_error,
                                  .wait_for_space = 5s});
    send<int>(ch, 1);
    std::atomic<bool> sent{false};
    std::thread producer([&] {
        send<int>(ch, 2);  // blocks until the receive below makes room
        sent = true;
    });
    std::vector<int> got;
    receive_result r = bounded([&] { return receive(from(ch).handle_n(2).total_time(5s), [&](int i) { got.push_back(i); }); });
    producer.join();
    EXPECT_TRUE(sent);
    EXPECT_EQ(r.status, receive_status::handled_n);
    EXPECT_EQ(got, (std::vector<int>{1, 2}));
    expect_balanced(env);
}

TEST(mchain, sender_waits_up_to_the_timeout_then_applies_the_reaction) {
    environment env;
    mchain ch = make_mchain(env, {.name = "slow", .capacity = 1, .on_overflow = mchain_overflow::throw_error,
                                  .wait_for_space = 50ms});
    send<int>(ch, 1);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(bounded([&] { send<int>(ch, 2); }), mchain_overflow_error);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 45ms);
    EXPECT_EQ(ch.size(), 1u);
    expect_balanced(env);
}

TEST(mchain, wait_then_drop_newest_counts_the_drop) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 1, .on_overflow = mchain_overflow::drop_newest,
                                  .wait_for_space = 20ms});
    send<int>(ch, 1);
    bounded([&] { send<int>(ch, 2); });
    EXPECT_EQ(ch.stats().dropped_newest, 1u);
    expect_balanced(env);
}

TEST(mchain, receive_handle_n_and_extract_n_stop_at_their_counts) {
    environment env;
    mchain ch = make_mchain(env);
    for (int i = 0; i < 10; ++i) send<int>(ch, i);
    send<double>(ch, 1.0);
    receive_result a = receive(from(ch).handle_n(3), [](int) {});
    EXPECT_EQ(a.status, receive_status::handled_n);
    EXPECT_EQ(a.handled, 3u);
    receive_result b = receive(from(ch).extract_n(2), [](int) {});
    EXPECT_EQ(b.status, receive_status::extracted_n);
    EXPECT_EQ(b.extracted, 2u);
    // handle_n counts handled messages only: the double is extracted and ignored.
    receive_result c = receive(from(ch).handle_n(6).no_wait(), [](int) {});
    EXPECT_EQ(c.status, receive_status::empty_timeout);
    EXPECT_EQ(c.handled, 5u);
    EXPECT_EQ(c.extracted, 6u);
    expect_balanced(env);
}

TEST(mchain, empty_timeout_returns_when_nothing_comes) {
    environment env;
    mchain ch = make_mchain(env);
    const auto t0 = std::chrono::steady_clock::now();
    receive_result r = bounded([&] { return receive(from(ch).empty_timeout(30ms), [](int) {}); });
    EXPECT_EQ(r.status, receive_status::empty_timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 25ms);
    EXPECT_EQ(r.extracted, 0u);
}

TEST(mchain, total_time_bounds_the_call_while_messages_keep_coming) {
    environment env;
    mchain ch = make_mchain(env);
    std::atomic<bool> done{false};
    send<int>(ch, 1);  // one waits already: the call handles something however late the feeder runs
    std::thread feeder([&] {
        while (!done) {
            send<int>(ch, 1);
            std::this_thread::sleep_for(1ms);
        }
    });
    receive_result r =
        bounded([&] { return receive(from(ch).empty_timeout(1s).total_time(50ms), [](int) {}); });
    done = true;
    feeder.join();
    EXPECT_EQ(r.status, receive_status::total_time);
    EXPECT_GT(r.handled, 0u);
}

TEST(mchain, stop_predicate_ends_receive) {
    environment env;
    mchain ch = make_mchain(env);
    for (int i = 0; i < 10; ++i) send<int>(ch, i);
    int sum = 0;
    receive_result r = receive(from(ch).stop_on([&] { return sum >= 6; }), [&](int i) { sum += i; });
    EXPECT_EQ(r.status, receive_status::stopped);
    EXPECT_EQ(r.handled, 4u);  // 0+1+2+3
    EXPECT_EQ(ch.size(), 6u);
}

TEST(mchain, receive_with_timeout_takes_one_message) {
    environment env;
    mchain ch = make_mchain(env);
    send<int>(ch, 7);
    send<int>(ch, 8);
    int got = 0;
    receive_result r = receive(ch, 100ms, [&](int i) { got = i; });
    EXPECT_EQ(r.status, receive_status::extracted_n);
    EXPECT_EQ(got, 7);
    EXPECT_EQ(ch.size(), 1u);
}

TEST(mchain, close_retaining_content_lets_receivers_drain_it_then_reports_closed) {
    environment env;
    mchain ch = make_mchain(env);
    for (int i = 0; i < 3; ++i) send<int>(ch, i);
    ch.close(mchain_close::retain_content);
    send<int>(ch, 99);  // after the close: counted lost
    int n = 0;
    receive_result r = bounded([&] { return receive(from(ch), [&](int) { ++n; }); });
    EXPECT_EQ(r.status, receive_status::closed);
    EXPECT_EQ(n, 3);
    EXPECT_EQ(ch.stats().refused_closed, 1u);
    EXPECT_EQ(env.stats().messages_lost, 1u);
    expect_balanced(env);
}

TEST(mchain, close_dropping_content_discards_and_counts_it) {
    environment env;
    mchain ch = make_mchain(env);
    for (int i = 0; i < 3; ++i) send<tracked>(ch, i);
    ch.close(mchain_close::drop_content);
    EXPECT_EQ(tracked::live.load(), 0);
    receive_result r = receive(from(ch), [](const tracked&) {});
    EXPECT_EQ(r.status, receive_status::closed);
    EXPECT_EQ(r.extracted, 0u);
    EXPECT_EQ(ch.stats().discarded, 3u);
    EXPECT_EQ(env.stats().messages_discarded, 3u);
    expect_balanced(env);
}

TEST(mchain, close_wakes_a_blocked_receiver) {
    environment env;
    mchain ch = make_mchain(env);
    auto fut = std::async(std::launch::async, [&] { return receive(from(ch), [](int) {}); });
    std::this_thread::sleep_for(20ms);  // let it block (the result is the same if it has not yet)
    ch.close(mchain_close::drop_content);
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(fut.get().status, receive_status::closed);
}

TEST(mchain, closer_closes_its_chains_on_scope_exit_even_when_throwing) {
    environment env;
    mchain a = make_mchain(env), b = make_mchain(env);
    try {
        auto closer = close_on_exit(mchain_close::drop_content, a, b);
        throw std::runtime_error("x");
    } catch (const std::runtime_error&) {
    }
    EXPECT_TRUE(a.closed());
    EXPECT_TRUE(b.closed());
}

TEST(mchain, select_over_three_chains_with_a_close_in_the_middle) {
    environment env;
    mchain a = make_mchain(env, {.name = "a"}), b = make_mchain(env, {.name = "b"}), c = make_mchain(env, {.name = "c"});
    std::vector<std::string> closed;
    std::atomic<int> ints{0}, strings{0}, doubles{0};
    std::thread producer([&] {
        for (int i = 0; i < 100; ++i) {
            send<int>(a, i);
            send<std::string>(b, "s");
            if (i == 50) b.close(mchain_close::retain_content);  // b closes in the middle
            send<double>(c, 1.0);
        }
        a.close(mchain_close::retain_content);
        c.close(mchain_close::retain_content);
    });
    receive_result r = bounded([&] {
        return select(from_all().on_close([&](const mchain& ch) { closed.push_back(ch.name()); }),
                      receive_case(a, [&](int) { ++ints; }), receive_case(b, [&](const std::string&) { ++strings; }),
                      receive_case(c, [&](double) { ++doubles; }));
    });
    producer.join();
    EXPECT_EQ(r.status, receive_status::closed);
    EXPECT_EQ(ints.load(), 100);
    EXPECT_EQ(strings.load(), 51);  // the rest went to a closed chain: counted lost
    EXPECT_EQ(doubles.load(), 100);
    EXPECT_EQ(r.handled, 251u);
    ASSERT_EQ(closed.size(), 3u);
    EXPECT_EQ(closed[0], "mchain 'b'");
    EXPECT_EQ(b.stats().refused_closed, 49u);
    expect_balanced(env);
}

TEST(mchain, select_wakes_on_whichever_chain_gets_a_message) {
    environment env;
    mchain a = make_mchain(env), b = make_mchain(env), c = make_mchain(env);
    std::thread producer([&] {
        std::this_thread::sleep_for(10ms);
        send<int>(c, 3);
    });
    int got = 0;
    receive_result r = bounded([&] {
        return select(from_all().handle_n(1).total_time(5s), receive_case(a, [&](int i) { got = i; }),
                      receive_case(b, [&](int i) { got = i; }), receive_case(c, [&](int i) { got = i; }));
    });
    producer.join();
    EXPECT_EQ(r.status, receive_status::handled_n);
    EXPECT_EQ(got, 3);
}

TEST(mchain, send_case_sends_once_there_is_room_and_calls_on_sent) {
    environment env;
    mchain full = make_mchain(env, {.capacity = 1});
    mchain in = make_mchain(env);
    send<int>(full, 1);  // full until someone takes it
    std::thread taker([&] {
        std::this_thread::sleep_for(10ms);
        receive(full, 5s, [](int) {});
    });
    bool on_sent = false;
    receive_result r = bounded([&] {
        return select(from_all().handle_n(1).total_time(5s), send_case(full, 2, [&] { on_sent = true; }),
                      receive_case(in, [](int) {}));
    });
    taker.join();
    EXPECT_EQ(r.status, receive_status::handled_n);
    EXPECT_EQ(r.sent, 1u);
    EXPECT_TRUE(on_sent);
    int second = 0;
    receive(full, 0ns, [&](int i) { second = i; });
    EXPECT_EQ(second, 2);
    expect_balanced(env);
}

TEST(mchain, select_with_only_send_cases_completes_when_all_are_sent) {
    environment env;
    mchain a = make_mchain(env), b = make_mchain(env);
    int sent = 0;
    receive_result r = select(from_all(), send_case(a, std::string("x"), [&] { ++sent; }),
                              send_case(b, tick{}, [&] { ++sent; }));
    EXPECT_EQ(r.status, receive_status::completed);
    EXPECT_EQ(sent, 2);
    EXPECT_EQ(a.size(), 1u);
    EXPECT_EQ(b.size(), 1u);
}

TEST(mchain, send_case_to_a_closed_chain_is_done_and_counted_lost) {
    environment env;
    mchain a = make_mchain(env);
    a.close(mchain_close::drop_content);
    bool on_sent = false;
    receive_result r = select(from_all(), send_case(a, tracked(1), [&] { on_sent = true; }));
    EXPECT_EQ(r.status, receive_status::closed);
    EXPECT_FALSE(on_sent);
    EXPECT_EQ(tracked::live.load(), 0);
    EXPECT_EQ(env.stats().messages_lost, 1u);
    expect_balanced(env);
}

TEST(mchain, environment_stop_wakes_a_blocked_receiver_and_tells_it) {
    auto env = std::make_unique<environment>();
    mchain ch = make_mchain(*env);
    send<tracked>(ch, 1);
    ch.close(mchain_close::retain_content);
    mchain other = make_mchain(*env);
    auto fut = std::async(std::launch::async, [&] { return receive(from(other), [](int) {}); });
    std::this_thread::sleep_for(20ms);
    env->stop();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(fut.get().status, receive_status::environment_stopped);
    EXPECT_EQ(tracked::live.load(), 0);  // the retained content was dropped by the teardown
    const teardown_report rep = env->join();
    EXPECT_EQ(rep.messages_discarded, 1u);
    expect_balanced(*env);
}

TEST(mchain, environment_stop_wakes_a_sender_waiting_for_room_with_environment_stopped_error) {
    auto env = std::make_unique<environment>();
    mchain ch = make_mchain(*env, {.name = "full", .capacity = 1, .wait_for_space = 30s});
    send<int>(ch, 1);
    auto fut = std::async(std::launch::async, [&] { send<int>(ch, 2); });
    std::this_thread::sleep_for(20ms);
    env->stop();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_THROW(fut.get(), environment_stopped_error);
    env->join();
    expect_balanced(*env);
}

TEST(mchain, making_a_chain_in_a_stopping_environment_raises) {
    environment env;
    env.stop();
    EXPECT_THROW(make_mchain(env), environment_stopped_error);
}

TEST(mchain, bad_options_raise_usage_error) {
    environment env;
    EXPECT_THROW(make_mchain(env, {.memory = mchain_memory::preallocated}), usage_error);
    EXPECT_THROW(make_mchain(env, {.wait_for_space = -1ms}), usage_error);
}

TEST(mchain, empty_handle_in_receive_raises_usage_error) {
    EXPECT_THROW(receive(from(mchain()).no_wait(), [](int) {}), usage_error);
}

TEST(mchain, chain_is_the_target_of_send_delayed) {
    environment env;
    mchain ch = make_mchain(env);
    timer_handle t = send_delayed<int>(ch, 5ms, 42);
    int got = 0;
    receive_result r = bounded([&] { return receive(ch, 5s, [&](int i) { got = i; }); });
    EXPECT_EQ(r.handled, 1u);
    EXPECT_EQ(got, 42);
    expect_balanced(env);
}

TEST(mchain, chain_as_mbox_has_its_name_and_kind) {
    environment env;
    mchain ch = make_mchain(env, {.name = "x"});
    mbox m = ch.as_mbox();
    EXPECT_EQ(m.kind(), mbox_kind::mchain);
    EXPECT_EQ(m.name(), "mchain 'x'");
    send<int>(m, 1);
    EXPECT_EQ(ch.size(), 1u);
}

TEST(mchain, a_full_chain_drops_timer_messages_instead_of_blocking_the_timer_thread) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 1, .on_overflow = mchain_overflow::throw_error,
                                  .wait_for_space = 10s});
    send<int>(ch, 1);
    timer_handle t = send_delayed<int>(ch, 1ms, 2);
    // The timer thread must not wait 10 s: a second delayed message behind it still comes.
    mchain probe = make_mchain(env);
    timer_handle t2 = send_delayed<int>(probe, 5ms, 3);
    receive_result r = receive(probe, 2s, [](int) {});
    EXPECT_EQ(r.handled, 1u);
    EXPECT_EQ(ch.stats().dropped_newest, 1u);
    expect_balanced(env);
}

TEST(mchain, last_handle_discards_and_counts_what_is_left) {
    environment env;
    {
        mchain ch = make_mchain(env);
        send<tracked>(ch, 1);
        send<tracked>(ch, 2);
    }
    EXPECT_EQ(tracked::live.load(), 0);
    EXPECT_EQ(env.stats().messages_discarded, 2u);
    expect_balanced(env);
}

TEST(mchain, handler_exception_leaves_receive_and_the_message_counts_delivered) {
    environment env;
    mchain ch = make_mchain(env);
    send<int>(ch, 1);
    send<int>(ch, 2);
    EXPECT_THROW(receive(from(ch).no_wait(), [](int) { throw std::runtime_error("boom"); }), std::runtime_error);
    EXPECT_EQ(ch.size(), 1u);
    EXPECT_EQ(env.stats().messages_delivered, 1u);
}

namespace {
bool wait_for(const std::function<bool()>& pred) {
    const auto end = std::chrono::steady_clock::now() + 10s;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}
}  // namespace

TEST(mchain, one_message_wakes_one_of_several_blocked_receivers_not_all) {
    environment env;
    mchain ch = make_mchain(env);
    std::atomic<int> returned{0};
    std::vector<std::thread> rx;
    for (int i = 0; i < 4; ++i)
        rx.emplace_back([&] {
            receive(from(ch).extract_n(1).total_time(20s), [](int) {});
            ++returned;
        });
    ASSERT_TRUE(wait_for([&] { return ch.stats().receivers_waiting == 4; }));
    send<int>(ch, 1);
    ASSERT_TRUE(wait_for([&] { return returned.load() == 1; }));
    std::this_thread::sleep_for(5ms);
    const mchain_stats s = ch.stats();
    EXPECT_EQ(s.wakeups, 1u);
    EXPECT_EQ(s.receivers_waiting, 3u);
    EXPECT_EQ(returned.load(), 1);
    ch.close(mchain_close::drop_content);
    for (auto& t : rx) t.join();
    EXPECT_EQ(ch.stats().wakeups, 4u);
}

TEST(mchain, select_over_three_chains_is_woken_once_by_the_chain_that_gets_a_message) {
    environment env;
    mchain a = make_mchain(env), b = make_mchain(env), c = make_mchain(env);
    std::atomic<int> returned{0};
    std::vector<std::thread> rx;
    for (int i = 0; i < 3; ++i)
        rx.emplace_back([&] {
            select(from_all().handle_n(1).total_time(20s), receive_case(a, [](int) {}), receive_case(b, [](int) {}),
                   receive_case(c, [](int) {}));
            ++returned;
        });
    ASSERT_TRUE(wait_for([&] {
        return a.stats().receivers_waiting == 3 && b.stats().receivers_waiting == 3 && c.stats().receivers_waiting == 3;
    }));
    send<int>(b, 1);
    ASSERT_TRUE(wait_for([&] { return returned.load() == 1; }));
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(a.stats().wakeups + b.stats().wakeups + c.stats().wakeups, 1u);
    EXPECT_EQ(returned.load(), 1);
    for (auto* ch : {&a, &b, &c}) ch->close(mchain_close::drop_content);
    for (auto& t : rx) t.join();
}

TEST(mchain, dynamic_storage_grows_for_a_burst_keeps_order_and_drains) {
    environment env;
    mchain ch = make_mchain(env);
    for (int i = 0; i < 5000; ++i) send<int>(ch, i);
    EXPECT_EQ(ch.stats().high_water, 5000u);
    int next = 0;
    bool in_order = true;
    receive(from(ch).no_wait(), [&](int i) { in_order = in_order && i == next++; });
    EXPECT_TRUE(in_order);
    EXPECT_EQ(next, 5000);
    // After the burst drained it works as before.
    send<int>(ch, 7);
    int got = 0;
    receive(ch, 0ns, [&](int i) { got = i; });
    EXPECT_EQ(got, 7);
    expect_balanced(env);
}

TEST(mchain, named_chain_is_found_by_name_and_reached_by_a_send_to_that_name) {
    environment env;
    mchain ch = make_mchain(env, {.name = "orders", .named = true});
    mbox m = find_named_mbox(env, "orders");
    ASSERT_TRUE(m);
    EXPECT_EQ(m.kind(), mbox_kind::mchain);
    send<int>(m, 5);
    int got = 0;
    receive(ch, 0ns, [&](int i) { got = i; });
    EXPECT_EQ(got, 5);
    EXPECT_THROW(make_mchain(env, {.name = "orders", .named = true}), duplicate_name_error);
    EXPECT_THROW(make_named_mbox(env, "orders"), duplicate_name_error);
    EXPECT_THROW(make_mchain(env, {.named = true}), usage_error);
}

TEST(mchain, select_given_from_a_chain_raises_usage_error_and_releases_its_messages) {
    environment env;
    mchain a = make_mchain(env, {.name = "a"});
    try {
        select(from(a), send_case(a, tracked(1), [] {}));
        FAIL() << "no usage_error";
    } catch (const usage_error& e) {
        EXPECT_NE(std::string(e.what()).find("from_all()"), std::string::npos) << e.what();
    }
    EXPECT_EQ(tracked::live.load(), 0);
    EXPECT_TRUE(a.empty());
}
