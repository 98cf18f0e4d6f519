#include <mailroom/env/environment.hpp>

#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/session/fd_watch.hpp>
#include <mailroom/session/job.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

constexpr auto patience = 10s;  // bounds every wait: a failing test fails, never hangs

/// Blocked work waits on it until the test opens it (bounded: true once opened).
struct gate {
    std::promise<void> opener;
    std::shared_future<void> opened = opener.get_future().share();
    void open() { opener.set_value(); }
    bool wait() const { return opened.wait_for(patience) == std::future_status::ready; }
};

using test::eventually;

/// The snapshot's entry of the dispatcher named `name`, or null; valid while `s` lives.
const dispatcher_figures* find(const environment_stats& s, std::string_view name) {
    for (auto& d : s.dispatchers)
        if (d.name == name) return &d;
    return nullptr;
}

TEST(environment_stats, snapshot_shows_the_fds_each_loop_watches_and_a_job_queues_knobs_and_backlog) {
    gate g;  // outlives the environment: its threads are joined before it goes
    environment env({.name = "figures"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
    auto q = job_queue::make_job_queue(env, "jobs", {.floor = 1, .desired = 1, .max = 8});
    session s(env, {.name = "reader", .bind = pool.bind_loop(1)});
    int fds[3][2];
    for (auto& f : fds) ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, f), 0);
    std::atomic<int> calls{0};
    std::vector<fd_watch_handle> watches;
    for (auto& f : fds)
        watches.push_back(s.watch(f[0], fd_events::read, [&, fd = f[0]](fd_events) {
            char buf[16];
            while (::read(fd, buf, sizeof buf) > 0) {
            }
            calls.fetch_add(1);
            return fd_events::read;
        }));
    ASSERT_EQ(::write(fds[0][1], "x", 1), 1);
    ASSERT_TRUE(eventually([&] { return calls.load() >= 1; }));

    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    auto a = post_job(q, [] {});
    auto b = post_job(q, [] {});

    // The loop counts its callback after it returns: wait for the count, not only the call.
    ASSERT_TRUE(eventually([&] {
        const environment_stats now = env.stats();
        const auto* ev = find(now, "ev");
        return ev && ev->loops.size() == 2 && ev->loops[1].fd_callbacks >= 1;
    }));
    const environment_stats st = env.stats();
    ASSERT_EQ(st.dispatchers.size(), 3u);
    EXPECT_EQ(st.dispatchers.front().name, "default");
    EXPECT_TRUE(st.dispatchers.front().loops.empty());
    EXPECT_FALSE(st.dispatchers.front().jobs.has_value());

    const dispatcher_figures* ev = find(st, "ev");
    ASSERT_NE(ev, nullptr);
    EXPECT_EQ(ev->kind, "event_loop_pool");
    EXPECT_FALSE(ev->jobs.has_value());
    ASSERT_EQ(ev->loops.size(), 2u);
    EXPECT_EQ(ev->loops[0].fds_watched, 0u);
    EXPECT_EQ(ev->loops[1].fds_watched, 3u);
    EXPECT_EQ(ev->loops[1].contexts, 1u);
    EXPECT_GE(ev->loops[1].fd_callbacks, 1u);
    EXPECT_GE(ev->loops[1].cycles, 1u);
    EXPECT_GE(ev->loops[1].max_cycle_ns, 1u);
    EXPECT_GE(ev->loops[1].busy_ns, ev->loops[1].max_cycle_ns);

    const dispatcher_figures* jobs = find(st, "jobs");
    ASSERT_NE(jobs, nullptr);
    EXPECT_EQ(jobs->kind, "job_queue");
    EXPECT_TRUE(jobs->loops.empty());
    ASSERT_TRUE(jobs->jobs.has_value());
    EXPECT_EQ(jobs->jobs->name, "jobs");
    EXPECT_EQ(jobs->jobs->floor, 1u);
    EXPECT_EQ(jobs->jobs->desired, 1u);
    EXPECT_EQ(jobs->jobs->max, 8u);
    EXPECT_EQ(jobs->jobs->running, 1u);
    EXPECT_EQ(jobs->jobs->backlog, 2u);
    EXPECT_GE(jobs->jobs->threads, 1u);

    for (auto& w : watches) w.shutdown();
    for (auto& f : fds) {
        ::close(f[0]);
        ::close(f[1]);
    }
    g.open();
    ASSERT_TRUE(a.wait_for(patience));
    ASSERT_TRUE(b.wait_for(patience));
    ASSERT_TRUE(blocker.wait_for(patience));
    const environment_stats after = env.stats();
    EXPECT_EQ(find(after, "ev")->loops[1].fds_watched, 0u);
    EXPECT_EQ(find(after, "jobs")->jobs->backlog, 0u);
    EXPECT_EQ(find(after, "jobs")->jobs->completed, 3u);
    EXPECT_GT(find(after, "jobs")->jobs->run_total, 0ns);
    EXPECT_GE(find(after, "jobs")->jobs->run_total, find(after, "jobs")->jobs->run_max);
}

