// The node: one I/O thread per node owns every ZeroMQ socket (Debian's libzmq 4.3.4 has no
// thread-safe socket). Requests and one-way messages to a peer go through that peer's send
// queue (peer_queue: bounded, lock-free for the sender, drained into BATCH frames); other work
// (listen, connect, answers to served requests, requests waiting for a peer) goes through a
// mutex-guarded command queue. Both wake the I/O thread with an eventfd that it polls beside
// the sockets' descriptors; a send queue wakes it only when it was empty (queued_wake).
//
// The I/O thread holds io_lock_ whenever it is not asleep in poll(), and everything it owns
// (sockets, peers) is under that lock. A sender whose frame is the first for a quiet peer, and
// a thread answering a served request, take the lock with try_lock while the I/O thread sleeps
// and hand the frame to the socket themselves (borrowed_io): a round trip then wakes neither
// node's I/O thread on its way out. Since a socket's descriptor only says "look again" and any
// use of the socket may read that signal, such a thread looks at the socket's ZMQ_EVENTS when
// done and wakes the I/O thread if it found something for it (settle()).
//
// Socket shape: one ROUTER for everything that connects to this node (bound to each listen()
// endpoint; ZMQ_ROUTER_MANDATORY, so a frame for a peer that is gone fails with EHOSTUNREACH,
// counted, instead of vanishing), and one DEALER per connect(). A peer is one connection: the
// dialling side sends HELLO on its DEALER, the listening side answers with its own HELLO on
// the ROUTER (to the routing id the first one came from), and both directions of that pair
// then carry every frame between the two nodes. A peer is known by its node name.
//
// Peers are watched with application HEARTBEATs (each feeds that peer's phi-accrual detector)
// beside ZMTP's heartbeats (which drop a dead TCP connection inside libzmq but tell nobody:
// no draft API, no disconnect message). Suspected (phi over the threshold) for down_after, a
// peer is down: every request in flight to it is abandoned ("peer 'x' lost"), the dialling side
// closes its DEALER and dials again after the back-off, and a new HELLO brings the peer up.
//
// Requests across the wire: request<R>(env, "b/calc", ...) misses every local name; the named
// layer's remote router (this node) takes it, encodes the frame on the caller's thread and
// queues it (posted); the I/O thread hands it to the socket (transmitted) and lists it under
// its peer until a REPLY or REJECT comes (replied / rejected with the remote reason), or the
// peer is lost or the node stops (abandoned). Served requests are local requests made by the
// node (any reply type) whose continuation queues the answer back to the peer.
//
// Security: a node with a secret key speaks CURVE on every socket and has a ZeroMQ context of
// its own, because the ZAP handler is one per context (inproc://zeromq.zap.01) and answers for
// this node's allow-list alone. The handler is bound before the first listen, driven from the
// poll loop below and closed after the sockets. The ROUTER asks it about every connection; the
// name a key is allowed under comes with each message as its User-Id, and a HELLO that gives
// another name is refused. A node without keys speaks NULL on the process-wide context (so that
// inproc:// reaches between such nodes) and only on local endpoints unless told otherwise.
// Handshakes that fail before ZAP is asked (a NULL client to a CURVE node) are counted from a
// socket monitor on the ROUTER and on each DEALER.

#include <mailroom/net/node.hpp>

#include <mailroom/core/handle_access.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/named/remote_router.hpp>
#include <mailroom/net/failure_detector.hpp>
#include <mailroom/net/frame.hpp>
#include <mailroom/net/node_test_access.hpp>
#include <mailroom/net/peer_queue.hpp>
#include <mailroom/net/send_buffers.hpp>

#include <zmq.h>

#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <future>
#include <optional>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

