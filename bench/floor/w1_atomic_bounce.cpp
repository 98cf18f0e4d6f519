// W1 floor: two threads bouncing one atomic, 1M round trips (+10k warm-up), ns per round trip.
//
// The least two threads can do to hand a turn back and forth: one std::atomic<uint64_t>; the
// pinger writes an odd value and spins until it reads the next even one, the ponger spins for
// the odd value and writes the even one. No queue, no message, no parking: it is the cost of
// moving one cache line between the two cores twice, which no messaging system can beat.

#include "../alloc_counter.hpp"
#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W1";

struct alignas(64) cell {
    std::atomic<std::uint64_t> value{0};
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t rounds = o.scaled(1'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    std::printf("W1 floor: two threads bouncing one atomic, %llu round trips (+%llu warm-up)\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        cell c;
        const std::uint64_t total = rounds + warmup;
        std::uint64_t replies = 0;
        std::thread ponger([&] {
            for (std::uint64_t i = 0; i < total; ++i) {
                const std::uint64_t want = 2 * i + 1;
                while (c.value.load(std::memory_order_acquire) != want) {
                }
                c.value.store(want + 1, std::memory_order_release);
                ++replies;
            }
        });
        std::int64_t t0 = 0;
        bench::account a0;
        for (std::uint64_t i = 0; i < total; ++i) {
            if (i == warmup) {
                a0 = bench::account::now();
                t0 = bench::now_ns();
            }
            c.value.store(2 * i + 1, std::memory_order_release);
            while (c.value.load(std::memory_order_acquire) != 2 * i + 2) {
            }
        }
        const std::int64_t t1 = bench::now_ns();
        const bench::account a1 = bench::account::now();
        ponger.join();
        bench::check(replies == total && c.value.load() == 2 * total, workload,
                     "ponger answered " + std::to_string(replies) + " of " + std::to_string(total));
        accounts.add(a1 - a0, 2 * rounds);
        return static_cast<double>(t1 - t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "two threads bouncing one atomic", s, "ns_per_round_trip", accounts.fields(), "floor");
    return 0;
}
