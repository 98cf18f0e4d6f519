// Guarantee 8: with message limits set, memory stays bounded when producers outrun consumers
// tenfold. A producer thread sends as fast as it can (far more than ten times what the
// consumer handles) for a bounded time through each reaction (drop, redirect, transform, a
// byte limit); abort is covered by the unit death tests. What must hold, sampled while it runs:
// - the consumer's queue never holds more than its limit (plus, for an instant, the one send
//   that finds it full),
// - the messages in flight anywhere in the environment (sent and without an outcome yet) stay
//   under a few limits' worth, and
// - the resident set grows by less than a bound that an unlimited queue passes within a
//   fraction of a second (each message carries a 1 KiB buffer).
// The books balance at the end. Without a limit, the first two checks fail at once.

#include <mailroom/mbox/limits.hpp>

#include <mailroom/mailroom.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;

namespace {

using namespace mailroom;
using mailroom::test::probe;

struct order {
    std::vector<char> body = std::vector<char>(1024);
    std::size_t limit_bytes() const noexcept { return sizeof(order) + body.size(); }
};
struct note {
    std::uint64_t n = 0;
};

constexpr std::uint64_t limit = 1000;
constexpr auto phase_time = 700ms;  // four phases: a few seconds in all, in every build
// A handler takes at least this long (asleep, leaving the cores to the producer), and waits
// besides until the producer has sent ten times what it handled: a loaded machine that starves
// the producer (12,032 sent against 1,345 handled under a sanitizer with busy cores) slows the
// consumer with it, and the overload stays tenfold.
constexpr auto handler_cost = 300us;

std::uint64_t in_flight(const environment_stats& s) {
    const std::uint64_t out = s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                              s.messages_cancelled + s.messages_dropped;
    return s.messages_sent > out ? s.messages_sent - out : 0;
}

struct phase_result {
    std::uint64_t sent = 0, handled = 0, max_queued = 0, max_in_flight = 0;
    std::size_t rss_growth = 0;
    environment_stats stats{};
};

/// Runs one phase: `declare` sets the consumer's limit (given the spill mbox, whose agent has a
/// drop limit of its own); the producer sends `order`s for phase_time.
phase_result run_phase(const std::function<void(probe&, const mbox&)>& declare) {
    phase_result r;
    environment env;
    auto own = active_obj::make_dispatcher(env, "own");
    std::atomic<std::uint64_t> handled{0}, spilled{0};
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> sent{0}, handled_at_done{0};
    mbox spill = test::add_probe(
        env,
        [&](probe& p) {
            p.limit<any_other_message>(limit, limit_drop);
            p.subscribe(p.direct_mbox(), [&](const order&) { spilled.fetch_add(1, std::memory_order_relaxed); });
            p.subscribe(p.direct_mbox(), [&](const note&) { spilled.fetch_add(1, std::memory_order_relaxed); });
        },
        {.bind = own.bind()});
    probe* consumer = nullptr;
    mbox m = test::add_probe(
        env,
        [&](probe& p) {
            consumer = &p;
            declare(p, spill);
            p.subscribe(p.direct_mbox(), [&](const order&) {
                std::this_thread::sleep_for(handler_cost);
                // Only this handler adds to `handled`: sent >= 10 x handled holds until `done`.
                test::eventually([&] { return done.load() || sent.load() >= 10 * (handled.load() + 1); }, 10s);
                handled.fetch_add(1);
            });
        },
        {.bind = own.bind()});

    const std::size_t start = test::resident_bytes();
    std::size_t peak = start;
    std::thread producer([&] {
        const auto end = std::chrono::steady_clock::now() + phase_time;
        std::uint64_t n = 0;
        while (std::chrono::steady_clock::now() < end) {
            for (int i = 0; i < 64; ++i) send<order>(m);
            n += 64;
            sent.store(n);
        }
        // Handled by then: what the consumer takes once `done` lets it go is not the overload.
        handled_at_done = handled.load();
        done = true;
    });
    while (!done.load()) {
        for (const limit_stats& s : limit_stats_of(*consumer)) r.max_queued = std::max(r.max_queued, s.queued);
        r.max_in_flight = std::max(r.max_in_flight, in_flight(env.stats()));
        peak = std::max(peak, test::resident_bytes());
        std::this_thread::sleep_for(5ms);
    }
    producer.join();
    r.sent = sent.load();
    r.handled = handled_at_done.load();
    r.rss_growth = peak > start ? peak - start : 0;
    env.stop();
    EXPECT_TRUE(test::join_within(env, 60s));
    r.stats = env.stats();
    return r;
}

void expect_bounded(const phase_result& r, const char* what) {
    SCOPED_TRACE(what);
    // The producer outran the consumer tenfold (or more).
    EXPECT_GE(r.sent, 10 * r.handled) << "sent " << r.sent << ", handled " << r.handled;
    // A send over the limit adds itself to the count and takes itself out again: a snapshot may
    // catch it, one per sending thread (there is one producer).
    EXPECT_LE(r.max_queued, limit + 1);
    // The consumer's queue and the spill agent's, plus what is between accept() and its count.
    EXPECT_LE(r.max_in_flight, 4 * limit) << "sent " << r.sent;
    // An unlimited queue of these messages grows by ~1 GiB a second; a bounded one by a few
    // MiB (a sanitizer's allocator keeps freed blocks in quarantine: a looser bound there).
    const std::size_t bound = test::sanitized ? std::size_t{384} << 20 : std::size_t{64} << 20;
    EXPECT_LT(r.rss_growth, bound) << "resident memory grew by " << (r.rss_growth >> 20) << " MiB";
    const environment_stats& s = r.stats;
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped);
}

}  // namespace

TEST(limits_overload, drop_keeps_memory_bounded_under_tenfold_overload) {
    auto r = run_phase([](probe& p, const mbox&) { p.limit<order>(limit, limit_drop); });
    expect_bounded(r, "drop");
    EXPECT_GT(r.stats.messages_dropped, 0u);
}

TEST(limits_overload, redirect_keeps_memory_bounded_under_tenfold_overload) {
    auto r = run_phase([](probe& p, const mbox& spill) { p.limit<order>(limit, limit_redirect{spill}); });
    expect_bounded(r, "redirect");
    EXPECT_GT(r.stats.messages_redirected, 0u);
}

TEST(limits_overload, transform_keeps_memory_bounded_under_tenfold_overload) {
    auto r = run_phase([](probe& p, const mbox& spill) {
        auto n = std::make_shared<std::atomic<std::uint64_t>>(0);
        p.limit<order>(limit, limit_transform{[spill, n](const order&) {
                           return transformed::make<note>(spill, n->fetch_add(1) + 1);
                       }});
    });
    expect_bounded(r, "transform");
    EXPECT_GT(r.stats.messages_transformed, 0u);
}

TEST(limits_overload, byte_limit_keeps_memory_bounded_under_tenfold_overload) {
    auto r = run_phase([](probe& p, const mbox&) {
        p.limit<order>({.messages = 1'000'000, .bytes = 256 * (sizeof(order) + 1024)}, limit_drop);
    });
    expect_bounded(r, "bytes");
    EXPECT_GT(r.stats.messages_dropped, 0u);
}