namespace mailroom::net {

std::string to_string(const allow_list_changes& c) {
    auto names = [](const std::vector<std::string>& v) {
        std::string out;
        for (auto& x : v) {
            if (!out.empty()) out += ',';
            out += x;
        }
        return out.empty() ? std::string("-") : out;
    };
    return "added " + names(c.added) + " changed " + names(c.changed) + " removed " + names(c.removed);
}

const char* to_string(peer_state s) noexcept {
    switch (s) {
        case peer_state::up: return "up";
        case peer_state::suspect: return "suspect";
        case peer_state::down: return "down";
    }
    return "?";
}

namespace internal_node {

using internal::envelope_ref;
using internal::frame;
using internal::frame_kind;
using internal::reject_reason;
using internal::request_core;
using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// One ZeroMQ context for every node of the process, so that inproc:// reaches between them;
// terminated when the last node let go of it.
std::shared_ptr<void> process_context() {
    static std::mutex lock;
    static std::weak_ptr<void> shared;
    std::lock_guard g(lock);
    if (auto c = shared.lock()) return c;
    void* ctx = zmq_ctx_new();
    if (!ctx) throw error(std::string("node: zmq_ctx_new failed: ") + zmq_strerror(zmq_errno()));
    std::shared_ptr<void> c(ctx, [](void* p) { zmq_ctx_term(p); });
    shared = c;
    return c;
}

// A name a peer sent: what check_name accepts (not `*`: the local `*` is reached through the
// names no object has), so that a hostile name is refused before it reaches the registry.
bool valid_target(std::string_view name) noexcept {
    try {
        check_name(name);
        return true;
    } catch (...) {
        return false;
    }
}

bool matches(std::string_view pattern, std::string_view name) noexcept {
    // '*' matches any run of characters; iterative with one backtrack point.
    std::size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
    while (n < name.size()) {
        if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            mark = n;
        } else if (p < pattern.size() && pattern[p] == name[n]) {
            ++p;
            ++n;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            n = ++mark;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept { c.fetch_add(n, std::memory_order_relaxed); }

// Why a frame the peer's socket refused (ROUTER_MANDATORY: its connection is gone) failed.
std::string unreachable(std::string_view peer_name) {
    return "peer '" + std::string(peer_name) + "' unreachable (its socket refused the frame)";
}

// What a peer's sender is called here: "peer/source", built in one allocation at most.
std::string remote_source(std::string_view peer_name, std::string_view source) {
    std::string s;
    s.reserve(peer_name.size() + 1 + source.size());
    s.append(peer_name).append(1, '/').append(source);
    return s;
}

}  // namespace

/// The node's counters: written by any thread (relaxed), read by stats().
struct counters {
    static constexpr int kinds = static_cast<int>(frame_kind::bye) + 1;  // indexed by frame_kind
    std::atomic<std::uint64_t> in[kinds]{}, out[kinds]{};
    std::atomic<std::uint64_t> hello_refused_wrong_node{0}, hello_refused_revoked{0}, handshake_failed_mechanism{0}, handshake_failed_protocol{0},
        handshake_failed_auth{0}, handshake_failed_other{0};
    std::atomic<std::uint64_t> bytes_in{0}, bytes_out{0}, frames_from_unknown{0}, hello_refused{0}, peers_up{0},
        peers_suspect{0}, peers_down{0}, peers_forgotten{0}, requests_out{0}, requests_replied{0}, requests_rejected{0},
        requests_abandoned{0}, rej_reason[5]{}, replies_orphaned{0}, sends_out{0}, sends_lost{0},
        requests_served{0}, sends_served{0}, served_refused{0}, answers_lost{0}, unreachable{0}, sends_dropped{0},
        requests_refused_by_queue{0}, frames_handed_back{0}, flushed_by_sender{0}, answers_by_server_thread{0},
        peers_left{0}, allow_list_reloads{0},
        allow_list_reloads_failed{0};
};

/// Work handed to the I/O thread.
struct command {
    enum kind_t : std::uint8_t { frame_out, answer, listen, connect, revoke } kind = frame_out;
    std::string peer;               // frame_out, answer, revoke: the peer's name
    std::vector<std::byte> bytes;   // frame_out, answer: a whole frame
    request_core* req = nullptr;    // frame_out of a REQUEST: a reference
    std::uint64_t req_id = 0;
    std::uint64_t incarnation = 0;  // answer: the peer's incarnation that asked
    bool wait_for_peer = false;
    std::string endpoint;           // listen, connect
    std::string server_key;         // connect (CURVE): the server's public key
    std::string expected_peer;      // connect: the name its HELLO must give ("" any)
    std::shared_ptr<std::promise<std::string>> done;  // listen, connect, revoke
};

// What a sender needs of a peer beyond its state, made once per incarnation (at its HELLO):
// one reference for route() to copy under view_lock_.
struct send_path {
    // The local registry's entries that the peer announced under the same wire id and name,
    // sorted by address: the types it can decode.
    std::vector<const net::type_entry*> agreed;
    std::shared_ptr<internal::peer_queue> queue;  // its send queue (closed once it is lost)

    bool knows(const net::type_entry* te) const noexcept { return std::binary_search(agreed.begin(), agreed.end(), te); }
};

/// What the callers' threads may see of a peer (the I/O thread keeps the rest).
struct peer_view {
    peer_state state = peer_state::up;
    std::string address;
    std::shared_ptr<const send_path> path;
};

struct connection;

/// A peer, on the I/O thread only.
struct peer {
    std::string name;
    std::string address;
    std::uint64_t incarnation = 0;
    std::string rid;              // its routing id on the ROUTER, when it dialled us
    connection* conn = nullptr;   // the DEALER, when we dialled it
    peer_state state = peer_state::up;
    internal::phi_accrual_detector detector;
    clock::time_point suspect_since{};
    clock::time_point down_since{};  // when it went down (forget_down_peers_after)
    std::uint64_t hb_seq = 0;
    std::uint32_t served = 0;
    std::uint8_t version = 1;  // the protocol both speak: the lower of the two HELLOs'
    struct flight {
        request_core* req;  // a reference
        bool final_seen = false;
    };
    std::unordered_map<std::uint64_t, flight> inflight;
    // Its send queue: callers push (through peer_view's send_path), this thread drains. A new
    // one per incarnation; closed (everything handed back) when the peer is lost or the node stops.
    std::shared_ptr<internal::peer_queue> queue;
    std::shared_ptr<const send_path> path;  // its types and queue, for senders
    // What flush() drained from the queue and its socket did not take yet because the pipe was
    // full (EAGAIN at the high-water mark): sent first, before anything more is drained, once
    // the socket has room (the I/O thread polls it for POLLOUT meanwhile). One BATCH at most, so
    // what waits outside the queue's bounds stays bounded; handed back with the queue.
    internal::peer_batch held;
    bool pipe_full = false;
    // Answers (replies, rejects) and a heartbeat that met the full pipe: sent first, in order,
    // once it has room (never counted unreachable for that). At most max_served_per_peer
    // answers wait; one more is lost (answers_lost).
    std::deque<std::vector<std::byte>> owed_answers;
    bool owed_heartbeat = false;
    // Requests that waited for it to come back (wait_for_peer) and met the full pipe: sent
    // after the owed answers, in order.
    std::deque<command> owed_frames;
    // When its socket last took a frame for it (try_send): a frame queued for it after a
    // quieter spell than options_.send_now_after goes out on its sender's thread (send_now).
    clock::time_point last_out{};

    peer(internal::phi_accrual_options o) : detector(o) {}
};

/// A connect(): one DEALER, redialled after the back-off while its peer is down.
struct connection {
    std::string endpoint;
    std::string server_key;     // CURVE: the server's public key
    std::string expected_peer;  // the name its HELLO must give ("" any)
    void* socket = nullptr;
    void* monitor = nullptr;  // the PAIR that reads the DEALER's handshake events
    bool wants_out = false;   // the I/O thread sleeps waiting for room on it (a full pipe)
    enum { waiting_hello, up, backoff } state = backoff;
    clock::time_point deadline{};  // waiting_hello: the HELLO's; backoff: the next attempt
    internal::reconnect_backoff backoff_delay;
    peer* p = nullptr;
    std::string peer_name;  // the name of the last peer that said HELLO on it
    connection(std::string e, internal::backoff_options o, std::function<std::uint64_t()> rnd)
        : endpoint(std::move(e)), backoff_delay(o, std::move(rnd)) {}
};

class node_core;

/// A received ZeroMQ message, which the runs of one-way messages it carries point into
/// (internal::deferred_batch: no copy of their payloads). Freed by whichever lets go last: the
/// I/O thread or the threads of the objects the runs went to; it needs nothing of the node.
struct held_message {
    std::atomic<std::uint32_t> refs{1};
    zmq_msg_t msg;

    static void release(void* p) noexcept {
        auto* h = static_cast<held_message*>(p);
        if (h->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            zmq_msg_close(&h->msg);
            delete h;
        }
    }
};

// The socket lists of wait_events() (a handful of sockets: a linear search).
static bool listed(const std::vector<void*>& v, void* s) noexcept { return std::find(v.begin(), v.end(), s) != v.end(); }
static void unlist(std::vector<void*>& v, void* s) noexcept { v.erase(std::remove(v.begin(), v.end(), s), v.end()); }

// The node whose I/O thread this is (none elsewhere).
thread_local const node_core* tls_io_node = nullptr;

/// What a one-way message delivered still encoded (internal::deferred_body) needs when its
/// object's thread decodes it: the type registry its entry belongs to, and where a failure is
/// reported. One per node, owned by the environment's node_extension, so that it outlives
/// every delivery the node made (a handler runs only while the environment does), the node
/// itself included.
struct decode_sink {
    std::shared_ptr<const net::type_registry> types;  // keeps the deliveries' type entries
    std::weak_ptr<node_core> node;
    internal::env_core* env;
    std::string node_name;
};

// Decodes a one-way message on its object's thread (internal::deferred_body::decode_fn).
internal::envelope* decode_deferred(const void* type, void* context, std::span<const std::byte> bytes,
                                    const message_header& h) noexcept;

/// Stops the environment's nodes in its teardown, before the cooperations finish: nothing from
/// the network reaches an object while the environment tears down.
class node_extension final : public internal::env_extension {
public:
    static constexpr int phase = 50;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override;
    void wait_stopped() noexcept override;
    // Lists `n`, and makes its decode_sink (kept until the environment goes).
    decode_sink* add(const std::shared_ptr<node_core>& n, std::shared_ptr<const net::type_registry> types,
                     internal::env_core* env, const std::string& name) {
        auto sink = std::make_unique<decode_sink>(decode_sink{std::move(types), n, env, name});
        std::lock_guard g(lock);
        sinks.reserve(sinks.size() + 1);
        nodes.push_back(n);
        sinks.push_back(std::move(sink));
        return sinks.back().get();
    }
    static node_extension& of(internal::env_core& e) {
        return e.extension<node_extension>(&key, [] { return std::make_unique<node_extension>(); });
    }

private:
    std::vector<std::shared_ptr<node_core>> live();
    static constexpr int key = 0;
    std::mutex lock;
    std::vector<std::weak_ptr<node_core>> nodes;
    std::vector<std::unique_ptr<decode_sink>> sinks;
};

class node_core final : public internal::remote_router, public std::enable_shared_from_this<node_core> {
public:
    node_core(environment& env, std::string name, node_options options)
        : env_(env), core_(internal::core_of(env)), name_(std::move(name)), options_(std::move(options)) {}
    ~node_core() override;

    void start();
    void stop() noexcept;

    std::string listen(std::string_view endpoint) { return ask(command::listen, endpoint); }
    void check_listen(std::string_view endpoint) const {
        check_endpoint("listen on '" + std::string(endpoint) + "'", endpoint);
    }
    void connect(std::string_view endpoint, const connect_options& o);
    void allow(std::string_view public_key, std::string_view node_name);
    void revoke(std::string_view node_name);
    allow_list_changes reload_allow_list();
    allow_list_changes reload_locked(const std::string& what);  // reload_lock_ held
    void watched_reload();                                      // I/O thread
    void watched_change();                                      // I/O thread: the directory changed
    bool revoked(std::string_view node_name) const {
        std::lock_guard g(zap_lock_);
        return revoked_.count(node_name) != 0;
    }
    const std::string& public_key() const noexcept { return security_ ? security_->public_key() : no_key_; }
    void export_objects(std::string pattern) {
        std::lock_guard g(exports_lock_);
        exports_.push_back(std::move(pattern));
    }
    // The I/O thread's, per message served: whether `name` is a valid object name that an
    // export covers. Exports only grow, so the last name found stays covered and is answered
    // without the lock: a stream of frames to one object checks its name once.
    bool exported(std::string_view name) {
        if (!last_exported_.empty() && name == last_exported_) return true;
        if (!valid_target(name)) return false;
        std::lock_guard g(exports_lock_);
        for (auto& p : exports_)
            if (matches(p, name)) {
                last_exported_.assign(name);
                return true;
            }
        return false;
    }
    std::vector<std::string> endpoints() const {
        std::lock_guard g(view_lock_);
        return endpoints_;
    }
    std::vector<peer_info> peers() const {
        std::lock_guard g(view_lock_);
        std::vector<peer_info> v;
        for (auto& [n, p] : views_) v.push_back({n, p.state, p.address});
        return v;
    }
    bool wait_for_peer(std::string_view peer, std::chrono::nanoseconds timeout) const {
        std::unique_lock g(view_lock_);
        return view_changed_.wait_for(g, timeout, [&] {
            auto it = views_.find(std::string(peer));
            return it != views_.end() && it->second.state == peer_state::up;
        });
    }
    node_stats stats() const;

    bool route(std::string_view name, envelope_ref& body, request_core* r, const message_header& header,
               bool wait_for_peer) override;
    // A one-way message that did not decode on its object's thread (any thread).
    void refused_encoded(const message_header& h, const std::string& why) noexcept;
    void refused_payload(std::string_view peer_name, std::string_view target, const std::string& why) noexcept;

    const std::string& name() const noexcept { return name_; }
    mbox events_;

private:
    friend class node_extension;
    friend struct test_access;
    // ---- any thread ----
    bool push(command&& c);  // false once the node stopped (c untouched then)
    std::string ask(command::kind_t kind, std::string_view endpoint, std::string server_key = {},
                    std::string expected_peer = {});
    // Raises security_error naming the node and the endpoint when the settings refuse it.
    void check_endpoint(std::string_view what, std::string_view endpoint) const;
    void log(const std::string& text) const noexcept {
        try {
            core_->log("node '" + name_ + "': " + text);
        } catch (...) {
        }
    }
    // What peers send wrong, logged at most options_.log_lines_per_second of each kind per
    // second (a flood of bad input must not become a flood of log lines); the rest are counted
    // and summarised once the second is over (tick(), or the next line of the kind).
    enum class log_kind : std::uint8_t {
        rejected_message,    // did not decode
        refused_hello,       // a HELLO refused
        refused_connection,  // the ZAP handler, a failed handshake
        refused_delivery,    // a request or message for a name not exported, absent, undecodable
        failed_frame,        // handling a frame threw
        count_
    };
    void log(log_kind k, const std::string& text) noexcept;
    void flush_log_gates(clock::time_point now) noexcept;
    // Under log_gates_lock_: the summary of gate `k`'s suppressed lines ("" if none), and a new
    // window from `now`.
    std::string close_window(std::size_t k, clock::time_point now) noexcept;
    static void answered(void* arg) noexcept;  // a served request is final
    // The I/O thread's state held by another thread for a moment, while the I/O thread sleeps
    // (io_lock_): what is ready to go to a quiet peer goes out at once, without waking the
    // I/O thread on the way (a round trip pays every wake-up). Never on the I/O thread itself,
    // never while the sends are paused or the node stops.
    class borrowed_io;
    // A frame just queued for a peer whose queue was empty: flushed now on this thread when
    // the peer was quiet for options_.send_now_after and the I/O thread sleeps; otherwise the
    // I/O thread is woken to do it.
    void send_now(std::string_view peer_name, const internal::peer_queue& q) noexcept;
    // An answer to a served request, sent on this thread when nothing waits before it in the
    // command queue and the I/O thread sleeps (true), or left to the I/O thread (false).
    bool answer_now(command& c) noexcept;
    // After another thread used the peer's socket: the I/O thread is woken when that use read
    // what it sleeps for (a message to read, room it waits for) or left work undone (`more`).
    void settle(peer& p, bool more) noexcept;
    void wake() noexcept {  // any thread: the I/O thread's eventfd
        std::uint64_t one = 1;
        if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
    }

    // ---- the I/O thread (or the thread that borrowed it, borrowed_io) ----
    void run() noexcept;
    // zmq_poll's work, io_lock_ let go while the thread sleeps: the count of ready items.
    int wait_events(std::vector<zmq_pollitem_t>& items, std::size_t data_end, long timeout_ms,
                    std::unique_lock<std::mutex>& io);
    void handle(command& c);
    void drop_revoked(const std::string& name);  // I/O thread: the peer and the dialling
    void on_message(void* socket, connection* conn);
    void on_frame(peer& p, const frame& f);
    void on_hello(const frame& f, void* socket, connection* conn, const std::string& rid, const std::string& addr,
                  const char* user_id);
    void on_request(peer& p, const frame& f);
    void on_send(peer& p, const frame& f);
    void on_sends(peer& p, std::span<const frame> run);
    void on_answer(peer& p, const frame& f);
    // `full`: when given, a full pipe (EAGAIN) sets it and is not counted unreachable (the
    // caller keeps the frame and tries again).
    bool send_to_peer(peer& p, const std::byte* data, std::size_t n, bool* full = nullptr);
    // The same for what may wait for room: sent; full (the peer marked so, and the caller keeps
    // the frame, owed); or refused (the peer is unreachable, counted).
    enum class sent { yes, full, refused };
    sent try_send(peer& p, const std::byte* data, std::size_t n);
    // What was owed to a peer and will not go now (dropped, or the node stopped): answers
    // counted lost, frames and requests in flight given back to their requesters with `why`.
    void lose_owed(peer& p, const std::string& why) noexcept;
    // An answer to a served request, and a heartbeat: sent now, or owed until the full pipe has
    // room (then sent first by flush(), via send_owed(): false while the pipe is still full).
    void answer(peer& p, const std::byte* data, std::size_t n);
    void heartbeat(peer& p);
    bool send_owed(peer& p);
    void sent_frame(peer& p, command& c);  // a frame_out the socket took
    bool send_raw(void* socket, const std::string* rid, const std::byte* data, std::size_t n, bool* full = nullptr);
    void send_hello(void* socket, const std::string* rid);
    void tick(clock::time_point now);
    // Lets go of what only waits for peers that may never come back: requests that waited for
    // a down peer and became final meanwhile, and the peers forget_down_peers_after allows.
    void forget_sweep(clock::time_point now);
    void peer_now(peer& p, peer_state s);
    void drop_peer(peer& p, const std::string& why);
    // The first dial (from connect()) throws what failed, the socket-options hook's own
    // exception included; a redial logs it and backs off.
    void dial(connection& c, bool first = false);
    void publish(peer_state s, const std::string& peer, const std::string& address) noexcept;
    void update_view(const peer& p, bool erase = false);
    void finish_all(const std::string& why) noexcept;
    void abandon(request_core* r, const std::string& why) noexcept;  // takes the reference
    void lose(command& c, const std::string& why) noexcept;          // a frame_out that cannot go
    bool flush(peer& p);                                             // drains p's send queue; true: more
    void give_back(internal::outgoing_ptr m, const std::string& why) noexcept;  // a frame that did not go
    void close_queue(peer& p, const std::string& why) noexcept;
    bool refused_by_queue(internal::push_result pr, internal::outgoing_ptr& m, request_core* r,
                          std::string_view name, const std::string& peer_name);
    void* new_socket(int type, socket_role role, std::string_view endpoint, const std::string& server_key = {});
    void* new_monitor(void* socket, std::string_view endpoint) noexcept;  // nullptr when it cannot be had
    void on_monitor(void* monitor, const std::string& where);
    void close_dealer(connection& c) noexcept;
    internal::peer_queue_options queue_options() const {
        internal::peer_queue_options o;
        o.max_messages = options_.send_queue_messages;
        o.max_bytes = options_.send_queue_bytes;
        o.reaction = options_.send_reaction == send_overflow::drop    ? internal::overflow_reaction::drop
                     : options_.send_reaction == send_overflow::block ? internal::overflow_reaction::block
                                                                      : internal::overflow_reaction::reject;
        o.block_timeout = options_.send_block_timeout;
        return o;
    }
    internal::phi_accrual_options detector_options() const {
        internal::phi_accrual_options o;
        o.threshold = options_.suspect_phi;
        o.acceptable_heartbeat_pause = options_.acceptable_heartbeat_pause;
        o.min_std_deviation = options_.min_std_deviation;
        o.first_heartbeat_estimate = options_.heartbeat_interval;
        return o;
    }

    environment& env_;
    std::shared_ptr<internal::env_core> core_;
    std::string name_;
    node_options options_;
    std::shared_ptr<void> ctx_;
    int wake_fd_ = -1;
    // Security, fixed at start(): the endpoint policy and this node's keys (CURVE when curve_).
    std::optional<endpoint_security> security_;
    bool curve_ = false;
    static inline const std::string no_key_{};
    // The ZAP handler (CURVE only): made in start(), driven by the I/O thread, closed after its
    // sockets; after it is gone, stats() reports its last counters. Declared after ctx_, which
    // it must not outlive.
    mutable std::mutex zap_lock_;
    std::unique_ptr<zap_handler> zap_;
    zap_stats zap_final_{};
    std::map<std::string, std::string, std::less<>> allowed_in_code_;  // node name -> last key (zap_lock_)
    std::set<std::string, std::less<>> revoked_;                        // node::revoke, until allowed (zap_lock_)
    std::map<std::string, std::string, std::less<>> from_dir_;  // node name -> key, as last read from the directory (zap_lock_)
    std::mutex reload_lock_;                                     // one reload_allow_list() at a time
    // security.watch_allow_list_dir: the inotify descriptor the I/O thread polls, and the reload
    // it owes once the directory has been quiet for a moment (the I/O thread's).
    int watch_fd_ = -1;
    bool reload_pending_ = false;
    clock::time_point reload_due_{};

    // The queue of work for the I/O thread.
    std::mutex queue_lock_;
    std::vector<command> queue_;
    bool stopped_ = false;  // guarded by queue_lock_: no more work is taken

    std::mutex join_lock_;
    std::thread io_;
    // Held by the I/O thread except while it sleeps; by another thread only with try_lock
    // (borrowed_io). Everything the comments call the I/O thread's is under it.
    std::mutex io_lock_;
    bool io_done_ = false;  // under io_lock_: the I/O thread closed the sockets
    std::vector<pollfd> poll_fds_;       // wait_events()'s
    // wait_events(): the sockets past data_end whose last look found nothing (a socket looked
    // at never, a new one, may hold what its descriptor will not tell: a pipe is made awake).
    std::vector<void*> idle_;
    // The data sockets read to the end (ZMQ_EVENTS: nothing to read) and not sent on since:
    // wait_events() need not look at them before sleeping (their descriptors tell the rest).
    std::vector<void*> quiet_;
    std::uint32_t fds_skipped_ = 0;      // wait_events(): turns the descriptors were not polled
    bool router_wants_out_ = false;  // the I/O thread sleeps waiting for room on the ROUTER
    std::atomic<bool> stop_requested_{false};

    mutable std::mutex view_lock_;
    mutable std::condition_variable view_changed_;
    std::map<std::string, peer_view, std::less<>> views_;
    std::vector<std::string> endpoints_;

    std::mutex exports_lock_;
    std::vector<std::string> exports_;
    std::string last_exported_;  // the I/O thread's (exported())

    // Test hook: while set, the I/O thread leaves the send queues undrained (a peer that does
    // not drain, deterministically).
    std::atomic<bool> sends_paused_{false};
    std::atomic<bool> no_bye_{false};  // test_access::stop_without_bye
    std::atomic<bool> no_ticks_{false};  // test_access::sleep_without_ticks

    counters n_;
    std::array<std::atomic<std::uint64_t>, internal::frame_error_count> rejected_{};
    decode_sink* sink_ = nullptr;  // set before the I/O thread starts
    held_message* spare_ = nullptr;  // the I/O thread's: a holder no run took, for the next message
    held_message* held_ = nullptr;   // the I/O thread's: the message on_message() is handling
    // The I/O thread's: buffers for the BATCH frames it sends (send_buffers.hpp).
    send_buffers* buffers_ = send_buffers::make(std::size_t{64} << 10, 8);

    // The log gates (log(log_kind, ...)): any thread, under their lock.
    struct log_gate {
        clock::time_point window_start{};
        std::uint32_t written = 0;     // in this window
        std::uint64_t suppressed = 0;  // in this window
        std::string last;              // the last line suppressed
    };
    std::mutex log_gates_lock_;
    std::array<log_gate, static_cast<std::size_t>(log_kind::count_)> log_gates_{};
    std::atomic<bool> log_lines_pending_{false};  // a gate holds suppressed lines to summarise
    std::atomic<std::uint64_t> log_lines_suppressed_{0};

    // The I/O thread's own.
    void* router_ = nullptr;
    void* router_monitor_ = nullptr;
    std::uint64_t monitors_ = 0;
    std::vector<std::unique_ptr<connection>> conns_;
    std::map<std::string, std::unique_ptr<peer>, std::less<>> peers_;
    std::unordered_map<std::string, peer*> by_rid_;
    std::unordered_map<std::string, std::vector<command>> waiting_;  // requests waiting for their peer
    internal::frame_decoder decoder_;
    net::byte_buffer out_;
    std::uint64_t incarnations_ = 0;
    std::mt19937_64 random_{std::random_device{}()};
    clock::time_point next_heartbeat_{};
    std::uint32_t ticks_ = 0;
    clock::time_point next_sweep_{};  // forget_sweep()
};

// ---- the extension ----

std::vector<std::shared_ptr<node_core>> node_extension::live() {
    std::lock_guard g(lock);
    std::vector<std::shared_ptr<node_core>> v;
    for (auto& w : nodes)
        if (auto n = w.lock()) v.push_back(std::move(n));
    return v;
}

void node_extension::begin_stop() noexcept {
    try {
        for (auto& n : live()) {
            std::lock_guard g(n->queue_lock_);
            n->stop_requested_.store(true, std::memory_order_release);
            n->wake();
        }
    } catch (...) {
    }
}

void node_extension::wait_stopped() noexcept {
    try {
        for (auto& n : live()) n->stop();
    } catch (...) {
    }
}

// ---- life ----

node_core::~node_core() {
    if (io_.joinable()) {  // stopped by a thread that had borrowed the I/O thread's state (stop())
        if (io_.get_id() == std::this_thread::get_id()) {
            io_.detach();
        } else {
            stop_requested_.store(true, std::memory_order_release);
            wake();
            io_.join();
        }
    }
    delete spare_;
    buffers_->close();
    if (wake_fd_ >= 0) ::close(wake_fd_);
    if (watch_fd_ >= 0) ::close(watch_fd_);
}

void node_core::start() {
    if (!options_.types) throw usage_error("node '" + name_ + "': node_options::types is required (the message types it carries)");
    core_->check_not_stopping("making node", name_);
    { internal::peer_queue probe(name_ + "/*", queue_options()); }  // usage_error on limits out of range
    const security_options& so = options_.security;
    curve_ = so.mode == security_mode::curve && (!so.secret_key_file.empty() || !so.secret_key.empty());
    try {
        if (curve_) {
            security_.emplace(so);  // reads the key now: a bad file fails the node, not a later listen
        } else {
            if (so.watch_allow_list_dir)
                throw security_error("security.watch_allow_list_dir without a secret key: a node without keys lets no "
                                     "CURVE node in, so there is no allow-list to watch");
            if (!so.allow_list_dir.empty())
                throw security_error("an allow-list directory ('" + so.allow_list_dir.string() + "') " +
                                     (so.mode == security_mode::null
                                          ? std::string("with security mode null, which lets no CURVE node in")
                                          : std::string("but no secret key: give security.secret_key_file or secret_key")));
            security_options null_options = so;
            null_options.mode = security_mode::null;
            security_.emplace(std::move(null_options));
        }
    } catch (const security_error& e) {
        throw security_error("node '" + name_ + "': " + e.what());
    }
    if (curve_) {
        void* ctx = zmq_ctx_new();
        if (!ctx) throw error(std::string("node '") + name_ + "': zmq_ctx_new failed: " + zmq_strerror(zmq_errno()));
        ctx_ = std::shared_ptr<void>(ctx, [](void* p) { zmq_ctx_term(p); });
        zap_options z = security_->zap();
        z.log = [this](std::string_view line) { log(log_kind::refused_connection, std::string(line)); };
        zap_ = std::make_unique<zap_handler>(ctx, std::move(z));
        if (!so.allow_list_dir.empty()) {
            zap_->allow_directory(so.allow_list_dir);
            for (auto& e : read_allow_directory(so.allow_list_dir)) from_dir_[e.node_name] = e.public_key;
        }
        if (so.watch_allow_list_dir) {
            if (so.allow_list_dir.empty())
                throw security_error("node '" + name_ + "': security.watch_allow_list_dir without an allow_list_dir to watch");
            watch_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
            if (watch_fd_ < 0 ||
                ::inotify_add_watch(watch_fd_, so.allow_list_dir.c_str(),
                                    IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO |
                                        IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0)
                throw security_error("node '" + name_ + "': cannot watch the allow-list directory '" +
                                     so.allow_list_dir.string() + "': " + std::strerror(errno));
        }
    } else {
        ctx_ = process_context();
    }
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw error("node '" + name_ + "': eventfd failed: " + std::strerror(errno));
    events_ = make_mpmc_mbox(env_);
    internal::set_remote_router(*core_, shared_from_this());
    try {
        sink_ = node_extension::of(*core_).add(shared_from_this(), options_.types, core_.get(), name_);
        io_ = std::thread([this] { run(); });
    } catch (...) {
        internal::clear_remote_router(*core_, this);
        throw;
    }
}

void node_core::stop() noexcept {
    {
        std::lock_guard g(queue_lock_);
        stop_requested_.store(true, std::memory_order_release);
    }
    wake();
    {
        std::lock_guard g(join_lock_);
        if (io_.joinable()) {
            if (io_.get_id() == std::this_thread::get_id()) {
                io_.detach();  // the node's own thread let go of the last handle: it is on its way out
            } else if (tls_io_node == this) {
                // A thread that borrowed the I/O thread's state (borrowed_io) and stops the node
                // from inside it (a continuation it ran): the I/O thread waits for that lock, so
                // it is joined when the node goes (the caller holds a reference until then).
                internal::clear_remote_router(*core_, this);
                return;
            } else {
                io_.join();
            }
        }
    }
    internal::clear_remote_router(*core_, this);
}

bool node_core::push(command&& c) {
    bool was_empty;
    {
        std::lock_guard g(queue_lock_);
        if (stopped_ || stop_requested_.load(std::memory_order_relaxed)) return false;
        was_empty = queue_.empty();
        queue_.push_back(std::move(c));
    }
    if (was_empty) wake();
    return true;
}

void node_core::check_endpoint(std::string_view what, std::string_view endpoint) const {
    // No transport, or one libzmq has never had: not an endpoint at all, which zmq_bind or
    // zmq_connect reports (endpoint_error), whatever the security.
    const std::size_t sep = endpoint.find("://");
    if (sep == std::string_view::npos) return;
    static constexpr std::string_view transports[] = {"tcp", "ipc", "inproc", "pgm", "epgm", "tipc",
                                                       "vmci", "udp", "norm", "ws", "wss"};
    if (std::find(std::begin(transports), std::end(transports), endpoint.substr(0, sep)) == std::end(transports))
        return;
    try {
        security_->check(endpoint);
    } catch (const security_error& e) {
        std::string why = e.what();
        if (!curve_ && classify_endpoint(endpoint) == endpoint_reach::remote)
            why = "endpoint '" + std::string(endpoint) +
                  "' is remote, and this node has no keys: set security.secret_key_file (CURVE), or "
                  "security.allow_null_remote to accept no authentication and no encryption there";
        throw security_error("node '" + name_ + "': " + std::string(what) + ": " + why);
    }
}

void node_core::connect(std::string_view endpoint, const connect_options& o) {
    const std::string what = "connect to '" + std::string(endpoint) + "'";
    check_endpoint(what, endpoint);
    std::string key = o.server_public_key;
    std::string expected = o.peer;
    if (!expected.empty()) check_node_name(expected);
    auto fail = [&](const std::string& why) { throw security_error("node '" + name_ + "': " + what + ": " + why); };
    if (!curve_) {
        if (!key.empty()) fail("a server key is given, but this node has no keys (security.secret_key_file)");
        ask(command::connect, endpoint, {}, std::move(expected));
        return;
    }
    if (key.empty() && !expected.empty()) {
        const auto& dir = options_.security.allow_list_dir;
        std::error_code ec;
        if (!dir.empty() && std::filesystem::exists(dir / (expected + ".pub"), ec)) {
            key = read_public_key_file(dir / (expected + ".pub"));
        } else {
            std::lock_guard g(zap_lock_);
            if (auto it = allowed_in_code_.find(expected); it != allowed_in_code_.end()) key = it->second;
        }
        if (key.empty())
            fail("no public key of node '" + expected + "' (no " + expected +
                 ".pub in the allow-list directory, none allowed in code)");
    }
    if (key.empty())
        fail("CURVE needs the server's public key: connect_options::server_public_key, or "
             "connect_options::peer naming a node whose key this node allows");
    if (!is_z85_key(key))
        fail("the server's public key is not a Z85 CURVE key (" + std::to_string(key.size()) + " characters)");
    std::optional<std::string> allowed;
    {
        std::lock_guard g(zap_lock_);
        if (zap_) allowed = zap_->allowed_name(key);
    }
    if (allowed && !expected.empty() && *allowed != expected)
        fail("the server's key is allowed as node '" + *allowed + "', not as '" + expected + "'");
    if (allowed) expected = *allowed;
    ask(command::connect, endpoint, std::move(key), std::move(expected));
}

void node_core::allow(std::string_view public_key, std::string_view node_name) {
    if (!curve_)
        throw security_error("node '" + name_ + "': allow('" + std::string(node_name) +
                             "'): this node has no keys (security.secret_key_file), so it lets no CURVE node in");
    std::lock_guard g(zap_lock_);
    if (zap_) zap_->allow(public_key, node_name);
    allowed_in_code_[std::string(node_name)] = std::string(public_key);
    if (auto it = revoked_.find(node_name); it != revoked_.end()) revoked_.erase(it);
}

void node_core::revoke(std::string_view node_name) {
    if (!curve_)
        throw security_error("node '" + name_ + "': revoke('" + std::string(node_name) +
                             "'): this node has no keys (security.secret_key_file), so it lets no CURVE node in");
    check_node_name(node_name);
    {
        std::lock_guard g(zap_lock_);
        if (zap_) zap_->revoke_node(node_name);
        allowed_in_code_.erase(std::string(node_name));
        revoked_.emplace(node_name);
    }
    // The peer and the connections to it are the I/O thread's: on it (a reload of a watched
    // directory) dropped here, from any other thread handed to it and waited for.
    if (tls_io_node == this) {
        drop_revoked(std::string(node_name));
        return;
    }
    command c;
    c.kind = command::revoke;
    c.peer.assign(node_name);
    c.done = std::make_shared<std::promise<std::string>>();
    auto f = c.done->get_future();
    if (!push(std::move(c))) return;  // stopped: nothing left to drop
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready)
        throw error("node '" + name_ + "': revoke('" + std::string(node_name) + "'): no answer from the I/O thread in 10 s");
}

allow_list_changes node_core::reload_allow_list() {
    const std::string what = "node '" + name_ + "': reload_allow_list()";
    if (!curve_) throw security_error(what + ": this node has no keys (security.secret_key_file), so it lets no CURVE node in");
    if (options_.security.allow_list_dir.empty())
        throw security_error(what + ": this node has no allow-list directory (security.allow_list_dir)");
    std::lock_guard serial(reload_lock_);
    return reload_locked(what);
}

void node_core::watched_change() {
    // What changed does not matter (the whole directory is read again): the events are drained,
    // and the reload waits until the directory has been quiet for a moment, so that a file being
    // written is read once it is whole.
    alignas(inotify_event) char buf[4096];
    bool gone = false;
    for (;;) {
        const ssize_t n = ::read(watch_fd_, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t at = 0; at + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
            const auto* ev = reinterpret_cast<const inotify_event*>(buf + at);
            if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) gone = true;
            at += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
        }
    }
    if (gone) {
        log("the allow-list directory '" + options_.security.allow_list_dir.string() +
            "' was removed or moved: no longer watched (reload_allow_list() reads it when asked)");
        ::close(std::exchange(watch_fd_, -1));
    }
    reload_pending_ = true;
    reload_due_ = clock::now() + std::chrono::milliseconds(100);
}

void node_core::watched_reload() {
    // A reload asked from code holds the lock and may wait for this thread: try again soon.
    std::unique_lock serial(reload_lock_, std::try_to_lock);
    if (!serial) {
        reload_due_ = clock::now() + std::chrono::milliseconds(50);
        return;
    }
    reload_pending_ = false;
    const std::string dir = options_.security.allow_list_dir.string();
    try {
        const allow_list_changes c = reload_locked("node '" + name_ + "': reloading the allow-list");
        // Logged before counted: whoever sees the count finds the line.
        if (!c.empty()) log("allow-list reloaded after a change in '" + dir + "': " + to_string(c));
        bump(n_.allow_list_reloads);
    } catch (const std::exception& e) {
        log("allow-list not reloaded after a change in '" + dir + "' (it stays as it was): " + e.what());
        bump(n_.allow_list_reloads_failed);
    }
}

allow_list_changes node_core::reload_locked(const std::string& what) {
    const auto& dir = options_.security.allow_list_dir;
    std::map<std::string, std::string, std::less<>> next;  // node name -> key
    for (auto& e : read_allow_directory(dir)) next[e.node_name] = e.public_key;  // raises: nothing changed
    allow_list_changes changes;
    std::vector<std::pair<std::string, std::string>> code_keys;  // names allowed in code too: name, key
    {
        std::lock_guard g(zap_lock_);
        for (auto& [name, key] : next) {
            auto was = from_dir_.find(name);
            if (was == from_dir_.end()) changes.added.push_back(name);
            else if (was->second != key) changes.changed.push_back(name);
            else continue;
            // A key allowed under another name that stays is refused before anything changes.
            if (zap_) {
                const auto holder = zap_->allowed_name(key);
                if (holder && *holder != name) {
                    auto other = next.find(*holder);
                    const bool leaving = other == next.end() || other->second != key;
                    if (!leaving || allowed_in_code_.count(*holder))
                        throw security_error(what + ": the key of " + name + ".pub is allowed as node '" + *holder + "'");
                }
            }
        }
        for (auto& [name, key] : from_dir_)
            if (!next.count(name)) changes.removed.push_back(name);
        for (auto& name : changes.removed)
            if (auto it = allowed_in_code_.find(name); it != allowed_in_code_.end()) code_keys.emplace_back(name, it->second);
    }
    // Revoking waits for the I/O thread: outside the lock.
    for (auto& name : changes.removed) {
        auto kept = std::find_if(code_keys.begin(), code_keys.end(), [&](auto& k) { return k.first == name; });
        if (kept == code_keys.end()) {
            revoke(name);
            continue;
        }
        std::lock_guard g(zap_lock_);  // allow() let it in: only the file's key goes
        if (zap_ && kept->second != from_dir_[name]) zap_->revoke(from_dir_[name]);
    }
    for (auto& name : changes.changed) revoke(name);
    {
        std::lock_guard g(zap_lock_);
        for (auto* names : {&changes.added, &changes.changed})
            for (auto& name : *names) {
                if (zap_) zap_->allow(next[name], name);
                revoked_.erase(name);
            }
        from_dir_ = std::move(next);
    }
    return changes;
}

// listen() and connect(): done on the I/O thread (which owns the sockets), waited for here.
std::string node_core::ask(command::kind_t kind, std::string_view endpoint, std::string server_key,
                           std::string expected_peer) {
    const std::string what = std::string(kind == command::listen ? "listen on '" : "connect to '") +
                             std::string(endpoint) + "'";
    command c;
    c.kind = kind;
    c.endpoint.assign(endpoint);
    c.server_key = std::move(server_key);
    c.expected_peer = std::move(expected_peer);
    c.done = std::make_shared<std::promise<std::string>>();
    auto f = c.done->get_future();
    if (!push(std::move(c))) throw endpoint_error("node '" + name_ + "': " + what + ": the node is stopped");
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready)
        throw endpoint_error("node '" + name_ + "': " + what + ": no answer from the I/O thread in 10 s");
    return f.get();
}

node_stats node_core::stats() const {
    node_stats s;
    auto fc = [](const std::atomic<std::uint64_t>* a) {
        auto l = [&](frame_kind k) { return a[static_cast<int>(k)].load(std::memory_order_relaxed); };
        frame_counts c;
        c.hello = l(frame_kind::hello);
        c.heartbeat = l(frame_kind::heartbeat);
        c.request = l(frame_kind::request);
        c.send = l(frame_kind::send);
        c.reply = l(frame_kind::reply);
        c.reject = l(frame_kind::reject);
        c.batch = l(frame_kind::batch);
        c.bye = l(frame_kind::bye);
        return c;
    };
    auto ld = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    s.frames_in = fc(n_.in);
    s.frames_out = fc(n_.out);
    s.bytes_in = ld(n_.bytes_in);
    s.bytes_out = ld(n_.bytes_out);
    using fe = internal::frame_error;
    auto rj = [&](fe e) { return ld(rejected_[static_cast<std::size_t>(e)]); };
    s.rejected_truncated = rj(fe::truncated);
    s.rejected_oversized = rj(fe::oversized);
    s.rejected_unknown_kind = rj(fe::unknown_kind);
    s.rejected_unknown_version = rj(fe::unknown_version);
    s.rejected_bad_magic = rj(fe::bad_magic);
    s.rejected_trailing_bytes = rj(fe::trailing_bytes);
    s.rejected_malformed = rj(fe::malformed);
    s.rejected_undecodable_payload = rj(fe::undecodable_payload);
    s.frames_rejected = s.rejected_truncated + s.rejected_oversized + s.rejected_unknown_kind +
                        s.rejected_unknown_version + s.rejected_bad_magic + s.rejected_trailing_bytes +
                        s.rejected_malformed + s.rejected_undecodable_payload;
    s.frames_from_unknown = ld(n_.frames_from_unknown);
    s.hello_refused = ld(n_.hello_refused);
    s.hello_refused_wrong_node = ld(n_.hello_refused_wrong_node);
    s.hello_refused_revoked = ld(n_.hello_refused_revoked);
    {
        std::lock_guard g(zap_lock_);
        s.zap = zap_ ? zap_->stats() : zap_final_;
    }
    s.handshake_failed_mechanism = ld(n_.handshake_failed_mechanism);
    s.handshake_failed_protocol = ld(n_.handshake_failed_protocol);
    s.handshake_failed_auth = ld(n_.handshake_failed_auth);
    s.handshake_failed_other = ld(n_.handshake_failed_other);
    s.peers_up = ld(n_.peers_up);
    s.peers_suspect = ld(n_.peers_suspect);
    s.peers_down = ld(n_.peers_down);
    s.peers_forgotten = ld(n_.peers_forgotten);
    s.requests_out = ld(n_.requests_out);
    s.requests_replied = ld(n_.requests_replied);
    s.requests_rejected = ld(n_.requests_rejected);
    s.requests_abandoned = ld(n_.requests_abandoned);
    s.rejected_no_such_object = ld(n_.rej_reason[1]);
    s.rejected_handler = ld(n_.rej_reason[2]);
    s.rejected_undecodable_type = ld(n_.rej_reason[3]);
    s.rejected_peer_limits = ld(n_.rej_reason[4]);
    s.replies_orphaned = ld(n_.replies_orphaned);
    s.sends_out = ld(n_.sends_out);
    s.sends_lost = ld(n_.sends_lost);
    s.requests_served = ld(n_.requests_served);
    s.sends_served = ld(n_.sends_served);
    s.served_refused = ld(n_.served_refused);
    s.answers_lost = ld(n_.answers_lost);
    s.unreachable = ld(n_.unreachable);
    s.sends_dropped = ld(n_.sends_dropped);
    s.requests_refused_by_queue = ld(n_.requests_refused_by_queue);
    s.frames_handed_back = ld(n_.frames_handed_back);
    s.flushed_by_sender = ld(n_.flushed_by_sender);
    s.answers_by_server_thread = ld(n_.answers_by_server_thread);
    s.peers_left = ld(n_.peers_left);
    s.allow_list_reloads = ld(n_.allow_list_reloads);
    s.allow_list_reloads_failed = ld(n_.allow_list_reloads_failed);
    s.log_lines_suppressed = log_lines_suppressed_.load(std::memory_order_relaxed);
    return s;
}

// ---- the remote router: callers' threads ----

bool node_core::route(std::string_view name, envelope_ref& body, request_core* r, const message_header& header,
                      bool wait_for_peer) {
    const std::size_t slash = name.find('/');
    const std::string_view peer_name = name.substr(0, slash);
    const std::string_view target = name.substr(slash + 1);
    // What this send needs of the peer's view, copied under the lock (not its address: a string
    // copy per message).
    struct {
        peer_state state;
        std::shared_ptr<const send_path> path;
    } view;
    {
        std::lock_guard g(view_lock_);
        auto it = views_.find(peer_name);
        if (it == views_.end()) return false;  // not a peer this node knows: the local `*` may have it
        view = {it->second.state, it->second.path};
    }
    auto refuse = [&](request_state st, reject_reason why_code, const std::string& why) -> bool {
        if (r) {
            if (internal::request_finish(r, st, nullptr, why)) {
                if (st == request_state::rejected) {
                    bump(n_.requests_rejected);
                    bump(n_.rej_reason[static_cast<int>(why_code)]);
                } else {
                    bump(n_.requests_abandoned);
                }
            }
            internal::request_release(r);
            return true;
        }
        bump(n_.sends_lost);
        if (why_code == reject_reason::undecodable_type) throw usage_error("sending to '" + std::string(name) + "': " + why);
        throw peer_unavailable_error("sending to '" + std::string(name) + "': " + why);
    };
    const net::type_entry* te = options_.types->find(body.get()->type());
    if (!te)
        return refuse(request_state::rejected, reject_reason::undecodable_type,
                      "node '" + name_ + "': the type " + readable_name(body.get()->type()) +
                          " is not registered in its type_registry");
    if (view.path) {
        if (!view.path->knows(te))
            return refuse(request_state::rejected, reject_reason::undecodable_type,
                          "peer '" + std::string(peer_name) + "' does not know the type '" + te->name + "'");
    }
    if (stop_requested_.load(std::memory_order_acquire))
        return refuse(request_state::abandoned, reject_reason::peer_limits, "node '" + name_ + "' stopped");
    if (view.state == peer_state::down && !(wait_for_peer && r && internal::request_timeout(r).count() > 0))
        return refuse(request_state::abandoned, reject_reason::peer_limits,
                      "peer '" + std::string(peer_name) + "' is down");
    // Encoded on the caller's thread into a buffer that keeps its capacity; the send queue's
    // message (one block) takes a copy.
    thread_local net::byte_buffer encoded;
    encoded.clear();
    try {
        internal::frame_writer w(encoded);
        frame f;
        f.source = header.source;
        f.target = target;
        if (r) {
            f.kind = frame_kind::request;
            f.request_id = internal::request_id(r);
            const auto ms = std::chrono::ceil<std::chrono::milliseconds>(internal::request_timeout(r)).count();
            f.timeout_ms = static_cast<std::uint32_t>(std::min<std::int64_t>(ms, UINT32_MAX));
        } else {
            f.kind = frame_kind::send;
            f.reply_to = header.reply_to;
        }
        f.type = te->id;
        // The payload is encoded in place by the type's codec, into the frame: the frame is
        // whole when queued.
        w.write_payload(f, [&](net::byte_buffer& out) { te->encode_envelope(body.get(), out); });
    } catch (const std::exception& e) {
        if (r) return refuse(request_state::rejected, reject_reason::undecodable_type,
                             std::string("node '") + name_ + "': encoding failed: " + e.what());
        throw;
    }
    if (view.path && view.state != peer_state::down) {
        // The peer's send queue: its tag is the request (the queue holds the caller's
        // reference), so that a frame handed back tells which requester to answer.
        internal::outgoing_ptr m =
            internal::outgoing::make(encoded, r ? reinterpret_cast<std::uintptr_t>(r) : std::uint64_t{0});
        body = envelope_ref();
        const internal::push_result pr = view.path->queue->push(m);
        if (internal::accepted(pr)) {
            if (r) bump(n_.requests_out);
            if (pr == internal::push_result::queued_wake) send_now(peer_name, *view.path->queue);
            return true;
        }
        return refused_by_queue(pr, m, r, name, std::string(peer_name));
    }
    // A down peer that a request waits for: through the command queue to the I/O thread.
    command c;
    c.peer.assign(peer_name);
    c.wait_for_peer = wait_for_peer;
    c.bytes.assign(encoded.begin(), encoded.end());
    body = envelope_ref();
    c.req = r;
    c.req_id = r ? internal::request_id(r) : 0;
    if (!push(std::move(c))) return refuse(request_state::abandoned, reject_reason::peer_limits,
                                           "node '" + name_ + "' is stopped");
    if (r) bump(n_.requests_out);
    return true;
}

// A send queue refused a frame (callers' threads): the requester is told, a one-way message is
// counted and its sender told by the reaction (docs/nodes.md, "Sending: bounds and batching").
bool node_core::refused_by_queue(internal::push_result pr, internal::outgoing_ptr& m, request_core* r,
                                 std::string_view name, const std::string& peer_name) {
    using internal::push_result;
    m.reset();  // its tag is `r`, whose reference is still the caller's: told below
    if (pr == push_result::closed) {
        const std::string why = stop_requested_.load(std::memory_order_acquire)
                                    ? "node '" + name_ + "' stopped"
                                    : "peer '" + peer_name + "' lost";
        if (r) {
            abandon(r, why);
            return true;
        }
        bump(n_.sends_lost);
        throw peer_unavailable_error("sending to '" + std::string(name) + "': " + why);
    }
    std::string why;
    if (pr == push_result::too_large) {
        why = "peer '" + peer_name + "': the frame is over its send queue's byte limit (" +
              std::to_string(options_.send_queue_bytes) + " bytes)";
    } else {
        why = "peer '" + peer_name + "': its send queue is full (at most " + std::to_string(options_.send_queue_messages) +
              " messages and " + std::to_string(options_.send_queue_bytes) + " bytes; " +
              (pr == push_result::timed_out ? "no room after " + std::to_string(options_.send_block_timeout.count()) + " ms"
                                            : std::string(internal::to_string(pr))) + ")";
    }
    if (r) {
        if (internal::request_finish(r, request_state::rejected, nullptr, "peer limits: " + why)) {
            bump(n_.requests_rejected);
            bump(n_.rej_reason[static_cast<int>(reject_reason::peer_limits)]);
            bump(n_.requests_refused_by_queue);
        }
        internal::request_release(r);
        return true;
    }
    bump(n_.sends_dropped);
    if (options_.send_reaction == send_overflow::drop) return true;  // counted, not raised
    throw peer_limits_error("node '" + name_ + "': sending to '" + std::string(name) + "': " + why);
}

// A served request is final (on whichever thread finished it): its answer goes back to the
// peer that asked, through the I/O thread.
struct served {
    std::shared_ptr<node_core> node;
    request_core* req;  // a reference
    std::string peer;
    std::uint64_t incarnation;
    std::uint64_t remote_id;
    internal::local_send outcome;
};

void node_core::answered(void* arg) noexcept {
    std::unique_ptr<served> s(static_cast<served*>(arg));
    node_core& n = *s->node;
    command c;
    c.kind = command::answer;
    c.incarnation = s->incarnation;
    try {
        c.peer = s->peer;
        internal::frame_writer w(c.bytes);
        frame f;
        f.request_id = s->remote_id;
        const request_state st = internal::request_get_state(s->req);
        bool replied = false;
        if (st == request_state::replied) {
            internal::envelope* e = internal::request_reply(s->req);
            const net::type_entry* te = n.options_.types->find(e->type());
            if (te) {
                net::byte_buffer payload;
                te->encode_envelope(e, payload);
                f.kind = frame_kind::reply;
                f.type = te->id;
                f.payload = payload;
                w.write(f);
                replied = true;
            } else {
                f.kind = frame_kind::reject;
                f.reason = reject_reason::undecodable_type;
                f.text = "the reply type is not registered on node '" + n.name_ + "'";
            }
        } else {
            f.kind = frame_kind::reject;
            f.reason = s->outcome == internal::local_send::no_such_object ? reject_reason::no_such_object
                                                                          : reject_reason::handler_rejected;
        }
        std::string text;
        if (!replied) {
            if (f.text.empty()) {
                text = internal::request_reason(s->req);
                if (st == request_state::abandoned) text = "abandoned on node '" + n.name_ + "': " + text;
                if (text.size() > 1024) text.resize(1024);
                f.text = text;
            }
            w.write(f);
        }
    } catch (...) {
        c.bytes.clear();
    }
    internal::request_release(s->req);
    if (c.bytes.empty() || (!n.answer_now(c) && !n.push(std::move(c)))) bump(n.n_.answers_lost);
}

class node_core::borrowed_io {
public:
    explicit borrowed_io(node_core& n) noexcept : n_(n) {
        if (tls_io_node == &n || n.sends_paused_.load(std::memory_order_relaxed) ||
            n.stop_requested_.load(std::memory_order_acquire) || !n.io_lock_.try_lock())
            return;
        if (n.io_done_) {
            n.io_lock_.unlock();
            return;
        }
        held_ = true;
        before_ = std::exchange(tls_io_node, &n);
    }
    ~borrowed_io() {
        if (!held_) return;
        tls_io_node = before_;
        n_.io_lock_.unlock();
    }
    borrowed_io(const borrowed_io&) = delete;
    borrowed_io& operator=(const borrowed_io&) = delete;
    explicit operator bool() const noexcept { return held_; }

private:
    node_core& n_;
    bool held_ = false;
    const node_core* before_ = nullptr;
};

void node_core::send_now(std::string_view peer_name, const internal::peer_queue& q) noexcept {
    if (options_.send_now_after.count() >= 0) {
        borrowed_io io(*this);
        if (io) {
            auto it = peers_.find(peer_name);
            // The same incarnation (its queue), up, and quiet long enough: a frame that follows
            // others closely waits for the I/O thread, which packs them into BATCHes.
            if (it != peers_.end() && it->second->queue.get() == &q && it->second->state != peer_state::down &&
                clock::now() - it->second->last_out >= options_.send_now_after) {
                peer& p = *it->second;
                bump(n_.flushed_by_sender);
                settle(p, flush(p));
                return;
            }
        }
    }
    wake();
}

bool node_core::answer_now(command& c) noexcept {
    if (options_.send_now_after.count() < 0) return false;
    borrowed_io io(*this);
    if (!io) return false;
    {
        std::lock_guard g(queue_lock_);
        if (stopped_ || !queue_.empty()) return false;  // after the work queued before it
    }
    auto it = peers_.find(c.peer);
    bump(n_.answers_by_server_thread);
    handle(c);  // answer: sent, owed until the pipe has room, or counted lost
    if (it != peers_.end()) settle(*it->second, false);
    return true;
}

void node_core::settle(peer& p, bool more) noexcept {
    void* s = p.conn ? p.conn->socket : router_;
    bool wake_io = more || p.pipe_full;
    if (s && !wake_io) {
        int events = 0;
        std::size_t len = sizeof events;
        const bool wants_out = p.conn ? p.conn->wants_out : router_wants_out_;
        wake_io = zmq_getsockopt(s, ZMQ_EVENTS, &events, &len) != 0 || (events & ZMQ_POLLIN) ||
                  (wants_out && (events & ZMQ_POLLOUT));
    }
    if (wake_io) wake();
}

// ---- the I/O thread ----

void* node_core::new_monitor(void* socket, std::string_view endpoint) noexcept {
    const std::string at = "inproc://mailroom.node-monitor." + std::to_string(reinterpret_cast<std::uintptr_t>(this)) +
                           "." + std::to_string(++monitors_);
    if (zmq_socket_monitor(socket, at.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
        log("no handshake monitor for '" + std::string(endpoint) + "': " + zmq_strerror(zmq_errno()));
        return nullptr;
    }
    void* m = zmq_socket(ctx_.get(), ZMQ_PAIR);
    if (!m) return nullptr;
    int zero = 0;
    zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(m, at.c_str()) != 0) {
        zmq_close(m);
        return nullptr;
    }
    return m;
}

// A monitor's events: [uint16 event, uint32 value][the endpoint]. libzmq names the socket's
// endpoint, not the peer's address (a failed handshake has no other): `where` says which.
void node_core::on_monitor(void* monitor, const std::string& where) {
    for (int k = 0; k < 256; ++k) {
        zmq_msg_t head;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            return;
        }
        std::uint16_t event = 0;
        std::uint32_t value = 0;
        const bool whole = zmq_msg_size(&head) == 6;
        if (whole) {
            std::memcpy(&event, zmq_msg_data(&head), 2);
            std::memcpy(&value, static_cast<const char*>(zmq_msg_data(&head)) + 2, 4);
        }
        std::string endpoint;
        while (zmq_msg_more(&head)) {
            zmq_msg_close(&head);
            zmq_msg_init(&head);
            if (zmq_msg_recv(&head, monitor, ZMQ_DONTWAIT) < 0) break;
            endpoint.assign(static_cast<const char*>(zmq_msg_data(&head)), zmq_msg_size(&head));
        }
        zmq_msg_close(&head);
        if (!whole) continue;
        std::string why;
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            bump(n_.handshake_failed_mechanism);
            why = std::string("the peer's security mechanism is not this node's (") + (curve_ ? "CURVE" : "NULL") + ")";
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            bump(n_.handshake_failed_protocol);
            char code[16];
            std::snprintf(code, sizeof code, "0x%08x", static_cast<unsigned>(value));
            why = std::string("protocol error ") + code + " (for CURVE: a wrong server key, or a broken handshake)";
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            bump(n_.handshake_failed_auth);
            why = "refused by ZAP (status " + std::to_string(value) + ")";
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
            bump(n_.handshake_failed_other);
            why = std::string("no detail (") + zmq_strerror(static_cast<int>(value)) + ")";
        } else {
            continue;
        }
        log(log_kind::refused_connection, "a connection " + where + (endpoint.empty() ? std::string() : " (" + endpoint + ")") +
            " failed its handshake: " + why);
    }
}

