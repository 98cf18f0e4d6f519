// Security for nodes: CURVE key pairs through key files and every key-file error, the endpoint
// policy, the CURVE options on sockets, and the ZAP handler over tcp loopback with raw ZeroMQ
// sockets (allowed, unknown key, no CURVE, NULL by policy) and against malformed requests.

#include <mailroom/net/security.hpp>

#include <mailroom/named/named.hpp>

#include <gtest/gtest.h>

#include "support/temp_dir.hpp"

#include <zmq.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace mailroom;
using namespace mailroom::net;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

using test::temp_dir;

void write_text(const fs::path& p, const std::string& text, mode_t mode = 0644) {
    {
        std::ofstream out(p, std::ios::binary | std::ios::trunc);
        out << text;
    }
    ::chmod(p.c_str(), mode);
}

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
}

// Runs `f`, expects a key_file_error with `problem` whose message names `file`.
template <class F>
void expect_key_file_error(F&& f, key_file_problem problem, const fs::path& file) {
    try {
        f();
        ADD_FAILURE() << "no key_file_error for " << file << " (expected " << to_string(problem) << ")";
    } catch (const key_file_error& e) {
        EXPECT_EQ(e.problem(), problem) << e.what();
        EXPECT_EQ(e.file(), file) << e.what();
        EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
    }
}

// ---- raw ZeroMQ helpers -----------------------------------------------------------------------

struct zmq_ctx {
    void* ctx = zmq_ctx_new();
    ~zmq_ctx() { zmq_ctx_term(ctx); }
};

struct zmq_sock {
    void* s = nullptr;
    zmq_sock(void* ctx, int type) : s(zmq_socket(ctx, type)) {
        int zero = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    }
    ~zmq_sock() {
        if (s) zmq_close(s);
    }
    zmq_sock(const zmq_sock&) = delete;
    zmq_sock& operator=(const zmq_sock&) = delete;
};

std::string last_endpoint(void* s) {
    char buf[256];
    size_t len = sizeof buf;
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, buf, &len);
    return std::string(buf);
}

// Drives a ZAP handler from a thread of its own, as a node's I/O thread would from its loop.
// The handler's socket is used by this thread only while it runs (its start and join are the
// hand-over).
class zap_driver {
public:
    explicit zap_driver(zap_handler& h) : h_(h), t_([this] { run(); }) {}
    ~zap_driver() {
        stop_.store(true);
        t_.join();
    }

private:
    void run() {
        while (!stop_.load()) {
            zmq_pollitem_t item{h_.socket(), 0, ZMQ_POLLIN, 0};
            zmq_poll(&item, 1, 20);
            h_.handle();
        }
    }
    zap_handler& h_;
    std::atomic<bool> stop_{false};
    std::thread t_;
};

struct received {
    std::string payload;
    std::string user_id;
    bool ok = false;
};

// One message from a ROUTER ([routing id][payload]) within `timeout`, with its User-Id.
received recv_on_router(void* router, std::chrono::milliseconds timeout) {
    received r;
    zmq_pollitem_t item{router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return r;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, router, 0) < 0) return r;  // the routing id
    zmq_msg_close(&msg);
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, router, 0) < 0) return r;
    r.payload.assign(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
    if (const char* uid = zmq_msg_gets(&msg, "User-Id")) r.user_id = uid;
    zmq_msg_close(&msg);
    r.ok = true;
    return r;
}

// Waits (bounded) until `pred` holds.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 5000ms) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
        if (pred()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return pred();
}

std::vector<std::string> recv_all(void* s, std::chrono::milliseconds timeout) {
    std::vector<std::string> out;
    zmq_pollitem_t item{s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return out;
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, s, 0) < 0) break;
        out.emplace_back(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
        bool more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
        if (!more) break;
    }
    return out;
}

void send_all(void* s, const std::vector<std::string>& parts) {
    for (std::size_t i = 0; i < parts.size(); ++i)
        zmq_send(s, parts[i].data(), parts[i].size(), i + 1 < parts.size() ? ZMQ_SNDMORE : 0);
}

