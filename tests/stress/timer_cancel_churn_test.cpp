// Timers armed, fired, cancelled and dropped at random from several threads, against agents
// and sessions, while the timer thread fires and unlinks them: cancel() racing fire() over the
// payload, unlink commands racing the wheel's own removals, handles outliving the environment.
// Every message counts its own copies: when everything is dropped and the environment is gone,
// none may be left (AddressSanitizer's leak check and the counter agree), and while it runs the
// wheel may hold no more than the timers still live.

#include <mailroom/mbox/timer.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;

namespace {

std::atomic<long> live_payloads{0};

struct payload {
    payload() { live_payloads.fetch_add(1); }
    payload(const payload&) { live_payloads.fetch_add(1); }
    ~payload() { live_payloads.fetch_sub(1); }
    std::vector<char> ballast = std::vector<char>(256);
};

TEST(timer_cancel_churn, cancelled_and_dropped_timers_free_their_messages_and_leave_the_wheel) {
    using mailroom::test::probe;
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 4s : 2s);
    const long rounds = mailroom::test::rounds(20'000);
    std::vector<mailroom::timer_handle> survivors;  // outlive the environment
    std::atomic<long> handled{0}, session_calls{0};   // outlive the environment's handlers
    {
        mailroom::environment env;
        mailroom::mbox direct = mailroom::test::add_probe(
            env, [&](probe& p) { p.subscribe(p.direct_mbox(), [&](const payload&) { handled.fetch_add(1); }); });
        mailroom::mbox topic = mailroom::make_mpmc_mbox(env);
        for (int i = 0; i < 2; ++i)
            mailroom::test::add_probe(env, [&](probe& p) { p.subscribe(topic, [&](const payload&) { handled.fetch_add(1); }); });
        mailroom::session s(env, {.name = "churn"});

        constexpr int threads = 3;
        std::vector<std::thread> ts;
        std::vector<std::vector<mailroom::timer_handle>> kept(threads);
        for (int k = 0; k < threads; ++k)
            ts.emplace_back([&, k] {
                std::mt19937 rng(static_cast<unsigned>(k) * 7919u + 1);
                std::vector<mailroom::timer_handle> mine;
                std::vector<mailroom::event_handle> objects;
                for (long i = 0; i < rounds && std::chrono::steady_clock::now() < end; ++i) {
                    const mailroom::mbox& to = rng() % 2 ? direct : topic;
                    const auto delay = std::chrono::microseconds(rng() % 3000);
                    switch (rng() % 8) {
                        case 0: mine.push_back(mailroom::send_periodic<payload>(to, delay, std::chrono::microseconds(200 + rng() % 800))); break;
                        case 1: mailroom::post_delayed<payload>(to, delay); break;
                        case 2: (void)mailroom::send_delayed<payload>(to, 1h); break;  // dropped at once
                        case 3:
                            objects.push_back(s.add_timer(delay, std::chrono::microseconds(rng() % 2 ? 0 : 500),
                                                          [&] { session_calls.fetch_add(1); }));
                            break;
                        default: mine.push_back(mailroom::send_delayed<payload>(to, delay)); break;
                    }
                    if (!mine.empty() && rng() % 2) {
                        auto& h = mine[rng() % mine.size()];
                        if (rng() % 2)
                            h.cancel();
                        else
                            h = mailroom::timer_handle();
                    }
                    if (!objects.empty() && rng() % 3 == 0) objects[rng() % objects.size()].destroy();
                    if (mine.size() > 64) mine.erase(mine.begin(), mine.begin() + 32);
                    if (objects.size() > 32) objects.erase(objects.begin(), objects.begin() + 16);
                }
                // A few outlive the environment; the rest are dropped here.
                for (std::size_t j = 0; j < mine.size() && j < 4; ++j) kept[k].push_back(std::move(mine[j]));
            });
        for (auto& t : ts) t.join();
        // Every handle but the kept ones is gone: within a few sweeps the wheel holds only the
        // timers still live (the kept handles and the fire-and-forget ones not yet due).
        std::size_t kept_count = 0;
        for (auto& v : kept) kept_count += v.size();
        EXPECT_TRUE(mailroom::test::eventually(
            [&] { return env.stats().timers_pending <= kept_count; }, 20s))
            << env.stats().timers_pending << " timers pending with " << kept_count << " handles live";
        for (auto& v : kept)
            for (auto& h : v) survivors.push_back(std::move(h));
        // Some fired and were handled (the fire-and-forget ones at least, due within 3 ms).
        EXPECT_TRUE(mailroom::test::eventually([&] { return handled.load() + session_calls.load() > 0; }, 20s));
        s.destroy();
    }
    // The environment is gone; cancelling and dropping what outlived it is safe and frees it all.
    for (std::size_t i = 0; i < survivors.size(); i += 2) survivors[i].cancel();
    survivors.clear();
    EXPECT_EQ(live_payloads.load(), 0) << "messages of cancelled or dropped timers were never freed";
}

}  // namespace