void node_core::close_dealer(connection& c) noexcept {
    unlist(quiet_, c.socket);
    unlist(idle_, c.monitor);
    if (c.socket) zmq_close(std::exchange(c.socket, nullptr));
    if (c.monitor) zmq_close(std::exchange(c.monitor, nullptr));
}

void* node_core::new_socket(int type, socket_role role, std::string_view endpoint, const std::string& server_key) {
    void* s = zmq_socket(ctx_.get(), type);
    if (!s) throw endpoint_error("node '" + name_ + "': zmq_socket failed: " + zmq_strerror(zmq_errno()));
    auto set_int = [&](int opt, int v) { zmq_setsockopt(s, opt, &v, sizeof v); };
    try {
        set_int(ZMQ_LINGER, static_cast<int>(options_.linger.count()));
        std::int64_t max = options_.max_message_bytes;
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max);
        const int ivl = static_cast<int>(std::max<std::int64_t>(options_.heartbeat_interval.count(), 1));
        set_int(ZMQ_HEARTBEAT_IVL, ivl);
        set_int(ZMQ_HEARTBEAT_TIMEOUT, ivl * 5);
        set_int(ZMQ_HEARTBEAT_TTL, std::min(((ivl * 5 + 99) / 100) * 100, 6'553'500));
        if (type == ZMQ_ROUTER) set_int(ZMQ_ROUTER_MANDATORY, 1);
        // Security first, so that the hook sees (and may add to) what security set.
        if (curve_) {
            if (role == socket_role::listening)
                security_->apply_server(s, endpoint);
            else
                security_->apply_client(s, endpoint, server_key);
        }
        if (options_.socket_options) options_.socket_options(s, role, endpoint);
    } catch (...) {
        zmq_close(s);
        throw;
    }
    return s;
}