// A node's key files in `dir`: NAME.key and NAME.pub.
curve_keypair make_node_keys(const temp_dir& dir, const std::string& name) {
    curve_keypair keys = curve_keypair::generate();
    write_key_files(keys, name, dir / (name + ".key"), dir / (name + ".pub"));
    return keys;
}

}  // namespace

// ---- keys and key files -------------------------------------------------------------------------

TEST(security, curve_is_available_in_this_libzmq) {
    ASSERT_TRUE(curve_available()) << "libzmq without CURVE: the security tests below cannot run";
}

TEST(security, generated_key_pair_round_trips_through_key_files_with_their_modes) {
    temp_dir dir;
    // A permissive umask must not make the secret file readable, and a strict one must not
    // hide the public file.
    mode_t old = ::umask(0);
    curve_keypair keys = curve_keypair::generate();
    EXPECT_EQ(keys.public_key.size(), 40u);
    EXPECT_EQ(keys.secret_key.size(), 40u);
    EXPECT_TRUE(is_z85_key(keys.public_key));
    EXPECT_NE(keys.public_key, keys.secret_key);
    write_key_files(keys, "alpha", dir / "alpha.key", dir / "alpha.pub");
    ::umask(077);
    write_key_files(keys, "beta", dir / "beta.key", dir / "beta.pub");
    ::umask(old);
    for (const char* n : {"alpha", "beta"}) {
        EXPECT_EQ(mode_of(dir / (std::string(n) + ".key")), 0600u) << n;
        EXPECT_EQ(mode_of(dir / (std::string(n) + ".pub")), 0644u) << n;
        curve_keypair back = read_secret_key_file(dir / (std::string(n) + ".key"));
        EXPECT_EQ(back.secret_key, keys.secret_key);
        EXPECT_EQ(back.public_key, keys.public_key);
        EXPECT_EQ(read_public_key_file(dir / (std::string(n) + ".pub")), keys.public_key);
    }
    // No temporary file is left behind.
    std::size_t files = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++files;
    EXPECT_EQ(files, 4u);
}

TEST(security, from_secret_derives_the_same_public_key) {
    curve_keypair keys = curve_keypair::generate();
    EXPECT_EQ(curve_keypair::from_secret(keys.secret_key).public_key, keys.public_key);
    EXPECT_THROW(curve_keypair::from_secret("short"), security_error);
}

TEST(security, key_files_are_not_overwritten_unless_asked_and_a_refusal_writes_nothing) {
    temp_dir dir;
    curve_keypair first = make_node_keys(dir, "n");
    curve_keypair second = curve_keypair::generate();
    // Only the public file exists: still refused, and the secret file is not written either.
    fs::remove(dir / "n.key");
    expect_key_file_error([&] { write_key_files(second, "n", dir / "n.key", dir / "n.pub"); },
                          key_file_problem::exists, dir / "n.pub");
    EXPECT_FALSE(fs::exists(dir / "n.key"));
    EXPECT_EQ(read_public_key_file(dir / "n.pub"), first.public_key);
    write_key_files(second, "n", dir / "n.key", dir / "n.pub", {.overwrite = true});
    EXPECT_EQ(read_public_key_file(dir / "n.pub"), second.public_key);
    EXPECT_EQ(read_secret_key_file(dir / "n.key").secret_key, second.secret_key);
    EXPECT_EQ(mode_of(dir / "n.key"), 0600u);
}

