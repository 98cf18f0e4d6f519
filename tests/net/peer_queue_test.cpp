// The per-peer send queue: each overflow reaction at each limit, close handing back everything
// and waking waiting senders, batching up to the budget with frames that decode back in order,
// and four senders against one drainer with every message drained or handed back exactly once.

#include <mailroom/net/peer_queue.hpp>

#include "test_support.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace mailroom::internal;
using namespace std::chrono_literals;

namespace {

// A SEND frame whose payload is `payload_bytes` bytes starting with the tag, so that a decoded
// frame says which message it was.
net::byte_buffer send_frame(std::uint64_t tag, std::size_t payload_bytes = 8) {
    std::vector<std::byte> payload(std::max<std::size_t>(payload_bytes, sizeof tag));
    std::memcpy(payload.data(), &tag, sizeof tag);
    net::byte_buffer buf;
    frame_writer(buf).write(frame{.kind = frame_kind::send, .type = 7, .source = "src", .target = "obj",
                                  .payload = payload});
    return buf;
}

outgoing_ptr message(std::uint64_t tag, std::size_t payload_bytes = 8) {
    return outgoing::make(send_frame(tag, payload_bytes), tag);
}

std::uint64_t tag_of(const frame& f) {
    std::uint64_t tag = 0;
    if (f.payload.size() >= sizeof tag) std::memcpy(&tag, f.payload.data(), sizeof tag);
    return tag;
}

// Drains everything queued, decoding each ZeroMQ message back into its frames' tags.
std::vector<std::uint64_t> drain_tags(peer_queue& q, std::size_t* messages = nullptr) {
    std::vector<std::uint64_t> tags;
    peer_batch b;
    frame_decoder d;
    while (q.drain(b)) {
        EXPECT_EQ(d.decode(b.bytes()), frame_error::none) << d.detail();
        EXPECT_EQ(d.frames().size(), b.size());
        for (const frame& f : d.frames()) tags.push_back(tag_of(f));
        if (messages) ++*messages;
        q.sent(b);
    }
    return tags;
}

// The size of one message(tag) with the default payload.
const std::size_t message_bytes = send_frame(0).size();

// Fills `q` up to its limit with tags 1..n, then checks that one more is refused with `expect`
// and left with the caller, and returns n.
std::size_t fill_to_the_limit(peer_queue& q, push_result expect) {
    std::uint64_t tag = 1;
    for (;; ++tag) {
        outgoing_ptr m = message(tag);
        const push_result r = q.push(m);
        if (!accepted(r)) {
            EXPECT_EQ(r, expect) << to_string(r);
            EXPECT_TRUE(m) << "a refused message stays with its sender";
            EXPECT_EQ(m->tag(), tag);
            break;
        }
        EXPECT_EQ(r, tag == 1 ? push_result::queued_wake : push_result::queued);
        EXPECT_FALSE(m);
        if (tag > 1000) {
            ADD_FAILURE() << "no limit reached";
            break;
        }
    }
    return tag - 1;
}

}  // namespace

TEST(peer_queue, drop_at_the_message_limit_and_at_the_byte_limit_refuses_the_new_message_and_counts_it) {
    peer_queue by_count("pricing", {.max_messages = 3, .reaction = overflow_reaction::drop});
    EXPECT_EQ(fill_to_the_limit(by_count, push_result::dropped), 3u);
    EXPECT_EQ(by_count.stats().dropped, 1u);
    EXPECT_EQ(by_count.queued(), 3u);

    peer_queue by_bytes("pricing", {.max_bytes = 5 * message_bytes / 2, .reaction = overflow_reaction::drop});
    EXPECT_EQ(fill_to_the_limit(by_bytes, push_result::dropped), 2u);
    EXPECT_EQ(by_bytes.stats().dropped, 1u);
    EXPECT_EQ(by_bytes.queued_bytes(), 2 * message_bytes);

    // What was queued before the drop is intact, and there is room again once drained.
    EXPECT_EQ(drain_tags(by_count), (std::vector<std::uint64_t>{1, 2, 3}));
    outgoing_ptr m = message(9);
    EXPECT_EQ(by_count.push(m), push_result::queued_wake);
    EXPECT_EQ(by_count.stats().high_water, 3u);
}

