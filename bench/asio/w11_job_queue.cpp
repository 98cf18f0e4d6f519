// W11, the Asio peer: an asio::thread_pool runs the jobs; each completion is posted to a strand
// of an io_context run by one thread (the "session"). (a) `--part a`: N empty jobs, `window` in
// flight, ns per job. (b) `--part b`: 2,000 jobs blocking 5 ms; Asio's thread_pool cannot
// change its size, so two pools stand in for desired 10 then 50: the first 200 jobs go to a
// pool of 10, the rest to a pool of 50 once those finished (the mailroom run has them queued
// already, at 10, until the raise). ms until the last completion.

#define MAILROOM_BENCH_WITHOUT_LIBRARY
#include "../harness.hpp"

#include <asio.hpp>

#include <atomic>
#include <functional>
#include <thread>

namespace {

constexpr const char* workload = "W11";

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"part", "a|b"}, {"window", "N"}, {"block-ms", "N"}});
    const std::string part = o.get("part", "a");
    if (part == "a") {
        const std::uint64_t jobs = o.scaled(1'000'000, 1000);
        const auto window = static_cast<std::uint64_t>(o.get_long("window", 256));
        auto s = bench::repeat(o, "ns/job", [&] {
            asio::thread_pool pool(2);
            asio::io_context home;
            auto strand = asio::make_strand(home);
            auto guard = asio::make_work_guard(home);
            std::uint64_t posted = 0, done = 0;
            std::int64_t t1 = 0;
            std::function<void()> post_one = [&] {
                ++posted;
                asio::post(pool, [&] {
                    asio::post(strand, [&] {
                        if (++done == jobs) {
                            t1 = bench::now_ns();
                            guard.reset();
                        } else if (posted < jobs) {
                            post_one();
                        }
                    });
                });
            };
            const std::int64_t t0 = bench::now_ns();
            asio::post(strand, [&] {
                for (std::uint64_t i = 0; i < window && posted < jobs; ++i) post_one();
            });
            home.run();
            pool.join();
            bench::check(done == jobs, workload, "not every completion came back");
            return static_cast<double>(t1 - t0) / static_cast<double>(jobs);
        });
        bench::report(workload, "ns per empty job, Asio thread_pool(2) + strand", s, "ns_per_job",
                      "part=a jobs=" + std::to_string(jobs), "asio");
    } else if (part == "b") {
        const std::uint64_t jobs = o.scaled(2000, 20);
        const std::uint64_t first = jobs / 10;
        const auto block = std::chrono::milliseconds(o.get_long("block-ms", 5));
        auto s = bench::repeat(o, "ms", [&] {
            asio::thread_pool small(10), big(50);
            asio::io_context home;
            auto strand = asio::make_strand(home);
            auto guard = asio::make_work_guard(home);
            std::uint64_t done = 0;
            std::int64_t t1 = 0;
            std::function<void(asio::thread_pool&, std::uint64_t)> run_on = [&](asio::thread_pool& p, std::uint64_t n) {
                for (std::uint64_t i = 0; i < n; ++i)
                    asio::post(p, [&] {
                        std::this_thread::sleep_for(block);
                        asio::post(strand, [&] {
                            // The concurrency is "raised" once the first jobs finished: the rest go
                            // to the pool of 50 then.
                            if (++done == first) run_on(big, jobs - first);
                            if (done == jobs) {
                                t1 = bench::now_ns();
                                guard.reset();
                            }
                        });
                    });
            };
            const std::int64_t t0 = bench::now_ns();
            asio::post(strand, [&] { run_on(small, first); });
            home.run();
            small.join();
            big.join();
            bench::check(done == jobs, workload, "not every completion came back");
            return static_cast<double>(t1 - t0) / 1e6;
        });
        bench::report(workload, "ms for the blocking jobs, Asio thread_pool 10 then 50 + strand", s, "ms",
                      "part=b jobs=" + std::to_string(jobs), "asio");
    } else {
        bench::fail(workload, "--part is a or b");
    }
}
