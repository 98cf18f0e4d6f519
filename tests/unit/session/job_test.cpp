#include <mailroom/session/job.hpp>

#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/session.hpp>

#include <mailroom/session/detail/session_impl.hpp>

#include <gtest/gtest.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef MAILROOM_NO_POOL
// Heap allocations made by the threads that ask for them to be counted (the pool's test of
// steady state below). Replaces the program's operator new and delete; compiled out under the
// sanitizers, which bring their own (and compile the pool out).
namespace {
thread_local bool count_allocations = false;
std::atomic<std::uint64_t> counted_allocations{0};
}  // namespace

// Not inlined: GCC would otherwise pair an inlined new with free() and warn.
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (count_allocations) counted_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

constexpr auto patience = 10s;  // bounds every wait: a failing test fails, never hangs

/// A latch the jobs block on until the test opens it (bounded: a job never blocks forever).
class gate {
public:
    void open() {
        std::lock_guard g(m_);
        open_ = true;
        cv_.notify_all();
    }
    bool wait() {
        std::unique_lock l(m_);
        return cv_.wait_for(l, patience, [&] { return open_; });
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool open_ = false;
};

/// Polls `cond` (a bounded wait for a state that other threads reach).
template <class F>
bool eventually(F cond, std::chrono::nanoseconds limit = patience) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

TEST(job_queue, knobs_out_of_order_raise_a_typed_error_naming_the_queue) {
    environment env;
    try {
        (void)job_queue::make_job_queue(env, "slow", {.floor = 3, .desired = 2, .max = 4});
        FAIL() << "no error";
    } catch (const job_queue_limits_error& e) {
        EXPECT_NE(std::string(e.what()).find("job queue 'slow'"), std::string::npos) << e.what();
    }
    job_queue::handle q = job_queue::make_job_queue(env, "q", {.min = 1, .floor = 1, .desired = 2, .max = 4});
    EXPECT_THROW(q.set_desired(5), job_queue_limits_error);
    EXPECT_THROW(q.set_floor(0), job_queue_limits_error);
    EXPECT_THROW(q.set_floor(3), job_queue_limits_error);
    EXPECT_EQ(find_job_queue(env, "q"), q);
    EXPECT_FALSE(find_job_queue(env, "none"));
    EXPECT_THROW((void)q.bind(), binding_error);
}

TEST(job_queue, job_result_and_exception_reach_the_handle) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 2});
    auto ok = post_job(q, [] { return 42; });
    auto bad = post_job(q, []() -> int { throw std::runtime_error("boom"); });
    ASSERT_TRUE(ok.wait_for(patience));
    ASSERT_TRUE(bad.wait_for(patience));
    EXPECT_EQ(ok.get(), 42);
    EXPECT_EQ(bad.state(), job_state::failed);
    EXPECT_THROW((void)bad.get(), std::runtime_error);
    EXPECT_EQ(q.job_stats().failed, 1u);
}

// A job whose work or result is aligned beyond what the block pool gives keeps its alignment.
struct alignas(64) wide_result {
    int n = 0;
};

TEST(job_queue, over_aligned_work_and_results_keep_their_alignment) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 2});
    std::atomic<int> misaligned{0};
    std::vector<job<wide_result>> js;
    for (int i = 0; i < 32; ++i) {
        wide_result captured{i};
        js.push_back(post_job(q, [&misaligned, captured] {
            if (reinterpret_cast<std::uintptr_t>(&captured) % alignof(wide_result) != 0) misaligned.fetch_add(1);
            return captured;
        }));
    }
    for (int i = 0; i < 32; ++i) {
        ASSERT_TRUE(js[i].wait_for(patience));
        EXPECT_EQ(js[i].get().n, i);
        if (reinterpret_cast<std::uintptr_t>(&js[i].get()) % alignof(wide_result) != 0) misaligned.fetch_add(1);
    }
    EXPECT_EQ(misaligned.load(), 0);
}

