// W13 for SObjectizer 5.8: fan-in under overload with a drop limit. Two plain producer threads
// each send 5M messages to one agent's direct mbox with so_5::send; the agent has a limit of
// 1,000 queued messages of that type with the drop reaction (limit_then_drop), so what arrives
// while 1,000 wait is thrown away. The agent checks that each producer's messages come in
// increasing order (gaps are the drops). Figures: M messages per second offered (sent by the
// producers, from the start signal until both returned), and the resident memory when they
// returned and its growth while they ran (extra fields rss_end_mb and rss_growth_mb; flat means
// the limit bounds the queue).
//
// Set-up as W3 (the receiver alone on a one_thread dispatcher, the simple queue lock, the same
// two fields), plus the limit; the end-of-run signal has a limit of its own because SObjectizer
// wants a limit on every type an agent with limits handles. SObjectizer's drop is silent, so the
// drops are derived: sent minus handled.

#include "../alloc_counter.hpp"
#include "so5_common.hpp"

#include <atomic>
#include <future>
#include <thread>

namespace {

constexpr const char* workload = "W13";

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};
struct done final : so_5::signal_t {};

struct run_result {
    std::uint64_t handled = 0;
    std::vector<std::uint64_t> next_seq;  // the least sequence number still allowed, per producer
};

class sink final : public so_5::agent_t {
public:
    sink(context_t ctx, unsigned limit, run_result* r)
        : so_5::agent_t(ctx + limit_then_drop<item>(limit) + limit_then_drop<done>(1)), r_(r) {}

    void so_define_agent() override {
        so_subscribe_self()
            .event([this](so_5::mhood_t<item> m) {
                if (m->seq < r_->next_seq[m->producer])
                    bench::fail(workload, "producer " + std::to_string(m->producer) + ": got #" +
                                              std::to_string(m->seq) + " after #" +
                                              std::to_string(r_->next_seq[m->producer] - 1));
                r_->next_seq[m->producer] = m->seq + 1;
                ++r_->handled;
            })
            .event([this](so_5::mhood_t<done>) { so_environment().stop(); });
    }

private:
    run_result* r_;
};

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag, {"producers", "N"}, {"limit", "N"}};
    auto o = bench::parse(argc, argv, extras);
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const auto limit = static_cast<unsigned>(o.get_long("limit", 1000));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    const lock_kind lock = lock_from(o, lock_kind::simple, argv[0], extras);
    std::printf("W13 SObjectizer fan-in with a drop limit: %u producer threads x %llu messages to one agent with "
                "limit_then_drop(%u) (one_thread dispatcher, %s lock)\n",
                producers, static_cast<unsigned long long>(per_producer), limit, to_string(lock));

    bench::account_log accounts;
    double rss_end_mb = 0, rss_growth_mb = 0;
    std::uint64_t handled_last = 0;
    auto s = bench::repeat(o, "M msg/s offered", [&] {
        run_result r;
        r.next_seq.assign(producers, 0);
        std::int64_t t0 = 0, t1 = 0;
        bench::account a0, a1;
        {
            so_5::mbox_t target;
            so_5::wrapped_env_t env{
                so_5::wrapped_env_t::wait_init_completion,
                [&](so_5::environment_t& e) {
                    e.introduce_coop(so_5::disp::one_thread::make_dispatcher(e).binder(), [&](so_5::coop_t& c) {
                        target = c.make_agent<sink>(limit, &r)->so_direct_mbox();
                    });
                },
                [&](so_5::environment_params_t& params) { use_lock(params, lock); }};

            std::atomic<bool> go{false};
            std::vector<std::thread> threads;
            for (std::uint32_t p = 0; p < producers; ++p)
                threads.emplace_back([&, p] {
                    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                    for (std::uint64_t i = 0; i < per_producer; ++i) so_5::send<item>(target, p, i);
                });
            const std::size_t rss_before = bench::rss_bytes();
            a0 = bench::account::now();
            t0 = bench::now_ns();
            go.store(true, std::memory_order_release);
            for (auto& t : threads) t.join();
            t1 = bench::now_ns();
            a1 = bench::account::now();
            const std::size_t rss_after = bench::rss_bytes();
            rss_end_mb = static_cast<double>(rss_after) / 1e6;
            rss_growth_mb = static_cast<double>(rss_after > rss_before ? rss_after - rss_before : 0) / 1e6;
            so_5::send<done>(target);
            env.join();  // the sink stops the environment when the end signal comes up
        }
        bench::check(r.handled > 0 && r.handled <= total, workload,
                     "handled " + std::to_string(r.handled) + " of " + std::to_string(total) + " messages");
        std::printf("  (handled %llu, dropped %llu, RSS %.1f MB when the producers returned)\n",
                    static_cast<unsigned long long>(r.handled), static_cast<unsigned long long>(total - r.handled),
                    rss_end_mb);
        handled_last = r.handled;
        accounts.add(a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9) / 1e6;
    });
    char extra[128];
    std::snprintf(extra, sizeof extra, " rss_end_mb=%.1f rss_growth_mb=%.1f handled=%llu", rss_end_mb, rss_growth_mb,
                  static_cast<unsigned long long>(handled_last));
    bench::report(workload,
                  "SObjectizer fan-in with limit_then_drop(" + std::to_string(limit) + "), " +
                      std::to_string(producers) + " producers (" + to_string(lock) + " lock)",
                  s, "M_msgs_per_s_offered", accounts.fields() + extra, "sobjectizer");
    return 0;
}