void node_core::run() noexcept {
    tls_io_node = this;
    std::unique_lock io(io_lock_);
    std::vector<zmq_pollitem_t> items;
    std::vector<connection*> item_conn;
    std::vector<command> work;
    next_heartbeat_ = clock::now();
    const auto tick_every = std::clamp<std::chrono::milliseconds>(options_.heartbeat_interval / 4,
                                                                  std::chrono::milliseconds(1),
                                                                  std::chrono::milliseconds(50));
    bool more = false;  // a send queue still holds frames: poll without sleeping
    while (!stop_requested_.load(std::memory_order_acquire)) {
        items.clear();
        item_conn.clear();
        items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
        item_conn.push_back(nullptr);
        // A socket whose pipe to a peer was full is polled for room too (POLLOUT), rather than
        // tried again in a spin.
        bool router_full = false;
        for (auto& [pn, pp] : peers_)
            if (pp->pipe_full && !pp->conn) router_full = true;
        router_wants_out_ = router_full;
        if (router_) {
            items.push_back({router_, 0, static_cast<short>(ZMQ_POLLIN | (router_full ? ZMQ_POLLOUT : 0)), 0});
            item_conn.push_back(nullptr);
        }
        for (auto& c : conns_)
            if (c->socket) {
                const bool full = c->p && c->p->pipe_full;
                c->wants_out = full;
                items.push_back({c->socket, 0, static_cast<short>(ZMQ_POLLIN | (full ? ZMQ_POLLOUT : 0)), 0});
                item_conn.push_back(c.get());
            }
        // Then the ZAP handler and the handshake monitors (item_conn: the DEALER's, if any).
        const std::size_t data_end = items.size();
        if (zap_) {
            items.push_back({zap_->socket(), 0, ZMQ_POLLIN, 0});
            item_conn.push_back(nullptr);
        }
        const std::size_t watch_at = items.size();
        if (watch_fd_ >= 0) {
            items.push_back({nullptr, watch_fd_, ZMQ_POLLIN, 0});
            item_conn.push_back(nullptr);
        }
        const std::size_t monitors_begin = items.size();
        if (router_monitor_) {
            items.push_back({router_monitor_, 0, ZMQ_POLLIN, 0});
            item_conn.push_back(nullptr);
        }
        for (auto& c : conns_)
            if (c->monitor) {
                items.push_back({c->monitor, 0, ZMQ_POLLIN, 0});
                item_conn.push_back(c.get());
            }
        const long timeout = more ? 0 : no_ticks_.load(std::memory_order_relaxed) ? -1 : static_cast<long>(tick_every.count());
        if (wait_events(items, data_end, timeout, io) < 0) {
            log(std::string("polling failed: ") + zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            std::uint64_t v;
            (void)!::read(wake_fd_, &v, sizeof v);
        }
        {
            std::lock_guard g(queue_lock_);
            work.swap(queue_);
        }
        for (auto& c : work) {
            try {
                handle(c);
            } catch (const std::exception& e) {
                log(std::string("handling work: ") + e.what());
            } catch (...) {
            }
        }
        work.clear();
        // ZAP first: a handshake waits for its answer.
        if (zap_ && data_end < items.size() && (items[data_end].revents & ZMQ_POLLIN)) zap_->handle();
        if (watch_fd_ >= 0 && (items[watch_at].revents & ZMQ_POLLIN)) watched_change();
        for (std::size_t i = monitors_begin; i < items.size(); ++i)
            if (items[i].revents & ZMQ_POLLIN) {
                // A DEALER redialled by the work above closed its monitor: not read then.
                if (item_conn[i] ? item_conn[i]->monitor != items[i].socket : router_monitor_ != items[i].socket) continue;
                on_monitor(items[i].socket, item_conn[i] ? "to '" + item_conn[i]->endpoint + "'" : std::string("accepted"));
            }
        for (std::size_t i = 1; i < data_end; ++i)
            if (items[i].revents & ZMQ_POLLIN) {
                // A bounded number per turn, so that one busy peer does not starve the others.
                // The first is there (wait_events just looked); the others are looked for.
                for (int k = 0; k < 256; ++k) {
                    int events = 0;
                    std::size_t len = sizeof events;
                    if (k > 0) {
                        if (zmq_getsockopt(items[i].socket, ZMQ_EVENTS, &events, &len) != 0) break;
                        if (!(events & ZMQ_POLLIN)) {
                            quiet_.push_back(items[i].socket);
                            break;
                        }
                    }
                    on_message(items[i].socket, item_conn[i]);
                    // on_message may close a connection's socket (a refused HELLO)
                    if (item_conn[i] && item_conn[i]->socket != items[i].socket) break;
                }
            }
        // The send queues' contract: drain, and drain again before sleeping while one still
        // holds frames (a sender may be between its reservation and linking its message).
        more = false;
        if (!sends_paused_.load(std::memory_order_relaxed))
            for (auto& [pn, pp] : peers_)
                if (pp->queue && pp->state != peer_state::down && flush(*pp)) more = true;
        tick(clock::now());
    }
    // Stopped: nothing more is taken, and everything in flight is abandoned with the reason.
    {
        std::lock_guard g(queue_lock_);
        stopped_ = true;
        work.swap(queue_);
    }
    const std::string why = "node '" + name_ + "' stopped";
    // A BYE to each peer that speaks it and is not down, before the sockets close (their linger
    // lets it go out): the peers see this node down at once instead of after their detection
    // time. Best effort: a full pipe or a gone peer leaves it to their failure detectors.
    if (!no_bye_.load(std::memory_order_relaxed)) {
        frame bye;
        bye.kind = frame_kind::bye;
        bye.text = "stopped";
        out_.clear();
        internal::frame_writer(out_).write(bye);
        for (auto& [pn, pp] : peers_)
            if (pp->state != peer_state::down && pp->version >= 2 && !pp->pipe_full)
                (void)send_to_peer(*pp, out_.data(), out_.size());
    }
    for (auto& c : work) {
        if (c.kind == command::frame_out) {
            lose(c, why);
        } else if (c.kind == command::answer) {
            bump(n_.answers_lost);
        } else if (c.done) {
            try {
                c.done->set_exception(std::make_exception_ptr(endpoint_error(why)));
            } catch (...) {
            }
        }
    }
    for (auto& [pn, pp] : peers_) close_queue(*pp, why);
    finish_all(why);
    for (auto& c : conns_) close_dealer(*c);
    if (router_) zmq_close(std::exchange(router_, nullptr));
    if (router_monitor_) zmq_close(std::exchange(router_monitor_, nullptr));
    {
        // After the sockets it guards, before the context (docs/net.md, "Security").
        std::lock_guard g(zap_lock_);
        if (zap_) {
            zap_final_ = zap_->stats();
            zap_.reset();
        }
    }
    io_done_ = true;
}

int node_core::wait_events(std::vector<zmq_pollitem_t>& items, std::size_t data_end, long timeout_ms,
                            std::unique_lock<std::mutex>& io) {
    // A socket is watched through its ZMQ_FD, which only says "look again": what is ready is
    // its ZMQ_EVENTS. Each look costs libzmq a poll() and a getpid() on that socket's mailbox,
    // so a socket is looked at when it may have changed unseen. Before sleeping: a data socket
    // unless it was read to the end and not sent on since (quiet_: a send may read the signal
    // meant for a receive), or waits for room; a socket past data_end unless its last look
    // found nothing (idle_). After sleeping: those whose descriptor fired, and every data
    // socket when the eventfd fired (a thread that used one while this one slept, borrowed_io,
    // wakes it through the eventfd when it found something this thread waits for: settle()).
    // Item 0 is the eventfd; the others past data_end (the ZAP handler's socket, the monitors,
    // the inotify descriptor) only this thread touches.
    poll_fds_.resize(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
        auto& it = items[i];
        it.revents = 0;
        if (it.socket) {
            int fd = -1;
            std::size_t len = sizeof fd;
            if (zmq_getsockopt(it.socket, ZMQ_FD, &fd, &len) != 0) return -1;
            poll_fds_[i] = {fd, POLLIN, 0};
        } else {
            poll_fds_[i] = {it.fd,
                            static_cast<short>(((it.events & ZMQ_POLLIN) ? POLLIN : 0) | ((it.events & ZMQ_POLLOUT) ? POLLOUT : 0)),
                            0};
        }
    }
    auto look = [&](zmq_pollitem_t& it) {
        int events = 0;
        std::size_t len = sizeof events;
        if (zmq_getsockopt(it.socket, ZMQ_EVENTS, &events, &len) != 0) return false;
        it.revents = static_cast<short>(it.revents | (events & it.events));
        return true;
    };
    auto count = [&] {
        int ready = 0;
        for (auto& it : items) ready += it.revents != 0;
        return ready;
    };
    for (std::size_t i = 0; i < items.size(); ++i) {
        auto& it = items[i];
        if (!it.socket) continue;
        const bool maybe = i < data_end ? (it.events & ZMQ_POLLOUT) || !listed(quiet_, it.socket)
                                        : !listed(idle_, it.socket);
        if (maybe && !look(it)) return -1;
    }
    quiet_.clear();
    int ready = count();
    // Ready now: the descriptors wait, but not for ever (the inotify one under a steady stream).
    const bool skip_fds = ready > 0 && timeout_ms != 0 && ++fds_skipped_ < 16;
    if (!skip_fds) {
        fds_skipped_ = 0;
        const auto deadline = timeout_ms < 0 ? clock::time_point::max() : clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            int rc;
            if (ready > 0 || timeout_ms == 0) {
                rc = ::poll(poll_fds_.data(), poll_fds_.size(), 0);
            } else {
                const int left = timeout_ms < 0 ? -1
                                                : static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(
                                                                       std::max(deadline - clock::now(), clock::duration::zero()))
                                                                       .count());
                io.unlock();
                rc = ::poll(poll_fds_.data(), poll_fds_.size(), left);
                const int err = errno;
                io.lock();
                errno = err;
            }
            if (rc < 0) {
                if (errno != EINTR) return -1;
                for (auto& f : poll_fds_) f.revents = 0;
            }
            const bool woken = (poll_fds_[0].revents & POLLIN) != 0;
            for (std::size_t i = 0; i < items.size(); ++i) {
                auto& it = items[i];
                const short r = poll_fds_[i].revents;
                if (it.socket) {
                    if (!it.revents && (r || (woken && i < data_end)) && !look(it)) return -1;
                } else {
                    if (r & POLLIN) it.revents |= ZMQ_POLLIN;
                    if (r & POLLOUT) it.revents |= ZMQ_POLLOUT;
                    if (r & (POLLERR | POLLHUP | POLLNVAL)) it.revents |= ZMQ_POLLERR;
                }
            }
            ready = count();
            if (ready > 0 || timeout_ms == 0 || clock::now() >= deadline) break;
        }
    }
    // Each one past data_end was looked at, or was idle and its descriptor did not fire.
    idle_.clear();
    for (std::size_t i = data_end; i < items.size(); ++i)
        if (items[i].socket && !items[i].revents) idle_.push_back(items[i].socket);
    return ready;
}

