#include <mailroom/env/environment.hpp>

#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/session/job.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
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

}  // namespace
