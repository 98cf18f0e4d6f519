// W12: mchain. Two plain producer threads each send 5M messages through one bounded chain
// (capacity 1,024, preallocated; a producer waits while it is full) to one consumer thread in
// receive(); the consumer checks that each producer's messages arrive in the order sent and
// that it got them all. Figure: M messages per second, from the start signal to the moment the
// consumer handled the last one.

#include "alloc_counter.hpp"
#include "harness.hpp"

#include <mailroom/mbox/mchain.hpp>

#include <atomic>
#include <thread>
#include <vector>

namespace {

constexpr const char* workload = "W12";

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"producers", "N"}, {"capacity", "N"}});
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const auto capacity = static_cast<std::size_t>(o.get_long("capacity", 1024));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    std::printf("W12 mchain: %u producer threads x %llu messages through one chain of %zu (producers wait) to one "
                "thread in receive()\n",
                producers, static_cast<unsigned long long>(per_producer), capacity);

    bench::account_log accounts;
    auto s = bench::repeat(o, "M msg/s", [&] {
        std::vector<std::uint64_t> next_seq(producers, 0);
        std::uint64_t count = 0;
        std::int64_t t0 = 0, t1 = 0;
        bench::account a0, a1;
        mailroom::mchain_stats cs;
        {
            mailroom::environment env;
            mailroom::mchain ch = mailroom::make_mchain(
                env, {.name = "w12", .capacity = capacity, .memory = mailroom::mchain_memory::preallocated,
                      .on_overflow = mailroom::mchain_overflow::throw_error,
                      .wait_for_space = std::chrono::hours(1)});
            std::atomic<bool> go{false};
            std::vector<std::thread> threads;
            for (std::uint32_t p = 0; p < producers; ++p)
                threads.emplace_back([&, p] {
                    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                    for (std::uint64_t i = 0; i < per_producer; ++i) mailroom::send<item>(ch, p, i);
                });
            a0 = bench::account::now();
            t0 = bench::now_ns();
            go.store(true, std::memory_order_release);
            const mailroom::receive_result r =
                mailroom::receive(mailroom::from(ch).handle_n(total), [&](const item& m) {
                    if (m.seq != next_seq[m.producer])
                        bench::fail(workload, "producer " + std::to_string(m.producer) + ": got #" +
                                                  std::to_string(m.seq) + ", expected #" +
                                                  std::to_string(next_seq[m.producer]));
                    ++next_seq[m.producer];
                    ++count;
                });
            t1 = bench::now_ns();
            a1 = bench::account::now();
            for (auto& t : threads) t.join();
            bench::check(r.status == mailroom::receive_status::handled_n, workload, "receive() did not handle them all");
            cs = ch.stats();
            env.stop();
            env.join();
            bench::check_stats(workload, env.stats(), total);
        }
        bench::check(count == total, workload,
                     "counted " + std::to_string(count) + " messages, expected " + std::to_string(total));
        bench::check(cs.high_water <= capacity, workload, "the chain held more than its capacity");
        accounts.add(a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "mchain, " + std::to_string(producers) + " producers to one receive()", s, "M_msgs_per_s",
                  accounts.fields());
    return 0;
}
