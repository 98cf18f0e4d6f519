// W6 floor: 1M one-shot Asio steady_timers with delays spread uniformly over 0..100 ms (the
// same delays as mailroom's W6: mt19937_64 seeded with 42). Figure: ms from arming the first
// timer until the last one fired.
//
// Standalone Asio (Debian's libasio-dev) as a minimal timer program: the main thread arms the
// timers (one steady_timer object and one async_wait each, as mailroom's main thread arms one
// send_delayed each) while one thread runs the io_context and fires them; each completion
// marks its timer as seen and counts. Every timer must fire exactly once. With a 100 ms
// spread, 100 ms is the bound nothing can beat; the rest is arming and firing cost.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <optional>
#include <random>
#include <thread>

namespace {

constexpr const char* workload = "W6";

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"spread-ms", "N"}, {"threads", "N"}});
    const std::uint64_t timers = o.scaled(1'000'000, 1000);
    const std::int64_t spread_ns = o.get_long("spread-ms", 100) * 1'000'000;
    const auto threads = static_cast<std::size_t>(std::max(1L, o.get_long("threads", 1)));
    std::printf("W6 floor: %llu Asio steady_timers over 0..%lld ms, armed by the main thread, fired by %zu io thread(s)\n",
                static_cast<unsigned long long>(timers), static_cast<long long>(spread_ns / 1'000'000), threads);

    std::vector<std::int64_t> delays(timers);
    std::mt19937_64 rng(42);
    std::uniform_int_distribution<std::int64_t> dist(0, spread_ns);
    for (auto& d : delays) d = dist(rng);

    auto s = bench::repeat(o, "ms", [&] {
        asio::io_context io;
        auto guard = asio::make_work_guard(io);
        std::vector<std::optional<asio::steady_timer>> all(timers);
        std::vector<std::uint8_t> seen(timers, 0);
        std::atomic<std::uint64_t> fired{0};
        std::atomic<std::int64_t> t1{0};
        std::vector<std::thread> runners;
        for (std::size_t i = 0; i < threads; ++i) runners.emplace_back([&] { io.run(); });

        const std::int64_t t0 = bench::now_ns();
        for (std::uint64_t i = 0; i < timers; ++i) {
            auto& t = all[i].emplace(io, std::chrono::nanoseconds(delays[i]));
            t.async_wait([&, i](const std::error_code& ec) {
                if (ec) bench::fail(workload, "timer #" + std::to_string(i) + ": " + ec.message());
                if (seen[i]++ != 0) bench::fail(workload, "timer #" + std::to_string(i) + " fired twice");
                if (fired.fetch_add(1, std::memory_order_acq_rel) + 1 == timers) {
                    t1.store(bench::now_ns());
                    io.stop();
                }
            });
        }
        const std::int64_t t_armed = bench::now_ns();
        guard.reset();
        for (auto& r : runners) r.join();
        bench::check(fired.load() == timers, workload,
                     std::to_string(fired.load()) + " of " + std::to_string(timers) + " timers fired");
        for (std::uint64_t i = 0; i < timers; ++i)
            if (seen[i] != 1) bench::fail(workload, "timer #" + std::to_string(i) + " did not fire");
        std::printf("  (arming took %.1f ms)\n", static_cast<double>(t_armed - t0) / 1e6);
        return static_cast<double>(t1.load() - t0) / 1e6;
    });
    bench::report(workload, std::to_string(timers) + " Asio steady_timers", s, "ms", {}, "floor");
    return 0;
}
