#pragma once
// The agents of `mailroom demo`: a feed publishing quotes, subscribers checking them, a
// timekeeper juggling delayed messages, and a reporter printing progress and ending the run.

#include "demo_metrics.hpp"

#include <mailroom/mailroom.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string_view>

namespace mailroom::tool {

// ---- messages ----

inline constexpr std::array<std::string_view, 16> symbols = {
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO",
    "ORCL", "AMD",  "INTC", "IBM",  "CSCO", "QCOM", "ADBE", "CRM",
};
using symbol_id = std::uint16_t;

/// A price update; published once, shared by every subscriber.
struct quote {
    symbol_id symbol;
    double bid;
    double ask;
    std::uint64_t sequence;   ///< per symbol, strictly increasing
    std::int64_t sent_at_ns;  ///< mailroom::now_ns() when published
};

/// Asks the feed to stop publishing; it answers with feed_stopped once it has.
struct stop_feed {
    mbox reply_to;
};
struct feed_stopped {
    std::uint64_t published;
};

/// Asks the named-object traffic to stop asking; it answers with requests_stopped once every
/// request it issued is final and seen.
struct stop_requests {
    mbox reply_to;
};
struct requests_stopped {
    bool drained;  ///< false when some request was still not final after the drain's limit
};

struct publish_tick final : signal {};
struct progress_tick final : signal {};
struct timekeeper_tick final : signal {};
struct reminder {
    std::uint64_t id;
};

// ---- the feed ----

struct feed_options {
    mbox quotes;
    /// The dispatcher the subscribers run on: its backlog paces the feed.
    dispatcher subscribers_pool;
    /// Roughly how many subscribers receive each quote.
    std::size_t fan_out = 64;
    /// Deliveries the pool may have queued before the feed holds back.
    std::size_t backlog_limit = 16 * 1024;
    std::size_t max_burst = 1024;
    std::chrono::nanoseconds tick = std::chrono::milliseconds(1);
};

/// Publishes bursts of quotes on a periodic tick. Each burst tops the subscribers' backlog up
/// to a limit: as fast as they can take it, and never so fast that queues grow without bound or
/// the other agents starve.
class feed final : public agent {
public:
    feed(feed_options options, demo_metrics& metrics);

protected:
    void configure() override;
    void on_start() override;
    void on_finish() override;

private:
    void on_tick(const publish_tick&);
    void on_stop(const stop_feed& request);
    std::size_t burst_size() const;
    void publish_one();

    feed_options options_;
    demo_metrics& metrics_;
    timer_handle tick_;
    bool stopped_ = false;
    std::uint64_t published_ = 0;
    std::uint64_t rng_ = 0x9e3779b97f4a7c15ull;
    std::array<double, symbols.size()> mid_{};
    std::array<std::uint64_t, symbols.size()> sequence_{};
};

// ---- subscribers ----

/// Keeps a small book per symbol and checks that quotes arrive in the order they were sent.
/// A steady subscriber lives from before the first quote to after the last one, so it must
/// receive every quote the feed published; a transient one (made by the churn) checks order only.
class subscriber final : public agent {
public:
    enum class kind : std::uint8_t { steady, transient };
    subscriber(mbox quotes, kind k, demo_metrics& metrics);

protected:
    void configure() override;
    void on_start() override;
    void on_finish() override;

private:
    struct symbol_state {
        std::uint64_t last_sequence = 0;
        double bid = 0;
        double ask = 0;
    };

    void on_quote(const quote& q);
    void report_violation(const quote& q, std::uint64_t last) const;

    mbox quotes_;
    kind kind_;
    demo_metrics& metrics_;
    std::uint64_t received_ = 0;
    std::array<symbol_state, symbols.size()> book_{};
};

// ---- the timekeeper ----

/// Arms a delayed reminder to itself on every tick and cancels those that are still pending
/// after a while: some fire, some are cancelled before they fire (some of those after the timer
/// service already queued them), and none may arrive once cancelled.
class timekeeper final : public agent {
public:
    explicit timekeeper(demo_metrics& metrics);

protected:
    void configure() override;
    void on_start() override;
    void on_finish() override;

private:
    struct pending_reminder {
        timer_handle timer;
        std::int64_t armed_at_ns;
    };

    void on_tick(const timekeeper_tick&);
    void on_reminder(const reminder& r);
    void arm_reminder();
    void cancel_overdue();

    demo_metrics& metrics_;
    timer_handle tick_;
    std::uint64_t next_id_ = 1;
    std::map<std::uint64_t, pending_reminder> pending_;
    std::set<std::uint64_t> cancelled_;
};

// ---- the reporter ----

class progress_printer;

struct reporter_options {
    mbox feed;
    /// Where to send stop_requests (none when empty).
    mbox requests;
    int seconds = 10;
    /// The environment whose counters the progress line shows.
    const environment* env = nullptr;
};

/// Prints the progress line once a second and, when the time is up, stops the feed and the
/// requests and then the environment (in that order, so every steady subscriber sees the last
/// quote and every requester the answer to its last request).
class reporter final : public agent {
public:
    reporter(reporter_options options, progress_printer& printer, demo_metrics& metrics);

protected:
    void configure() override;
    void on_start() override;
    void on_finish() override;

private:
    void on_tick(const progress_tick&);
    void on_feed_stopped(const feed_stopped&);
    void on_requests_stopped(const requests_stopped&);
    void stop_once_quiet();

    reporter_options options_;
    progress_printer& printer_;
    demo_metrics& metrics_;
    timer_handle tick_;
    int elapsed_s_ = 0;
    bool feed_stopped_ = false;
    bool requests_stopped_ = false;
};

}  // namespace mailroom::tool
