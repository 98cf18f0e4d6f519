// Memory taken by a burst comes back once it drains: a producer outruns a stalled consumer,
// the backlog grows to a couple of hundred megabytes of envelopes and demands, then the
// consumer drains it. The block pool used to keep every block it was ever given, so the
// process stayed at its peak; now the pool keeps at most its high-water mark once the rest has
// sat unused for its decay period (for a burst that would follow), hands the rest back, and the
// resident set falls back near where it started.

#include <mailroom/agent/agent.hpp>
#include <mailroom/core/pool.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct quote {
    char payload[96] = {};
};
struct stall final : mailroom::signal {};

using mailroom::test::resident_bytes;

}  // namespace

TEST(burst_memory, resident_memory_falls_back_near_its_start_after_a_burst_drains) {
    const long messages = mailroom::test::rounds(1'000'000);
    std::atomic<bool> release{false};
    std::atomic<long> handled{0};
    mailroom::environment env;
    mailroom::mbox m = mailroom::test::add_probe(env, [&](mailroom::test::probe& p) {
        // The consumer stalls (bounded) until the backlog is built, then drains it.
        p.subscribe<stall>(p.direct_mbox(), [&] {
            const auto end = std::chrono::steady_clock::now() + 30s;
            while (!release.load() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
        });
        p.subscribe(p.direct_mbox(), [&](const quote&) { handled.fetch_add(1, std::memory_order_relaxed); });
    });
    [[maybe_unused]] const std::size_t start = resident_bytes();
    mailroom::send<stall>(m);
    std::thread([&] {
        for (long i = 0; i < messages; ++i) mailroom::send<quote>(m, quote{});
    }).join();
    [[maybe_unused]] const std::size_t peak = resident_bytes();
    release = true;
    ASSERT_TRUE(mailroom::test::eventually([&] { return handled.load() == messages; }, 60s));

    const auto st = env.stats();
    EXPECT_EQ(st.messages_sent, st.messages_delivered);
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out, and a sanitizer's allocator keeps freed memory in quarantine";
#else
    const std::size_t grown = peak > start ? peak - start : 0;
    ASSERT_GT(grown, std::size_t{64} << 20) << "the burst did not build a backlog";
    // Within seconds (the pool's decay period and a quarter, then the trim), with no call into the
    // pool, the process is back within a quarter of the burst's growth (the pool's mark, the C
    // heap's untrimmed rest, the queue's own blocks) of where it started.
    const std::size_t bound = start + grown / 4;
    const bool back = mailroom::test::eventually([&] { return resident_bytes() <= bound; }, 5s);
    EXPECT_TRUE(back) << "resident: " << (start >> 20) << " MB at start, " << (peak >> 20) << " MB at the peak, "
                      << (resident_bytes() >> 20) << " MB 5 s after the drain (bound " << (bound >> 20) << " MB)";
    // What the consumer's thread freed above the mark has gone back; what is still cached anywhere
    // is bounded by the mark plus a few batches per thread.
    EXPECT_TRUE(mailroom::test::eventually(
        [] { return mailroom::internal::pool_depot_bytes() <= mailroom::internal::pool_cache_limit(); }, 5s))
        << mailroom::internal::pool_depot_bytes() << " bytes still in the depot";
#endif
}