TEST(job_queue, job_cancelled_before_start_never_runs_and_reports_cancelled) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1, .max = 1});
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    std::atomic<bool> ran{false};
    session s(env, {.name = "poster"});
    std::promise<job_state> seen;
    job<void> victim;
    std::promise<void> posted;
    s.post([&] {
        victim = post_job(q, [&] { ran = true; });
        victim.then([&](const job<void>& j) { seen.set_value(j.state()); });
        posted.set_value();
    });
    ASSERT_EQ(posted.get_future().wait_for(patience), std::future_status::ready);
    EXPECT_TRUE(victim.cancel());
    EXPECT_FALSE(victim.cancel());  // once
    g.open();
    ASSERT_TRUE(blocker.wait_for(patience));
    auto f = seen.get_future();
    ASSERT_EQ(f.wait_for(patience), std::future_status::ready);
    EXPECT_EQ(f.get(), job_state::cancelled);
    EXPECT_THROW(victim.get(), job_failed_error);
    EXPECT_FALSE(ran.load());
    EXPECT_EQ(q.job_stats().cancelled, 1u);
    EXPECT_EQ(q.job_stats().completed, 1u);
}

TEST(job_queue, running_job_sees_stop_requested_on_its_stop_token_when_cancelled) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1});
    std::atomic<bool> started{false};
    auto j = post_job(q, [&](std::stop_token st) {
        started = true;
        const auto until = std::chrono::steady_clock::now() + patience;
        while (!st.stop_requested() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        return st.stop_requested();
    });
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    EXPECT_EQ(j.state(), job_state::running);
    EXPECT_FALSE(j.cancel());  // running: stop requested, not unwound
    ASSERT_TRUE(j.wait_for(patience));
    EXPECT_EQ(j.state(), job_state::succeeded);
    EXPECT_TRUE(j.get());
}

TEST(job_queue, completion_runs_on_the_posting_session_serially_with_its_callbacks) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 4});
    session s(env, {.name = "home"});
    std::promise<std::thread::id> session_thread;
    s.post([&] { session_thread.set_value(std::this_thread::get_id()); });
    const auto home = session_thread.get_future().get();

    constexpr int jobs = 50;
    std::atomic<int> inside{0};
    std::atomic<int> overlaps{0};
    std::atomic<int> wrong_thread{0};
    std::atomic<int> wrong_name{0};
    std::atomic<int> done{0};
    std::atomic<long> sum{0};
    s.post([&] {
        for (int i = 0; i < jobs; ++i) {
            auto j = post_job(q, [i] { return i; });
            j.then([&](const job<int>& r) {
                if (inside.fetch_add(1) != 0) ++overlaps;
                if (std::this_thread::get_id() != home) ++wrong_thread;
                if (internal::current_context_name() != "home") ++wrong_name;
                sum += r.get();
                inside.fetch_sub(1);
                ++done;
            });
        }
    });
    ASSERT_TRUE(eventually([&] { return done.load() == jobs; }));
    EXPECT_EQ(overlaps.load(), 0);
    EXPECT_EQ(wrong_thread.load(), 0);
    EXPECT_EQ(wrong_name.load(), 0);
    EXPECT_EQ(sum.load(), jobs * (jobs - 1) / 2);
}

TEST(job_queue, then_on_a_job_posted_from_no_session_raises_a_usage_error) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1});
    auto j = post_job(q, [] {});
    EXPECT_THROW(j.then([](const job<void>&) {}), usage_error);
    ASSERT_TRUE(j.wait_for(patience));
}

TEST(job_queue, a_job_has_one_completion_and_a_second_raises_a_usage_error) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1});
    session s(env, {.name = "home"});
    std::promise<std::string> second;
    std::atomic<int> firsts{0};
    s.post([&] {
        auto j = post_job(q, [] { return 1; });
        j.then([&](const job<int>&) { ++firsts; });
        try {
            j.then([](const job<int>&) {});
            second.set_value("no error");
        } catch (const usage_error& e) {
            second.set_value(e.what());
        }
    });
    auto f = second.get_future();
    ASSERT_EQ(f.wait_for(patience), std::future_status::ready);
    EXPECT_NE(f.get().find("already has a completion"), std::string::npos);
    ASSERT_TRUE(eventually([&] { return firsts.load() == 1; }));
}

