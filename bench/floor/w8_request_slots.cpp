// W8 floor: request/reply across two threads through two slots, 1M round trips (+10k warm-up),
// ns per round trip.
//
// The least a request and its reply can cost between two threads: a request slot and a reply
// slot, each one std::atomic<uint64_t> on a cache line of its own. The client writes the id of
// its request into the request slot and spins until the reply slot changes; the server spins
// until the request slot changes, reads the id and writes id + 1 into the reply slot. No name,
// no queue, no message object, no parking: two cache lines crossing between the cores per round
// trip, which no request/reply system can beat. Both sides check every id (order and value).

#include "../alloc_counter.hpp"
#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W8";

struct alignas(64) slot {
    std::atomic<std::uint64_t> id{0};
};

// Ids start at 1, so that 0 in the request slot means "no request yet".
struct slots {
    slot request, reply;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t rounds = o.scaled(1'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    std::printf("W8 floor: request/reply through a request slot and a reply slot, %llu round trips (+%llu warm-up)\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        slots sl;
        const std::uint64_t total = rounds + warmup;
        std::uint64_t served = 0;
        std::thread server([&] {
            std::uint64_t last = 0;
            while (served < total) {
                std::uint64_t id;
                while ((id = sl.request.id.load(std::memory_order_acquire)) == last) {
                }
                // The server knows nothing of the client's numbering; it checks only that
                // requests come one at a time and in order.
                if (id != last + 1)
                    bench::fail(workload, "server: request " + std::to_string(id) + " after " + std::to_string(last));
                last = id;
                sl.reply.id.store(id + 1, std::memory_order_release);
                ++served;
            }
        });
        std::int64_t t0 = 0;
        bench::account a0;
        std::uint64_t seen = 0;  // the reply slot's value before this request's reply
        for (std::uint64_t id = 1; id <= total; ++id) {
            if (id == warmup + 1) {
                a0 = bench::account::now();
                t0 = bench::now_ns();
            }
            sl.request.id.store(id, std::memory_order_release);
            std::uint64_t reply;
            while ((reply = sl.reply.id.load(std::memory_order_acquire)) == seen) {
            }
            seen = reply;
            if (reply != id + 1)
                bench::fail(workload, "request " + std::to_string(id) + " got reply " + std::to_string(reply) +
                                          ", expected " + std::to_string(id + 1));
        }
        const std::int64_t t1 = bench::now_ns();
        const bench::account a1 = bench::account::now();
        server.join();
        bench::check(served == total, workload, "server answered " + std::to_string(served) + " of " + std::to_string(total));
        accounts.add(a1 - a0, 2 * rounds);
        return static_cast<double>(t1 - t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "request/reply through two slots across two threads", s, "ns_per_round_trip",
                  accounts.fields(), "floor");
    return 0;
}
