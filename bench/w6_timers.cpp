// W6: 1M one-shot timers. The main thread arms 1M send_delayed messages (handles detached)
// with delays spread uniformly over 0..100 ms, round robin to 100 agents on a 2-thread
// thread_pool. Each agent counts what arrives; every timer must fire exactly once. Figure: ms
// from arming the first timer until the last one was delivered and counted (at best the
// arming time plus the 100 ms spread).

#include "harness.hpp"

#include <atomic>
#include <random>
#include <thread>

namespace {

constexpr const char* workload = "W6";

struct due {
    std::uint32_t index;
    std::int64_t deadline_ns;  // approximately when it was meant to fire (for the lateness line)
};

struct shared_state {
    std::atomic<std::uint32_t> started{0};
    std::atomic<std::uint32_t> done{0};
    std::uint32_t agents = 0;
    std::vector<std::uint8_t> seen;  // one byte per timer; each written by one agent only
    std::int64_t t1 = 0;
    std::atomic<std::int64_t> max_late{0};
};

class receiver final : public mailroom::agent {
public:
    receiver(std::uint64_t expected, shared_state* s) : expected_(expected), s_(s) {}

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const due& d) {
            std::int64_t now = bench::now_ns();
            if (s_->seen[d.index]++ != 0) bench::fail(workload, "timer #" + std::to_string(d.index) + " fired twice");
            max_late_ = std::max(max_late_, now - d.deadline_ns);
            if (++count_ == expected_) {
                std::int64_t prev = s_->max_late.load();
                while (prev < max_late_ && !s_->max_late.compare_exchange_weak(prev, max_late_)) {
                }
                if (s_->done.fetch_add(1, std::memory_order_acq_rel) + 1 == s_->agents) {
                    s_->t1 = now;
                    stop_environment();
                }
            }
        });
    }
    void on_start() override { s_->started.fetch_add(1, std::memory_order_release); }

private:
    std::uint64_t expected_;
    std::uint64_t count_ = 0;
    std::int64_t max_late_ = 0;
    shared_state* s_;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"agents", "N"}, {"threads", "N"}, {"spread-ms", "N"}});
    const std::uint64_t timers = o.scaled(1'000'000, 1000);
    const auto agents = static_cast<std::uint32_t>(o.get_long("agents", 100));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::int64_t spread_ns = o.get_long("spread-ms", 100) * 1'000'000;
    std::printf("W6 timers: %llu one-shot timers over 0..%lld ms to %u agents on a %zu-thread thread_pool\n",
                static_cast<unsigned long long>(timers), static_cast<long long>(spread_ns / 1'000'000), agents, threads);

    // The same delays every run.
    std::vector<std::int64_t> delays(timers);
    std::mt19937_64 rng(42);
    std::uniform_int_distribution<std::int64_t> dist(0, spread_ns);
    for (auto& d : delays) d = dist(rng);

    auto s = bench::repeat(o, "ms", [&] {
        shared_state st;
        st.agents = agents;
        st.seen.assign(timers, 0);
        std::int64_t t0 = 0, t_armed = 0;
        {
            mailroom::environment env;
            mailroom::thread_pool::params p;
            p.threads = threads;
            p.order = mailroom::thread_pool::fifo::agent;
            mailroom::coop_options opts;
            opts.bind = mailroom::thread_pool::make_dispatcher(env, "pool", p).bind();
            mailroom::coop c(env, std::move(opts));
            std::vector<mailroom::mbox> targets;
            for (std::uint32_t i = 0; i < agents; ++i)
                targets.push_back(
                    c.make_agent<receiver>(timers / agents + (i < timers % agents ? 1 : 0), &st).direct_mbox());
            mailroom::register_coop(std::move(c));
            while (st.started.load(std::memory_order_acquire) < agents) std::this_thread::yield();

            t0 = bench::now_ns();
            std::int64_t now = t0;
            for (std::uint64_t i = 0; i < timers; ++i) {
                if ((i & 1023) == 0) now = bench::now_ns();
                mailroom::send_delayed<due>(targets[i % agents], std::chrono::nanoseconds(delays[i]),
                                            static_cast<std::uint32_t>(i), now + delays[i])
                    .detach();
            }
            t_armed = bench::now_ns();
            env.join();
            auto es = env.stats();
            bench::check_stats(workload, es, timers);
            bench::check(es.timers_fired == timers && es.timers_armed == timers, workload,
                         "armed " + std::to_string(es.timers_armed) + ", fired " + std::to_string(es.timers_fired) +
                             ", expected " + std::to_string(timers));
        }
        bench::check(st.done.load() == agents, workload,
                     std::to_string(st.done.load()) + " of " + std::to_string(agents) + " agents got all their timers");
        for (std::uint64_t i = 0; i < timers; ++i)
            if (st.seen[i] != 1) bench::fail(workload, "timer #" + std::to_string(i) + " did not fire");
        std::printf("  (arming took %.1f ms; latest delivery %.2f ms after its deadline)\n",
                    static_cast<double>(t_armed - t0) / 1e6, static_cast<double>(st.max_late.load()) / 1e6);
        return static_cast<double>(st.t1 - t0) / 1e6;
    });
    bench::report(workload, std::to_string(timers) + " timers", s, "ms");
    return 0;
}