TEST(job_queue, desired_changed_at_run_time_is_obeyed) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 2, .max = 8});
    gate g;
    std::atomic<int> now{0};
    std::atomic<int> peak{0};
    std::vector<job<void>> js;
    for (int i = 0; i < 20; ++i)
        js.push_back(post_job(q, [&] {
            int n = ++now;
            int p = peak.load();
            while (n > p && !peak.compare_exchange_weak(p, n)) {
            }
            g.wait();
            --now;
        }));
    ASSERT_TRUE(eventually([&] { return now.load() == 2; }));
    std::this_thread::sleep_for(20ms);  // a third would show up here if the knob were ignored
    EXPECT_EQ(peak.load(), 2);
    q.set_desired(6);
    ASSERT_TRUE(eventually([&] { return now.load() == 6; }, 5s)) << "running " << now.load();
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(peak.load(), 6);
    EXPECT_EQ(q.job_stats().running, 6u);
    EXPECT_EQ(q.job_stats().desired, 6u);
    g.open();
    for (auto& j : js) ASSERT_TRUE(j.wait_for(patience));
    EXPECT_EQ(q.job_stats().completed, 20u);
}

TEST(job_queue, drain_returns_once_nothing_is_queued_or_running) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 2});
    gate g;
    std::atomic<int> ran{0};
    for (int i = 0; i < 10; ++i)
        (void)post_job(q, [&] {
            g.wait();
            ++ran;
        });
    EXPECT_FALSE(q.drain(0ns));
    EXPECT_FALSE(q.drain(20ms));  // the jobs still block
    g.open();
    EXPECT_TRUE(q.drain(patience));
    EXPECT_EQ(ran.load(), 10);
    EXPECT_EQ(q.job_stats().backlog, 0u);
    EXPECT_EQ(q.job_stats().running, 0u);
    session s(env, {.name = "home"});
    std::promise<bool> refused;
    gate held;
    s.post([&] {
        try {
            (void)post_job(q, [&] { held.wait(); });
            q.drain(patience);
            refused.set_value(false);
        } catch (const usage_error&) {
            refused.set_value(true);
        }
    });
    EXPECT_TRUE(refused.get_future().get());
    held.open();
    EXPECT_TRUE(q.drain(patience));
}

TEST(job_queue, idle_threads_exit_down_to_the_floor) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.floor = 1, .desired = 4, .idle_time = 30ms});
    EXPECT_EQ(q.job_stats().threads, 1u);
    gate g;
    std::vector<job<bool>> js;
    for (int i = 0; i < 4; ++i) js.push_back(post_job(q, [&] { return g.wait(); }));
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 4; }));
    EXPECT_EQ(q.job_stats().threads, 4u);
    g.open();
    ASSERT_TRUE(eventually([&] { return q.job_stats().threads == 1; })) << q.job_stats().threads;
    EXPECT_EQ(q.job_stats().threads_exited, 3u);
    std::this_thread::sleep_for(100ms);  // the floor thread stays past several idle times
    EXPECT_EQ(q.job_stats().threads, 1u);
}

TEST(job_queue, a_job_posted_while_a_thread_spins_is_taken_without_waking_a_sleeper) {
    // A spin as long as the test: the thread that finished a job is still looking for the next
    // when the test posts it, so no post has to wake anyone.
    environment env;
    auto q = job_queue::make_job_queue(env, "spin", {.floor = 1, .desired = 1, .max = 1, .idle_time = patience,
                                                      .spin = patience});
    auto first = post_job(q, [] {});
    ASSERT_TRUE(first.wait_for(patience));
    const auto before = q.job_stats();
    for (int i = 0; i < 50; ++i) {
        auto j = post_job(q, [] {});
        ASSERT_TRUE(j.wait_for(patience)) << i;
    }
    const auto after = q.job_stats();
    EXPECT_EQ(after.completed, 51u);
    EXPECT_EQ(after.wakeups, before.wakeups) << "a post woke a sleeping thread while one was spinning";
    EXPECT_EQ(after.threads, 1u);
}

TEST(job_queue, spin_zero_sleeps_at_once_and_every_post_wakes_the_sleeping_thread) {
    environment env;
    auto q = job_queue::make_job_queue(env, "nospin", {.floor = 1, .desired = 1, .max = 1, .idle_time = patience,
                                                        .spin = std::chrono::nanoseconds(0)});
    for (int i = 0; i < 20; ++i) {
        // idle_threads counts the thread once it waits for work (under the queue's lock): with
        // no spin it is asleep, and the post must wake it.
        ASSERT_TRUE(eventually([&] { return q.job_stats().idle_threads == 1; })) << i;
        auto j = post_job(q, [] {});
        ASSERT_TRUE(j.wait_for(patience)) << i;
    }
    const auto st = q.job_stats();
    EXPECT_EQ(st.completed, 20u);
    EXPECT_EQ(st.wakeups, 20u);
    EXPECT_EQ(st.spin_takes, 0u);
}

