// `mailroom node --name N [--listen EP]... [--connect EP]... [--serve echo|pricing]...`: runs a
// node in an environment until SIGINT/SIGTERM or --for, serving the built-in objects, logging
// its peers, and printing its figures and the books at the end; with --request it is a client
// that sends --count requests and says how each ended. With --secret-key (and --allow-dir,
// --server-key) it speaks CURVE; --allow-null-remote lets a node without keys use remote endpoints. `mailroom node keygen --out DIR --name
// NAME [--force]`: a node's CURVE key pair as key files (NAME.key, the secret, mode 0600;
// NAME.pub, the public key, mode 0644). See docs/nodes.md.

#include "node.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#if MAILROOM_TOOL_WITH_NET
#include <mailroom/env/environment.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/net/node.hpp>
#include <mailroom/net/security.hpp>
#include <mailroom/session/session.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <csignal>
#include <memory>
#include <mutex>
#include <vector>

#include <pthread.h>
#include <signal.h>

#include "node_types.hpp"
#endif

namespace mailroom::tool {

namespace {

void print_usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: mailroom node --name NAME [--listen EP]... [--connect EP]... [--serve echo|pricing]...\n"
                 "                     [--for SECONDS] [--heartbeat MS]\n"
                 "                     [--secret-key FILE [--allow-dir DIR [--watch-allow-dir]] [--server-key FILE]]\n"
                 "                     [--allow-null-remote]\n"
                 "       mailroom node --name NAME --connect EP --request OBJECT [--count N] [--timeout MS]\n"
                 "       mailroom node keygen --out DIR --name NAME [--force]\n"
                 "\n"
                 "The runner starts a node named NAME and prints \"READY <endpoint>...\" once it listens\n"
                 "(port 0 resolved), then a line per peer event (\"peer up|suspect|down NAME ADDRESS\").\n"
                 "  --listen EP     bind EP (tcp://127.0.0.1:0 picks a free port); repeatable\n"
                 "  --connect EP    dial EP, and again whenever it is lost; repeatable\n"
                 "  --serve echo    export \"echo\": replies with the text it gets (mailroom.text)\n"
                 "  --serve pricing export \"pricing/quote\": a quote (mailroom.quote) for a symbol\n"
                 "                  (mailroom.quote_request)\n"
                 "  --for SECONDS   stop after SECONDS (default: on SIGINT or SIGTERM only)\n"
                 "  --heartbeat MS  heartbeat interval (default 1000); a silent peer is suspected\n"
                 "                  after about 3 intervals and down 2 intervals later\n"
                 "  --request OBJ   client: send --count requests (default 1) to OBJ on the first\n"
                 "                  peer up, each with --timeout MS (default 5000), print how many\n"
                 "                  ended replied, rejected and abandoned; exit 1 unless all replied\n"
                 "Security (without --secret-key: no authentication nor encryption, local endpoints only):\n"
                 "  --secret-key FILE  this node's secret key (NAME.key of keygen): CURVE on every endpoint\n"
                 "  --allow-dir DIR    let in the nodes whose NAME.pub is in DIR, each as node NAME;\n"
                 "                  SIGHUP reads DIR again (new files let in, changed keys rotated,\n"
                 "                  removed files revoked) and prints what changed\n"
                 "  --watch-allow-dir  read DIR again by itself whenever something in it changes\n"
                 "  --server-key FILE  the public key (NAME.pub) of the node(s) --connect dials\n"
                 "  --allow-null-remote  without keys, allow remote endpoints anyway (anyone who reaches\n"
                 "                  the port gets in, and everything crosses the network in clear)\n"
                 "On stopping it prints the node's figures and the environment's books.\n"
                 "Exit codes: 0 done, 1 failed (a listen, a request), 2 bad arguments.\n"
                 "\n"
                 "keygen writes a CURVE key pair for node NAME:\n"
                 "  DIR/NAME.key   the secret key (mode 0600): stays on this node\n"
                 "  DIR/NAME.pub   the public key (mode 0644): copy it into the allow-list\n"
                 "                 directory of every node that this node may connect to\n"
                 "  --out DIR      where to write them (made, mode 0700, if missing)\n"
                 "  --name NAME    the node's name: [A-Za-z0-9._:-], 1 to 255 characters\n"
                 "  --force        replace existing key files (refused otherwise)\n"
                 "Exit codes: 0 written, 1 not written (files exist, I/O error), 2 bad arguments.\n");
}

