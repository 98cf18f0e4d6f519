// Codecs: wire ids from names, the registry's typed errors, msgpack by default, a user's own
// codec<T>, raw bytes, and decoding that is bounded and never throws.

#include <mailroom/net/codec.hpp>

#include <mailroom/named/named.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

using namespace mailroom;
using namespace mailroom::net;

namespace {

struct price_tick {
    std::string symbol;
    double price = 0;
    std::int64_t volume = 0;
    MSGPACK_DEFINE(symbol, price, volume)
    bool operator==(const price_tick&) const = default;
};

struct order {
    std::vector<int> legs;
    MSGPACK_DEFINE(legs)
};

struct stop_signal final : signal {};

// A type with its own codec: four bytes, big-endian, no msgpack.
struct counter {
    std::uint32_t n = 0;
};

struct blob final : raw_bytes {};

std::vector<std::byte> bytes_of(std::initializer_list<int> v) {
    std::vector<std::byte> out;
    for (int b : v) out.push_back(static_cast<std::byte>(b));
    return out;
}

}  // namespace

template <>
struct mailroom::net::codec<counter> {
    static void encode(const counter& c, byte_buffer& out) {
        for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::byte>((c.n >> (8 * i)) & 0xff));
    }
    static decode_result decode(std::span<const std::byte> in, counter& out, const decode_limits&) {
        if (in.size() != 4) return decode_result::failure(decode_status::malformed, "a counter is 4 bytes");
        out.n = 0;
        for (std::byte b : in) out.n = (out.n << 8) | std::to_integer<std::uint32_t>(b);
        return {};
    }
};

TEST(codec, wire_id_is_a_stable_hash_of_the_name_not_of_the_cpp_type) {
    // 64-bit FNV-1a: the same in every process, compiler and build.
    EXPECT_EQ(wire_id_of(""), 14695981039346656037ull);
    EXPECT_EQ(wire_id_of("a"), 0xaf63dc4c8601ec8cull);
    type_registry reg;
    EXPECT_EQ(register_type<price_tick>(reg, "pricing.tick"), wire_id_of("pricing.tick"));
    EXPECT_EQ(register_type<order>(reg, "orders.new", 42), 42u);
    ASSERT_NE(reg.find(42), nullptr);
    EXPECT_EQ(reg.find(42)->name, "orders.new");
    EXPECT_EQ(reg.find<price_tick>()->id, wire_id_of("pricing.tick"));
    ASSERT_EQ(reg.entries().size(), 2u);
    EXPECT_EQ(reg.entries()[0]->name, "pricing.tick");
    EXPECT_EQ(reg.find(7), nullptr);
}

TEST(codec, duplicate_id_name_or_type_is_a_typed_error_naming_both) {
    type_registry reg;
    register_type<price_tick>(reg, "pricing.tick", 7);
    try {
        register_type<order>(reg, "orders.new", 7);
        FAIL() << "a duplicate wire id was accepted";
    } catch (const duplicate_type_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("orders.new"), std::string::npos) << what;
        EXPECT_NE(what.find("pricing.tick"), std::string::npos) << what;
        EXPECT_NE(what.find("wire id"), std::string::npos) << what;
    }
    try {
        register_type<order>(reg, "pricing.tick", 8);
        FAIL() << "a duplicate name was accepted";
    } catch (const duplicate_type_error& e) {
        EXPECT_NE(std::string(e.what()).find("name"), std::string::npos) << e.what();
    }
    try {
        register_type<price_tick>(reg, "pricing.tick2");
        FAIL() << "a C++ type registered twice was accepted";
    } catch (const duplicate_type_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("pricing.tick2"), std::string::npos) << what;
        EXPECT_NE(what.find("'pricing.tick'"), std::string::npos) << what;
    }
    // The failed registrations left nothing behind.
    EXPECT_EQ(reg.entries().size(), 1u);
    EXPECT_EQ(reg.find(8), nullptr);
    EXPECT_THROW(register_type<order>(reg, ""), invalid_name_error);
    EXPECT_THROW(register_type<order>(reg, "orders", 0), usage_error);
    EXPECT_NO_THROW(register_type<order>(reg, "orders.new"));
}

