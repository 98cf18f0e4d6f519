#pragma once
// The two agents of SObjectizer's W1 and W2: a pinger that sends ping n and expects pong n
// back, in order, timing the rounds after a warm-up, and a ponger that answers each ping. The
// same protocol and the same messages as mailroom's bench/ping_pong.hpp (plain structs, which
// SObjectizer wraps in its own message envelope), each sent to the other agent's direct mbox
// (SObjectizer's MPSC mbox, its cheapest destination).

#include "../alloc_counter.hpp"
#include "so5_common.hpp"

namespace bench::so5_peer {

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

class pinger final : public so_5::agent_t {
public:
    pinger(context_t ctx, const char* workload, std::uint64_t warmup, std::uint64_t rounds, run_result* r)
        : so_5::agent_t(std::move(ctx)), workload_(workload), warmup_(warmup), rounds_(rounds), r_(r) {}
    void set_peer(so_5::mbox_t peer) { peer_ = std::move(peer); }

    void so_define_agent() override {
        so_subscribe_self().event([this](so_5::mhood_t<pong> p) {
            ++r_->pongs;
            if (p->n != r_->pongs) bench::fail(workload_, "pong out of order");
            if (p->n == warmup_) {
                r_->a0 = bench::account::now();
                r_->t0 = bench::now_ns();
            }
            if (p->n == warmup_ + rounds_) {
                r_->t1 = bench::now_ns();
                r_->a1 = bench::account::now();
                so_environment().stop();
                return;
            }
            so_5::send<ping>(peer_, p->n + 1);
        });
    }
    void so_evt_start() override { so_5::send<ping>(peer_, std::uint64_t{1}); }

private:
    const char* workload_;
    std::uint64_t warmup_, rounds_;
    run_result* r_;
    so_5::mbox_t peer_;
};

class ponger final : public so_5::agent_t {
public:
    explicit ponger(context_t ctx) : so_5::agent_t(std::move(ctx)) {}
    void set_peer(so_5::mbox_t peer) { peer_ = std::move(peer); }

    void so_define_agent() override {
        so_subscribe_self().event([this](so_5::mhood_t<ping> p) { so_5::send<pong>(peer_, p->n); });
    }

private:
    so_5::mbox_t peer_;
};

/// Runs one ping-pong in a fresh environment: both agents in one cooperation, the pinger bound
/// by `ping_binder`, the ponger by `pong_binder` (each made by `binders` inside the environment);
/// returns when the pinger stopped the environment and it finished.
template <typename MakeBinders>
void run_ping_pong(lock_kind lock, const char* workload, std::uint64_t warmup, std::uint64_t rounds, run_result& r,
                   MakeBinders binders) {
    so_5::wrapped_env_t env{
        so_5::wrapped_env_t::wait_init_completion,
        [&](so_5::environment_t& e) {
            auto [ping_binder, pong_binder] = binders(e);
            e.introduce_coop([&](so_5::coop_t& c) {
                auto* a = c.make_agent_with_binder<pinger>(ping_binder, workload, warmup, rounds, &r);
                auto* b = c.make_agent_with_binder<ponger>(pong_binder);
                a->set_peer(b->so_direct_mbox());
                b->set_peer(a->so_direct_mbox());
            });
        },
        [&](so_5::environment_params_t& params) { use_lock(params, lock); }};
    env.join();
}

}  // namespace bench::so5_peer