TEST(job_queue, a_spinning_thread_above_the_floor_still_exits_after_its_idle_time) {
    // The spin asked for is far longer than the idle time: the idle time wins.
    environment env;
    auto q = job_queue::make_job_queue(env, "spin_exit", {.floor = 0, .desired = 2, .idle_time = 30ms,
                                                           .spin = std::chrono::hours(1)});
    auto j = post_job(q, [] {});
    ASSERT_TRUE(j.wait_for(patience));
    ASSERT_TRUE(eventually([&] { return q.job_stats().threads == 0; })) << q.job_stats().threads;
    EXPECT_EQ(q.job_stats().threads_exited, 1u);
}

TEST(job_queue, a_burst_posted_while_one_thread_spins_still_runs_desired_jobs_at_once) {
    // One thread spins after the first job, three sleep: the spinner takes one job of the
    // burst, and the others must still wake the sleepers.
    environment env;
    auto q = job_queue::make_job_queue(env, "burst", {.floor = 4, .desired = 4, .max = 4, .idle_time = patience,
                                                       .spin = patience});
    auto first = post_job(q, [] {});
    ASSERT_TRUE(first.wait_for(patience));
    gate g;
    std::vector<job<bool>> js;
    for (int i = 0; i < 4; ++i) js.push_back(post_job(q, [&] { return g.wait(); }));
    EXPECT_TRUE(eventually([&] { return q.job_stats().running == 4; })) << q.job_stats().running;
    g.open();
    for (auto& j : js) EXPECT_TRUE(j.wait_for(patience));
    EXPECT_TRUE(q.drain(patience));
}

TEST(job_queue, try_post_on_a_full_backlog_is_refused_and_counted) {
    environment env;
    auto q = job_queue::make_job_queue(env, "full", {.desired = 1, .backlog = 2});
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    auto a = post_job(q, [] {});
    auto b = try_post_job(q, [] {});
    EXPECT_TRUE(a);
    EXPECT_TRUE(b);
    auto c = try_post_job(q, [] {});
    EXPECT_FALSE(c);
    try {
        (void)post_job(q, [] {});
        FAIL() << "no error";
    } catch (const job_queue_full_error& e) {
        EXPECT_NE(std::string(e.what()).find("job queue 'full'"), std::string::npos) << e.what();
    }
    EXPECT_EQ(q.job_stats().refused, 2u);
    EXPECT_EQ(q.job_stats().backlog, 2u);
    g.open();
    ASSERT_TRUE(a.wait_for(patience));
    ASSERT_TRUE(b.wait_for(patience));
}

std::vector<int> run_order(job_queue::order order) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1, .order = order});
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    EXPECT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    std::mutex m;
    std::vector<int> seen;
    std::vector<job<void>> js;
    for (int i = 1; i <= 5; ++i)
        js.push_back(post_job(q, [&, i] {
            std::lock_guard l(m);
            seen.push_back(i);
        }));
    g.open();
    for (auto& j : js) EXPECT_TRUE(j.wait_for(patience));
    return seen;
}

TEST(job_queue, fifo_runs_a_posters_jobs_oldest_first_and_lifo_newest_first) {
    EXPECT_EQ(run_order(job_queue::order::fifo), (std::vector<int>{1, 2, 3, 4, 5}));
    EXPECT_EQ(run_order(job_queue::order::lifo), (std::vector<int>{5, 4, 3, 2, 1}));
}

/// Which poster's jobs ran, in order: each job posted from a session's callback appends the
/// poster's letter when it runs.
struct run_log {
    std::mutex m;
    std::string seen;
    std::vector<job<void>> js;

    void post_from(const job_queue::handle& q, session& s, char who, int n) {
        std::promise<void> done;
        s.post([&] {
            for (int i = 0; i < n; ++i)
                js.push_back(post_job(q, [this, who] {
                    std::lock_guard l(m);
                    seen += who;
                }));
            done.set_value();
        });
        ASSERT_EQ(done.get_future().wait_for(patience), std::future_status::ready);
    }
    bool wait() {
        for (auto& j : js)
            if (!j.wait_for(patience)) return false;
        return true;
    }
};

