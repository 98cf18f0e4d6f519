// W6 for CAF 0.17: 1M one-shot delayed messages with delays spread uniformly over 0..100 ms
// (the same delays as mailroom's W6: mt19937_64 seeded with 42), round robin to 100 actors on
// 2 scheduler workers. Each actor counts what arrives; every timer must fire exactly once.
// Figure: ms from arming the first timer until the last one was delivered and counted.
//
// Set-up and why it is the fair comparison: mailroom's main thread arms 1M send_delayed to 100
// agents on a 2-thread thread_pool, its timer service firing them. CAF's equivalent is
// delayed_anon_send from the main thread (CAF's actor clock, a thread of its own, holds the
// timeouts) to 100 scheduled actors with scheduler.max-threads=2. The message carries the same
// two fields (uint32_t index, int64_t deadline).

#include "caf_common.hpp"

#include <atomic>
#include <random>
#include <thread>

namespace {

constexpr const char* workload = "W6";

struct shared_state {
    std::atomic<std::uint32_t> started{0};
    std::atomic<std::uint32_t> done{0};
    std::uint32_t agents = 0;
    std::vector<std::uint8_t> seen;  // one byte per timer; each written by one actor only
    std::int64_t t1 = 0;
    std::atomic<std::int64_t> max_late{0};
    std::promise<void> finished;
};

caf::behavior receiver(caf::event_based_actor* self, std::uint64_t expected, shared_state* s) {
    s->started.fetch_add(1, std::memory_order_release);
    struct counts {
        std::uint64_t count = 0;
        std::int64_t max_late = 0;
    };
    auto c = std::make_shared<counts>();
    return {[=](std::uint32_t index, std::int64_t deadline) {
        const std::int64_t now = bench::now_ns();
        if (s->seen[index]++ != 0) bench::fail(workload, "timer #" + std::to_string(index) + " fired twice");
        c->max_late = std::max(c->max_late, now - deadline);
        if (++c->count == expected) {
            std::int64_t prev = s->max_late.load();
            while (prev < c->max_late && !s->max_late.compare_exchange_weak(prev, c->max_late)) {
            }
            self->quit();
            if (s->done.fetch_add(1, std::memory_order_acq_rel) + 1 == s->agents) {
                s->t1 = now;
                s->finished.set_value();
            }
        }
    }};
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"agents", "N"}, {"threads", "N"}, {"spread-ms", "N"}});
    const std::uint64_t timers = o.scaled(1'000'000, 1000);
    const auto agents = static_cast<std::uint32_t>(o.get_long("agents", 100));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::int64_t spread_ns = o.get_long("spread-ms", 100) * 1'000'000;
    std::printf("W6 CAF timers: %llu delayed_anon_send over 0..%lld ms to %u actors, scheduler.max-threads=%zu\n",
                static_cast<unsigned long long>(timers), static_cast<long long>(spread_ns / 1'000'000), agents, threads);

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
            caf::actor_system_config cfg;
            bench::caf_peer::configure(cfg, threads);
            caf::actor_system sys{cfg};
            std::vector<caf::actor> targets;
            for (std::uint32_t i = 0; i < agents; ++i)
                targets.push_back(sys.spawn(receiver, timers / agents + (i < timers % agents ? 1 : 0), &st));
            while (st.started.load(std::memory_order_acquire) < agents) std::this_thread::yield();

            t0 = bench::now_ns();
            std::int64_t now = t0;
            for (std::uint64_t i = 0; i < timers; ++i) {
                if ((i & 1023) == 0) now = bench::now_ns();
                caf::delayed_anon_send(targets[i % agents], std::chrono::nanoseconds(delays[i]),
                                       static_cast<std::uint32_t>(i), static_cast<std::int64_t>(now + delays[i]));
            }
            t_armed = bench::now_ns();
            st.finished.get_future().wait();
        }
        bench::check(st.done.load() == agents, workload,
                     std::to_string(st.done.load()) + " of " + std::to_string(agents) + " actors got all their timers");
        for (std::uint64_t i = 0; i < timers; ++i)
            if (st.seen[i] != 1) bench::fail(workload, "timer #" + std::to_string(i) + " did not fire");
        std::printf("  (arming took %.1f ms; latest delivery %.2f ms after its deadline)\n",
                    static_cast<double>(t_armed - t0) / 1e6, static_cast<double>(st.max_late.load()) / 1e6);
        return static_cast<double>(st.t1 - t0) / 1e6;
    });
    bench::report(workload, "CAF " + std::to_string(timers) + " timers", s, "ms", {}, "caf");
    return 0;
}
