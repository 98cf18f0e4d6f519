// The ZAP handler (RFC 27): who may connect to a node (include/mailroom/net/security.hpp).
//
// A ROUTER socket rather than the usual REP: REP silently drops a request whose envelope is
// broken, and guarantee 9 wants every malformed request seen and counted. libzmq's own ZAP
// client speaks as a REQ does (an empty delimiter, then the request), so a ROUTER answers it
// with the routing id and the delimiter put back in front of the reply.

#include <mailroom/named/named.hpp>
#include <mailroom/net/security.hpp>

#include <zmq.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mailroom::net {

namespace {

constexpr const char* zap_endpoint = "inproc://zeromq.zap.01";

// A request has 7 to 9 frames after the routing id (NULL: none of credentials, CURVE: one,
// PLAIN: two); what comes beyond this is read and dropped, never kept.
constexpr std::size_t max_frames = 12;

struct frame {
    std::string bytes;
};

bool loopback_v4(std::string_view a) noexcept {
    // A dotted quad starting 127. (libzmq writes the peer's address in numeric form.)
    if (!a.starts_with("127.")) return false;
    int dots = 0;
    for (char c : a) {
        if (c == '.')
            ++dots;
        else if (c < '0' || c > '9')
            return false;
    }
    return dots == 3;
}

// Whether a ZAP address is a local peer: a loopback address, or no IP address at all (an
// inproc peer has none; an ipc peer is a unix socket, ":uid:gid:pid" when libzmq reads its
// credentials).
bool local_peer(std::string_view address) noexcept {
    if (address.empty()) return true;
    if (address.size() >= 2 && address[0] == ':' && address[1] >= '0' && address[1] <= '9') return true;
    if (address == "::1") return true;
    if (address.starts_with("::ffff:")) return loopback_v4(address.substr(7));
    return loopback_v4(address);
}

std::string printable(std::string_view s, std::size_t max = 64) {
    std::string out;
    for (char c : s.substr(0, max)) {
        unsigned char u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f) {
            out += c;
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        }
    }
    if (s.size() > max) out += "...";
    return out;
}

}  // namespace

struct zap_handler::impl {
    void* socket = nullptr;
    zap_options options;

    mutable std::mutex mutex;  // the allow-list: changed from any thread, read per handshake
    std::unordered_map<std::string, std::string> allowed;

    // Written by the driving thread, read by any (stats()).
    std::atomic<std::uint64_t> allowed_curve{0}, allowed_null{0}, refused_unknown_key{0}, refused_null{0},
        refused_mechanism{0}, refused_domain{0}, malformed{0};

    void log(const std::string& line) {
        if (options.log)
            options.log(line);
        else
            std::fprintf(stderr, "%s\n", line.c_str());
    }

    static void bump(std::atomic<std::uint64_t>& c) noexcept { c.fetch_add(1, std::memory_order_relaxed); }

    // Sends the reply frames; a peer that went away (or a full pipe) loses its answer, which is
    // all it could lose: libzmq's ZAP client then fails the handshake on its own.
    void reply(const std::string& routing_id, std::string_view request_id, const char* status,
               std::string_view text, std::string_view user_id) {
        const std::string_view parts[] = {routing_id, {}, "1.0", request_id, status, text, user_id, {}};
        constexpr std::size_t n = sizeof parts / sizeof parts[0];
        for (std::size_t i = 0; i < n; ++i) {
            int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
            if (zmq_send(socket, parts[i].data(), parts[i].size(), flags) < 0) return;
        }
    }

    void refuse_malformed(const std::vector<frame>& f, bool can_reply, std::string_view request_id,
                          const std::string& why) {
        bump(malformed);
        log("zap: malformed request refused (" + why + ")");
        if (can_reply) reply(f[0].bytes, request_id, "400", "malformed ZAP request: " + why, {});
    }

