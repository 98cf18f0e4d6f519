#pragma once
// The two actors of CAF's W1 and W2: a pinger that sends n and expects n back, in order, timing
// the rounds after a warm-up, and a ponger that answers by returning what it got (CAF's
// idiomatic and cheapest reply). The same protocol as mailroom's bench/ping_pong.hpp.

#include "../alloc_counter.hpp"
#include "caf_common.hpp"

#include <future>

namespace bench::caf_peers {

struct run_result {
    std::int64_t t0 = 0, t1 = 0;
    bench::account a0, a1;
    std::uint64_t pongs = 0;
    std::promise<void> done;
};

caf::behavior ponger(caf::event_based_actor*) {
    return {[](std::uint64_t n) { return n; }};
}

caf::behavior pinger(caf::event_based_actor* self, const char* workload, caf::actor peer, std::uint64_t warmup,
                     std::uint64_t rounds, run_result* r) {
    self->send(peer, std::uint64_t{1});
    return {[=](std::uint64_t n) {
        ++r->pongs;
        if (n != r->pongs) bench::fail(workload, "pong out of order");
        if (n == warmup) {
            r->a0 = bench::account::now();
            r->t0 = bench::now_ns();
        }
        if (n == warmup + rounds) {
            r->t1 = bench::now_ns();
            r->a1 = bench::account::now();
            self->send_exit(peer, caf::exit_reason::user_shutdown);
            self->quit();
            r->done.set_value();
            return;
        }
        self->send(peer, n + 1);
    }};
}

}  // namespace bench::caf_peers
