// W9 for mailroom: two nodes in two processes over tcp loopback, 64-byte payloads, the same
// figures as the raw ZeroMQ floor (floor/w9_zmq.cpp) and CAF's remote actors (caf/w9_remote.cpp).
//
//   --part a  one-way, pipelined: `send_to(env, "w9-server/sink", msg)` from the main thread, 1M
//             messages (+10k warm-up) at scale 1, to the named object "sink" that the node of a
//             second process exports; sink counts them and checks their order, and a final
//             request ("count", total) is answered once they are all in (one peer's frames
//             keep their order, and one session handles them in that order). M msg/s from the
//             first timed send to that answer.
//   --part b  request/reply, one at a time: `request<w9_payload>(env, "w9-server/sink", msg)`,
//             then wait() for the reply (sink returns the payload), each reply checked; 20k
//             round trips (+1k warm-up). us per round trip.
//   --part c  (a) with CURVE: both nodes have key pairs (node_options::security, keys made in
//             the run and held in code). The client makes its pair first and gives the server
//             its public key (--client-key), which the server allows as node "w9-client"
//             (node::allow), so the server's ZAP handler checks it as in any CURVE deployment;
//             the server prints its own public key beside its endpoint, and the client dials
//             with it (connect_options::server_public_key).
//
// Set-up, the same on both sides: an environment with its default dispatcher, a node with
// libzmq's default high-water marks; the client node's send queue blocks the sender when full
// (send_overflow::block, 100,000 messages), as the floor's sender waits at its high-water
// mark (CAF's never waits). The payload is a std::string of 64 bytes carrying the sequence
// number in its first 8, encoded with msgpack as every node message is.
//
// The second process is this program again (`--role server`), started per repetition; it
// prints "READY <endpoint> [<server public key>]" (two_process.hpp) and exits once the client
// says "quit", after checking its own books.

#include "harness.hpp"
#include "two_process.hpp"

#include <mailroom/net/node.hpp>
#include <mailroom/net/security.hpp>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>

namespace {

using namespace std::chrono_literals;

constexpr const char* workload = "W9";
constexpr std::size_t message_bytes = 64;
constexpr const char* server_name = "w9-server";
constexpr const char* target = "w9-server/sink";

struct w9_payload {
    std::string bytes;
    MSGPACK_DEFINE(bytes)
};
struct w9_count {
    std::uint64_t total = 0;
    MSGPACK_DEFINE(total)
};
struct w9_text {
    std::string text;
    MSGPACK_DEFINE(text)
};
struct w9_quit {
    int unused = 0;
    MSGPACK_DEFINE(unused)
};

std::shared_ptr<const mailroom::net::type_registry> types() {
    auto r = std::make_shared<mailroom::net::type_registry>();
    mailroom::net::register_type<w9_payload>(*r, "w9.payload");
    mailroom::net::register_type<w9_count>(*r, "w9.count");
    mailroom::net::register_type<w9_text>(*r, "w9.text");
    mailroom::net::register_type<w9_quit>(*r, "w9.quit");
    return r;
}

std::string payload(std::uint64_t seq) {
    std::string m(message_bytes, '\0');
    std::memcpy(m.data(), &seq, sizeof seq);
    return m;
}
std::uint64_t get_seq(const std::string& m) {
    std::uint64_t seq = 0;
    if (m.size() >= sizeof seq) std::memcpy(&seq, m.data(), sizeof seq);
    return seq;
}

mailroom::net::node_options node_settings() {
    mailroom::net::node_options o;
    o.types = types();
    o.send_reaction = mailroom::net::send_overflow::block;
    o.send_block_timeout = 30s;
    o.linger = 1000ms;
    return o;
}

// ---- the server process

int serve(const std::string& part, const std::string& client_key) {
    std::mutex m;
    std::condition_variable cv;
    bool quit = false;
    std::uint64_t expected = 0;
    std::string bad;

    mailroom::environment env(mailroom::environment_options{.name = "w9-server"});
    mailroom::session s(env, mailroom::session_options{.name = "sink"});
    // Touched on the sink's session only (it is serial), except `quit`, under `m`.
    auto sink = mailroom::register_named(s, "sink", [&](mailroom::incoming& in) {
        if (in.is<w9_payload>()) {
            const auto& p = in.as<w9_payload>();
            if (in.header().request) return in.reply<w9_payload>(p);  // part b: the payload goes back
            if ((p.bytes.size() != message_bytes || get_seq(p.bytes) != expected) && bad.empty())
                bad = "(message " + std::to_string(expected) + " out of order or of the wrong size)";
            ++expected;
        } else if (in.is<w9_count>()) {
            const std::uint64_t total = in.as<w9_count>().total;
            in.reply<w9_text>(w9_text{bad.empty() && expected == total
                                          ? std::string("done")
                                          : "received " + std::to_string(expected) + " of " + std::to_string(total) +
                                                " " + bad});
        } else if (in.is<w9_quit>()) {
            std::lock_guard g(m);
            quit = true;
            cv.notify_all();
        }
    });

    auto o = node_settings();
    std::string ready_extra;
    if (part == "c") {
        bench::check(!client_key.empty(), workload, "server: part c needs --client-key");
        const auto keys = mailroom::net::curve_keypair::generate();
        o.security.secret_key = keys.secret_key;
        ready_extra = " " + keys.public_key;
    }
    mailroom::net::node n(env, server_name, std::move(o));
    if (part == "c") n.allow(client_key, "w9-client");
    n.export_objects("sink");
    const std::string endpoint = n.listen("tcp://127.0.0.1:0");
    bench::say_ready(endpoint + ready_extra);
    {
        std::unique_lock g(m);
        if (!cv.wait_for(g, 600s, [&] { return quit; })) bench::fail(workload, "server: no quit within 600 s");
    }
    n.stop();
    const auto ns = n.stats();
    bench::check(ns.frames_rejected == 0 && ns.served_refused == 0, workload,
                 "server: frames rejected " + std::to_string(ns.frames_rejected) + ", served refused " +
                     std::to_string(ns.served_refused));
    if (part == "c")
        bench::check(ns.zap.allowed_curve >= 1 && ns.zap.refused() == 0, workload,
                     "server: the ZAP handler allowed " + std::to_string(ns.zap.allowed_curve) + " and refused " +
                         std::to_string(ns.zap.refused()));
    sink.shutdown();
    return 0;
}

// ---- the client

struct client {
    mailroom::environment env{mailroom::environment_options{.name = "w9-client"}};
    mailroom::net::node node;
    std::uint64_t seq = 0;

