#include "demo_flow.hpp"

#include "demo_agents.hpp"

#include <chrono>

namespace mailroom::tool {

namespace {

using namespace std::chrono_literals;

/// Records every quote, slowly (a disk that cannot keep up): at most tape_limit quotes wait for
/// it, the rest is dropped at the feed's send and counted.
class tape final : public agent {
public:
    tape(mbox quotes, demo_metrics& metrics) : quotes_(std::move(quotes)), metrics_(metrics) {
        limit<quote>(tape_limit, limit_drop);
    }

private:
    void configure() override {
        set_name("tape");
        subscribe(quotes_, [this](const quote&) {
            std::this_thread::sleep_for(200us);  // about 5,000 quotes a second at most
            if (metrics_.tape_recorded.fetch_add(1, std::memory_order_relaxed) % 64 == 0) note_waiting();
        });
    }
    void on_finish() override {
        for (const limit_stats& s : limit_stats_of(*this))
            metrics_.tape_dropped.fetch_add(s.dropped, std::memory_order_relaxed);
    }
    // What waits behind the handler now (the limit's own count), to show that it stays bounded.
    void note_waiting() {
        for (const limit_stats& s : limit_stats_of(*this))
            if (s.queued > metrics_.tape_most_waiting.load(std::memory_order_relaxed))
                metrics_.tape_most_waiting.store(s.queued, std::memory_order_relaxed);
    }

    mbox quotes_;
    demo_metrics& metrics_;
};

/// Trips after every `trip_every` quotes it sees closed; `open` lets nothing through and ends by
/// its time limit; in `half_open` the next quote closes it again.
class breaker final : public agent {
public:
    breaker(mbox quotes, demo_metrics& metrics) : quotes_(std::move(quotes)), metrics_(metrics) {}

private:
    static constexpr std::uint64_t trip_every = 20'000;

    state closed_{*this, "closed"};
    state open_{*this, "open"};
    state half_open_{*this, "half_open"};

    void configure() override {
        set_name("breaker");
        closed_.event(quotes_, [this](const quote&) {
            if (++seen_ % trip_every == 0) change_state(open_);
        });
        closed_.on_enter([this] { metrics_.breaker_closings.fetch_add(1, std::memory_order_relaxed); });
        open_.on_enter([this] { metrics_.breaker_trips.fetch_add(1, std::memory_order_relaxed); });
        open_.time_limit(20ms, half_open_);  // no quote handler in `open`: they are ignored (counted)
        half_open_.on_enter([this] { metrics_.breaker_time_limits.fetch_add(1, std::memory_order_relaxed); });
        half_open_.just_switch_to<quote>(quotes_, closed_);
    }
    void on_start() override { change_state(closed_); }
    void on_finish() override { metrics_.breaker_open_at_end.store(is_in(open_)); }

    mbox quotes_;
    demo_metrics& metrics_;
    std::uint64_t seen_ = 0;
};

struct tick {
    std::uint64_t sequence;
};

}  // namespace

flow_demo::flow_demo(environment& env, const dispatcher& pool, const mbox& quotes, demo_metrics& metrics)
    : env_(env), metrics_(metrics),
      ticks_(make_mchain(env, {.name = "ticks", .capacity = 64, .on_overflow = mchain_overflow::drop_newest})) {
    coop_options tape_coop;
    tape_coop.name = "tape";
    tape_coop.bind = active_obj::make_dispatcher(env, "tape").bind();
    introduce_coop(env, std::move(tape_coop), [&](coop& c) { c.make_agent<tape>(quotes, metrics); });
    coop_options breaker_coop;
    breaker_coop.name = "breaker";
    breaker_coop.bind = pool.bind();
    introduce_coop(env, std::move(breaker_coop), [&](coop& c) { c.make_agent<breaker>(quotes, metrics); });

    reader_ = session(env, {.name = "tick-reader", .bind = pool.bind()});
    reading_ = reader_.subscribe(ticks_, [this](const tick& t) {
        if (t.sequence <= last_tick_) metrics_.ticks_out_of_order.fetch_add(1, std::memory_order_relaxed);
        last_tick_ = t.sequence;
        metrics_.ticks_read.fetch_add(1, std::memory_order_relaxed);
    });
    thread_ = std::thread([this] { feed_ticks(); });
}

// A plain thread, not one of the environment's: a tick every 20 µs or so, into a chain of 64 that
// drops what finds it full. It ends once the environment is stopping.
void flow_demo::feed_ticks() {
    std::uint64_t sequence = 0;
    while (!env_.stopping()) {
        try {
            send<tick>(ticks_, ++sequence);
            metrics_.ticks_sent.fetch_add(1, std::memory_order_relaxed);
        } catch (const environment_stopped_error&) {
            metrics_.ticks_refused_at_stop.fetch_add(1, std::memory_order_relaxed);
            break;
        }
        std::this_thread::sleep_for(20us);
    }
}

}  // namespace mailroom::tool
