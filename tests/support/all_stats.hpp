#pragma once
/// Every layer's counters of an environment in one snapshot, for tests that check books
/// spanning layers (sessions and the messages they were sent, requests and named objects).

#include <mailroom/agent/coop.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/session/session.hpp>

namespace mailroom::test {

/// The field names of the four snapshots are distinct, so one struct holds them all.
struct all_stats : environment_stats, agent_stats, session_stats, named_stats {};

/// environment::stats() and each layer's accessor, read in that order. Any thread.
inline all_stats all_stats_of(const environment& env) {
    return {env.stats(), agent_stats_of(env), session_stats_of(env), named_stats_of(env)};
}

}  // namespace mailroom::test
