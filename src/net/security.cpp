// CURVE keys, key files, node names and the endpoint policy (include/mailroom/net/security.hpp).

#include <mailroom/named/named.hpp>
#include <mailroom/net/security.hpp>

#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace mailroom::net {

namespace {

namespace fs = std::filesystem;

// A key file is a few lines; anything bigger is not one (and is not read into memory whole).
constexpr std::size_t max_key_file_bytes = 4096;

constexpr std::string_view public_marker = "# mailroom curve public key";
constexpr std::string_view secret_marker = "# mailroom curve secret key";

std::string quoted(const fs::path& p) {
    // Built by appending: GCC 12 warns (-Wrestrict, falsely) on "'" + p.string() + "'".
    std::string q(1, '\'');
    q += p.native();
    q += '\'';
    return q;
}

[[noreturn]] void fail(const fs::path& file, key_file_problem problem, const std::string& what) {
    throw key_file_error(file, problem, "key file " + quoted(file) + ": " + what);
}

std::string errno_text(int e) { return std::strerror(e); }

bool z85_char(char c) noexcept {
    static constexpr std::string_view alphabet =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    return c != '\0' && alphabet.find(c) != std::string_view::npos;
}

// Z85 groups of 5 characters encode 4 bytes; a group can spell more than 2^32 - 1, which
// libzmq's decoder refuses (returns null).
bool z85_decodes(std::string_view key, std::uint8_t (&out)[32]) noexcept {
    if (key.size() != z85_key_length) return false;
    for (char c : key)
        if (!z85_char(c)) return false;
    char text[z85_key_length + 1];
    std::memcpy(text, key.data(), z85_key_length);
    text[z85_key_length] = '\0';
    return zmq_z85_decode(out, text) != nullptr;
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

struct parsed_key_file {
    std::string key;
    bool marked_secret = false;
};

// Reads and parses a key file through one descriptor, so that what is checked (the mode) is
// what is read. `secret`: refuse a mode that lets group or others in, as ssh does.
parsed_key_file read_key_file(const fs::path& file, bool secret) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        fail(file, key_file_problem::missing, "cannot be opened: " + errno_text(e));
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } close_it{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(file, key_file_problem::io, "cannot be examined: " + errno_text(errno));
    if (!S_ISREG(st.st_mode)) fail(file, key_file_problem::not_a_file, "is not a regular file");
    if (static_cast<std::size_t>(st.st_size) > max_key_file_bytes)
        fail(file, key_file_problem::not_a_file,
             "is " + std::to_string(st.st_size) + " bytes, too large for a key file (at most " +
                 std::to_string(max_key_file_bytes) + ")");
    if (secret && (st.st_mode & 077) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        fail(file, key_file_problem::insecure_permissions,
             std::string("holds a secret key but group or others may access it (mode ") + mode +
                 "): refused; chmod 600 it");
    }
    std::string text(max_key_file_bytes + 1, '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(file, key_file_problem::io, "cannot be read: " + errno_text(errno));
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got > max_key_file_bytes) fail(file, key_file_problem::not_a_file, "grew too large for a key file while read");
    text.resize(got);

    parsed_key_file out;
    std::size_t keys = 0;
    std::size_t line_no = 0;
    std::size_t key_line = 0;
    std::string_view rest = text;
    while (!rest.empty()) {
        std::size_t nl = rest.find('\n');
        std::string_view line = trim(rest.substr(0, nl));
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
        ++line_no;
        if (line.empty()) continue;
        // A comment. No CURVE key's Z85 text starts with '#' (or '$'): a group led by either
        // spells more than 2^32 - 1, so a line starting with '#' is never a key.
        if (line.front() == '#') {
            if (line == secret_marker) out.marked_secret = true;
            continue;
        }
        if (++keys > 1)
            fail(file, key_file_problem::several_keys,
                 "has more than one key line (lines " + std::to_string(key_line) + " and " +
                     std::to_string(line_no) + "); a key file holds one Z85 key");
        key_line = line_no;
        out.key.assign(line);
    }
    if (keys == 0) fail(file, key_file_problem::no_key, "has no key line (only comments and blank lines)");
    const std::string where = "line " + std::to_string(key_line);
    if (out.key.size() != z85_key_length)
        fail(file, key_file_problem::wrong_length,
             where + " is " + std::to_string(out.key.size()) + " characters; a Z85 CURVE key is " +
                 std::to_string(z85_key_length));
    for (std::size_t i = 0; i < out.key.size(); ++i)
        if (!z85_char(out.key[i]))
            // The position only: a character of a secret key does not belong in a log.
            fail(file, key_file_problem::not_z85,
                 where + ": character " + std::to_string(i + 1) + " is not in Z85's alphabet");
    std::uint8_t raw[32];
    if (!z85_decodes(out.key, raw))
        fail(file, key_file_problem::not_z85, where + " is not a Z85 encoding of 32 bytes (a group is over 2^32)");
    return out;
}

// Writes `text` to a new file beside `target` with `mode` (created with it, so that it is never
// readable by others, whatever the umask), then puts it in place whole: renamed over `target`
// when replacing is allowed (a reader sees the old file or the new one, never half of one), or
// linked as `target`, which fails if a file appeared there since it was checked.
void write_whole(const fs::path& target, const std::string& text, mode_t mode, bool replace) {
    fs::path tmp = target;
    tmp += ".tmp-" + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        int e = errno;
        fail(target, key_file_problem::io, "cannot be created (" + quoted(tmp) + "): " + errno_text(e));
    }
    auto give_up = [&](const std::string& what) {
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(target, key_file_problem::io, what + ": " + errno_text(e));
    };
    // The umask may have taken bits away from a public file's 0644; set exactly what was asked.
    if (::fchmod(fd, mode) != 0) give_up("cannot set its mode");
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            give_up("cannot be written");
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0) give_up("cannot be flushed to disk");
    if (::close(fd) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail(target, key_file_problem::io, "cannot be closed: " + errno_text(e));
    }
    if (!replace) {
        int rc = ::link(tmp.c_str(), target.c_str());
        int e = errno;
        // A file system without hard links falls back to the rename (the caller checked that
        // the target was absent a moment ago).
        if (rc == 0 || (e != EPERM && e != EOPNOTSUPP && e != ENOSYS)) {
            ::unlink(tmp.c_str());
            if (rc == 0) return;
            if (e == EEXIST) fail(target, key_file_problem::exists, "exists; refusing to overwrite it");
            fail(target, key_file_problem::io, "cannot be put in place: " + errno_text(e));
        }
    }
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        fail(target, key_file_problem::io, "cannot be put in place: " + errno_text(e));
    }
}