TEST(security, each_key_file_problem_is_a_typed_error_naming_the_file) {
    temp_dir dir;
    curve_keypair keys = make_node_keys(dir, "good");

    expect_key_file_error([&] { read_public_key_file(dir / "absent.pub"); }, key_file_problem::missing,
                          dir / "absent.pub");
    fs::create_directory(dir / "adir.pub");
    expect_key_file_error([&] { read_public_key_file(dir / "adir.pub"); }, key_file_problem::not_a_file,
                          dir / "adir.pub");
    write_text(dir / "big.pub", std::string(10000, '#'));
    expect_key_file_error([&] { read_public_key_file(dir / "big.pub"); }, key_file_problem::not_a_file,
                          dir / "big.pub");
    write_text(dir / "empty.pub", "# only a comment\n\n   \n");
    expect_key_file_error([&] { read_public_key_file(dir / "empty.pub"); }, key_file_problem::no_key,
                          dir / "empty.pub");
    write_text(dir / "two.pub", keys.public_key + "\n" + keys.public_key + "\n");
    expect_key_file_error([&] { read_public_key_file(dir / "two.pub"); }, key_file_problem::several_keys,
                          dir / "two.pub");
    write_text(dir / "short.pub", "a" + keys.public_key.substr(2) + "\n");  // 39 characters
    expect_key_file_error([&] { read_public_key_file(dir / "short.pub"); }, key_file_problem::wrong_length,
                          dir / "short.pub");
    std::string bad = keys.public_key;
    bad[7] = '~';  // not in Z85's alphabet
    write_text(dir / "char.pub", bad + "\n");
    expect_key_file_error([&] { read_public_key_file(dir / "char.pub"); }, key_file_problem::not_z85,
                          dir / "char.pub");
    // Every character in Z85's alphabet, but "%%%%%" spells more than 2^32 - 1.
    write_text(dir / "over.pub", "%%%%%" + keys.public_key.substr(5) + "\n");
    expect_key_file_error([&] { read_public_key_file(dir / "over.pub"); }, key_file_problem::not_z85,
                          dir / "over.pub");
    // A secret key file where a public key belongs is refused, not shared.
    expect_key_file_error([&] { read_public_key_file(dir / "good.key"); }, key_file_problem::secret_key,
                          dir / "good.key");

    // A secret key file that group or others may read or write is refused, as ssh does, and the
    // error never carries the key.
    for (mode_t mode : {0640, 0604, 0620, 0660, 0644}) {
        ::chmod((dir / "good.key").c_str(), mode);
        try {
            read_secret_key_file(dir / "good.key");
            ADD_FAILURE() << "mode " << std::oct << mode << " was accepted";
        } catch (const key_file_error& e) {
            EXPECT_EQ(e.problem(), key_file_problem::insecure_permissions) << e.what();
            EXPECT_NE(std::string(e.what()).find((dir / "good.key").string()), std::string::npos);
            EXPECT_EQ(std::string(e.what()).find(keys.secret_key), std::string::npos);
        }
    }
    ::chmod((dir / "good.key").c_str(), 0400);
    EXPECT_EQ(read_secret_key_file(dir / "good.key").public_key, keys.public_key);

    // A secret key with a bad character: the position is named, never the character.
    std::string bad_secret = keys.secret_key;
    bad_secret[3] = '~';
    write_text(dir / "bad.key", bad_secret + "\n", 0600);
    try {
        read_secret_key_file(dir / "bad.key");
        ADD_FAILURE() << "a bad secret key was accepted";
    } catch (const key_file_error& e) {
        EXPECT_EQ(e.problem(), key_file_problem::not_z85);
        EXPECT_EQ(std::string(e.what()).find(bad_secret.substr(0, 3)), std::string::npos) << e.what();
    }
}

TEST(security, key_files_accept_comments_blank_lines_and_crlf) {
    temp_dir dir;
    curve_keypair keys = curve_keypair::generate();
    write_text(dir / "hand.pub", "# written by hand\r\n\r\n  " + keys.public_key + "  \r\n# trailing\r\n");
    EXPECT_EQ(read_public_key_file(dir / "hand.pub"), keys.public_key);
}

TEST(security, node_names_follow_the_named_object_rules_without_slash) {
    EXPECT_NO_THROW(check_node_name("pricing-1.east_a:b"));
    EXPECT_THROW(check_node_name(""), invalid_name_error);
    EXPECT_THROW(check_node_name("a/b"), invalid_name_error);
    EXPECT_THROW(check_node_name("a b"), invalid_name_error);
    EXPECT_THROW(check_node_name(std::string(256, 'a')), invalid_name_error);
}

// ---- the endpoint policy -----------------------------------------------------------------------

