// W11, the floor of part (a): what a job queue must do at least. A "session" thread pushes
// empty jobs into a lock-free queue (moodycamel), a worker thread pops and runs each and pushes
// its completion into a second queue, which the session thread drains, running completions,
// with at most `window` jobs in flight. ns per job. Part (b)'s floor is arithmetic: 200 jobs of
// 5 ms at 10 wide, then 1,800 at 50 wide: 280 ms, printed by bench_w11_job_queue --part b.

#define MAILROOM_BENCH_WITHOUT_LIBRARY
#include "../harness.hpp"

#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <thread>

namespace {
constexpr const char* workload = "W11";
using job = void (*)(std::uint64_t&);
}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"window", "N"}});
    const std::uint64_t jobs = o.scaled(1'000'000, 1000);
    const auto window = static_cast<std::uint64_t>(o.get_long("window", 256));
    auto s = bench::repeat(o, "ns/job", [&] {
        moodycamel::ConcurrentQueue<job> work, done_q;
        std::atomic<bool> stop{false};
        std::thread worker([&] {
            job j;
            std::uint64_t sink = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                if (work.try_dequeue(j)) {
                    j(sink);
                    done_q.enqueue(j);
                }
            }
        });
        const job empty = [](std::uint64_t& n) { ++n; };
        std::uint64_t posted = 0, done = 0;
        const std::int64_t t0 = bench::now_ns();
        for (; posted < window && posted < jobs; ++posted) work.enqueue(empty);
        job j;
        while (done < jobs) {
            if (done_q.try_dequeue(j)) {
                ++done;
                if (posted < jobs) {
                    work.enqueue(empty);
                    ++posted;
                }
            }
        }
        const std::int64_t t1 = bench::now_ns();
        stop = true;
        worker.join();
        return static_cast<double>(t1 - t0) / static_cast<double>(jobs);
    });
    bench::report(workload, "ns per empty job through two lock-free queues and two threads", s, "ns_per_job",
                  "part=a jobs=" + std::to_string(jobs), "floor");
}
