// Nodes in one process, over tcp loopback (port 0) and inproc: HELLO and peer events, requests
// and one-way messages across, every reject reason, abandonment (timeout, peer lost, node or
// environment stopped), reconnection, unregistering an exported object while requests fly,
// malformed input from a raw ZeroMQ socket, the books on both sides, and security (CURVE
// between nodes with keys; who is refused, and where it is counted). Every wait is bounded.

#include <mailroom/net/node.hpp>

#include <mailroom/net/frame.hpp>
#include <mailroom/net/node_test_access.hpp>

#include "support/raw_dealer.hpp"
#include "support/temp_dir.hpp"

#include <gtest/gtest.h>
#include <zmq.h>

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;

namespace {

struct add_req {
    int a = 0, b = 0;
    MSGPACK_DEFINE(a, b)
};
struct add_rep {
    int sum = 0;
    MSGPACK_DEFINE(sum)
};
struct note {
    std::string text;
    MSGPACK_DEFINE(text)
};
struct client_only {  // registered on the client alone
    int x = 0;
    MSGPACK_DEFINE(x)
};

// A type with a codec of its own, which notes the thread each decode ran on and refuses a
// negative value as malformed.
struct traced {
    std::int32_t value = 0;
};
std::mutex decode_threads_m;
std::vector<std::thread::id> decode_threads;

}  // namespace

template <>
struct mailroom::net::codec<traced> {
    static void encode(const traced& v, byte_buffer& out) {
        const auto* b = reinterpret_cast<const std::byte*>(&v.value);
        out.insert(out.end(), b, b + sizeof v.value);
    }
    static decode_result decode(std::span<const std::byte> in, traced& out, const decode_limits&) {
        {
            std::lock_guard g(decode_threads_m);
            decode_threads.push_back(std::this_thread::get_id());
        }
        if (in.size() != sizeof out.value) return decode_result::failure(decode_status::malformed, "not 4 bytes");
        std::memcpy(&out.value, in.data(), sizeof out.value);
        if (out.value < 0) return decode_result::failure(decode_status::malformed, "a negative value (refused by the test)");
        return {};
    }
};

namespace {

std::shared_ptr<const net::type_registry> types(bool with_client_only = false) {
    auto r = std::make_shared<net::type_registry>();
    net::register_type<add_req>(*r, "test.add_req");
    net::register_type<add_rep>(*r, "test.add_rep");
    net::register_type<note>(*r, "test.note");
    net::register_type<traced>(*r, "test.traced");
    if (with_client_only) net::register_type<client_only>(*r, "test.client_only");
    return r;
}

// Fast detection for tests: suspected after roughly 0.3-0.5 s of silence, down 0.2 s later.
net::node_options fast(bool with_client_only = false) {
    net::node_options o;
    o.types = types(with_client_only);
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

// A log that tests can search.
struct log_sink {
    std::mutex m;
    std::vector<std::string> lines;
    std::function<void(std::string_view)> fn() {
        return [this](std::string_view s) {
            std::lock_guard g(m);
            lines.emplace_back(s);
        };
    }
    bool has(const std::string& part) {
        std::lock_guard g(m);
        for (auto& l : lines)
            if (l.find(part) != std::string::npos) return true;
        return false;
    }
};

// Peer events as a session saw them.
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
    std::size_t count(net::peer_state s, const std::string& peer) {
        std::size_t n = 0;
        for (auto& e : v)
            if (e.state == s && e.peer == peer) ++n;
        return n;
    }
    std::size_t seen(net::peer_state s, const std::string& peer) {
        std::lock_guard g(m);
        return count(s, peer);
    }
    bool wait(net::peer_state s, const std::string& peer, std::size_t nth = 1, std::chrono::milliseconds t = 10s) {
        std::unique_lock g(m);
        return cv.wait_for(g, t, [&] { return count(s, peer) >= nth; });
    }
};

// Two environments, a server node exporting "calc" (and "sink"), a client node dialling it.
struct pair_fixture {
    log_sink server_log, client_log;
    std::unique_ptr<environment> server_env, client_env;
    std::unique_ptr<session> server_s;
    named_handle calc, sink;
    std::atomic<int> notes{0};
    // "hold" keeps what it receives, unanswered, until a test answers or drops it.
    std::mutex held_m;
    std::vector<incoming> held;
    named_handle hold;
    std::unique_ptr<net::node> server, client;
    std::string endpoint;

    explicit pair_fixture(const std::string& listen_on, net::node_options server_opts = fast(),
                          net::node_options client_opts = fast(true), const net::connect_options& dial = {}) {
        server_env = std::make_unique<environment>(environment_options{.name = "server-env", .log = server_log.fn()});
        client_env = std::make_unique<environment>(environment_options{.name = "client-env", .log = client_log.fn()});
        server_s = std::make_unique<session>(*server_env, session_options{.name = "calc-session"});
        calc = register_named(*server_s, "calc", [](incoming& in) {
            const auto& q = in.as<add_req>();
            if (q.a < 0) return in.reject("negative numbers are not served");
            in.reply<add_rep>(add_rep{q.a + q.b});
        });
        sink = register_named(*server_s, "sink", [this](incoming& in) {
            if (in.is<note>()) notes.fetch_add(1);
        });
        hold = register_named(*server_s, "hold", [this](incoming& in) {
            std::lock_guard g(held_m);
            held.push_back(std::move(in));
        });
        server = std::make_unique<net::node>(*server_env, "server", std::move(server_opts));
        server->export_objects("calc");
        server->export_objects("sink");
        server->export_objects("hold");
        endpoint = server->listen(listen_on);
        client = std::make_unique<net::node>(*client_env, "client", std::move(client_opts));
        client->connect(endpoint, dial);
    }

    bool up() { return client->wait_for_peer("server", 10s) && server->wait_for_peer("client", 10s); }
    std::size_t held_count() {
        std::lock_guard g(held_m);
        return held.size();
    }
};

// Counters are bumped after the request they count is final: read them once they got there.
template <class F>
bool eventually(F&& pred, std::chrono::milliseconds t = 10s) {
    const auto until = std::chrono::steady_clock::now() + t;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// Binds `endpoint` again after the node that had it stopped. libzmq closes a listener on its own
// thread after zmq_close() returns, so the port may still be taken for a moment: tried again
// for up to 5 s.
std::string listen_again(net::node& n, const std::string& endpoint) {
    const auto until = std::chrono::steady_clock::now() + 5s;
    for (;;) {
        try {
            return n.listen(endpoint);
        } catch (const net::endpoint_error& e) {
            if (std::string(e.what()).find("Address already in use") == std::string::npos ||
                std::chrono::steady_clock::now() >= until)
                throw;
        }
        std::this_thread::sleep_for(20ms);
    }
}

template <class R>
request_state settle(outgoing<R>& r, std::chrono::milliseconds t = 10s) {
    EXPECT_TRUE(r.wait_for(t)) << "request #" << r.id() << " did not settle in " << t.count() << " ms";
    return r.state();
}

}  // namespace

TEST(node, listen_on_port_zero_reports_the_bound_port_and_hello_brings_peer_up_on_both_sides) {
    environment server_env(environment_options{.name = "s"});
    environment client_env(environment_options{.name = "c"});
    event_log server_events, client_events;
    session ss(server_env), cs(client_env);
    net::node server(server_env, "alpha", fast());
    net::node client(client_env, "beta", fast());
    auto h1 = server.subscribe_peers(ss, [&](const net::peer_event& e) { server_events.add(e); });
    auto h2 = client.subscribe_peers(cs, [&](const net::peer_event& e) { client_events.add(e); });
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    ASSERT_EQ(ep.rfind("tcp://127.0.0.1:", 0), 0u) << ep;
    EXPECT_NE(ep, "tcp://127.0.0.1:0");
    EXPECT_NE(std::stoi(ep.substr(ep.rfind(':') + 1)), 0);
    ASSERT_EQ(server.endpoints(), std::vector<std::string>{ep});
    client.connect(ep);
    EXPECT_TRUE(client_events.wait(net::peer_state::up, "alpha"));
    EXPECT_TRUE(server_events.wait(net::peer_state::up, "beta"));
    auto peers = client.peers();
    ASSERT_EQ(peers.size(), 1u);
    EXPECT_EQ(peers[0].name, "alpha");
    EXPECT_EQ(peers[0].state, net::peer_state::up);
    EXPECT_GE(server.stats().frames_in.hello, 1u);
    EXPECT_GE(client.stats().frames_in.hello, 1u);
}

TEST(node, a_node_name_is_checked_like_a_named_objects_and_has_no_slash) {
    environment env;
    EXPECT_THROW(net::node(env, "a/b", fast()), invalid_name_error);
    EXPECT_THROW(net::node(env, "", fast()), invalid_name_error);
    EXPECT_THROW(net::node(env, "bad name", fast()), invalid_name_error);
    EXPECT_THROW(net::node(env, "ok", net::node_options{}), usage_error);  // no types
    net::node n(env, "one", fast());
    EXPECT_THROW(net::node(env, "two", fast()), usage_error);  // one node per environment
    EXPECT_THROW(n.listen("nonsense://x"), net::endpoint_error);
}

// The socket-options hook is where security sets its options: what it throws is what listen()
// and connect() throw, so a bad key is reported as itself (before, connect() raised an
// endpoint_error with an unrelated ZeroMQ errno text).
struct hook_refused : std::runtime_error {
    using std::runtime_error::runtime_error;
};

TEST(node, what_the_socket_options_hook_throws_fails_listen_and_connect_as_itself) {
    environment env;
    net::node_options o = fast();
    o.socket_options = [](void*, net::socket_role role, std::string_view ep) {
        throw hook_refused(std::string(role == net::socket_role::listening ? "listen " : "connect ") +
                           std::string(ep));
    };
    net::node n(env, "hooked", o);
    try {
        (void)n.listen("tcp://127.0.0.1:0");
        ADD_FAILURE() << "listen() did not throw";
    } catch (const hook_refused& e) {
        EXPECT_NE(std::string(e.what()).find("listen"), std::string::npos);
    }
    try {
        n.connect("tcp://127.0.0.1:9");
        ADD_FAILURE() << "connect() did not throw";
    } catch (const hook_refused& e) {
        EXPECT_NE(std::string(e.what()).find("connect tcp://127.0.0.1:9"), std::string::npos);
    }
    EXPECT_TRUE(n.peers().empty());
}

class node_over : public ::testing::TestWithParam<const char*> {};

TEST_P(node_over, request_and_send_round_trip_as_locally_with_wait_then_and_future) {
    std::string ep = GetParam();
    if (ep == "inproc") ep = "inproc://node-test-round-trip";
    pair_fixture f(ep);
    ASSERT_TRUE(f.up());
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, 5);

    // then() on a session of the requester, and a future
    session cs(*f.client_env);
    std::promise<int> got;
    auto r2 = request<add_rep>(*f.client_env, "server/calc", add_req{40, 2}, {.timeout = 10s});
    r2.then(cs, [&](const outgoing<add_rep>& o) { got.set_value(o.reply().sum); });
    auto fut_then = got.get_future();
    ASSERT_EQ(fut_then.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(fut_then.get(), 42);
    auto fut = request<add_rep>(*f.client_env, "server/calc", add_req{1, 1}, {.timeout = 10s}).future();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(fut.get().sum, 2);

    for (int i = 0; i < 10; ++i) send_to(*f.client_env, "server/sink", note{"n" + std::to_string(i)});
    EXPECT_TRUE(eventually([&] { return f.notes.load() == 10; })) << f.notes.load() << " notes";
    EXPECT_TRUE(eventually([&] { return f.client->stats().requests_replied == 3; }));
    // Counted once the socket took them: the server may have them all before the client's I/O
    // thread counts the last batch.
    EXPECT_TRUE(eventually([&] { return f.client->stats().sends_out == 10; }));
    auto cs_ = f.client->stats();
    EXPECT_EQ(cs_.requests_out, 3u);
    EXPECT_EQ(cs_.requests_replied, 3u);
    EXPECT_EQ(cs_.sends_out, 10u);
    EXPECT_EQ(f.server->stats().requests_served, 3u);
    EXPECT_EQ(f.server->stats().sends_served, 10u);
    EXPECT_GT(cs_.bytes_out, 0u);
    EXPECT_GE(cs_.frames_out.request, 3u);
    EXPECT_GE(cs_.frames_in.reply, 3u);
}

// docs/nodes.md: a local object whose name matches exactly comes before the node of that name.
TEST(node, a_local_object_named_like_a_remote_one_comes_first_and_the_peer_gets_it_once_it_is_gone) {
    pair_fixture f("inproc://node-test-local-first");
    ASSERT_TRUE(f.up());
    session cs(*f.client_env, session_options{.name = "local-calc"});
    std::atomic<int> local_calls{0};
    auto local = register_named(cs, "server/calc", [&](incoming& in) {
        local_calls.fetch_add(1);
        in.reply<add_rep>(add_rep{-1});
    });
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, -1);
    EXPECT_EQ(local_calls.load(), 1);
    EXPECT_EQ(f.client->stats().requests_out, 0u);
    local.shutdown();
    auto r2 = request<add_rep>(*f.client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r2), request_state::replied) << r2.reason();
    EXPECT_EQ(r2.reply().sum, 5);
    EXPECT_EQ(local_calls.load(), 1);
    EXPECT_EQ(f.client->stats().requests_out, 1u);
}