TEST(job_queue, a_noisy_poster_does_not_starve_another) {
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1});
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    run_log log;
    session noisy(env, {.name = "noisy"});
    session quiet(env, {.name = "quiet"});
    log.post_from(q, noisy, 'n', 20);
    log.post_from(q, quiet, 'q', 2);
    g.open();
    ASSERT_TRUE(log.wait());
    ASSERT_EQ(log.seen.size(), 22u);
    // Round-robin between posters: n q n q n n n ...
    EXPECT_EQ(log.seen.substr(0, 5), "nqnqn");
}

TEST(job_queue, job_not_started_by_its_deadline_is_dropped_and_says_expired) {
    environment env;
    // A thread waiting already (floor 1), and a deadline with room for a loaded machine to
    // start the blocker before it (at 30 ms, a job thread that started late let the blocker
    // expire too, and the counts were off by one each).
    constexpr auto deadline = 300ms;
    auto q = job_queue::make_job_queue(env, "q", {.floor = 1, .desired = 1, .deadline = deadline});
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    std::atomic<bool> ran{false};
    auto late = post_job(q, [&] { ran = true; });
    std::this_thread::sleep_for(deadline + 30ms);  // time must pass for a deadline to
    g.open();
    ASSERT_TRUE(late.wait_for(patience));
    ASSERT_TRUE(blocker.wait_for(patience));
    EXPECT_EQ(late.state(), job_state::expired);
    EXPECT_FALSE(ran.load());
    try {
        late.get();
        FAIL() << "no error";
    } catch (const job_failed_error& e) {
        EXPECT_EQ(e.state(), job_state::expired);
    }
    EXPECT_EQ(q.job_stats().expired, 1u);
    EXPECT_EQ(q.job_stats().overran, 1u);  // the blocker ran past the deadline
}

TEST(job_queue, teardown_with_jobs_queued_and_running_tells_every_job_and_does_not_hang) {
    auto env = std::make_unique<environment>();
    auto q = job_queue::make_job_queue(*env, "q", {.desired = 1});
    std::atomic<bool> started{false};
    auto running = post_job(q, [&](std::stop_token st) {
        started = true;
        const auto until = std::chrono::steady_clock::now() + patience;
        while (!st.stop_requested() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        return st.stop_requested();
    });
    std::atomic<bool> queued_ran{false};
    std::atomic<bool> completion_ran{false};
    session s(*env, {.name = "home"});
    job<void> queued;
    std::promise<void> posted;
    s.post([&] {
        queued = post_job(q, [&] { queued_ran = true; });
        queued.then([&](const job<void>&) { completion_ran = true; });
        posted.set_value();
    });
    ASSERT_EQ(posted.get_future().wait_for(patience), std::future_status::ready);
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    auto stopped = std::async(std::launch::async, [&] { env.reset(); });
    ASSERT_EQ(stopped.wait_for(patience), std::future_status::ready) << "teardown hangs";
    EXPECT_EQ(running.state(), job_state::succeeded);
    EXPECT_TRUE(running.get());  // it saw the stop request
    EXPECT_EQ(queued.state(), job_state::discarded);
    EXPECT_FALSE(queued_ran.load());
    // The session went first: the discarded job's completion did not run, and is counted.
    EXPECT_FALSE(completion_ran.load());
    EXPECT_EQ(q.job_stats().completions_dropped, 1u);
    // Statistics stay readable after the environment stopped.
    const auto st = q.job_stats();
    EXPECT_EQ(st.discarded, 1u);
    EXPECT_EQ(st.completed, 1u);
    EXPECT_EQ(st.threads, 0u);
    EXPECT_EQ(st.posted, st.completed + st.cancelled + st.expired + st.discarded);
}

TEST(job_queue, co_await_resumes_on_the_posting_session) {
    // A minimal coroutine type: the named layer's task is above this one.
    struct fire {
        struct promise_type {
            fire get_return_object() { return {}; }
            std::suspend_never initial_suspend() noexcept { return {}; }
            std::suspend_never final_suspend() noexcept { return {}; }
            void return_void() {}
            void unhandled_exception() { std::terminate(); }
        };
    };
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.desired = 1});
    session s(env, {.name = "co"});
    std::promise<std::pair<int, std::string>> out;
    auto body = [&]() -> fire {
        job<int> j = co_await post_job(q, [] { return 7; });
        out.set_value({j.get(), internal::current_context_name()});
    };
    s.post([&] { body(); });
    auto f = out.get_future();
    ASSERT_EQ(f.wait_for(patience), std::future_status::ready);
    const auto [v, where] = f.get();
    EXPECT_EQ(v, 7);
    EXPECT_EQ(where, "co");
}