TEST(peer_queue, reject_at_the_message_limit_and_at_the_byte_limit_refuses_at_once_and_counts_it) {
    peer_queue by_count("pricing", {.max_messages = 4, .reaction = overflow_reaction::reject});
    EXPECT_EQ(fill_to_the_limit(by_count, push_result::rejected), 4u);
    peer_queue by_bytes("pricing", {.max_bytes = 3 * message_bytes, .reaction = overflow_reaction::reject});
    EXPECT_EQ(fill_to_the_limit(by_bytes, push_result::rejected), 3u);
    EXPECT_EQ(by_count.stats().rejected, 1u);
    EXPECT_EQ(by_bytes.stats().rejected, 1u);
    EXPECT_EQ(by_bytes.stats().dropped, 0u);
    EXPECT_EQ(drain_tags(by_bytes), (std::vector<std::uint64_t>{1, 2, 3}));
}

TEST(peer_queue, block_at_the_message_limit_and_at_the_byte_limit_waits_for_room_and_is_queued_once_drained) {
    for (const bool by_bytes : {false, true}) {
        SCOPED_TRACE(by_bytes ? "bytes" : "messages");
        peer_queue_options o{.reaction = overflow_reaction::block, .block_timeout = 30s};
        if (by_bytes)
            o.max_bytes = 2 * message_bytes;
        else
            o.max_messages = 2;
        peer_queue q("pricing", o);
        for (std::uint64_t t : {1, 2}) {
            outgoing_ptr m = message(t);
            ASSERT_TRUE(accepted(q.push(m)));
        }
        auto waiting = std::async(std::launch::async, [&] {
            outgoing_ptr m = message(3);
            return q.push(m);
        });
        // The sender is waiting: it has counted its wait, and it has not come back.
        ASSERT_TRUE(test::eventually([&] { return q.stats().blocked == 1; }));
        EXPECT_EQ(waiting.wait_for(20ms), std::future_status::timeout);
        peer_batch b;
        ASSERT_TRUE(q.drain(b));  // both queued frames leave in one BATCH: room for the third
        q.sent(b);
        ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready) << "the waiting sender was not woken";
        EXPECT_EQ(waiting.get(), push_result::queued_wake);
        EXPECT_EQ(drain_tags(q), (std::vector<std::uint64_t>{3}));
        EXPECT_EQ(q.stats().blocked_then_refused, 0u);
    }
}

TEST(peer_queue, block_at_the_limit_refuses_after_the_timeout_and_counts_it) {
    peer_queue q("pricing", {.max_messages = 1, .reaction = overflow_reaction::block, .block_timeout = 50ms});
    outgoing_ptr m = message(1);
    ASSERT_EQ(q.push(m), push_result::queued_wake);
    const auto start = std::chrono::steady_clock::now();
    m = message(2);
    EXPECT_EQ(q.push(m), push_result::timed_out);
    const auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_GE(waited, 50ms);
    EXPECT_LT(waited, 10s);
    EXPECT_TRUE(m) << "a refused message stays with its sender";
    EXPECT_EQ(q.stats().blocked, 1u);
    EXPECT_EQ(q.stats().blocked_then_refused, 1u);
}

TEST(peer_queue, a_message_over_the_byte_limit_alone_is_refused_as_too_large_without_waiting) {
    peer_queue q("pricing", {.max_bytes = 100, .reaction = overflow_reaction::block, .block_timeout = 30s});
    outgoing_ptr m = message(1, 200);
    EXPECT_EQ(q.push(m), push_result::too_large);
    EXPECT_TRUE(m);
    EXPECT_EQ(q.stats().too_large, 1u);
    EXPECT_EQ(q.stats().blocked, 0u);
    q.close([](outgoing_ptr) {});
    EXPECT_EQ(q.push(m), push_result::closed) << "a closed queue says closed, whatever the message";
}