int keygen(int argc, char** argv) {
    std::string out_dir;
    std::string name;
    bool force = false;
    for (int i = 0; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](std::string& into) {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "mailroom node keygen: %s needs a value\n", a.c_str());
                return false;
            }
            into = argv[++i];
            return true;
        };
        if (a == "-h" || a == "--help" || a == "help") {
            print_usage(stdout);
            return 0;
        } else if (a == "--out") {
            if (!value(out_dir)) return 2;
        } else if (a == "--name") {
            if (!value(name)) return 2;
        } else if (a == "--force") {
            force = true;
        } else {
            std::fprintf(stderr, "mailroom node keygen: unknown argument '%s' (try: mailroom node --help)\n", a.c_str());
            return 2;
        }
    }
    if (out_dir.empty() || name.empty()) {
        std::fprintf(stderr, "mailroom node keygen: --out DIR and --name NAME are both needed\n");
        return 2;
    }
#if MAILROOM_TOOL_WITH_NET
    try {
        net::check_node_name(name);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mailroom node keygen: %s\n", e.what());
        return 2;
    }
    namespace fs = std::filesystem;
    try {
        fs::path dir(out_dir);
        std::error_code ec;
        if (!fs::exists(dir, ec)) {
            fs::create_directories(dir);
            fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
        }
        fs::path secret = dir / (name + ".key");
        fs::path pub = dir / (name + ".pub");
        net::curve_keypair keys = net::curve_keypair::generate();
        net::write_key_files(keys, name, secret, pub, {.overwrite = force});
        std::printf("wrote %s (secret key, mode 0600) and %s (public key, mode 0644)\n"
                    "public key of node '%s': %s\n",
                    secret.c_str(), pub.c_str(), name.c_str(), keys.public_key.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mailroom node keygen: %s\n", e.what());
        return 1;
    }
#else
    std::fprintf(stderr, "mailroom node keygen: this mailroom was built without the net layer "
                         "(libzmq, cppzmq, msgpack-cxx: bash tools/setup.sh installs them)\n");
    return 2;
#endif
}

// ---- the node runner -------------------------------------------------------------------------

#if MAILROOM_TOOL_WITH_NET

struct runner_args {
    std::string name;
    std::vector<std::string> listen, connect, serve;
    double run_for = 0;  // seconds; 0: until SIGINT/SIGTERM
    std::string request_object;
    long count = 1;
    long timeout_ms = 5000;
    long heartbeat_ms = 1000;
    std::string secret_key, allow_dir, server_key;
    bool allow_null_remote = false;
    bool watch_allow_dir = false;
};

bool parse_number(const char* s, double& out) {
    char* end = nullptr;
    out = std::strtod(s, &end);
    return end != s && *end == '\0' && out >= 0;
}