TEST(codec, msgpack_is_the_default_and_round_trips_through_the_registry) {
    type_registry reg;
    const wire_id id = register_type<price_tick>(reg, "pricing.tick");
    byte_buffer buf;
    const price_tick in{"EURUSD", 1.0825, 1'000'000};
    reg.encode(in, buf);
    internal::envelope_ref e;
    const decode_result r = reg.decode(id, buf, {}, e);
    ASSERT_TRUE(r) << r.reason;
    ASSERT_NE(e.get(), nullptr);
    EXPECT_EQ(e.get()->type(), message_type_of<price_tick>());
    EXPECT_EQ(internal::payload_of<price_tick>(e.get()), in);
    // The same bytes through the typed entry point.
    price_tick out;
    ASSERT_TRUE(decode(std::span<const std::byte>(buf), out));
    EXPECT_EQ(out, in);
}

TEST(codec, a_users_codec_specialisation_replaces_msgpack) {
    type_registry reg;
    const wire_id id = register_type<counter>(reg, "counter");
    byte_buffer buf;
    reg.encode(counter{0x01020304}, buf);
    EXPECT_EQ(buf, bytes_of({1, 2, 3, 4}));
    internal::envelope_ref e;
    ASSERT_TRUE(reg.decode(id, buf, {}, e));
    EXPECT_EQ(internal::payload_of<counter>(e.get()).n, 0x01020304u);
    const auto three = bytes_of({1, 2, 3});
    const decode_result bad = reg.decode(id, three, {}, e);
    EXPECT_EQ(bad.status, decode_status::malformed);
    EXPECT_EQ(bad.reason, "a counter is 4 bytes");
}

TEST(codec, raw_bytes_and_signals_travel_without_msgpack) {
    type_registry reg;
    const wire_id b = register_type<blob>(reg, "blob");
    const wire_id s = register_type<stop_signal>(reg, "stop");
    byte_buffer buf;
    blob in;
    in.bytes = bytes_of({0xde, 0xad, 0xbe, 0xef});
    reg.encode(in, buf);
    EXPECT_EQ(buf, in.bytes);  // the bytes, unchanged
    internal::envelope_ref e;
    ASSERT_TRUE(reg.decode(b, buf, {}, e));
    EXPECT_EQ(internal::payload_of<blob>(e.get()).bytes, in.bytes);
    const decode_result big = reg.decode(b, buf, {.max_bin = 3}, e);
    EXPECT_EQ(big.status, decode_status::limit_exceeded);

    buf.clear();
    reg.encode(stop_signal{}, buf);
    EXPECT_TRUE(buf.empty());
    ASSERT_TRUE(reg.decode(s, buf, {}, e));
    EXPECT_EQ(e.get()->type(), message_type_of<stop_signal>());
    const auto one = bytes_of({0});
    EXPECT_EQ(reg.decode(s, one, {}, e).status, decode_status::trailing_bytes);
}

TEST(codec, a_five_byte_array_header_claiming_four_billion_elements_is_refused_before_any_reservation) {
    // msgpack-c #1013: array32 of 0xff000000 elements; an unbounded unpack reserves ~96 GB,
    // which aborts an AddressSanitizer build.
    type_registry reg;
    const wire_id id = register_type<order>(reg, "orders.new");
    internal::envelope_ref e;
    const auto evil = bytes_of({0xdd, 0xff, 0x00, 0x00, 0x00});
    const decode_result r = reg.decode(id, evil, {}, e);
    EXPECT_EQ(r.status, decode_status::limit_exceeded) << r.reason;
    // Refused by the limit, not by an allocator that ran out.
    EXPECT_NE(r.reason.find("array size overflow"), std::string::npos) << r.reason;
    EXPECT_EQ(e.get(), nullptr);
    // The same for a map, a string and a binary that announce more than the payload holds.
    for (auto bad : {bytes_of({0xdf, 0x7f, 0xff, 0xff, 0xff}), bytes_of({0xdb, 0x7f, 0xff, 0xff, 0xff}),
                     bytes_of({0xc6, 0x7f, 0xff, 0xff, 0xff}), bytes_of({0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01})}) {
        const decode_result rr = reg.decode(id, bad, {}, e);
        EXPECT_FALSE(rr) << "0x" << std::hex << std::to_integer<int>(bad[0]);
    }
}

