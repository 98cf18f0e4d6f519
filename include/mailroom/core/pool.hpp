#pragma once
/// Recycling allocator for the small blocks of the hot path (envelopes, demands).

#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <new>

namespace mailroom::internal {

/// Largest block the pool recycles; bigger requests go straight to operator new.
inline constexpr std::size_t pool_max_block = 512;

/// Returns a block of at least `size` bytes, aligned for any fundamental type.
/// Callable from any thread; in steady state it is a pop from a thread-local list and allocates
/// nothing. Blocks freed on another thread flow back through a shared depot in batches.
MAILROOM_EXPORT void* pool_allocate(std::size_t size);

/// Returns a block obtained from pool_allocate with the same `size`, from any thread.
MAILROOM_EXPORT void pool_free(void* block, std::size_t size) noexcept;

/// pool_allocate for a block that holds a `T`. A type aligned beyond what the pool gives
/// (`alignas` over alignof(std::max_align_t), such as a cache-line aligned message) is not
/// recycled: it comes from the aligned operator new. Free it with pool_free_for<T>.
template <class T>
void* pool_allocate_for() {
    if constexpr (alignof(T) > alignof(std::max_align_t))
        return ::operator new(sizeof(T), std::align_val_t{alignof(T)});
    else
        return pool_allocate(sizeof(T));
}

/// Returns a block obtained from pool_allocate_for<T>, from any thread.
template <class T>
void pool_free_for(void* block) noexcept {
    if constexpr (alignof(T) > alignof(std::max_align_t))
        ::operator delete(block, std::align_val_t{alignof(T)});
    else
        pool_free(block, sizeof(T));
}

/// Blocks the calling thread holds in its cache plus those in the shared depot (for tests and stats).
MAILROOM_EXPORT std::size_t pool_cached_blocks() noexcept;

/// The same in bytes. Any thread.
MAILROOM_EXPORT std::size_t pool_cached_bytes() noexcept;

/// Bytes in the shared depot alone, counting those on their way back to the system until the C
/// heap has been trimmed: above pool_cache_limit() only for what a burst left there less than
/// about pool_decay_period ago. Any thread.
MAILROOM_EXPORT std::size_t pool_depot_bytes() noexcept;

/// Blocks the pool has taken from operator new since the process started (for tests and stats):
/// what a burst cost beyond the blocks it could reuse. Exact for threads that have exited, plus
/// the calling thread; each other live thread's last few (fewer than 256) may not be counted yet.
MAILROOM_EXPORT std::size_t pool_heap_blocks() noexcept;

/// The depot's high-water mark unless changed: enough for a few thousand messages in flight.
inline constexpr std::size_t pool_default_cache_limit = std::size_t{4} << 20;

/// How long blocks above the mark must sit unused in the depot before they go back to the C
/// heap (checked every quarter of it, so they go within 1.25 times this).
inline constexpr std::chrono::milliseconds pool_decay_period{1000};

/// The high-water mark of the shared depot, in bytes: what it keeps however long it is unused.
/// Above it, a burst's blocks stay for the next burst to reuse, and go back to the C heap (and
/// its free pages to the system) once they have sat unused for pool_decay_period, driven by a
/// thread of the pool's own, so without any further call. Each thread's own cache holds at
/// most two batches of 256 blocks per size class on top.
MAILROOM_EXPORT std::size_t pool_cache_limit() noexcept;

/// Sets the mark (0: keep nothing shared once the decay period has passed) and frees what the
/// depot holds above it now, without waiting for the decay. Any thread; takes the depot's lock,
/// never the hot path's.
MAILROOM_EXPORT void pool_set_cache_limit(std::size_t bytes) noexcept;

}  // namespace mailroom::internal
