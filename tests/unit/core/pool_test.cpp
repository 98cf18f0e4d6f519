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

TEST(pool, large_blocks_bypass_the_pool) {
    void* big = pool_allocate(pool_max_block + 1);
    std::memset(big, 0, pool_max_block + 1);
    pool_free(big, pool_max_block + 1);
    SUCCEED();
}

}  // namespace
