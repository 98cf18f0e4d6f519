// The phi-accrual failure detector and the reconnect back-off (see failure_detector.hpp).

#include <mailroom/net/failure_detector.hpp>

#include <algorithm>
#include <cmath>
#include <random>

namespace mailroom::internal {

namespace {

__extension__ typedef unsigned __int128 u128;

double ms_of(std::chrono::steady_clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
}

// P(X > t) for X normal (mean, sd), as -log10: Akka's logistic approximation of the normal
// tail, which stays finite and monotonic far into the tail where 1 - cdf would round to 0.
double phi_of(double t, double mean, double sd) {
    const double y = (t - mean) / sd;
    const double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
    if (t > mean) return -std::log10(e / (1.0 + e));
    return -std::log10(1.0 - 1.0 / (1.0 + e));
}

}  // namespace

phi_accrual_detector::phi_accrual_detector(phi_accrual_options options, std::function<time_point()> now)
    : options_(options), now_(now ? std::move(now) : std::function<time_point()>([] { return clock::now(); })) {
    options_.max_samples = std::max<std::size_t>(options_.max_samples, 2);
    ring_.assign(options_.max_samples, 0.0);
    // Until the peer has shown its own rhythm, assume the expected interval, give or take a quarter.
    const double mean = ms_of(options_.first_heartbeat_estimate);
    add_interval(mean - mean / 4);
    add_interval(mean + mean / 4);
}

void phi_accrual_detector::add_interval(double ms) {
    if (count_ == ring_.size()) {
        const double old = ring_[next_];
        sum_ -= old;
        squares_ -= old * old;
    } else {
        ++count_;
    }
    ring_[next_] = ms;
    next_ = (next_ + 1) % ring_.size();
    sum_ += ms;
    squares_ += ms * ms;
}

void phi_accrual_detector::heartbeat() {
    const time_point t = now_();
    if (heard_) {
        // A heartbeat after the peer was suspected ends a pause, not a rhythm: recording its
        // interval would teach the detector to wait that long next time (Akka does the same).
        if (phi_at(t) < options_.threshold) add_interval(ms_of(t - last_));
    }
    heard_ = true;
    last_ = t;
}

double phi_accrual_detector::mean_ms() const noexcept { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }

double phi_accrual_detector::std_deviation_ms() const noexcept {
    if (!count_) return 0.0;
    const double m = mean_ms();
    const double v = squares_ / static_cast<double>(count_) - m * m;
    return v > 0 ? std::sqrt(v) : 0.0;
}

double phi_accrual_detector::phi() const { return phi_at(now_()); }

double phi_accrual_detector::phi_at(time_point at) const {
    if (!heard_) return 0.0;
    const double since = ms_of(at - last_);
    const double mean = mean_ms() + static_cast<double>(options_.acceptable_heartbeat_pause.count());
    const double sd = std::max(std_deviation_ms(), static_cast<double>(options_.min_std_deviation.count()));
    return phi_of(since, mean, sd);
}

reconnect_backoff::reconnect_backoff(backoff_options options, std::function<std::uint64_t()> random)
    : options_(options), random_(std::move(random)) {
    if (!random_) random_ = [g = std::mt19937_64(std::random_device{}())]() mutable { return g(); };
    options_.min = std::max(options_.min, std::chrono::milliseconds(0));
    options_.max = std::max(options_.max, options_.min);
    options_.multiplier = std::max(options_.multiplier, 1.0);
}

std::chrono::nanoseconds reconnect_backoff::bound() const noexcept {
    const double lo = static_cast<double>(std::chrono::nanoseconds(options_.min).count());
    const double hi = static_cast<double>(std::chrono::nanoseconds(options_.max).count());
    // pow saturates to infinity long before the attempts wrap: the cap holds either way.
    const double b = std::min(hi, lo * std::pow(options_.multiplier, static_cast<double>(attempts_)));
    return std::chrono::nanoseconds(static_cast<std::int64_t>(b));
}

std::chrono::nanoseconds reconnect_backoff::next() {
    const std::chrono::nanoseconds lo = options_.min;
    const std::chrono::nanoseconds hi = std::max(bound(), lo);
    const auto span = static_cast<std::uint64_t>((hi - lo).count());
    // Multiply-shift maps the draw onto [0, span] without the bias of a modulo: 0 gives min,
    // the largest draw gives the bound.
    const auto draw = static_cast<std::uint64_t>(
        (static_cast<u128>(random_()) * (static_cast<u128>(span) + 1)) >> 64);
    if (attempts_ < UINT32_MAX) ++attempts_;
    return lo + std::chrono::nanoseconds(static_cast<std::int64_t>(draw));
}

}  // namespace mailroom::internal