TEST(security, endpoints_are_classified_local_or_remote) {
    for (const char* local : {"tcp://127.0.0.1:5555", "tcp://127.1.2.3:1", "tcp://127.0.0.1:*", "tcp://localhost:80",
                              "tcp://[::1]:5555", "tcp://::1:5555", "tcp://[::ffff:127.0.0.1]:9",
                              "ipc:///tmp/node.sock", "ipc://@abstract", "inproc://node",
                              "tcp://10.0.0.1:1;127.0.0.1:5555"})
        EXPECT_EQ(classify_endpoint(local), endpoint_reach::local) << local;
    for (const char* remote : {"tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.10:5555", "tcp://eth0:5555",
                               "tcp://example.com:5555", "tcp://[::]:5555", "tcp://[2001:db8::1]:5555",
                               "tcp://127.0.0.1.evil.com:5555", "tcp://1127.0.0.1:5", "pgm://eth0;239.192.1.1:5555",
                               "epgm://eth0;239.192.1.1:5555", "ws://127.0.0.1:80",
                               "tcp://127.0.0.1:1;10.0.0.1:5555"})
        EXPECT_EQ(classify_endpoint(remote), endpoint_reach::remote) << remote;
    try {
        classify_endpoint("127.0.0.1:5555");
        ADD_FAILURE() << "an endpoint without a transport was classified";
    } catch (const security_error& e) {
        EXPECT_NE(std::string(e.what()).find("'127.0.0.1:5555'"), std::string::npos) << e.what();
    }
}

TEST(security, null_security_on_a_remote_endpoint_is_refused_naming_it_unless_opted_in) {
    endpoint_security null_sec({.mode = security_mode::null});
    EXPECT_NO_THROW(null_sec.check("tcp://127.0.0.1:5555"));
    EXPECT_NO_THROW(null_sec.check("ipc:///tmp/x"));
    EXPECT_NO_THROW(null_sec.check("inproc://x"));
    try {
        null_sec.check("tcp://*:5555");
        ADD_FAILURE() << "NULL on tcp://* was accepted";
    } catch (const security_error& e) {
        EXPECT_NE(std::string(e.what()).find("'tcp://*:5555'"), std::string::npos) << e.what();
    }
    zmq_ctx ctx;
    zmq_sock s(ctx.ctx, ZMQ_ROUTER);
    EXPECT_THROW(null_sec.apply_server(s.s, "tcp://192.168.1.10:5555"), security_error);
    EXPECT_THROW(null_sec.apply_client(s.s, "tcp://example.com:5555"), security_error);
    EXPECT_EQ(null_sec.zap().null, null_access::local);

    endpoint_security opted({.mode = security_mode::null, .allow_null_remote = true});
    EXPECT_NO_THROW(opted.check("tcp://*:5555"));
    EXPECT_EQ(opted.zap().null, null_access::any);
}

TEST(security, curve_options_need_a_readable_secret_key_file) {
    temp_dir dir;
    EXPECT_THROW(endpoint_security({.mode = security_mode::curve}), security_error);
    expect_key_file_error(
        [&] { endpoint_security({.mode = security_mode::curve, .secret_key_file = dir / "none.key"}); },
        key_file_problem::missing, dir / "none.key");
    curve_keypair keys = make_node_keys(dir, "srv");
    endpoint_security sec({.mode = security_mode::curve, .secret_key_file = dir / "srv.key"});
    EXPECT_EQ(sec.public_key(), keys.public_key);
    EXPECT_NO_THROW(sec.check("tcp://*:5555"));  // CURVE is fine anywhere
    EXPECT_EQ(sec.zap().null, null_access::refuse);
}