TEST(peer_queue, close_hands_back_everything_queued_in_order_and_refuses_later_pushes) {
    peer_queue q("pricing", {.max_messages = 100, .batch_bytes = 3 * message_bytes});
    for (std::uint64_t t = 1; t <= 10; ++t) {
        outgoing_ptr m = message(t);
        ASSERT_TRUE(accepted(q.push(m)));
    }
    // One drain takes two (the budget fits two), and leaves the third taken aside for the next
    // drain: close must hand that one back too.
    peer_batch b;
    ASSERT_TRUE(q.drain(b));
    EXPECT_EQ(b.size(), 2u);
    q.sent(b);
    std::vector<std::uint64_t> back;
    EXPECT_EQ(q.close([&](outgoing_ptr m) { back.push_back(m->tag()); }), 8u);
    EXPECT_EQ(back, (std::vector<std::uint64_t>{3, 4, 5, 6, 7, 8, 9, 10}));
    EXPECT_TRUE(q.closed());
    EXPECT_EQ(q.queued(), 0u);
    EXPECT_EQ(q.queued_bytes(), 0u);
    EXPECT_FALSE(q.drain(b));
    outgoing_ptr m = message(11);
    EXPECT_EQ(q.push(m), push_result::closed);
    EXPECT_TRUE(m);
    EXPECT_EQ(q.close([&](outgoing_ptr) { ADD_FAILURE() << "a second close hands back nothing"; }), 0u);
    const peer_queue_stats s = q.stats();
    EXPECT_EQ(s.sent, 2u);
    EXPECT_EQ(s.handed_back, 8u);
    EXPECT_EQ(s.refused_closed, 1u);
}

