// W4 for CAF 0.17: fan-out. The main thread publishes 100k messages to a group with 100
// subscriber actors on 2 scheduler workers. Every subscriber counts its copies and checks their
// order. Figure: M deliveries per second (messages x subscribers over the time from the first
// publish until the last subscriber counted its last message).
//
// Set-up and why it is the fair comparison: mailroom publishes to an MPMC mbox (publish-
// subscribe by message type) with 100 subscriber agents on a 2-thread thread_pool where each
// agent is its own FIFO (so subscribers run in parallel). CAF's publish-subscribe is a group:
// here a local anonymous group, subscribers joined with spawn_in_group before the first publish,
// 100 scheduled (event-based) actors, scheduler.max-threads=2 (the same two worker threads),
// the publisher a plain thread using anon_send as mailroom's main thread uses send. The message
// is one uint64_t sequence number, as in mailroom.

#include "caf_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W4";

struct shared_state {
    std::atomic<std::uint32_t> started{0};
    std::atomic<std::uint32_t> done{0};
    std::atomic<std::uint64_t> delivered{0};
    std::uint32_t subscribers = 0;
    std::int64_t t1 = 0;
    std::promise<void> finished;
};

caf::behavior subscriber(caf::event_based_actor* self, std::uint64_t messages, shared_state* s) {
    s->started.fetch_add(1, std::memory_order_release);
    auto next = std::make_shared<std::uint64_t>(0);
    return {[=](std::uint64_t seq) {
        if (seq != *next)
            bench::fail(workload, "subscriber got #" + std::to_string(seq) + ", expected #" + std::to_string(*next));
        if (++*next == messages) {
            s->delivered.fetch_add(*next, std::memory_order_relaxed);
            self->quit();
            if (s->done.fetch_add(1, std::memory_order_acq_rel) + 1 == s->subscribers) {
                s->t1 = bench::now_ns();
                s->finished.set_value();
            }
        }
    }};
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"subscribers", "N"}, {"threads", "N"}});
    const std::uint64_t messages = o.scaled(100'000, 100);
    const auto subscribers = static_cast<std::uint32_t>(o.get_long("subscribers", 100));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::uint64_t deliveries = messages * subscribers;
    std::printf("W4 CAF fan-out: %llu messages to a group, %u subscriber actors, scheduler.max-threads=%zu\n",
                static_cast<unsigned long long>(messages), subscribers, threads);

    auto s = bench::repeat(o, "M deliveries/s", [&] {
        shared_state st;
        st.subscribers = subscribers;
        std::int64_t t0 = 0, t_published = 0;
        {
            caf::actor_system_config cfg;
            bench::caf_peer::configure(cfg, threads);
            caf::actor_system sys{cfg};
            caf::group topic = sys.groups().anonymous();
            for (std::uint32_t i = 0; i < subscribers; ++i) sys.spawn_in_group(topic, subscriber, messages, &st);
            while (st.started.load(std::memory_order_acquire) < subscribers) std::this_thread::yield();

            t0 = bench::now_ns();
            for (std::uint64_t i = 0; i < messages; ++i) caf::anon_send(topic, i);
            t_published = bench::now_ns();
            st.finished.get_future().wait();
        }
        bench::check(st.done.load() == subscribers && st.delivered.load() == deliveries, workload,
                     std::to_string(st.done.load()) + " of " + std::to_string(subscribers) + " subscribers finished, " +
                         std::to_string(st.delivered.load()) + " of " + std::to_string(deliveries) + " deliveries");
        std::printf("  (publishing took %.1f ms of %.1f ms)\n", static_cast<double>(t_published - t0) / 1e6,
                    static_cast<double>(st.t1 - t0) / 1e6);
        return static_cast<double>(deliveries) / (static_cast<double>(st.t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "CAF fan-out to " + std::to_string(subscribers) + " subscribers", s, "M_deliveries_per_s",
                  {}, "caf");
    return 0;
}
