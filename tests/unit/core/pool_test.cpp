#include <mailroom/core/pool.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;
using namespace std::chrono_literals;
using mailroom::test::resident_bytes;  // read from /proc: no pool call

#ifndef MAILROOM_NO_POOL
// What an earlier test's burst left above the mark decays within pool_decay_period and a
// quarter; waits (bounded) for it so that each test starts from a depot within its mark.
void settle() {
    ASSERT_TRUE(mailroom::test::eventually([] { return pool_depot_bytes() <= pool_cache_limit(); }, 5s))
        << pool_depot_bytes() << " bytes still in the depot";
}

struct burst_result {
    std::size_t peak_resident = 0;                     // after the backlog was built
    std::chrono::steady_clock::time_point drained{};  // when the consumer had freed it all
};

// A burst: one thread allocates far more than the mark (the backlog of a producer that outran
// its consumer), another frees it all (the consumer draining it); both then exit, flushing
// their own lists to the depot.
burst_result burst(std::size_t per_size = 100'000) {  // 32 MB in all: eight times the default mark
    constexpr std::size_t sizes[] = {48, 200};           // the 64- and 256-byte classes
    std::vector<std::pair<void*, std::size_t>> backlog;
    backlog.reserve(per_size * 2);
    burst_result r;
    std::thread([&] {
        for (std::size_t i = 0; i < per_size; ++i)
            for (std::size_t n : sizes) backlog.emplace_back(pool_allocate(n), n);
    }).join();
    r.peak_resident = resident_bytes();
    std::thread([&] {
        for (auto [b, n] : backlog) pool_free(b, n);
    }).join();
    r.drained = std::chrono::steady_clock::now();
    return r;
}
#endif

TEST(pool, a_freed_block_is_reused_by_the_same_thread) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    void* a = pool_allocate(48);
    std::memset(a, 0xab, 48);  // the whole requested size is usable
    pool_free(a, 48);
    void* b = pool_allocate(40);  // same size class (64 bytes)
    EXPECT_EQ(a, b);
    pool_free(b, 40);
#endif
}

TEST(pool, blocks_freed_by_an_exiting_thread_go_to_the_shared_depot) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    // Blocks allocated here, freed on a thread that never allocated and then exits: its cache
    // must be flushed at exit (not leaked), so the shared count grows by exactly that many.
    settle();  // no decay running while the blocks are counted
    std::vector<void*> blocks;
    for (int i = 0; i < 10; ++i) blocks.push_back(pool_allocate(100));
    const std::size_t before = pool_cached_blocks();
    std::thread([&] {
        for (void* b : blocks) pool_free(b, 100);
    }).join();
    EXPECT_EQ(pool_cached_blocks(), before + 10);
#endif
}

// The depot used to keep every block it was given; now what sits above the mark goes back to
// the C heap once the burst has drained and a decay period has passed.
TEST(pool, blocks_freed_above_the_high_water_mark_go_back_once_a_burst_drains) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    const std::size_t limit = pool_cache_limit();
    ASSERT_EQ(limit, pool_default_cache_limit);
    settle();
    burst();
    EXPECT_TRUE(mailroom::test::eventually([&] { return pool_depot_bytes() <= limit; }, 5s))
        << pool_depot_bytes() << " bytes still in the depot " << (5s / pool_decay_period)
        << " decay periods after the burst drained";
    EXPECT_LE(pool_cached_bytes(), limit + 2 * 256 * (64 + 128 + 256 + 512 + 32));  // plus this thread's cache

    // The mark can be lowered at run time: what sits above it goes at once, decayed or not.
    burst();
    pool_set_cache_limit(limit / 4);
    EXPECT_LE(pool_depot_bytes(), limit / 4);
    pool_set_cache_limit(limit);
#endif
}

