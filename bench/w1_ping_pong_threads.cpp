// W1: ping-pong across two threads. Two agents, each on its own worker thread (active_obj
// dispatcher, or two one_thread dispatchers with --disp one_thread), bounce a counter 1M times.
// Figure: ns per round trip (two sends, two handler calls, two cross-thread hand-offs).

#include "ping_pong.hpp"

namespace {

constexpr const char* workload = "W1";

using bench::pinger;
using bench::ponger;
using bench::run_result;

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"disp", "active_obj|one_thread"}});
    const std::uint64_t rounds = o.scaled(1'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    const std::string disp = o.get("disp", "active_obj");
    if (disp != "active_obj" && disp != "one_thread") bench::usage(argv[0], {{"disp", "active_obj|one_thread"}});
    std::printf("W1 ping-pong across two threads: %llu round trips (+%llu warm-up), %s dispatcher\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup), disp.c_str());

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        run_result r;
        std::uint64_t parks = 0;
        {
            mailroom::environment env;
            mailroom::binder ba, bb;
            if (disp == "active_obj") {
                auto d = mailroom::active_obj::make_dispatcher(env, "actors");
                ba = bb = d.bind();
            } else {
                ba = mailroom::one_thread::make_dispatcher(env, "ping").bind();
                bb = mailroom::one_thread::make_dispatcher(env, "pong").bind();
            }
            mailroom::coop c(env, {});
            auto& a = c.make_agent_with_binder<pinger>(ba, workload, warmup, rounds, &r);
            auto& b = c.make_agent_with_binder<ponger>(bb);
            a.set_peer(b.direct_mbox());
            b.set_peer(a.direct_mbox());
            mailroom::register_coop(std::move(c));
            env.join();
            auto st = env.stats();
            bench::check_stats(workload, st, 2 * (rounds + warmup));
            parks = bench::total_parks(env);
        }
        bench::check(r.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(r.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        std::printf("  (workers parked %llu times)\n", static_cast<unsigned long long>(parks));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "ping-pong across two threads (" + disp + ")", s, "ns_per_round_trip", accounts.fields());
    return 0;
}
