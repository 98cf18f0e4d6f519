// Nodes in two processes: `mailroom node --serve pricing --serve echo` in a child process (the
// runner built as net_node_child, see support/node_child.cpp), a requesting node in the test
// process, over tcp://127.0.0.1 with the port the child chose. Requests are replied; a child
// killed with requests in flight has every one abandoned within the detection time and is seen
// down; restarted on the same port it is up again and serves; stopped (SIGSTOP) it is
// suspected, then down, its requests abandoned or waiting as their options say, and after
// SIGCONT it is up again. With keys, a CURVE pair across processes replies, and a child that
// the serving node does not allow (an unknown key, or no keys at all) is refused, counted there,
// and sends nothing. The test node's detection is short; every wait is bounded.

#include <mailroom/net/node.hpp>

#include "support/process.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <csignal>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;

namespace {

// The wire types of `mailroom node`'s built-in services, registered under the same names as
// there (docs/nodes.md, "Running a node from the command line").
struct text_message {
    std::string text;
    MSGPACK_DEFINE(text)
};
struct quote_request {
    std::string symbol;
    MSGPACK_DEFINE(symbol)
};
struct quote_reply {
    std::string symbol;
    double price = 0;
    MSGPACK_DEFINE(symbol, price)
};

// Suspected after roughly 0.3-0.5 s of silence, down 0.2 s later.
net::node_options fast() {
    auto r = std::make_shared<net::type_registry>();
    net::register_type<text_message>(*r, "mailroom.text");
    net::register_type<quote_request>(*r, "mailroom.quote_request");
    net::register_type<quote_reply>(*r, "mailroom.quote");
    net::node_options o;
    o.types = r;
    o.heartbeat_interval = 30ms;
    o.acceptable_heartbeat_pause = 200ms;
    o.min_std_deviation = 30ms;
    o.down_after = 200ms;
    o.hello_timeout = 500ms;
    o.reconnect_min = 20ms;
    o.reconnect_max = 200ms;
    o.linger = 0ms;
    return o;
}

// Detection time of fast(): suspected after at most ~0.5 s, down 0.2 s later. The bounds below
// are generous multiples of it, for loaded machines and sanitizer builds.
constexpr auto detection_bound = 10s;

struct event_log {
    std::mutex m;
    std::condition_variable cv;
    std::vector<net::peer_event> v;
    void add(const net::peer_event& e) {
        {
            std::lock_guard g(m);
            v.push_back(e);
        }
        cv.notify_all();
    }
    std::size_t count_locked(net::peer_state s) const {
        std::size_t n = 0;
        for (auto& e : v)
            if (e.state == s && e.peer == "server") ++n;
        return n;
    }
    std::size_t count(net::peer_state s) {
        std::lock_guard g(m);
        return count_locked(s);
    }
    bool wait(net::peer_state s, std::size_t nth, std::chrono::milliseconds t = detection_bound) {
        std::unique_lock g(m);
        return cv.wait_for(g, t, [&] { return count_locked(s) >= nth; });
    }
};

// The serving child, on `listen` (port 0 the first time, the same port on a restart).
test::child_process start_server(const std::string& listen, std::string& endpoint) {
    auto child = test::child_process::spawn({MAILROOM_NODE_CHILD, "--name", "server", "--listen", listen, "--serve",
                                             "pricing", "--serve", "echo", "--heartbeat", "100"});
    const std::string ready = child.wait_for_line("READY ", 30s);
    endpoint = ready.substr(6);
    return child;
}

// A requesting node in this process, dialling the child.
struct client_side {
    environment env{environment_options{.name = "client-env", .log = [](std::string_view) {}}};
    session s{env, session_options{.name = "peer-watch"}};
    event_log events;
    net::node node{env, "client", fast()};
    event_handle sub = node.subscribe_peers(s, [this](const net::peer_event& e) { events.add(e); });

    auto quote(const std::string& symbol, send_options o = {.timeout = 10s}) {
        return request<quote_reply>(env, "server/pricing/quote", quote_request{symbol}, o);
    }
};

template <class R>
request_state settle(outgoing<R>& r, std::chrono::milliseconds t = 15s) {
    EXPECT_TRUE(r.wait_for(t)) << "request #" << r.id() << " did not settle in " << t.count() << " ms";
    return r.state();
}

}  // namespace

