// W1 for SObjectizer 5.8: ping-pong across two threads, 1M round trips (+10k warm-up), ns per
// round trip.
//
// Set-up and why it is the fair comparison: mailroom's W1 puts each of the two agents on its
// own worker thread (an active_obj dispatcher), so every message crosses between two threads.
// SObjectizer has the same dispatcher: active_obj, a thread per agent, which is what it is
// compared with (`--disp one_thread` puts each agent on a one_thread dispatcher of its own, the
// same thing built by hand, for reference). The messages are the same plain structs
// (ping{uint64_t}, pong{uint64_t}), each sent to the other agent's direct mbox (MPSC).
// Queue lock: SObjectizer's default, the combined lock (spins up to 1 ms, then blocks), which
// is its fast path for this workload: the peer answers within the spin, so no round trip pays a
// thread wake-up, as mailroom's workers spin briefly before they park. `--lock simple` (a mutex
// and a condition variable) pays two wake-ups per round trip. The timer thread is not used.
// Nothing else differs from SObjectizer's defaults.

#include "ping_pong.hpp"

namespace {

constexpr const char* workload = "W1";

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag, {"disp", "active_obj|one_thread"}};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t rounds = o.scaled(1'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    const lock_kind lock = lock_from(o, lock_kind::combined, argv[0], extras);
    const std::string disp = o.get("disp", "active_obj");
    if (disp != "active_obj" && disp != "one_thread") bench::usage(argv[0], extras);
    std::printf("W1 SObjectizer ping-pong across two threads: %llu round trips (+%llu warm-up), %s dispatcher, %s "
                "lock\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup), disp.c_str(),
                to_string(lock));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        bench::so5_peer::run_result r;
        bench::so5_peer::run_ping_pong(lock, workload, warmup, rounds, r, [&](so_5::environment_t& e) {
            if (disp == "active_obj") {
                auto b = so_5::disp::active_obj::make_dispatcher(e).binder();
                return std::pair{b, b};
            }
            return std::pair{so_5::disp::one_thread::make_dispatcher(e).binder(),
                             so_5::disp::one_thread::make_dispatcher(e).binder()};
        });
        bench::check(r.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(r.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "SObjectizer ping-pong across two threads (" + disp + ", " + to_string(lock) + " lock)", s,
                  "ns_per_round_trip", accounts.fields(), "sobjectizer");
    return 0;
}