INSTANTIATE_TEST_SUITE_P(transports, node_over, ::testing::Values("tcp://127.0.0.1:0", "inproc"));

TEST(node, each_reject_reason_reaches_the_requester_with_the_remote_reason) {
    auto so = fast();
    so.max_served_per_peer = 1;
    pair_fixture f("tcp://127.0.0.1:0", std::move(so));
    // A held request (moved out of its handler) keeps one request of the client served.
    auto hidden = register_named(*f.server_s, "hidden", [](incoming& in) { in.reply<add_rep>(add_rep{0}); });
    f.server->export_objects("missing*");
    ASSERT_TRUE(f.up());

    auto not_exported = request<add_rep>(*f.client_env, "server/hidden", add_req{}, {.timeout = 10s});
    EXPECT_EQ(settle(not_exported), request_state::rejected);
    EXPECT_NE(not_exported.reason().find("no such object"), std::string::npos) << not_exported.reason();
    EXPECT_NE(not_exported.reason().find("does not export 'hidden'"), std::string::npos) << not_exported.reason();

    auto missing = request<add_rep>(*f.client_env, "server/missing-one", add_req{}, {.timeout = 10s});
    EXPECT_EQ(settle(missing), request_state::rejected);
    EXPECT_NE(missing.reason().find("no such object"), std::string::npos) << missing.reason();

    auto refused = request<add_rep>(*f.client_env, "server/calc", add_req{-1, 0}, {.timeout = 10s});
    EXPECT_EQ(settle(refused), request_state::rejected);
    EXPECT_NE(refused.reason().find("handler rejected"), std::string::npos) << refused.reason();
    EXPECT_NE(refused.reason().find("negative numbers are not served"), std::string::npos) << refused.reason();

    auto unknown = request<add_rep>(*f.client_env, "server/calc", client_only{1}, {.timeout = 10s});
    EXPECT_EQ(settle(unknown), request_state::rejected);
    EXPECT_NE(unknown.reason().find("does not know the type 'test.client_only'"), std::string::npos) << unknown.reason();

    auto first = request<add_rep>(*f.client_env, "server/hold", add_req{}, {.timeout = 10s});
    ASSERT_TRUE(eventually([&] { return f.held_count() > 0; })) << "the held request never arrived";
    auto over = request<add_rep>(*f.client_env, "server/calc", add_req{1, 2}, {.timeout = 10s});
    EXPECT_EQ(settle(over), request_state::rejected);
    EXPECT_NE(over.reason().find("peer limits"), std::string::npos) << over.reason();
    {
        std::lock_guard g(f.held_m);
        f.held.front().reply<add_rep>(add_rep{7});
    }
    EXPECT_EQ(settle(first), request_state::replied);
    EXPECT_EQ(first.reply().sum, 7);
    // A reply of the wrong type is refused on the requester's side, saying both types.
    auto wrong = request<note>(*f.client_env, "server/calc", add_req{1, 2}, {.timeout = 10s});
    EXPECT_EQ(settle(wrong), request_state::rejected);
    EXPECT_NE(wrong.reason().find("where a"), std::string::npos) << wrong.reason();

    EXPECT_TRUE(eventually([&] { return f.client->stats().requests_rejected == 6; }));
    auto s = f.client->stats();
    EXPECT_EQ(s.rejected_no_such_object, 2u);
    EXPECT_EQ(s.rejected_handler, 1u);
    EXPECT_EQ(s.rejected_undecodable_type, 2u);
    EXPECT_EQ(s.rejected_peer_limits, 1u);
    // A one-way message of a type the peer does not know is the sender's error, said at once.
    EXPECT_THROW(send_to(*f.client_env, "server/sink", client_only{1}), usage_error);
}

TEST(node, a_request_that_times_out_is_abandoned_and_its_late_reply_counted_orphaned) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    auto r = request<add_rep>(*f.client_env, "server/hold", add_req{}, {.timeout = 100ms});
    EXPECT_EQ(settle(r), request_state::abandoned);
    EXPECT_NE(r.reason().find("timed out"), std::string::npos) << r.reason();
    ASSERT_TRUE(eventually([&] { return f.held_count() > 0; })) << "the request never arrived";
    {
        std::lock_guard g(f.held_m);
        // The server's own copy runs longer than the requester's timeout: it is still open.
        ASSERT_FALSE(f.held.front().answered());
        f.held.front().reply<add_rep>(add_rep{1});
        f.held.clear();
    }
    // The late reply finds the request final.
    EXPECT_TRUE(eventually([&] { return f.client->stats().replies_orphaned == 1; }));
    EXPECT_EQ(named_stats_of(*f.client_env).replies_orphaned, 1u);
}

TEST(node, a_peer_destroyed_mid_stream_abandons_every_request_in_flight_then_reconnects) {
    auto f = std::make_unique<pair_fixture>("tcp://127.0.0.1:0");
    event_log events;
    session cs(*f->client_env);
    auto sub = f->client->subscribe_peers(cs, [&](const net::peer_event& e) { events.add(e); });
    ASSERT_TRUE(f->up());
    std::vector<outgoing<add_rep>> flying;
    for (int i = 0; i < 20; ++i) flying.push_back(request<add_rep>(*f->client_env, "server/hold", add_req{i, 0}));
    ASSERT_TRUE(eventually([&] { return f->held_count() == 20; })) << "the requests never all arrived";
    // Marked transmitted once the socket took them: the server may hold them all just before.
    for (auto& r : flying) EXPECT_TRUE(eventually([&] { return r.state() == request_state::transmitted; }));
    const auto killed = std::chrono::steady_clock::now();
    // The server node goes as a killed process would: no BYE, only silence.
    net::internal_node::test_access::stop_without_bye(*f->server);
    f->server.reset();
    for (auto& r : flying) {
        EXPECT_EQ(settle(r), request_state::abandoned);
        EXPECT_NE(r.reason().find("peer 'server' lost"), std::string::npos) << r.reason();
    }
    const auto detected = std::chrono::steady_clock::now() - killed;
    EXPECT_LT(detected, 5s) << "detection took " << std::chrono::duration_cast<std::chrono::milliseconds>(detected).count() << " ms";
    EXPECT_TRUE(events.wait(net::peer_state::down, "server"));
    EXPECT_TRUE(eventually([&] { return f->client->stats().requests_abandoned == 20; }));

    // A request now fails fast; one that may wait for the peer waits, bounded by its timeout.
    auto fast_fail = request<add_rep>(*f->client_env, "server/calc", add_req{1, 1});
    EXPECT_EQ(settle(fast_fail), request_state::abandoned);
    EXPECT_NE(fast_fail.reason().find("is down"), std::string::npos) << fast_fail.reason();
    auto waiting = request<add_rep>(*f->client_env, "server/calc", add_req{20, 1}, {.timeout = 20s, .wait_for_peer = true});
    EXPECT_THROW(send_to(*f->client_env, "server/sink", note{"x"}), net::peer_unavailable_error);

    // The same node name comes back on the same endpoint: redialled, HELLO, peer_up, replies.
    {
        std::lock_guard g(f->held_m);
        f->held.clear();
    }
    // The first peer_up may have come before the subscription (the fixture dials first): the
    // one awaited is the next after those seen so far.
    const std::size_t ups = events.seen(net::peer_state::up, "server");
    net::node again(*f->server_env, "server", fast());
    again.export_all();
    ASSERT_EQ(listen_again(again, f->endpoint), f->endpoint);
    const bool back = events.wait(net::peer_state::up, "server", ups + 1, 30s);
    EXPECT_TRUE(back);
    if (!back) {
        {
            std::lock_guard g(f->client_log.m);
            for (auto& l : f->client_log.lines) std::fprintf(stderr, "client log: %s\n", l.c_str());
        }
        {
            std::lock_guard g(f->server_log.m);
            for (auto& l : f->server_log.lines) std::fprintf(stderr, "server log: %s\n", l.c_str());
        }
        for (auto [who, st] : {std::pair{"client", f->client->stats()}, std::pair{"server", again.stats()}})
            std::fprintf(stderr, "%s: hello in %llu out %llu, refused %llu, from unknown %llu, handshake failed %llu/%llu/%llu/%llu\n",
                         who, (unsigned long long)st.frames_in.hello, (unsigned long long)st.frames_out.hello,
                         (unsigned long long)st.hello_refused, (unsigned long long)st.frames_from_unknown,
                         (unsigned long long)st.handshake_failed_mechanism, (unsigned long long)st.handshake_failed_protocol,
                         (unsigned long long)st.handshake_failed_auth, (unsigned long long)st.handshake_failed_other);
        for (auto& pi : f->client->peers())
            std::fprintf(stderr, "client's peer '%s': %s, events up %zu down %zu, client peers_up %llu\n", pi.name.c_str(),
                         net::to_string(pi.state), events.seen(net::peer_state::up, "server"),
                         events.seen(net::peer_state::down, "server"), (unsigned long long)f->client->stats().peers_up);
    }
    EXPECT_EQ(settle(waiting), request_state::replied) << waiting.reason();
    EXPECT_EQ(waiting.reply().sum, 21);
    auto r = request<add_rep>(*f->client_env, "server/calc", add_req{3, 4}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, 7);
}

// Detection that takes half a minute: what a peer learns within seconds here, it learned from
// a BYE, not from the silence.
net::node_options slow_detection(bool with_client_only = false) {
    net::node_options o = fast(with_client_only);
    o.acceptable_heartbeat_pause = 30s;
    o.down_after = 5s;
    return o;
}

TEST(node, a_node_that_stops_says_bye_and_its_peer_sees_it_down_at_once_with_requests_abandoned) {
    auto f = std::make_unique<pair_fixture>("tcp://127.0.0.1:0", slow_detection(), slow_detection(true));
    event_log events;
    session cs(*f->client_env);
    auto sub = f->client->subscribe_peers(cs, [&](const net::peer_event& e) { events.add(e); });
    ASSERT_TRUE(f->up());
    std::vector<outgoing<add_rep>> flying;
    for (int i = 0; i < 5; ++i)
        flying.push_back(request<add_rep>(*f->client_env, "server/hold", add_req{i, 0}, {.timeout = 60s}));
    ASSERT_TRUE(eventually([&] { return f->held_count() == 5; })) << "the requests never all arrived";
    const auto stopped = std::chrono::steady_clock::now();
    f->server->stop();
    for (auto& r : flying) {
        EXPECT_EQ(settle(r, 20s), request_state::abandoned);
        EXPECT_NE(r.reason().find("peer 'server' stopped"), std::string::npos) << r.reason();
    }
    const auto took = std::chrono::steady_clock::now() - stopped;
    EXPECT_LT(took, 10s) << "took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                         << " ms: the failure detector's time, not a BYE's";
    ASSERT_TRUE(events.wait(net::peer_state::down, "server", 1, 10s));
    // Events come in order on the session: every peer_up before the down has been seen now (the
    // first may have come before the subscription), so the one awaited below is the next.
    const std::size_t ups = events.seen(net::peer_state::up, "server");
    EXPECT_EQ(events.seen(net::peer_state::suspect, "server"), 0u) << "down at once, never suspected";
    EXPECT_EQ(f->server->stats().frames_out.bye, 1u);
    EXPECT_TRUE(eventually([&] {
        const auto s = f->client->stats();
        return s.frames_in.bye == 1 && s.peers_left == 1 && s.peers_down == 1 && s.requests_abandoned == 5;
    })) << "bye in " << f->client->stats().frames_in.bye << ", left " << f->client->stats().peers_left;
    EXPECT_TRUE(f->client_log.has("peer 'server' is down (it said BYE: stopped)"));
    auto fast_fail = request<add_rep>(*f->client_env, "server/calc", add_req{1, 1});
    EXPECT_EQ(settle(fast_fail), request_state::abandoned);
    EXPECT_NE(fast_fail.reason().find("is down"), std::string::npos) << fast_fail.reason();

    // It is dialled again: a node of that name back on the endpoint is up and serving.
    {
        std::lock_guard g(f->held_m);
        f->held.clear();
    }
    f->server.reset();
    net::node again(*f->server_env, "server", slow_detection());
    again.export_all();
    ASSERT_EQ(listen_again(again, f->endpoint), f->endpoint);
    ASSERT_TRUE(events.wait(net::peer_state::up, "server", ups + 1, 30s));
    auto r = request<add_rep>(*f->client_env, "server/calc", add_req{3, 4}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, 7);
}

