// The phi-accrual failure detector and the reconnect back-off, on a manual clock and a scripted
// random source: every figure is exact.

#include <mailroom/net/failure_detector.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

using namespace mailroom::internal;
using namespace std::chrono_literals;

namespace {

using time_point = phi_accrual_detector::time_point;

// Akka's approximation of -log10 of the normal tail, written out again for the expectations.
double expected_phi(double since_ms, double mean_ms, double sd_ms) {
    const double y = (since_ms - mean_ms) / sd_ms;
    const double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
    return since_ms > mean_ms ? -std::log10(e / (1.0 + e)) : -std::log10(1.0 - 1.0 / (1.0 + e));
}

struct manual_clock {
    time_point now{std::chrono::seconds(1000)};
    auto fn() {
        return [this] { return now; };
    }
};

}  // namespace

TEST(failure_detector, phi_is_zero_before_the_first_heartbeat_then_follows_the_first_estimate) {
    manual_clock c;
    phi_accrual_detector d({}, c.fn());
    c.now += 1h;
    EXPECT_EQ(d.phi(), 0.0);  // never heard from: not this detector's call
    EXPECT_TRUE(d.available());

    d.heartbeat();
    // Seeded with the 1 s estimate +- a quarter: mean 1000 ms, deviation 250 ms; plus the 3 s pause.
    EXPECT_EQ(d.samples(), 2u);
    EXPECT_DOUBLE_EQ(d.mean_ms(), 1000.0);
    EXPECT_DOUBLE_EQ(d.std_deviation_ms(), 250.0);
    for (auto after : {0ms, 1000ms, 4000ms, 5000ms, 6000ms}) {
        EXPECT_DOUBLE_EQ(d.phi_at(c.now + after), expected_phi(static_cast<double>(after.count()), 4000, 250))
            << after.count() << " ms";
    }
    EXPECT_NEAR(d.phi_at(c.now + 4000ms), std::log10(2.0), 1e-12);  // at the mean: one chance in two
    EXPECT_LT(d.phi_at(c.now + 1000ms), 0.01);
}

TEST(failure_detector, steady_heartbeats_are_suspected_at_the_threshold_after_the_acceptable_pause) {
    manual_clock c;
    phi_accrual_detector d({}, c.fn());  // 1 s, threshold 10, 3 s pause, deviation floor 100 ms
    for (int i = 0; i < 300; ++i) {
        d.heartbeat();
        c.now += 1s;
    }
    c.now -= 1s;  // back to the last heartbeat
    EXPECT_EQ(d.samples(), 200u);  // the window is bounded
    EXPECT_NEAR(d.mean_ms(), 1000.0, 1e-9);
    EXPECT_NEAR(d.std_deviation_ms(), 0.0, 1e-3);
    // mean 1000 + pause 3000 = 4000 ms, deviation floored at 100 ms: phi 10 falls between 4.5 s
    // (y = 5, phi ~ 7.3) and 4.7 s (y = 7, phi ~ 15.4).
    EXPECT_LT(d.phi_at(c.now + 1s), 1e-6);
    EXPECT_NEAR(d.phi_at(c.now + 4500ms), expected_phi(4500, 4000, 100), 1e-6);
    EXPECT_LT(d.phi_at(c.now + 4500ms), 10.0);
    EXPECT_GT(d.phi_at(c.now + 4700ms), 10.0);
    c.now += 4500ms;
    EXPECT_TRUE(d.available());
    c.now += 200ms;
    EXPECT_FALSE(d.available());
    // phi never falls as silence lasts, and stays finite-or-infinite, never NaN.
    double last = 0;
    for (int ms = 0; ms <= 60'000; ms += 250) {
        const double p = d.phi_at(c.now - 4700ms + std::chrono::milliseconds(ms));
        EXPECT_FALSE(std::isnan(p)) << ms;
        EXPECT_GE(p, last) << ms;
        last = p;
    }
}

