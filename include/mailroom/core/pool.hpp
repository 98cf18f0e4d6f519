#pragma once
/// Recycling allocator for the small blocks of the hot path (envelopes, demands).

#include <mailroom/export.hpp>

#include <cstddef>

namespace mailroom::internal {

/// Largest block the pool recycles; bigger requests go straight to operator new.
inline constexpr std::size_t pool_max_block = 512;

/// Returns a block of at least `size` bytes, aligned for any fundamental type.
/// Callable from any thread; in steady state it is a pop from a thread-local list and allocates
/// nothing. Blocks freed on another thread flow back through a shared depot in batches.
MAILROOM_EXPORT void* pool_allocate(std::size_t size);

/// Returns a block obtained from pool_allocate with the same `size`, from any thread.
MAILROOM_EXPORT void pool_free(void* block, std::size_t size) noexcept;

/// Blocks the calling thread holds in its cache plus those in the shared depot (for tests and stats).
MAILROOM_EXPORT std::size_t pool_cached_blocks() noexcept;

/// The same in bytes. Any thread.
MAILROOM_EXPORT std::size_t pool_cached_bytes() noexcept;

/// Bytes in the shared depot alone: never above pool_cache_limit(). Any thread.
MAILROOM_EXPORT std::size_t pool_depot_bytes() noexcept;

/// The depot's high-water mark unless changed: enough for a few thousand messages in flight.
inline constexpr std::size_t pool_default_cache_limit = std::size_t{4} << 20;

/// The high-water mark of the shared depot, in bytes. Freed blocks that would take the depot
/// past it go back to the C heap at once (after a burst drains, memory comes back); each
/// thread's own cache holds at most two batches of 256 blocks per size class on top.
MAILROOM_EXPORT std::size_t pool_cache_limit() noexcept;

/// Sets the mark (0: keep nothing shared) and frees what the depot holds above it now. Any
/// thread; takes the depot's lock, never the hot path's.
MAILROOM_EXPORT void pool_set_cache_limit(std::size_t bytes) noexcept;

}  // namespace mailroom::internal