TEST(node_process, a_node_in_a_child_process_replies_to_requests_over_tcp_loopback) {
    std::string ep;
    auto server = start_server("tcp://127.0.0.1:0", ep);
    ASSERT_EQ(ep.rfind("tcp://127.0.0.1:", 0), 0u) << ep;
    ASSERT_NE(ep, "tcp://127.0.0.1:0");
    client_side c;
    c.node.connect(ep);
    ASSERT_TRUE(c.node.wait_for_peer("server", 30s)) << "the child never came up";

    std::vector<outgoing<quote_reply>> quotes;
    for (int i = 0; i < 50; ++i) quotes.push_back(c.quote("SYM" + std::to_string(i % 5)));
    for (int i = 0; i < 50; ++i) {
        ASSERT_EQ(settle(quotes[i]), request_state::replied) << quotes[i].reason();
        EXPECT_EQ(quotes[i].reply().symbol, "SYM" + std::to_string(i % 5));
        EXPECT_GT(quotes[i].reply().price, 0.0);
    }
    // The same symbol gets the same price.
    EXPECT_EQ(quotes[0].reply().price, quotes[5].reply().price);
    auto echo = request<text_message>(c.env, "server/echo", text_message{"hello"}, {.timeout = 10s});
    ASSERT_EQ(settle(echo), request_state::replied) << echo.reason();
    EXPECT_EQ(echo.reply().text, "hello");
    auto empty = c.quote("");
    EXPECT_EQ(settle(empty), request_state::rejected);
    EXPECT_NE(empty.reason().find("no symbol"), std::string::npos) << empty.reason();
    auto missing = request<text_message>(c.env, "server/nothing", text_message{"x"}, {.timeout = 10s});
    EXPECT_EQ(settle(missing), request_state::rejected);
    EXPECT_NE(missing.reason().find("no such object"), std::string::npos) << missing.reason();

    // SIGTERM stops the child cleanly: it exits 0 after printing its figures and the books.
    server.signal(SIGTERM);
    const std::string stopping = server.wait_for_line("stopping on SIGTERM", 30s);
    const std::string figures = server.wait_for_line("node server:", 30s);
    EXPECT_NE(figures.find("served 53 requests"), std::string::npos) << figures;
    const std::string books = server.wait_for_line("books:", 30s);
    EXPECT_NE(books.find("(balanced)"), std::string::npos) << books;
    const auto st = server.wait(30s);
    EXPECT_TRUE(st.exited && st.code == 0) << st.describe();
}

