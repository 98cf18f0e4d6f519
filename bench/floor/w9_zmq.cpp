// W9's floor: raw ZeroMQ between two processes over tcp loopback, 64-byte messages, the
// minimal program a node will be measured against (libzmq's C API, nothing else).
//
//   --part a  one-way, pipelined: a DEALER in this process sends 1M messages (+10k warm-up) at
//             scale 1 to a ROUTER in a second process, which counts them and checks their
//             order, then answers "done"; M msg/s from the first timed send to that answer.
//   --part b  request/reply, one at a time: the DEALER sends a 64-byte request and waits for
//             the ROUTER to send it back, 20k round trips (+1k warm-up) at scale 1; us per
//             round trip.
//   --part c  (a) with CURVE: each process makes its key pair in the run (zmq_curve_keypair);
//             the server prints its public key with its endpoint, the client uses it as
//             CURVE_SERVERKEY. No ZAP handler: the server accepts any client key.
//
// The second process is this program again (`--role server`), started per repetition; it binds
// tcp://127.0.0.1:0 and prints "READY <endpoint> [<server public key>]" (two_process.hpp).
// Socket options are libzmq's defaults (high-water marks of 1,000 messages, so the pipelined
// sender waits for the receiver as a bounded queue does) except LINGER, 0 on the client.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"
#include "../two_process.hpp"

#include <zmq.h>

#include <cstring>

namespace {

constexpr const char* workload = "W9";
constexpr std::size_t message_bytes = 64;

void zcheck(bool ok, const std::string& what) {
    if (!ok) bench::fail(workload, what + ": " + zmq_strerror(zmq_errno()));
}

void put_seq(char* buf, std::uint64_t seq) { std::memcpy(buf, &seq, sizeof seq); }
std::uint64_t get_seq(const char* buf) {
    std::uint64_t seq = 0;
    std::memcpy(&seq, buf, sizeof seq);
    return seq;
}

// ---- the server process

int serve(const std::string& part) {
    void* ctx = zmq_ctx_new();
    void* router = zmq_socket(ctx, ZMQ_ROUTER);
    zcheck(router != nullptr, "server socket");
    std::string ready_extra;
    if (part == "c") {
        char pub[41], sec[41];
        zcheck(zmq_curve_keypair(pub, sec) == 0, "zmq_curve_keypair (is libzmq built with CURVE?)");
        const int yes = 1;
        zcheck(zmq_setsockopt(router, ZMQ_CURVE_SERVER, &yes, sizeof yes) == 0, "CURVE_SERVER");
        zcheck(zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, sec, 40) == 0, "CURVE_SECRETKEY");
        ready_extra = std::string(" ") + pub;
    }
    zcheck(zmq_bind(router, "tcp://127.0.0.1:0") == 0, "bind");
    char endpoint[256] = {};
    std::size_t len = sizeof endpoint;
    zcheck(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &len) == 0, "last endpoint");
    bench::say_ready(endpoint + ready_extra);

    char id[256];
    char buf[512];
    std::uint64_t expected = 0;
    std::string bad;
    for (;;) {
        const int idn = zmq_recv(router, id, sizeof id, 0);
        zcheck(idn > 0, "server recv identity");
        const int n = zmq_recv(router, buf, sizeof buf, 0);
        zcheck(n >= 0, "server recv");
        auto reply = [&](const char* data, std::size_t size) {
            zcheck(zmq_send(router, id, static_cast<std::size_t>(idn), ZMQ_SNDMORE) == idn, "server send identity");
            zcheck(zmq_send(router, data, size, 0) == static_cast<int>(size), "server send");
        };
        if (n == 4 && std::memcmp(buf, "quit", 4) == 0) break;
        if (n >= 6 && std::memcmp(buf, "count ", 6) == 0) {
            // "count <total>": one connection keeps its order, so every message sent before it is in.
            const std::uint64_t total =
                std::strtoull(std::string(buf + 6, static_cast<std::size_t>(n - 6)).c_str(), nullptr, 10);
            const std::string r = bad.empty() && expected == total
                                      ? std::string("done")
                                      : "received " + std::to_string(expected) + " of " + std::to_string(total) + " " + bad;
            reply(r.data(), r.size());
            continue;
        }
        if (n != static_cast<int>(message_bytes)) bench::fail(workload, "server: a message of " + std::to_string(n) + " bytes");
        if (part != "b") {  // one-way: count and check the order
            if (get_seq(buf) != expected && bad.empty()) bad = "(message " + std::to_string(expected) + " out of order)";
            ++expected;
            continue;
        }
        reply(buf, message_bytes);  // part b: the request goes back as its reply
    }
    zmq_close(router);
    zmq_ctx_term(ctx);
    return 0;
}

// ---- the client

