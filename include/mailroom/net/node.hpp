#pragma once
/// A node: an environment's face to the network over ZeroMQ. It listens on endpoints and
/// connects to other nodes, knows its peers by their node names (HELLO), watches them with
/// heartbeats and a phi-accrual failure detector, reconnects with back-off, and carries
/// `request<R>(env, "node/object", ...)` and `send_to(env, "node/object", ...)` to the named
/// objects another node exports, with the five request states across the wire. One I/O thread
/// per node owns every socket. See docs/nodes.md.

#include <mailroom/core/error.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/mbox/event_handle.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/net/codec.hpp>
#include <mailroom/net/security.hpp>
#include <mailroom/net_export.hpp>
#include <mailroom/session/session.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::net {

/// A one-way message to `node/object` could not go: the peer is down or the node is stopped.
/// (A request is never raised for: it is abandoned with the reason.)
class MAILROOM_NET_EXPORT peer_unavailable_error final : public error {
public:
    using error::error;
};

/// A one-way message to `node/object` was refused by the peer's send queue (full, reaction
/// reject, or block and still full after block_timeout). With reaction drop no error is raised:
/// the message is counted (node_stats::sends_dropped).
class MAILROOM_NET_EXPORT peer_limits_error final : public error {
public:
    using error::error;
};

/// listen() or connect() failed (a bad endpoint, an address in use), or the node is stopped.
class MAILROOM_NET_EXPORT endpoint_error final : public error {
public:
    using error::error;
};

/// What a node's socket is for, when the socket-options hook is called.
enum class socket_role : std::uint8_t {
    listening,   ///< the ROUTER that accepts other nodes (before each bind)
    connecting,  ///< a DEALER that dials one node (before its connect)
};

/// What a peer's full send queue does with one more message (see node_options::send_*).
enum class send_overflow : std::uint8_t {
    drop,    ///< refused at once: a request is rejected ("peer limits"), a one-way message counted dropped
    reject,  ///< refused at once: a request is rejected ("peer limits"), a one-way send raises peer_limits_error
    block,   ///< the sender waits for room up to send_block_timeout, then is refused as by reject
};