TEST(peer_queue, close_wakes_every_blocked_sender_with_a_refusal) {
    peer_queue q("pricing", {.max_messages = 1, .reaction = overflow_reaction::block, .block_timeout = 60s});
    outgoing_ptr first = message(1);
    ASSERT_EQ(q.push(first), push_result::queued_wake);
    std::vector<std::future<push_result>> waiting;
    for (std::uint64_t t = 2; t <= 4; ++t)
        waiting.push_back(std::async(std::launch::async, [&q, t] {
            outgoing_ptr m = message(t);
            const push_result r = q.push(m);
            EXPECT_TRUE(m) << "a refused message stays with its sender";
            return r;
        }));
    ASSERT_TRUE(test::eventually([&] { return q.stats().blocked == 3; }));
    std::vector<std::uint64_t> back;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(q.close([&](outgoing_ptr m) { back.push_back(m->tag()); }), 1u);
    for (auto& w : waiting) {
        ASSERT_EQ(w.wait_for(10s), std::future_status::ready) << "a blocked sender was not woken by close";
        EXPECT_EQ(w.get(), push_result::closed);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
    EXPECT_EQ(back, (std::vector<std::uint64_t>{1}));
    EXPECT_EQ(q.stats().refused_closed, 3u);
    EXPECT_EQ(q.stats().blocked_then_refused, 0u);
}

TEST(peer_queue, options_out_of_range_raise_usage_error_naming_the_peer) {
    auto message_of = [](peer_queue_options o) -> std::string {
        try {
            peer_queue q("pricing", o);
        } catch (const usage_error& e) {
            return e.what();
        }
        return "";
    };
    EXPECT_NE(message_of({.max_messages = 0}).find("peer queue 'pricing': max_messages"), std::string::npos);
    EXPECT_NE(message_of({.max_bytes = 0}).find("'pricing': max_bytes"), std::string::npos);
    EXPECT_NE(message_of({.max_bytes = std::size_t{1} << 41}).find("max_bytes"), std::string::npos);
    EXPECT_NE(message_of({.batch_bytes = std::size_t{1} << 30}).find("batch_bytes"), std::string::npos);
    EXPECT_NE(message_of({.max_batch_frames = 0}).find("max_batch_frames"), std::string::npos);
    EXPECT_EQ(message_of({}), "");
    peer_queue q("pricing");
    outgoing_ptr none;
    EXPECT_THROW(q.push(none), usage_error);
    EXPECT_THROW(outgoing::make({}, 1), usage_error);
}

TEST(peer_queue, batching_packs_small_frames_up_to_the_budget_and_they_decode_back_in_order) {
    // A budget for exactly five frames: the BATCH header and count, then a length per frame.
    const std::size_t budget = frame_header_bytes + 4 + 5 * (4 + message_bytes);
    peer_queue q("pricing", {.max_messages = 1000, .batch_bytes = budget});
    for (std::uint64_t t = 1; t <= 12; ++t) {
        outgoing_ptr m = message(t);
        ASSERT_TRUE(accepted(q.push(m)));
    }
    peer_batch b;
    frame_decoder d;
    std::vector<std::uint64_t> tags;
    std::vector<std::size_t> sizes;
    while (q.drain(b)) {
        EXPECT_LE(b.bytes().size(), budget);
        ASSERT_EQ(d.decode(b.bytes()), frame_error::none) << d.detail();
        ASSERT_EQ(d.frames().size(), b.size());
        std::size_t i = 0;
        b.for_each([&](const outgoing& m) {
            EXPECT_EQ(m.tag(), tag_of(d.frames()[i++])) << "the batch's messages and frames agree";
        });
        for (const frame& f : d.frames()) tags.push_back(tag_of(f));
        sizes.push_back(b.size());
        EXPECT_EQ(b.is_batch(), b.size() > 1);
        q.sent(b);
    }
    EXPECT_EQ(sizes, (std::vector<std::size_t>{5, 5, 2}));
    EXPECT_EQ(tags, (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
    const peer_queue_stats s = q.stats();
    EXPECT_EQ(s.sent, 12u);
    EXPECT_EQ(s.zmq_messages, 3u);
    EXPECT_EQ(s.batches, 3u);
    EXPECT_EQ(s.batched_frames, 12u);
    EXPECT_EQ(s.high_water, 12u);
    EXPECT_EQ(s.queued, 0u);
}

TEST(peer_queue, a_lone_frame_a_frame_too_big_for_a_batch_and_a_hello_go_as_themselves) {
    peer_queue q("pricing", {.max_messages = 1000, .batch_bytes = 256});
    peer_batch b;
    // Alone in the queue: sent as itself, the very bytes it was made of.
    const net::byte_buffer lone = send_frame(1);
    outgoing_ptr m = outgoing::make(lone, 1);
    ASSERT_EQ(q.push(m), push_result::queued_wake);
    ASSERT_TRUE(q.drain(b));
    EXPECT_FALSE(b.is_batch());
    EXPECT_TRUE(std::equal(b.bytes().begin(), b.bytes().end(), lone.begin(), lone.end()));
    q.sent(b);

    // small, big, small, HELLO, small, small: the big one and the HELLO split the run.
    net::byte_buffer hello;
    frame_writer(hello).write(frame{.kind = frame_kind::hello, .protocol_version = 1, .node = "pricing"});
    std::vector<outgoing_ptr> ms;
    ms.push_back(message(2));
    ms.push_back(message(3, 400));
    ms.push_back(message(4));
    ms.push_back(outgoing::make(hello, 5));
    ms.push_back(message(6));
    ms.push_back(message(7));
    for (auto& x : ms) ASSERT_TRUE(accepted(q.push(x)));
    std::vector<std::vector<std::uint64_t>> runs;
    while (q.drain(b)) {
        auto& run = runs.emplace_back();
        b.for_each([&](const outgoing& x) { run.push_back(x.tag()); });
        EXPECT_EQ(b.is_batch(), run.size() > 1);
        frame_decoder d;
        EXPECT_EQ(d.decode(b.bytes()), frame_error::none) << d.detail();
        q.sent(b);
    }
    EXPECT_EQ(runs, (std::vector<std::vector<std::uint64_t>>{{2}, {3}, {4}, {5}, {6, 7}}));
}

TEST(peer_queue, four_senders_one_drainer_every_message_drained_or_handed_back_exactly_once_in_order) {
    constexpr int senders = 4;
    const long per_sender = test::rounds(40'000);
    peer_queue q("pricing", {.max_messages = 64,
                             .max_bytes = 8192,
                             .reaction = overflow_reaction::block,
                             .block_timeout = 20s,
                             .batch_bytes = 2048});
    // What each sender had accepted, and what the drainer saw (drained or handed back).
    std::vector<std::vector<std::uint8_t>> accepted_by(senders, std::vector<std::uint8_t>(per_sender));
    std::vector<std::vector<std::uint8_t>> seen(senders, std::vector<std::uint8_t>(per_sender));
    std::vector<long> last(senders, -1);
    std::atomic<int> running{senders};
    std::atomic<bool> order_broken{false};
    std::vector<std::thread> threads;
    for (int p = 0; p < senders; ++p)
        threads.emplace_back([&, p] {
            for (long i = 0; i < per_sender; ++i) {
                const std::uint64_t tag = (std::uint64_t(p) << 32) | std::uint64_t(i);
                outgoing_ptr m = message(tag, 8 + (i * 37 + p * 11) % 600);
                const push_result r = q.push(m);
                if (accepted(r)) {
                    accepted_by[p][i] = 1;
                } else {
                    EXPECT_EQ(r, push_result::closed) << to_string(r);
                    break;
                }
            }
            running.fetch_sub(1);
        });
    auto note = [&](std::uint64_t tag) {
        const int p = int(tag >> 32);
        const long i = long(tag & 0xffffffffu);
        ++seen[p][i];
        if (i <= last[p]) order_broken = true;
        last[p] = i;
    };
    // Drain for a while, then close with senders still sending (unless they finished first).
    const auto close_at = std::chrono::steady_clock::now() + (test::sanitized ? 1500ms : 300ms);
    const auto give_up = std::chrono::steady_clock::now() + 60s;
    peer_batch b;
    frame_decoder d;
    std::size_t handed_back = 0;
    while (std::chrono::steady_clock::now() < close_at && (running.load() > 0 || q.queued() > 0)) {
        if (!q.drain(b)) {
            std::this_thread::yield();
            continue;
        }
        // No ASSERT here: the senders must be joined before the test may end.
        if (d.decode(b.bytes()) != frame_error::none || d.frames().size() != b.size()) {
            ADD_FAILURE() << "a drained message does not decode into its frames: " << d.detail();
            q.sent(b);
            continue;
        }
        std::size_t i = 0;
        b.for_each([&](const outgoing& m) { EXPECT_EQ(m.tag(), tag_of(d.frames()[i++])); });
        for (const frame& f : d.frames()) note(tag_of(f));
        q.sent(b);
    }
    q.close([&](outgoing_ptr m) {
        note(m->tag());
        ++handed_back;
    });
    for (auto& t : threads) t.join();
    ASSERT_LT(std::chrono::steady_clock::now(), give_up);
    EXPECT_FALSE(order_broken) << "one sender's messages left out of order";
    std::size_t accepted_total = 0;
    for (int p = 0; p < senders; ++p)
        for (long i = 0; i < per_sender; ++i) {
            accepted_total += accepted_by[p][i];
            ASSERT_EQ(seen[p][i], accepted_by[p][i]) << "sender " << p << " message " << i;
        }
    const peer_queue_stats s = q.stats();
    EXPECT_EQ(s.sent + s.handed_back, accepted_total);
    EXPECT_EQ(s.handed_back, handed_back);
    EXPECT_EQ(s.queued, 0u);
    EXPECT_LE(s.high_water, 64u);
    EXPECT_EQ(s.blocked_then_refused, 0u);
    EXPECT_GT(s.batches, 0u);
}