    void answer(const std::vector<frame>& f, bool truncated) {
        // [routing id] [""] [version] [request id] [domain] [address] [identity] [mechanism] [credentials...]
        if (f.size() < 2) {
            refuse_malformed(f, false, {}, "no envelope");
            return;
        }
        if (!f[1].bytes.empty()) {
            refuse_malformed(f, false, {}, "no empty delimiter after the routing id");
            return;
        }
        if (truncated) {
            refuse_malformed(f, true, f.size() > 3 ? std::string_view(f[3].bytes) : std::string_view{},
                             "more than " + std::to_string(max_frames) + " frames");
            return;
        }
        if (f.size() < 8) {
            refuse_malformed(f, true, f.size() > 3 ? std::string_view(f[3].bytes) : std::string_view{},
                             std::to_string(f.size() - 2) + " frames, at least 6 expected");
            return;
        }
        const std::string& version = f[2].bytes;
        const std::string& request_id = f[3].bytes;
        const std::string& domain = f[4].bytes;
        const std::string& address = f[5].bytes;
        const std::string& mechanism = f[7].bytes;
        const std::size_t credentials = f.size() - 8;
        if (version != "1.0") {
            refuse_malformed(f, true, request_id, "version '" + printable(version) + "', 1.0 expected");
            return;
        }
        if (request_id.size() > 255 || domain.size() > 255 || address.size() > 255 || f[6].bytes.size() > 255) {
            refuse_malformed(f, true, request_id, "a field over 255 bytes");
            return;
        }
        const std::string who = "peer " + (address.empty() ? std::string("(local)") : printable(address));
        if (domain != options.domain) {
            bump(refused_domain);
            log("zap: refused " + who + ": domain '" + printable(domain) + "', this handler answers '" +
                options.domain + "'");
            reply(f[0].bytes, request_id, "400", "unknown ZAP domain", {});
            return;
        }
        if (mechanism == "CURVE") {
            if (credentials != 1 || f[8].bytes.size() != 32) {
                refuse_malformed(f, true, request_id, who + ": CURVE credentials must be one 32-byte key");
                return;
            }
            char key[z85_key_length + 1];
            zmq_z85_encode(key, reinterpret_cast<const std::uint8_t*>(f[8].bytes.data()), 32);
            std::string name;
            {
                std::lock_guard lock(mutex);
                auto it = allowed.find(std::string(key, z85_key_length));
                if (it != allowed.end()) name = it->second;
            }
            if (name.empty()) {
                bump(refused_unknown_key);
                log("zap: refused CURVE " + who + ": public key " + key + " is not in the allow-list");
                reply(f[0].bytes, request_id, "400", "public key not allowed", {});
                return;
            }
            bump(allowed_curve);
            reply(f[0].bytes, request_id, "200", "OK", name);
            return;
        }
        if (mechanism == "NULL") {
            if (credentials != 0) {
                refuse_malformed(f, true, request_id, who + ": NULL carries no credentials");
                return;
            }
            bool ok = options.null == null_access::any || (options.null == null_access::local && local_peer(address));
            if (!ok) {
                bump(refused_null);
                log("zap: refused " + who + ": no security (NULL) is not allowed " +
                    (options.null == null_access::local ? "from a remote address" : "on this node"));
                reply(f[0].bytes, request_id, "400", "NULL security not allowed", {});
                return;
            }
            bump(allowed_null);
            reply(f[0].bytes, request_id, "200", "OK", {});
            return;
        }
        if (mechanism == "PLAIN" || mechanism == "GSSAPI") {
            bump(refused_mechanism);
            log("zap: refused " + who + ": mechanism " + mechanism + " is not accepted (CURVE or NULL only)");
            reply(f[0].bytes, request_id, "400", "mechanism not accepted", {});
            return;
        }
        refuse_malformed(f, true, request_id, who + ": unknown mechanism '" + printable(mechanism) + "'");
    }
};

zap_handler::zap_handler(void* zmq_context, zap_options options) : impl_(std::make_unique<impl>()) {
    if (zmq_context == nullptr) throw security_error("zap handler: no ZeroMQ context");
    if (options.domain.empty()) throw security_error("zap handler: the ZAP domain is empty");
    impl_->options = std::move(options);
    impl_->socket = zmq_socket(zmq_context, ZMQ_ROUTER);
    if (impl_->socket == nullptr)
        throw security_error(std::string("zap handler: cannot make its socket: ") + zmq_strerror(zmq_errno()));
    int zero = 0;
    zmq_setsockopt(impl_->socket, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(impl_->socket, zap_endpoint) != 0) {
        int e = zmq_errno();
        zmq_close(impl_->socket);
        throw security_error(std::string("zap handler: cannot bind ") + zap_endpoint + ": " + zmq_strerror(e) +
                             (e == EADDRINUSE ? " (this context already has a ZAP handler)" : ""));
    }
}

zap_handler::~zap_handler() {
    if (impl_ && impl_->socket) zmq_close(impl_->socket);
}