#ifndef MAILROOM_NO_POOL
TEST(job_queue, posting_a_job_and_running_its_completion_takes_nothing_from_the_heap_in_steady_state) {
    // A job's record, its stop state and its completion come from the recycling pool, or from
    // nowhere: once warm, a session that posts jobs and runs their completions allocates nothing.
    // "Warm" is when each job thread's free list has grown to the point where it gives blocks
    // back (two batches of 256): until then the blocks a job thread frees stay with it, and the
    // session takes new ones from the heap. Which job thread runs a job is the scheduler's
    // choice, so a thread that ran few jobs while warming up may fill its list later (seen under
    // load: 65 allocations in a round). So the rounds after the warm-up are measured one by one
    // until one allocates (almost) nothing, which a pool reaches within a round or two and a
    // heap-backed job never does (three blocks a job).
    environment env;
    auto q = job_queue::make_job_queue(env, "q", {.floor = 2, .desired = 2, .max = 2});
    session s(env, {.name = "home"});
    constexpr int warm = 4000, measured = 4000, window = 32, max_rounds = 6;
    constexpr std::uint64_t steady = measured / 100u;
    int posted = 0, done = 0;
    bool finished = false;
    std::uint64_t before = 0;
    std::vector<std::uint64_t> rounds;  // heap allocations in each measured round
    std::promise<void> result;
    std::function<void()> post_one = [&] {
        ++posted;
        post_job(q, [] {}).then([&](const job<void>& j) {
            j.get();
            ++done;
            if (finished) return;
            if (done == warm) before = counted_allocations.load();
            if (done > warm && (done - warm) % measured == 0) {
                const std::uint64_t now = counted_allocations.load();
                rounds.push_back(now - before);
                before = now;
                if (rounds.back() < steady || rounds.size() == max_rounds) {
                    finished = true;
                    count_allocations = false;
                    result.set_value();
                    return;
                }
            }
            post_one();
        });
    };
    s.post([&] {
        count_allocations = true;  // this session's thread only
        for (int i = 0; i < window; ++i) post_one();
    });
    auto f = result.get_future();
    ASSERT_EQ(f.wait_for(patience), std::future_status::ready);
    // Not a strict zero: the pool may grow a list of its own now and then. Before the pool held
    // jobs, every job took three blocks from the heap.
    std::string seen;
    for (std::uint64_t r : rounds) {
        seen += ' ';
        seen += std::to_string(r);
    }
    EXPECT_LT(rounds.back(), steady) << "heap allocations per round of " << measured << " jobs:" << seen;
}
#endif

TEST(job_queue, a_completion_set_while_its_job_finishes_runs_exactly_once) {
    // then() from a plain thread races the job thread that finishes the job: whichever comes
    // second runs the completion, never both, never neither.
    environment env;
    auto q = job_queue::make_job_queue(env, "race", {.floor = 2, .desired = 2, .max = 2});
    session s(env, {.name = "home"});
    constexpr int jobs = 3000;
    std::vector<std::atomic<int>> runs(jobs);
    std::atomic<int> total{0};
    for (int i = 0; i < jobs; ++i) {
        auto j = post_job(q, [] {});
        if (i % 2) std::this_thread::yield();  // some are final before then(), some are not
        j.then(s, [&, i](const job<void>&) {
            runs[i].fetch_add(1);
            total.fetch_add(1);
        });
    }
    ASSERT_TRUE(eventually([&] { return total.load() == jobs; })) << total.load() << " of " << jobs;
    EXPECT_TRUE(q.drain(patience));
    std::this_thread::sleep_for(10ms);  // a second run of any of them would show here
    int twice = 0;
    for (auto& r : runs) twice += r.load() != 1;
    EXPECT_EQ(twice, 0);
    EXPECT_EQ(total.load(), jobs);
}

