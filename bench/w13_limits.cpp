// W13: W3's fan-in with a drop limit of 1,000 on the receiver. Two plain producer threads each
// send 5M messages to one agent's direct mbox as fast as they can; the agent takes at most
// 1,000 waiting messages of the type, and the rest are dropped (counted). Figures: M messages
// per second offered (all messages over the time the producers took), and the resident memory
// at the end (`rss_end_mb`) and its growth while the producers ran (`rss_growth_mb`): flat, where
// W3 without a limit grows by the whole backlog. Self-checks: each producer's messages arrive in
// the order sent (with gaps where drops were), the books balance (sent = delivered + ... +
// dropped), and the memory grew by less than 64 MB.

#include "alloc_counter.hpp"
#include "harness.hpp"

#include <mailroom/mbox/limits.hpp>

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W13";
constexpr std::uint64_t limit = 1000;

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};

struct run_result {
    std::atomic<bool> started{false};
    std::uint64_t count = 0;
    std::vector<std::uint64_t> next_seq;
};

class sink final : public mailroom::agent {
public:
    explicit sink(run_result* r) : r_(r) { limit<item>(::limit, mailroom::limit_drop); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const item& m) {
            if (m.seq < r_->next_seq[m.producer])
                bench::fail(workload, "producer " + std::to_string(m.producer) + ": got #" + std::to_string(m.seq) +
                                          " after #" + std::to_string(r_->next_seq[m.producer] - 1));
            r_->next_seq[m.producer] = m.seq + 1;
            ++r_->count;
        });
    }
    void on_start() override { r_->started.store(true, std::memory_order_release); }

private:
    run_result* r_;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"producers", "N"}});
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    std::printf("W13 fan-in with a drop limit of %llu: %u producer threads x %llu messages to one agent\n",
                static_cast<unsigned long long>(limit), producers, static_cast<unsigned long long>(per_producer));

    bench::account_log accounts;
    double rss_end_mb = 0, rss_growth_mb = 0;
    auto s = bench::repeat(o, "M msg/s offered", [&] {
        run_result r;
        r.next_seq.assign(producers, 0);
        std::int64_t t0 = 0, t1 = 0;
        bench::account a0, a1;
        std::size_t rss_before = 0, rss_after = 0;
        mailroom::environment_stats st;
        {
            mailroom::environment env;
            mailroom::coop_options opts;
            opts.bind = mailroom::one_thread::make_dispatcher(env, "sink").bind();
            mailroom::coop c(env, std::move(opts));
            mailroom::mbox target = c.make_agent<sink>(&r).direct_mbox();
            mailroom::register_coop(std::move(c));
            while (!r.started.load(std::memory_order_acquire)) std::this_thread::yield();

            std::atomic<bool> go{false};
            std::vector<std::thread> threads;
            for (std::uint32_t p = 0; p < producers; ++p)
                threads.emplace_back([&, p] {
                    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                    for (std::uint64_t i = 0; i < per_producer; ++i) mailroom::send<item>(target, p, i);
                });
            rss_before = bench::rss_bytes();
            a0 = bench::account::now();
            t0 = bench::now_ns();
            go.store(true, std::memory_order_release);
            for (auto& t : threads) t.join();
            t1 = bench::now_ns();
            a1 = bench::account::now();
            rss_after = bench::rss_bytes();
            env.stop();
            env.join();
            st = env.stats();
        }
        const std::uint64_t outcomes = st.messages_delivered + st.messages_lost + st.messages_ignored +
                                       st.messages_discarded + st.messages_cancelled + st.messages_dropped;
        bench::check(st.messages_sent == total && outcomes == total, workload,
                     "sent " + std::to_string(st.messages_sent) + ", outcomes " + std::to_string(outcomes) +
                         ", offered " + std::to_string(total));
        bench::check(st.messages_lost == 0 && st.messages_ignored == 0 && st.handler_exceptions == 0, workload,
                     "lost " + std::to_string(st.messages_lost) + ", ignored " + std::to_string(st.messages_ignored));
        bench::check(r.count == st.messages_delivered, workload,
                     "counted " + std::to_string(r.count) + ", delivered " + std::to_string(st.messages_delivered));
        const std::size_t growth = rss_after > rss_before ? rss_after - rss_before : 0;
        bench::check(growth < (std::size_t{64} << 20), workload,
                     "resident memory grew by " + std::to_string(growth >> 20) + " MB under a limit of 1,000");
        std::printf("  (handled %llu, dropped %llu; RSS grew %.1f MB while producers ran, %.1f MB at the end)\n",
                    static_cast<unsigned long long>(st.messages_delivered),
                    static_cast<unsigned long long>(st.messages_dropped), static_cast<double>(growth) / 1e6,
                    static_cast<double>(rss_after) / 1e6);
        rss_end_mb = static_cast<double>(rss_after) / 1e6;
        rss_growth_mb = static_cast<double>(growth) / 1e6;
        accounts.add(a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9) / 1e6;
    });
    char extra[96];
    std::snprintf(extra, sizeof extra, " rss_end_mb=%.1f rss_growth_mb=%.1f", rss_end_mb, rss_growth_mb);
    bench::report(workload, "fan-in, " + std::to_string(producers) + " producers to one agent behind a drop limit of 1,000",
                  s, "M_msgs_per_s_offered", accounts.fields() + extra);
    return 0;
}
