#include <mailroom/core/pool.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;

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
    std::vector<void*> blocks;
    for (int i = 0; i < 10; ++i) blocks.push_back(pool_allocate(100));
    const std::size_t before = pool_cached_blocks();
    std::thread([&] {
        for (void* b : blocks) pool_free(b, 100);
    }).join();
    EXPECT_EQ(pool_cached_blocks(), before + 10);
#endif
}

// A burst: one thread allocates far more than the mark (the backlog of a producer that outran
// its consumer), another frees it all (the consumer draining it). The depot used to keep every
// block it was given; now what would take it past the mark goes back to the C heap.
TEST(pool, blocks_freed_above_the_high_water_mark_go_back_once_a_burst_drains) {
#ifdef MAILROOM_NO_POOL
    GTEST_SKIP() << "the pool is compiled out under sanitizers";
#else
    const std::size_t limit = pool_cache_limit();
    ASSERT_EQ(limit, pool_default_cache_limit);
    constexpr std::size_t sizes[] = {48, 200};  // the 64- and 256-byte classes
    constexpr std::size_t per_size = 100'000;   // 32 MB in all: eight times the mark
    std::vector<std::pair<void*, std::size_t>> backlog;
    backlog.reserve(per_size * 2);
    std::thread([&] {
        for (std::size_t i = 0; i < per_size; ++i)
            for (std::size_t n : sizes) backlog.emplace_back(pool_allocate(n), n);
    }).join();
    std::size_t after_drain = 0;
    std::thread([&] {
        for (auto [b, n] : backlog) pool_free(b, n);
        after_drain = pool_depot_bytes();
    }).join();  // the consumer's own cache is flushed as it exits, under the same mark
    EXPECT_LE(after_drain, limit);
    EXPECT_LE(pool_depot_bytes(), limit);
    EXPECT_LE(pool_cached_bytes(), limit + 2 * 256 * (64 + 128 + 256 + 512 + 32));  // plus this thread's cache

    // The mark can be lowered at run time: what sits above it goes at once.
    pool_set_cache_limit(limit / 4);
    EXPECT_LE(pool_depot_bytes(), limit / 4);
    pool_set_cache_limit(limit);
#endif
}

TEST(pool, large_blocks_bypass_the_pool) {
    void* big = pool_allocate(pool_max_block + 1);
    std::memset(big, 0, pool_max_block + 1);
    pool_free(big, pool_max_block + 1);
    SUCCEED();
}

}  // namespace