TEST(node, a_node_that_dialled_and_stops_is_seen_down_at_once_by_the_node_it_dialled) {
    pair_fixture f("tcp://127.0.0.1:0", slow_detection(), slow_detection(true));
    event_log events;
    session ss(*f.server_env);
    auto sub = f.server->subscribe_peers(ss, [&](const net::peer_event& e) { events.add(e); });
    ASSERT_TRUE(f.up());
    const auto stopped = std::chrono::steady_clock::now();
    f.client->stop();
    ASSERT_TRUE(events.wait(net::peer_state::down, "client", 1, 10s));
    EXPECT_LT(std::chrono::steady_clock::now() - stopped, 10s);
    EXPECT_EQ(events.seen(net::peer_state::suspect, "client"), 0u);
    EXPECT_EQ(f.server->stats().peers_left, 1u);
    EXPECT_EQ(f.client->stats().frames_out.bye, 1u);
}

TEST(node, a_bye_goes_only_to_peers_whose_hello_said_protocol_2) {
    // Slow detection: the raw peers below never send a heartbeat, and must still be up when
    // the node stops.
    pair_fixture f("tcp://127.0.0.1:0", slow_detection(), slow_detection(true));
    ASSERT_TRUE(f.up());
    auto hello = [](std::uint8_t version, const char* name) {
        internal::frame h;
        h.kind = internal::frame_kind::hello;
        h.node = name;
        h.protocol_version = version;
        net::byte_buffer b;
        internal::frame_writer(b).write(h);
        return b;
    };
    auto byes_seen = [](test::raw_dealer& d) {
        int byes = 0;
        while (auto m = d.receive(300ms))
            if (m->size() >= internal::frame_header_bytes &&
                static_cast<std::uint8_t>((*m)[3]) == static_cast<std::uint8_t>(internal::frame_kind::bye)) {
                ++byes;
                internal::frame_decoder d2;
                EXPECT_EQ(d2.decode(std::as_bytes(std::span<const char>(m->data(), m->size()))),
                          internal::frame_error::none);
                if (!d2.frames().empty()) {
                    EXPECT_EQ(d2.frames()[0].text, "stopped");
                }
            }
        return byes;
    };
    test::raw_dealer old_peer(f.endpoint), new_peer(f.endpoint);
    old_peer.send(hello(1, "old-peer"));
    new_peer.send(hello(2, "new-peer"));
    ASSERT_TRUE(f.server->wait_for_peer("old-peer", 10s));
    ASSERT_TRUE(f.server->wait_for_peer("new-peer", 10s));
    f.server->stop();
    EXPECT_EQ(byes_seen(old_peer), 0) << "a protocol 1 peer was sent a BYE";
    EXPECT_EQ(byes_seen(new_peer), 1);
    EXPECT_EQ(f.server->stats().frames_out.bye, 2u);  // the new peer and the client node
}

TEST(node, an_exported_object_unregistered_while_requests_fly_is_not_called_after_shutdown_returns) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::atomic<bool> shut{false};
    std::atomic<int> after{0}, handled{0};
    auto obj = register_named(*f.server_s, "busy", [&](incoming& in) {
        if (shut.load()) after.fetch_add(1);
        handled.fetch_add(1);
        in.reply<add_rep>(add_rep{1});
    });
    f.server->export_objects("busy");
    ASSERT_TRUE(f.up());
    std::atomic<bool> go{true};
    std::vector<outgoing<add_rep>> sent;
    std::mutex sent_m;
    std::thread fire([&] {
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (go.load() && std::chrono::steady_clock::now() < until) {
            auto r = request<add_rep>(*f.client_env, "server/busy", add_req{}, {.timeout = 10s});
            std::lock_guard g(sent_m);
            sent.push_back(std::move(r));
            if (sent.size() > 5000) break;
            std::this_thread::sleep_for(100us);
        }
    });
    ASSERT_TRUE(eventually([&] { return handled.load() >= 20; }));
    obj.shutdown();
    shut.store(true);
    std::this_thread::sleep_for(50ms);  // requests keep flying at the unregistered name
    go.store(false);
    fire.join();
    EXPECT_EQ(after.load(), 0);
    auto later = request<add_rep>(*f.client_env, "server/busy", add_req{}, {.timeout = 10s});
    EXPECT_EQ(settle(later), request_state::rejected);
    EXPECT_NE(later.reason().find("no such object"), std::string::npos) << later.reason();
    std::lock_guard g(sent_m);
    for (auto& r : sent) {
        const auto st = settle(r);
        EXPECT_TRUE(st == request_state::replied || st == request_state::rejected || st == request_state::abandoned);
    }
}

TEST(node, malformed_frames_from_a_raw_socket_are_rejected_counted_logged_and_the_node_carries_on) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    test::raw_dealer dealer(f.endpoint);
    void* raw = dealer.socket();
    const char garbage[] = "not a frame at all";
    zmq_send(raw, garbage, sizeof garbage, 0);
    const unsigned char truncated[] = {'m', 'r', 1, 3, 0, 0, 0, 0, 200, 0, 0, 0, 1, 2};
    zmq_send(raw, truncated, sizeof truncated, 0);
    // A well-formed HEARTBEAT from a connection that never said HELLO.
    {
        net::byte_buffer b;
        internal::frame hb;
        hb.kind = internal::frame_kind::heartbeat;
        hb.sequence = 1;
        internal::frame_writer(b).write(hb);
        zmq_send(raw, b.data(), b.size(), 0);
    }
    // A HELLO of a protocol version it does not speak, and one under the server's own name.
    for (auto [who, version] : {std::pair<const char*, int>{"raw", 0}, {"server", 1}}) {
        net::byte_buffer b;
        internal::frame h;
        h.kind = internal::frame_kind::hello;
        h.node = who;
        h.protocol_version = static_cast<std::uint8_t>(version);
        internal::frame_writer(b).write(h);
        zmq_send(raw, b.data(), b.size(), 0);
    }
    EXPECT_TRUE(eventually([&] {
        auto s = f.server->stats();
        return s.frames_rejected >= 2 && s.hello_refused >= 2 && s.frames_from_unknown >= 1;
    }));
    auto s = f.server->stats();
    EXPECT_EQ(s.frames_rejected, 2u);
    EXPECT_EQ(s.rejected_bad_magic, 1u);
    EXPECT_EQ(s.rejected_truncated, 1u);
    EXPECT_EQ(s.frames_from_unknown, 1u);
    EXPECT_EQ(s.hello_refused, 2u);
    EXPECT_TRUE(f.server_log.has("rejected a message from a connection from 127.0.0.1")) << "no log line";
    EXPECT_TRUE(f.server_log.has("refused the HELLO of 'raw' from 127.0.0.1"));
    // A peer that said HELLO and then asks for a name no object may have: refused and answered,
    // even by a node that exports everything.
    f.server->export_all();
    {
        net::byte_buffer hello, req;
        internal::frame h;
        h.kind = internal::frame_kind::hello;
        h.node = "rawpeer";
        h.protocol_version = 1;
        internal::frame_writer(hello).write(h);
        internal::frame q;
        q.kind = internal::frame_kind::request;
        q.request_id = 77;
        q.target = "no good";
        internal::frame_writer(req).write(q, *types(), add_req{1, 2});
        zmq_send(raw, hello.data(), hello.size(), 0);
        zmq_send(raw, req.data(), req.size(), 0);
        bool got_reject = false;
        internal::frame_decoder dec;
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (!got_reject && std::chrono::steady_clock::now() < until) {
            zmq_pollitem_t item{raw, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&item, 1, 100) <= 0) continue;
            zmq_msg_t m;
            zmq_msg_init(&m);
            ASSERT_GE(zmq_msg_recv(&m, raw, 0), 0);
            if (dec.decode({static_cast<const std::byte*>(zmq_msg_data(&m)), zmq_msg_size(&m)}) ==
                internal::frame_error::none)
                for (auto& fr : dec.frames())
                    if (fr.kind == internal::frame_kind::reject && fr.request_id == 77) {
                        got_reject = true;
                        EXPECT_EQ(fr.reason, internal::reject_reason::no_such_object);
                    }
            zmq_msg_close(&m);
        }
        EXPECT_TRUE(got_reject) << "no REJECT for a request to an invalid name";
    }
    // The node and its peer carry on.
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{5, 5}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, 10);
}

// A raw socket that floods the server with `n` messages that do not decode, and the lines of
// the server's log that say a message was rejected, once every message was counted.
std::size_t flood_with_garbage(pair_fixture& f, int n) {
    test::raw_dealer dealer(f.endpoint);
    const char garbage[] = "not a frame at all";
    for (int i = 0; i < n; ++i) dealer.send(garbage, sizeof garbage);
    auto written = [&] {
        std::lock_guard g(f.server_log.m);
        return static_cast<std::size_t>(std::count_if(f.server_log.lines.begin(), f.server_log.lines.end(), [](auto& l) {
            return l.find("rejected a message from") != std::string::npos && l.find("more log lines") == std::string::npos;
        }));
    };
    // The count is bumped before the line is written or suppressed: wait for both.
    EXPECT_TRUE(eventually([&] {
        const auto s = f.server->stats();
        return s.frames_rejected == static_cast<std::uint64_t>(n) &&
               written() + s.log_lines_suppressed == static_cast<std::uint64_t>(n);
    })) << f.server->stats().frames_rejected << " rejected, " << written() << " written";
    return written();
}

TEST(node, a_flood_of_bad_messages_is_logged_a_few_lines_a_second_with_the_rest_counted_and_summarised) {
    net::node_options o = fast();
    o.log_lines_per_second = 5;
    pair_fixture f("tcp://127.0.0.1:0", o);
    ASSERT_TRUE(f.up());
    const std::size_t written = flood_with_garbage(f, 200);
    // Every message is counted; only a few lines a second are written (200 cross loopback in
    // far less than a second, but a loaded machine may spread them over a few windows).
    const std::uint64_t suppressed = f.server->stats().log_lines_suppressed;
    EXPECT_GE(written, 5u);
    EXPECT_LE(written, 25u) << "the log was not limited";
    EXPECT_EQ(written + suppressed, 200u);
    // Once a window is over, what it suppressed is said in summary lines: together, all of it.
    auto summarised = [&] {
        std::lock_guard g(f.server_log.m);
        std::uint64_t sum = 0;
        for (auto& l : f.server_log.lines)
            if (auto at = l.find(" more log lines of rejected messages were not written"); at != std::string::npos) {
                EXPECT_NE(l.find("the last: rejected a message from"), std::string::npos) << l;
                sum += std::stoull(l.substr(l.rfind(' ', at - 1) + 1));
            }
        return sum;
    };
    EXPECT_TRUE(eventually([&] { return summarised() == suppressed; }, 5s)) << summarised() << " of " << suppressed;
    // The node carries on: a request is served.
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
}

net::peer_state state_of(const net::node& n, const std::string& name, bool& known) {
    for (auto& p : n.peers())
        if (p.name == name) {
            known = true;
            return p.state;
        }
    known = false;
    return net::peer_state::down;
}

TEST(node, a_peer_that_dialled_in_and_stays_down_is_forgotten_once_no_request_waits_for_it) {
    net::node_options so = fast();
    so.forget_down_peers_after = 300ms;
    net::node_options co = fast(true);
    co.forget_down_peers_after = 300ms;
    pair_fixture f("tcp://127.0.0.1:0", so, co);
    ASSERT_TRUE(f.up());
    // The client goes away: the server sees it down.
    f.client.reset();
    bool known = false;
    ASSERT_TRUE(eventually([&] { return state_of(*f.server, "client", known) == net::peer_state::down && known; }));
    // A request that waits for it keeps it known until it is final (its timeout).
    auto waiting = request<add_rep>(*f.server_env, "client/calc", add_req{1, 2}, {.timeout = 1500ms, .wait_for_peer = true});
    std::this_thread::sleep_for(400ms);  // past forget_down_peers_after, while the request waits
    state_of(*f.server, "client", known);
    EXPECT_TRUE(known) << "forgotten while a request waited for it";
    EXPECT_EQ(settle(waiting), request_state::abandoned);
    // Then it is forgotten: out of peers(), counted, and its name no longer a peer's.
    EXPECT_TRUE(eventually([&] {
        state_of(*f.server, "client", known);
        return !known;
    }, 5s)) << "still listed";
    EXPECT_EQ(f.server->stats().peers_forgotten, 1u);
    auto after = request<add_rep>(*f.server_env, "client/calc", add_req{1, 2}, {.timeout = 2s});
    EXPECT_EQ(settle(after), request_state::rejected) << after.reason();
    EXPECT_NE(after.reason().find("no object named 'client/calc'"), std::string::npos) << after.reason();
}

