#pragma once
// Test hooks of the node (not installed): what a test needs to make a peer that does not drain
// deterministically, instead of racing a real one.

#include <mailroom/net/node.hpp>

namespace mailroom::net::internal_node {

struct test_access {
    /// While `paused`, `n`'s I/O thread leaves every send queue undrained (frames wait there as
    /// for a peer that does not keep up); unpaused, it drains them again. Any thread.
    MAILROOM_NET_EXPORT static void pause_sends(const node& n, bool paused);
    /// Stops `n` as a process that is killed would: no BYE to its peers, which learn of it
    /// from the silence alone (their failure detectors).
    MAILROOM_NET_EXPORT static void stop_without_bye(node& n);
    /// While set, `n`'s I/O thread sleeps until something wakes it (a descriptor, its eventfd),
    /// never for a timer's tick alone: what it would miss shows as a hang, not as a delay.
    MAILROOM_NET_EXPORT static void sleep_without_ticks(const node& n, bool on);
};

}  // namespace mailroom::net::internal_node