struct node_options {
    /// The message types this node sends and receives (required). Shared, read-only from now on.
    std::shared_ptr<const type_registry> types{};
    /// Application heartbeats to every peer; also the ZMTP heartbeat interval.
    std::chrono::milliseconds heartbeat_interval{1000};
    /// phi at which a silent peer is suspected (the failure detector's threshold).
    double suspect_phi = 10.0;
    /// Lateness of a heartbeat the detector tolerates before phi rises.
    std::chrono::milliseconds acceptable_heartbeat_pause{3000};
    /// The floor of the heartbeat intervals' standard deviation in the detector.
    std::chrono::milliseconds min_std_deviation{100};
    /// How long a peer stays suspected before it is declared down (its requests abandoned).
    std::chrono::milliseconds down_after{2000};
    /// How long a connection waits for the other node's HELLO before it dials again.
    std::chrono::milliseconds hello_timeout{2000};
    /// A peer down this long that this node does not dial (it dialled in, and no connect() of
    /// this node names it) and that no request waits for is forgotten: it leaves peers() and a
    /// name addressed to it is no longer a peer's (so a node that many short-lived peers dial
    /// keeps a bounded table). 0: never.
    std::chrono::milliseconds forget_down_peers_after{std::chrono::minutes(5)};
    /// Reconnect back-off: from this (doubling, with full jitter) ...
    std::chrono::milliseconds reconnect_min{100};
    /// ... up to this.
    std::chrono::milliseconds reconnect_max{10'000};
    /// The largest ZeroMQ message accepted (ZMQ_MAXMSGSIZE); a larger one drops the connection.
    std::int64_t max_message_bytes = (16 << 20) + 4096;
    /// How long closing a socket may wait to flush what it holds (ZMQ_LINGER).
    std::chrono::milliseconds linger{200};
    /// Requests from one peer being served at once; one more is rejected (peer limits).
    std::uint32_t max_served_per_peer = 65'536;
    /// Each peer's send queue: frames (requests, one-way messages) queued for its socket at most ...
    std::size_t send_queue_messages = 100'000;
    /// ... and their bytes at most (a single frame over this is refused whatever the reaction).
    std::size_t send_queue_bytes = std::size_t{256} << 20;
    /// What a full send queue does with one more frame.
    send_overflow send_reaction = send_overflow::reject;
    /// send_overflow::block: the longest a sender waits for room (then it is refused).
    std::chrono::milliseconds send_block_timeout{1000};
    /// A request or one-way message for a peer that nothing went to for this long, and whose
    /// send queue is empty, is handed to the socket on the sender's own thread while the node's
    /// I/O thread sleeps, instead of waking the I/O thread to do it (one thread less on the way
    /// of a round trip); so is every answer to a served request while the I/O thread sleeps.
    /// Frames that follow one another closer than this wait for the I/O thread, which packs
    /// them into BATCHes. Negative: everything goes through the I/O thread.
    std::chrono::microseconds send_now_after{50};
    /// Security (docs/nodes.md, "Security"). With a secret key (security.secret_key_file or
    /// secret_key) the node speaks CURVE on every endpoint: it lets in only the nodes whose
    /// public keys it allows (security.allow_list_dir, node::allow), each under its node name,
    /// and dials only with the server's public key (connect_options). Without one, it speaks
    /// NULL (no authentication, no encryption) and only on local endpoints (tcp:// loopback,
    /// ipc://, inproc://) unless security.allow_null_remote; so does security.mode null.
    security_options security{};
    /// Log lines about what peers send wrong (rejected messages, refused HELLOs and connections,
    /// refused or failing deliveries) are written at most this many per second of each kind; the
    /// rest are counted (node_stats::log_lines_suppressed, besides their own counters) and said in
    /// one summary line per kind and second. 0: no limit.
    std::uint32_t log_lines_per_second = 10;
    /// Called on the I/O thread with each new socket (a `void*` ZeroMQ socket) before it binds
    /// or connects, and the endpoint: where security sets CURVE options. What it throws fails
    /// that listen() or connect() (or that reconnect attempt, logged).
    std::function<void(void* socket, socket_role role, std::string_view endpoint)> socket_options{};
};

/// How connect() reaches a node that speaks CURVE.
struct connect_options {
    /// The server's public key (Z85). When empty, the key of `peer` is used: `NAME.pub` of the
    /// allow-list directory, else the key last allowed in code under that name (node::allow).
    std::string server_public_key{};
    /// The node expected at the endpoint: its HELLO must give this name, or it is refused
    /// (hello_refused). When empty and the server's key is allowed under a name, that name.
    std::string peer{};
};

/// A peer's state, as the failure detector sees it.
enum class peer_state : std::uint8_t {
    up,       ///< HELLO exchanged, heartbeats arriving
    suspect,  ///< silent past the detector's threshold
    down,     ///< suspected for down_after (or gone): its requests were abandoned
};
MAILROOM_NET_EXPORT const char* to_string(peer_state s) noexcept;

/// A peer event, delivered to the sessions that subscribe_peers(): `state` is what the peer
/// became (up: peer_up, suspect: peer_suspect, down: peer_down).
struct peer_event {
    peer_state state = peer_state::up;
    std::string peer;     ///< the peer's node name
    std::string address;  ///< where it connected from or was dialled at ("" when unknown)
};

/// A peer as the node knows it now.
struct peer_info {
    std::string name;
    peer_state state = peer_state::up;
    std::string address;
};

/// What node::reload_allow_list() changed, by node name (each list sorted).
struct allow_list_changes {
    std::vector<std::string> added;    ///< a new NAME.pub: let in
    std::vector<std::string> changed;  ///< a NAME.pub with another key: revoked, then its new key let in
    std::vector<std::string> removed;  ///< a NAME.pub gone: revoked (or only its key, if allow() let NAME in)