TEST(security, curve_options_take_the_secret_key_in_code_instead_of_a_file_but_not_both) {
    temp_dir dir;
    const curve_keypair keys = curve_keypair::generate();
    endpoint_security sec({.mode = security_mode::curve, .secret_key = keys.secret_key});
    EXPECT_EQ(sec.public_key(), keys.public_key);
    EXPECT_THROW(endpoint_security({.mode = security_mode::curve, .secret_key = "not a key"}), security_error);
    make_node_keys(dir, "srv");
    try {
        endpoint_security({.mode = security_mode::curve, .secret_key_file = dir / "srv.key", .secret_key = keys.secret_key});
        ADD_FAILURE() << "both a secret key file and a secret key were taken";
    } catch (const security_error& e) {
        EXPECT_NE(std::string(e.what()).find("both"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find(keys.secret_key), std::string::npos) << "the message shows the secret";
    }
}

TEST(security, apply_server_and_apply_client_set_the_curve_options) {
    temp_dir dir;
    curve_keypair srv = make_node_keys(dir, "srv");
    curve_keypair cli = make_node_keys(dir, "cli");
    endpoint_security server_sec({.mode = security_mode::curve, .secret_key_file = dir / "srv.key",
                                  .zap_domain = "pricing"});
    endpoint_security client_sec({.mode = security_mode::curve, .secret_key_file = dir / "cli.key"});
    zmq_ctx ctx;
    zmq_sock server(ctx.ctx, ZMQ_ROUTER);
    zmq_sock client(ctx.ctx, ZMQ_DEALER);
    server_sec.apply_server(server.s, "tcp://*:5555");
    int flag = 0;
    size_t len = sizeof flag;
    ASSERT_EQ(zmq_getsockopt(server.s, ZMQ_CURVE_SERVER, &flag, &len), 0);
    EXPECT_EQ(flag, 1);
    char text[256];
    len = sizeof text;
    ASSERT_EQ(zmq_getsockopt(server.s, ZMQ_ZAP_DOMAIN, text, &len), 0);
    EXPECT_EQ(std::string(text), "pricing");
    len = 41;
    ASSERT_EQ(zmq_getsockopt(server.s, ZMQ_CURVE_SECRETKEY, text, &len), 0);
    EXPECT_EQ(std::string(text), srv.secret_key);

    EXPECT_THROW(client_sec.apply_client(client.s, "tcp://127.0.0.1:5555", "not a key"), security_error);
    client_sec.apply_client(client.s, "tcp://127.0.0.1:5555", srv.public_key);
    len = 41;
    ASSERT_EQ(zmq_getsockopt(client.s, ZMQ_CURVE_SERVERKEY, text, &len), 0);
    EXPECT_EQ(std::string(text), srv.public_key);
    len = 41;
    ASSERT_EQ(zmq_getsockopt(client.s, ZMQ_CURVE_PUBLICKEY, text, &len), 0);
    EXPECT_EQ(std::string(text), cli.public_key);
}

// ---- the ZAP handler -----------------------------------------------------------------------------

TEST(security, a_context_has_one_zap_handler) {
    zmq_ctx ctx;
    zap_handler first(ctx.ctx);
    try {
        zap_handler second(ctx.ctx);
        ADD_FAILURE() << "a second ZAP handler bound";
    } catch (const security_error& e) {
        EXPECT_NE(std::string(e.what()).find("inproc://zeromq.zap.01"), std::string::npos) << e.what();
    }
}

TEST(security, allow_list_loads_pub_files_of_a_directory_all_or_nothing) {
    temp_dir keys_dir;
    temp_dir allow;
    curve_keypair a = make_node_keys(keys_dir, "alpha");
    curve_keypair b = make_node_keys(keys_dir, "beta");
    fs::copy_file(keys_dir / "alpha.pub", allow / "alpha.pub");
    fs::copy_file(keys_dir / "beta.pub", allow / "beta.pub");
    write_text(allow / "README", "not a key\n");
    zmq_ctx ctx;
    zap_handler h(ctx.ctx);
    EXPECT_EQ(h.allow_directory(allow.path), 2u);
    EXPECT_EQ(h.allowed_name(a.public_key), "alpha");
    EXPECT_EQ(h.allowed_name(b.public_key), "beta");

    // A broken file: an error naming it, and nothing of that directory is added.
    temp_dir broken;
    curve_keypair c = make_node_keys(keys_dir, "gamma");
    fs::copy_file(keys_dir / "gamma.pub", broken / "gamma.pub");
    write_text(broken / "delta.pub", "garbage\n");
    expect_key_file_error([&] { h.allow_directory(broken.path); }, key_file_problem::wrong_length,
                          broken / "delta.pub");
    EXPECT_FALSE(h.allowed_name(c.public_key));
    // One key under two names is refused.
    EXPECT_THROW(h.allow(a.public_key, "other"), security_error);
    EXPECT_THROW(h.allow("short", "other"), security_error);
    EXPECT_THROW(h.allow(c.public_key, "bad/name"), invalid_name_error);
    expect_key_file_error([&] { h.allow_directory(allow / "absent"); }, key_file_problem::missing,
                          allow / "absent");
    EXPECT_TRUE(h.revoke(b.public_key));
    EXPECT_FALSE(h.allowed_name(b.public_key));
}

namespace {

// A CURVE server (ROUTER on tcp://127.0.0.1, a free port) with its ZAP handler allowing node
// "alice"; clients are DEALERs.
struct curve_fixture {
    temp_dir dir;
    curve_keypair server_keys = make_node_keys(dir, "server");
    curve_keypair alice_keys = make_node_keys(dir, "alice");
    curve_keypair mallory_keys = make_node_keys(dir, "mallory");
    std::vector<std::string> log;
    std::mutex log_mutex;
    zmq_ctx ctx;
    zap_handler zap{ctx.ctx, zap_options{.log = [this](std::string_view line) {
                                              std::lock_guard lock(log_mutex);
                                              log.emplace_back(line);
                                          }}};
    zmq_sock server{ctx.ctx, ZMQ_ROUTER};
    std::string endpoint;

    curve_fixture() {
        zap.allow(alice_keys.public_key, "alice");
        endpoint_security sec({.mode = security_mode::curve, .secret_key_file = dir / "server.key"});
        sec.apply_server(server.s, "tcp://127.0.0.1:*");
        if (zmq_bind(server.s, "tcp://127.0.0.1:*") != 0) throw std::runtime_error("bind failed");
        endpoint = last_endpoint(server.s);
    }

    // A client of `name`'s key files, connected and having sent `text`.
    std::unique_ptr<zmq_sock> client(const std::string& name, const std::string& text) {
        auto c = std::make_unique<zmq_sock>(ctx.ctx, ZMQ_DEALER);
        endpoint_security sec({.mode = security_mode::curve, .secret_key_file = dir / (name + ".key")});
        sec.apply_client(c->s, endpoint, server_keys.public_key);
        zmq_connect(c->s, endpoint.c_str());
        zmq_send(c->s, text.data(), text.size(), 0);
        return c;
    }

    bool logged(const std::string& part) {
        std::lock_guard lock(log_mutex);
        for (const auto& l : log)
            if (l.find(part) != std::string::npos) return true;
        return false;
    }
};

}  // namespace

TEST(security, allowed_curve_client_gets_in_and_its_messages_carry_its_node_name) {
    curve_fixture f;
    zap_driver driver(f.zap);
    auto alice = f.client("alice", "hello from alice");
    received r = recv_on_router(f.server.s, 10000ms);
    ASSERT_TRUE(r.ok) << "the allowed client's message did not arrive within 10 s";
    EXPECT_EQ(r.payload, "hello from alice");
    EXPECT_EQ(r.user_id, "alice");
    EXPECT_EQ(f.zap.stats().allowed_curve, 1u);
    EXPECT_EQ(f.zap.stats().refused(), 0u);
}

TEST(security, curve_client_with_an_unknown_key_is_refused_counted_and_logged_and_never_heard) {
    curve_fixture f;
    zap_driver driver(f.zap);
    auto mallory = f.client("mallory", "let me in");
    ASSERT_TRUE(eventually([&] { return f.zap.stats().refused_unknown_key >= 1; }))
        << "the unknown key was not refused within 5 s";
    EXPECT_FALSE(recv_on_router(f.server.s, 300ms).ok) << "a refused client's message arrived";
    EXPECT_EQ(f.zap.stats().allowed_curve, 0u);
    EXPECT_TRUE(f.logged(f.mallory_keys.public_key));
    EXPECT_TRUE(f.logged("127.0.0.1"));
    // An allowed client still gets in afterwards, and only its message arrives.
    auto alice = f.client("alice", "after");
    received r = recv_on_router(f.server.s, 10000ms);
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.payload, "after");
    EXPECT_EQ(r.user_id, "alice");
}

