#pragma once
/// Codecs: how a message type crosses the wire. Each type is registered once in a
/// type_registry under a stable wire id (a 64-bit hash of a name the user gives, or an explicit
/// id; never typeid, which differs between compilers and builds). The default codec is msgpack
/// (a type with MSGPACK_DEFINE or msgpack adaptors), `codec<T>` is the customisation point for
/// users who bring their own encoding, and raw_bytes (or a type derived from it) travels as its
/// bytes. Decoding is bounded (decode_limits) and never throws: a failure is a decode_result
/// carrying a reason. See docs/net.md.

#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>
#include <mailroom/net_export.hpp>

#include <msgpack.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace mailroom::net {

/// A message type's identity on the wire, the same in every process that registers it.
using wire_id = std::uint64_t;

/// The wire id of a type name: 64-bit FNV-1a of its bytes (stable across compilers, platforms
/// and builds). Never 0 for a name the registry accepts.
constexpr wire_id wire_id_of(std::string_view name) noexcept {
    std::uint64_t h = 14695981039346656037ull;
    for (char c : name) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

/// The bytes a codec writes into: a growable buffer that keeps its capacity when cleared, so an
/// encoder that reuses one allocates nothing once it has grown.
using byte_buffer = std::vector<std::byte>;

/// Bounds on one decode, so that a few hostile bytes cannot make it reserve gigabytes
/// (msgpack-c #1013: an array header claims 2^32 elements in 5 bytes). Every element of a
/// container needs at least one byte, so the counts are also capped by the payload's size.
struct decode_limits {
    std::size_t max_bytes = 16u << 20;  ///< the largest payload accepted
    std::size_t max_array = 1u << 16;   ///< elements of one array
    std::size_t max_map = 1u << 16;     ///< pairs of one map
    std::size_t max_str = 1u << 24;     ///< bytes of one string
    std::size_t max_bin = 1u << 24;     ///< bytes of one binary
    std::size_t max_ext = 1u << 24;     ///< bytes of one extension
    std::size_t max_depth = 32;         ///< nesting of containers
};

/// Why a payload did not decode.
enum class decode_status : std::uint8_t {
    ok,
    malformed,        ///< not valid in the codec's format, or cut short
    limit_exceeded,   ///< a size, count or depth over decode_limits
    trailing_bytes,   ///< a whole value, then bytes that belong to nothing
    type_mismatch,    ///< valid, but not the shape of the registered type
    unknown_type,     ///< no type of that wire id is registered
};
/// A status's name ("limit_exceeded").
MAILROOM_NET_EXPORT const char* to_string(decode_status s) noexcept;

/// The outcome of a decode: ok, or a status and a reason a log line can carry.
struct decode_result {
    decode_status status = decode_status::ok;
    std::string reason;  ///< empty when ok

    explicit operator bool() const noexcept { return status == decode_status::ok; }
    static decode_result failure(decode_status s, std::string why) { return {s, std::move(why)}; }
};

/// A message whose payload is its bytes, unchanged on the wire. Derive from it to register
/// several kinds of raw message (each derived type is a type of its own).
struct raw_bytes {
    std::vector<std::byte> bytes;

    /// What a message limit counts for it: its bytes.
    std::size_t limit_bytes() const noexcept { return sizeof(raw_bytes) + bytes.size(); }
    bool operator==(const raw_bytes&) const = default;
};

/// The customisation point: specialise codec<T> with
///   static void encode(const T& value, byte_buffer& out);   // appends to out; may throw
///   static decode_result decode(std::span<const std::byte> in, T& out, const decode_limits& limits);
/// where decode consumes all of `in` and never throws. The primary template is msgpack's
/// (raw_bytes and its derived types travel as their bytes, signals as nothing).
template <class T>
struct codec;

namespace detail {

/// msgpack's default: pack with the type's MSGPACK_DEFINE or adaptor; unpack bounded.
MAILROOM_NET_EXPORT decode_result msgpack_unpack(std::span<const std::byte> in, const decode_limits& limits,
                                                 msgpack::object_handle& out);
/// The same, converted at once by `convert(object, out)` (whose exception is a type_mismatch):
/// the unpacked object lives in a zone of the calling thread that is reused, so decoding a
/// message allocates only what its `T` needs.
MAILROOM_NET_EXPORT decode_result msgpack_unpack_into(std::span<const std::byte> in, const decode_limits& limits,
                                                      void (*convert)(const msgpack::object& from, void* to),
                                                      void* out);

struct buffer_writer {
    byte_buffer& out;
    // msgpack writes a field at a time, a few bytes each: grown in place, no range insert.
    void write(const char* p, std::size_t n) {
        const std::size_t at = out.size();
        out.resize(at + n);
        if (n) std::memcpy(out.data() + at, p, n);
    }
};

MAILROOM_NET_EXPORT decode_result raw_decode(std::span<const std::byte> in, raw_bytes& out,
                                             const decode_limits& limits);

}  // namespace detail

template <class T>
struct codec {
    static void encode(const T& value, byte_buffer& out) {
        if constexpr (is_signal_v<T>) {
            (void)value;
            (void)out;
        } else if constexpr (std::is_base_of_v<raw_bytes, T>) {
            const raw_bytes& r = value;
            out.insert(out.end(), r.bytes.begin(), r.bytes.end());
        } else {
            detail::buffer_writer w{out};
            msgpack::pack(w, value);
        }
    }

    static decode_result decode(std::span<const std::byte> in, T& out, const decode_limits& limits) {
        if constexpr (is_signal_v<T>) {
            (void)out;
            (void)limits;
            if (!in.empty()) return decode_result::failure(decode_status::trailing_bytes, "a signal carries no payload");
            return {};
        } else if constexpr (std::is_base_of_v<raw_bytes, T>) {
            return detail::raw_decode(in, static_cast<raw_bytes&>(out), limits);
        } else {
            return detail::msgpack_unpack_into(
                in, limits, [](const msgpack::object& from, void* to) { from.convert(*static_cast<T*>(to)); }, &out);
        }
    }
};

/// One registered type, as the registry and the wire see it.
struct type_entry {
    wire_id id = 0;
    std::string name;       ///< the name given at registration ("pricing.tick")
    message_type type;      ///< the C++ type, for lookups inside this process only
    /// Appends the encoding of the `T` at `value` to `out`.
    void (*encode)(const void* value, byte_buffer& out) = nullptr;
    /// Appends the encoding of the `T` an envelope of the type carries (what a node sends).
    void (*encode_envelope)(const internal::envelope* e, byte_buffer& out) = nullptr;
    /// Decodes `in` into a new message envelope of the type (never throws; `out` is set only on ok).
    decode_result (*decode)(std::span<const std::byte> in, const decode_limits& limits,
                            internal::envelope_ref& out) = nullptr;
};

/// A wire id, name or type registered twice; the message names both registrations.
class MAILROOM_NET_EXPORT duplicate_type_error final : public error {
public:
    using error::error;
};

/// The message types a node can send and receive. Register every type before the registry is
/// handed to a node: registration is for one thread at a time, and lookups (from any number of
/// threads) must not race with it.
class MAILROOM_NET_EXPORT type_registry {
public:
    type_registry();
    ~type_registry();
    type_registry(type_registry&&) noexcept;
    type_registry& operator=(type_registry&&) noexcept;

    /// Adds `entry`. Raises invalid_name_error for a bad name, usage_error for id 0, and
    /// duplicate_type_error naming both when its id, name or C++ type is already registered.
    void add(type_entry entry);

    /// The entry of `id`, or nullptr.
    const type_entry* find(wire_id id) const noexcept;
    /// The entry of a C++ type, or nullptr.
    const type_entry* find(message_type type) const noexcept;
    /// The entry of `T`, or nullptr.
    template <class T>
    const type_entry* find() const noexcept {
        return find(message_type_of<T>());
    }

    /// Every entry, in the order registered (what HELLO announces).
    std::span<const type_entry* const> entries() const noexcept;

    /// Encodes `value` (a registered `T`) after what `out` holds; raises usage_error if `T` is
    /// not registered.
    template <class T>
    void encode(const T& value, byte_buffer& out) const {
        entry_of(message_type_of<T>())->encode(&value, out);
    }

    /// Decodes a payload of type `id` into a new envelope; unknown_type if none is registered.
    decode_result decode(wire_id id, std::span<const std::byte> in, const decode_limits& limits,
                         internal::envelope_ref& out) const;

private:
    const type_entry* entry_of(message_type type) const;

    struct impl;
    std::unique_ptr<impl> impl_;
};

/// Registers `T` under `name`, with the name's hash as its wire id; returns the id.
template <class T>
wire_id register_type(type_registry& registry, std::string_view name);

/// Registers `T` under `name` with an explicit wire id (for a protocol whose ids are fixed
/// elsewhere); returns `id`.
template <class T>
wire_id register_type(type_registry& registry, std::string_view name, wire_id id);

/// Encodes `value` with codec<T>, appending to `out`.
template <class T>
void encode(const T& value, byte_buffer& out) {
    codec<T>::encode(value, out);
}

/// Decodes `in` into `out` with codec<T>; never throws.
template <class T>
decode_result decode(std::span<const std::byte> in, T& out, const decode_limits& limits = {}) {
    if (in.size() > limits.max_bytes)
        return decode_result::failure(decode_status::limit_exceeded,
                                      "payload of " + std::to_string(in.size()) + " bytes over the limit of " +
                                          std::to_string(limits.max_bytes));
    try {
        return codec<T>::decode(in, out, limits);
    } catch (const std::exception& e) {
        // A user's codec that throws is a payload that did not decode, not a fault of the node.
        return decode_result::failure(decode_status::malformed, e.what());
    } catch (...) {
        return decode_result::failure(decode_status::malformed, "the codec threw");
    }
}

}  // namespace mailroom::net

#include <mailroom/net/detail/codec_impl.hpp>