    // `keys`: this node's key pair for CURVE (the server allowed its public key), else empty.
    client(const std::string& ready, const mailroom::net::curve_keypair& keys) {
        auto o = node_settings();
        std::string endpoint = ready;
        mailroom::net::connect_options how;
        if (!keys.secret_key.empty()) {
            const auto space = ready.find(' ');
            bench::check(space != std::string::npos, workload, "the server gave no public key");
            endpoint = ready.substr(0, space);
            how.server_public_key = ready.substr(space + 1);
            o.security.secret_key = keys.secret_key;
        }
        node = mailroom::net::node(env, "w9-client", std::move(o));
        node.connect(endpoint, how);
        bench::check(node.wait_for_peer(server_name, 30s), workload, "the server node did not come up within 30 s");
    }

    // Sends messages seq .. seq + n - 1, pipelined, then asks for the count and waits for "done".
    void one_way(std::uint64_t n) {
        for (std::uint64_t i = 0; i < n; ++i) mailroom::send_to(env, target, w9_payload{payload(seq++)});
        auto r = mailroom::request<w9_text>(env, target, w9_count{seq}, {.timeout = 60s});
        r.wait();
        bench::check(r.state() == mailroom::request_state::replied, workload,
                     "count request " + std::string(mailroom::to_string(r.state())) + ": " + r.reason());
        bench::check(r.reply().text == "done", workload, "the server answered '" + r.reply().text + "'");
    }

    void round_trips(std::uint64_t n) {
        for (std::uint64_t i = 0; i < n; ++i, ++seq) {
            auto r = mailroom::request<w9_payload>(env, target, w9_payload{payload(seq)}, {.timeout = 30s});
            r.wait();
            bench::check(r.state() == mailroom::request_state::replied && r.reply().bytes.size() == message_bytes &&
                             get_seq(r.reply().bytes) == seq,
                         workload, "round trip " + std::to_string(seq) + " came back wrong: " + r.reason());
        }
    }

    void finish() {
        mailroom::send_to(env, target, w9_quit{});
        node.stop();  // flushes "quit" within the linger
        const auto s = node.stats();
        bench::check(s.sends_lost == 0 && s.sends_dropped == 0 && s.requests_abandoned == 0 &&
                         s.requests_rejected == 0 && s.frames_rejected == 0,
                     workload,
                     "client node: sends lost " + std::to_string(s.sends_lost) + ", dropped " +
                         std::to_string(s.sends_dropped) + ", requests abandoned " +
                         std::to_string(s.requests_abandoned) + ", rejected " + std::to_string(s.requests_rejected));
    }
};

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{
        {"part", "a|b|c"}, {"role", "client|server"}, {"client-key", "Z85 (the server of part c)"}};
    auto o = bench::parse(argc, argv, extras);
    const std::string part = o.get("part", "a");
    if (part != "a" && part != "b" && part != "c") bench::usage(argv[0], extras);
    try {
        if (o.get("role", "client") == "server") return serve(part, o.get("client-key", ""));

        const auto [pipelined, n, warmup, unit] = bench::plan_w9(o, part);
        std::printf("W9 mailroom, two nodes over tcp loopback, two processes, %zu-byte payloads: %s, %llu messages "
                    "(+%llu warm-up)\n",
                    message_bytes,
                    part == "a"   ? "(a) one-way to a named object, pipelined"
                    : part == "b" ? "(b) request/reply, one at a time"
                                  : "(c) one-way to a named object, pipelined, CURVE",
                    static_cast<unsigned long long>(n), static_cast<unsigned long long>(warmup));
        auto s = bench::repeat(o, unit, [&] {
            bench::server_process server;
            mailroom::net::curve_keypair keys;
            std::vector<std::string> args{"--role", "server", "--part", part};
            if (part == "c") {
                keys = mailroom::net::curve_keypair::generate();
                args.insert(args.end(), {"--client-key", keys.public_key});
            }
            const std::string ready = server.spawn_self(workload, args);
            double figure = 0;
            {
                client c(ready, keys);
                figure = bench::w9_figure(pipelined, warmup, n, [&](std::uint64_t count) {
                    pipelined ? c.one_way(count) : c.round_trips(count);
                });
                c.finish();
            }
            server.finish();
            return figure;
        });
        bench::report(workload,
                      part == "b"   ? "mailroom nodes, request/reply round trip"
                      : part == "a" ? "mailroom nodes, one-way to a named object, pipelined"
                                    : "mailroom nodes, one-way to a named object, pipelined, CURVE",
                      s, unit, "part=" + part + " messages=" + std::to_string(n));
    } catch (const std::exception& e) {
        bench::fail(workload, e.what());
    }
    return 0;
}