TEST(failure_detector, the_window_forgets_old_intervals_and_a_pause_is_not_learned_as_a_rhythm) {
    manual_clock c;
    phi_accrual_detector d({.max_samples = 10}, c.fn());
    for (int i = 0; i < 11; ++i) {
        d.heartbeat();
        c.now += 1s;
    }
    EXPECT_EQ(d.samples(), 10u);
    EXPECT_NEAR(d.mean_ms(), 1000.0, 1e-9);  // the seeds are gone
    c.now -= 1s;  // back to the last heartbeat
    for (int i = 0; i < 10; ++i) {
        c.now += 2s;  // 2 s apart now
        d.heartbeat();
    }
    EXPECT_NEAR(d.mean_ms(), 2000.0, 1e-9);

    // A heartbeat that ends a suspected silence restarts the clock but is not an interval.
    c.now += 30s;
    EXPECT_FALSE(d.available());
    d.heartbeat();
    EXPECT_NEAR(d.mean_ms(), 2000.0, 1e-9);
    EXPECT_TRUE(d.available());
    EXPECT_LT(d.phi(), 1e-6);
}

TEST(failure_detector, deviation_floor_and_acceptable_pause_shape_phi) {
    manual_clock c;
    phi_accrual_detector tight({.min_std_deviation = 10ms, .acceptable_heartbeat_pause = 0ms}, c.fn());
    phi_accrual_detector loose({.min_std_deviation = 500ms, .acceptable_heartbeat_pause = 0ms}, c.fn());
    for (int i = 0; i < 300; ++i) {
        tight.heartbeat();
        loose.heartbeat();
        c.now += 1s;
    }
    c.now -= 1s;
    const time_point at = c.now + 1200ms;
    EXPECT_NEAR(tight.phi_at(at), expected_phi(1200, 1000, 10), 1e-6);
    EXPECT_NEAR(loose.phi_at(at), expected_phi(1200, 1000, 500), 1e-6);
    EXPECT_GT(tight.phi_at(at), 10.0);
    EXPECT_LT(loose.phi_at(at), 1.0);
}

TEST(reconnect_backoff, exponential_bounds_capped_at_max_with_full_jitter_and_reset) {
    std::vector<std::uint64_t> draws;
    std::size_t at = 0;
    reconnect_backoff b({.min = 100ms, .max = 1000ms}, [&] { return draws[at++]; });
    // The largest draw gives the bound: 100, 200, 400, 800, then the cap.
    draws.assign(6, UINT64_MAX);
    const std::chrono::nanoseconds highs[] = {100ms, 200ms, 400ms, 800ms, 1000ms, 1000ms};
    for (auto h : highs) {
        EXPECT_EQ(b.bound(), h);
        EXPECT_EQ(b.next(), h);
    }
    EXPECT_EQ(b.attempts(), 6u);
    // The smallest draw gives min, whatever the attempt.
    draws.assign(3, 0);
    at = 0;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.next(), 100ms);
    // Half the range: min + (bound - min) / 2, rounded down to the nanosecond.
    b.reset();
    EXPECT_EQ(b.attempts(), 0u);
    draws.assign(3, std::uint64_t{1} << 63);
    at = 0;
    EXPECT_EQ(b.next(), 100ms);                 // the first bound is min itself
    EXPECT_EQ(b.next(), 150ms);                 // [100, 200]
    EXPECT_EQ(b.next(), 250ms);                 // [100, 400]
}

TEST(reconnect_backoff, the_default_random_source_stays_within_the_bounds_and_varies) {
    reconnect_backoff b({.min = 10ms, .max = 80ms});
    std::vector<std::chrono::nanoseconds> seen;
    for (int i = 0; i < 200; ++i) {
        const auto bound = b.bound();
        const auto d = b.next();
        EXPECT_GE(d, 10ms);
        EXPECT_LE(d, bound);
        EXPECT_LE(d, 80ms);
        seen.push_back(d);
    }
    std::sort(seen.begin(), seen.end());
    EXPECT_LT(seen.front(), seen.back());  // jitter: not one value 200 times
    // Silly options are straightened: max below min, a multiplier below 1.
    reconnect_backoff odd({.min = 50ms, .max = 10ms, .multiplier = 0.5}, [] { return UINT64_MAX; });
    EXPECT_EQ(odd.next(), 50ms);
    EXPECT_EQ(odd.next(), 50ms);
}