TEST(codec, decode_failures_are_results_with_a_reason_never_exceptions) {
    type_registry reg;
    const wire_id id = register_type<price_tick>(reg, "pricing.tick");
    internal::envelope_ref e;
    // Unknown wire id.
    EXPECT_EQ(reg.decode(id + 1, {}, {}, e).status, decode_status::unknown_type);
    // Empty and cut short.
    EXPECT_EQ(reg.decode(id, {}, {}, e).status, decode_status::malformed);
    byte_buffer buf;
    reg.encode(price_tick{"X", 1, 2}, buf);
    EXPECT_EQ(reg.decode(id, std::span(buf).first(buf.size() - 1), {}, e).status, decode_status::malformed);
    // A whole value, then more.
    byte_buffer longer = buf;
    longer.push_back(std::byte{0xc0});
    EXPECT_EQ(reg.decode(id, longer, {}, e).status, decode_status::trailing_bytes);
    // Valid msgpack of another shape.
    const auto an_int = bytes_of({0x05});
    const decode_result m = reg.decode(id, an_int, {}, e);
    EXPECT_EQ(m.status, decode_status::type_mismatch);
    EXPECT_FALSE(m.reason.empty());
    // Too deep.
    byte_buffer deep(40, std::byte{0x91});
    deep.push_back(std::byte{0x00});
    EXPECT_EQ(reg.decode(id, deep, {}, e).status, decode_status::limit_exceeded);
    // Over the size cap.
    EXPECT_EQ(reg.decode(id, buf, {.max_bytes = 4}, e).status, decode_status::limit_exceeded);
    EXPECT_EQ(e.get(), nullptr);
    EXPECT_STREQ(to_string(decode_status::limit_exceeded), "limit_exceeded");
}

TEST(codec, a_decode_that_failed_mid_value_leaves_nothing_behind_for_the_next_of_the_same_size) {
    // Each thread keeps its msgpack parsers between decodes (one per set of limits, which
    // depend on the payload's size): a payload cut short mid-array, or too deep, must not leave
    // its half-built value for the next payload of the same size to continue from.
    type_registry reg;
    const wire_id id = register_type<price_tick>(reg, "pricing.tick");
    byte_buffer good;
    const price_tick tick{"EURUSD", 1.0842, 1200};
    reg.encode(tick, good);
    ASSERT_EQ(std::to_integer<int>(good[0]), 0x93);  // a fixarray of three: symbol, price, volume
    byte_buffer longer = good;
    longer[0] = std::byte{0x94};  // claims a fourth field the payload does not hold
    byte_buffer deep(good.size(), std::byte{0x91});  // arrays nested past max_depth, same size
    for (int round = 0; round < 3; ++round) {
        internal::envelope_ref e;
        EXPECT_EQ(reg.decode(id, longer, {}, e).status, decode_status::malformed);
        ASSERT_TRUE(reg.decode(id, good, {}, e));
        EXPECT_EQ(internal::payload_of<price_tick>(e.get()), tick);
        EXPECT_EQ(reg.decode(id, deep, {.max_depth = 4}, e).status, decode_status::limit_exceeded);
        EXPECT_EQ(reg.decode(id, deep, {}, e).status, decode_status::malformed);  // cut short, 32 deep at most
        ASSERT_TRUE(reg.decode(id, good, {}, e));
        EXPECT_EQ(internal::payload_of<price_tick>(e.get()), tick);
    }
}
