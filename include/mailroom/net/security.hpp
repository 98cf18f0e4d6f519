#pragma once
/// Security for nodes: CURVE key pairs and key files, the ZAP handler that lets in only the
/// nodes of an allow-list (and tells the node which node a connection belongs to), and the
/// endpoint policy that refuses unauthenticated (NULL) security on anything but a local
/// endpoint unless the user opts in. A standalone piece: the node plugs it in; until then it
/// works on any libzmq socket. See docs/net.md, "Security".
///
/// libzmq's types do not appear here: a socket or a context is libzmq's `void*` handle (with
/// cppzmq, `socket.handle()` and `context.handle()`).

#include <mailroom/core/error.hpp>
#include <mailroom/net_export.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::net {

/// Misuse or misconfiguration of security: CURVE not built into libzmq, a key that is not a
/// Z85 CURVE key, NULL security on a remote endpoint without the opt-in, an endpoint that is not
/// one, a ZAP endpoint already taken. The message names the key file, endpoint or node.
class MAILROOM_NET_EXPORT security_error final : public error {
public:
    using error::error;
};

/// What is wrong with a key file.
enum class key_file_problem : std::uint8_t {
    missing,               ///< no such file, or it cannot be opened
    not_a_file,            ///< a directory or a device, or larger than a key file can be
    exists,                ///< writing: the file is there and overwriting was not asked for
    no_key,                ///< no key line (only comments and blank lines)
    several_keys,          ///< more than one key line
    wrong_length,          ///< the key line is not 40 characters
    not_z85,               ///< a character outside Z85's alphabet, or a group over 2^32
    insecure_permissions,  ///< a secret key file that group or others may read or write
    secret_key,            ///< read as a public key, but the file says it holds a secret key
    io,                    ///< reading or writing failed (disk full, permission denied, ...)
};
/// A problem's name ("wrong_length").
MAILROOM_NET_EXPORT const char* to_string(key_file_problem p) noexcept;

/// A key file could not be read or written; `what()` names the file and the problem, never
/// a character of a secret key.
class MAILROOM_NET_EXPORT key_file_error final : public error {
public:
    key_file_error(std::filesystem::path file, key_file_problem problem, const std::string& what);
    ~key_file_error() override;
    const std::filesystem::path& file() const noexcept { return file_; }
    key_file_problem problem() const noexcept { return problem_; }

private:
    std::filesystem::path file_;
    key_file_problem problem_;
};

/// The length of a CURVE key in Z85 text (32 bytes).
inline constexpr std::size_t z85_key_length = 40;

/// Whether libzmq was built with CURVE (libsodium); Debian's is.
MAILROOM_NET_EXPORT bool curve_available() noexcept;

/// Whether `key` is a 40-character Z85 text that decodes to 32 bytes.
MAILROOM_NET_EXPORT bool is_z85_key(std::string_view key) noexcept;

/// A node's CURVE key pair, both halves in Z85 (40 characters each).
struct MAILROOM_NET_EXPORT curve_keypair {
    std::string public_key;
    std::string secret_key;

    /// A fresh pair from libzmq's zmq_curve_keypair (libsodium's random source). Raises
    /// security_error when CURVE is not available.
    static curve_keypair generate();
    /// The pair of a secret key (the public half is derived from it). Raises security_error
    /// naming the problem (not the key) when it is not a Z85 CURVE key.
    static curve_keypair from_secret(std::string_view secret_key);
};

/// How key files are written.
struct key_write_options {
    bool overwrite = false;  ///< replace existing files (each replaced whole, never half written)
};

/// Writes `keys` as a key-file pair: the secret key to `secret_file` (mode 0600, created so that
/// no other user can open it at any moment) and the public key to `public_file` (mode 0644),
/// each a comment header and one Z85 line (docs/net.md, "Key files"). `name` goes into the
/// headers. Raises key_file_error (`exists`) if either file exists and `overwrite` is not set,
/// before writing anything; `io` when writing fails.
MAILROOM_NET_EXPORT void write_key_files(const curve_keypair& keys, std::string_view name,
                                         const std::filesystem::path& secret_file,
                                         const std::filesystem::path& public_file,
                                         const key_write_options& options = {});

/// Reads a public key file. Raises key_file_error naming the file: missing, not_a_file,
/// no_key, several_keys, wrong_length, not_z85, or secret_key (the file is marked as a secret
/// key: a secret key where a public one belongs would give it away).
MAILROOM_NET_EXPORT std::string read_public_key_file(const std::filesystem::path& file);

/// Reads a secret key file and derives its public half. Refuses, like ssh, a file that group or
/// others may read or write (insecure_permissions), and raises key_file_error for the same
/// problems as read_public_key_file.
MAILROOM_NET_EXPORT curve_keypair read_secret_key_file(const std::filesystem::path& file);