bool exists_no_follow(const fs::path& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
}

bool valid_node_char(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

// 127.0.0.0/8 in dotted decimal (four octets, each 0..255).
bool loopback_v4(std::string_view host) noexcept {
    int octets = 0;
    std::size_t i = 0;
    int first = -1;
    while (i <= host.size()) {
        std::size_t start = i;
        int value = 0;
        while (i < host.size() && host[i] >= '0' && host[i] <= '9' && i - start < 3) value = value * 10 + (host[i++] - '0');
        if (i == start || value > 255) return false;
        if (first < 0) first = value;
        ++octets;
        if (i == host.size()) break;
        if (host[i] != '.') return false;
        ++i;
    }
    return octets == 4 && first == 127;
}

bool loopback_host(std::string_view host) noexcept {
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1") return true;
    if (host.starts_with("::ffff:")) return loopback_v4(host.substr(7));
    return loopback_v4(host);
}

}  // namespace

const char* to_string(key_file_problem p) noexcept {
    switch (p) {
    case key_file_problem::missing: return "missing";
    case key_file_problem::not_a_file: return "not_a_file";
    case key_file_problem::exists: return "exists";
    case key_file_problem::no_key: return "no_key";
    case key_file_problem::several_keys: return "several_keys";
    case key_file_problem::wrong_length: return "wrong_length";
    case key_file_problem::not_z85: return "not_z85";
    case key_file_problem::insecure_permissions: return "insecure_permissions";
    case key_file_problem::secret_key: return "secret_key";
    case key_file_problem::io: return "io";
    }
    return "unknown";
}

key_file_error::key_file_error(std::filesystem::path file, key_file_problem problem, const std::string& what)
    : error(what), file_(std::move(file)), problem_(problem) {}

key_file_error::~key_file_error() = default;

bool curve_available() noexcept { return zmq_has("curve") != 0; }

bool is_z85_key(std::string_view key) noexcept {
    std::uint8_t raw[32];
    return z85_decodes(key, raw);
}

