#pragma once
// The two agents of W1 and W2: a pinger that sends ping n and expects pong n back, in order,
// timing the rounds after a warm-up, and a ponger that answers each ping.

#include "alloc_counter.hpp"
#include "harness.hpp"

namespace bench {

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
    pinger(const char* workload, std::uint64_t warmup, std::uint64_t rounds, run_result* r)
        : workload_(workload), warmup_(warmup), rounds_(rounds), r_(r) {}
    void set_peer(mailroom::mbox peer) { peer_ = std::move(peer); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const pong& p) {
            ++r_->pongs;
            if (p.n != r_->pongs) bench::fail(workload_, "pong out of order");
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
    const char* workload_;
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

}  // namespace bench