TEST(node, a_peer_this_node_dials_is_never_forgotten_while_it_is_down) {
    net::node_options so = fast();
    net::node_options co = fast(true);
    co.forget_down_peers_after = 100ms;
    pair_fixture f("tcp://127.0.0.1:0", so, co);
    ASSERT_TRUE(f.up());
    f.server.reset();  // the client dialled it, and keeps dialling
    bool known = false;
    ASSERT_TRUE(eventually([&] { return state_of(*f.client, "server", known) == net::peer_state::down && known; }));
    std::this_thread::sleep_for(500ms);  // well past forget_down_peers_after
    EXPECT_EQ(state_of(*f.client, "server", known), net::peer_state::down);
    EXPECT_TRUE(known) << "a peer of a connect() was forgotten";
    EXPECT_EQ(f.client->stats().peers_forgotten, 0u);
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{1, 2}, {.timeout = 2s});
    EXPECT_EQ(settle(r), request_state::abandoned);
    EXPECT_NE(r.reason().find("is down"), std::string::npos) << r.reason();
}

TEST(node, with_no_log_limit_every_bad_message_is_logged) {
    net::node_options o = fast();
    o.log_lines_per_second = 0;
    pair_fixture f("tcp://127.0.0.1:0", o);
    ASSERT_TRUE(f.up());
    EXPECT_EQ(flood_with_garbage(f, 50), 50u);
    EXPECT_EQ(f.server->stats().log_lines_suppressed, 0u);
}

TEST(node, a_second_node_under_a_name_that_is_up_is_refused) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    environment other_env(environment_options{.name = "impostor-env"});
    net::node impostor(other_env, "client", fast());
    impostor.connect(f.endpoint);
    EXPECT_TRUE(eventually([&] { return f.server->stats().hello_refused >= 1; }));
    // The counter is bumped before the line is logged: wait (bounded) for the line too.
    EXPECT_TRUE(eventually([&] { return f.server_log.has("refused the HELLO of 'client'"); }));
    EXPECT_FALSE(impostor.wait_for_peer("server", 0ms));
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{1, 2}, {.timeout = 10s});
    EXPECT_EQ(settle(r), request_state::replied) << r.reason();
}

// A one-way message is decoded on the thread of the object it reaches, just before its handler
// runs (what decoding allocates is freed by the same thread; the node's I/O thread only copies
// the bytes). One that does not decode there is counted and logged with the peer's name, never
// reaches the handler, and the messages after it do.
TEST(node, a_one_way_message_is_decoded_on_its_objects_thread_and_one_that_does_not_decode_is_counted_and_logged) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::mutex m;
    std::vector<std::int32_t> seen;
    std::thread::id handler_thread;
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        std::lock_guard g(m);
        seen.push_back(in.as<traced>().value);
        handler_thread = std::this_thread::get_id();
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    {
        std::lock_guard g(decode_threads_m);
        decode_threads.clear();
    }
    send_to(*f.client_env, "server/traced", traced{1});
    send_to(*f.client_env, "server/traced", traced{-1});
    send_to(*f.client_env, "server/traced", traced{2});
    ASSERT_TRUE(eventually([&] {
        std::lock_guard g(m);
        return seen.size() == 2;
    }));
    ASSERT_TRUE(eventually([&] { return f.server->stats().rejected_undecodable_payload == 1; }));
    const auto s = f.server->stats();
    EXPECT_EQ(s.sends_served, 3u);
    EXPECT_EQ(s.served_refused, 1u);
    EXPECT_TRUE(eventually([&] {
        return f.server_log.has("one-way message from peer 'client' to 'traced': undecodable payload: a negative value");
    }));
    std::lock_guard g(m);
    EXPECT_EQ(seen, (std::vector<std::int32_t>{1, 2}));
    std::lock_guard g2(decode_threads_m);
    ASSERT_EQ(decode_threads.size(), 3u);
    for (const auto& id : decode_threads) EXPECT_EQ(id, handler_thread) << "decoded on another thread than the handler's";
}

// A one-way message still queued for its object when the node that received it is destroyed
// is decoded and handled after: what it needs to decode (its type's entry) outlives the node,
// and one that does not decode is still told, in the environment's log.
TEST(node, a_one_way_message_still_queued_when_its_node_is_destroyed_is_decoded_and_handled_after) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::atomic<bool> released{false};
    std::mutex m;
    std::vector<std::int32_t> seen;
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        // Holds the session (at most 10 s, should the test fail first): the rest queue.
        if (in.as<traced>().value == 1) eventually([&] { return released.load(); });
        std::lock_guard g(m);
        seen.push_back(in.as<traced>().value);
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    send_to(*f.client_env, "server/traced", traced{1});
    send_to(*f.client_env, "server/traced", traced{2});
    send_to(*f.client_env, "server/traced", traced{-1});
    send_to(*f.client_env, "server/traced", traced{3});
    ASSERT_TRUE(eventually([&] { return f.server->stats().sends_served == 4; }));
    f.server.reset();  // its options, and the type registry they held, go with it
    released = true;
    ASSERT_TRUE(eventually([&] {
        std::lock_guard g(m);
        return seen.size() == 3;
    }));
    {
        std::lock_guard g(m);
        EXPECT_EQ(seen, (std::vector<std::int32_t>{1, 2, 3}));
    }
    EXPECT_TRUE(eventually([&] {
        return f.server_log.has("node 'server': one-way message from 'client/") &&
               f.server_log.has("to 'traced': undecodable payload: a negative value");
    }));
}

// ---- one-way messages that arrive together: one delivery per run, each message its own ----

namespace {

// Every message an environment counted sent has one outcome. A message is counted delivered
// once its handler returned, a moment after shutdown() (which waits for the handler) may have
// returned: the books balance once those moments are over, so they are read until they do
// (at most 10 s), then compared.
void expect_books_balance(environment& e) {
    auto outcomes = [](const auto& st) {
        return st.messages_delivered + st.messages_lost + st.messages_ignored + st.messages_discarded +
               st.messages_cancelled + st.messages_dropped;
    };
    (void)eventually([&] {
        const auto st = e.stats();
        return st.messages_sent == outcomes(st);
    });
    const auto st = e.stats();
    EXPECT_EQ(st.messages_sent, outcomes(st)) << e.name();
}

// Sends traced{v} for each of `values` to "server/<target>" while the client's sends are paused,
// so that they leave together, in one BATCH.
void send_together(pair_fixture& f, const std::string& target, const std::vector<std::int32_t>& values) {
    net::internal_node::test_access::pause_sends(*f.client, true);
    for (std::int32_t v : values) send_to(*f.client_env, "server/" + target, traced{v});
    net::internal_node::test_access::pause_sends(*f.client, false);
}

std::vector<std::int32_t> one_to(std::int32_t n) {
    std::vector<std::int32_t> v;
    for (std::int32_t i = 1; i <= n; ++i) v.push_back(i);
    return v;
}

}  // namespace

TEST(node, one_way_messages_that_arrive_together_reach_their_object_one_by_one_in_order_each_with_its_own_id) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::mutex m;
    std::vector<std::int32_t> seen;
    std::vector<std::uint64_t> ids;
    std::vector<std::string> sources;
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        std::lock_guard g(m);
        seen.push_back(in.as<traced>().value);
        ids.push_back(in.header().id);
        sources.push_back(in.header().source);
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    const auto before = f.server_env->stats();
    const std::uint64_t batches_before = f.server->stats().frames_in.batch;
    std::vector<std::int32_t> values = one_to(100), expected;
    values[49] = -1;  // does not decode: refused alone, the others delivered
    for (std::int32_t v : values)
        if (v > 0) expected.push_back(v);
    send_together(f, "traced", values);
    ASSERT_TRUE(eventually([&] {
        std::lock_guard g(m);
        return seen.size() == expected.size();
    }));
    ASSERT_TRUE(eventually([&] { return f.server->stats().rejected_undecodable_payload == 1; }));
    const auto s = f.server->stats();
    EXPECT_EQ(s.frames_in.batch, batches_before + 1) << "the test needs them in one BATCH";
    EXPECT_EQ(s.sends_served, 100u);
    EXPECT_EQ(s.served_refused, 1u);
    {
        std::lock_guard g(m);
        EXPECT_EQ(seen, expected);
        for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_LT(ids[i - 1], ids[i]) << "each message has its own id";
        for (const std::string& src : sources) EXPECT_EQ(src, sources.front());
        EXPECT_EQ(sources.front().rfind("client/", 0), 0u) << sources.front();
    }
    // The environment counts each message, not each run.
    EXPECT_TRUE(eventually([&] { return f.server_env->stats().messages_delivered - before.messages_delivered >= 100; }))
        << f.server_env->stats().messages_delivered - before.messages_delivered;
    expect_books_balance(*f.server_env);
}

TEST(node, an_object_its_own_handler_shuts_down_gets_none_of_the_messages_that_arrived_together_with_that_one) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::mutex m;
    std::vector<std::int32_t> seen;
    named_handle t;
    t = register_named(*f.server_s, "traced", [&](incoming& in) {
        const std::int32_t v = in.as<traced>().value;
        {
            std::lock_guard g(m);
            seen.push_back(v);
        }
        if (v == 3) t.shutdown();
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    const auto before = f.server_env->stats();
    send_together(f, "traced", one_to(10));
    ASSERT_TRUE(eventually([&] { return f.server_env->stats().messages_lost - before.messages_lost == 7; }))
        << f.server_env->stats().messages_lost - before.messages_lost;
    {
        std::lock_guard g(m);
        EXPECT_EQ(seen, (std::vector<std::int32_t>{1, 2, 3}));
    }
    expect_books_balance(*f.server_env);
}

TEST(node, an_object_shut_down_from_another_thread_while_it_handles_one_of_a_batch_gets_none_of_the_rest) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::mutex m;
    std::vector<std::int32_t> seen;
    std::atomic<bool> in_first{false}, go{false};
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        const std::int32_t v = in.as<traced>().value;
        if (v == 1) {
            in_first = true;
            eventually([&] { return go.load(); });  // at most 10 s, should the test fail first
        }
        std::lock_guard g(m);
        seen.push_back(v);
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    const auto before = f.server_env->stats();
    send_together(f, "traced", one_to(10));
    ASSERT_TRUE(eventually([&] { return in_first.load(); }));
    std::thread releaser([&] {
        std::this_thread::sleep_for(100ms);  // shutdown() below is waiting by then
        go = true;
    });
    t.shutdown();  // returns once the handler of 1 did: none of the rest runs after
    releaser.join();
    {
        std::lock_guard g(m);
        EXPECT_EQ(seen, (std::vector<std::int32_t>{1}));
    }
    EXPECT_TRUE(eventually([&] { return f.server_env->stats().messages_lost - before.messages_lost == 9; }))
        << f.server_env->stats().messages_lost - before.messages_lost;
    expect_books_balance(*f.server_env);
}

// A run points into the network message it arrived in: that message outlives the node, so a
// run still being handled when its node is destroyed is handled to its end (AddressSanitizer
// would catch a message freed with the node).
TEST(node, messages_that_arrived_together_are_all_handled_when_their_node_is_destroyed_meanwhile) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::atomic<bool> in_first{false}, released{false};
    std::mutex m;
    std::vector<std::int32_t> seen;
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        const std::int32_t v = in.as<traced>().value;
        if (v == 1) {
            in_first = true;
            eventually([&] { return released.load(); });  // at most 10 s, should the test fail first
        }
        std::lock_guard g(m);
        seen.push_back(v);
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    send_together(f, "traced", one_to(20));
    ASSERT_TRUE(eventually([&] { return in_first.load(); }));
    f.server.reset();
    f.client.reset();
    released = true;
    ASSERT_TRUE(eventually([&] {
        std::lock_guard g(m);
        return seen.size() == 20;
    }));
    std::lock_guard g(m);
    EXPECT_EQ(seen, one_to(20));
}