// 0: parsed; otherwise the exit code (2: bad arguments).
int parse_runner(int argc, char** argv, runner_args& a) {
    for (int i = 0; i < argc; ++i) {
        std::string arg = argv[i];
        const char* v = nullptr;
        auto value = [&] {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "mailroom node: %s needs a value\n", arg.c_str());
                return false;
            }
            v = argv[++i];
            return true;
        };
        auto number = [&](double& out) {
            if (!value()) return false;
            if (!parse_number(v, out)) {
                std::fprintf(stderr, "mailroom node: %s wants a number >= 0, not '%s'\n", arg.c_str(), v);
                return false;
            }
            return true;
        };
        double d = 0;
        if (arg == "--name") {
            if (!value()) return 2;
            a.name = v;
        } else if (arg == "--listen") {
            if (!value()) return 2;
            a.listen.emplace_back(v);
        } else if (arg == "--connect") {
            if (!value()) return 2;
            a.connect.emplace_back(v);
        } else if (arg == "--serve") {
            if (!value()) return 2;
            if (std::strcmp(v, "echo") != 0 && std::strcmp(v, "pricing") != 0) {
                std::fprintf(stderr, "mailroom node: --serve echo or --serve pricing, not '%s'\n", v);
                return 2;
            }
            a.serve.emplace_back(v);
        } else if (arg == "--for") {
            if (!number(a.run_for)) return 2;
        } else if (arg == "--request") {
            if (!value()) return 2;
            a.request_object = v;
        } else if (arg == "--count") {
            if (!number(d)) return 2;
            a.count = static_cast<long>(d);
        } else if (arg == "--timeout") {
            if (!number(d)) return 2;
            a.timeout_ms = static_cast<long>(d);
        } else if (arg == "--secret-key") {
            if (!value()) return 2;
            a.secret_key = v;
        } else if (arg == "--allow-dir") {
            if (!value()) return 2;
            a.allow_dir = v;
        } else if (arg == "--watch-allow-dir") {
            a.watch_allow_dir = true;
        } else if (arg == "--server-key") {
            if (!value()) return 2;
            a.server_key = v;
        } else if (arg == "--allow-null-remote") {
            a.allow_null_remote = true;
        } else if (arg == "--heartbeat") {
            if (!number(d) || d < 1) {
                std::fprintf(stderr, "mailroom node: --heartbeat wants milliseconds >= 1\n");
                return 2;
            }
            a.heartbeat_ms = static_cast<long>(d);
        } else {
            std::fprintf(stderr, "mailroom node: unknown argument '%s' (try: mailroom node --help)\n", arg.c_str());
            return 2;
        }
    }
    if (a.name.empty()) {
        std::fprintf(stderr, "mailroom node: --name NAME is needed (try: mailroom node --help)\n");
        return 2;
    }
    if (a.secret_key.empty() && (!a.allow_dir.empty() || !a.server_key.empty())) {
        std::fprintf(stderr, "mailroom node: --allow-dir and --server-key need --secret-key FILE\n");
        return 2;
    }
    if (a.watch_allow_dir && a.allow_dir.empty()) {
        std::fprintf(stderr, "mailroom node: --watch-allow-dir needs --allow-dir DIR\n");
        return 2;
    }
    if (!a.secret_key.empty() && !a.connect.empty() && a.server_key.empty()) {
        std::fprintf(stderr, "mailroom node: with --secret-key, --connect needs --server-key FILE (the public key "
                             "of the node it dials)\n");
        return 2;
    }
    if (!a.request_object.empty() && a.connect.empty()) {
        std::fprintf(stderr, "mailroom node: --request needs --connect ENDPOINT\n");
        return 2;
    }
    return 0;
}