TEST(node_process, a_killed_child_has_every_request_in_flight_abandoned_and_a_restarted_one_serves_again) {
    std::string ep;
    auto server = start_server("tcp://127.0.0.1:0", ep);
    client_side c;
    c.node.connect(ep);
    ASSERT_TRUE(c.node.wait_for_peer("server", 30s)) << "the child never came up";
    auto first = c.quote("ACME");
    ASSERT_EQ(settle(first), request_state::replied) << first.reason();

    // Stopped, the child reads nothing: requests sent now stay in flight (transmitted) until
    // it is killed, and the node can only learn of that from the silence.
    server.stop();
    std::vector<outgoing<quote_reply>> flying;
    for (int i = 0; i < 20; ++i) flying.push_back(c.quote("K" + std::to_string(i), {.timeout = 60s}));
    const auto killed_at = std::chrono::steady_clock::now();
    server.kill();
    const auto st = server.wait(30s);
    EXPECT_FALSE(st.exited) << st.describe();
    for (auto& r : flying) {
        ASSERT_EQ(settle(r, detection_bound), request_state::abandoned) << r.reason();
        EXPECT_NE(r.reason().find("peer 'server' lost"), std::string::npos) << r.reason();
    }
    // Abandoned by the detector, well before the requests' own 60 s timeout.
    EXPECT_LT(std::chrono::steady_clock::now() - killed_at, detection_bound);
    EXPECT_TRUE(c.events.wait(net::peer_state::down, 1)) << "the peer was never seen down";
    auto while_down = c.quote("DOWN");
    EXPECT_EQ(settle(while_down), request_state::abandoned);
    EXPECT_NE(while_down.reason().find("is down"), std::string::npos) << while_down.reason();

    // Restarted on the same port: the node dials it again, the peer comes up, requests serve.
    const std::string port = ep.substr(ep.rfind(':') + 1);
    std::string ep2;
    auto again = start_server("tcp://127.0.0.1:" + port, ep2);
    EXPECT_EQ(ep2, ep);
    ASSERT_TRUE(c.events.wait(net::peer_state::up, 2, 30s)) << "the restarted child never came up";
    auto after = c.quote("ACME");
    ASSERT_EQ(settle(after), request_state::replied) << after.reason();
    EXPECT_EQ(after.reply().price, first.reply().price);
    // The node counts a request after it is final: read the counters once they got there.
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (c.node.stats().requests_replied < 2 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(1ms);
    auto s = c.node.stats();
    EXPECT_GE(s.requests_abandoned, 21u);
    EXPECT_EQ(s.requests_replied, 2u);
}

TEST(node_process, a_stopped_child_is_suspected_then_down_and_up_again_after_sigcont) {
    std::string ep;
    auto server = start_server("tcp://127.0.0.1:0", ep);
    client_side c;
    c.node.connect(ep);
    ASSERT_TRUE(c.node.wait_for_peer("server", 30s)) << "the child never came up";

    server.stop();
    // In flight when the child stopped: abandoned once it is down, whatever their timeout.
    auto in_flight = c.quote("STOPPED", {.timeout = 60s});
    EXPECT_TRUE(c.events.wait(net::peer_state::suspect, 1)) << "the stopped peer was never suspected";
    EXPECT_TRUE(c.events.wait(net::peer_state::down, 1)) << "the stopped peer was never seen down";
    EXPECT_EQ(settle(in_flight, detection_bound), request_state::abandoned) << in_flight.reason();
    EXPECT_NE(in_flight.reason().find("peer 'server' lost"), std::string::npos) << in_flight.reason();

    // While it is down: a request that fails fast (the default) is abandoned at once; one that
    // may wait for the peer waits, bounded by its timeout.
    auto fails_fast = c.quote("FAST");
    EXPECT_EQ(settle(fails_fast), request_state::abandoned);
    EXPECT_NE(fails_fast.reason().find("is down"), std::string::npos) << fails_fast.reason();
    auto waits = c.quote("WAIT", {.timeout = 30s, .wait_for_peer = true});
    EXPECT_FALSE(waits.wait_for(200ms)) << "a request waiting for the peer ended early: " << waits.reason();

    server.resume();
    ASSERT_TRUE(c.events.wait(net::peer_state::up, 2, 30s)) << "the resumed child never came up again";
    ASSERT_EQ(settle(waits, 30s), request_state::replied) << waits.reason();
    EXPECT_EQ(waits.reply().symbol, "WAIT");
    auto after = c.quote("AFTER");
    ASSERT_EQ(settle(after), request_state::replied) << after.reason();
}

// ---- security across processes ----------------------------------------------------------------

namespace {

namespace fs = std::filesystem;

using test::temp_dir;

// Key pairs for `names` as `mailroom node keygen` writes them: DIR/NAME.key and DIR/NAME.pub.
void keygen(const temp_dir& dir, std::initializer_list<const char*> names) {
    for (const char* n : names)
        net::write_key_files(net::curve_keypair::generate(), n, dir / (std::string(n) + ".key"),
                             dir / (std::string(n) + ".pub"));
}

}  // namespace

TEST(node_process, a_curve_pair_across_processes_replies) {
    temp_dir keys, server_allow;
    keygen(keys, {"server", "client"});
    fs::copy_file(keys / "client.pub", server_allow / "client.pub");
    auto server = test::child_process::spawn({MAILROOM_NODE_CHILD, "--name", "server", "--listen", "tcp://127.0.0.1:0",
                                              "--serve", "pricing", "--heartbeat", "100", "--secret-key",
                                              keys / "server.key", "--allow-dir", server_allow.path.string()});
    const std::string ep = server.wait_for_line("READY ", 30s).substr(6);
    net::node_options o = fast();
    o.security.secret_key_file = keys / "client.key";
    o.security.allow_list_dir = keys.path;  // holds server.pub: found by the server's name
    environment env{environment_options{.name = "client-env", .log = [](std::string_view) {}}};
    net::node node{env, "client", o};
    node.connect(ep, {.peer = "server"});
    ASSERT_TRUE(node.wait_for_peer("server", 30s)) << "the child never came up";
    std::vector<outgoing<quote_reply>> quotes;
    for (int i = 0; i < 20; ++i)
        quotes.push_back(request<quote_reply>(env, "server/pricing/quote", quote_request{"S" + std::to_string(i)},
                                              {.timeout = 10s}));
    for (auto& q : quotes) ASSERT_EQ(settle(q), request_state::replied) << q.reason();
    server.signal(SIGTERM);
    const std::string sec = server.wait_for_line("security server:", 30s);
    EXPECT_NE(sec.find("CURVE, public key"), std::string::npos) << sec;
    EXPECT_NE(sec.find("refused: unknown key 0"), std::string::npos) << sec;
    EXPECT_EQ(sec.find("allowed 0,"), std::string::npos) << sec;
    const auto st = server.wait(30s);
    EXPECT_TRUE(st.exited && st.code == 0) << st.describe();
}

TEST(node_process, a_child_the_serving_node_does_not_allow_is_refused_counted_and_replied_nothing) {
    // This process serves with CURVE and allows no one; one child dials with a key of its own
    // (refused by ZAP), another with no keys at all (refused in the handshake).
    temp_dir keys;
    keygen(keys, {"server", "intruder"});
    net::node_options o = fast();
    o.security.secret_key_file = keys / "server.key";
    std::mutex log_m;
    std::vector<std::string> log_lines;
    environment env{environment_options{.name = "server-env", .log = [&](std::string_view l) {
                                            std::lock_guard g(log_m);
                                            log_lines.emplace_back(l);
                                        }}};
    session s{env, session_options{.name = "echo"}};
    auto echo = register_named(s, "echo", [](incoming& in) { in.reply<text_message>(in.as<text_message>()); });
    net::node node{env, "server", o};
    node.export_all();
    const std::string ep = node.listen("tcp://127.0.0.1:0");
    const std::string count = "5", timeout = "2000";
    auto intruder = test::child_process::spawn({MAILROOM_NODE_CHILD, "--name", "intruder", "--connect", ep,
                                                "--request", "echo", "--count", count, "--timeout", timeout,
                                                "--heartbeat", "100", "--secret-key", keys / "intruder.key",
                                                "--server-key", keys / "server.pub"});
    auto open = test::child_process::spawn({MAILROOM_NODE_CHILD, "--name", "open", "--connect", ep, "--request",
                                            "echo", "--count", count, "--timeout", timeout, "--heartbeat", "100"});
    // Each child waits for a peer as long as its --timeout, gives up ("no peer came up", exit
    // 1) and sends nothing. (How many refusals a child itself counted depends on how far its
    // handshakes got before it stopped: tests/net/node_test.cpp checks the dialling side.)
    for (auto* child : {&intruder, &open}) {
        (void)child->wait_for_line("no peer came up", 30s);
        (void)child->wait_for_line("security ", 30s);
        const auto st = child->wait(30s);
        EXPECT_TRUE(st.exited && st.code == 1) << st.describe();
    }
    // Counted here, on the serving side: the key refused by ZAP; the child without keys in the
    // handshake (as a mechanism mismatch when this side read its greeting first, else as a
    // failure without detail: it hung up on seeing CURVE).
    auto refused_both = [&] {
        const net::node_stats n = node.stats();
        return n.zap.refused_unknown_key >= 1 && n.handshake_failed_mechanism + n.handshake_failed_other >= 1;
    };
    const auto counted_by = std::chrono::steady_clock::now() + 10s;
    while (!refused_both() && std::chrono::steady_clock::now() < counted_by) std::this_thread::sleep_for(5ms);
    EXPECT_TRUE(refused_both());
    const net::node_stats ns = node.stats();
    EXPECT_EQ(ns.zap.allowed_curve, 0u);
    EXPECT_EQ(ns.peers_up, 0u);
    EXPECT_EQ(ns.requests_served, 0u);
    EXPECT_EQ(ns.frames_in.hello, 0u);
    // The refusal is counted, then logged: wait (bounded) for the line.
    auto named = [&] {
        std::lock_guard g(log_m);
        for (auto& l : log_lines)
            if (l.find("is not in the allow-list") != std::string::npos && l.find("127.0.0.1") != std::string::npos)
                return true;
        return false;
    };
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!named() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    EXPECT_TRUE(named()) << "no ZAP refusal logged with the peer's address";
}

// ---- a mesh of children -----------------------------------------------------------------------

namespace {

// Reads `child`'s lines until one starting with each of `prefixes` came (in any order); the
// prefixes not seen within `timeout`, empty when all came.
std::vector<std::string> wait_for_lines(test::child_process& child, std::vector<std::string> prefixes,
                                        std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!prefixes.empty()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        const auto line = child.read_line(left);
        if (!line) break;
        std::erase_if(prefixes, [&](const std::string& p) { return line->rfind(p, 0) == 0; });
    }
    return prefixes;
}

std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

}  // namespace