TEST(job_queue, every_thread_waiting_for_a_job_wakes_when_it_finishes) {
    environment env;
    auto q = job_queue::make_job_queue(env, "wait", {.desired = 1});
    gate g;
    auto j = post_job(q, [&] { return g.wait(); });
    EXPECT_FALSE(j.wait_for(5ms));  // still running: the wait times out
    std::vector<std::future<bool>> waiters;
    for (int i = 0; i < 4; ++i)
        waiters.push_back(std::async(std::launch::async, [j] { return j.wait_for(patience); }));
    std::this_thread::sleep_for(10ms);  // most of them asleep on the job by now
    g.open();
    for (auto& w : waiters) {
        ASSERT_EQ(w.wait_for(patience + 1s), std::future_status::ready);
        EXPECT_TRUE(w.get());
    }
    EXPECT_TRUE(j.get());
}

TEST(job_queue, a_session_destroyed_with_jobs_in_flight_drops_their_completions_and_frees_their_records) {
    environment env;
    auto q = job_queue::make_job_queue(env, "inflight", {.desired = 2});
    gate g;
    std::atomic<int> completions{0};
    constexpr int jobs = 40;
    {
        session s(env, {.name = "gone"});
        std::promise<void> posted;
        s.post([&] {
            for (int i = 0; i < jobs; ++i) post_job(q, [&] { g.wait(); }).then([&](const job<void>&) { ++completions; });
            posted.set_value();
        });
        ASSERT_EQ(posted.get_future().wait_for(patience), std::future_status::ready);
        s.destroy();
    }
    g.open();
    ASSERT_TRUE(q.drain(patience));
    ASSERT_TRUE(eventually([&] { return q.job_stats().completions_dropped == jobs; }))
        << q.job_stats().completions_dropped;
    EXPECT_EQ(completions.load(), 0);
    // The records went back to the pool (LeakSanitizer checks them in its build); the queue
    // carries on for another session.
    session next(env, {.name = "next"});
    std::promise<int> sum;
    next.post([&] {
        auto left = std::make_shared<int>(jobs);
        auto total = std::make_shared<int>(0);
        for (int i = 0; i < jobs; ++i)
            post_job(q, [i] { return i; }).then([&, left, total](const job<int>& r) {
                *total += r.get();
                if (--*left == 0) sum.set_value(*total);
            });
    });
    auto f = sum.get_future();
    ASSERT_EQ(f.wait_for(patience), std::future_status::ready);
    EXPECT_EQ(f.get(), jobs * (jobs - 1) / 2);
}

TEST(job_queue, posters_take_turns_while_their_sub_queues_empty_at_different_times) {
    environment env;
    auto q = job_queue::make_job_queue(env, "turns", {.desired = 1});
    session a(env, {.name = "a"}), b(env, {.name = "b"}), c(env, {.name = "c"});
    {
        gate g;
        auto blocker = post_job(q, [&] { return g.wait(); });
        ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
        run_log log;
        log.post_from(q, a, 'a', 3);
        log.post_from(q, b, 'b', 1);
        log.post_from(q, c, 'c', 2);
        g.open();
        ASSERT_TRUE(log.wait());
        EXPECT_EQ(log.seen, "abcaca");
    }
    // b's sub-queue emptied and went; posting again gives it its turn again.
    gate g;
    auto blocker = post_job(q, [&] { return g.wait(); });
    ASSERT_TRUE(eventually([&] { return q.job_stats().running == 1; }));
    run_log log;
    log.post_from(q, b, 'b', 2);
    log.post_from(q, a, 'a', 1);
    g.open();
    ASSERT_TRUE(log.wait());
    EXPECT_EQ(log.seen, "bab");
}

/// Makes the threads of this process named `comm` run only when their CPU has nothing else to
/// run (SCHED_IDLE); how many it found.
int make_idle_priority(const std::string& comm) {
    int found = 0;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream f(task.path() / "comm");
        std::string name;
        std::getline(f, name);
        if (name != comm) continue;
        sched_param p{};
        if (::sched_setscheduler(std::stoi(task.path().filename().string()), SCHED_IDLE, &p) == 0) ++found;
    }
    return found;
}

