#pragma once
/// Monotonic time as used by timers, spinning and heartbeats.

#include <mailroom/export.hpp>

#include <chrono>
#include <cstdint>

namespace mailroom {

using clock = std::chrono::steady_clock;
using duration = std::chrono::nanoseconds;

/// Nanoseconds of the monotonic clock; cheap (vDSO), callable from any thread.
MAILROOM_EXPORT std::int64_t now_ns() noexcept;

}  // namespace mailroom
