// Jobs posted, cancelled and completed from several threads and sessions while other threads
// move the queue's desired concurrency up and down, then the environment torn down with jobs
// still queued and running: every job ends in exactly one final state, the queue's books
// balance, every completion posted from a session that still lived ran once, and nothing hangs.

#include <mailroom/session/job.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;

namespace {

TEST(job_queue_churn, posting_cancelling_and_resizing_from_many_threads_keeps_the_books) {
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 3s : 1500ms);
    const long rounds = mailroom::test::rounds(20'000);
    std::atomic<long> ran{0}, completions{0}, thens{0};
    std::vector<std::vector<mailroom::job<int>>> kept(3);
    mailroom::job_queue::handle q;
    {
        auto env = std::make_unique<mailroom::environment>();
        q = mailroom::job_queue::make_job_queue(
            *env, "churn", {.floor = 1, .desired = 4, .max = 8, .idle_time = 2ms, .backlog = 500});
        std::vector<mailroom::session> sessions;
        for (int i = 0; i < 2; ++i) sessions.emplace_back(*env, mailroom::session_options{});

        std::vector<std::thread> ts;
        for (int k = 0; k < 3; ++k)
            ts.emplace_back([&, k] {
                std::mt19937 rng(static_cast<unsigned>(k) * 7919u + 1);
                for (long i = 0; i < rounds && std::chrono::steady_clock::now() < end; ++i) {
                    auto work = [&ran](std::stop_token st) {
                        ran.fetch_add(1);
                        for (int spin = 0; spin < 200 && !st.stop_requested(); ++spin) std::this_thread::yield();
                        return 1;
                    };
                    switch (rng() % 4) {
                    case 0: {  // from a session, with a completion there
                        std::promise<mailroom::job<int>> p;
                        auto f = p.get_future();
                        sessions[rng() % 2].post([&, work] {
                            auto j = mailroom::try_post_job(q, work);
                            if (j) {
                                thens.fetch_add(1);
                                j.then([&](const mailroom::job<int>&) { completions.fetch_add(1); });
                            }
                            p.set_value(j);
                        });
                        if (f.wait_for(10s) == std::future_status::ready) kept[k].push_back(f.get());
                        break;
                    }
                    case 1: {  // from this thread, then cancelled
                        auto j = mailroom::try_post_job(q, work);
                        j.cancel();
                        kept[k].push_back(std::move(j));
                        break;
                    }
                    case 2:
                        kept[k].push_back(mailroom::try_post_job(q, work));
                        break;
                    case 3:
                        q.set_desired(1 + rng() % 8);
                        break;
                    }
                    if (kept[k].size() > 200 && kept[k].front().done()) kept[k].erase(kept[k].begin());
                }
            });
        for (auto& t : ts) t.join();
        for (auto& s : sessions)
            s.post([] {});
        auto stopped = std::async(std::launch::async, [&] { env.reset(); });
        ASSERT_EQ(stopped.wait_for(30s), std::future_status::ready) << "teardown hangs";
    }
    const auto st = q.job_stats();
    EXPECT_EQ(st.posted, st.completed + st.cancelled + st.expired + st.discarded);
    EXPECT_EQ(static_cast<std::uint64_t>(ran.load()), st.completed);
    EXPECT_EQ(st.threads, 0u);
    EXPECT_EQ(st.running, 0u);
    EXPECT_EQ(st.backlog, 0u);
    EXPECT_LE(completions.load(), thens.load());
    for (auto& v : kept)
        for (auto& j : v) {
            if (!j) continue;
            EXPECT_TRUE(j.done()) << "job #" << j.id() << " " << mailroom::to_string(j.state());
        }
}

}  // namespace
