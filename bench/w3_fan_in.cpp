// W3: fan-in. Two plain producer threads (not agents) each send 5M messages to one agent's
// direct mbox; the agent counts them and checks that each producer's messages arrive in the
// order sent. Figure: M messages per second, total messages over the time from the start
// signal to the moment the agent counted the last one.

#include "alloc_counter.hpp"
#include "harness.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W3";

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};

struct run_result {
    std::atomic<bool> started{false};
    std::int64_t t1 = 0;
    bench::account a1;  // allocations and CPU time at t1
    std::uint64_t count = 0;
    std::vector<std::uint64_t> next_seq;
};

class sink final : public mailroom::agent {
public:
    sink(std::uint64_t total, run_result* r) : total_(total), r_(r) {}

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const item& m) {
            if (m.seq != r_->next_seq[m.producer])
                bench::fail(workload, "producer " + std::to_string(m.producer) + ": got #" + std::to_string(m.seq) +
                                          ", expected #" + std::to_string(r_->next_seq[m.producer]));
            ++r_->next_seq[m.producer];
            if (++r_->count == total_) {
                r_->t1 = bench::now_ns();
                r_->a1 = bench::account::now();
                stop_environment();
            }
        });
    }
    void on_start() override { r_->started.store(true, std::memory_order_release); }

private:
    std::uint64_t total_;
    run_result* r_;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"producers", "N"}});
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    std::printf("W3 fan-in: %u producer threads x %llu messages to one agent (one_thread dispatcher)\n", producers,
                static_cast<unsigned long long>(per_producer));

    bench::account_log accounts;
    auto s = bench::repeat(o, "M msg/s", [&] {
        run_result r;
        r.next_seq.assign(producers, 0);
        std::int64_t t0 = 0;
        bench::account a0;
        std::uint64_t parks = 0;
        std::size_t rss_before = bench::rss_bytes(), rss_peak = 0;
        {
            mailroom::environment env;
            mailroom::coop_options opts;
            opts.bind = mailroom::one_thread::make_dispatcher(env, "sink").bind();
            mailroom::coop c(env, std::move(opts));
            mailroom::mbox target = c.make_agent<sink>(total, &r).direct_mbox();
            mailroom::register_coop(std::move(c));
            while (!r.started.load(std::memory_order_acquire)) std::this_thread::yield();

            std::atomic<bool> go{false};
            std::vector<std::thread> threads;
            for (std::uint32_t p = 0; p < producers; ++p)
                threads.emplace_back([&, p] {
                    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                    for (std::uint64_t i = 0; i < per_producer; ++i) mailroom::send<item>(target, p, i);
                });
            a0 = bench::account::now();
            t0 = bench::now_ns();
            go.store(true, std::memory_order_release);
            for (auto& t : threads) t.join();
            rss_peak = bench::rss_bytes();
            env.join();
            bench::check_stats(workload, env.stats(), total);
            parks = bench::total_parks(env);
        }
        bench::check(r.count == total, workload,
                     "counted " + std::to_string(r.count) + " messages, expected " + std::to_string(total));
        std::printf("  (consumer parked %llu times; RSS grew %.0f MB while producers ran: messages queued)\n",
                    static_cast<unsigned long long>(parks),
                    static_cast<double>(rss_peak > rss_before ? rss_peak - rss_before : 0) / 1e6);
        accounts.add(r.a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(r.t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "fan-in, " + std::to_string(producers) + " producers to one agent", s, "M_msgs_per_s", accounts.fields());
    return 0;
}