// A burst that follows another before the decay reuses its blocks: W6 arms a million timers
// back to back, and paid operator new again for every block the previous repetition had
// freed above the mark.
TEST(pool, back_to_back_bursts_reuse_the_blocks_the_first_one_left) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    // A smaller mark and bursts than the other tests: the whole second burst must run within
    // the decay period, under a sanitizer too.
    struct restore_mark {
        std::size_t mark = pool_cache_limit();
        ~restore_mark() { pool_set_cache_limit(mark); }
    } restore;
    pool_set_cache_limit(restore.mark / 4);
    constexpr std::size_t per_size = 25'000;  // 8 MB in all: eight times this mark
    settle();
    const std::size_t before = pool_heap_blocks();
    const burst_result first = burst(per_size);
    const std::size_t after_first = pool_heap_blocks();
    const burst_result second = burst(per_size);
    const std::size_t after_second = pool_heap_blocks();
    const auto span = second.drained - first.drained;
    if (span >= pool_decay_period / 2)
        GTEST_SKIP() << "the second burst ended "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(span).count()
                     << " ms after the first: the first one's blocks may rightly have decayed meanwhile";
    const std::size_t first_new = after_first - before;
    const std::size_t second_new = after_second - after_first;
    EXPECT_GT(first_new, per_size) << "the first burst did not outgrow the mark";
    EXPECT_LT(second_new, first_new / 10) << "the second burst took " << second_new
                                          << " blocks from operator new, the first " << first_new;
#endif
}

// A process that goes quiet after a burst gets its memory back without calling the pool again:
// the blocks stay for a while (for a burst that would follow), then the pool's own thread
// gives them back, and the C heap's free pages go back to the system.
TEST(pool, the_excess_goes_back_after_the_decay_period_with_no_further_pool_calls) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    const std::size_t limit = pool_cache_limit();
    settle();
    const std::size_t start = resident_bytes();
    const burst_result r = burst();
    const std::size_t kept = pool_depot_bytes();
    const auto kept_at = std::chrono::steady_clock::now();
    const std::size_t grown = r.peak_resident > start ? r.peak_resident - start : 0;
    if (!mailroom::test::sanitized) {  // a sanitizer's allocator reuses what it holds in quarantine
        ASSERT_GT(grown, std::size_t{8} << 20) << "the burst did not build a backlog";
    }
    if (kept_at - r.drained < pool_decay_period / 2) {
        EXPECT_GT(kept, limit) << "the depot gave the burst's blocks back at once, before any decay";
    }

    // From here on, no call into the pool: only the resident set is read, from /proc. Under a
    // sanitizer, whose allocator keeps what is freed and whose shadow memory grows with it, the
    // resident set says nothing; there the depot's count is read, which gives nothing back itself.
    const std::size_t bound = start + grown / 4;
    const bool back = mailroom::test::sanitized
                          ? mailroom::test::eventually([&] { return pool_depot_bytes() <= limit; }, 5s)
                          : mailroom::test::eventually([&] { return resident_bytes() <= bound; }, 5s);
    const auto took = std::chrono::steady_clock::now() - r.drained;
    EXPECT_TRUE(back) << "resident: " << (start >> 20) << " MB at start, " << (r.peak_resident >> 20)
                      << " MB at the peak, " << (resident_bytes() >> 20) << " MB 5 s after the drain (bound "
                      << (bound >> 20) << " MB); " << pool_depot_bytes() << " bytes in the depot";
    // The trimmer measures the period from when the depot first went past the mark, a little
    // before the drain ended: half a period is a bound that never races it.
    EXPECT_GE(took, pool_decay_period / 2) << "memory came back before the blocks had been unused for a while";
    // The depot counts the blocks it gives back until the heap is trimmed, which may still be
    // under way when the resident set has fallen.
    EXPECT_TRUE(mailroom::test::eventually([&] { return pool_depot_bytes() <= limit; }, 5s))
        << pool_depot_bytes() << " bytes still in the depot";
#endif
}

TEST(pool, large_blocks_bypass_the_pool) {
    void* big = pool_allocate(pool_max_block + 1);
    std::memset(big, 0, pool_max_block + 1);
    pool_free(big, pool_max_block + 1);
    SUCCEED();
}

}  // namespace
