#pragma once
// The named objects of `mailroom demo`: a "pricer" answering quote requests with the last price
// it saw, a "risk" desk that a foreign thread registers and unregisters while requests to it keep
// flying, and the requester sessions that ask them through then(), co_await, future() and wait(),
// each request checked to reach a final state that the demo sees.

#include "demo_agents.hpp"
#include "demo_metrics.hpp"

#include <mailroom/mailroom.hpp>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

namespace mailroom::tool {

struct risk_incarnation;

/// Runs on a std::thread of its own until the reporter asks it to stop (a stop_requests on
/// control()) or the environment stops. Meanwhile:
/// - "pricer", on a session of the pool subscribed to the quotes, answers a price_request with
///   the last quote of the symbol, and rejects an unknown symbol;
/// - "risk", on a session of a thread of its own, answers a risk_check, rejects an order over
///   its limit, and on a slow path takes longer than the requester waits (a timeout);
/// - every 40..80 ms the thread unregisters "risk" — by shutdown() from the thread, or by
///   destroy() from inside its own handler, in turn — and registers it again 10..30 ms later,
///   so that requests find it, find no object, or go away queued;
/// - requester sessions on the pool ask both every 2 ms, through then() and mailroom::task
///   coroutines, and the thread itself asks through future() and wait();
/// - with `demo --nodes`, each requester tick also asks the pricing object of a node in a
///   second process for a quote (one in 16 for no symbol, which it rejects), through then().
///
/// On stop_requests the requesters stop asking; once every request the demo issued reached a
/// final state that its callback, coroutine or waiting thread saw, the thread destroys what it
/// made and answers requests_stopped: only then may the environment stop, or callbacks still
/// queued would be dropped unseen.
class named_traffic {
public:
    /// `remote_quotes`: "" or the name of a pricing object on another node ("peer/pricing/quote",
    /// `demo --nodes`), which each requester tick then also asks for a quote.
    named_traffic(environment& env, const dispatcher& pool, const mbox& quotes, demo_metrics& metrics,
                  std::string remote_quotes = {});
    named_traffic(const named_traffic&) = delete;
    named_traffic& operator=(const named_traffic&) = delete;
    /// Joins the thread (which ends once stopped, or once the environment is stopping).
    ~named_traffic() { join(); }

    /// Where the reporter sends stop_requests.
    const mbox& control() const noexcept { return control_inbox_.address(); }

    void join() {
        if (thread_.joinable()) thread_.join();
    }

private:
    static constexpr std::size_t requesters = 4;

    void run();
    bool stop_requested() const noexcept { return stop_.load(std::memory_order_acquire); }
    // Sleeps `d`, in slices, returning early (false) once asked to stop.
    bool pause(std::chrono::nanoseconds d);
    void register_risk();
    void unregister_risk(bool from_own_handler);
    void ask_and_wait();
    void finish();
    bool wait_drained(std::chrono::nanoseconds limit);

    environment& env_;
    demo_metrics& metrics_;

    // Touched on the pricer's and the risk desk's sessions only.
    std::array<quote, symbols.size()> last_quote_{};
    std::array<std::int64_t, symbols.size()> exposure_{};

    session pricer_;
    event_handle pricer_quotes_;
    named_handle pricer_name_;
    session risk_desk_;
    std::shared_ptr<risk_incarnation> risk_;
    std::array<session, requesters> requester_;
    std::array<event_handle, requesters> requester_timer_;

    session control_;
    inbox_handle control_inbox_;
    std::atomic<bool> stop_{false};
    std::mutex reply_lock_;
    mbox reply_to_;  // guarded by reply_lock_

    std::mt19937 rng_{1789};
    std::thread thread_;
};

}  // namespace mailroom::tool