void node_core::abandon(request_core* r, const std::string& why) noexcept {
    if (internal::request_finish(r, request_state::abandoned, nullptr, why)) bump(n_.requests_abandoned);
    internal::request_release(r);
}

void node_core::lose(command& c, const std::string& why) noexcept {
    if (c.req)
        abandon(std::exchange(c.req, nullptr), why);
    else
        bump(n_.sends_lost);
}

void node_core::give_back(internal::outgoing_ptr m, const std::string& why) noexcept {
    bump(n_.frames_handed_back);
    if (m->tag())
        abandon(reinterpret_cast<request_core*>(static_cast<std::uintptr_t>(m->tag())), why);
    else
        bump(n_.sends_lost);
}

void node_core::close_queue(peer& p, const std::string& why) noexcept {
    if (!p.queue) return;
    // The held frames are older than the queued ones: handed back first.
    p.pipe_full = false;
    if (!p.held.empty()) p.queue->hand_back(p.held, [&](internal::outgoing_ptr m) { give_back(std::move(m), why); });
    p.queue->close([&](internal::outgoing_ptr m) { give_back(std::move(m), why); });
}

node_core::sent node_core::try_send(peer& p, const std::byte* data, std::size_t n) {
    bool full = false;
    if (send_to_peer(p, data, n, &full)) {
        p.last_out = clock::now();
        return sent::yes;
    }
    if (!full) return sent::refused;
    p.pipe_full = true;
    return sent::full;
}

