#pragma once
// Flow control in `mailroom demo`: a slow tape recorder subscribed to the quotes behind a drop
// limit (the feed outruns it; what it cannot keep up with is dropped and counted, its queue stays
// bounded), a circuit breaker that is a state machine with a time limit (it trips now and then
// and closes again through half-open when the time limit of `open` runs out), and an mchain fed
// by a plain thread that a session drains with no thread polling it.

#include "demo_metrics.hpp"

#include <mailroom/mailroom.hpp>

#include <thread>

namespace mailroom::tool {

/// The quotes the tape may have waiting before the rest is dropped.
inline constexpr std::uint64_t tape_limit = 256;
/// Subscribers of the quote topic this part adds on the pool (the breaker), for the feed's pacing.
inline constexpr std::size_t flow_pool_subscribers = 1;

/// Registers the tape (on a thread of its own) and the breaker (on `pool`), makes the chain and
/// its session, and starts the thread that feeds the chain. Joins that thread when destroyed
/// (it ends once the environment is stopping).
class flow_demo {
public:
    flow_demo(environment& env, const dispatcher& pool, const mbox& quotes, demo_metrics& metrics);
    flow_demo(const flow_demo&) = delete;
    flow_demo& operator=(const flow_demo&) = delete;
    ~flow_demo() { join(); }

    void join() {
        if (thread_.joinable()) thread_.join();
    }
    /// Any thread, also after the environment stopped.
    mchain_stats chain_stats() const { return ticks_.stats(); }

private:
    void feed_ticks();

    environment& env_;
    demo_metrics& metrics_;
    mchain ticks_;
    session reader_;
    event_handle reading_;
    std::uint64_t last_tick_ = 0;  // on the reader's context only
    std::thread thread_;
};

}  // namespace mailroom::tool