    bool empty() const noexcept { return added.empty() && changed.empty() && removed.empty(); }
};
/// "added a,b changed - removed c": the form the node's log and `mailroom node` print.
MAILROOM_NET_EXPORT std::string to_string(const allow_list_changes& c);

/// Frames of each kind.
struct frame_counts {
    std::uint64_t hello = 0, heartbeat = 0, request = 0, send = 0, reply = 0, reject = 0, batch = 0, bye = 0;
};

/// What a node counted since it was made. Any thread.
struct node_stats {
    frame_counts frames_in{};
    frame_counts frames_out{};
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
    /// ZeroMQ messages refused by the decoder, and per reason.
    std::uint64_t frames_rejected = 0;
    std::uint64_t rejected_truncated = 0, rejected_oversized = 0, rejected_unknown_kind = 0,
                  rejected_unknown_version = 0, rejected_bad_magic = 0, rejected_trailing_bytes = 0,
                  rejected_malformed = 0, rejected_undecodable_payload = 0;
    /// Frames other than HELLO from a connection that has not said HELLO (dropped).
    std::uint64_t frames_from_unknown = 0;
    std::uint64_t hello_refused = 0;  ///< wrong version, duplicate or own name, wrong node (below)
    /// Of hello_refused: a name other than the one the peer's key is allowed under (CURVE), or
    /// than the node expected at a connect() endpoint (connect_options::peer).
    std::uint64_t hello_refused_wrong_node = 0;
    /// Of hello_refused: a node revoked (node::revoke) and not allowed again.
    std::uint64_t hello_refused_revoked = 0;
    /// Connections refused by the node's ZAP handler (CURVE), by reason: a key not allowed, a
    /// malformed request, ... (zero without keys: a node without keys has no handler).
    zap_stats zap{};
    /// Connections whose ZeroMQ handshake failed on one of the node's sockets (seen through a
    /// socket monitor): the peer's security mechanism is not the node's (a NULL client to a
    /// CURVE node, which never reaches the ZAP handler); another protocol error (a CURVE client
    /// with the wrong server key, a broken greeting); refused by a ZAP handler (this node's,
    /// also in `zap`, or the server's when this node dialled); no detail from libzmq.
    std::uint64_t handshake_failed_mechanism = 0, handshake_failed_protocol = 0, handshake_failed_auth = 0,
                  handshake_failed_other = 0;
    std::uint64_t peers_up = 0, peers_suspect = 0, peers_down = 0;  ///< events
    std::uint64_t peers_forgotten = 0;  ///< down peers dropped from the table (forget_down_peers_after)
    /// Peers that said BYE (they were stopping) and went down at once, without waiting for the
    /// failure detector; also in peers_down.
    std::uint64_t peers_left = 0;
    /// Requests to other nodes: handed to the node, and how the node finished them (timeouts
    /// and cancels finish a request elsewhere: named_stats has every final state).
    std::uint64_t requests_out = 0, requests_replied = 0, requests_rejected = 0, requests_abandoned = 0;
    /// Of requests_rejected, by the remote reason.
    std::uint64_t rejected_no_such_object = 0, rejected_handler = 0, rejected_undecodable_type = 0,
                  rejected_peer_limits = 0;
    std::uint64_t replies_orphaned = 0;  ///< answers to a request already final or unknown
    std::uint64_t sends_out = 0;         ///< one-way messages handed to a peer's socket
    std::uint64_t sends_lost = 0;        ///< one-way messages dropped: peer lost, unreachable, node stopped
    std::uint64_t requests_served = 0;   ///< requests from peers given to local objects (or refused)
    std::uint64_t sends_served = 0;      ///< one-way messages from peers given to local objects
    std::uint64_t served_refused = 0;    ///< of those, refused (not exported, no object, undecodable, limits)
    std::uint64_t answers_lost = 0;      ///< replies and rejects for a peer that went away first
    std::uint64_t unreachable = 0;       ///< sends the socket refused (EHOSTUNREACH, a full pipe)
    /// One-way messages refused by a peer's full send queue (any reaction; with reject and
    /// block the sender also got peer_limits_error).
    std::uint64_t sends_dropped = 0;
    /// Requests refused by a peer's full send queue (rejected "peer limits"; also counted in
    /// requests_rejected and rejected_peer_limits).
    std::uint64_t requests_refused_by_queue = 0;
    /// Frames handed back from a send queue unsent (peer lost, node stopped, socket refused):
    /// each request abandoned, each one-way message counted in sends_lost.
    std::uint64_t frames_handed_back = 0;
    /// Send queues flushed to the socket on the sending thread itself, the node's I/O thread
    /// asleep (node_options::send_now_after), and answers to served requests sent on the
    /// thread that answered: each a wake-up of the I/O thread saved.
    std::uint64_t flushed_by_sender = 0, answers_by_server_thread = 0;
    /// Reloads of the allow-list made by the node itself after a change in its directory
    /// (security.watch_allow_list_dir), and of those the ones that failed (a broken file: the
    /// list stayed as it was; the reason is logged).
    std::uint64_t allow_list_reloads = 0, allow_list_reloads_failed = 0;
    /// Log lines not written, over node_options::log_lines_per_second (each said in a summary).
    std::uint64_t log_lines_suppressed = 0;
};

namespace internal_node {
class node_core;
struct test_access;
}

/// A node of environment `env`, named `name` (a named object's name without '/'). One node per
/// environment. Stops (bounded: it joins its I/O thread, abandoning whatever is in flight with
/// the reason "node stopped") when destroyed, when stop() is called, or when its environment
/// stops, whichever comes first. Any thread may call any member.
class MAILROOM_NET_EXPORT node {
public:
    node() noexcept;
    /// Raises invalid_name_error for a bad name, usage_error without options.types or when
    /// `env` has a node, environment_stopped_error when it is stopping, key_file_error for a
    /// secret key file or an allow-list directory that cannot be read, security_error for
    /// security settings that do not fit together (an allow-list without a secret key).
    node(environment& env, std::string name, node_options options);
    node(node&&) noexcept;
    node& operator=(node&&) noexcept;
    ~node();

