#pragma once
// What the SObjectizer 5.8 peers of W1-W8 share: the bench harness without mailroom,
// SObjectizer itself, and the one knob they all expose, the queue lock (`--lock`).
//
// Each program makes a fresh environment per repetition (a so_5::wrapped_env_t, started with
// wait_init_completion so that every agent is registered when the constructor returns), as the
// mailroom programs make a fresh mailroom::environment. Everything not named in a program's
// header comment is SObjectizer's default.
//
// The queue lock: SObjectizer's dispatcher queues take a lock per push and pop. Its default,
// the "combined" lock, spins up to 1 ms before it blocks on a condition variable; the "simple"
// lock (a mutex and a condition variable) blocks at once. Spinning saves a wake-up (about 30 us
// on these 2-core VMs) when the peer answers quickly, as in a ping-pong; it steals a core from
// the producers when there are more busy threads than cores, as in a fan-in. Each program says
// which one it uses by default and why (the faster one for its workload, measured on these
// machines), and `--lock combined|simple` runs the other.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <so_5/all.hpp>

#include <string>

namespace bench::so5_peer {

enum class lock_kind { combined, simple };

inline const char* to_string(lock_kind k) { return k == lock_kind::combined ? "combined" : "simple"; }

/// The `--lock` extra of every SObjectizer peer: its usage text, for bench::parse.
inline const std::pair<const std::string, std::string> lock_flag{"lock", "combined|simple"};

/// Reads `--lock`, `fallback` when absent; a bad value is a usage error.
inline lock_kind lock_from(const bench::options& o, lock_kind fallback, const char* argv0,
                           const std::map<std::string, std::string>& extras) {
    const std::string v = o.get("lock", to_string(fallback));
    if (v == "combined") return lock_kind::combined;
    if (v == "simple") return lock_kind::simple;
    bench::usage(argv0, extras);
}

/// Makes every dispatcher queue of the environment (MPSC and MPMC) use lock `k`.
inline void use_lock(so_5::environment_params_t& params, lock_kind k) {
    params.queue_locks_defaults_manager(k == lock_kind::combined ? so_5::make_defaults_manager_for_combined_locks()
                                                                 : so_5::make_defaults_manager_for_simple_locks());
}

}  // namespace bench::so5_peer