curve_keypair curve_keypair::generate() {
    if (!curve_available()) throw security_error("curve key pair: this libzmq is built without CURVE (libsodium)");
    char pub[z85_key_length + 1];
    char sec[z85_key_length + 1];
    if (zmq_curve_keypair(pub, sec) != 0)
        throw security_error(std::string("curve key pair: zmq_curve_keypair failed: ") + zmq_strerror(zmq_errno()));
    curve_keypair keys{pub, sec};
    std::memset(sec, 0, sizeof sec);
    return keys;
}

curve_keypair curve_keypair::from_secret(std::string_view secret_key) {
    if (!curve_available()) throw security_error("curve key pair: this libzmq is built without CURVE (libsodium)");
    if (!is_z85_key(secret_key))
        throw security_error("curve key pair: the secret key is not a Z85 CURVE key (" +
                             std::to_string(secret_key.size()) + " characters; 40 of Z85's alphabet expected)");
    char pub[z85_key_length + 1];
    char sec[z85_key_length + 1];
    std::memcpy(sec, secret_key.data(), z85_key_length);
    sec[z85_key_length] = '\0';
    int rc = zmq_curve_public(pub, sec);
    std::memset(sec, 0, sizeof sec);
    if (rc != 0)
        throw security_error(std::string("curve key pair: zmq_curve_public failed: ") + zmq_strerror(zmq_errno()));
    return curve_keypair{pub, std::string(secret_key)};
}

void write_key_files(const curve_keypair& keys, std::string_view name, const std::filesystem::path& secret_file,
                     const std::filesystem::path& public_file, const key_write_options& options) {
    if (!is_z85_key(keys.public_key) || !is_z85_key(keys.secret_key))
        throw security_error("key files " + quoted(secret_file) + " and " + quoted(public_file) +
                             ": the key pair is not two Z85 CURVE keys");
    if (secret_file == public_file)
        throw security_error("key files: the secret and the public key file are both " + quoted(secret_file));
    // Both checked before either is written, so that a refusal leaves no half pair behind.
    if (!options.overwrite) {
        for (const auto* f : {&secret_file, &public_file})
            if (exists_no_follow(*f))
                fail(*f, key_file_problem::exists, "exists; refusing to overwrite it (ask for overwrite to replace it)");
    }
    const std::string who = name.empty() ? std::string() : "# node: " + std::string(name) + "\n";
    write_whole(secret_file,
                std::string(secret_marker) + "\n" + who +
                    "# Z85, 40 characters. Keep this file private (mode 0600); never copy it to another node.\n" +
                    keys.secret_key + "\n",
                0600, options.overwrite);
    write_whole(public_file,
                std::string(public_marker) + "\n" + who +
                    "# Z85, 40 characters. Put a copy in the allow-list directory of the nodes this node may reach.\n" +
                    keys.public_key + "\n",
                0644, options.overwrite);
}

std::string read_public_key_file(const std::filesystem::path& file) {
    parsed_key_file parsed = read_key_file(file, false);
    if (parsed.marked_secret)
        fail(file, key_file_problem::secret_key,
             "is marked as a secret key file; a public key file was expected (a secret key does not belong "
             "where public keys are shared)");
    return std::move(parsed.key);
}

curve_keypair read_secret_key_file(const std::filesystem::path& file) {
    parsed_key_file parsed = read_key_file(file, true);
    return curve_keypair::from_secret(parsed.key);
}

void check_node_name(std::string_view name) {
    if (name.empty()) throw invalid_name_error("node name '': a node name is 1 to 255 characters of [A-Za-z0-9._:-]");
    if (name.size() > max_name_length)
        throw invalid_name_error("node name '" + std::string(name.substr(0, 40)) + "...': " +
                                 std::to_string(name.size()) + " characters, at most 255");
    for (char c : name)
        if (!valid_node_char(c))
            throw invalid_name_error("node name '" + std::string(name) +
                                     "': only [A-Za-z0-9._:-] are allowed ('/' separates node and object)");
}

// ---- the endpoint policy ----------------------------------------------------------------------

