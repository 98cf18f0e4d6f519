// W2 for SObjectizer 5.8: ping-pong of two agents on one thread, 10M round trips (+10k
// warm-up), ns per round trip.
//
// Set-up and why it is the fair comparison: mailroom's W2 runs both agents on one one_thread
// dispatcher, so every send and dispatch happens on one worker thread with no hand-off: the
// figure is the cost of the send and dispatch path itself. SObjectizer's equivalent is the
// same: both agents bound to one one_thread dispatcher (a worker thread of its own, as in
// mailroom; the environment's other threads stay idle). The messages are the same plain
// structs, each sent to the other agent's direct mbox. Queue lock: the default, combined; the
// queue is never empty while the ping-pong runs, so the lock is taken uncontended and never
// waits (`--lock simple` for reference). Nothing else differs from SObjectizer's defaults.

#include "ping_pong.hpp"

namespace {

constexpr const char* workload = "W2";

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t rounds = o.scaled(10'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    const lock_kind lock = lock_from(o, lock_kind::combined, argv[0], extras);
    std::printf("W2 SObjectizer ping-pong of two agents on one thread: %llu round trips (+%llu warm-up), one_thread "
                "dispatcher, %s lock\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup), to_string(lock));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        bench::so5_peer::run_result r;
        bench::so5_peer::run_ping_pong(lock, workload, warmup, rounds, r, [](so_5::environment_t& e) {
            auto b = so_5::disp::one_thread::make_dispatcher(e).binder();
            return std::pair{b, b};
        });
        bench::check(r.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(r.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "SObjectizer ping-pong of two agents on one thread", s, "ns_per_round_trip",
                  accounts.fields(), "sobjectizer");
    return 0;
}
