// W2 for CAF 0.17: ping-pong of two actors on one thread, 10M round trips (+10k warm-up), ns
// per round trip.
//
// Set-up and why it is the fair comparison: mailroom's W2 runs both agents on one one_thread
// dispatcher, so every send and dispatch happens on one worker thread with no hand-off. CAF's
// equivalent is two scheduled (event-based) actors with scheduler.max-threads=1: one worker
// runs both, and this is CAF's cheapest path (a scheduled actor sending to another scheduled
// actor on the same worker). The message is one uint64_t, as in mailroom; the ponger replies by
// returning it. Nothing else differs from CAF's defaults.

#include "ping_pong.hpp"

namespace {

constexpr const char* workload = "W2";

using bench::caf_peers::pinger;
using bench::caf_peers::ponger;
using bench::caf_peers::run_result;

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t rounds = o.scaled(10'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    std::printf("W2 CAF ping-pong of two actors on one thread: %llu round trips (+%llu warm-up), "
                "scheduler.max-threads=1\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        run_result r;
        {
            caf::actor_system_config cfg;
            bench::caf_peer::configure(cfg, 1);
            caf::actor_system sys{cfg};
            auto b = sys.spawn(ponger);
            sys.spawn(pinger, workload, b, warmup, rounds, &r);
            r.done.get_future().wait();
        }
        bench::check(r.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(r.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "CAF ping-pong of two actors on one thread", s, "ns_per_round_trip", accounts.fields(),
                  "caf");
    return 0;
}
