#pragma once
// What the CAF peers of W1-W7 share: the bench harness without mailroom, CAF itself, and a
// configuration helper. Each program makes a fresh actor_system per repetition, as the mailroom
// programs make a fresh environment.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <caf/all.hpp>

#include <future>

namespace bench::caf_peer {

/// A configuration with `threads` scheduler workers (CAF's default work-stealing policy).
/// Nothing else is changed from CAF's defaults: the comparison is with CAF as shipped.
inline void configure(caf::actor_system_config& cfg, std::size_t threads) {
    cfg.set("scheduler.max-threads", static_cast<caf::config_value::integer>(threads));
}

}  // namespace bench::caf_peer
