// Nodes: named objects and requests across processes, over ZeroMQ. Two environments stand for
// two processes here (one node per environment), joined over tcp loopback exactly as two
// programs would be: the README's "calc" served by node "desk", asked by node "trader" as
// "desk/calc". Then what a requester sees when things go wrong across the wire: a name the
// other side does not export is rejected there, a handler's reject() comes back with its
// reason, a slow answer is abandoned by the requester's timeout, and when the serving node
// stops it says BYE: the trader sees the peer down at once, the request it had in flight there
// is abandoned, and a new request to it is abandoned at once, never left waiting. See
// docs/nodes.md.

#include <mailroom/mailroom.hpp>
#include <mailroom/net/node.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

// Message types: msgpack by default, registered under the same names on both sides.
struct sum_req {
    int a = 0, b = 0;
    MSGPACK_DEFINE(a, b)
};
struct sum {
    int value = 0;
    MSGPACK_DEFINE(value)
};

void show(const char* what, const mailroom::outgoing<sum>& r) {
    if (r.state() == mailroom::request_state::replied)
        std::printf("  %-34s %-9s %d\n", what, to_string(r.state()), r.reply().value);
    else
        std::printf("  %-34s %-9s %s\n", what, to_string(r.state()), r.reason().c_str());
}

}  // namespace

int main() {
    example::checks check(58, "  ");
    std::atomic<int> downs{0};

    auto types = std::make_shared<mailroom::net::type_registry>();
    mailroom::net::register_type<sum_req>(*types, "calc.sum_req");
    mailroom::net::register_type<sum>(*types, "calc.sum");

    // The serving "process".
    mailroom::environment env{mailroom::environment_options{.name = "desk-env"}};
    mailroom::session s(env, {.name = "calculator"});
    auto served = mailroom::register_named(s, "calc", [](mailroom::incoming& in) {
        const sum_req& q = in.as<sum_req>();
        if (q.b < 0) return in.reject("negative numbers are not served");
        if (q.a == 999) std::this_thread::sleep_for(300ms);  // a slow answer
        in.reply<sum>(sum{q.a + q.b});
    });
    auto hidden = mailroom::register_named(s, "internal", [](mailroom::incoming& in) { in.reply<sum>(sum{0}); });
    auto here = std::make_unique<mailroom::net::node>(env, "desk", mailroom::net::node_options{.types = types});
    here->export_objects("calc");  // what other nodes may reach: "internal" stays private
    const std::string where = here->listen("tcp://127.0.0.1:0");  // the port chosen
    std::printf("node 'desk' listens on %s\n", where.c_str());

    // The requesting "process".
    mailroom::environment env2{mailroom::environment_options{.name = "trader-env"}};
    mailroom::session watcher(env2, {.name = "watcher"});
    mailroom::net::node there(env2, "trader", {.types = types});
    auto events = there.subscribe_peers(watcher, [&](const mailroom::net::peer_event& e) {
        std::printf("  peer event: '%s' %s\n", e.peer.c_str(), to_string(e.state));
        if (e.state == mailroom::net::peer_state::down) downs.fetch_add(1);
    });
    there.connect(where);
    check(there.wait_for_peer("desk", 5s), "the trader sees 'desk' up");

    std::printf("requests from 'trader':\n");
    auto r = mailroom::request<sum>(env2, "desk/calc", sum_req{2, 3}, {.timeout = 2s});
    r.wait();
    show("desk/calc 2 + 3", r);
    check(r.state() == mailroom::request_state::replied && r.reply().value == 5, "replied 5 across the wire");

    auto refused = mailroom::request<sum>(env2, "desk/calc", sum_req{1, -1}, {.timeout = 2s});
    refused.wait();
    show("desk/calc 1 + -1", refused);
    check(refused.state() == mailroom::request_state::rejected &&
              refused.reason().find("negative numbers are not served") != std::string::npos,
          "the handler's reject() comes back with its reason");

    auto private_one = mailroom::request<sum>(env2, "desk/internal", sum_req{1, 1}, {.timeout = 2s});
    private_one.wait();
    show("desk/internal 1 + 1", private_one);
    check(private_one.state() == mailroom::request_state::rejected, "a name 'desk' does not export is rejected");

    auto slow = mailroom::request<sum>(env2, "desk/calc", sum_req{999, 1}, {.timeout = 50ms});
    slow.wait();
    show("desk/calc 999 + 1 (50 ms)", slow);
    check(slow.state() == mailroom::request_state::abandoned, "a slow answer is abandoned by the timeout");

    // The serving node stops (its process would exit) while a request is in flight to it: it
    // says BYE, and the trader does not wait for its failure detector (about 6.6 s here).
    auto in_flight = mailroom::request<sum>(env2, "desk/calc", sum_req{999, 2}, {.timeout = 30s});
    example::eventually([&] { return in_flight.state() == mailroom::request_state::transmitted; });
    const auto stopped = std::chrono::steady_clock::now();
    here.reset();
    check(in_flight.wait_for(20s), "the request in flight ends when 'desk' stops");
    show("desk/calc 999 + 2 (desk stops)", in_flight);
    check(in_flight.state() == mailroom::request_state::abandoned &&
              in_flight.reason().find("peer 'desk' stopped") != std::string::npos,
          "abandoned: the peer stopped (it said BYE)");
    check(std::chrono::steady_clock::now() - stopped < 5s, "at once, not after the detection time");
    check(example::eventually([&] { return downs.load() > 0; }, 20s), "the trader sees 'desk' go down");
    auto late = mailroom::request<sum>(env2, "desk/calc", sum_req{1, 2}, {.timeout = 2s});
    check(late.wait_for(3s), "a request to a peer that is down ends, never left waiting");
    show("desk/calc 1 + 2 (desk stopped)", late);
    check(late.state() == mailroom::request_state::abandoned, "abandoned: the peer is down");

    const auto st = there.stats();
    std::printf("trader's books: %llu requests to peers: %llu replied, %llu rejected, %llu abandoned by the node\n",
                static_cast<unsigned long long>(st.requests_out), static_cast<unsigned long long>(st.requests_replied),
                static_cast<unsigned long long>(st.requests_rejected),
                static_cast<unsigned long long>(st.requests_abandoned));
    check(st.requests_replied == 1 && st.requests_rejected == 2 && st.peers_left == 1,
          "the trader's node counted each answer, and the BYE");
    return check.exit_code();
}
