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
};

}  // namespace mailroom::net::internal_node
