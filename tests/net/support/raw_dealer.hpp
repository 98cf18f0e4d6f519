#pragma once
// A raw ZeroMQ DEALER connected to a node: what a peer (well-behaved or not) does without
// mailroom. It has a context of its own (so that inproc:// endpoints of other contexts are out
// of reach, as for a foreign process), never lingers, and speaks CURVE when given keys.

#include <gtest/gtest.h>
#include <zmq.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

namespace mailroom::test {

/// Z85 keys for a CURVE client: the server's public key and the client's own pair.
struct raw_curve_keys {
    std::string server_public;
    std::string public_key;
    std::string secret_key;
};

class raw_dealer {
public:
    explicit raw_dealer(const std::string& endpoint, const std::optional<raw_curve_keys>& curve = std::nullopt)
        : ctx_(zmq_ctx_new()), socket_(zmq_socket(ctx_, ZMQ_DEALER)) {
        const int linger = 0;
        zmq_setsockopt(socket_, ZMQ_LINGER, &linger, sizeof linger);
        if (curve) {
            zmq_setsockopt(socket_, ZMQ_CURVE_SERVERKEY, curve->server_public.c_str(), 40);
            zmq_setsockopt(socket_, ZMQ_CURVE_PUBLICKEY, curve->public_key.c_str(), 40);
            zmq_setsockopt(socket_, ZMQ_CURVE_SECRETKEY, curve->secret_key.c_str(), 40);
        }
        EXPECT_EQ(zmq_connect(socket_, endpoint.c_str()), 0) << endpoint << ": " << zmq_strerror(zmq_errno());
    }
    ~raw_dealer() {
        zmq_close(socket_);
        zmq_ctx_term(ctx_);
    }
    raw_dealer(const raw_dealer&) = delete;
    raw_dealer& operator=(const raw_dealer&) = delete;

    void* socket() const noexcept { return socket_; }

    /// Queues `n` bytes as one message (waits while the pipe is full, as a plain peer would).
    void send(const void* data, std::size_t n) { zmq_send(socket_, data, n, 0); }
    template <class Bytes>
    void send(const Bytes& b) {
        send(b.data(), b.size());
    }

    /// Sends without waiting: a test failure if the socket did not take it.
    void send_now(const std::string& m) {
        EXPECT_EQ(zmq_send(socket_, m.data(), m.size(), ZMQ_DONTWAIT), static_cast<int>(m.size()))
            << zmq_strerror(zmq_errno());
    }
    /// The next message (its first 256 bytes), or nothing within `timeout`.
    std::optional<std::string> receive(std::chrono::milliseconds timeout) {
        zmq_pollitem_t item{socket_, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return std::nullopt;
        char buf[256];
        const int n = zmq_recv(socket_, buf, sizeof buf, ZMQ_DONTWAIT);
        if (n < 0) return std::nullopt;
        return std::string(buf, static_cast<std::size_t>(std::min<int>(n, sizeof buf)));
    }
    std::optional<std::string> ask(const std::string& m, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        send_now(m);
        return receive(timeout);
    }

private:
    void* ctx_;
    void* socket_;
};

}  // namespace mailroom::test
