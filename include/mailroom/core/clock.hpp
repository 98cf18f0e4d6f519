#pragma once
/// Monotonic time as used by timers, spinning and heartbeats.

#include <mailroom/export.hpp>

#include <chrono>
#include <cstdint>

/// For the thread-locals of the hot path: the libraries are built position-independent, where
/// the default TLS model calls __tls_get_addr on every access; initial-exec is one load. Valid
/// for executables and for shared objects loaded at start-up, which is how mailroom is used.
#define MAILROOM_FAST_TLS [[gnu::tls_model("initial-exec")]]

namespace mailroom {

using clock = std::chrono::steady_clock;
using duration = std::chrono::nanoseconds;

/// Nanoseconds of the monotonic clock; cheap (vDSO), callable from any thread.
MAILROOM_EXPORT std::int64_t now_ns() noexcept;

}  // namespace mailroom
