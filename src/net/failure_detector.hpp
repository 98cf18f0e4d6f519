#pragma once
// How a node decides that a peer is gone, and how soon it dials again.
//
// phi_accrual_detector: the phi-accrual failure detector (Hayashibara et al.; Akka's form). It
// keeps the intervals between a peer's last heartbeats (a bounded window) and, at any moment,
// answers with phi = -log10(P(a heartbeat arrives later than now)), under a normal distribution
// of the intervals' mean (plus an acceptable pause) and standard deviation (with a floor). phi 1
// means a 10% chance that the peer is still there and merely late, phi 10 about 1e-10. The
// peer is suspected when phi reaches the threshold. Before the second heartbeat the history is
// seeded with first_heartbeat_estimate (as Akka does: two intervals, the estimate +- a quarter).
//
// reconnect_backoff: the delay before the next attempt to reach a peer: exponential, capped, with
// full jitter (a uniform draw below the exponential bound, so that peers that lost each other
// at the same moment do not all dial back at the same moment), reset by a success.
//
// Both take their clock and random source from the caller, so tests are exact, and both are
// for one thread (the node's I/O thread).

#include <mailroom/net_export.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace mailroom::internal {

/// The detector's parameters; the defaults are a 1 s heartbeat and Akka's remote-watch threshold.
struct phi_accrual_options {
    double threshold = 10.0;                                   ///< phi at and above which the peer is suspected
    std::size_t max_samples = 200;                             ///< intervals remembered
    std::chrono::milliseconds min_std_deviation{100};          ///< a floor: steady heartbeats are not perfect
    std::chrono::milliseconds acceptable_heartbeat_pause{3000};///< lateness tolerated before phi rises
    std::chrono::milliseconds first_heartbeat_estimate{1000};  ///< the expected interval: the heartbeat interval
};

class MAILROOM_NET_EXPORT phi_accrual_detector {
public:
    using clock = std::chrono::steady_clock;
    using time_point = clock::time_point;

    /// `now` tells the time (steady_clock by default; a test's manual clock).
    explicit phi_accrual_detector(phi_accrual_options options = {}, std::function<time_point()> now = {});

    /// Records a heartbeat arriving now.
    void heartbeat();

    /// phi now: 0 before the first heartbeat (a peer never heard from is not suspected by this
    /// detector: connecting has its own timeout), then rising with the time since the last one.
    double phi() const;
    /// phi at `at`.
    double phi_at(time_point at) const;

    /// phi now is below the threshold.
    bool available() const { return phi() < options_.threshold; }

    /// Intervals remembered, their mean and standard deviation (milliseconds; for tests and stats).
    std::size_t samples() const noexcept { return count_; }
    double mean_ms() const noexcept;
    double std_deviation_ms() const noexcept;

    const phi_accrual_options& options() const noexcept { return options_; }

private:
    void add_interval(double ms);

    phi_accrual_options options_;
    std::function<time_point()> now_;
    bool heard_ = false;
    time_point last_{};
    // The window: a ring of intervals with their running sum and sum of squares.
    std::vector<double> ring_;
    std::size_t next_ = 0;
    std::size_t count_ = 0;
    double sum_ = 0;
    double squares_ = 0;
};

/// The reconnect delays' parameters.
struct backoff_options {
    std::chrono::milliseconds min{100};     ///< the shortest delay, and the base of the exponent
    std::chrono::milliseconds max{10'000};  ///< the longest
    double multiplier = 2.0;                ///< how the bound grows per failed attempt
};

class MAILROOM_NET_EXPORT reconnect_backoff {
public:
    /// `random` gives uniform 64-bit values (a seeded std::mt19937_64 by default).
    explicit reconnect_backoff(backoff_options options = {}, std::function<std::uint64_t()> random = {});

    /// The delay before the next attempt: uniform in [min, bound], where bound = min *
    /// multiplier^attempts, capped at max; counts the attempt.
    std::chrono::nanoseconds next();
    /// The upper bound the next call to next() draws below.
    std::chrono::nanoseconds bound() const noexcept;
    /// A connection succeeded: the next delay starts again from min.
    void reset() noexcept { attempts_ = 0; }

    std::uint32_t attempts() const noexcept { return attempts_; }

private:
    backoff_options options_;
    std::function<std::uint64_t()> random_;
    std::uint32_t attempts_ = 0;
};

}  // namespace mailroom::internal