struct client {
    void* ctx = zmq_ctx_new();
    void* dealer = zmq_socket(ctx, ZMQ_DEALER);

    explicit client(const std::string& ready, bool curve) {
        zcheck(dealer != nullptr, "client socket");
        const int linger = 0, timeout_ms = 30'000;
        zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
        zmq_setsockopt(dealer, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
        std::string endpoint = ready;
        if (curve) {
            const auto space = ready.find(' ');
            bench::check(space != std::string::npos, workload, "the server gave no public key");
            endpoint = ready.substr(0, space);
            const std::string server_key = ready.substr(space + 1);
            char pub[41], sec[41];
            zcheck(zmq_curve_keypair(pub, sec) == 0, "zmq_curve_keypair");
            zcheck(zmq_setsockopt(dealer, ZMQ_CURVE_SERVERKEY, server_key.c_str(), 40) == 0, "CURVE_SERVERKEY");
            zcheck(zmq_setsockopt(dealer, ZMQ_CURVE_PUBLICKEY, pub, 40) == 0, "CURVE_PUBLICKEY");
            zcheck(zmq_setsockopt(dealer, ZMQ_CURVE_SECRETKEY, sec, 40) == 0, "CURVE_SECRETKEY");
        }
        zcheck(zmq_connect(dealer, endpoint.c_str()) == 0, "connect " + endpoint);
    }
    ~client() {
        zmq_close(dealer);
        zmq_ctx_term(ctx);
    }

    void send(const void* data, std::size_t n) {
        zcheck(zmq_send(dealer, data, n, 0) == static_cast<int>(n), "client send");
    }
    std::string receive() {
        char buf[512];
        const int n = zmq_recv(dealer, buf, sizeof buf, 0);
        zcheck(n >= 0, "client recv (30 s)");
        return std::string(buf, static_cast<std::size_t>(std::min<int>(n, sizeof buf)));
    }

    // Sends messages seq .. seq + n - 1, pipelined, then asks for the count and waits for "done".
    void one_way(std::uint64_t& seq, std::uint64_t n) {
        char buf[message_bytes] = {};
        for (std::uint64_t i = 0; i < n; ++i) {
            put_seq(buf, seq++);
            send(buf, sizeof buf);
        }
        const std::string ask = "count " + std::to_string(seq);
        send(ask.data(), ask.size());
        const std::string r = receive();
        bench::check(r == "done", workload, "the server answered '" + r + "'");
    }

    void round_trips(std::uint64_t& seq, std::uint64_t n) {
        char buf[message_bytes] = {};
        for (std::uint64_t i = 0; i < n; ++i) {
            put_seq(buf, seq++);
            send(buf, sizeof buf);
            const std::string r = receive();
            bench::check(r.size() == message_bytes && get_seq(r.data()) == seq - 1, workload,
                         "round trip " + std::to_string(seq - 1) + " came back wrong");
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"part", "a|b|c"}, {"role", "client|server"}};
    auto o = bench::parse(argc, argv, extras);
    const std::string part = o.get("part", "a");
    if (part != "a" && part != "b" && part != "c") bench::usage(argv[0], extras);
    if (o.get("role", "client") == "server") return serve(part);

    const auto [pipelined, n, warmup, unit] = bench::plan_w9(o, part);
    std::printf("W9 floor, raw ZeroMQ DEALER -> ROUTER over tcp loopback, two processes, %zu-byte messages: %s, "
                "%llu messages (+%llu warm-up)\n",
                message_bytes,
                part == "a"   ? "(a) one-way, pipelined"
                : part == "b" ? "(b) request/reply, one at a time"
                              : "(c) one-way, pipelined, CURVE",
                static_cast<unsigned long long>(n), static_cast<unsigned long long>(warmup));
    auto s = bench::repeat(o, unit, [&] {
        bench::server_process server;
        const std::string ready = server.spawn_self(workload, {"--role", "server", "--part", part});
        double figure = 0;
        {
            client c(ready, part == "c");
            std::uint64_t seq = 0;
            figure = bench::w9_figure(pipelined, warmup, n, [&](std::uint64_t count) {
                pipelined ? c.one_way(seq, count) : c.round_trips(seq, count);
            });
            c.send("quit", 4);
            // LINGER is 0: give "quit" a moment on the wire, then the server exits by itself.
            const int linger = 1000;
            zmq_setsockopt(c.dealer, ZMQ_LINGER, &linger, sizeof linger);
        }
        server.finish();
        return figure;
    });
    bench::report(workload,
                  part == "b" ? "raw ZeroMQ request/reply round trip" : part == "a" ? "raw ZeroMQ one-way, pipelined"
                                                                                    : "raw ZeroMQ one-way, pipelined, CURVE",
                  s, unit, "part=" + part + " messages=" + std::to_string(n), "floor");
    return 0;
}