TEST(security, revoked_key_is_refused_on_its_next_connection) {
    curve_fixture f;
    ASSERT_TRUE(f.zap.revoke(f.alice_keys.public_key));
    zap_driver driver(f.zap);
    auto alice = f.client("alice", "revoked");
    ASSERT_TRUE(eventually([&] { return f.zap.stats().refused_unknown_key >= 1; }));
    EXPECT_FALSE(recv_on_router(f.server.s, 300ms).ok);
}

TEST(security, client_without_curve_is_refused_by_a_curve_server_and_never_heard) {
    curve_fixture f;
    zap_driver driver(f.zap);
    zmq_sock plain(f.ctx.ctx, ZMQ_DEALER);
    zmq_connect(plain.s, f.endpoint.c_str());
    zmq_send(plain.s, "no curve", 8, 0);
    // The mechanisms differ, so the ZMTP greeting fails before ZAP is asked: nothing arrives,
    // and the handler lets no one in.
    EXPECT_FALSE(recv_on_router(f.server.s, 1000ms).ok) << "a client without CURVE was heard";
    EXPECT_EQ(f.zap.stats().allowed_curve + f.zap.stats().allowed_null, 0u);
}

TEST(security, null_clients_get_in_only_as_the_null_policy_allows) {
    for (null_access access : {null_access::refuse, null_access::local}) {
        SCOPED_TRACE(access == null_access::refuse ? "refuse" : "local");
        zmq_ctx ctx;
        zap_options opts{.null = access, .log = [](std::string_view) {}};
        zap_handler zap(ctx.ctx, opts);
        zap_driver driver(zap);
        endpoint_security sec({.mode = security_mode::null});
        zmq_sock server(ctx.ctx, ZMQ_ROUTER);
        sec.apply_server(server.s, "tcp://127.0.0.1:*");
        ASSERT_EQ(zmq_bind(server.s, "tcp://127.0.0.1:*"), 0);
        std::string ep = last_endpoint(server.s);
        zmq_sock client(ctx.ctx, ZMQ_DEALER);
        sec.apply_client(client.s, ep);
        zmq_connect(client.s, ep.c_str());
        zmq_send(client.s, "null", 4, 0);
        if (access == null_access::local) {
            received r = recv_on_router(server.s, 10000ms);
            ASSERT_TRUE(r.ok) << "a local NULL client was not let in within 10 s";
            EXPECT_EQ(r.payload, "null");
            EXPECT_EQ(zap.stats().allowed_null, 1u);
        } else {
            ASSERT_TRUE(eventually([&] { return zap.stats().refused_null >= 1; }));
            EXPECT_FALSE(recv_on_router(server.s, 300ms).ok);
            EXPECT_EQ(zap.stats().allowed_null, 0u);
        }
    }
}

