// W9 for CAF 0.17: remote actors (libcaf-io) between two processes over tcp loopback, 64-byte
// payloads.
//
//   --part a  one-way, pipelined: a scoped actor in this process sends 1M messages (+10k warm-up)
//             at scale 1 to an actor in a second process, published with `middleman().publish`
//             on 127.0.0.1 and reached with `middleman().remote_actor`; the server counts them
//             and checks their order, and a final request ("count", total) is answered once
//             they are all in (one connection keeps the order). M msg/s.
//   --part b  request/reply, one at a time: `request(server, 30 s, ping, payload).receive(...)`,
//             the server returning the payload; 20k round trips (+1k warm-up). us per round trip.
//   --part c  has no CAF figure: CAF has no CURVE (libcaf_openssl offers TLS, a different
//             handshake and cipher suite, which W9 does not compare). It says so and exits 2.
//
// Why it is the fair comparison: a payload of the same 64 bytes (a std::string, which CAF
// serialises as its bytes and a length), CAF's own remoting as shipped (BASP over its
// middleman, default settings), scheduler.max-threads=2 in both processes as in every CAF
// peer, and the same checks as the raw ZeroMQ floor (order and count on the server, each reply
// checked). CAF's sends are unbounded (no high-water mark): the sender of (a) never waits, its
// messages queue in the middleman until the socket takes them.
//
// The second process is this program again (`--role server`), started per repetition; it
// prints "READY <port>" (two_process.hpp), and quits when the client says so.

#include "caf_common.hpp"
#include "../two_process.hpp"

#include <caf/io/all.hpp>

#include <cstring>

namespace {

constexpr const char* workload = "W9";
constexpr std::size_t message_bytes = 64;

using count_atom = caf::atom_constant<caf::atom("count")>;
using ping_atom = caf::atom_constant<caf::atom("ping")>;
using quit_atom = caf::atom_constant<caf::atom("quit")>;

std::uint64_t get_seq(const std::string& m) {
    std::uint64_t seq = 0;
    if (m.size() >= sizeof seq) std::memcpy(&seq, m.data(), sizeof seq);
    return seq;
}

std::string payload(std::uint64_t seq) {
    std::string m(message_bytes, '\0');
    std::memcpy(m.data(), &seq, sizeof seq);
    return m;
}

struct server_state {
    std::uint64_t expected = 0;
    std::string bad;
};

caf::behavior server(caf::stateful_actor<server_state>* self) {
    return {
        [=](const std::string& m) {  // one-way: count and check the order
            auto& s = self->state;
            if ((m.size() != message_bytes || get_seq(m) != s.expected) && s.bad.empty())
                s.bad = "(message " + std::to_string(s.expected) + " out of order or of the wrong size)";
            ++s.expected;
        },
        [=](ping_atom, const std::string& m) { return m; },
        [=](count_atom, std::uint64_t total) {
            auto& s = self->state;
            return s.bad.empty() && s.expected == total
                       ? std::string("done")
                       : "received " + std::to_string(s.expected) + " of " + std::to_string(total) + " " + s.bad;
        },
        [=](quit_atom) { self->quit(); },
    };
}

int serve() {
    caf::actor_system_config cfg;
    cfg.load<caf::io::middleman>();
    bench::caf_peer::configure(cfg, 2);
    caf::actor_system sys{cfg};
    auto srv = sys.spawn(server);
    auto port = sys.middleman().publish(srv, 0, "127.0.0.1");
    if (!port) bench::fail(workload, "publish: " + sys.render(port.error()));
    bench::say_ready(std::to_string(*port));
    caf::scoped_actor self{sys};
    self->monitor(srv);
    self->receive([](const caf::down_msg&) {});
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"part", "a|b|c"}, {"role", "client|server"}};
    auto o = bench::parse(argc, argv, extras);
    const std::string part = o.get("part", "a");
    if (part == "c") {
        std::fprintf(stderr, "W9 CAF: no part c: CAF has no CURVE (libcaf_openssl offers TLS, which W9 does not compare)\n");
        return 2;
    }
    if (part != "a" && part != "b") bench::usage(argv[0], extras);
    if (o.get("role", "client") == "server") return serve();

    const bool pipelined = part == "a";
    const std::uint64_t n = pipelined ? o.scaled(1'000'000, 1000) : o.scaled(20'000, 100);
    const std::uint64_t warmup = pipelined ? 10'000 : 1'000;
    std::printf("W9 CAF remote actors (libcaf-io) over tcp loopback, two processes, %zu-byte payloads: %s, %llu "
                "messages (+%llu warm-up), 2 scheduler workers each\n",
                message_bytes, pipelined ? "(a) one-way, pipelined" : "(b) request/reply, one at a time",
                static_cast<unsigned long long>(n), static_cast<unsigned long long>(warmup));
    const char* unit = pipelined ? "M_msgs_per_s" : "us_per_round_trip";
    auto s = bench::repeat(o, unit, [&] {
        bench::server_process server;
        const std::string port = server.spawn_self(workload, {"--role", "server", "--part", part});
        double figure = 0;
        {
            caf::actor_system_config cfg;
            cfg.load<caf::io::middleman>();
            bench::caf_peer::configure(cfg, 2);
            caf::actor_system sys{cfg};
            auto remote = sys.middleman().remote_actor("127.0.0.1", static_cast<std::uint16_t>(std::stoul(port)));
            if (!remote) bench::fail(workload, "remote_actor: " + sys.render(remote.error()));
            caf::scoped_actor self{sys};
            std::uint64_t seq = 0;
            auto one_way = [&](std::uint64_t count) {
                for (std::uint64_t i = 0; i < count; ++i) self->send(*remote, payload(seq++));
                self->request(*remote, std::chrono::seconds(30), count_atom::value, seq)
                    .receive([&](const std::string& r) { bench::check(r == "done", workload, "the server answered '" + r + "'"); },
                             [&](caf::error& e) { bench::fail(workload, "count: " + sys.render(e)); });
            };
            auto round_trips = [&](std::uint64_t count) {
                for (std::uint64_t i = 0; i < count; ++i, ++seq)
                    self->request(*remote, std::chrono::seconds(30), ping_atom::value, payload(seq))
                        .receive(
                            [&](const std::string& r) {
                                bench::check(r.size() == message_bytes && get_seq(r) == seq, workload,
                                             "round trip " + std::to_string(seq) + " came back wrong");
                            },
                            [&](caf::error& e) { bench::fail(workload, "ping: " + sys.render(e)); });
            };
            figure = bench::w9_figure(pipelined, warmup, n, [&](std::uint64_t count) {
                pipelined ? one_way(count) : round_trips(count);
            });
            self->send(*remote, quit_atom::value);
            server.finish();
        }
        return figure;
    });
    bench::report(workload,
                  pipelined ? "CAF remote actors, one-way, pipelined" : "CAF remote actors, request/reply round trip", s,
                  unit, "part=" + part + " messages=" + std::to_string(n), "caf");
    return 0;
}
