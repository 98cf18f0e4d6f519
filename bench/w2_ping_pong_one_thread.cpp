// W2: ping-pong of two agents on one thread (a one_thread dispatcher). Figure: ns per round
// trip (two sends and two handler calls, all on the same worker thread: no hand-off between
// threads, so this is the cost of the send and dispatch path itself).

#include "ping_pong.hpp"

namespace {

constexpr const char* workload = "W2";

using bench::pinger;
using bench::ponger;
using bench::run_result;

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t rounds = o.scaled(10'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    std::printf("W2 ping-pong of two agents on one thread: %llu round trips (+%llu warm-up), one_thread dispatcher\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        run_result r;
        {
            mailroom::environment env;
            mailroom::coop_options opts;
            opts.bind = mailroom::one_thread::make_dispatcher(env, "pair").bind();
            mailroom::coop c(env, std::move(opts));
            auto& a = c.make_agent<pinger>(workload, warmup, rounds, &r);
            auto& b = c.make_agent<ponger>();
            a.set_peer(b.direct_mbox());
            b.set_peer(a.direct_mbox());
            mailroom::register_coop(std::move(c));
            env.join();
            bench::check_stats(workload, env.stats(), 2 * (rounds + warmup));
        }
        bench::check(r.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(r.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "ping-pong of two agents on one thread", s, "ns_per_round_trip", accounts.fields());
    return 0;
}