TEST(security, malformed_zap_requests_are_refused_counted_and_the_handler_carries_on) {
    zmq_ctx ctx;
    std::atomic<int> lines{0};
    zap_handler zap(ctx.ctx, {.log = [&](std::string_view) { lines.fetch_add(1); }});
    curve_keypair alice = curve_keypair::generate();
    zap.allow(alice.public_key, "alice");
    std::uint8_t alice_raw[32];
    ASSERT_NE(zmq_z85_decode(alice_raw, alice.public_key.c_str()), nullptr);
    const std::string alice_bin(reinterpret_cast<const char*>(alice_raw), 32);
    zap_driver driver(zap);

    // Speaks to the handler as libzmq does (an empty delimiter, then the request).
    zmq_sock raw(ctx.ctx, ZMQ_DEALER);
    ASSERT_EQ(zmq_connect(raw.s, "inproc://zeromq.zap.01"), 0);

    struct bad_case {
        const char* what;
        std::vector<std::string> frames;
        bool replied;
    };
    const std::vector<bad_case> cases = {
        {"no delimiter", {"1.0", "1", "mailroom", "", "", "CURVE", alice_bin}, false},
        {"one frame", {std::string("x")}, false},
        {"too few frames", {"", "1.0", "7"}, true},
        {"bad version", {"", "2.0", "1", "mailroom", "127.0.0.1", "", "CURVE", alice_bin}, true},
        {"short curve key", {"", "1.0", "1", "mailroom", "127.0.0.1", "", "CURVE", alice_bin.substr(1)}, true},
        {"two curve keys", {"", "1.0", "1", "mailroom", "127.0.0.1", "", "CURVE", alice_bin, alice_bin}, true},
        {"NULL with credentials", {"", "1.0", "1", "mailroom", "127.0.0.1", "", "NULL", "x"}, true},
        {"unknown mechanism", {"", "1.0", "1", "mailroom", "127.0.0.1", "", "ROT13", "x"}, true},
        {"huge field", {"", "1.0", std::string(300, 'i'), "mailroom", "", "", "NULL"}, true},
        {"too many frames", std::vector<std::string>(40, ""), true},
    };
    std::uint64_t expected = 0;
    for (const auto& c : cases) {
        SCOPED_TRACE(c.what);
        send_all(raw.s, c.frames);
        ++expected;
        ASSERT_TRUE(eventually([&] { return zap.stats().malformed >= expected; })) << "not counted within 5 s";
        if (c.replied) {
            auto reply = recv_all(raw.s, 5000ms);
            ASSERT_EQ(reply.size(), 7u);
            EXPECT_EQ(reply[0], "");
            EXPECT_EQ(reply[1], "1.0");
            EXPECT_EQ(reply[3], "400");
            EXPECT_EQ(reply[5], "");  // no user id
        }
    }
    EXPECT_EQ(zap.stats().malformed, cases.size());
    EXPECT_GE(lines.load(), static_cast<int>(cases.size()));

    // Other refusals are counted under their own reasons.
    send_all(raw.s, {"", "1.0", "8", "other-domain", "10.0.0.1", "", "CURVE", alice_bin});
    auto reply = recv_all(raw.s, 5000ms);
    ASSERT_EQ(reply.size(), 7u);
    EXPECT_EQ(reply[2], "8");
    EXPECT_EQ(reply[3], "400");
    send_all(raw.s, {"", "1.0", "9", "mailroom", "10.0.0.1", "", "PLAIN", "user", "password"});
    reply = recv_all(raw.s, 5000ms);
    ASSERT_EQ(reply.size(), 7u);
    EXPECT_EQ(reply[3], "400");
    send_all(raw.s, {"", "1.0", "10", "mailroom", "10.0.0.1", "", "NULL"});
    reply = recv_all(raw.s, 5000ms);
    ASSERT_EQ(reply.size(), 7u);
    EXPECT_EQ(reply[3], "400");
    zap_stats s = zap.stats();
    EXPECT_EQ(s.refused_domain, 1u);
    EXPECT_EQ(s.refused_mechanism, 1u);
    EXPECT_EQ(s.refused_null, 1u);

    // And a well-formed request is still answered: allowed, with the node name as the user id.
    send_all(raw.s, {"", "1.0", "42", "mailroom", "10.0.0.1", "", "CURVE", alice_bin});
    reply = recv_all(raw.s, 5000ms);
    ASSERT_EQ(reply.size(), 7u);
    EXPECT_EQ(reply[1], "1.0");
    EXPECT_EQ(reply[2], "42");
    EXPECT_EQ(reply[3], "200");
    EXPECT_EQ(reply[5], "alice");
    EXPECT_EQ(zap.stats().allowed_curve, 1u);
}