TEST(job_queue, a_burst_of_posts_wakes_each_sleeping_thread_once) {
    // Both threads sleep; a burst of posts must wake each of them once. A thread that was woken
    // and has not run yet is coming for a job: waking it again for every post meanwhile costs
    // the poster a system call each (it did: every post of W11 woke a thread). The queue's
    // threads share the test's one CPU at idle priority, so the woken threads run only once
    // the burst is over: the posts see them woken, not yet running.
    cpu_set_t before;
    ASSERT_EQ(::sched_getaffinity(0, sizeof before, &before), 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(std::max(::sched_getcpu(), 0), &one);
    ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
    constexpr int rounds = 4;
    std::vector<std::uint64_t> woken;
    {
        environment env;  // its threads start on the one CPU
        auto q = job_queue::make_job_queue(env, "burst", {.floor = 2, .desired = 2, .max = 2, .idle_time = patience,
                                                           .spin = std::chrono::nanoseconds(0)});
        EXPECT_EQ(make_idle_priority("burst#job"), 2);
        for (int r = 0; r < rounds; ++r) {
            EXPECT_TRUE(eventually([&] { return q.job_stats().idle_threads == 2; }));
            const auto before_round = q.job_stats().wakeups;
            gate g;
            std::vector<job<bool>> js;
            for (int i = 0; i < 200; ++i) js.push_back(post_job(q, [&] { return g.wait(); }));
            EXPECT_TRUE(eventually([&] { return q.job_stats().running == 2; }));
            woken.push_back(q.job_stats().wakeups - before_round);
            g.open();
            for (auto& j : js) EXPECT_TRUE(j.wait_for(patience));
        }
    }
    ASSERT_EQ(::sched_setaffinity(0, sizeof before, &before), 0);
    EXPECT_EQ(woken, std::vector<std::uint64_t>(rounds, 2)) << "posts woke threads that were woken already";
}

TEST(job_queue, a_job_posted_as_its_only_thread_goes_to_sleep_still_runs) {
    // Each completion posts the next job while the one thread that ran the last one goes to
    // sleep (no spin): a post that takes no lock must never leave its job unseen by it. A job
    // left behind would wait for the thread's idle time, which is the test's patience.
    environment env;
    auto q = job_queue::make_job_queue(env, "pingpong", {.floor = 1, .desired = 1, .max = 1, .idle_time = patience,
                                                          .spin = std::chrono::nanoseconds(0)});
    session s(env, {.name = "home"});
    constexpr int jobs = 20000;
    int done = 0;
    std::promise<void> finished;
    std::function<void()> post_one = [&] {
        post_job(q, [] {}).then([&](const job<void>&) {
            if (++done == jobs)
                finished.set_value();
            else
                post_one();
        });
    };
    s.post([&] { post_one(); });
    ASSERT_EQ(finished.get_future().wait_for(patience), std::future_status::ready) << "stuck after " << done;
    EXPECT_EQ(q.job_stats().completed, static_cast<std::uint64_t>(jobs));
}

TEST(job_queue, jobs_posted_while_every_thread_is_busy_are_counted_queued_and_discarded_at_teardown) {
    // With every thread busy, a post leaves its job for the threads to take when they look;
    // until then it is still queued: counted in the backlog, cancellable, and discarded (and
    // told) at the teardown.
    auto env = std::make_unique<environment>();
    auto q = job_queue::make_job_queue(*env, "busy", {.floor = 1, .desired = 1, .max = 1, .idle_time = patience});
    std::atomic<bool> started{false};
    auto running = post_job(q, [&](std::stop_token st) {
        started = true;
        const auto until = std::chrono::steady_clock::now() + patience;
        while (!st.stop_requested() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    });
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    std::atomic<int> ran{0};
    std::vector<job<void>> queued;
    for (int i = 0; i < 10; ++i) queued.push_back(post_job(q, [&] { ++ran; }));
    EXPECT_EQ(q.job_stats().backlog, 10u);
    EXPECT_EQ(q.job_stats().posted, 11u);
    EXPECT_TRUE(queued[3].cancel());
    EXPECT_EQ(queued[3].state(), job_state::cancelled);
    EXPECT_EQ(q.job_stats().backlog, 9u);
    env.reset();
    EXPECT_EQ(ran.load(), 0);
    for (int i = 0; i < 10; ++i)
        EXPECT_EQ(queued[i].state(), i == 3 ? job_state::cancelled : job_state::discarded) << i;
    const auto st = q.job_stats();
    EXPECT_EQ(st.discarded, 9u);
    EXPECT_EQ(st.cancelled, 1u);
    EXPECT_EQ(st.posted, st.completed + st.cancelled + st.expired + st.discarded + st.running + st.backlog);
    EXPECT_THROW((void)post_job(q, [] {}), environment_stopped_error);
}

}  // namespace
