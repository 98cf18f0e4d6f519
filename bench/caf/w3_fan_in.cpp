// W3 for CAF 0.17: fan-in. Two plain producer threads (not actors) each send 5M messages to
// one actor with anon_send; the actor counts them and checks each producer's order. Figure: M
// messages per second from the start signal to the moment the actor counted the last one.
//
// Set-up and why it is the fair comparison: mailroom's receiver is an agent alone on a
// one_thread dispatcher (a thread of its own), and its producers are plain threads. CAF's
// equivalent receiver is a `detached` actor (a thread of its own; it blocks on its mailbox when
// empty), with scheduler.max-threads=2 as in every CAF peer (`--spawn scheduled` runs the
// receiver on the scheduler instead, for reference). The message carries the same two fields
// (uint32_t producer, uint64_t sequence). Note: CAF's mailboxes are unbounded and have no
// back-pressure, so the producers finish long before the receiver and the queued messages are
// held in memory (measured near 850 MB at 10M messages); mailroom's figure is taken under the
// same rule (no message limit set), and the RSS growth line shows the difference.

#include "../alloc_counter.hpp"
#include "caf_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W3";

struct run_result {
    std::atomic<bool> started{false};
    std::int64_t t1 = 0;
    bench::account a1;
    std::uint64_t count = 0;
    std::vector<std::uint64_t> next_seq;
    std::promise<void> done;
};

caf::behavior sink(caf::event_based_actor* self, std::uint64_t total, run_result* r) {
    r->started.store(true, std::memory_order_release);
    return {[=](std::uint32_t producer, std::uint64_t seq) {
        if (seq != r->next_seq[producer])
            bench::fail(workload, "producer " + std::to_string(producer) + ": got #" + std::to_string(seq) +
                                      ", expected #" + std::to_string(r->next_seq[producer]));
        ++r->next_seq[producer];
        if (++r->count == total) {
            r->t1 = bench::now_ns();
            r->a1 = bench::account::now();
            self->quit();
            r->done.set_value();
        }
    }};
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"producers", "N"}, {"spawn", "detached|scheduled"}};
    auto o = bench::parse(argc, argv, extras);
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    const std::string spawn = o.get("spawn", "detached");
    if (spawn != "detached" && spawn != "scheduled") bench::usage(argv[0], extras);
    std::printf("W3 CAF fan-in: %u producer threads x %llu messages to one %s actor\n", producers,
                static_cast<unsigned long long>(per_producer), spawn.c_str());

    bench::account_log accounts;
    auto s = bench::repeat(o, "M msg/s", [&] {
        run_result r;
        r.next_seq.assign(producers, 0);
        std::int64_t t0 = 0;
        bench::account a0;
        std::size_t rss_before = bench::rss_bytes(), rss_peak = 0;
        {
            caf::actor_system_config cfg;
            bench::caf_peer::configure(cfg, 2);
            caf::actor_system sys{cfg};
            caf::actor target =
                spawn == "detached" ? sys.spawn<caf::detached>(sink, total, &r) : sys.spawn(sink, total, &r);
            while (!r.started.load(std::memory_order_acquire)) std::this_thread::yield();

            std::atomic<bool> go{false};
            std::vector<std::thread> threads;
            for (std::uint32_t p = 0; p < producers; ++p)
                threads.emplace_back([&, p] {
                    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                    for (std::uint64_t i = 0; i < per_producer; ++i) caf::anon_send(target, p, i);
                });
            a0 = bench::account::now();
            t0 = bench::now_ns();
            go.store(true, std::memory_order_release);
            for (auto& t : threads) t.join();
            rss_peak = bench::rss_bytes();
            r.done.get_future().wait();
        }
        bench::check(r.count == total, workload,
                     "counted " + std::to_string(r.count) + " messages, expected " + std::to_string(total));
        std::printf("  (RSS grew %.0f MB while producers ran: messages queued)\n",
                    static_cast<double>(rss_peak > rss_before ? rss_peak - rss_before : 0) / 1e6);
        accounts.add(r.a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(r.t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "CAF fan-in, " + std::to_string(producers) + " producers to one actor", s, "M_msgs_per_s",
                  accounts.fields(), "caf");
    return 0;
}