TEST(node, a_handler_that_throws_on_one_of_a_batch_is_reported_and_the_rest_are_delivered) {
    pair_fixture f("tcp://127.0.0.1:0");
    std::mutex m;
    std::vector<std::int32_t> seen;
    auto t = register_named(*f.server_s, "traced", [&](incoming& in) {
        const std::int32_t v = in.as<traced>().value;
        if (v == 3) throw std::runtime_error("three is refused by the test");
        std::lock_guard g(m);
        seen.push_back(v);
    });
    f.server->export_objects("traced");
    ASSERT_TRUE(f.up());
    const auto before = f.server_env->stats();
    send_together(f, "traced", one_to(6));
    ASSERT_TRUE(eventually([&] {
        std::lock_guard g(m);
        return seen.size() == 5;
    }));
    {
        std::lock_guard g(m);
        EXPECT_EQ(seen, (std::vector<std::int32_t>{1, 2, 4, 5, 6}));
    }
    EXPECT_TRUE(eventually([&] { return f.server_env->stats().handler_exceptions - before.handler_exceptions == 1; }));
    EXPECT_TRUE(f.server_log.has("three is refused by the test"));
    EXPECT_TRUE(eventually([&] { return f.server_env->stats().messages_delivered - before.messages_delivered >= 6; }));
    expect_books_balance(*f.server_env);
}

TEST(node, messages_that_arrive_together_for_an_exported_name_no_object_has_are_each_counted_refused) {
    pair_fixture f("tcp://127.0.0.1:0");
    f.server->export_objects("ghost");
    ASSERT_TRUE(f.up());
    const auto before = f.server_env->stats();
    send_together(f, "ghost", one_to(5));
    ASSERT_TRUE(eventually([&] { return f.server->stats().served_refused == 5; })) << f.server->stats().served_refused;
    EXPECT_EQ(f.server->stats().sends_served, 5u);
    EXPECT_TRUE(eventually([&] { return f.server_log.has("to 'ghost': no such object"); }));
    EXPECT_EQ(named_stats_of(*f.server_env).named_rejected, 5u);
    // Never sent to an object: nothing for the environment's books.
    EXPECT_EQ(f.server_env->stats().messages_sent, before.messages_sent);
    expect_books_balance(*f.server_env);
}

TEST(node, an_environment_that_stops_stops_its_node_and_the_books_balance_on_both_sides) {
    auto f = std::make_unique<pair_fixture>("tcp://127.0.0.1:0");
    ASSERT_TRUE(f->up());
    for (int i = 0; i < 5; ++i) {
        auto r = request<add_rep>(*f->client_env, "server/calc", add_req{i, i}, {.timeout = 10s});
        EXPECT_EQ(settle(r), request_state::replied);
    }
    auto pending = request<add_rep>(*f->client_env, "server/hold", add_req{});
    EXPECT_TRUE(eventually([&] { return pending.state() == request_state::transmitted; }));
    // The client's environment goes first, its node handle still alive: the node stops with it.
    f->client_env->stop();
    f->client_env->join();
    EXPECT_EQ(settle(pending), request_state::abandoned);
    EXPECT_NE(pending.reason().find("node 'client' stopped"), std::string::npos) << pending.reason();
    auto c = named_stats_of(*f->client_env);
    EXPECT_EQ(c.requests_posted, c.requests_replied + c.requests_rejected + c.requests_abandoned);
    EXPECT_EQ(c.requests_replied, 5u);
    f->client.reset();  // after its environment: harmless
    {
        std::lock_guard g(f->held_m);
        f->held.clear();  // the server's copy is abandoned; its answer has nobody to go to
    }
    f->server.reset();
    auto server_env = std::move(f->server_env);
    f->calc.destroy();
    f->sink.destroy();
    f->hold.destroy();
    f->server_s.reset();
    server_env->stop();
    server_env->join();
    auto s = named_stats_of(*server_env);
    EXPECT_EQ(s.requests_posted, s.requests_replied + s.requests_rejected + s.requests_abandoned);
    EXPECT_EQ(s.requests_replied, 5u);
    for (environment* e : {server_env.get(), f->client_env.get()}) {
        auto st = e->stats();
        EXPECT_EQ(st.messages_sent, st.messages_delivered + st.messages_lost + st.messages_ignored +
                                        st.messages_discarded + st.messages_cancelled + st.messages_dropped)
            << e->name();
    }
}

// ---- sending: each peer's send queue (bounds, reactions, batching, hand-back) ----

namespace {

net::node_options queue_limited(net::send_overflow reaction, std::size_t messages,
                                std::chrono::milliseconds block = 100ms) {
    net::node_options o = fast(true);
    o.send_queue_messages = messages;
    o.send_reaction = reaction;
    o.send_block_timeout = block;
    return o;
}

// A client whose send queue to "server" holds `n` requests that the I/O thread leaves undrained.
std::vector<outgoing<add_rep>> queue_requests(pair_fixture& f, int n) {
    std::vector<outgoing<add_rep>> v;
    for (int i = 0; i < n; ++i) v.push_back(request<add_rep>(*f.client_env, "server/calc", add_req{i, 1}, {.timeout = 20s}));
    return v;
}

}  // namespace

TEST(node_send_queue, reject_reaction_rejects_a_request_with_peer_limits_and_raises_for_a_one_way_send) {
    pair_fixture f("tcp://127.0.0.1:0", fast(), queue_limited(net::send_overflow::reject, 2));
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    auto queued = queue_requests(f, 2);
    auto refused = request<add_rep>(*f.client_env, "server/calc", add_req{1, 1}, {.timeout = 20s});
    ASSERT_TRUE(refused.wait_for(1s)) << "a refused request must be final at once";
    EXPECT_EQ(refused.state(), request_state::rejected);
    EXPECT_NE(refused.reason().find("peer limits"), std::string::npos) << refused.reason();
    EXPECT_NE(refused.reason().find("'server'"), std::string::npos) << refused.reason();
    EXPECT_THROW(send_to(*f.client_env, "server/sink", note{"x"}), net::peer_limits_error);
    auto s = f.client->stats();
    EXPECT_EQ(s.requests_refused_by_queue, 1u);
    EXPECT_EQ(s.rejected_peer_limits, 1u);
    EXPECT_EQ(s.sends_dropped, 1u);
    net::internal_node::test_access::pause_sends(*f.client, false);
    for (auto& r : queued) EXPECT_EQ(settle(r), request_state::replied) << r.reason();
}

TEST(node_send_queue, drop_reaction_counts_a_one_way_send_dropped_without_raising_and_rejects_a_request) {
    pair_fixture f("tcp://127.0.0.1:0", fast(), queue_limited(net::send_overflow::drop, 2));
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(send_to(*f.client_env, "server/sink", note{"n"}));
    auto refused = request<add_rep>(*f.client_env, "server/calc", add_req{1, 1}, {.timeout = 20s});
    ASSERT_TRUE(refused.wait_for(1s));
    EXPECT_EQ(refused.state(), request_state::rejected);
    EXPECT_NE(refused.reason().find("peer limits"), std::string::npos) << refused.reason();
    EXPECT_EQ(f.client->stats().sends_dropped, 3u);
    net::internal_node::test_access::pause_sends(*f.client, false);
    EXPECT_TRUE(eventually([&] { return f.notes.load() == 2; })) << f.notes.load();
    // Counted once the socket took them, which may be after the server has them.
    EXPECT_TRUE(eventually([&] { return f.client->stats().sends_out == 2; })) << f.client->stats().sends_out;
}

TEST(node_send_queue, block_reaction_waits_for_room_up_to_its_timeout_then_refuses) {
    pair_fixture f("tcp://127.0.0.1:0", fast(), queue_limited(net::send_overflow::block, 1, 100ms));
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    auto queued = queue_requests(f, 1);
    const auto t0 = std::chrono::steady_clock::now();
    auto refused = request<add_rep>(*f.client_env, "server/calc", add_req{1, 1}, {.timeout = 20s});
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 90ms) << "the sender must have waited for room";
    ASSERT_TRUE(refused.wait_for(1s));
    EXPECT_EQ(refused.state(), request_state::rejected);
    EXPECT_NE(refused.reason().find("peer limits"), std::string::npos) << refused.reason();
    EXPECT_THROW(send_to(*f.client_env, "server/sink", note{"x"}), net::peer_limits_error);
    EXPECT_EQ(f.client->stats().requests_refused_by_queue, 1u);
    EXPECT_EQ(f.client->stats().sends_dropped, 1u);
    net::internal_node::test_access::pause_sends(*f.client, false);
    EXPECT_EQ(settle(queued[0]), request_state::replied) << queued[0].reason();
}

TEST(node_send_queue, many_small_sends_queued_for_a_busy_peer_go_in_batch_frames) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    for (int i = 0; i < 200; ++i) send_to(*f.client_env, "server/sink", note{std::to_string(i)});
    auto queued = queue_requests(f, 20);
    net::internal_node::test_access::pause_sends(*f.client, false);
    EXPECT_TRUE(eventually([&] { return f.notes.load() == 200; })) << f.notes.load();
    for (auto& r : queued) EXPECT_EQ(settle(r), request_state::replied) << r.reason();
    const auto s = f.client->stats();
    EXPECT_GT(s.frames_out.batch, 0u);
    EXPECT_EQ(s.frames_out.send, 200u);
    EXPECT_EQ(s.frames_out.request, 20u);
    EXPECT_EQ(s.sends_out, 200u);
    EXPECT_GT(f.server->stats().frames_in.batch, 0u);
}

TEST(node_send_queue, queued_requests_are_abandoned_peer_lost_when_the_peers_node_is_destroyed) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    auto queued = queue_requests(f, 3);
    send_to(*f.client_env, "server/sink", note{"lost"});
    net::internal_node::test_access::stop_without_bye(*f.server);  // silence, as a killed process
    f.server.reset();
    for (auto& r : queued) {
        EXPECT_EQ(settle(r), request_state::abandoned);
        EXPECT_NE(r.reason().find("peer 'server' lost"), std::string::npos) << r.reason();
    }
    // The last frame handed back is the one-way message, counted after the requests settled.
    EXPECT_TRUE(eventually([&] {
        const auto s = f.client->stats();
        return s.frames_handed_back == 4 && s.sends_lost == 1 && s.requests_abandoned == 3;
    })) << "handed back " << f.client->stats().frames_handed_back << ", sends lost " << f.client->stats().sends_lost
        << ", requests abandoned " << f.client->stats().requests_abandoned;
}

TEST(node_send_queue, queued_requests_are_abandoned_node_stopped_when_the_node_stops) {
    pair_fixture f("tcp://127.0.0.1:0");
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.client, true);
    auto queued = queue_requests(f, 3);
    f.client->stop();
    for (auto& r : queued) {
        EXPECT_EQ(settle(r), request_state::abandoned);
        EXPECT_NE(r.reason().find("node 'client' stopped"), std::string::npos) << r.reason();
    }
    EXPECT_EQ(f.client->stats().frames_handed_back, 3u);
}

TEST(node_send_queue, a_frame_the_router_cannot_route_is_handed_back_and_its_requester_told) {
    // The server keeps its peer "up" for long (slow detection) while the client is gone, so its
    // queued request meets ROUTER_MANDATORY's EHOSTUNREACH rather than a down peer.
    net::node_options slow = fast();
    slow.acceptable_heartbeat_pause = 30s;
    slow.down_after = 30s;
    pair_fixture f("tcp://127.0.0.1:0", slow);
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::pause_sends(*f.server, true);
    auto r = request<add_rep>(*f.server_env, "client/anything", add_req{1, 1}, {.timeout = 20s});
    const auto before = f.server->stats().unreachable;
    net::internal_node::test_access::stop_without_bye(*f.client);  // gone without a word
    f.client.reset();
    // The server's heartbeats (sent beside the queue) fail once the ROUTER dropped the route.
    ASSERT_TRUE(eventually([&] { return f.server->stats().unreachable > before; }));
    net::internal_node::test_access::pause_sends(*f.server, false);
    EXPECT_EQ(settle(r), request_state::abandoned);
    EXPECT_NE(r.reason().find("unreachable"), std::string::npos) << r.reason();
    EXPECT_EQ(f.server->stats().frames_handed_back, 1u);
}

// ---- security -------------------------------------------------------------------------------

// ---- sending on the sender's own thread (node_options::send_now_after) ----

namespace {

net::node_options sending_now(bool on, bool with_client_only) {
    net::node_options o = fast(with_client_only);
    o.send_now_after = on ? std::chrono::microseconds(50) : std::chrono::microseconds(-1);
    return o;
}

// `n` requests one at a time, a pause between two so that the peer is quiet and the I/O
// threads asleep when the next one goes.
void requests_one_by_one(pair_fixture& f, int n) {
    for (int i = 0; i < n; ++i) {
        auto r = request<add_rep>(*f.client_env, "server/calc", add_req{i, 1}, {.timeout = 10s});
        ASSERT_EQ(settle(r), request_state::replied) << r.reason();
        EXPECT_EQ(r.reply().sum, i + 1);
        std::this_thread::sleep_for(1ms);
    }
}

}  // namespace