void node_core::answer(peer& p, const std::byte* data, std::size_t n) {
    if (p.owed_answers.empty()) {
        const sent r = try_send(p, data, n);
        if (r == sent::yes) return;
        if (r == sent::refused) {
            bump(n_.answers_lost);  // unreachable (counted there too)
            return;
        }
    }
    if (p.owed_answers.size() >= options_.max_served_per_peer) {
        bump(n_.answers_lost);
        return;
    }
    try {
        p.owed_answers.emplace_back(data, data + n);
    } catch (...) {
        bump(n_.answers_lost);
    }
}

void node_core::heartbeat(peer& p) {
    frame f;
    f.kind = frame_kind::heartbeat;
    f.sequence = ++p.hb_seq;
    out_.clear();
    internal::frame_writer(out_).write(f);
    p.owed_heartbeat = try_send(p, out_.data(), out_.size()) == sent::full;
}

bool node_core::send_owed(peer& p) {
    if (p.owed_heartbeat) {
        heartbeat(p);
        if (p.owed_heartbeat) return false;
    }
    while (!p.owed_answers.empty()) {
        const auto& b = p.owed_answers.front();
        if (const sent r = try_send(p, b.data(), b.size()); r != sent::yes) {
            if (r == sent::full) return false;
            bump(n_.answers_lost, p.owed_answers.size());  // unreachable: none of them can go
            p.owed_answers.clear();
            break;
        }
        p.owed_answers.pop_front();
    }
    while (!p.owed_frames.empty()) {
        command& c = p.owed_frames.front();
        if (c.req && internal::request_get_state(c.req) >= request_state::replied) {
            internal::request_release(std::exchange(c.req, nullptr));  // timed out or cancelled meanwhile
            p.owed_frames.pop_front();
            continue;
        }
        if (const sent r = try_send(p, c.bytes.data(), c.bytes.size()); r != sent::yes) {
            if (r == sent::full) return false;
            const std::string why = unreachable(p.name);
            for (auto& k : p.owed_frames) lose(k, why);
            p.owed_frames.clear();
            break;
        }
        sent_frame(p, c);
        p.owed_frames.pop_front();
    }
    return true;
}

void node_core::sent_frame(peer& p, command& c) {
    if (c.req) {
        internal::request_mark_transmitted(c.req);
        p.inflight.emplace(c.req_id, peer::flight{std::exchange(c.req, nullptr)});
    } else {
        bump(n_.sends_out);
    }
}

bool node_core::flush(peer& p) {
    internal::peer_queue& q = *p.queue;
    internal::peer_batch& batch = p.held;
    // What met the full pipe before goes first.
    if (!send_owed(p)) return false;
    // A bounded number of ZeroMQ messages per turn, so that one busy peer does not starve the rest.
    for (int k = 0; k < 64; ++k) {
        if (batch.empty() && !q.drain(batch)) break;
        const auto bytes = batch.bytes();
        if (const sent r = try_send(p, bytes.data(), bytes.size()); r != sent::yes) {
            // A full pipe (at its high-water mark: the receiver is slower than the senders)
            // keeps the frames until there is room; the queue fills meanwhile, and its
            // reaction (drop, reject, block) tells the senders.
            if (r == sent::full) return false;
            // EHOSTUNREACH (ROUTER_MANDATORY: the peer's connection is gone): every frame of it
            // goes back to its sender's requester (counted unreachable).
            const std::string why = unreachable(p.name);
            q.hand_back(batch, [&](internal::outgoing_ptr m) { give_back(std::move(m), why); });
            continue;
        }
        p.pipe_full = false;
        const bool packed = batch.is_batch();
        batch.for_each([&](const internal::outgoing& m) {
            if (packed) bump(n_.out[static_cast<int>(m.kind())]);  // a lone frame was counted by send_raw
            if (!m.tag()) {
                bump(n_.sends_out);
                return;
            }
            auto* r = reinterpret_cast<request_core*>(static_cast<std::uintptr_t>(m.tag()));
            if (internal::request_get_state(r) >= request_state::replied) {
                internal::request_release(r);  // timed out or cancelled while queued: a late answer is orphaned
                return;
            }
            internal::request_mark_transmitted(r);
            p.inflight.emplace(internal::request_id(r), peer::flight{r});
        });
        q.sent(batch);
    }
    return q.queued() != 0;
}

void node_core::finish_all(const std::string& why) noexcept {
    for (auto& [peer_name, cmds] : waiting_)
        for (auto& c : cmds) lose(c, why);
    waiting_.clear();
    for (auto& [pn, p] : peers_) lose_owed(*p, why);
    {
        std::lock_guard g(view_lock_);
        for (auto& [n, v] : views_) v.state = peer_state::down;
    }
    view_changed_.notify_all();
}

void node_core::drop_revoked(const std::string& name) {
    if (auto it = peers_.find(name); it != peers_.end() && it->second->state != peer_state::down) {
        log("peer '" + name + "' revoked: dropped");
        drop_peer(*it->second, "peer '" + name + "' revoked");
    }
    std::erase_if(conns_, [&](std::unique_ptr<connection>& k) {
        if (k->peer_name != name && k->expected_peer != name) return false;
        close_dealer(*k);
        return true;
    });
}

void node_core::handle(command& c) {
    switch (c.kind) {
        case command::revoke:
            drop_revoked(c.peer);
            c.done->set_value(c.peer);
            return;
        case command::listen: {
            try {
                if (!router_) {
                    router_ = new_socket(ZMQ_ROUTER, socket_role::listening, c.endpoint);
                    router_monitor_ = new_monitor(router_, c.endpoint);
                } else {
                    if (curve_) security_->apply_server(router_, c.endpoint);
                    if (options_.socket_options) options_.socket_options(router_, socket_role::listening, c.endpoint);
                }
                if (zmq_bind(router_, c.endpoint.c_str()) != 0)
                    throw endpoint_error("node '" + name_ + "': listen on '" + c.endpoint +
                                         "': " + zmq_strerror(zmq_errno()));
                char last[512];
                std::size_t len = sizeof last;
                std::string bound = c.endpoint;
                if (zmq_getsockopt(router_, ZMQ_LAST_ENDPOINT, last, &len) == 0 && len > 1) bound.assign(last, len - 1);
                {
                    std::lock_guard g(view_lock_);
                    endpoints_.push_back(bound);
                }
                c.done->set_value(bound);
            } catch (...) {
                c.done->set_exception(std::current_exception());
            }
            return;
        }
        case command::connect: {
            try {
                auto conn = std::make_unique<connection>(
                    c.endpoint,
                    internal::backoff_options{options_.reconnect_min, options_.reconnect_max, 2.0},
                    [this] { return random_(); });
                conn->server_key = std::move(c.server_key);
                conn->expected_peer = std::move(c.expected_peer);
                dial(*conn, true);
                conns_.push_back(std::move(conn));
                c.done->set_value(c.endpoint);
            } catch (...) {
                c.done->set_exception(std::current_exception());
            }
            return;
        }
        case command::answer: {
            auto it = peers_.find(c.peer);
            if (it == peers_.end() || it->second->incarnation != c.incarnation || it->second->state == peer_state::down) {
                bump(n_.answers_lost);
                return;
            }
            peer& p = *it->second;
            if (p.served) --p.served;
            answer(p, c.bytes.data(), c.bytes.size());
            return;
        }
        case command::frame_out: {
            if (c.req && internal::request_get_state(c.req) >= request_state::replied) {
                internal::request_release(c.req);  // timed out or cancelled while queued
                return;
            }
            auto it = peers_.find(c.peer);
            peer* p = it == peers_.end() ? nullptr : it->second.get();
            if (!p || p->state == peer_state::down) {
                if (c.req && c.wait_for_peer) {
                    waiting_[c.peer].push_back(std::move(c));
                    return;
                }
                return lose(c, "peer '" + c.peer + "' is down");
            }
            if (p->owed_frames.empty()) {
                const sent r = try_send(*p, c.bytes.data(), c.bytes.size());
                if (r == sent::yes) return sent_frame(*p, c);
                if (r == sent::refused) return lose(c, unreachable(c.peer));
            }
            p->owed_frames.push_back(std::move(c));  // after those before it, once there is room
            return;
        }
    }
}