void zap_handler::allow(std::string_view public_key, std::string_view node_name) {
    check_node_name(node_name);
    if (!is_z85_key(public_key))
        throw security_error("zap handler: the key of node '" + std::string(node_name) + "' is not a Z85 CURVE key (" +
                             std::to_string(public_key.size()) + " characters)");
    std::lock_guard lock(impl_->mutex);
    auto [it, inserted] = impl_->allowed.try_emplace(std::string(public_key), node_name);
    if (!inserted && it->second != node_name)
        throw security_error("zap handler: public key " + std::string(public_key) + " is already allowed as node '" +
                             it->second + "', not also as '" + std::string(node_name) + "'");
}

std::vector<allow_entry> read_allow_directory(const std::filesystem::path& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
        throw key_file_error(dir, key_file_problem::missing,
                             "allow-list directory '" + dir.string() + "' is not a directory that can be read");
    std::vector<allow_entry> found;
    std::unordered_map<std::string, std::string> names;  // key -> name, to refuse a key under two names
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        if (entry.path().extension() != ".pub") continue;
        std::string name = entry.path().stem().string();
        try {
            check_node_name(name);
        } catch (const invalid_name_error& e) {
            throw invalid_name_error("allow-list file '" + entry.path().string() + "': " + e.what());
        }
        std::string key = read_public_key_file(entry.path());
        auto [it, fresh] = names.try_emplace(key, name);
        if (!fresh)
            throw security_error("allow-list directory '" + dir.string() + "': public key " + key + " is both node '" +
                                 it->second + "' and node '" + name + "'");
        found.push_back({std::move(key), std::move(name)});
    }
    if (ec)
        throw key_file_error(dir, key_file_problem::io,
                             "allow-list directory '" + dir.string() + "' cannot be listed: " + ec.message());
    return found;
}

std::size_t zap_handler::allow_directory(const std::filesystem::path& dir) {
    // Read everything first: a broken file leaves the allow-list as it was.
    const std::vector<allow_entry> found = read_allow_directory(dir);
    std::lock_guard lock(impl_->mutex);
    std::unordered_map<std::string, std::string> next = impl_->allowed;
    std::size_t added = 0;
    for (const auto& [key, name] : found) {
        auto [it, inserted] = next.try_emplace(key, name);
        if (!inserted && it->second != name)
            throw security_error("allow-list directory '" + dir.string() + "': public key " + key +
                                 " is both node '" + it->second + "' and node '" + name + "'");
        added += inserted ? 1 : 0;
    }
    impl_->allowed.swap(next);
    return added;
}

bool zap_handler::revoke(std::string_view public_key) {
    std::lock_guard lock(impl_->mutex);
    return impl_->allowed.erase(std::string(public_key)) != 0;
}

std::size_t zap_handler::revoke_node(std::string_view node_name) {
    std::lock_guard lock(impl_->mutex);
    return std::erase_if(impl_->allowed, [&](const auto& kv) { return kv.second == node_name; });
}

std::optional<std::string> zap_handler::allowed_name(std::string_view public_key) const {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->allowed.find(std::string(public_key));
    if (it == impl_->allowed.end()) return std::nullopt;
    return it->second;
}

void* zap_handler::socket() const noexcept { return impl_->socket; }

std::size_t zap_handler::handle() {
    std::size_t handled = 0;
    std::vector<frame> frames;
    for (;;) {
        frames.clear();
        bool truncated = false;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, impl_->socket, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return handled;
        }
        for (;;) {
            if (frames.size() < max_frames)
                frames.push_back({std::string(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg))});
            else
                truncated = true;
            bool more = zmq_msg_more(&msg) != 0;
            zmq_msg_close(&msg);
            if (!more) break;
            zmq_msg_init(&msg);
            // The rest of a multipart message is there at once (ZeroMQ delivers it whole).
            if (zmq_msg_recv(&msg, impl_->socket, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                break;
            }
        }
        impl_->answer(frames, truncated);
        ++handled;
    }
}

zap_stats zap_handler::stats() const noexcept {
    auto r = [](const std::atomic<std::uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    zap_stats s;
    s.allowed_curve = r(impl_->allowed_curve);
    s.allowed_null = r(impl_->allowed_null);
    s.refused_unknown_key = r(impl_->refused_unknown_key);
    s.refused_null = r(impl_->refused_null);
    s.refused_mechanism = r(impl_->refused_mechanism);
    s.refused_domain = r(impl_->refused_domain);
    s.malformed = r(impl_->malformed);
    return s;
}

}  // namespace mailroom::net
