// W12 for SObjectizer 5.8: an mchain between threads. Two plain producer threads each send 5M
// messages into one bounded mchain (capacity 1,024, storage preallocated, producers wait up to
// 10 s when it is full); one plain consumer thread takes them with so_5::receive and checks each
// producer's order. Figure: M messages per second from the start signal to the moment the
// consumer took the last one.
//
// Set-up and why it is the fair comparison: mailroom's W12 is the same chain (capacity 1,024,
// preallocated, producers wait when it is full), the same two fields (uint32_t producer,
// uint64_t sequence), plain threads on both sides and one receive() loop handling every message.
// The overflow reaction after the 10 s wait is throw_exception, which never fires in a run that
// passes (a consumer that stalls 10 s is a failure either way). No agent and no dispatcher take
// part: the environment only owns the chain. Nothing else differs from SObjectizer's defaults.

#include "../alloc_counter.hpp"
#include "so5_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W12";

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"producers", "N"}, {"capacity", "N"}};
    auto o = bench::parse(argc, argv, extras);
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const auto capacity = static_cast<std::size_t>(o.get_long("capacity", 1024));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    std::printf("W12 SObjectizer mchain: %u producer threads x %llu messages through one mchain of capacity %zu "
                "(preallocated, producers wait when full) to one consumer thread in receive()\n",
                producers, static_cast<unsigned long long>(per_producer), capacity);

    bench::account_log accounts;
    auto s = bench::repeat(o, "M msg/s", [&] {
        so_5::wrapped_env_t env;
        auto ch = so_5::create_mchain(env, std::chrono::seconds(10), capacity,
                                      so_5::mchain_props::memory_usage_t::preallocated,
                                      so_5::mchain_props::overflow_reaction_t::throw_exception);
        std::vector<std::uint64_t> next(producers, 0);
        std::uint64_t count = 0;
        std::int64_t t1 = 0;
        bench::account a1;
        std::thread consumer([&] {
            so_5::receive(so_5::from(ch).handle_n(total), [&](so_5::mhood_t<item> m) {
                if (m->seq != next[m->producer])
                    bench::fail(workload, "producer " + std::to_string(m->producer) + ": got #" +
                                              std::to_string(m->seq) + ", expected #" +
                                              std::to_string(next[m->producer]));
                ++next[m->producer];
                ++count;
            });
            t1 = bench::now_ns();
            a1 = bench::account::now();
        });
        std::atomic<bool> go{false};
        std::vector<std::thread> threads;
        for (std::uint32_t p = 0; p < producers; ++p)
            threads.emplace_back([&, p] {
                while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                for (std::uint64_t i = 0; i < per_producer; ++i) so_5::send<item>(ch, p, i);
            });
        const bench::account a0 = bench::account::now();
        const std::int64_t t0 = bench::now_ns();
        go.store(true, std::memory_order_release);
        for (auto& t : threads) t.join();
        consumer.join();
        so_5::close_drop_content(so_5::exceptions_enabled, ch);
        bench::check(count == total, workload,
                     "received " + std::to_string(count) + " messages, expected " + std::to_string(total));
        accounts.add(a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload,
                  "SObjectizer mchain, " + std::to_string(producers) + " producers, capacity " +
                      std::to_string(capacity) + ", to one receive() thread",
                  s, "M_msgs_per_s", accounts.fields(), "sobjectizer");
    return 0;
}