TEST(environment_stats, snapshot_counts_jobs_cancelled_refused_and_timed_out) {
    gate g;  // outlives the environment: its threads are joined before it goes
    environment env({.name = "outcomes"});
    // A thread waiting already (floor 1), and a deadline with room for a loaded machine: the
    // blocker must start, and `cancelled` be cancelled, before it (at 40 ms a test thread or a
    // job thread preempted that long let a job expire instead).
    constexpr auto deadline = 300ms;
    auto q = job_queue::make_job_queue(env, "q", {.floor = 1, .desired = 1, .backlog = 2, .deadline = deadline});
    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    std::atomic<bool> ran{false};
    auto cancelled = post_job(q, [&] { ran = true; });
    auto expires = post_job(q, [&] { ran = true; });
    auto refused = try_post_job(q, [&] { ran = true; });
    EXPECT_FALSE(refused);
    EXPECT_THROW((void)post_job(q, [] {}), job_queue_full_error);
    EXPECT_TRUE(cancelled.cancel());
    std::this_thread::sleep_for(deadline + 40ms);  // the deadline must pass for a job to time out
    g.open();
    ASSERT_TRUE(blocker.wait_for(patience));
    ASSERT_TRUE(cancelled.wait_for(patience));
    ASSERT_TRUE(expires.wait_for(patience));
    ASSERT_TRUE(q.drain(patience));
    EXPECT_EQ(expires.state(), job_state::expired);
    EXPECT_FALSE(ran.load());

    const environment_stats st = env.stats();
    const dispatcher_figures* d = find(st, "q");
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(d->jobs.has_value());
    EXPECT_EQ(d->jobs->cancelled, 1u);
    EXPECT_EQ(d->jobs->refused, 2u);
    EXPECT_EQ(d->jobs->expired, 1u);
    EXPECT_EQ(d->jobs->overran, 1u);  // the blocker ran past the deadline
    EXPECT_EQ(d->jobs->completed, 1u);
    EXPECT_EQ(d->jobs->failed, 0u);
    EXPECT_EQ(d->jobs->backlog, 0u);
    EXPECT_GE(d->jobs->wait_max, 0ns);
    EXPECT_GE(d->jobs->run_max, deadline + 40ms);
}

TEST(environment_stats, the_watchdogs_stalls_appear_on_the_stalled_dispatchers_entry_only) {
    gate g;  // outlives the environment: its threads are joined before it goes
    environment env({.name = "stalls"});
    std::mutex m;
    std::condition_variable cv;
    int reports = 0;  // under m
    watchdog_params wp{.timeout = 40ms, .action = stall_action::callback, .on_stall = [&](const stall_report& r) {
                           if (r.resumed) return;
                           std::lock_guard g(m);
                           ++reports;
                           cv.notify_all();
                       }};
    auto slow = one_thread::make_dispatcher(env, "slow", {.watchdog = wp});
    auto calm = one_thread::make_dispatcher(env, "calm", {.watchdog = wp});
    session stuck(env, {.name = "stuck", .bind = slow.bind()});
    ASSERT_TRUE(stuck.post([&] { g.wait(); }));
    {
        std::unique_lock l(m);
        const bool reported = cv.wait_for(l, patience, [&] { return reports >= 1; });
        if (!reported) g.open();
        ASSERT_TRUE(reported) << "no stall reported in 10 s";
    }
    const environment_stats during = env.stats();
    const dispatcher_figures* s = find(during, "slow");
    const dispatcher_figures* c = find(during, "calm");
    ASSERT_NE(s, nullptr);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(s->stalls_reported, 1u);
    EXPECT_EQ(s->stalled_now, 1u);
    EXPECT_GE(s->longest_stall, 40ms);
    EXPECT_EQ(c->stalls_reported, 0u);
    EXPECT_EQ(c->stalled_now, 0u);
    EXPECT_EQ(c->longest_stall, 0ns);
    EXPECT_EQ(during.stalls_reported, 1u);
    g.open();
    ASSERT_TRUE(eventually([&] {
        const environment_stats now = env.stats();
        return find(now, "slow")->stalled_now == 0;
    }));
    const environment_stats after = env.stats();
    EXPECT_EQ(find(after, "slow")->stalls_reported, 1u);
    EXPECT_GE(find(after, "slow")->longest_stall, find(during, "slow")->longest_stall);
    EXPECT_EQ(after.stalled_now, 0u);
}

}  // namespace