TEST(node_send_now, a_request_to_a_quiet_peer_leaves_on_the_requesters_thread_and_its_answer_on_the_answering_one) {
    pair_fixture f("tcp://127.0.0.1:0", sending_now(true, false), sending_now(true, true));
    ASSERT_TRUE(f.up());
    requests_one_by_one(f, 50);
    // Not every one: the I/O thread may be awake (a heartbeat) when one goes, and then does it.
    EXPECT_GT(f.client->stats().flushed_by_sender, 0u);
    EXPECT_GT(f.server->stats().answers_by_server_thread, 0u);
    EXPECT_TRUE(eventually([&] { return f.client->stats().requests_replied == 50; }));
    EXPECT_EQ(f.server->stats().requests_served, 50u);
}

TEST(node_send_now, a_negative_send_now_after_leaves_every_frame_to_the_io_thread) {
    pair_fixture f("tcp://127.0.0.1:0", sending_now(false, false), sending_now(false, true));
    ASSERT_TRUE(f.up());
    requests_one_by_one(f, 20);
    EXPECT_EQ(f.client->stats().flushed_by_sender, 0u);
    EXPECT_EQ(f.server->stats().answers_by_server_thread, 0u);
    EXPECT_TRUE(eventually([&] { return f.client->stats().requests_replied == 20; }));
}

// Both nodes send and receive on the same sockets from several threads at once, each frame
// either handed over by its sender or by the I/O thread: a sender that reads the socket's
// signal meant for the I/O thread (a message that arrived meanwhile) must wake it. The I/O
// threads here sleep without timer ticks (and heartbeats are seconds apart), so a message left
// unseen would never be read and its request would time out. Nothing is lost, nothing waits,
// the books balance.
TEST(node_send_now, requests_both_ways_from_many_threads_with_one_way_messages_all_arrive) {
    auto slow_heartbeats = [](bool with_client_only) {
        net::node_options o = sending_now(true, with_client_only);
        o.heartbeat_interval = 20s;
        o.acceptable_heartbeat_pause = 60s;
        return o;
    };
    pair_fixture f("tcp://127.0.0.1:0", slow_heartbeats(false), slow_heartbeats(true));
    session echo_s(*f.client_env, session_options{.name = "echo-session"});
    auto echo = register_named(echo_s, "echo", [](incoming& in) { in.reply<add_rep>(add_rep{in.as<add_req>().a}); });
    f.client->export_objects("echo");
    ASSERT_TRUE(f.up());
    net::internal_node::test_access::sleep_without_ticks(*f.client, true);
    net::internal_node::test_access::sleep_without_ticks(*f.server, true);
    constexpr int per_thread = 150;
    std::atomic<int> replied{0}, wrong{0};
    auto ask = [&](environment& env, const std::string& to) {
        for (int i = 0; i < per_thread; ++i) {
            auto r = request<add_rep>(env, to, add_req{i, 0}, {.timeout = 5s});
            if (!r.wait_for(10s) || r.state() != request_state::replied) {
                wrong.fetch_add(1);
                return;  // one is enough (a message left unseen stalls the rest of this thread)
            }
            if (r.reply().sum == i) replied.fetch_add(1);
            if (i % 8 == 0) std::this_thread::sleep_for(200us);  // quiet spells: sent by the caller
        }
    };
    std::vector<std::thread> threads;
    threads.emplace_back(ask, std::ref(*f.client_env), "server/calc");
    threads.emplace_back(ask, std::ref(*f.client_env), "server/calc");
    threads.emplace_back(ask, std::ref(*f.server_env), "client/echo");
    threads.emplace_back(ask, std::ref(*f.server_env), "client/echo");
    threads.emplace_back([&] {
        for (int i = 0; i < per_thread; ++i) {
            send_to(*f.client_env, "server/sink", note{"n"});
            if (i % 4 == 0) std::this_thread::sleep_for(100us);
        }
    });
    for (auto& t : threads) t.join();
    ASSERT_EQ(wrong.load(), 0);
    EXPECT_EQ(replied.load(), 4 * per_thread);
    EXPECT_TRUE(eventually([&] { return f.notes.load() == per_thread; })) << f.notes.load() << " notes";
    EXPECT_GT(f.client->stats().flushed_by_sender + f.server->stats().flushed_by_sender, 0u);
    echo.destroy();
    expect_books_balance(*f.client_env);
    expect_books_balance(*f.server_env);
}

// A node destroyed while other threads send through it (some of them holding its I/O state at
// that moment): every request ends, none waits, nothing crashes.
TEST(node_send_now, a_node_destroyed_while_threads_send_through_it_leaves_no_request_waiting) {
    pair_fixture f("tcp://127.0.0.1:0", sending_now(true, false), sending_now(true, true));
    ASSERT_TRUE(f.up());
    std::atomic<bool> stop{false};
    std::atomic<int> settled{0}, waiting{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t)
        threads.emplace_back([&] {
            for (int i = 0; !stop.load() && i < 100'000; ++i) {
                try {
                    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{i, 1}, {.timeout = 5s});
                    if (r.wait_for(8s))
                        settled.fetch_add(1);
                    else
                        waiting.fetch_add(1);
                } catch (const std::exception&) {
                    settled.fetch_add(1);  // refused at once: the node is gone (no such object)
                }
                std::this_thread::sleep_for(100us);
            }
        });
    EXPECT_TRUE(eventually([&] { return settled.load() >= 30; }));
    f.client.reset();
    std::this_thread::sleep_for(20ms);
    stop = true;
    for (auto& t : threads) t.join();
    EXPECT_EQ(waiting.load(), 0);
    expect_books_balance(*f.client_env);
}

namespace {

namespace fs = std::filesystem;

using test::temp_dir;

net::node_options with_key(net::node_options o, const net::curve_keypair& k) {
    o.security.secret_key = k.secret_key;
    return o;
}

}  // namespace

TEST(node_security, curve_nodes_with_key_files_and_allow_lists_exchange_requests) {
    // As `mailroom node keygen` lays them out: each node's secret key in its own directory, the
    // other's public key in its allow-list directory; the client finds the server's key there
    // by the server's name.
    temp_dir keys, server_allow, client_allow;
    const auto server_keys = net::curve_keypair::generate();
    const auto client_keys = net::curve_keypair::generate();
    net::write_key_files(server_keys, "server", keys.path / "server.key", client_allow.path / "server.pub");
    net::write_key_files(client_keys, "client", keys.path / "client.key", server_allow.path / "client.pub");
    net::node_options so = fast();
    so.security.secret_key_file = keys.path / "server.key";
    so.security.allow_list_dir = server_allow.path;
    net::node_options co = fast(true);
    co.security.secret_key_file = keys.path / "client.key";
    co.security.allow_list_dir = client_allow.path;
    pair_fixture f("tcp://127.0.0.1:0", so, co, {.peer = "server"});
    ASSERT_TRUE(f.up());
    EXPECT_EQ(f.server->public_key(), server_keys.public_key);
    EXPECT_EQ(f.client->public_key(), client_keys.public_key);
    std::vector<outgoing<add_rep>> rs;
    for (int i = 0; i < 20; ++i) rs.push_back(request<add_rep>(*f.client_env, "server/calc", add_req{i, 1}, {.timeout = 10s}));
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(settle(rs[i]), request_state::replied) << rs[i].reason();
        EXPECT_EQ(rs[i].reply().sum, i + 1);
    }
    // And back: the server reaches the client's objects over the same CURVE connection.
    auto back = request<add_rep>(*f.server_env, "client/none", add_req{1, 1}, {.timeout = 10s});
    EXPECT_EQ(settle(back), request_state::rejected);
    const auto ss = f.server->stats();
    EXPECT_GE(ss.zap.allowed_curve, 1u);
    EXPECT_EQ(ss.zap.refused(), 0u);
    EXPECT_EQ(ss.hello_refused, 0u);
    EXPECT_EQ(ss.handshake_failed_mechanism + ss.handshake_failed_protocol + ss.handshake_failed_auth, 0u);
}

TEST(node_security, keys_given_in_code_work_as_key_files_do) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    // The server lets the client in through allow(); the client dials with the server's key.
    net::node_options so = with_key(fast(), sk);
    net::node_options co = with_key(fast(true), ck);
    environment server_env(environment_options{.name = "s", .log = [](std::string_view) {}});
    environment client_env(environment_options{.name = "c", .log = [](std::string_view) {}});
    session ss(server_env);
    auto calc = register_named(ss, "calc", [](incoming& in) {
        const auto& q = in.as<add_req>();
        in.reply<add_rep>(add_rep{q.a + q.b});
    });
    net::node server(server_env, "server", so);
    server.export_objects("calc");
    server.allow(ck.public_key, "client");
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    net::node client(client_env, "client", co);
    client.connect(ep, {.server_public_key = sk.public_key});
    ASSERT_TRUE(client.wait_for_peer("server", 10s));
    auto r = request<add_rep>(client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_EQ(r.reply().sum, 5);
}

TEST(node_security, a_client_with_an_unknown_key_is_refused_counted_logged_and_never_up) {
    const auto sk = net::curve_keypair::generate();
    const auto stranger = net::curve_keypair::generate();
    pair_fixture f("tcp://127.0.0.1:0", with_key(fast(), sk), with_key(fast(true), stranger),
                   {.server_public_key = sk.public_key});
    event_log server_events;
    session watch(*f.server_env);
    auto h = f.server->subscribe_peers(watch, [&](const net::peer_event& e) { server_events.add(e); });
    ASSERT_TRUE(eventually([&] { return f.server->stats().zap.refused_unknown_key >= 2; }));
    // The client heard of it (ZAP's 400 comes back in the handshake) and dials again later.
    ASSERT_TRUE(eventually([&] { return f.client->stats().handshake_failed_auth >= 1; }));
    EXPECT_TRUE(eventually([&] { return f.server_log.has("is not in the allow-list"); }));
    EXPECT_TRUE(eventually([&] { return f.server_log.has(stranger.public_key); }));
    EXPECT_TRUE(eventually([&] { return f.client_log.has("failed its handshake: refused by ZAP"); }));
    EXPECT_FALSE(f.client->wait_for_peer("server", 200ms));
    EXPECT_TRUE(f.server->peers().empty());
    EXPECT_EQ(server_events.count(net::peer_state::up, "client"), 0u);
    EXPECT_EQ(f.server->stats().frames_in.hello, 0u);  // nothing it sent was delivered
    EXPECT_EQ(f.server->stats().zap.allowed_curve, 0u);
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{1, 2}, {.timeout = 300ms});
    EXPECT_NE(settle(r), request_state::replied);
}

TEST(node_security, a_client_without_keys_to_a_curve_node_is_refused_and_counted_as_a_mechanism_mismatch) {
    const auto sk = net::curve_keypair::generate();
    pair_fixture f("tcp://127.0.0.1:0", with_key(fast(), sk), fast(true));
    // Whichever side reads the other's greeting first sees the mismatch and hangs up; the other
    // may see only that (a failure without detail). libzmq redials, so both kinds come.
    auto failed = [](const net::node_stats& s) { return s.handshake_failed_mechanism + s.handshake_failed_other; };
    ASSERT_TRUE(eventually([&] { return failed(f.server->stats()) >= 1 && failed(f.client->stats()) >= 1; }));
    ASSERT_TRUE(eventually([&] {
        return f.server->stats().handshake_failed_mechanism + f.client->stats().handshake_failed_mechanism >= 1;
    }));
    EXPECT_TRUE(eventually([&] { return f.server_log.has("failed its handshake") || f.client_log.has("failed its handshake"); }));
    EXPECT_FALSE(f.client->wait_for_peer("server", 200ms));
    EXPECT_TRUE(f.server->peers().empty());
    const auto ss = f.server->stats();
    EXPECT_EQ(ss.frames_in.hello, 0u);
    EXPECT_EQ(ss.zap.refused() + ss.zap.allowed_curve + ss.zap.allowed_null, 0u);  // never reaches ZAP
}