// One line at a time on stdout, flushed: the lines are read by scripts and tests.
std::mutex out_mutex;
void say(const std::string& line) {
    std::lock_guard g(out_mutex);
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

void print_report(const net::node& n, const environment& env) {
    const net::node_stats s = n.stats();
    const named_stats ns = named_stats_of(env);
    const environment_stats e = env.stats();
    say("node " + n.name() + ": requests out " + std::to_string(s.requests_out) + " (replied " +
        std::to_string(s.requests_replied) + ", rejected " + std::to_string(s.requests_rejected) +
        ", abandoned " + std::to_string(s.requests_abandoned) + "), served " + std::to_string(s.requests_served) +
        " requests and " + std::to_string(s.sends_served) + " messages (refused " +
        std::to_string(s.served_refused) + "), sends out " + std::to_string(s.sends_out) + " (lost " +
        std::to_string(s.sends_lost) + "), frames rejected " + std::to_string(s.frames_rejected) +
        ", peers up " + std::to_string(s.peers_up) + " suspect " + std::to_string(s.peers_suspect) + " down " +
        std::to_string(s.peers_down) + " (of them said BYE " + std::to_string(s.peers_left) + "), bytes in " + std::to_string(s.bytes_in) + " out " +
        std::to_string(s.bytes_out));
    say("security " + n.name() + ": " + (n.public_key().empty() ? "none (NULL)" : "CURVE, public key " + n.public_key()) +
        "; allowed " + std::to_string(s.zap.allowed_curve) + ", refused: unknown key " +
        std::to_string(s.zap.refused_unknown_key) + ", other ZAP " +
        std::to_string(s.zap.refused() - s.zap.refused_unknown_key) + ", wrong node in HELLO " +
        std::to_string(s.hello_refused_wrong_node) + ", handshake failed: mechanism " +
        std::to_string(s.handshake_failed_mechanism) + " protocol " + std::to_string(s.handshake_failed_protocol) +
        " auth " + std::to_string(s.handshake_failed_auth) + " other " + std::to_string(s.handshake_failed_other));
    say("named: requests posted " + std::to_string(ns.requests_posted) + ", replied " +
        std::to_string(ns.requests_replied) + ", rejected " + std::to_string(ns.requests_rejected) +
        ", abandoned " + std::to_string(ns.requests_abandoned) + ", replies orphaned " +
        std::to_string(ns.replies_orphaned));
    const std::uint64_t outcomes = e.messages_delivered + e.messages_lost + e.messages_ignored +
                                   e.messages_discarded + e.messages_cancelled + e.messages_dropped;
    say("books: sent " + std::to_string(e.messages_sent) + " = delivered " + std::to_string(e.messages_delivered) +
        " + lost " + std::to_string(e.messages_lost) + " + ignored " + std::to_string(e.messages_ignored) +
        " + discarded " + std::to_string(e.messages_discarded) + " + cancelled " +
        std::to_string(e.messages_cancelled) + " + dropped " + std::to_string(e.messages_dropped) +
        (outcomes == e.messages_sent ? " (balanced)" : " (NOT balanced)"));
}

// SIGHUP: the allow-list directory read again; what changed is printed, a failure too (the node
// carries on with the allow-list it had).
void reload_allow_list(net::node& n, const std::string& dir) {
    if (dir.empty()) {
        say("SIGHUP: no --allow-dir to read again");
        return;
    }
    try {
        say("allow-list reloaded: " + net::to_string(n.reload_allow_list()));
    } catch (const std::exception& e) {
        say(std::string("allow-list not reloaded: ") + e.what());
    }
}

int run_runner(const runner_args& a) {
    // SIGINT, SIGTERM and SIGHUP are blocked in every thread (the environment's threads inherit
    // this mask) and taken with sigtimedwait on this thread: no handler runs, nothing to make safe.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    environment env(environment_options{.name = a.name, .log = [](std::string_view s) {
                                            say("log: " + std::string(s));
                                        }});
    session s(env, session_options{.name = "node-" + a.name});
    net::node_options o;
    o.types = node_types();
    // Detection scales with the heartbeat: suspected after a few missed beats, down soon after.
    o.heartbeat_interval = std::chrono::milliseconds(a.heartbeat_ms);
    o.acceptable_heartbeat_pause = std::chrono::milliseconds(a.heartbeat_ms * 3);
    o.min_std_deviation = std::chrono::milliseconds(std::max(1L, a.heartbeat_ms / 10));
    o.down_after = std::chrono::milliseconds(a.heartbeat_ms * 2);
    o.hello_timeout = std::chrono::milliseconds(std::max(200L, a.heartbeat_ms * 2));
    o.reconnect_min = std::chrono::milliseconds(std::max(10L, a.heartbeat_ms / 10));
    o.reconnect_max = std::chrono::milliseconds(std::max(100L, a.heartbeat_ms * 2));
    o.security.secret_key_file = a.secret_key;
    o.security.allow_list_dir = a.allow_dir;
    o.security.watch_allow_list_dir = a.watch_allow_dir;
    o.security.allow_null_remote = a.allow_null_remote;
    net::connect_options dial;
    if (!a.server_key.empty()) dial.server_public_key = net::read_public_key_file(a.server_key);
    net::node n(env, a.name, std::move(o));

    std::mutex first_m;
    std::condition_variable first_cv;
    std::string first_peer;
    event_handle peers = n.subscribe_peers(s, [&](const net::peer_event& e) {
        say(std::string("peer ") + net::to_string(e.state) + " " + e.peer +
            (e.address.empty() ? "" : " " + e.address));
        if (e.state == net::peer_state::up) {
            std::lock_guard g(first_m);
            if (first_peer.empty()) first_peer = e.peer;
            first_cv.notify_all();
        }
    });

    std::vector<named_handle> served;
    for (const auto& what : a.serve) {
        if (what == "echo") {
            served.push_back(register_named(s, "echo", [](incoming& in) {
                if (in.header().request) in.reply<text_message>(in.as<text_message>());
            }));
            n.export_objects("echo");
        } else {
            served.push_back(register_named(s, "pricing/quote", [](incoming& in) {
                const auto& q = in.as<quote_request>();
                if (q.symbol.empty()) return in.reject("no symbol");
                in.reply<quote_reply>(quote_reply{q.symbol, price_of(q.symbol)});
            }));
            n.export_objects("pricing/quote");
        }
    }
    std::vector<std::string> bound;
    for (const auto& ep : a.listen) bound.push_back(n.listen(ep));
    // READY before the first dial, as the usage says: a peer that comes up at once must not
    // print its line before it (a reader that waits for READY would skip that line).
    std::string ready = "READY";
    for (const auto& ep : bound) ready += " " + ep;
    say(ready);
    for (const auto& ep : a.connect) n.connect(ep, dial);

    int code = 0;
    if (!a.request_object.empty()) {
        // Client mode: the requests go to the object on the first peer that comes up.
        std::string peer;
        {
            std::unique_lock g(first_m);
            first_cv.wait_for(g, std::chrono::milliseconds(std::max(a.timeout_ms, 1000L)),
                              [&] { return !first_peer.empty(); });
            peer = first_peer;
        }
        if (peer.empty()) {
            say("no peer came up; no request sent");
            code = 1;
        } else {
            const std::string target = peer + "/" + a.request_object;
            const send_options so{.timeout = std::chrono::milliseconds(a.timeout_ms)};
            std::vector<outgoing<quote_reply>> quotes;
            std::vector<outgoing<text_message>> texts;
            const bool quote = a.request_object == "pricing/quote";
            for (long i = 0; i < a.count; ++i) {
                if (quote)
                    quotes.push_back(request<quote_reply>(env, target, quote_request{"SYM" + std::to_string(i % 10)}, so));
                else
                    texts.push_back(request<text_message>(env, target, text_message{"hello " + std::to_string(i)}, so));
            }
            long by_state[5] = {0, 0, 0, 0, 0};
            auto tally = [&](auto& rs) {
                for (auto& r : rs) {
                    r.wait_for(std::chrono::milliseconds(a.timeout_ms) + std::chrono::seconds(5));
                    ++by_state[static_cast<int>(r.state())];
                }
            };
            tally(quotes);
            tally(texts);
            say("requests to " + target + ": " + std::to_string(a.count) + " sent, replied " +
                std::to_string(by_state[static_cast<int>(request_state::replied)]) + ", rejected " +
                std::to_string(by_state[static_cast<int>(request_state::rejected)]) + ", abandoned " +
                std::to_string(by_state[static_cast<int>(request_state::abandoned)]) + ", not final " +
                std::to_string(by_state[0] + by_state[1]));
            if (by_state[static_cast<int>(request_state::replied)] != a.count) code = 1;
        }
    } else {
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(a.run_for));
        for (;;) {
            int sig = 0;
            if (a.run_for > 0) {
                const auto left = std::max(std::chrono::nanoseconds(0), deadline - std::chrono::steady_clock::now());
                timespec wait{};
                wait.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000);
                wait.tv_nsec = static_cast<long>(left.count() % 1'000'000'000);
                sig = sigtimedwait(&stop_signals, nullptr, &wait);
            } else {
                sig = sigwaitinfo(&stop_signals, nullptr);
            }
            if (sig == SIGINT || sig == SIGTERM) {
                say(std::string("stopping on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
                break;
            }
            if (sig == SIGHUP) {
                reload_allow_list(n, a.allow_dir);
                continue;
            }
            if (sig < 0 && errno == EINTR) continue;  // SIGSTOP/SIGCONT and the like: not a stop
            if (sig < 0 && errno == EAGAIN) {
                char after[64];
                std::snprintf(after, sizeof after, "stopping after %g s", a.run_for);
                say(after);
                break;
            }
        }
    }
    peers.shutdown();
    for (auto& h : served) h.shutdown();
    n.stop();
    print_report(n, env);
    return code;
}

#endif  // MAILROOM_TOOL_WITH_NET

}  // namespace

int run_node(int argc, char** argv) {
    if (argc >= 1 && (std::strcmp(argv[0], "-h") == 0 || std::strcmp(argv[0], "--help") == 0 ||
                      std::strcmp(argv[0], "help") == 0)) {
        print_usage(stdout);
        return 0;
    }
    if (argc >= 1 && std::strcmp(argv[0], "keygen") == 0) return keygen(argc - 1, argv + 1);
#if MAILROOM_TOOL_WITH_NET
    runner_args a;
    if (int bad = parse_runner(argc, argv, a)) return bad;
    try {
        return run_runner(a);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mailroom node: %s\n", e.what());
        return 1;
    }
#else
    std::fprintf(stderr, "mailroom node: this mailroom was built without the net layer "
                         "(libzmq, cppzmq, msgpack-cxx: bash tools/setup.sh installs them)\n");
    return 2;
#endif
}

}  // namespace mailroom::tool