TEST(security, null_access_local_lets_in_loopback_and_unix_peers_only_and_any_lets_in_all) {
    struct expectation {
        const char* address;
        bool local;
    };
    const std::vector<expectation> addresses = {
        {"127.0.0.1", true},  {"127.9.8.7", true},      {"::1", true},           {"::ffff:127.0.0.1", true},
        {"", true},           {":1000:1000:4242", true}, {"10.0.0.1", false},    {"::ffff:10.0.0.1", false},
        {"2001:db8::1", false}, {"127.0.0.1.example", false}, {"1127.0.0.1", false},
    };
    for (null_access access : {null_access::local, null_access::any}) {
        zmq_ctx ctx;
        zap_handler zap(ctx.ctx, {.null = access, .log = [](std::string_view) {}});
        zap_driver driver(zap);
        zmq_sock raw(ctx.ctx, ZMQ_DEALER);
        ASSERT_EQ(zmq_connect(raw.s, "inproc://zeromq.zap.01"), 0);
        for (const auto& a : addresses) {
            SCOPED_TRACE(std::string(access == null_access::local ? "local: " : "any: ") + a.address);
            send_all(raw.s, {"", "1.0", "1", "mailroom", a.address, "", "NULL"});
            auto reply = recv_all(raw.s, 5000ms);
            ASSERT_EQ(reply.size(), 7u);
            EXPECT_EQ(reply[3], (access == null_access::any || a.local) ? "200" : "400");
        }
    }
}
