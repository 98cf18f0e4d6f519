// W4: fan-out. The main thread publishes 100k messages to an MPMC mbox with 100 subscriber
// agents on a 2-thread thread_pool dispatcher (fifo::agent, so subscribers run in parallel).
// Every subscriber counts its copies and checks their order. Figure: M deliveries per second
// (messages x subscribers over the time from the first publish until the last subscriber
// counted its last message).

#include "harness.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W4";

struct quote {
    std::uint64_t seq;
};

struct shared_state {
    std::atomic<std::uint32_t> started{0};
    std::atomic<std::uint32_t> done{0};
    std::atomic<std::uint64_t> delivered{0};
    std::uint32_t subscribers = 0;
    std::int64_t t1 = 0;
};

class subscriber final : public mailroom::agent {
public:
    subscriber(mailroom::mbox topic, std::uint64_t messages, shared_state* s)
        : topic_(std::move(topic)), messages_(messages), s_(s) {}

protected:
    void configure() override {
        subscribe(topic_, [this](const quote& q) {
            if (q.seq != next_) bench::fail(workload, "subscriber got #" + std::to_string(q.seq) + ", expected #" +
                                                          std::to_string(next_));
            if (++next_ == messages_) {
                s_->delivered.fetch_add(next_, std::memory_order_relaxed);
                if (s_->done.fetch_add(1, std::memory_order_acq_rel) + 1 == s_->subscribers) {
                    s_->t1 = bench::now_ns();
                    stop_environment();
                }
            }
        });
    }
    void on_start() override { s_->started.fetch_add(1, std::memory_order_release); }

private:
    mailroom::mbox topic_;
    std::uint64_t messages_;
    std::uint64_t next_ = 0;
    shared_state* s_;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"subscribers", "N"}, {"threads", "N"}});
    const std::uint64_t messages = o.scaled(100'000, 100);
    const auto subscribers = static_cast<std::uint32_t>(o.get_long("subscribers", 100));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::uint64_t deliveries = messages * subscribers;
    std::printf("W4 fan-out: %llu messages to an MPMC mbox, %u subscribers on a %zu-thread thread_pool (fifo::agent)\n",
                static_cast<unsigned long long>(messages), subscribers, threads);

    auto s = bench::repeat(o, "M deliveries/s", [&] {
        shared_state st;
        st.subscribers = subscribers;
        std::int64_t t0 = 0, t_published = 0;
        {
            mailroom::environment env;
            mailroom::thread_pool::params p;
            p.threads = threads;
            p.order = mailroom::thread_pool::fifo::agent;
            mailroom::coop_options opts;
            opts.bind = mailroom::thread_pool::make_dispatcher(env, "pool", p).bind();
            mailroom::mbox topic = mailroom::make_mpmc_mbox(env);
            mailroom::coop c(env, std::move(opts));
            for (std::uint32_t i = 0; i < subscribers; ++i) c.make_agent<subscriber>(topic, messages, &st);
            mailroom::register_coop(std::move(c));
            while (st.started.load(std::memory_order_acquire) < subscribers) std::this_thread::yield();

            t0 = bench::now_ns();
            for (std::uint64_t i = 0; i < messages; ++i) mailroom::send<quote>(topic, i);
            t_published = bench::now_ns();
            env.join();
            bench::check_stats(workload, env.stats(), deliveries);
        }
        bench::check(st.done.load() == subscribers && st.delivered.load() == deliveries, workload,
                     std::to_string(st.done.load()) + " of " + std::to_string(subscribers) + " subscribers finished, " +
                         std::to_string(st.delivered.load()) + " of " + std::to_string(deliveries) + " deliveries");
        std::printf("  (publishing took %.1f ms of %.1f ms)\n", static_cast<double>(t_published - t0) / 1e6,
                    static_cast<double>(st.t1 - t0) / 1e6);
        return static_cast<double>(deliveries) / (static_cast<double>(st.t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "fan-out to " + std::to_string(subscribers) + " subscribers", s, "M_deliveries_per_s");
    return 0;
}
