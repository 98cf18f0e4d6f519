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

}  // namespace mailroom::internal