TEST(node_process, a_mesh_of_three_children_and_this_node_serves_everywhere_and_outlives_the_loss_of_one) {
    // a listens; b listens and dials a; c listens and dials a and b: the children are a full
    // mesh. This node ("hub") dials all three.
    auto serve = [](const std::string& name, std::vector<std::string> dial, std::string& endpoint) {
        std::vector<std::string> argv{MAILROOM_NODE_CHILD, "--name", name, "--listen", "tcp://127.0.0.1:0",
                                      "--serve", "pricing", "--heartbeat", "100"};
        for (auto& ep : dial) argv.insert(argv.end(), {"--connect", ep});
        auto child = test::child_process::spawn(argv);
        endpoint = child.wait_for_line("READY ", 30s).substr(6);
        return child;
    };
    std::string ep_a, ep_b, ep_c;
    auto a = serve("a", {}, ep_a);
    auto b = serve("b", {ep_a}, ep_b);
    auto c = serve("c", {ep_a, ep_b}, ep_c);
    environment env{environment_options{.name = "hub-env", .log = [](std::string_view) {}}};
    net::node hub{env, "hub", fast()};
    for (auto* ep : {&ep_a, &ep_b, &ep_c}) hub.connect(*ep);
    for (const char* n : {"a", "b", "c"}) ASSERT_TRUE(hub.wait_for_peer(n, 30s)) << "child " << n << " never came up";
    // Every child sees the other two and the hub.
    EXPECT_EQ(joined(wait_for_lines(a, {"peer up b ", "peer up c ", "peer up hub "}, 30s)), "");
    EXPECT_EQ(joined(wait_for_lines(b, {"peer up a ", "peer up c ", "peer up hub "}, 30s)), "");
    EXPECT_EQ(joined(wait_for_lines(c, {"peer up a ", "peer up b ", "peer up hub "}, 30s)), "");

    auto quotes_to = [&](const std::string& node, int n, std::chrono::milliseconds timeout) {
        std::vector<outgoing<quote_reply>> v;
        for (int i = 0; i < n; ++i)
            v.push_back(request<quote_reply>(env, node + "/pricing/quote", quote_request{"M" + std::to_string(i)},
                                             {.timeout = timeout}));
        return v;
    };
    for (const char* n : {"a", "b", "c"})
        for (auto& q : quotes_to(n, 30, 10s)) ASSERT_EQ(settle(q), request_state::replied) << n << ": " << q.reason();

    // b stops reading, requests to it stay in flight, then it is killed: they are abandoned
    // within the detection time, and a and c see it down.
    b.stop();
    auto flying = quotes_to("b", 10, 60s);
    b.kill();
    (void)b.wait(30s);
    for (auto& q : flying) {
        ASSERT_EQ(settle(q, detection_bound), request_state::abandoned) << q.reason();
        EXPECT_NE(q.reason().find("peer 'b' lost"), std::string::npos) << q.reason();
    }
    EXPECT_EQ(joined(wait_for_lines(a, {"peer down b "}, detection_bound)), "") << "a never saw b down";
    EXPECT_EQ(joined(wait_for_lines(c, {"peer down b "}, detection_bound)), "") << "c never saw b down";
    // The rest of the mesh serves on.
    for (const char* n : {"a", "c"})
        for (auto& q : quotes_to(n, 30, 10s)) ASSERT_EQ(settle(q), request_state::replied) << n << ": " << q.reason();

    // a and c stop cleanly, each having served its 60 requests, with balanced books.
    for (auto* child : {&a, &c}) {
        child->signal(SIGTERM);
        const std::string figures = child->wait_for_line("node ", 30s);
        EXPECT_NE(figures.find("served 60 requests"), std::string::npos) << figures;
        const std::string books = child->wait_for_line("books:", 30s);
        EXPECT_NE(books.find("(balanced)"), std::string::npos) << books;
        const auto st = child->wait(30s);
        EXPECT_TRUE(st.exited && st.code == 0) << st.describe();
    }
}
