// Blocking work on a job queue: a session posts jobs that sleep (honouring their stop_token) to
// a queue running one job at a time with a backlog of two, and gets each completion back on
// itself with then(), so its own state needs no lock. One queued job is cancelled (its
// completion says so), a post to the full backlog is refused, `desired` is raised while a job
// waits (it starts at once), and a coroutine co_awaits a job. The queue's books balance at the
// end. See docs/job-queues.md.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Blocking work: sleeps in short steps for `how_long`, or until stop is requested or `release`
// is set. Returns how many steps it slept.
int sleepy_work(std::stop_token st, std::chrono::milliseconds how_long, const std::atomic<bool>* release) {
    int steps = 0;
    for (const auto end = std::chrono::steady_clock::now() + how_long; std::chrono::steady_clock::now() < end; ++steps) {
        if (st.stop_requested() || (release && release->load())) break;
        std::this_thread::sleep_for(1ms);
    }
    return steps;
}

// Inside a session's callback: the job runs on the queue, and the coroutine resumes on the
// session. Parameters by value (the coroutine outlives the call that started it).
mailroom::task checksum(mailroom::job_queue::handle q, std::promise<int>* out) {
    mailroom::job<int> j = co_await mailroom::post_job(q, [] { return 6 * 7; });
    out->set_value(j.get());
}

}  // namespace

int main() {
    example::checks check(64);

    // What the completions tell; written on the session only (then() runs there, one at a
    // time), read by main() once `all_done` is ready.
    std::vector<std::string> outcomes;
    std::promise<void> all_done;
    std::promise<int> coroutine_result;
    std::atomic<bool> release_first{false};
    mailroom::job<int> first, second, third;
    bool refused_when_full = false;

    mailroom::environment env({.name = "jobs"});
    auto disk = mailroom::job_queue::make_job_queue(
        env, "disk", {.floor = 0, .desired = 1, .max = 4, .idle_time = 100ms, .backlog = 2});
    {
        mailroom::session client(env, {.name = "client"});

        // The completion of each job, on the client session whatever the job's final state.
        auto record = [&](const char* name) {
            return [&, name](const mailroom::job<int>& j) {
                std::string what = std::string(name) + ": " + mailroom::to_string(j.state());
                try {
                    what += ", slept " + std::to_string(j.get()) + " ms";
                } catch (const mailroom::job_failed_error& e) {
                    what += std::string(" (") + e.what() + ")";
                }
                outcomes.push_back(what);
                if (outcomes.size() == 3) all_done.set_value();
            };
        };

        // 1. A job that blocks until main() lets it go (2 s at most): it holds the one slot.
        client.post([&] {
            first = mailroom::post_job(disk, [&](std::stop_token st) { return sleepy_work(st, 2000ms, &release_first); });
            first.then(record("first"));
        });
        check(example::eventually([&] { return disk.job_stats().running == 1; }), "the first job runs");

        // 2. Two more wait behind it (the backlog holds two), a third is refused, and one of
        //    those waiting is cancelled: it never runs, but its completion still comes.
        std::promise<void> posted;
        client.post([&] {
            second = mailroom::post_job(disk, [](std::stop_token st) { return sleepy_work(st, 20ms, nullptr); });
            second.then(record("second"));
            third = mailroom::post_job(disk, [](std::stop_token st) { return sleepy_work(st, 20ms, nullptr); });
            third.then(record("third"));
            refused_when_full = !mailroom::try_post_job(disk, [] { return 0; });
            third.cancel();
            posted.set_value();
        });
        check(posted.get_future().wait_for(2s) == std::future_status::ready, "two more jobs posted");
        check(refused_when_full, "a fourth is refused: the backlog is full");
        check(third.state() == mailroom::job_state::cancelled, "the third is cancelled before it started");

        // 3. More concurrency while the second waits: it starts at once, next to the first.
        disk.set_desired(2);
        check(example::eventually([&] { return disk.job_stats().running == 2; }), "raising desired starts the waiting job");
        release_first = true;

        auto done = all_done.get_future();
        check(done.wait_for(2s) == std::future_status::ready, "three completions came back on the session");
        for (const std::string& o : outcomes) std::printf("  %s\n", o.c_str());
        check(second.state() == mailroom::job_state::succeeded && first.state() == mailroom::job_state::succeeded,
              "the first and second succeeded");

        // 4. co_await in a coroutine started on the session.
        client.post([&] { checksum(disk, &coroutine_result); });
        auto answer = coroutine_result.get_future();
        check(answer.wait_for(2s) == std::future_status::ready && answer.get() == 42, "co_await post_job gave 42");
        check(disk.drain(2s), "the queue drains");
    }

    const mailroom::job_queue::stats s = disk.job_stats();
    auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    std::printf("queue %s: min %zu floor %zu desired %zu max %zu; threads %zu (idle %zu), started %llu, exited %llu\n",
                s.name.c_str(), s.min, s.floor, s.desired, s.max, s.threads, s.idle_threads, u(s.threads_started),
                u(s.threads_exited));
    std::printf("posted %llu = completed %llu + cancelled %llu + expired %llu + discarded %llu + running %zu + backlog %zu; "
                "refused %llu, failed %llu\n",
                u(s.posted), u(s.completed), u(s.cancelled), u(s.expired), u(s.discarded), s.running, s.backlog,
                u(s.refused), u(s.failed));
    std::printf("waited %lld us in all (longest %lld us); ran %lld us in all (longest %lld us)\n",
                static_cast<long long>(s.wait_total.count() / 1000), static_cast<long long>(s.wait_max.count() / 1000),
                static_cast<long long>(s.run_total.count() / 1000), static_cast<long long>(s.run_max.count() / 1000));
    check(s.posted == s.completed + s.cancelled + s.expired + s.discarded + s.running + s.backlog, "the books balance");
    check(s.posted == 4 && s.completed == 3 && s.cancelled == 1 && s.refused == 1, "4 posted, 3 completed, 1 cancelled, 1 refused");
    check(s.desired == 2, "desired is 2 now");

    env.stop();
    env.join();
    return check.exit_code();
}
