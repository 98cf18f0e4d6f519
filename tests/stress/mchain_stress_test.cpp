// mchains under many threads: producers waiting for room, receivers in select over several
// chains, sessions subscribing and shutting down while messages flow, and environments torn
// down under blocked threads. Bounded in iterations and time; run under TSan and ASan.

#include <mailroom/mbox/mchain.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "mchain_support.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::expect_balanced;
using mailroom::test::get_bounded;

TEST(mchain_stress, producers_waiting_for_room_and_receivers_in_select_lose_nothing) {
    environment env;
    constexpr int chains = 3, producers = 3, receivers = 2, per_producer = 20'000;
    std::vector<mchain> ch;
    for (int i = 0; i < chains; ++i)
        ch.push_back(make_mchain(env, {.capacity = 8, .memory = i == 0 ? mchain_memory::preallocated
                                                                        : mchain_memory::dynamic,
                                       .wait_for_space = 30s}));
    // A session takes from the first chain too: messages go to whichever receiver comes first.
    session s(env);
    std::atomic<long> by_session{0};
    event_handle sub = s.subscribe(ch[0], [&](long v) { by_session += v; });

    std::vector<std::future<receive_result>> rx;
    std::atomic<long> sum{0};
    for (int r = 0; r < receivers; ++r)
        rx.push_back(std::async(std::launch::async, [&] {
            auto take = [&](long v) { sum += v; };
            return select(from_all(), receive_case(ch[0], take), receive_case(ch[1], take), receive_case(ch[2], take));
        }));
    std::vector<std::thread> tx;
    for (int p = 0; p < producers; ++p)
        tx.emplace_back([&, p] {
            for (int i = 1; i <= per_producer; ++i) send<long>(ch[(i + p) % chains], long{i});
        });
    for (auto& t : tx) t.join();
    for (auto& c : ch) c.close(mchain_close::retain_content);
    for (auto& f : rx) EXPECT_EQ(get_bounded(f).status, receive_status::closed);
    // The session may still be draining the first chain.
    const long expected = long{producers} * per_producer * (per_producer + 1) / 2;
    const auto end = std::chrono::steady_clock::now() + 30s;
    while (sum.load() + by_session.load() != expected && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(1ms);
    EXPECT_EQ(sum.load() + by_session.load(), expected);
    for (auto& c : ch) EXPECT_EQ(c.stats().stored, c.stats().handled);
    expect_balanced(env);
}

TEST(mchain_stress, subscriptions_shut_down_from_foreign_threads_while_messages_flow_never_run_after) {
    environment env;
    mchain ch = make_mchain(env, {.capacity = 128, .on_overflow = mchain_overflow::remove_oldest});
    std::atomic<bool> stop{false};
    std::vector<std::thread> tx;
    for (int p = 0; p < 2; ++p)
        tx.emplace_back([&] {
            while (!stop) send<int>(ch, 1);
        });
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    int rounds = 0;
    std::mt19937 rng(7);
    while (rounds < 200 && std::chrono::steady_clock::now() < deadline) {
        ++rounds;
        session s(env);
        auto shut = std::make_shared<std::atomic<bool>>(false);
        auto after = std::make_shared<std::atomic<int>>(0);
        event_handle sub = s.subscribe(ch, [shut, after](int) {
            if (shut->load()) ++*after;
        });
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
        // From a thread of its own, or from this one (both foreign to the session).
        if (rounds % 2) {
            std::thread([&] { sub.shutdown(); }).join();
        } else {
            sub.shutdown();
        }
        shut->store(true);
        std::this_thread::sleep_for(100us);
        EXPECT_EQ(after->load(), 0) << "round " << rounds;
        if (rounds % 3 == 0) s.destroy();
    }
    stop = true;
    for (auto& t : tx) t.join();
    ch.close(mchain_close::drop_content);
    expect_balanced(env);
}

TEST(mchain_stress, environment_teardown_wakes_every_blocked_receiver_and_sender) {
    for (int round = 0; round < 20; ++round) {
        auto env = std::make_unique<environment>();
        std::vector<mchain> ch;
        for (int i = 0; i < 4; ++i) ch.push_back(make_mchain(*env, {.capacity = 1, .wait_for_space = 60s}));
        send<int>(ch[3], 0);  // full: a sender will wait on it
        std::vector<std::future<receive_result>> rx;
        for (int r = 0; r < 3; ++r)
            rx.push_back(std::async(std::launch::async, [&] {
                return select(from_all(), receive_case(ch[0], [](int) {}), receive_case(ch[1], [](int) {}),
                              receive_case(ch[2], [](int) {}));
            }));
        auto blocked_sender = std::async(std::launch::async, [&] {
            try {
                send<int>(ch[3], 1);
                return false;
            } catch (const environment_stopped_error&) {
                return true;
            }
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(round % 5));
        env.reset();  // stop and join, from this (foreign) thread
        for (auto& f : rx) EXPECT_EQ(get_bounded(f).status, receive_status::environment_stopped);
        EXPECT_TRUE(get_bounded(blocked_sender));
    }
}
