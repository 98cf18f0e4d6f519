// The frame format: every kind round-trips, and every malformed input is rejected under its
// reason, counted, and explained.

#include <mailroom/net/frame.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <string>
#include <vector>

using namespace mailroom;
using namespace mailroom::internal;
using namespace std::literals;

namespace {

struct quote {
    std::string symbol;
    double price = 0;
    MSGPACK_DEFINE(symbol, price)
    bool operator==(const quote&) const = default;
};

std::span<const std::byte> bytes_of(std::string_view s) {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

void set_u32(net::byte_buffer& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

// Decodes `buf` and returns the one frame it holds.
frame decode_single(frame_decoder& d, const net::byte_buffer& buf) {
    const frame_error e = d.decode(buf);
    EXPECT_EQ(e, frame_error::none) << d.detail();
    EXPECT_EQ(d.frames().size(), 1u);
    return d.frames().empty() ? frame{} : d.frames()[0];
}

net::byte_buffer one(const frame& f) {
    net::byte_buffer buf;
    frame_writer(buf).write(f);
    return buf;
}

}  // namespace

TEST(frame, hello_round_trips_with_its_codec_table) {
    const hello_type types[] = {{net::wire_id_of("pricing.tick"), "pricing.tick"}, {42, "orders.new"}};
    frame f{.kind = frame_kind::hello, .protocol_version = 1, .node = "pricing", .types = types};
    const net::byte_buffer buf = one(f);
    frame_decoder d;
    const frame g = decode_single(d, buf);
    EXPECT_EQ(g.kind, frame_kind::hello);
    EXPECT_EQ(g.node, "pricing");
    EXPECT_EQ(g.protocol_version, 1);
    ASSERT_EQ(g.types.size(), 2u);
    EXPECT_EQ(g.types[0], types[0]);
    EXPECT_EQ(g.types[1], types[1]);
    EXPECT_EQ(d.count(frame_error::none), 1u);
}

TEST(frame, heartbeat_request_send_reply_and_reject_round_trip) {
    const auto payload = bytes_of("payload bytes");
    frame_decoder d;
    // Decoded frames are views into their bytes: keep every message alive while its frame is read.
    std::deque<net::byte_buffer> messages;
    auto round_trip = [&](const frame& f) { return decode_single(d, messages.emplace_back(one(f))); };

    frame g = round_trip(frame{.kind = frame_kind::heartbeat, .sequence = 0x0102030405060708ull});
    EXPECT_EQ(g.kind, frame_kind::heartbeat);
    EXPECT_EQ(g.sequence, 0x0102030405060708ull);

    g = round_trip(frame{.kind = frame_kind::request, .request_id = 77, .type = 99, .timeout_ms = 2500,
                              .source = "trader", .target = "calc", .payload = payload});
    EXPECT_EQ(g.kind, frame_kind::request);
    EXPECT_EQ(g.request_id, 77u);
    EXPECT_EQ(g.type, 99u);
    EXPECT_EQ(g.timeout_ms, 2500u);
    EXPECT_EQ(g.source, "trader");
    EXPECT_EQ(g.target, "calc");
    EXPECT_TRUE(std::equal(g.payload.begin(), g.payload.end(), payload.begin(), payload.end()));

    g = round_trip(frame{.kind = frame_kind::send, .type = 5, .source = "feed", .target = "book",
                              .reply_to = "feed.acks", .payload = payload});
    EXPECT_EQ(g.kind, frame_kind::send);
    EXPECT_EQ(g.type, 5u);
    EXPECT_EQ(g.source, "feed");
    EXPECT_EQ(g.target, "book");
    EXPECT_EQ(g.reply_to, "feed.acks");
    EXPECT_EQ(g.payload.size(), payload.size());

    g = round_trip(frame{.kind = frame_kind::reply, .request_id = 77, .type = 6, .payload = {}});
    EXPECT_EQ(g.kind, frame_kind::reply);
    EXPECT_EQ(g.request_id, 77u);
    EXPECT_EQ(g.type, 6u);
    EXPECT_TRUE(g.payload.empty());

    for (auto reason : {reject_reason::no_such_object, reject_reason::handler_rejected,
                        reject_reason::undecodable_type, reject_reason::peer_limits}) {
        g = round_trip(frame{.kind = frame_kind::reject, .request_id = 78, .reason = reason,
                                  .text = to_string(reason)});
        EXPECT_EQ(g.kind, frame_kind::reject);
        EXPECT_EQ(g.request_id, 78u);
        EXPECT_EQ(g.reason, reason);
        EXPECT_EQ(g.text, to_string(reason));
    }
    // BYE: its reason text, exactly the bytes docs/net.md gives (header, then u16 length + text).
    const net::byte_buffer bye = messages.emplace_back(one(frame{.kind = frame_kind::bye, .text = "stopped"}));
    const unsigned char expected[] = {'m', 'r', 1, 8, 0, 0, 0, 0, 9, 0, 0, 0, 7, 0, 's', 't', 'o', 'p', 'p', 'e', 'd'};
    ASSERT_EQ(bye.size(), sizeof expected);
    EXPECT_EQ(std::memcmp(bye.data(), expected, sizeof expected), 0);
    g = decode_single(d, bye);
    EXPECT_EQ(g.kind, frame_kind::bye);
    EXPECT_EQ(g.text, "stopped");
    EXPECT_EQ(d.count(frame_error::none), 9u);
    EXPECT_EQ(d.rejected(), 0u);
}

TEST(frame, batch_carries_several_frames_in_one_message) {
    net::byte_buffer buf;
    frame_writer w(buf);
    w.begin_batch();
    for (std::uint64_t i = 0; i < 10; ++i)
        w.write({.kind = frame_kind::send, .type = i, .source = "s", .target = "t", .payload = bytes_of("x")});
    w.write({.kind = frame_kind::heartbeat, .sequence = 11});
    w.end_batch();
    frame_decoder d;
    ASSERT_EQ(d.decode(buf), frame_error::none) << d.detail();
    ASSERT_EQ(d.frames().size(), 11u);
    for (std::uint64_t i = 0; i < 10; ++i) EXPECT_EQ(d.frames()[i].type, i);
    EXPECT_EQ(d.frames()[10].sequence, 11u);
    EXPECT_EQ(d.count(frame_error::none), 1u);  // one message

    // The writer refuses what a decoder would: an empty batch, a batch in a batch, a HELLO inside.
    net::byte_buffer other;
    frame_writer x(other);
    x.begin_batch();
    EXPECT_THROW(x.end_batch(), usage_error);
    EXPECT_TRUE(other.empty());
    x.begin_batch();
    EXPECT_THROW(x.begin_batch(), usage_error);
    EXPECT_THROW(x.write({.kind = frame_kind::hello, .node = "n"}), usage_error);
}

TEST(frame, payload_is_encoded_in_place_by_the_registered_codec_and_decodes_back) {
    net::type_registry reg;
    const net::wire_id id = net::register_type<quote>(reg, "pricing.quote");
    net::byte_buffer buf;
    frame_writer(buf).write({.kind = frame_kind::request, .request_id = 1, .target = "calc"}, reg,
                            quote{"EURUSD", 1.5});
    frame_decoder d;
    const frame g = decode_single(d, buf);
    EXPECT_EQ(g.type, id);
    envelope_ref e;
    ASSERT_TRUE(d.decode_payload(reg, g, {}, e));
    EXPECT_EQ(payload_of<quote>(e.get()), (quote{"EURUSD", 1.5}));
    // An unregistered type is the sender's bug.
    struct other {};
    EXPECT_THROW(frame_writer(buf).write({.kind = frame_kind::send}, reg, other{}), usage_error);
}

TEST(frame, each_rejection_has_its_reason_and_is_counted) {
    const net::byte_buffer good = one({.kind = frame_kind::request, .request_id = 1, .type = 2, .source = "a",
                                       .target = "b", .payload = bytes_of("zz")});
    frame_decoder d;
    auto expect = [&](net::byte_buffer b, frame_error e, const char* what) {
        const std::uint64_t before = d.count(e);
        EXPECT_EQ(d.decode(b), e) << what << ": " << d.detail();
        EXPECT_EQ(d.count(e), before + 1) << what;
        if (e != frame_error::none) {
            EXPECT_TRUE(d.frames().empty()) << what;
            EXPECT_EQ(d.detail().find(to_string(e)), 0u) << what << ": " << d.detail();
        }
    };

    // truncated: less than a header; a body shorter than announced; a field cut short
    expect(net::byte_buffer(good.begin(), good.begin() + 5), frame_error::truncated, "half a header");
    expect(net::byte_buffer(good.begin(), good.end() - 1), frame_error::truncated, "body cut short");
    {
        net::byte_buffer b(good.begin(), good.begin() + frame_header_bytes + 10);
        set_u32(b, 8, 10);  // the header agrees, the fields do not fit
        expect(b, frame_error::truncated, "fields cut short");
    }
    {
        net::byte_buffer b = good;  // payload length past the end
        set_u32(b, b.size() - 2 - 4, 0xfffffff0u);
        expect(b, frame_error::truncated, "payload length");
    }
    // oversized: body length over the cap; the whole message over the cap; a name over its cap
    {
        net::byte_buffer b = good;
        set_u32(b, 8, 0xffffffffu);
        expect(b, frame_error::oversized, "body length");
    }
    {
        frame_decoder small(frame_limits{.max_frame_bytes = 32});
        EXPECT_EQ(small.decode(good), frame_error::oversized) << small.detail();
        EXPECT_EQ(small.count(frame_error::oversized), 1u);
        frame_decoder names(frame_limits{.max_name = 0});
        EXPECT_EQ(names.decode(good), frame_error::oversized) << names.detail();
    }
    // unknown kind, unknown version, bad magic
    {
        net::byte_buffer b = good;
        b[3] = std::byte{0x42};
        expect(b, frame_error::unknown_kind, "kind");
        b = good;
        b[2] = std::byte{2};
        expect(b, frame_error::unknown_version, "version");
        b = good;
        b[0] = std::byte{'M'};
        expect(b, frame_error::bad_magic, "magic");
    }
    // trailing bytes: after the frame; after the fields (body length agrees)
    {
        net::byte_buffer b = good;
        b.push_back(std::byte{0});
        expect(b, frame_error::trailing_bytes, "after the frame");
        b = one({.kind = frame_kind::heartbeat, .sequence = 1});
        b.push_back(std::byte{0});
        set_u32(b, 8, 9);
        expect(b, frame_error::trailing_bytes, "after the fields");
    }
    // malformed: flags set; a reject reason out of range; a batch inside a batch; an empty batch
    {
        net::byte_buffer b = good;
        b[4] = std::byte{1};
        expect(b, frame_error::malformed, "flags");
        b = one({.kind = frame_kind::reject, .request_id = 1, .reason = reject_reason::peer_limits, .text = "x"});
        b[frame_header_bytes + 8] = std::byte{9};
        expect(b, frame_error::malformed, "reason code");

        net::byte_buffer inner;
        frame_writer w(inner);
        w.begin_batch();
        w.write({.kind = frame_kind::heartbeat});
        w.end_batch();
        net::byte_buffer outer;
        frame_writer ow(outer);
        ow.begin_batch();
        ow.write({.kind = frame_kind::heartbeat});
        ow.end_batch();
        // Replace the outer batch's only item by the inner batch.
        b.assign(outer.begin(), outer.begin() + frame_header_bytes + 4);
        const std::size_t len_at = b.size();
        b.resize(b.size() + 4);
        set_u32(b, len_at, static_cast<std::uint32_t>(inner.size()));
        b.insert(b.end(), inner.begin(), inner.end());
        set_u32(b, 8, static_cast<std::uint32_t>(b.size() - frame_header_bytes));
        expect(b, frame_error::malformed, "batch in a batch");

        b.assign(outer.begin(), outer.begin() + frame_header_bytes + 4);
        set_u32(b, frame_header_bytes, 0);
        set_u32(b, 8, 4);
        expect(b, frame_error::malformed, "empty batch");
    }
    // A bad frame inside a batch rejects the whole batch.
    {
        net::byte_buffer b;
        frame_writer w(b);
        w.begin_batch();
        w.write({.kind = frame_kind::heartbeat, .sequence = 1});
        w.write({.kind = frame_kind::heartbeat, .sequence = 2});
        w.end_batch();
        b[b.size() - 8 - frame_header_bytes] = std::byte{'X'};  // the second frame's magic
        expect(b, frame_error::bad_magic, "inside a batch");
    }
    // A HELLO whose codec table claims more entries than its bytes could hold.
    {
        net::byte_buffer b = one({.kind = frame_kind::hello, .protocol_version = 1, .node = "n"});
        set_u32(b, b.size() - 4, 4000);
        expect(b, frame_error::truncated, "codec table count");
        set_u32(b, b.size() - 4, 0xffffffffu);
        expect(b, frame_error::oversized, "codec table count over the cap");
    }
    // undecodable payload: counted by decode_payload.
    {
        net::type_registry reg;
        net::register_type<quote>(reg, "pricing.quote");
        frame_decoder p;
        const net::byte_buffer b = one({.kind = frame_kind::send, .type = net::wire_id_of("pricing.quote"),
                                        .target = "t", .payload = bytes_of("\xdd\xff\x00\x00\x00"sv)});
        ASSERT_EQ(p.decode(b), frame_error::none) << p.detail();
        envelope_ref e;
        EXPECT_EQ(p.decode_payload(reg, p.frames()[0], {}, e).status, net::decode_status::limit_exceeded);
        const net::byte_buffer u = one({.kind = frame_kind::send, .type = 1, .target = "t", .payload = {}});
        ASSERT_EQ(p.decode(u), frame_error::none);
        EXPECT_EQ(p.decode_payload(reg, p.frames()[0], {}, e).status, net::decode_status::unknown_type);
        EXPECT_EQ(p.count(frame_error::undecodable_payload), 2u);
    }
    expect(good, frame_error::none, "the good frame still decodes");
}

TEST(frame, writer_refuses_fields_over_the_limits_naming_them) {
    net::byte_buffer buf;
    const std::string long_name(300, 'n');
    try {
        frame_writer(buf).write({.kind = frame_kind::send, .target = long_name});
        FAIL() << "a 300-byte target was written";
    } catch (const usage_error& e) {
        EXPECT_NE(std::string(e.what()).find("target"), std::string::npos) << e.what();
    }
    frame_writer small(buf, frame_limits{.max_frame_bytes = 64});
    EXPECT_THROW(small.write({.kind = frame_kind::send, .target = "t", .payload = bytes_of(std::string(100, 'p'))}),
                 usage_error);
}

TEST(frame, write_encoded_packs_whole_frames_into_a_batch_and_refuses_anything_else) {
    const net::byte_buffer hb = one(frame{.kind = frame_kind::heartbeat, .sequence = 5});
    const net::byte_buffer rj = one(frame{.kind = frame_kind::reject, .request_id = 9, .text = "no"});
    net::byte_buffer out;
    frame_writer w(out);
    w.write_encoded(hb);  // outside a BATCH: the frame as it is
    EXPECT_EQ(out, hb);
    out.clear();
    w.begin_batch();
    w.write_encoded(hb);
    w.write_encoded(rj);
    w.end_batch();
    frame_decoder d;
    ASSERT_EQ(d.decode(out), frame_error::none) << d.detail();
    ASSERT_EQ(d.frames().size(), 2u);
    EXPECT_EQ(d.frames()[0].sequence, 5u);
    EXPECT_EQ(d.frames()[1].request_id, 9u);

    net::byte_buffer cut(hb.begin(), hb.end() - 1);
    EXPECT_THROW(w.write_encoded(cut), usage_error);
    net::byte_buffer hello = one(frame{.kind = frame_kind::hello, .node = "n"});
    out.clear();
    w.begin_batch();
    EXPECT_THROW(w.write_encoded(hello), usage_error);
    EXPECT_THROW(w.write_encoded(out), usage_error);  // a BATCH in the making is not one whole frame
    w.write_encoded(hb);
    w.end_batch();
    EXPECT_THROW(w.write_encoded(out), usage_error);  // nor is a BATCH written into another frame
}

TEST(frame, a_payload_written_in_place_matches_one_given_whole_and_only_payload_kinds_take_one) {
    const std::string payload = "0123456789abcdef";
    for (frame_kind k : {frame_kind::request, frame_kind::send, frame_kind::reply}) {
        const frame f{.kind = k, .request_id = 7, .type = 42, .source = "a/s", .target = "b/t",
                      .payload = bytes_of(payload)};
        net::byte_buffer in_place;
        frame_writer(in_place).write_payload(f, [&](net::byte_buffer& out) {
            const auto* p = reinterpret_cast<const std::byte*>(payload.data());
            out.insert(out.end(), p, p + payload.size());
        });
        EXPECT_EQ(in_place, one(f)) << to_string(k);
        frame_decoder d;
        const frame g = decode_single(d, in_place);
        EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(g.payload.data()), g.payload.size()), payload);
    }
    net::byte_buffer buf;
    try {
        frame_writer(buf).write_payload(frame{.kind = frame_kind::heartbeat}, [](net::byte_buffer& out) {
            out.push_back(std::byte{1});
        });
        FAIL() << "a HEARTBEAT took a payload";
    } catch (const usage_error& e) {
        EXPECT_NE(std::string(e.what()).find("HEARTBEAT"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(buf.empty());
}
