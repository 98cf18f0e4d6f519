#pragma once
// `mailroom demo --nodes`: the pricing object in a second process. The demo starts its own
// executable again as `mailroom node --name pricing-node --listen tcp://127.0.0.1:0 --serve
// pricing`, reads the port from its READY line, and dials it from a node of the demo's
// environment; the requesters then ask `pricing-node/pricing/quote` beside the local objects.
// At the end the child is stopped with SIGTERM and its own figures (what it served, its named
// requests by final state, its books) are read back for the report.

#include <mailroom/env/environment.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mailroom::tool {

/// What the second process and this side's node said at the end (demo_report.cpp prints it and
/// checks it against the requesters' counts in demo_metrics).
struct nodes_report {
    bool enabled = false;
    std::string peer;    ///< the child node's name
    std::string target;  ///< the object the requesters asked
    /// This side's node (node_stats).
    std::uint64_t requests_out = 0, requests_replied = 0, requests_rejected = 0, requests_abandoned = 0;
    std::uint64_t frames_rejected = 0, peers_down = 0;
    /// The child: exited by itself with 0 after SIGTERM, within the time.
    bool child_exited_ok = false;
    /// Its lines "node ...", "named: ..." and "books: ..." (empty when missing).
    std::string child_node_line, child_named_line, child_books_line;
    /// Parsed from them: requests served, and its named requests by final state.
    std::uint64_t child_served = 0, child_posted = 0, child_replied = 0, child_rejected = 0, child_abandoned = 0;
    bool child_parsed = false;        ///< all of the above were found
    bool child_books_balanced = false;
};

/// The second process and the node that reaches it. Made before the requesters start; any
/// failure to start (no READY within 10 s, the peer not up within 10 s) raises usage_error
/// naming what did not happen, with the child killed.
class remote_pricing {
public:
    /// Starts `exe` (this program) as the pricing node and dials it from a node of `env`.
    remote_pricing(environment& env, const std::string& exe);
    remote_pricing(const remote_pricing&) = delete;
    remote_pricing& operator=(const remote_pricing&) = delete;
    /// Kills the child if finish() did not reap it.
    ~remote_pricing();

    /// "pricing-node/pricing/quote".
    const std::string& target() const noexcept { return target_; }

    /// After the environment stopped (its node with it): SIGTERM to the child, its output read
    /// until it closes (bounded: 10 s, then SIGKILL), the figures of both sides.
    nodes_report finish();

private:
    struct node_holder;
    std::unique_ptr<node_holder> node_;
    pid_t child_ = -1;
    int out_ = -1;  // the child's stdout
    std::string buffer_;
    std::vector<std::string> lines_;  // what it printed, READY included
    std::string target_;
};

}  // namespace mailroom::tool
