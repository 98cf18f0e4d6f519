// W4 for SObjectizer 5.8: fan-out. The main thread publishes 100k messages to an MPMC mbox
// with 100 subscriber agents on a 2-thread thread_pool dispatcher. Every subscriber counts its
// copies and checks their order. Figure: M deliveries per second (messages x subscribers over
// the time from the first publish until the last subscriber counted its last message).
//
// Set-up and why it is the fair comparison: mailroom publishes to an MPMC mbox (publish-
// subscribe by message type) with 100 subscriber agents on a 2-thread thread_pool where each
// agent is its own FIFO, so subscribers run in parallel. SObjectizer has exactly this: an
// anonymous MPMC mbox (environment_t::create_mbox()), a thread_pool dispatcher with
// thread_count(2) and fifo_t::individual (each agent its own queue, as mailroom's fifo::agent),
// and SObjectizer shares one immutable message among all subscribers, as mailroom does. The
// publisher is the main thread using so_5::send; the message is one uint64_t sequence number.
// max_demands_at_once: SObjectizer's default (4 demands of one agent per turn).
// Queue lock: the simple one (mutex + condition variable): two pool workers and the publisher
// are three busy threads on two cores, the case in which the combined lock's 1 ms spin takes
// the publisher's core (`--lock combined` runs the default). No timers are used. Nothing else
// differs from SObjectizer's defaults.

#include "so5_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W4";

struct quote {
    std::uint64_t seq;
};

struct shared_state {
    std::atomic<std::uint32_t> done{0};
    std::atomic<std::uint64_t> delivered{0};
    std::uint32_t subscribers = 0;
    std::int64_t t1 = 0;
};

class subscriber final : public so_5::agent_t {
public:
    subscriber(context_t ctx, so_5::mbox_t topic, std::uint64_t messages, shared_state* s)
        : so_5::agent_t(std::move(ctx)), topic_(std::move(topic)), messages_(messages), s_(s) {}

    void so_define_agent() override {
        so_subscribe(topic_).event([this](so_5::mhood_t<quote> q) {
            if (q->seq != next_)
                bench::fail(workload,
                            "subscriber got #" + std::to_string(q->seq) + ", expected #" + std::to_string(next_));
            if (++next_ == messages_) {
                s_->delivered.fetch_add(next_, std::memory_order_relaxed);
                if (s_->done.fetch_add(1, std::memory_order_acq_rel) + 1 == s_->subscribers) {
                    s_->t1 = bench::now_ns();
                    so_environment().stop();
                }
            }
        });
    }

private:
    so_5::mbox_t topic_;
    std::uint64_t messages_;
    std::uint64_t next_ = 0;
    shared_state* s_;
};

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag, {"subscribers", "N"}, {"threads", "N"}};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t messages = o.scaled(100'000, 100);
    const auto subscribers = static_cast<std::uint32_t>(o.get_long("subscribers", 100));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::uint64_t deliveries = messages * subscribers;
    const lock_kind lock = lock_from(o, lock_kind::simple, argv[0], extras);
    std::printf("W4 SObjectizer fan-out: %llu messages to an MPMC mbox, %u subscribers on a %zu-thread thread_pool "
                "(fifo individual), %s lock\n",
                static_cast<unsigned long long>(messages), subscribers, threads, to_string(lock));

    auto s = bench::repeat(o, "M deliveries/s", [&] {
        shared_state st;
        st.subscribers = subscribers;
        std::int64_t t0 = 0, t_published = 0;
        {
            so_5::mbox_t topic;
            // wait_init_completion: every subscriber is registered (subscribed) when the constructor returns.
            so_5::wrapped_env_t env{
                so_5::wrapped_env_t::wait_init_completion,
                [&](so_5::environment_t& e) {
                    namespace tp = so_5::disp::thread_pool;
                    auto pool = tp::make_dispatcher(e, threads);
                    topic = e.create_mbox();
                    e.introduce_coop(pool.binder(tp::bind_params_t{}.fifo(tp::fifo_t::individual)),
                                     [&](so_5::coop_t& c) {
                                         for (std::uint32_t i = 0; i < subscribers; ++i)
                                             c.make_agent<subscriber>(topic, messages, &st);
                                     });
                },
                [&](so_5::environment_params_t& params) { use_lock(params, lock); }};

            t0 = bench::now_ns();
            for (std::uint64_t i = 0; i < messages; ++i) so_5::send<quote>(topic, i);
            t_published = bench::now_ns();
            env.join();  // the last subscriber to finish stops the environment
        }
        bench::check(st.done.load() == subscribers && st.delivered.load() == deliveries, workload,
                     std::to_string(st.done.load()) + " of " + std::to_string(subscribers) + " subscribers finished, " +
                         std::to_string(st.delivered.load()) + " of " + std::to_string(deliveries) + " deliveries");
        std::printf("  (publishing took %.1f ms of %.1f ms)\n", static_cast<double>(t_published - t0) / 1e6,
                    static_cast<double>(st.t1 - t0) / 1e6);
        return static_cast<double>(deliveries) / (static_cast<double>(st.t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload,
                  "SObjectizer fan-out to " + std::to_string(subscribers) + " subscribers (" + to_string(lock) +
                      " lock)",
                  s, "M_deliveries_per_s", {}, "sobjectizer");
    return 0;
}