bool node_core::send_raw(void* socket, const std::string* rid, const std::byte* data, std::size_t n, bool* full) {
    auto refused = [&] {
        if (full && zmq_errno() == EAGAIN) *full = true;
        else bump(n_.unreachable);
        return false;
    };
    if (!quiet_.empty()) unlist(quiet_, socket);
    // A ROUTER refuses a full pipe at the routing id (ROUTER_MANDATORY), before any part went.
    if (rid && zmq_send(socket, rid->data(), rid->size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return refused();
    if (n >= std::size_t{8} << 10 && n <= buffers_->size()) {
        // A BATCH: in a buffer ZeroMQ gives back (send_buffers.hpp), not one it mallocs.
        std::byte* b = buffers_->take();
        std::memcpy(b, data, n);
        zmq_msg_t m;
        if (zmq_msg_init_data(&m, b, n, &send_buffers::give_back, buffers_->hint()) != 0) {
            send_buffers::give_back(b, buffers_->hint());
            return refused();
        }
        if (zmq_msg_send(&m, socket, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);  // gives the buffer back
            return refused();
        }
    } else if (zmq_send(socket, data, n, ZMQ_DONTWAIT) < 0) {
        return refused();
    }
    bump(n_.bytes_out, n);
    if (n >= internal::frame_header_bytes) {
        const auto k = static_cast<std::uint8_t>(data[3]);
        if (k < counters::kinds) bump(n_.out[k]);
    }
    return true;
}

bool node_core::send_to_peer(peer& p, const std::byte* data, std::size_t n, bool* full) {
    if (p.conn) return p.conn->socket && send_raw(p.conn->socket, nullptr, data, n, full);
    return router_ && send_raw(router_, &p.rid, data, n, full);
}

void node_core::send_hello(void* socket, const std::string* rid) {
    std::vector<internal::hello_type> types;
    for (const net::type_entry* e : options_.types->entries()) types.push_back({e->id, e->name});
    frame f;
    f.kind = frame_kind::hello;
    f.node = name_;
    f.protocol_version = internal::protocol_version;
    f.types = types;
    out_.clear();
    internal::frame_writer(out_).write(f);
    send_raw(socket, rid, out_.data(), out_.size());
}

void node_core::dial(connection& c, bool first) {
    close_dealer(c);
    void* s = nullptr;
    try {
        s = new_socket(ZMQ_DEALER, socket_role::connecting, c.endpoint, c.server_key);
    } catch (const std::exception& e) {
        if (first) throw;
        log(std::string("dialling '") + c.endpoint + "': " + e.what());
    }
    // The monitor before the connect, so that no handshake event comes before it listens.
    void* m = s ? new_monitor(s, c.endpoint) : nullptr;
    if (s && zmq_connect(s, c.endpoint.c_str()) != 0) {
        const std::string why = zmq_strerror(zmq_errno());
        zmq_close(s);
        if (m) zmq_close(m);
        s = nullptr;
        if (first) throw endpoint_error("node '" + name_ + "': connect to '" + c.endpoint + "': " + why);
        log("dialling '" + c.endpoint + "': " + why);
    }
    c.p = nullptr;
    if (!s) {
        c.state = connection::backoff;
        c.deadline = clock::now() + c.backoff_delay.next();
        return;
    }
    c.socket = s;
    c.monitor = m;
    c.state = connection::waiting_hello;
    c.deadline = clock::now() + options_.hello_timeout;
    send_hello(s, nullptr);  // queued by the DEALER until the connection is made
}

void node_core::on_message(void* socket, connection* conn) {
    std::string rid;
    // Received into a holder, which a run of one-way messages keeps (on_sends); one that no run
    // took is kept for the next message.
    held_message* held = spare_ ? std::exchange(spare_, nullptr) : new held_message;
    zmq_msg_t& msg = held->msg;
    zmq_msg_init(&msg);
    struct let_go {
        held_message* h;
        held_message*& spare;
        ~let_go() {
            if (h->refs.load(std::memory_order_acquire) == 1) {
                zmq_msg_close(&h->msg);
                spare = h;
            } else {
                held_message::release(h);
            }
        }
    } guard{held, spare_};
    held_ = held;
    if (!conn) {
        // ROUTER: [routing id][frame]
        if (zmq_msg_recv(&msg, socket, ZMQ_DONTWAIT) < 0) {
            return;
        }
        rid.assign(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
        if (!zmq_msg_more(&msg)) {
            return;
        }
    }
    if (zmq_msg_recv(&msg, socket, ZMQ_DONTWAIT) < 0) {
        return;
    }
    // Anything after: not ours. Drained and counted as one malformed message.
    bool extra = false;
    while (zmq_msg_more(&msg)) {
        zmq_msg_t more;
        zmq_msg_init(&more);
        zmq_msg_recv(&more, socket, ZMQ_DONTWAIT);
        extra = true;
        const bool again = zmq_msg_more(&more);
        zmq_msg_close(&more);
        if (!again) break;
    }
    std::string address;
    if (const char* a = zmq_msg_gets(&msg, "Peer-Address")) address = a;
    // The node name the ZAP handler let this connection in as (CURVE, the ROUTER's side).
    const char* user_id = !conn && curve_ ? zmq_msg_gets(&msg, "User-Id") : nullptr;
    const auto* data = static_cast<const std::byte*>(zmq_msg_data(&msg));
    const std::size_t size = zmq_msg_size(&msg);
    bump(n_.bytes_in, size);
    peer* p = nullptr;
    if (conn) {
        p = conn->p;
    } else if (auto it = by_rid_.find(rid); it != by_rid_.end()) {
        p = it->second;
    }
    const std::string who = p ? "peer '" + p->name + "'" : "a connection" + (address.empty() ? std::string() : " from " + address);
    internal::frame_error fe = extra ? internal::frame_error::malformed : decoder_.decode({data, size});
    if (fe != internal::frame_error::none) {
        bump(rejected_[static_cast<std::size_t>(fe)]);
        log(log_kind::rejected_message, "rejected a message from " + who + " (" + std::to_string(size) + " bytes): " + internal::to_string(fe) +
            (extra ? ": more than one part" : ": " + decoder_.detail()));
        return;
    }
    if (size >= internal::frame_header_bytes && static_cast<std::uint8_t>(data[3]) == static_cast<std::uint8_t>(frame_kind::batch))
        bump(n_.in[static_cast<int>(frame_kind::batch)]);
    const std::span<const frame> frames = decoder_.frames();
    for (std::size_t k = 0; k < frames.size(); ++k) {
        const frame& f = frames[k];
        bump(n_.in[static_cast<int>(f.kind)]);
        if (f.kind == frame_kind::hello) {
            on_hello(f, socket, conn, rid, address, user_id);
            if (conn) p = conn->p;
            else if (auto it = by_rid_.find(rid); it != by_rid_.end()) p = it->second;
            continue;
        }
        if (!p || p->state == peer_state::down) {
            bump(n_.frames_from_unknown);
            continue;
        }
        // One-way messages in a row to one object, with one header: one delivery (on_sends).
        std::size_t end = k + 1;
        if (f.kind == frame_kind::send)
            while (end < frames.size() && frames[end].kind == frame_kind::send && frames[end].target == f.target &&
                   frames[end].source == f.source && frames[end].reply_to == f.reply_to)
                ++end;
        try {
            if (end - k > 1) {
                bump(n_.in[static_cast<int>(frame_kind::send)], end - k - 1);
                on_sends(*p, frames.subspan(k, end - k));
                k = end - 1;
                continue;
            }
            on_frame(*p, f);
        } catch (const std::exception& e) {
            log(log_kind::failed_frame, "handling a " + std::string(internal::to_string(f.kind)) + " from peer '" + p->name + "': " + e.what());
        }
    }
}

void node_core::on_hello(const frame& f, void* socket, connection* conn, const std::string& rid,
                         const std::string& addr, const char* user_id) {
    const std::string name(f.node);
    const std::string where = addr.empty() ? (conn ? conn->endpoint : std::string("an unknown address")) : addr;
    auto refuse = [&](const std::string& why) {
        bump(n_.hello_refused);
        log(log_kind::refused_hello, "refused the HELLO of '" + name + "' from " + where + ": " + why);
        if (conn) {
            // Dial again later: the duplicate may be a stale entry the other side will drop.
            close_dealer(*conn);
            conn->state = connection::backoff;
            conn->deadline = clock::now() + conn->backoff_delay.next();
        }
    };
    if (f.protocol_version < 1)
        return refuse("protocol version " + std::to_string(f.protocol_version) + ", this node speaks 1 to " +
                      std::to_string(internal::protocol_version));
    try {
        check_name(name);
        if (name.find('/') != std::string::npos) throw invalid_name_error("a node name has no '/'");
    } catch (const std::exception& e) {
        return refuse(e.what());
    }
    if (name == name_) return refuse("that is this node's own name");
    if (curve_ && revoked(name)) {
        bump(n_.hello_refused_revoked);
        return refuse("node '" + name + "' is revoked");
    }
    // A peer may not pretend to be another node: the name its key is allowed under (CURVE), or
    // the one expected where this node dialled, is the only one it may give.
    if (!conn && curve_ && (user_id == nullptr || name != user_id)) {
        bump(n_.hello_refused_wrong_node);
        return refuse(std::string("its key is allowed as node '") + (user_id ? user_id : "?") + "', not as '" + name + "'");
    }
    if (conn && !conn->expected_peer.empty() && name != conn->expected_peer) {
        bump(n_.hello_refused_wrong_node);
        return refuse("node '" + conn->expected_peer + "' was expected at '" + conn->endpoint + "'");
    }
    if (conn && conn->state != connection::waiting_hello) {
        if (conn->p && conn->p->name == name) return;  // a repeated HELLO on a live connection
        return refuse("a second HELLO on a connection to '" + (conn->p ? conn->p->name : std::string("?")) + "'");
    }
    auto it = peers_.find(name);
    if (it != peers_.end()) {
        peer& old = *it->second;
        if (!conn && old.rid == rid && old.state != peer_state::down) return;  // repeated
        if (old.state == peer_state::up) return refuse("a peer of that name is up (from " + old.address + ")");
        if (old.state != peer_state::down) drop_peer(old, "peer '" + name + "' lost (it came back on a new connection)");
    }
    auto p = std::make_unique<peer>(detector_options());
    p->name = name;
    p->address = where;
    p->incarnation = ++incarnations_;
    p->version = std::min(f.protocol_version, internal::protocol_version);
    p->queue = std::make_shared<internal::peer_queue>(name, queue_options());
    {
        auto path = std::make_shared<send_path>();
        for (auto& t : f.types)
            if (const net::type_entry* te = options_.types->find(t.id); te && te->name == t.name)
                path->agreed.push_back(te);
        std::sort(path->agreed.begin(), path->agreed.end());
        path->agreed.erase(std::unique(path->agreed.begin(), path->agreed.end()), path->agreed.end());
        path->queue = p->queue;
        p->path = std::move(path);
    }
    p->detector.heartbeat();  // the HELLO is the first sign of life
    if (conn) {
        p->conn = conn;
        conn->p = p.get();
        conn->peer_name = name;
        conn->state = connection::up;
        conn->backoff_delay.reset();
    } else {
        p->rid = rid;
        by_rid_[rid] = p.get();
        send_hello(socket, &rid);
    }
    peer& ref = *p;
    peers_[name] = std::move(p);
    peer_now(ref, peer_state::up);
    // Requests that waited for this peer go now.
    if (auto w = waiting_.find(name); w != waiting_.end()) {
        std::vector<command> cmds = std::move(w->second);
        waiting_.erase(w);
        for (auto& c : cmds) handle(c);
    }
}

void node_core::on_frame(peer& p, const frame& f) {
    switch (f.kind) {
        case frame_kind::heartbeat: p.detector.heartbeat(); return;
        case frame_kind::request: on_request(p, f); return;
        case frame_kind::send: on_send(p, f); return;
        case frame_kind::reply:
        case frame_kind::reject: on_answer(p, f); return;
        case frame_kind::bye:
            // It is stopping: down at once rather than after the failure-detection time, its
            // requests in flight abandoned; a dialled one is dialled again after the back-off.
            bump(n_.peers_left);
            log("peer '" + p.name + "' is down (it said BYE: " + std::string(f.text) + ")");
            drop_peer(p, "peer '" + p.name + "' stopped");
            return;
        default: return;
    }
}

void node_core::on_request(peer& p, const frame& f) {
    bump(n_.requests_served);
    auto reject = [&](reject_reason why, const std::string& text) {
        bump(n_.served_refused);
        frame r;
        r.kind = frame_kind::reject;
        r.request_id = f.request_id;
        r.reason = why;
        r.text = text.size() > 1024 ? std::string_view(text).substr(0, 1024) : std::string_view(text);
        out_.clear();
        internal::frame_writer(out_).write(r);
        answer(p, out_.data(), out_.size());
    };
    const std::string_view target = f.target;
    if (!exported(target))
        return reject(reject_reason::no_such_object, "node '" + name_ + "' does not export '" + std::string(target) + "'");
    if (p.served >= options_.max_served_per_peer)
        return reject(reject_reason::peer_limits, "node '" + name_ + "' is serving " + std::to_string(p.served) +
                                                      " requests of peer '" + p.name + "' (its limit)");
    envelope_ref body;
    net::decode_result d = decoder_.decode_payload(*options_.types, f, {}, body);
    if (!d) {
        bump(rejected_[static_cast<std::size_t>(internal::frame_error::undecodable_payload)]);
        log(log_kind::refused_delivery, "request from peer '" + p.name + "' to '" + std::string(target) + "': undecodable payload: " + d.reason);
        return reject(reject_reason::undecodable_type, "node '" + name_ + "' could not decode it: " + d.reason);
    }
    // The requester's own timer decides when its request timed out; this copy's runs longer
    // (twice, at least a second more), so that it only frees what a lost requester left here
    // and never answers first with an abandonment of its own.
    const auto timeout = f.timeout_ms ? std::chrono::milliseconds(f.timeout_ms) +
                                            std::max<std::chrono::milliseconds>(std::chrono::milliseconds(f.timeout_ms), 1s)
                                      : std::chrono::milliseconds(0);
    request_core* r = internal::new_request(env_, message_type{}, timeout);
    internal::request_add_ref(r);  // the delivery's
    const internal::local_send out =
        internal::send_named_local(*core_, target, body.release(), r, remote_source(p.name, f.source), {});
    ++p.served;
    auto* s = new served{shared_from_this(), r, p.name, p.incarnation, f.request_id, out};
    internal::request_continue(r, &node_core::answered, s);
}

void node_core::on_send(peer& p, const frame& f) {
    bump(n_.sends_served);
    const std::string_view target = f.target;
    if (!exported(target)) {
        bump(n_.served_refused);
        log(log_kind::refused_delivery, "one-way message from peer '" + p.name + "' to '" + std::string(target) + "' refused: not exported");
        return;
    }
    // A type this node knows is decoded by the object's own thread, before its handler runs
    // (decode_deferred): this thread only copies the payload. A type it does not know is
    // refused here.
    const net::type_entry* te = options_.types->find(f.type);
    if (!te) {
        envelope_ref none;
        const net::decode_result d = decoder_.decode_payload(*options_.types, f, {}, none);  // fails, naming the id
        return refused_payload(p.name, target, d.reason);
    }
    envelope_ref body(internal::make_envelope<internal::deferred_body>(&decode_deferred, te, sink_, f.payload));
    if (internal::send_named_local(*core_, target, body.release(), nullptr, remote_source(p.name, f.source),
                                   std::string(f.reply_to)) != internal::local_send::delivered) {
        bump(n_.served_refused);
        log(log_kind::refused_delivery, "one-way message from peer '" + p.name + "' to '" + std::string(target) + "': no such object");
    }
}

// A run of one-way messages to one object with one header (two or more): checked as on_send()
// checks one, and delivered as one internal::deferred_batch.
void node_core::on_sends(peer& p, std::span<const frame> run) {
    bump(n_.sends_served, run.size());
    const std::string_view target = run.front().target;
    if (!exported(target)) {
        bump(n_.served_refused, run.size());
        log(log_kind::refused_delivery, std::to_string(run.size()) + " one-way messages from peer '" + p.name + "' to '" +
                                            std::string(target) + "' refused: not exported");
        return;
    }
    // The payloads stay where they arrived: the run holds the message (its reference, taken
    // once the run exists, is let go of when the run is freed).
    envelope_ref body(internal::make_envelope<internal::deferred_batch>(&decode_deferred, sink_, core_.get(),
                                                                         &held_message::release, held_, run.size()));
    held_->refs.fetch_add(1, std::memory_order_relaxed);
    auto& b = internal::payload_of<internal::deferred_batch>(body.get());
    for (const frame& f : run) {
        if (const net::type_entry* te = options_.types->find(f.type)) {
            b.add(te, f.payload);
        } else {
            envelope_ref none;
            const net::decode_result d = decoder_.decode_payload(*options_.types, f, {}, none);  // fails, naming the id
            refused_payload(p.name, target, d.reason);
        }
    }
    const std::size_t n = b.size();
    if (n == 0) return;
    // Kept until the outcome is known: a run no object took is counted here, not by the
    // environment (deferred_batch::taken).
    body.get()->add_refs(1);
    envelope_ref keep(body.get());
    if (internal::send_named_local(*core_, target, body.release(), nullptr, remote_source(p.name, run.front().source),
                                   std::string(run.front().reply_to), n) != internal::local_send::delivered) {
        b.taken = true;
        bump(n_.served_refused, n);
        log(log_kind::refused_delivery, std::to_string(n) + " one-way messages from peer '" + p.name + "' to '" +
                                            std::string(target) + "': no such object");
    }
}

internal::envelope* decode_deferred(const void* type, void* context, std::span<const std::byte> bytes,
                                    const message_header& h) noexcept {
    const auto* te = static_cast<const net::type_entry*>(type);
    envelope_ref out;
    const net::decode_result d = te->decode(bytes, {}, out);
    if (d) return out.release();
    const auto* sink = static_cast<const decode_sink*>(context);
    if (auto n = sink->node.lock()) {
        n->refused_encoded(h, d.reason);
    } else {
        // The node is gone (its counters with it); the environment's log still hears of it.
        try {
            sink->env->log("node '" + sink->node_name + "': one-way message from '" + h.source + "' to '" +
                           h.destination + "': undecodable payload: " + d.reason);
        } catch (...) {
        }
    }
    return nullptr;
}

void node_core::refused_encoded(const message_header& h, const std::string& why) noexcept {
    // The source is "peer/sender" (remote_source).
    const std::string_view source = h.source;
    refused_payload(source.substr(0, source.find('/')), h.destination, why);
}

// A one-way message whose payload did not decode: on the I/O thread (a type this node does not
// know) or on its object's thread (refused_encoded). Any thread.
void node_core::refused_payload(std::string_view peer_name, std::string_view target, const std::string& why) noexcept {
    bump(n_.served_refused);
    bump(rejected_[static_cast<std::size_t>(internal::frame_error::undecodable_payload)]);
    try {
        log(log_kind::refused_delivery, "one-way message from peer '" + std::string(peer_name) + "' to '" +
                                            std::string(target) + "': undecodable payload: " + why);
    } catch (...) {
    }
}

void node_core::on_answer(peer& p, const frame& f) {
    auto it = p.inflight.find(f.request_id);
    if (it == p.inflight.end()) {
        bump(n_.replies_orphaned);
        return;
    }
    request_core* r = it->second.req;
    p.inflight.erase(it);
    bool won;
    if (f.kind == frame_kind::reply) {
        envelope_ref body;
        net::decode_result d = decoder_.decode_payload(*options_.types, f, {}, body);
        const message_type want = internal::request_reply_type(r);
        if (!d) {
            won = internal::request_finish(r, request_state::rejected, nullptr,
                                           "the reply of peer '" + p.name + "' did not decode: " + d.reason);
            if (won) {
                bump(n_.requests_rejected);
                bump(n_.rej_reason[static_cast<int>(reject_reason::undecodable_type)]);
            }
        } else if (want != message_type{} && body.get()->type() != want) {
            won = internal::request_finish(r, request_state::rejected, nullptr,
                                           "peer '" + p.name + "' replied with a " + readable_name(body.get()->type()) +
                                               " where a " + readable_name(want) + " was expected");
            if (won) {
                bump(n_.requests_rejected);
                bump(n_.rej_reason[static_cast<int>(reject_reason::undecodable_type)]);
            }
        } else {
            won = internal::request_finish(r, request_state::replied, body.release(), {});
            if (won) bump(n_.requests_replied);
        }
    } else {
        won = internal::request_finish(r, request_state::rejected, nullptr,
                                       "rejected by node '" + p.name + "' (" + internal::to_string(f.reason) +
                                           "): " + std::string(f.text));
        if (won) {
            bump(n_.requests_rejected);
            bump(n_.rej_reason[static_cast<int>(f.reason)]);
        }
    }
    if (!won) {
        internal::request_count_orphan(r);
        bump(n_.replies_orphaned);
    }
    internal::request_release(r);
}

void node_core::publish(peer_state s, const std::string& peer_name, const std::string& address) noexcept {
    try {
        send<peer_event>(events_, peer_event{s, peer_name, address});
    } catch (...) {
        // the environment is stopping: nobody is left to tell
    }
}

void node_core::update_view(const peer& p, bool erase) {
    {
        std::lock_guard g(view_lock_);
        if (erase) {
            views_.erase(p.name);
        } else {
            auto& v = views_[p.name];
            v.state = p.state;
            v.address = p.address;
            v.path = p.path;
        }
    }
    view_changed_.notify_all();
}

void node_core::peer_now(peer& p, peer_state s) {
    p.state = s;
    update_view(p);
    switch (s) {
        case peer_state::up: bump(n_.peers_up); break;
        case peer_state::suspect: bump(n_.peers_suspect); break;
        case peer_state::down: bump(n_.peers_down); break;
    }
    publish(s, p.name, p.address);
}

void node_core::lose_owed(peer& p, const std::string& why) noexcept {
    bump(n_.answers_lost, p.owed_answers.size());
    p.owed_answers.clear();
    p.owed_heartbeat = false;
    for (auto& k : p.owed_frames) lose(k, why);
    p.owed_frames.clear();
    for (auto& [id, fl] : p.inflight) abandon(fl.req, why);
    p.inflight.clear();
}

void node_core::drop_peer(peer& p, const std::string& why) {
    close_queue(p, why);
    lose_owed(p, why);
    p.down_since = clock::now();
    peer_now(p, peer_state::down);
    if (p.conn) {
        connection& c = *p.conn;
        c.p = nullptr;
        close_dealer(c);
        c.state = connection::backoff;
        c.deadline = clock::now() + c.backoff_delay.next();
    } else {
        by_rid_.erase(p.rid);
    }
    // Kept in the table as down (a name requests can fail fast on) until it comes back.
    p.conn = nullptr;
    p.rid.clear();
    p.served = 0;
}

namespace {

const char* log_kind_text(int k) noexcept {
    static constexpr const char* names[] = {"rejected messages", "refused HELLOs", "refused connections",
                                            "refused deliveries", "frames that failed"};
    return names[k];
}

}  // namespace

std::string node_core::close_window(std::size_t k, clock::time_point now) noexcept {
    log_gate& gate = log_gates_[k];
    std::string summary;
    if (gate.suppressed > 0) {
        try {
            summary = std::to_string(gate.suppressed) + " more log lines of " + log_kind_text(static_cast<int>(k)) +
                      " were not written (over " + std::to_string(options_.log_lines_per_second) +
                      " a second; counted in the node's stats); the last: " + gate.last;
        } catch (...) {
        }
    }
    // A new window from now: the next lines of the kind are written again.
    gate.window_start = now;
    gate.written = 0;
    gate.suppressed = 0;
    gate.last.clear();
    return summary;
}

void node_core::log(log_kind k, const std::string& text) noexcept {
    const std::uint32_t limit = options_.log_lines_per_second;
    if (limit == 0) return log(text);
    std::string summary;
    bool write = false;
    {
        std::lock_guard g(log_gates_lock_);
        log_gate& gate = log_gates_[static_cast<std::size_t>(k)];
        const auto now = clock::now();
        if (now - gate.window_start >= std::chrono::seconds(1)) {
            summary = close_window(static_cast<std::size_t>(k), now);
        }
        if (gate.written < limit) {
            ++gate.written;
            write = true;
        } else {
            ++gate.suppressed;
            log_lines_suppressed_.fetch_add(1, std::memory_order_relaxed);
            log_lines_pending_.store(true, std::memory_order_relaxed);
            try {
                gate.last = text;
            } catch (...) {
            }
        }
    }
    if (!summary.empty()) log(summary);
    if (write) log(text);
}

void node_core::flush_log_gates(clock::time_point now) noexcept {
    if (!log_lines_pending_.load(std::memory_order_relaxed)) return;
    std::vector<std::string> summaries;
    bool pending = false;
    {
        std::lock_guard g(log_gates_lock_);
        for (std::size_t k = 0; k < log_gates_.size(); ++k) {
            log_gate& gate = log_gates_[k];
            if (gate.suppressed == 0) continue;
            if (now - gate.window_start < std::chrono::seconds(1)) {
                pending = true;
                continue;
            }
            std::string line = close_window(k, now);
            try {
                if (!line.empty()) summaries.push_back(std::move(line));
            } catch (...) {
            }
        }
        log_lines_pending_.store(pending, std::memory_order_relaxed);
    }
    for (auto& line : summaries) log(line);
}

void node_core::forget_sweep(clock::time_point now) {
    const auto forget = options_.forget_down_peers_after;
    next_sweep_ = now + (forget.count() > 0 ? std::clamp<std::chrono::nanoseconds>(forget / 4, 10ms, 1s)
                                            : std::chrono::nanoseconds(1s));
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        std::erase_if(it->second, [](command& c) {
            if (internal::request_get_state(c.req) < request_state::replied) return false;
            internal::request_release(std::exchange(c.req, nullptr));  // timed out or cancelled
            return true;
        });
        it = it->second.empty() ? waiting_.erase(it) : std::next(it);
    }
    if (forget.count() <= 0) return;
    for (auto it = peers_.begin(); it != peers_.end();) {
        peer& p = *it->second;
        const bool dialled = std::any_of(conns_.begin(), conns_.end(), [&](const std::unique_ptr<connection>& c) {
            return c->peer_name == p.name || c->expected_peer == p.name;
        });
        if (p.state != peer_state::down || now - p.down_since < forget || dialled || !p.inflight.empty() ||
            waiting_.count(p.name)) {
            ++it;
            continue;
        }
        update_view(p, true);
        bump(n_.peers_forgotten);
        it = peers_.erase(it);
    }
}

void node_core::tick(clock::time_point now) {
    ++ticks_;
    flush_log_gates(now);
    if (now >= next_sweep_) forget_sweep(now);
    const bool beat = now >= next_heartbeat_;
    if (beat) next_heartbeat_ = now + options_.heartbeat_interval;
    for (auto& [pn, pp] : peers_) {
        peer& p = *pp;
        if (p.state == peer_state::down) continue;
        if (beat && !p.owed_heartbeat) heartbeat(p);
        const bool ok = p.detector.available();
        if (p.state == peer_state::up && !ok) {
            p.suspect_since = now;
            peer_now(p, peer_state::suspect);
        } else if (p.state == peer_state::suspect && ok) {
            peer_now(p, peer_state::up);
        } else if (p.state == peer_state::suspect && now - p.suspect_since >= options_.down_after) {
            log("peer '" + p.name + "' is down (silent; phi " + std::to_string(p.detector.phi()) + ")");
            drop_peer(p, "peer '" + p.name + "' lost");
        }
        // Requests that became final while in flight (timed out, cancelled) are let go after
        // a sweep period, so that a late answer still finds them and is counted orphaned.
        if ((ticks_ & 255) == 0) {
            for (auto it = p.inflight.begin(); it != p.inflight.end();) {
                if (internal::request_get_state(it->second.req) >= request_state::replied) {
                    if (it->second.final_seen) {
                        internal::request_release(it->second.req);
                        it = p.inflight.erase(it);
                        continue;
                    }
                    it->second.final_seen = true;
                }
                ++it;
            }
        }
    }
    for (auto& c : conns_) {
        if (c->state == connection::waiting_hello && now >= c->deadline) {
            close_dealer(*c);
            c->state = connection::backoff;
            c->deadline = now + c->backoff_delay.next();
        } else if (c->state == connection::backoff && now >= c->deadline) {
            dial(*c);
        }
    }
    if (reload_pending_ && now >= reload_due_) watched_reload();
    // Requests waiting for a peer that timed out meanwhile are let go.
    if ((ticks_ & 15) == 0)
        for (auto& [pn, cmds] : waiting_)
            std::erase_if(cmds, [](command& c) {
                if (internal::request_get_state(c.req) < request_state::replied) return false;
                internal::request_release(c.req);
                return true;
            });
}

void test_access::stop_without_bye(node& n) {
    if (!n.core_) return;
    n.core_->no_bye_.store(true, std::memory_order_relaxed);
    n.stop();
}

void test_access::sleep_without_ticks(const node& n, bool on) {
    n.core_->no_ticks_.store(on, std::memory_order_relaxed);
    n.core_->wake();
}

void test_access::pause_sends(const node& n, bool paused) {
    n.core_->sends_paused_.store(paused, std::memory_order_relaxed);
    n.core_->wake();
}

}  // namespace internal_node

// ---- the handle ----

node::node() noexcept = default;
node::node(node&&) noexcept = default;
node& node::operator=(node&& o) noexcept {
    if (this != &o) {
        stop();
        core_ = std::move(o.core_);
    }
    return *this;
}
node::~node() { stop(); }

node::node(environment& env, std::string name, node_options options) {
    check_name(name);
    if (name.find('/') != std::string::npos)
        throw invalid_name_error("invalid node name '" + name + "': a node name has no '/' (it prefixes object names)");
    core_ = std::make_shared<internal_node::node_core>(env, std::move(name), std::move(options));
    core_->start();
}

const std::string& node::name() const noexcept {
    static const std::string none;
    return core_ ? core_->name() : none;
}

std::string node::listen(std::string_view endpoint) {
    if (!core_) throw usage_error("node: listen() on an empty handle");
    core_->check_listen(endpoint);
    return core_->listen(endpoint);
}
std::vector<std::string> node::endpoints() const { return core_ ? core_->endpoints() : std::vector<std::string>{}; }
void node::connect(std::string_view endpoint, const connect_options& options) {
    if (!core_) throw usage_error("node: connect() on an empty handle");
    core_->connect(endpoint, options);
}
void node::allow(std::string_view public_key, std::string_view node_name) {
    if (!core_) throw usage_error("node: allow() on an empty handle");
    core_->allow(public_key, node_name);
}
void node::revoke(std::string_view node_name) {
    if (!core_) throw usage_error("node: revoke() on an empty handle");
    core_->revoke(node_name);
}
allow_list_changes node::reload_allow_list() {
    if (!core_) throw usage_error("node: reload_allow_list() on an empty handle");
    return core_->reload_allow_list();
}
const std::string& node::public_key() const noexcept {
    static const std::string none;
    return core_ ? core_->public_key() : none;
}
void node::export_objects(std::string pattern) {
    if (!core_) throw usage_error("node: export_objects() on an empty handle");
    if (pattern.empty()) throw usage_error("node '" + core_->name() + "': an empty export pattern");
    core_->export_objects(std::move(pattern));
}
mbox node::peer_events() const {
    if (!core_) throw usage_error("node: peer_events() on an empty handle");
    return core_->events_;
}
bool node::wait_for_peer(std::string_view peer, std::chrono::nanoseconds timeout) const {
    return core_ && core_->wait_for_peer(peer, timeout);
}
std::vector<peer_info> node::peers() const { return core_ ? core_->peers() : std::vector<peer_info>{}; }
node_stats node::stats() const { return core_ ? core_->stats() : node_stats{}; }
void node::stop() noexcept {
    if (core_) core_->stop();
}

}  // namespace mailroom::net