/// Raises invalid_name_error naming `name` unless it is a valid node name: 1 to 255 characters
/// of [A-Za-z0-9._:-] (a named object's characters without `/`, which separates node/object).
MAILROOM_NET_EXPORT void check_node_name(std::string_view name);

// ---- the ZAP handler ------------------------------------------------------------------------

/// Whether the ZAP handler lets in peers that use no security (the NULL mechanism).
enum class null_access : std::uint8_t {
    refuse,  ///< never (a CURVE node)
    local,   ///< only from a loopback address (127.0.0.0/8, ::1) or an ipc:// or inproc:// peer
    any,     ///< from anywhere (the explicit opt-in, security_options::allow_null_remote)
};

/// The ZAP handler's settings.
struct zap_options {
    /// The ZAP domain it answers for (ZMQ_ZAP_DOMAIN of the sockets it guards); requests for
    /// another domain are refused.
    std::string domain = "mailroom";
    null_access null = null_access::refuse;
    /// Where refusals and malformed requests are logged, each a line naming the peer's address;
    /// stderr when empty. Called on the thread that calls handle().
    std::function<void(std::string_view)> log{};
};

/// What the ZAP handler has answered so far. Each counter only grows.
struct zap_stats {
    std::uint64_t allowed_curve = 0;        ///< CURVE clients whose key is in the allow-list
    std::uint64_t allowed_null = 0;         ///< NULL clients let in by null_access
    std::uint64_t refused_unknown_key = 0;  ///< CURVE clients whose key is not in the allow-list
    std::uint64_t refused_null = 0;         ///< NULL clients that null_access keeps out
    std::uint64_t refused_mechanism = 0;    ///< PLAIN or GSSAPI clients (never allowed)
    std::uint64_t refused_domain = 0;       ///< requests for a domain other than zap_options::domain
    std::uint64_t malformed = 0;            ///< requests that are not RFC 27 ZAP 1.0 (refused)

    std::uint64_t refused() const noexcept {
        return refused_unknown_key + refused_null + refused_mechanism + refused_domain + malformed;
    }
};

/// The ZAP (RFC 27) handler of one ZeroMQ context: it binds `inproc://zeromq.zap.01` on the
/// context, and libzmq asks it about every connection that a socket with ZMQ_ZAP_DOMAIN (or
/// a CURVE server socket) of that context accepts. A CURVE client is let in when its public key
/// is in the allow-list, and its node name is the ZAP user id: every message from that
/// connection then carries it as the "User-Id" property (zmq_msg_gets), so the node knows which
/// node sent it. Anything else is refused ("400"), counted and logged with the peer's address;
/// a malformed request is refused and counted and never harms the handler.
///
/// No thread of its own: the owner's poll loop drives it (poll socket() for ZMQ_POLLIN, then
/// call handle()). A node already has one I/O thread that owns its sockets (ZeroMQ sockets
/// belong to one thread), ZAP requests come once per connection handshake, and a handler
/// without a thread has nothing to start, wake or join when the node stops.
///
/// Bind it before any socket it guards accepts connections: libzmq lets every CURVE client in
/// when no handler is bound. Destroy it after them, and before the context is terminated.
/// One entry of an allow-list: the node `node_name` may connect with CURVE key `public_key`.
struct allow_entry {
    std::string public_key;  ///< Z85
    std::string node_name;
    bool operator==(const allow_entry&) const = default;
};

/// Reads every `NAME.pub` of `dir` (other files are left alone) as node NAME, without allowing
/// anything: a broken file raises key_file_error, an invalid name invalid_name_error, a
/// missing directory key_file_error (missing), and the same key under two names
/// security_error, all naming the directory or file.
MAILROOM_NET_EXPORT std::vector<allow_entry> read_allow_directory(const std::filesystem::path& dir);

class MAILROOM_NET_EXPORT zap_handler final {
public:
    /// Binds the ZAP endpoint on `zmq_context`. Raises security_error when the context already
    /// has a ZAP handler (naming the endpoint) or when `options.domain` is empty.
    explicit zap_handler(void* zmq_context, zap_options options = {});
    /// Closes its socket. On the thread that drives it (or after that thread has stopped).
    ~zap_handler();
    zap_handler(const zap_handler&) = delete;
    zap_handler& operator=(const zap_handler&) = delete;