TEST(node_security, a_key_allowed_under_another_name_than_the_hello_gives_is_refused) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    log_sink server_log;
    environment server_env(environment_options{.name = "s", .log = server_log.fn()});
    net::node server(server_env, "server", with_key(fast(), sk));
    server.allow(ck.public_key, "payroll");
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    environment client_env(environment_options{.name = "c", .log = [](std::string_view) {}});
    net::node client(client_env, "client", with_key(fast(true), ck));  // says "client" in HELLO
    client.connect(ep, {.server_public_key = sk.public_key});
    ASSERT_TRUE(eventually([&] { return server.stats().hello_refused_wrong_node >= 1; }));
    EXPECT_GE(server.stats().hello_refused, server.stats().hello_refused_wrong_node);
    EXPECT_GE(server.stats().zap.allowed_curve, 1u);  // the key itself is allowed
    EXPECT_TRUE(eventually([&] { return server_log.has("refused the HELLO of 'client'"); }));
    EXPECT_TRUE(eventually([&] { return server_log.has("allowed as node 'payroll', not as 'client'"); }));
    EXPECT_FALSE(client.wait_for_peer("server", 200ms));
    EXPECT_TRUE(server.peers().empty());
}

TEST(node_security, a_server_that_is_not_the_node_expected_at_the_endpoint_is_refused_by_the_client) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    net::node_options so = with_key(fast(), sk);
    net::node_options co = with_key(fast(true), ck);
    environment server_env(environment_options{.name = "s", .log = [](std::string_view) {}});
    log_sink client_log;
    environment client_env(environment_options{.name = "c", .log = client_log.fn()});
    net::node server(server_env, "server", so);
    server.allow(ck.public_key, "client");
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    net::node client(client_env, "client", co);
    // The client allows the server's key as "pricing": the node at the endpoint must say so.
    client.allow(sk.public_key, "pricing");
    EXPECT_THROW(client.connect(ep, {.server_public_key = sk.public_key, .peer = "server"}), net::security_error);
    client.connect(ep, {.server_public_key = sk.public_key});
    ASSERT_TRUE(eventually([&] { return client.stats().hello_refused_wrong_node >= 1; }));
    EXPECT_TRUE(eventually([&] { return client_log.has("node 'pricing' was expected at '" + ep + "'"); }));
    EXPECT_FALSE(client.wait_for_peer("server", 200ms));
}

TEST(node_security, endpoints_and_settings_the_security_refuses_raise_security_error_naming_node_and_endpoint) {
    environment env(environment_options{.name = "e", .log = [](std::string_view) {}});
    net::node plain(env, "plain", fast());  // no keys
    auto raises = [](auto&& call, const std::string& must_name) {
        try {
            call();
            ADD_FAILURE() << "no security_error for " << must_name;
        } catch (const net::security_error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("node '"), std::string::npos) << what;
            EXPECT_NE(what.find(must_name), std::string::npos) << what;
        }
    };
    // No socket is made for these: nothing leaves the machine.
    raises([&] { (void)plain.listen("tcp://0.0.0.0:0"); }, "'tcp://0.0.0.0:0' is remote");
    raises([&] { (void)plain.listen("tcp://*:0"); }, "tcp://*:0");
    raises([&] { plain.connect("tcp://192.0.2.1:5555"); }, "tcp://192.0.2.1:5555");
    raises([&] { plain.connect("tcp://127.0.0.1:9", {.server_public_key = net::curve_keypair::generate().public_key}); },
           "has no keys");
    raises([&] { plain.allow(net::curve_keypair::generate().public_key, "x"); }, "plain");
    EXPECT_TRUE(plain.endpoints().empty());
    // Local endpoints stay open to a node without keys.
    EXPECT_NO_THROW((void)plain.listen("tcp://127.0.0.1:0"));
    EXPECT_NO_THROW((void)plain.listen("inproc://node-security-local"));
    plain.stop();

    environment env2(environment_options{.name = "e2", .log = [](std::string_view) {}});
    net::node curve(env2, "curve", with_key(fast(), net::curve_keypair::generate()));
    raises([&] { curve.connect("tcp://127.0.0.1:9"); }, "needs the server's public key");
    raises([&] { curve.connect("tcp://127.0.0.1:9", {.peer = "nobody"}); }, "no public key of node 'nobody'");
    raises([&] { curve.connect("tcp://127.0.0.1:9", {.server_public_key = "short"}); }, "not a Z85 CURVE key");
    EXPECT_TRUE(curve.peers().empty());
    curve.stop();

    environment env3(environment_options{.name = "e3", .log = [](std::string_view) {}});
    net::node_options half = fast();
    half.security.allow_list_dir = fs::temp_directory_path();
    EXPECT_THROW(net::node(env3, "half", half), net::security_error);  // an allow-list but no key
    net::node_options missing = fast();
    missing.security.secret_key_file = "/nonexistent/mailroom-node.key";
    EXPECT_THROW(net::node(env3, "missing", missing), net::key_file_error);
    // A key, but an allow-list directory that is not there: refused when the node is made (its
    // ZAP handler and context, already made, are let go).
    net::node_options no_dir = with_key(fast(), net::curve_keypair::generate());
    no_dir.security.allow_list_dir = "/nonexistent/mailroom-allow";
    EXPECT_THROW(net::node(env3, "no-dir", no_dir), net::key_file_error);
    EXPECT_NO_THROW(net::node(env3, "fine", with_key(fast(), net::curve_keypair::generate())));
}

TEST(node_security, a_client_dialling_with_a_wrong_server_key_is_refused_in_the_handshake) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    const auto not_the_server = net::curve_keypair::generate();
    net::node_options so = with_key(fast(), sk);
    pair_fixture f("tcp://127.0.0.1:0", so, with_key(fast(true), ck), {.server_public_key = not_the_server.public_key});
    f.server->allow(ck.public_key, "client");
    // The server cannot open the client's CURVE HELLO (boxed for another key): a protocol error.
    ASSERT_TRUE(eventually([&] { return f.server->stats().handshake_failed_protocol >= 1; }));
    EXPECT_FALSE(f.client->wait_for_peer("server", 200ms));
    EXPECT_TRUE(f.server->peers().empty());
    const auto ss = f.server->stats();
    EXPECT_EQ(ss.zap.allowed_curve + ss.zap.refused(), 0u);  // never reaches ZAP
    EXPECT_EQ(ss.frames_in.hello, 0u);
    // The client only sees the server hang up during the handshake.
    EXPECT_TRUE(eventually([&] { return f.client->stats().handshake_failed_other >= 1; }));
}

TEST(node_security, a_revoked_client_is_dropped_at_once_refused_on_redial_and_let_in_again_by_allow) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    pair_fixture f("tcp://127.0.0.1:0", with_key(fast(), sk), with_key(fast(true), ck),
                   {.server_public_key = sk.public_key});
    f.server->allow(ck.public_key, "client");
    ASSERT_TRUE(f.up());
    f.server->revoke("client");
    // Dropped at once: down when revoke() returns, not when the detector notices.
    bool known = false;
    EXPECT_EQ(state_of(*f.server, "client", known), net::peer_state::down);
    EXPECT_TRUE(known);
    // The client, no longer heard from the server, loses it and dials again: its key is refused.
    ASSERT_TRUE(eventually([&] { return f.server->stats().zap.refused_unknown_key >= 1; }))
        << "the revoked key was not refused on redial";
    EXPECT_NE(state_of(*f.server, "client", known), net::peer_state::up);
    EXPECT_FALSE(f.client->wait_for_peer("server", 300ms));
    // Trusted again: the client's next dial gets in.
    f.server->allow(ck.public_key, "client");
    ASSERT_TRUE(f.up()) << "not let in again after allow()";
    auto r = request<add_rep>(*f.client_env, "server/calc", add_req{2, 3}, {.timeout = 10s});
    ASSERT_EQ(settle(r), request_state::replied) << r.reason();
    EXPECT_TRUE(f.server_log.has("peer 'client' revoked"));
}

// A CURVE node of its own environment dialling `endpoint` with `keys`, named `name`.
struct curve_client {
    environment env;
    net::node node;
    curve_client(const std::string& name, const net::curve_keypair& keys, const std::string& endpoint,
                 const std::string& server_public)
        : env(environment_options{.name = name, .log = [](std::string_view) {}}),
          node(env, name, with_key(fast(true), keys)) {
        node.connect(endpoint, {.server_public_key = server_public});
    }
};

// An allow-list directory and the key files written into it, for a CURVE server.
struct allow_dir {
    temp_dir allow, secrets;
    void write_pub(const net::curve_keypair& k, const std::string& name) {
        net::write_key_files(k, name, secrets / (name + ".key"), allow / (name + ".pub"), {.overwrite = true});
    }
    net::node_options server_options(const net::curve_keypair& server_key) {
        net::node_options so = with_key(fast(), server_key);
        so.security.allow_list_dir = allow.path;
        return so;
    }
};

TEST(node_security, reloading_the_allow_list_lets_new_nodes_in_rotates_changed_keys_and_revokes_removed_ones) {
    allow_dir dir;
    auto& allow = dir.allow;
    const auto sk = net::curve_keypair::generate();
    const auto ka = net::curve_keypair::generate();
    const auto kb = net::curve_keypair::generate();
    auto write_pub = [&](const net::curve_keypair& k, const std::string& name) { dir.write_pub(k, name); };
    write_pub(ka, "a");
    log_sink log;
    environment server_env(environment_options{.name = "s", .log = log.fn()});
    net::node_options so = dir.server_options(sk);
    net::node server(server_env, "server", so);
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    curve_client a("a", ka, ep, sk.public_key);
    ASSERT_TRUE(server.wait_for_peer("a", 10s));
    // Not in the directory yet: refused until the directory is read again.
    curve_client b("b", kb, ep, sk.public_key);
    ASSERT_TRUE(eventually([&] { return server.stats().zap.refused_unknown_key >= 1; }));
    EXPECT_FALSE(server.wait_for_peer("b", 200ms));
    write_pub(kb, "b");
    EXPECT_FALSE(server.wait_for_peer("b", 200ms)) << "let in before the reload";
    auto c = server.reload_allow_list();
    EXPECT_EQ(c.added, std::vector<std::string>{"b"});
    EXPECT_TRUE(c.changed.empty());
    EXPECT_TRUE(c.removed.empty());
    ASSERT_TRUE(server.wait_for_peer("b", 10s)) << "b not let in after the reload";
    // Nothing changed: nothing happens.
    c = server.reload_allow_list();
    EXPECT_TRUE(c.added.empty() && c.changed.empty() && c.removed.empty());
    EXPECT_TRUE(server.wait_for_peer("a", 0ms));

    // a's key rotated: the node on the old key is dropped at once and refused; the new key gets in.
    const auto ka2 = net::curve_keypair::generate();
    write_pub(ka2, "a");
    c = server.reload_allow_list();
    EXPECT_EQ(c.changed, std::vector<std::string>{"a"});
    bool known = false;
    EXPECT_EQ(state_of(server, "a", known), net::peer_state::down);
    const auto refused_before = server.stats().zap.refused_unknown_key;
    ASSERT_TRUE(eventually([&] { return server.stats().zap.refused_unknown_key > refused_before; }))
        << "the old key of a was not refused on redial";
    EXPECT_FALSE(server.wait_for_peer("a", 200ms));
    curve_client a2("a", ka2, ep, sk.public_key);
    ASSERT_TRUE(server.wait_for_peer("a", 10s)) << "a's new key not let in";
    EXPECT_TRUE(server.wait_for_peer("b", 0ms));

    // b's file removed: b is revoked (dropped at once, its HELLO refused from then on).
    std::filesystem::remove(allow / "b.pub");
    c = server.reload_allow_list();
    EXPECT_EQ(c.removed, std::vector<std::string>{"b"});
    EXPECT_EQ(state_of(server, "b", known), net::peer_state::down);
    EXPECT_FALSE(server.wait_for_peer("b", 300ms));
    EXPECT_TRUE(log.has("peer 'b' revoked"));

    // A broken file: the reload raises and changes nothing (b stays out, a stays in).
    {
        std::ofstream junk(allow / "c.pub");
        junk << "not a key\n";
    }
    EXPECT_THROW(server.reload_allow_list(), net::key_file_error);
    EXPECT_TRUE(server.wait_for_peer("a", 0ms));
    std::filesystem::remove(allow / "c.pub");
    c = server.reload_allow_list();
    EXPECT_TRUE(c.added.empty() && c.changed.empty() && c.removed.empty());

    // A node without an allow-list directory, and one without keys, cannot reload.
    environment other_env(environment_options{.name = "o", .log = [](std::string_view) {}});
    net::node keyed(other_env, "keyed", with_key(fast(), net::curve_keypair::generate()));
    EXPECT_THROW(keyed.reload_allow_list(), net::security_error);
    keyed.stop();
    net::node plain(other_env, "plain", fast());
    EXPECT_THROW(plain.reload_allow_list(), net::security_error);
}

