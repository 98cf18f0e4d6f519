// L1: what the shutdown guarantee costs per callback. A chain of callbacks on one session (each
// callback queues the next from the session's own context, so the figure is the dispatch path
// itself: queue push and pop, the gate, the call), compared with a plain demand on the same
// dispatcher that has no gate, no reference counts and no session.
//
//   plain        a bare demand re-pushing itself (the floor: no lifetime machinery at all)
//   plain_gate   the same, with mailroom's context_gate enter/leave around the step: what the
//                shutdown guarantee itself costs on the hot path
//   plain_mutex  the same, with a std::mutex locked around the step instead: MME's way of
//                giving the guarantee (a shutdown on another thread takes the same mutex)
//   post         session::post chains (pool allocation + session reference + gate)
//   inbox        send<> to the session's own inbox (envelope + object reference + gate)
//   *_churn      the same while another thread keeps shutting down and recreating a timer on
//                the same session (every shutdown is a membarrier: the IPIs hit the context)
//
// Prints `RESULT workload=L1 system=mailroom variant=<v> value=<ns per callback>
// unit=ns_per_callback` per variant (median of the runs) and the overhead over `plain`.
// Usage: bench_lifetimes_callback_cost [--quick]

#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/mailroom.hpp>
#include <mailroom/core/handle_access.hpp>

#include <algorithm>
#include <mutex>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;

struct chain {
    long left = 0;
    std::atomic<bool> done{false};
};

enum class guard_kind { none, gate, mutex };

double run_plain(long n, guard_kind guard = guard_kind::none) {
    mailroom::environment env;
    auto binder = mailroom::internal::core_of(env)->default_dispatcher()->make_binder();
    int key = 0;
    auto b = binder->prepare(&key);
    struct self_demand : mailroom::internal::demand {
        mailroom::internal::event_queue* q = nullptr;
        chain* c = nullptr;
        guard_kind guard = guard_kind::none;
        mailroom::internal::context_gate gate;
        mailroom::internal::context_gate::flag shut{0};
        std::mutex mu;
    } d;
    d.guard = guard;
    chain c;
    c.left = n;
    d.q = b.queue;
    d.c = &c;
    d.execute = [](mailroom::internal::demand* base, mailroom::internal::demand_mode mode) noexcept {
        auto* s = static_cast<self_demand*>(base);
        if (mode == mailroom::internal::demand_mode::run) {
            bool more = false;
            switch (s->guard) {
                case guard_kind::none: more = --s->c->left > 0; break;
                case guard_kind::gate:
                    if (s->gate.enter(s, s->shut)) {
                        more = --s->c->left > 0;
                        s->gate.leave();
                    }
                    break;
                case guard_kind::mutex: {
                    std::lock_guard g(s->mu);
                    more = --s->c->left > 0;
                    break;
                }
            }
            if (more) {
                s->q->push(s);
                return;
            }
        }
        s->c->done.store(true, std::memory_order_release);
    };
    const auto t0 = clk::now();
    b.queue->push(&d);
    while (!c.done.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::microseconds(200));
    const auto t1 = clk::now();
    binder->release(b, &key);
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n);
}

// Shuts down and recreates a timer on `s` until told to stop.
struct churner {
    std::atomic<bool> stop{false};
    std::atomic<long> rounds{0};
    std::thread t;
    explicit churner(mailroom::session& s) {
        t = std::thread([this, &s] {
            while (!stop.load(std::memory_order_relaxed)) {
                auto h = s.add_timer(std::chrono::hours(1), std::chrono::nanoseconds(0), [] {});
                h.shutdown();
                h.destroy();
                rounds.fetch_add(1, std::memory_order_relaxed);
                std::this_thread::sleep_for(std::chrono::microseconds(20));
            }
        });
    }
    ~churner() {
        stop = true;
        t.join();
    }
};

struct post_step {
    mailroom::session* s;
    chain* c;
    void operator()() const {
        if (--c->left > 0)
            s->post(*this);
        else
            c->done.store(true, std::memory_order_release);
    }
};

double run_post(long n, bool churn, long* churned) {
    mailroom::environment env;
    mailroom::session s(env);
    chain c;
    c.left = n;
    std::unique_ptr<churner> ch;
    if (churn) ch = std::make_unique<churner>(s);
    const auto t0 = clk::now();
    s.post(post_step{&s, &c});
    while (!c.done.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::microseconds(200));
    const auto t1 = clk::now();
    if (ch) *churned += ch->rounds.load();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n);
}

struct tick {
    long n;
};

double run_inbox(long n, bool churn, long* churned) {
    mailroom::environment env;
    mailroom::session s(env);
    chain c;
    c.left = n;
    mailroom::mbox self;
    auto in = s.add_inbox<tick>([&](const tick&) {
        if (--c.left > 0)
            mailroom::send<tick>(self, tick{c.left});
        else
            c.done.store(true, std::memory_order_release);
    });
    self = in.address();
    std::unique_ptr<churner> ch;
    if (churn) ch = std::make_unique<churner>(s);
    const auto t0 = clk::now();
    mailroom::send<tick>(self, tick{n});
    while (!c.done.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::microseconds(200));
    const auto t1 = clk::now();
    if (ch) *churned += ch->rounds.load();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const long n = quick ? 200'000 : 2'000'000;
    const int runs = quick ? 1 : 3;
    mailroom::internal::event_gate_init();
    std::printf("# L1: %ld callbacks per run, %d runs, gate mode: %s\n", n, runs,
                mailroom::internal::event_gate_asymmetric.load() ? "asymmetric (membarrier)" : "seq_cst");
    struct variant {
        const char* name;
        std::vector<double> v;
    };
    std::vector<variant> vs = {{"plain", {}},      {"plain_gate", {}}, {"plain_mutex", {}}, {"post", {}},
                               {"inbox", {}},      {"post_churn", {}}, {"inbox_churn", {}}};
    long churned = 0;
    for (int r = 0; r < runs; ++r) {  // interleaved, so that a noisy moment hits every variant
        vs[0].v.push_back(run_plain(n));
        vs[1].v.push_back(run_plain(n, guard_kind::gate));
        vs[2].v.push_back(run_plain(n, guard_kind::mutex));
        vs[3].v.push_back(run_post(n, false, &churned));
        vs[4].v.push_back(run_inbox(n, false, &churned));
        vs[5].v.push_back(run_post(n, true, &churned));
        vs[6].v.push_back(run_inbox(n, true, &churned));
    }
    const double floor = median(vs[0].v);
    for (auto& v : vs) {
        const double m = median(v.v);
        std::printf("RESULT workload=L1 system=mailroom variant=%s value=%.1f unit=ns_per_callback overhead_ns=%.1f "
                    "ratio=%.2f\n",
                    v.name, m, m - floor, m / floor);
    }
    std::printf("# churn: %ld timer shutdowns (membarriers) during the churn runs\n", churned);
    return 0;
}
