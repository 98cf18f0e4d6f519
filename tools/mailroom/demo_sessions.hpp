#pragma once
// The sessions of `mailroom demo`: sessions with event objects made and destroyed while the
// quotes flow, from a thread that is not one of the environment's, from another session's
// callbacks and from their own callbacks, each callback checking that it does not run after a
// shutdown() or destroy() returned.

#include "demo_metrics.hpp"

#include <mailroom/mailroom.hpp>

#include <deque>
#include <memory>
#include <random>
#include <thread>

namespace mailroom::tool {

struct churned_session;

/// Runs on a std::thread of its own until the environment stops. Every few milliseconds it
/// makes a session on the pool with three event objects — a periodic timer that nudges the
/// inbox of the session made before it, an inbox for those nudges, and a subscription to the
/// quotes — and retires the oldest once more than a few are up: on its own thread (shutting
/// the objects down one by one, destroying them one by one, or destroying the whole session)
/// or from a callback of the "reaper" session. Subscriptions and timers also shut down or
/// destroy themselves from their own callbacks now and then.
///
/// Every event object has a sentinel that the destroying thread sets right after its
/// shutdown() or destroy() returned; a callback that finds it set counts a violation
/// (DESIGN.md guarantee 2). Sessions still up when the environment stops go with it.
class session_churn {
public:
    session_churn(environment& env, dispatcher pool, mbox quotes, demo_metrics& metrics);
    session_churn(const session_churn&) = delete;
    session_churn& operator=(const session_churn&) = delete;
    /// Joins the thread (which ends once the environment is stopping).
    ~session_churn() { join(); }

    void join() {
        if (thread_.joinable()) thread_.join();
    }

private:
    void run();
    // False once the environment began to stop under our feet.
    bool step();
    std::shared_ptr<churned_session> make_session();
    void retire(std::shared_ptr<churned_session> victim);

    environment& env_;
    dispatcher pool_;
    mbox quotes_;
    demo_metrics& metrics_;
    session reaper_;
    std::deque<std::shared_ptr<churned_session>> alive_;
    mbox previous_inbox_;
    std::mt19937 rng_{2024};
    std::thread thread_;
};

}  // namespace mailroom::tool