TEST(node_security, a_watched_allow_list_directory_is_read_again_by_itself_when_it_changes) {
    allow_dir dir;
    auto& allow = dir.allow;
    const auto sk = net::curve_keypair::generate();
    const auto ka = net::curve_keypair::generate();
    const auto kb = net::curve_keypair::generate();
    auto write_pub = [&](const net::curve_keypair& k, const std::string& name) { dir.write_pub(k, name); };
    write_pub(ka, "a");
    log_sink log;
    environment server_env(environment_options{.name = "s", .log = log.fn()});
    net::node_options so = dir.server_options(sk);
    so.security.watch_allow_list_dir = true;
    net::node server(server_env, "server", so);
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    curve_client a("a", ka, ep, sk.public_key);
    ASSERT_TRUE(server.wait_for_peer("a", 10s));
    curve_client b("b", kb, ep, sk.public_key);
    ASSERT_TRUE(eventually([&] { return server.stats().zap.refused_unknown_key >= 1; }));

    // b's file appears: let in with no call to reload_allow_list().
    write_pub(kb, "b");
    ASSERT_TRUE(server.wait_for_peer("b", 10s)) << "b not let in after its file appeared";
    EXPECT_TRUE(log.has("allow-list reloaded after a change in '" + allow.path.string() + "': added b"));
    EXPECT_GE(server.stats().allow_list_reloads, 1u);

    // a's file goes: a is revoked and dropped by itself.
    std::filesystem::remove(allow / "a.pub");
    bool known = false;
    ASSERT_TRUE(eventually([&] { return state_of(server, "a", known) == net::peer_state::down; }))
        << "a not revoked after its file went";
    EXPECT_TRUE(log.has("peer 'a' revoked"));

    // A broken file: not reloaded (logged, counted), b stays in; mended, it is read again.
    {
        std::ofstream junk(allow / "c.pub");
        junk << "not a key\n";
    }
    ASSERT_TRUE(eventually([&] { return server.stats().allow_list_reloads_failed >= 1; }));
    EXPECT_TRUE(log.has("allow-list not reloaded after a change in"));
    EXPECT_TRUE(server.wait_for_peer("b", 0ms));
    const auto kc = net::curve_keypair::generate();
    write_pub(kc, "c");
    curve_client c("c", kc, ep, sk.public_key);
    ASSERT_TRUE(server.wait_for_peer("c", 10s)) << "c not let in once its file was mended";
    EXPECT_TRUE(server.wait_for_peer("b", 0ms));
    EXPECT_FALSE(server.wait_for_peer("a", 0ms));

    // Watching needs a directory to watch.
    environment other_env(environment_options{.name = "o", .log = [](std::string_view) {}});
    net::node_options no_dir = with_key(fast(), net::curve_keypair::generate());
    no_dir.security.watch_allow_list_dir = true;
    EXPECT_THROW(net::node(other_env, "w", no_dir), net::security_error);
}

TEST(node_security, watching_the_allow_list_on_a_node_without_keys_is_refused_not_ignored) {
    // A node without keys lets no CURVE node in: a watch asked of it would watch nothing.
    environment env(environment_options{.name = "o", .log = [](std::string_view) {}});
    net::node_options o = fast();
    o.security.watch_allow_list_dir = true;
    try {
        net::node n(env, "plain", o);
        FAIL() << "a node without keys took watch_allow_list_dir";
    } catch (const net::security_error& e) {
        EXPECT_NE(std::string(e.what()).find("watch_allow_list_dir"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("'plain'"), std::string::npos) << e.what();
    }
}

TEST(node_security, revoking_the_server_a_node_dials_abandons_its_requests_and_stops_the_dialling) {
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    pair_fixture f("tcp://127.0.0.1:0", with_key(fast(), sk), with_key(fast(true), ck),
                   {.server_public_key = sk.public_key, .peer = "server"});
    f.server->allow(ck.public_key, "client");
    ASSERT_TRUE(f.up());
    auto held = request<add_rep>(*f.client_env, "server/hold", add_req{}, {.timeout = 10s});
    ASSERT_TRUE(eventually([&] { return f.held_count() == 1; }));
    f.client->revoke("server");
    EXPECT_EQ(settle(held, 2s), request_state::abandoned);
    EXPECT_NE(held.reason().find("peer 'server' revoked"), std::string::npos) << held.reason();
    // No more dialling: the server sees it gone and it never comes back.
    ASSERT_TRUE(eventually([&] {
        bool known = false;
        return state_of(*f.server, "client", known) == net::peer_state::down;
    }));
    const auto hellos = f.server->stats().frames_in.hello;
    std::this_thread::sleep_for(500ms);  // several reconnect back-offs (20-200 ms)
    EXPECT_EQ(f.server->stats().frames_in.hello, hellos) << "the client kept dialling";
    EXPECT_FALSE(f.client->wait_for_peer("server", 1ms));
    // Misuse: a node without keys has nobody to revoke.
    environment plain_env(environment_options{.name = "plain", .log = [](std::string_view) {}});
    net::node plain(plain_env, "plain", fast());
    EXPECT_THROW(plain.revoke("server"), net::security_error);
    EXPECT_THROW(f.client->revoke("bad/name"), invalid_name_error);
}

TEST(node_security, a_revoked_node_saying_hello_again_on_its_old_connection_is_refused) {
    // A hostile peer keeps its authenticated connection open and says HELLO again after it was
    // dropped: the connection's ZAP verdict predates the revocation, the HELLO check does not.
    const auto sk = net::curve_keypair::generate();
    const auto ck = net::curve_keypair::generate();
    log_sink log;
    environment env(environment_options{.name = "s", .log = log.fn()});
    net::node server(env, "server", with_key(fast(), sk));
    server.allow(ck.public_key, "rogue");
    const std::string ep = server.listen("tcp://127.0.0.1:0");
    test::raw_dealer dealer(ep, test::raw_curve_keys{sk.public_key, ck.public_key, ck.secret_key});
    void* raw = dealer.socket();
    net::byte_buffer hello;
    internal::frame h;
    h.kind = internal::frame_kind::hello;
    h.node = "rogue";
    h.protocol_version = 1;
    internal::frame_writer(hello).write(h);
    zmq_send(raw, hello.data(), hello.size(), 0);
    ASSERT_TRUE(server.wait_for_peer("rogue", 10s));
    server.revoke("rogue");
    zmq_send(raw, hello.data(), hello.size(), 0);
    EXPECT_TRUE(eventually([&] { return server.stats().hello_refused_revoked == 1; }));
    EXPECT_FALSE(server.wait_for_peer("rogue", 200ms));
    EXPECT_TRUE(eventually([&] { return log.has("refused the HELLO of 'rogue'") && log.has("is revoked"); }));
}

TEST(node_send_queue, a_full_pipe_keeps_the_frames_until_the_socket_has_room_and_loses_none) {
    // A high-water mark of one message on the client's socket: the pipe is full whenever the
    // I/O thread is a message ahead of libzmq's, which a burst of sends makes happen at once.
    // Those frames must wait for room (and the queue behind them), never be handed back.
    // Slow detection on both sides: 5,000 frames keep both I/O threads busy for a while in a
    // sanitizer build, and this test is not about losing a peer.
    auto patient = [](net::node_options o) {
        o.acceptable_heartbeat_pause = 10s;
        o.down_after = 10s;
        return o;
    };
    net::node_options client = patient(fast(true));
    client.socket_options = [](void* s, net::socket_role, std::string_view) {
        const int one = 1;
        zmq_setsockopt(s, ZMQ_SNDHWM, &one, sizeof one);
    };
    pair_fixture f("tcp://127.0.0.1:0", patient(fast()), client);
    ASSERT_TRUE(f.up());
    constexpr int n = 5'000;
    for (int i = 0; i < n; ++i) send_to(*f.client_env, "server/sink", note{std::string(200, 'x')});
    EXPECT_TRUE(eventually([&] { return f.notes.load() == n; }, 60s)) << f.notes.load() << " of " << n;
    // The client counts a batch as sent after its socket took it: the server may have them first.
    EXPECT_TRUE(eventually([&] { return f.client->stats().sends_out == static_cast<std::uint64_t>(n); }));
    const auto s = f.client->stats();
    // A heartbeat that met the full pipe waited for room too: nothing was refused.
    EXPECT_EQ(s.unreachable, 0u);
    EXPECT_EQ(s.sends_lost, 0u);
    EXPECT_EQ(s.frames_handed_back, 0u);
    EXPECT_EQ(s.sends_out, static_cast<std::uint64_t>(n));
}

TEST(node_send_queue, requests_that_waited_for_a_peer_and_meet_a_full_pipe_when_it_returns_wait_for_room) {
    // The client's socket holds one message. Its server goes away; 300 requests wait for it
    // (wait_for_peer); a new server comes up on the same port, and the burst of waiting
    // requests meets the full pipe: they must wait for room, not be abandoned.
    log_sink quiet;
    auto serving = [&](const std::string& listen, std::string* bound) {
        struct side {
            std::unique_ptr<environment> env;
            std::unique_ptr<session> s;
            named_handle calc;
            std::unique_ptr<net::node> node;
        } x;
        x.env = std::make_unique<environment>(environment_options{.name = "srv", .log = quiet.fn()});
        x.s = std::make_unique<session>(*x.env, session_options{.name = "calc-session"});
        x.calc = register_named(*x.s, "calc", [](incoming& in) {
            const auto& q = in.as<add_req>();
            in.reply<add_rep>(add_rep{q.a + q.b});
        });
        x.node = std::make_unique<net::node>(*x.env, "server", fast());
        x.node->export_objects("calc");
        const std::string ep = x.node->listen(listen);
        if (bound) *bound = ep;
        return x;
    };
    std::string ep;
    auto first = serving("tcp://127.0.0.1:0", &ep);
    net::node_options co = fast(true);
    co.socket_options = [](void* s, net::socket_role, std::string_view) {
        const int one = 1;
        zmq_setsockopt(s, ZMQ_SNDHWM, &one, sizeof one);
    };
    environment client_env(environment_options{.name = "cli", .log = quiet.fn()});
    net::node client(client_env, "client", co);
    client.connect(ep, {.peer = "server"});
    ASSERT_TRUE(client.wait_for_peer("server", 10s));
    first.node.reset();
    first.env.reset();
    bool known = false;
    ASSERT_TRUE(eventually([&] { return state_of(client, "server", known) == net::peer_state::down; }));
    constexpr int n = 300;
    std::vector<outgoing<add_rep>> rs;
    for (int i = 0; i < n; ++i)
        rs.push_back(request<add_rep>(client_env, "server/calc", add_req{i, 1}, {.timeout = 30s, .wait_for_peer = true}));
    auto second = serving(ep, nullptr);
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(settle(rs[i], 30s), request_state::replied) << i << ": " << rs[i].reason();
        ASSERT_EQ(rs[i].reply().sum, i + 1);
    }
    EXPECT_EQ(client.stats().unreachable, 0u);
}

TEST(node_send_queue, answers_that_meet_a_full_pipe_wait_for_room_and_every_request_is_replied) {
    // The serving side's socket holds one message: a burst of requests makes its answers meet
    // a full pipe, and they must wait for room (in order), not be counted lost or unreachable.
    net::node_options server = fast();
    server.acceptable_heartbeat_pause = 10s;
    server.down_after = 10s;
    server.socket_options = [](void* s, net::socket_role, std::string_view) {
        const int one = 1;
        zmq_setsockopt(s, ZMQ_SNDHWM, &one, sizeof one);
    };
    net::node_options client = fast(true);
    client.acceptable_heartbeat_pause = 10s;
    client.down_after = 10s;
    pair_fixture f("tcp://127.0.0.1:0", server, client);
    ASSERT_TRUE(f.up());
    constexpr int n = 3'000;
    std::vector<outgoing<add_rep>> rs;
    rs.reserve(n);
    for (int i = 0; i < n; ++i) rs.push_back(request<add_rep>(*f.client_env, "server/calc", add_req{i, 1}, {.timeout = 60s}));
    // And rejects: a name the server does not export is answered the same way.
    std::vector<outgoing<add_rep>> refused;
    for (int i = 0; i < 200; ++i)
        refused.push_back(request<add_rep>(*f.client_env, "server/nothing", add_req{i, 1}, {.timeout = 60s}));
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(settle(rs[i], 60s), request_state::replied) << i << ": " << rs[i].reason();
        ASSERT_EQ(rs[i].reply().sum, i + 1);
    }
    for (auto& r : refused) ASSERT_EQ(settle(r, 60s), request_state::rejected) << r.reason();
    const auto s = f.server->stats();
    EXPECT_EQ(s.answers_lost, 0u);
    EXPECT_EQ(s.unreachable, 0u);
}
