// Names freed with their sessions, and requests held outside a stopping environment.
//
// Three threads each own a few names (no two threads share one). Each round, a thread makes a
// session on a random dispatcher, registers its name there (the handler answers, drops, or parks
// the incoming in a bin that outlives the environment), sends requests to it, and then ends the
// object one of four ways: session::destroy() from this thread, destroy() posted to a killer
// session whose callback does it, named_handle::shutdown(), or detach() followed by the
// session's destroy(). Meanwhile two threads send requests at all the names.
//
// What must hold:
// - Once the way that ends it returned on this thread, the name is free at once: a request to
//   it is rejected ("no object named"), and registering it again never raises
//   duplicate_name_error. (For the killer, once its callback returned.)
// - Every request becomes final, including those whose incoming sits in the bin when the
//   environment stops (abandoned then), and the books balance: posted == replied + rejected +
//   abandoned; names registered == unregistered; sessions and objects created == destroyed.

#include <mailroom/named/named.hpp>

#include "../unit/agent/probe.hpp"
#include "test_support.hpp"
#include "all_stats.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct bin {
    std::mutex m;
    std::deque<mailroom::incoming> kept;  // outlives the environment
};

struct counts {
    std::atomic<long> rounds{0}, violations{0}, requests{0}, kept{0};
};

// "t<thread>/n<index>" (built by hand: g++ 12 warns falsely on the chained operator+).
std::string name_of(unsigned thread, unsigned index) {
    char text[32];
    std::snprintf(text, sizeof text, "t%u/n%u", thread, index);
    return text;
}

void violation(counts& c, const std::string& what) {
    if (c.violations.fetch_add(1) < 5) std::fprintf(stderr, "VIOLATION: %s\n", what.c_str());
}

mailroom::named_handle register_on(mailroom::session& s, const std::string& name, bin& b, std::uint32_t seed) {
    return mailroom::register_named(s, name, [&b, rng = std::mt19937(seed)](mailroom::incoming& in) mutable {
        const auto k = rng() % 8;
        if (k < 5) {
            in.reply<int>(in.as<int>() + 1);
        } else if (k < 7) {
            std::lock_guard g(b.m);
            if (b.kept.size() < 512) b.kept.push_back(std::move(in));
        }  // else dropped unanswered: abandoned
    });
}

}  // namespace

TEST(named_names_free, names_are_free_when_their_object_ends_and_no_request_outlives_the_environment) {
    const auto limit = mailroom::test::sanitized ? 1500ms : 3000ms;
    const long max_rounds = mailroom::test::sanitized ? 3'000 : 30'000;
    bin kept;
    counts c;
    std::vector<mailroom::outgoing<int>> outs[5];
    {
        mailroom::environment env;
        auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(env, "own");
        const std::vector<mailroom::binder> binders = {mailroom::binder(), pool.bind(), own.bind()};
        mailroom::session killer(env, {.name = "killer", .bind = pool.bind()});
        std::atomic<bool> over{false};
        const auto end = std::chrono::steady_clock::now() + limit;
        std::vector<std::thread> threads;
        for (int t = 0; t < 3; ++t)
            threads.emplace_back([&, t] {
                std::mt19937 rng(4321 + t);
                auto& mine = outs[t];
                while (std::chrono::steady_clock::now() < end && c.rounds.load() < max_rounds) {
                    const std::string name = name_of(static_cast<unsigned>(t), rng() % 3);
                    mailroom::session s(env, {.bind = binders[rng() % binders.size()]});
                    mailroom::named_handle h;
                    try {
                        h = register_on(s, name, kept, rng());
                    } catch (const mailroom::duplicate_name_error& e) {
                        violation(c, std::string("a name of an ended object was still taken: ") + e.what());
                        continue;
                    }
                    for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i) {
                        mine.push_back(mailroom::request<int>(env, name, i));
                        c.requests.fetch_add(1);
                    }
                    switch (rng() % 4) {
                    case 0: s.destroy(); break;
                    case 1: {
                        std::promise<void> done;
                        if (killer.post([&] {
                                s.destroy();
                                done.set_value();
                            }))
                            done.get_future().wait();
                        else
                            s.destroy();
                        break;
                    }
                    case 2: h.shutdown(); break;
                    default:
                        h.detach();
                        s.destroy();
                        break;
                    }
                    auto r = mailroom::request<int>(env, name, -1);
                    c.requests.fetch_add(1);
                    if (r.state() != mailroom::request_state::rejected)
                        violation(c, "a request to '" + name + "' after its object ended is " +
                                         mailroom::to_string(r.state()) + ": " + r.reason());
                    mine.push_back(std::move(r));
                    if (mine.size() > 4096) mine.erase(mine.begin(), mine.begin() + 2048);
                    c.rounds.fetch_add(1);
                }
            });
        for (int t = 0; t < 2; ++t)
            threads.emplace_back([&, t] {
                std::mt19937 rng(77 + t);
                auto& mine = outs[3 + t];
                while (!over.load()) {
                    const std::string name = name_of(rng() % 3, rng() % 3);
                    mailroom::send_options opt;
                    if (rng() % 4 == 0) opt.timeout = 1h;  // outlives the environment's timer
                    mine.push_back(mailroom::request<int>(env, name, static_cast<int>(rng() % 1000), opt));
                    c.requests.fetch_add(1);
                    if (mine.size() > 4096) mine.erase(mine.begin(), mine.begin() + 2048);
                    if (rng() % 64 == 0) std::this_thread::yield();
                }
            });
        for (int t = 0; t < 3; ++t) threads[static_cast<std::size_t>(t)].join();
        over.store(true);
        for (std::size_t t = 3; t < threads.size(); ++t) threads[t].join();
        killer.destroy();
        {
            std::lock_guard g(kept.m);
            c.kept.store(static_cast<long>(kept.kept.size()));
        }
        env.stop();
        ASSERT_TRUE(mailroom::test::join_within(env, 60s));
        long not_final = 0;
        for (auto& v : outs)
            for (auto& r : v)
                if (!r.wait_for(10s) && not_final++ < 5)
                    std::fprintf(stderr, "NOT FINAL: request #%llu %s\n", static_cast<unsigned long long>(r.id()),
                                 mailroom::to_string(r.state()));
        EXPECT_EQ(not_final, 0);
        auto st = mailroom::test::all_stats_of(env);
        std::printf("named_names_free: %ld rounds, %ld requests (%llu replied, %llu rejected, %llu abandoned), %ld "
                    "incomings kept past the stop, %ld violations\n",
                    c.rounds.load(), c.requests.load(), static_cast<unsigned long long>(st.requests_replied),
                    static_cast<unsigned long long>(st.requests_rejected),
                    static_cast<unsigned long long>(st.requests_abandoned), c.kept.load(), c.violations.load());
        EXPECT_EQ(st.requests_posted, st.requests_replied + st.requests_rejected + st.requests_abandoned);
        EXPECT_EQ(st.named_registered, st.named_unregistered);
        EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
        EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    }
    // Answered after the environment is gone: counted nowhere that still exists, and harmless.
    std::lock_guard g(kept.m);
    for (auto& in : kept.kept) in.reply<int>(0);
    kept.kept.clear();
    EXPECT_EQ(c.violations.load(), 0);
    EXPECT_GT(c.rounds.load(), 100);
}
