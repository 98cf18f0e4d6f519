// W2: ping-pong of two agents on one thread (a one_thread dispatcher). Figure: ns per round
// trip (two sends and two handler calls, all on the same worker thread: no hand-off between
// threads, so this is the cost of the send and dispatch path itself).

#include "alloc_counter.hpp"
#include "harness.hpp"

namespace {

constexpr const char* workload = "W2";

struct ping {
    std::uint64_t n;
};
struct pong {
    std::uint64_t n;
};

struct run_result {
    std::int64_t t0 = 0, t1 = 0;
    bench::account a0, a1;  // allocations and CPU time at t0 and t1
    std::uint64_t pongs = 0;
};

class pinger final : public mailroom::agent {
public:
    pinger(std::uint64_t warmup, std::uint64_t rounds, run_result* r) : warmup_(warmup), rounds_(rounds), r_(r) {}
    void set_peer(mailroom::mbox peer) { peer_ = std::move(peer); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const pong& p) {
            ++r_->pongs;
            if (p.n != r_->pongs) bench::fail(workload, "pong out of order");
            if (p.n == warmup_) {
                r_->a0 = bench::account::now();
                r_->t0 = bench::now_ns();
            }
            if (p.n == warmup_ + rounds_) {
                r_->t1 = bench::now_ns();
                r_->a1 = bench::account::now();
                stop_environment();
                return;
            }
            mailroom::send<ping>(peer_, p.n + 1);
        });
    }
    void on_start() override { mailroom::send<ping>(peer_, std::uint64_t{1}); }

private:
    std::uint64_t warmup_, rounds_;
    run_result* r_;
    mailroom::mbox peer_;
};

class ponger final : public mailroom::agent {
public:
    void set_peer(mailroom::mbox peer) { peer_ = std::move(peer); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const ping& p) { mailroom::send<pong>(peer_, p.n); });
    }

private:
    mailroom::mbox peer_;
};

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
            opts.bind = env.add_dispatcher("pair", mailroom::one_thread_params{}).bind();
            mailroom::coop c(env, std::move(opts));
            auto& a = c.make_agent<pinger>(warmup, rounds, &r);
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