    explicit operator bool() const noexcept { return core_ != nullptr; }
    const std::string& name() const noexcept;

    /// Binds `endpoint` (`tcp://host:port`, port 0 or `*` for any free one, `ipc://`,
    /// `inproc://`) and returns the endpoint bound (the port chosen). Blocks until the I/O
    /// thread did it (bounded). Raises endpoint_error naming the node and the endpoint, and
    /// security_error when the security settings refuse it (a remote endpoint without keys,
    /// unless allow_null_remote).
    std::string listen(std::string_view endpoint);
    /// The endpoints bound so far.
    std::vector<std::string> endpoints() const;
    /// Dials `endpoint` and keeps dialling (with back-off) while it is down; the peer is known
    /// once its HELLO came (peer_up). Raises endpoint_error for a malformed endpoint, and
    /// security_error naming the node and the endpoint when the security settings refuse it: a
    /// remote endpoint without keys (unless allow_null_remote), a CURVE node without the
    /// server's key (options.server_public_key, or a `peer` whose key it knows), a server key
    /// on a node without keys.
    void connect(std::string_view endpoint, const connect_options& options = {});

    /// Lets in the node `node_name` with CURVE public key `public_key` (Z85), beside the
    /// allow-list directory, and remembers it as that node's key for connect(). Raises
    /// security_error on a node without keys or for a bad key, invalid_name_error for a bad name.
    void allow(std::string_view public_key, std::string_view node_name);
    /// Stops trusting the node `node_name` on a running node: every key allowed under that name
    /// (from the allow-list directory or allow()) is let in no more; if it is a peer now, it is
    /// dropped at once as down (its requests in flight abandoned, "peer 'x' revoked"); a HELLO
    /// under that name is refused from then on, even on a connection made before
    /// (`hello_refused_revoked`); and this node's connect()s to it stop dialling. Returns once
    /// done. allow() under that name trusts it again (then connect() to dial it). Raises
    /// security_error on a node without keys, invalid_name_error for a bad name.
    void revoke(std::string_view node_name);
    /// Reads the allow-list directory (security_options::allow_list_dir) again on a running
    /// node and brings the allow-list in line with it: a `NAME.pub` that is new lets node NAME
    /// in (as allow() would, even a node revoked before); one whose key changed revokes NAME
    /// (as revoke(): the peer dropped, its requests abandoned) and lets the new key in (key
    /// rotation: the node comes back with its new key); one that is gone revokes NAME, unless
    /// allow() let NAME in (then only the file's key goes). Files unchanged change nothing.
    /// All or nothing: a broken file, a bad name, a key under two names or a missing directory
    /// raises (key_file_error, invalid_name_error, security_error) and nothing changes. Raises
    /// security_error on a node without keys or without an allow-list directory. Returns what
    /// changed, by node name. Any thread; calls are serialised.
    allow_list_changes reload_allow_list();
    /// This node's CURVE public key (Z85); empty without keys.
    const std::string& public_key() const noexcept;

    /// Serves the local named objects whose names match `pattern` (`*` matches any run of
    /// characters: "pricing/*"; "*" alone exports everything) to other nodes. Cumulative.
    void export_objects(std::string pattern);
    /// Serves every local named object (and the local `*`) to other nodes.
    void export_all() { export_objects("*"); }

    /// Peer events (peer_event: up, suspect, down) as callbacks `f(const peer_event&)` on
    /// session `s`; the handle has every event object's guarantees (docs/lifetimes.md).
    template <class F>
    [[nodiscard]] event_handle subscribe_peers(session& s, F&& f) {
        return s.subscribe<peer_event>(peer_events(), std::forward<F>(f));
    }
    /// The publish-subscribe mbox the node publishes peer_events to (agents subscribe here).
    mbox peer_events() const;

    /// Blocks until `peer` is up or `timeout` passed; true when up. Not on a worker thread of
    /// the environment in a callback (it would block it): there, subscribe_peers().
    bool wait_for_peer(std::string_view peer, std::chrono::nanoseconds timeout) const;
    /// The peers known now.
    std::vector<peer_info> peers() const;
    node_stats stats() const;

    /// Stops the node: bounded (the I/O thread is joined); requests in flight are abandoned
    /// ("node '<name>' stopped"), one-way messages not yet sent are counted lost. Idempotent.
    void stop() noexcept;

private:
    friend struct internal_node::test_access;
    std::shared_ptr<internal_node::node_core> core_;
};

}  // namespace mailroom::net
