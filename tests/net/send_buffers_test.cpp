// The buffers a node hands its BATCH frames to ZeroMQ in: a buffer ZeroMQ gives back is taken
// again; the pool outlives its owner while ZeroMQ holds buffers (AddressSanitizer and
// LeakSanitizer check that nothing is freed early or never); a taker and a giver on two threads
// never share a buffer; and through a real ZeroMQ socket every byte arrives.

#include <mailroom/net/send_buffers.hpp>

#include <gtest/gtest.h>
#include <zmq.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

using mailroom::net::internal_node::send_buffers;

namespace {

// What ZeroMQ does once it wrote a message: calls the free function with the hint.
void give(send_buffers* p, std::byte* b) { send_buffers::give_back(b, p->hint()); }

}  // namespace

TEST(send_buffers, a_buffer_given_back_is_taken_again_instead_of_a_new_one) {
    send_buffers* p = send_buffers::make(1024, 4);
    std::byte* a = p->take();
    std::memset(a, 0x5a, p->size());  // the whole size is writable
    give(p, a);
    EXPECT_EQ(p->take(), a);
    give(p, a);
    p->close();
}

TEST(send_buffers, the_pool_outlives_its_owner_until_the_last_buffer_out_is_given_back) {
    send_buffers* p = send_buffers::make(4096, 2);
    std::vector<std::byte*> out;
    for (int i = 0; i < 5; ++i) out.push_back(p->take());
    give(p, out[0]);
    p->close();  // the owner is gone; four buffers are still out
    std::thread zmq_thread([&] {
        for (std::size_t i = 1; i < out.size(); ++i) {
            std::memset(out[i], 1, 4096);  // still the caller's memory until given back
            give(p, out[i]);
        }
    });
    zmq_thread.join();  // the last give_back deleted the pool and every buffer it held
}

TEST(send_buffers, a_taker_and_a_giver_on_two_threads_never_share_a_buffer) {
    constexpr int rounds = 100'000;
    constexpr std::size_t in_flight = 16;
    send_buffers* p = send_buffers::make(64, 4);
    std::atomic<std::byte*> slots[in_flight] = {};
    std::atomic<int> bad{0};
    std::thread giver([&] {
        int given = 0;
        std::size_t i = 0;
        while (given < rounds) {
            std::byte* b = slots[i].exchange(nullptr, std::memory_order_acquire);
            if (b) {
                std::uint64_t v;
                std::memcpy(&v, b, sizeof v);
                if (std::memcmp(b + 8, &v, sizeof v) != 0) bad.fetch_add(1);
                give(p, b);
                ++given;
            }
            i = (i + 1) % in_flight;
        }
    });
    std::size_t i = 0;
    for (std::uint64_t n = 0; n < rounds;) {
        if (slots[i].load(std::memory_order_relaxed) == nullptr) {
            std::byte* b = p->take();
            std::memcpy(b, &n, sizeof n);
            std::memcpy(b + 8, &n, sizeof n);
            slots[i].store(b, std::memory_order_release);
            ++n;
        }
        i = (i + 1) % in_flight;
    }
    giver.join();
    p->close();
    EXPECT_EQ(bad.load(), 0);
}

TEST(send_buffers, every_byte_handed_to_zeromq_in_a_buffer_arrives) {
    void* ctx = zmq_ctx_new();
    void* rx = zmq_socket(ctx, ZMQ_PAIR);
    void* tx = zmq_socket(ctx, ZMQ_PAIR);
    ASSERT_EQ(zmq_bind(rx, "tcp://127.0.0.1:*"), 0);
    char endpoint[256];
    std::size_t len = sizeof endpoint;
    ASSERT_EQ(zmq_getsockopt(rx, ZMQ_LAST_ENDPOINT, endpoint, &len), 0);
    ASSERT_EQ(zmq_connect(tx, endpoint), 0);
    int timeout_ms = 10'000;
    zmq_setsockopt(rx, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    send_buffers* p = send_buffers::make(64 << 10, 8);
    constexpr int messages = 200;
    std::thread sender([&] {
        for (int i = 0; i < messages; ++i) {
            std::byte* b = p->take();
            const std::size_t n = 8192 + static_cast<std::size_t>(i) * 97;
            for (std::size_t k = 0; k < n; ++k) b[k] = static_cast<std::byte>((k + static_cast<std::size_t>(i)) & 0xff);
            zmq_msg_t m;
            ASSERT_EQ(zmq_msg_init_data(&m, b, n, &send_buffers::give_back, p->hint()), 0);
            ASSERT_EQ(zmq_msg_send(&m, tx, 0), static_cast<int>(n));
        }
    });
    int intact = 0;
    for (int i = 0; i < messages; ++i) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, rx, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        const auto* d = static_cast<const unsigned char*>(zmq_msg_data(&m));
        const std::size_t n = zmq_msg_size(&m);
        bool ok = n == 8192 + static_cast<std::size_t>(i) * 97;
        for (std::size_t k = 0; ok && k < n; ++k) ok = d[k] == ((k + static_cast<std::size_t>(i)) & 0xff);
        intact += ok;
        zmq_msg_close(&m);
    }
    sender.join();
    EXPECT_EQ(intact, messages);
    p->close();  // before the context ends: ZeroMQ gives back what it still holds then
    zmq_close(tx);
    zmq_close(rx);
    zmq_ctx_term(ctx);
}
