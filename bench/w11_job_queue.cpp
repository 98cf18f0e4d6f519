// W11: job queues. (a) `--part a`: a session posts N empty jobs to a job queue of concurrency
// 2, keeping at most `window` in flight; each job's completion comes back on the session,
// which posts the next. Figure: ns per job, from the first post to the last completion.
// (b) `--part b`: 2,000 jobs that block 5 ms on a queue of desired 10 (max 50), raised to 50
// once the first 200 finished. Figure: ms from the first post until the last completion;
// the ideal is 280 ms (200 jobs at 10, then 1,800 at 50).

#include "harness.hpp"

#include <mailroom/session/job.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace {

constexpr const char* workload = "W11";

double part_a(const bench::options& o) {
    const std::uint64_t jobs = o.scaled(1'000'000, 1000);
    const auto window = static_cast<std::uint64_t>(o.get_long("window", 256));
    // How long an idle job thread spins before it sleeps (job_queue::params::spin); 0 sleeps at once.
    const std::chrono::nanoseconds spin(o.get_long("spin-ns", mailroom::default_worker_spin.count()));
    std::printf("W11a: %llu empty jobs from a session to a job queue of concurrency 2, completions on the session, "
                "%llu in flight\n",
                static_cast<unsigned long long>(jobs), static_cast<unsigned long long>(window));
    auto s = bench::repeat(o, "ns/job", [&] {
        mailroom::environment env;
        auto q = mailroom::job_queue::make_job_queue(env, "jobs", {.floor = 2, .desired = 2, .max = 2, .spin = spin});
        mailroom::session home(env, {.name = "home"});
        std::promise<std::int64_t> finished;
        std::uint64_t posted = 0, done = 0;
        std::function<void()> post_one = [&] {
            ++posted;
            mailroom::post_job(q, [] {}).then([&](const mailroom::job<void>& j) {
                j.get();
                if (++done == jobs) finished.set_value(bench::now_ns());
                else if (posted < jobs) post_one();
            });
        };
        const std::int64_t t0 = bench::now_ns();
        home.post([&] {
            for (std::uint64_t i = 0; i < window && posted < jobs; ++i) post_one();
        });
        auto f = finished.get_future();
        bench::check(f.wait_for(std::chrono::minutes(5)) == std::future_status::ready, workload,
                     "not every completion came back");
        const std::int64_t t1 = f.get();
        const auto st = q.job_stats();
        bench::check(st.completed == jobs && st.failed == 0, workload,
                     "completed " + std::to_string(st.completed) + " of " + std::to_string(jobs));
        // What the job threads cost besides the jobs: posts that had to wake a sleeping thread
        // (tens of microseconds each here) and jobs a spinning thread found instead.
        std::printf("  wakeups %.3f per job, spin takes %.3f per job\n",
                    static_cast<double>(st.wakeups) / static_cast<double>(jobs),
                    static_cast<double>(st.spin_takes) / static_cast<double>(jobs));
        return static_cast<double>(t1 - t0) / static_cast<double>(jobs);
    });
    bench::report(workload, "ns per empty job with its completion back on the session", s, "ns_per_job",
                  "part=a jobs=" + std::to_string(jobs));
    return s.median;
}

double part_b(const bench::options& o) {
    const std::uint64_t jobs = o.scaled(2000, 20);
    const std::uint64_t first = jobs / 10;
    const auto block = std::chrono::milliseconds(o.get_long("block-ms", 5));
    const double ideal_ms = static_cast<double>(first) / 10 * static_cast<double>(block.count()) +
                            static_cast<double>(jobs - first) / 50 * static_cast<double>(block.count());
    std::printf("W11b: %llu jobs blocking %lld ms, desired 10 raised to 50 after %llu; ideal %.0f ms\n",
                static_cast<unsigned long long>(jobs), static_cast<long long>(block.count()),
                static_cast<unsigned long long>(first), ideal_ms);
    auto s = bench::repeat(o, "ms", [&] {
        mailroom::environment env;
        auto q = mailroom::job_queue::make_job_queue(env, "blocking", {.desired = 10, .max = 50});
        mailroom::session home(env, {.name = "home"});
        std::promise<std::int64_t> finished;
        std::uint64_t done = 0;
        const std::int64_t t0 = bench::now_ns();
        home.post([&] {
            for (std::uint64_t i = 0; i < jobs; ++i)
                mailroom::post_job(q, [block] { std::this_thread::sleep_for(block); })
                    .then([&](const mailroom::job<void>&) {
                        if (++done == first) q.set_desired(50);
                        if (done == jobs) finished.set_value(bench::now_ns());
                    });
        });
        auto f = finished.get_future();
        bench::check(f.wait_for(std::chrono::minutes(5)) == std::future_status::ready, workload,
                     "not every completion came back");
        return static_cast<double>(f.get() - t0) / 1e6;
    });
    bench::report(workload, "ms for the blocking jobs (ideal " + std::to_string(static_cast<int>(ideal_ms)) + " ms)", s,
                  "ms", "part=b jobs=" + std::to_string(jobs) + " ideal_ms=" + std::to_string(ideal_ms));
    return s.median;
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"part", "a|b"}, {"window", "N"}, {"block-ms", "N"}, {"spin-ns", "N"}});
    const std::string part = o.get("part", "a");
    if (part == "a")
        part_a(o);
    else if (part == "b")
        part_b(o);
    else
        bench::fail(workload, "--part is a or b");
}