    /// Lets in the node `node_name` with CURVE public key `public_key` (Z85). Any thread. Raises
    /// security_error when the key is not a Z85 key or is already allowed under another name,
    /// invalid_name_error for an invalid node name. A node may have several keys (rotation).
    void allow(std::string_view public_key, std::string_view node_name);
    /// Lets in every `NAME.pub` of `dir` as node NAME (other files are left alone); returns how
    /// many keys it added. Any thread. All or nothing: a broken file raises key_file_error, an
    /// invalid name invalid_name_error, a missing directory key_file_error (missing), and then
    /// nothing of that directory is allowed.
    std::size_t allow_directory(const std::filesystem::path& dir);
    /// Stops letting `public_key` in (connections already made stay); whether it was allowed.
    /// Any thread.
    bool revoke(std::string_view public_key);
    /// Stops letting in every key allowed as node `node_name`; how many there were. Any thread.
    std::size_t revoke_node(std::string_view node_name);
    /// The node name `public_key` is allowed under, if it is. Any thread.
    std::optional<std::string> allowed_name(std::string_view public_key) const;

    /// The socket to poll for ZMQ_POLLIN (libzmq's handle).
    void* socket() const noexcept;
    /// Answers every request waiting on the socket, without blocking; returns how many it
    /// answered or refused. Only on the thread that drives it.
    std::size_t handle();

    /// The counters. Any thread.
    zap_stats stats() const noexcept;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// ---- the endpoint policy --------------------------------------------------------------------

/// Where an endpoint reaches.
enum class endpoint_reach : std::uint8_t {
    local,   ///< tcp:// on 127.0.0.0/8, ::1 or localhost; ipc://; inproc://
    remote,  ///< anything else, including tcp://* and tcp:// on an interface name
};

/// Classifies a ZeroMQ endpoint (as given to bind or connect). Raises security_error naming it
/// when it has no transport (`scheme://`).
MAILROOM_NET_EXPORT endpoint_reach classify_endpoint(std::string_view endpoint);

/// Which security a node's sockets use.
enum class security_mode : std::uint8_t {
    curve,  ///< CURVE: encrypted, and only the nodes of the allow-list get in
    null,   ///< none: only on local endpoints, unless allow_null_remote
};

/// A node's security settings.
struct security_options {
    security_mode mode = security_mode::curve;
    /// This node's secret key file (CURVE; its public half is derived from it).
    std::filesystem::path secret_key_file{};
    /// This node's secret key itself (Z85, 40 characters), for keys held in code rather than in
    /// a file; give this or secret_key_file, not both.
    std::string secret_key{};
    /// The public key files (`NAME.pub`) of the nodes allowed in (CURVE servers).
    std::filesystem::path allow_list_dir{};
    /// A node reads allow_list_dir again by itself when something in it changes (inotify), a
    /// moment (100 ms) after the last change, as node::reload_allow_list() does; off: only when
    /// asked. Needs allow_list_dir.
    bool watch_allow_list_dir = false;
    /// Allow NULL security on remote endpoints: anyone who reaches the port gets in, and every
    /// byte crosses the network in clear. Off unless set here.
    bool allow_null_remote = false;
    /// The ZAP domain of the sockets (the handler's zap_options::domain).
    std::string zap_domain = "mailroom";
};

/// Security settings made ready for sockets: the key read once, the policy checked per endpoint.
class MAILROOM_NET_EXPORT endpoint_security final {
public:
    /// Reads the secret key file or takes secret_key (CURVE), so that a bad key is reported
    /// before any socket is made. Raises key_file_error, or security_error when CURVE is not
    /// available, when neither or both are given, or when secret_key is not a Z85 key.
    explicit endpoint_security(security_options options);

    /// Raises security_error naming `endpoint` when the options refuse it (NULL security on a
    /// remote endpoint without allow_null_remote).
    void check(std::string_view endpoint) const;

    /// Makes `socket` (before it binds `endpoint`) a server of this security: CURVE server with
    /// this node's secret key, and the ZAP domain in both modes (so the ZAP handler is asked
    /// about NULL clients too). Checks the endpoint first.
    void apply_server(void* socket, std::string_view endpoint) const;
    /// Makes `socket` (before it connects to `endpoint`) a client of this security: CURVE client
    /// with this node's key pair, expecting the server's public key `server_public_key` (Z85).
    /// Checks the endpoint first; raises security_error for a bad server key.
    void apply_client(void* socket, std::string_view endpoint, std::string_view server_public_key = {}) const;

    /// The ZAP handler settings that match: the domain, and null_access (refuse for CURVE; for
    /// NULL, local or any by allow_null_remote).
    zap_options zap() const;

    /// This node's public key (CURVE; empty for NULL).
    const std::string& public_key() const noexcept { return keys_.public_key; }
    const security_options& options() const noexcept { return options_; }

private:
    security_options options_;
    curve_keypair keys_;
};

}  // namespace mailroom::net