endpoint_reach classify_endpoint(std::string_view endpoint) {
    std::size_t sep = endpoint.find("://");
    if (sep == std::string_view::npos || sep == 0)
        throw security_error("endpoint '" + std::string(endpoint) +
                             "' has no transport (expected tcp://, ipc:// or inproc://)");
    std::string_view scheme = endpoint.substr(0, sep);
    std::string_view address = endpoint.substr(sep + 3);
    if (scheme == "ipc" || scheme == "inproc") return endpoint_reach::local;
    if (scheme != "tcp") return endpoint_reach::remote;
    // connect's "tcp://source:port;destination:port": the destination is what is reached.
    if (std::size_t semi = address.rfind(';'); semi != std::string_view::npos) address = address.substr(semi + 1);
    std::size_t colon = address.rfind(':');
    std::string_view host = colon == std::string_view::npos ? address : address.substr(0, colon);
    // An interface name, a host name other than localhost, or the wildcard reaches the network.
    return loopback_host(host) ? endpoint_reach::local : endpoint_reach::remote;
}

endpoint_security::endpoint_security(security_options options) : options_(std::move(options)) {
    if (options_.zap_domain.empty()) throw security_error("security options: the ZAP domain is empty");
    if (options_.mode == security_mode::curve) {
        if (!curve_available()) throw security_error("security options: CURVE asked for, but this libzmq is built without it");
        if (options_.secret_key_file.empty() && options_.secret_key.empty())
            throw security_error("security options: CURVE needs this node's secret key (secret_key_file or secret_key)");
        if (!options_.secret_key_file.empty() && !options_.secret_key.empty())
            throw security_error("security options: both secret_key_file and secret_key are given; give one");
        keys_ = options_.secret_key.empty() ? read_secret_key_file(options_.secret_key_file)
                                            : curve_keypair::from_secret(options_.secret_key);
    }
}

void endpoint_security::check(std::string_view endpoint) const {
    endpoint_reach reach = classify_endpoint(endpoint);
    if (options_.mode == security_mode::null && reach == endpoint_reach::remote && !options_.allow_null_remote)
        throw security_error("endpoint '" + std::string(endpoint) +
                             "' is remote: NULL security (no authentication, no encryption) is refused there; "
                             "use CURVE, or set allow_null_remote to accept it");
}

namespace {
void set_option(void* socket, int option, const void* value, std::size_t size, const char* name, std::string_view endpoint) {
    if (zmq_setsockopt(socket, option, value, size) != 0)
        throw security_error("socket for endpoint '" + std::string(endpoint) + "': setting " + name +
                             " failed: " + zmq_strerror(zmq_errno()));
}
}  // namespace

void endpoint_security::apply_server(void* socket, std::string_view endpoint) const {
    check(endpoint);
    if (socket == nullptr) throw security_error("endpoint '" + std::string(endpoint) + "': no socket");
    const std::string& domain = options_.zap_domain;
    set_option(socket, ZMQ_ZAP_DOMAIN, domain.data(), domain.size(), "ZMQ_ZAP_DOMAIN", endpoint);
    if (options_.mode == security_mode::curve) {
        int one = 1;
        set_option(socket, ZMQ_CURVE_SERVER, &one, sizeof one, "ZMQ_CURVE_SERVER", endpoint);
        set_option(socket, ZMQ_CURVE_SECRETKEY, keys_.secret_key.data(), keys_.secret_key.size(),
                   "ZMQ_CURVE_SECRETKEY", endpoint);
    }
}

void endpoint_security::apply_client(void* socket, std::string_view endpoint, std::string_view server_public_key) const {
    check(endpoint);
    if (socket == nullptr) throw security_error("endpoint '" + std::string(endpoint) + "': no socket");
    if (options_.mode != security_mode::curve) return;
    if (!is_z85_key(server_public_key))
        throw security_error("endpoint '" + std::string(endpoint) +
                             "': the server's public key is not a Z85 CURVE key (" +
                             std::to_string(server_public_key.size()) + " characters)");
    set_option(socket, ZMQ_CURVE_SERVERKEY, server_public_key.data(), server_public_key.size(),
               "ZMQ_CURVE_SERVERKEY", endpoint);
    set_option(socket, ZMQ_CURVE_PUBLICKEY, keys_.public_key.data(), keys_.public_key.size(), "ZMQ_CURVE_PUBLICKEY",
               endpoint);
    set_option(socket, ZMQ_CURVE_SECRETKEY, keys_.secret_key.data(), keys_.secret_key.size(), "ZMQ_CURVE_SECRETKEY",
               endpoint);
}

zap_options endpoint_security::zap() const {
    zap_options z;
    z.domain = options_.zap_domain;
    if (options_.mode == security_mode::curve)
        z.null = null_access::refuse;
    else
        z.null = options_.allow_null_remote ? null_access::any : null_access::local;
    return z;
}

}  // namespace mailroom::net
