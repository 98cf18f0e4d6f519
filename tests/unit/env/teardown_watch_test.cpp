#include <mailroom/env/environment.hpp>

#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/session/job.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <mutex>
#include <string>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

constexpr auto patience = 10s;  // bounds every wait: a failing test fails, never hangs

// The teardown watch's reports, and what was logged.
struct overruns {
    std::mutex m;
    std::vector<handler_overrun> seen;  // under m
    std::vector<std::string> logged;    // under m
    std::atomic<bool> release{false};   // set by the first report: the stuck work may return

    environment_options options(std::string name, std::chrono::nanoseconds deadline) {
        environment_options o;
        o.name = std::move(name);
        o.teardown_deadline = deadline;
        o.log = [this](std::string_view t) {
            std::lock_guard g(m);
            logged.emplace_back(t);
        };
        o.on_overrun = [this](const handler_overrun& h) {
            {
                std::lock_guard g(m);
                seen.push_back(h);
            }
            release = true;
        };
        return o;
    }
};

TEST(teardown_watch, a_job_still_running_at_teardown_is_named_as_the_watchdog_names_a_job) {
    overruns w;
    environment env(w.options("jobs", 60ms));
    // Not watched at run time: the teardown watch is the one that reports it.
    auto q = job_queue::make_job_queue(env, "disk", {.desired = 1, .watchdog = {.timeout = 0ns}});
    auto j = post_job(q, {.name = "flush"}, [&] { test::eventually([&] { return w.release.load(); }, patience); });
    ASSERT_TRUE(test::eventually([&] { return q.job_stats().running == 1; }));
    env.stop();
    const teardown_report r = env.join();
    ASSERT_EQ(r.overruns.size(), 1u);
    const handler_overrun& o = r.overruns.front();
    EXPECT_EQ(o.dispatcher, "disk");
    EXPECT_EQ(o.message_type, "job 'flush'");
    EXPECT_FALSE(o.stall_reported);
    const std::string what = "job 'flush' (job #" + std::to_string(j.id()) +
                             " posted from a thread that runs no session or agent)";
    EXPECT_NE(o.text.find("for a job that has not returned: job queue 'disk' thread 0 (thread "), std::string::npos)
        << o.text;
    EXPECT_NE(o.text.find("is running " + what + " (policy: report_and_wait)"), std::string::npos) << o.text;
    std::lock_guard g(w.m);
    bool logged = false;
    for (auto& l : w.logged) logged = logged || l == o.text;
    EXPECT_TRUE(logged) << o.text;
}

TEST(teardown_watch, a_late_look_does_not_report_a_handler_that_started_just_before_it_as_overrunning) {
    // The watch's delay made explicit: its thread is held in on_overrun (the report of a handler
    // that holds the teardown) for longer than the deadline, as a watch starved of the CPU would
    // be, and a job starts just before the watch is let go. The job runs well under the
    // deadline: no report may name it, nor say it ran longer than it did.
    constexpr auto deadline = 300ms;
    std::mutex m;
    std::condition_variable cv;
    bool held = false, let_go = false;  // under m
    std::vector<handler_overrun> seen;  // under m
    environment_options o;
    o.name = "late";
    o.teardown_deadline = deadline;
    o.log = [](std::string_view) {};
    o.on_overrun = [&](const handler_overrun& h) {
        std::unique_lock g(m);
        seen.push_back(h);
        if (held || h.context != "session 'holder'") return;
        held = true;  // only the first report of the holder holds the watch
        cv.notify_all();
        cv.wait_for(g, patience, [&] { return let_go; });
    };
    environment env(std::move(o));
    auto q = job_queue::make_job_queue(env, "disk", {.desired = 1, .watchdog = {.timeout = 0ns}});
    std::atomic<bool> release_holder{false}, release_first{false}, quick_started{false}, quick_done{false};
    std::atomic<bool> holder_running{false};
    std::atomic<std::int64_t> quick_ran_ns{0};
    session holder(env, {.name = "holder"});
    ASSERT_TRUE(holder.post([&] {
        holder_running = true;
        test::eventually([&] { return release_holder.load(); }, patience);
    }));
    holder.detach();  // the teardown is what waits for it
    auto first = post_job(q, {.name = "first"},
                          [&] { test::eventually([&] { return release_first.load(); }, patience); });
    auto quick = post_job(q, {.name = "quick"}, [&] {
        const auto t0 = std::chrono::steady_clock::now();
        quick_started = true;
        std::this_thread::sleep_for(150ms);  // half the deadline: long enough to be looked at
        quick_ran_ns = std::chrono::nanoseconds(std::chrono::steady_clock::now() - t0).count();
        quick_done = true;
    });
    // Both under way before the stop: a call still queued when the environment stops is
    // discarded, never run, and the holder would never be reported.
    ASSERT_TRUE(test::eventually([&] { return q.job_stats().running == 1 && holder_running.load(); }));
    env.stop();
    teardown_report r;
    std::thread joiner([&] { r = env.join(); });
    auto finish = [&] {
        {
            std::lock_guard g(m);
            let_go = true;
            cv.notify_all();
        }
        release_first = true;
        release_holder = true;
        joiner.join();
    };
    bool was_held;
    {
        std::unique_lock g(m);
        was_held = cv.wait_for(g, patience, [&] { return held; });
    }
    if (!was_held) finish();
    ASSERT_TRUE(was_held) << "the holder was not reported in 10 s";
    // The watch's last look is now further back than the deadline.
    std::this_thread::sleep_for(deadline + 100ms);
    release_first = true;
    const bool started = test::eventually([&] { return quick_started.load(); }, patience);
    {
        std::lock_guard g(m);
        let_go = true;
        cv.notify_all();
    }
    const bool done = test::eventually([&] { return quick_done.load(); }, patience);
    finish();
    ASSERT_TRUE(started && done) << "the quick job did not run";
    // A machine that starved the quick job itself past the deadline makes a report of it true
    // (its 150 ms sleep took as long); none may say it ran longer than it did.
    const std::chrono::nanoseconds quick_ran(quick_ran_ns.load());
    for (const handler_overrun& h : r.overruns) {
        if (h.message_type != "job 'quick'") continue;
        EXPECT_GE(quick_ran, deadline) << "reported though it ran under the deadline: " << h.text;
        EXPECT_LE(h.running_for, quick_ran) << h.text;
    }
    std::lock_guard g(m);
    EXPECT_EQ(seen.size(), r.overruns.size());
}

}  // namespace
