#pragma once
// The frame format of the net layer, version 1: what one node writes into a ZeroMQ message for
// another. Integers are little-endian; a string is a u16 length then its bytes; a payload is a
// u32 length then the bytes its type's codec wrote.
//
//   header (12 bytes)   magic "mr" | version u8 (1) | kind u8 | flags u16 (0) | reserved u16 (0)
//                       | body length u32 (the bytes after the header, exactly)
//   HELLO      node name, protocol version u8 (the highest the sender speaks), u32 type count,
//              then per type: wire id u64, type name
//   HEARTBEAT  sequence u64
//   REQUEST    request id u64, timeout ms u32 (0: none), wire id u64, source, target, payload
//   SEND       wire id u64, source, target, reply-to, payload          (one-way)
//   REPLY      request id u64, wire id u64, payload
//   REJECT     request id u64, reason u8 (reject_reason), reason text
//   BATCH      u32 count (>= 1), then per frame: u32 length, a whole frame (no HELLO, no BATCH)
//   BYE        reason text (protocol 2: the sender is stopping; sent to peers whose HELLO said 2)
//
// Decoding validates every length against the bytes that remain and against frame_limits
// before it looks at (or reserves for) what a length announces, and a rejected frame is a
// frame_error counted under its reason: the decoder never throws and never trusts a length.
// Decoded frames are views into the input bytes (no copy); they live as long as those bytes.
// One encoder and one decoder per thread (the node's I/O thread); neither is shared.

#include <mailroom/net/codec.hpp>
#include <mailroom/net_export.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::internal {

inline constexpr std::uint8_t frame_version = 1;
/// The protocol version a HELLO announces (the highest this node speaks): 1 is the frames up to
/// BATCH, 2 adds BYE. A peer of version 1 is spoken to without BYE.
inline constexpr std::uint8_t protocol_version = 2;
inline constexpr std::size_t frame_header_bytes = 12;

enum class frame_kind : std::uint8_t {
    hello = 1,
    heartbeat = 2,
    request = 3,
    send = 4,
    reply = 5,
    reject = 6,
    batch = 7,
    bye = 8,
};
MAILROOM_NET_EXPORT const char* to_string(frame_kind k) noexcept;

/// Why a remote refused a request (the REJECT frame's reason code).
enum class reject_reason : std::uint8_t {
    no_such_object = 1,    ///< no object of that name and no `*`
    handler_rejected = 2,  ///< the handler called reject()
    undecodable_type = 3,  ///< the peer does not know the type, or its payload did not decode
    peer_limits = 4,       ///< the peer's queue or limits refused it
};
MAILROOM_NET_EXPORT const char* to_string(reject_reason r) noexcept;

/// Why a frame was rejected. `none` is a frame accepted.
enum class frame_error : std::uint8_t {
    none,
    truncated,            ///< fewer bytes than the header or a length announces
    oversized,            ///< over frame_limits (the frame, a name, a text, a count)
    unknown_kind,         ///< a kind this version does not define
    unknown_version,      ///< a protocol version this node does not speak
    bad_magic,            ///< not a mailroom frame
    trailing_bytes,       ///< bytes after the last field of a frame
    malformed,            ///< a field out of its range (flags, reason code, a batch inside a batch, ...)
    undecodable_payload,  ///< the payload's type is unknown or its bytes do not decode
};
inline constexpr std::size_t frame_error_count = 9;
MAILROOM_NET_EXPORT const char* to_string(frame_error e) noexcept;

/// Caps on what a frame may announce; a frame past one is rejected as oversized.
struct frame_limits {
    std::size_t max_frame_bytes = (16u << 20) + 4096;  ///< a whole frame, header included
    std::size_t max_name = 255;                         ///< node, object and type names
    std::size_t max_text = 1024;                        ///< a reject's reason text
    std::size_t max_types = 4096;                       ///< entries of a HELLO's codec table
    std::size_t max_batch = 4096;                       ///< frames in one BATCH
};

/// One entry of a HELLO's codec table.
struct hello_type {
    net::wire_id id = 0;
    std::string_view name{};
    bool operator==(const hello_type&) const = default;
};

/// One frame, as encoded or decoded: the fields its kind uses (see the table above); the others
/// are left at their defaults. Views, never owners.
struct frame {
    frame_kind kind = frame_kind::heartbeat;
    std::uint64_t request_id = 0;           ///< REQUEST, REPLY, REJECT
    std::uint64_t sequence = 0;             ///< HEARTBEAT
    net::wire_id type = 0;                  ///< REQUEST, SEND, REPLY
    std::uint32_t timeout_ms = 0;           ///< REQUEST (0: none)
    std::uint8_t protocol_version = 0;      ///< HELLO
    reject_reason reason = reject_reason::no_such_object;  ///< REJECT
    std::string_view node{};                  ///< HELLO
    std::string_view source{};                ///< REQUEST, SEND
    std::string_view target{};                ///< REQUEST, SEND
    std::string_view reply_to{};              ///< SEND
    std::string_view text{};                  ///< REJECT, BYE
    std::span<const std::byte> payload{};     ///< REQUEST, SEND, REPLY
    std::span<const hello_type> types{};      ///< HELLO
};

/// Appends frames to a buffer the caller reuses (clear() keeps its capacity, so a warm encoder
/// allocates nothing). A field over frame_limits raises usage_error naming it: encoding is
/// local, and a frame the peer would refuse is the sender's bug.
class MAILROOM_NET_EXPORT frame_writer {
public:
    explicit frame_writer(net::byte_buffer& out, frame_limits limits = {}) : out_(out), limits_(limits) {}

    /// Appends `f` (any kind but BATCH), its payload taken from f.payload.
    void write(const frame& f);

    /// Appends `f` with the payload encoded in place from `value` by its registered codec
    /// (f.type and f.payload are ignored: the registry gives the wire id).
    template <class T>
    void write(const frame& f, const net::type_registry& registry, const T& value) {
        const net::type_entry* e = registry.find<T>();
        if (!e) throw_unregistered(message_type_of<T>());
        frame g = f;
        g.type = e->id;
        write_with(g, [&](net::byte_buffer& out) { e->encode(&value, out); });
    }

    /// Appends `f` with its payload written in place by `encode(net::byte_buffer&)`, which
    /// appends it (f.payload is ignored; f.type is written as given).
    template <class F>
    void write_payload(const frame& f, F&& encode) {
        write_with(f, std::forward<F>(encode));
    }
    /// Appends a whole frame another writer encoded (header included), unchanged: how a queue
    /// of encoded frames is packed into a BATCH. usage_error if it is not one whole frame, or
    /// if it is a HELLO inside a BATCH or a BATCH.
    void write_encoded(std::span<const std::byte> encoded);

    /// Starts a BATCH: the frames written until end_batch() go inside it.
    void begin_batch();
    /// Closes the BATCH begun last (usage_error if it holds no frame).
    void end_batch();

private:
    template <class F>
    void write_with(const frame& f, F&& payload) {
        if (!carries_payload(f.kind)) throw_no_payload(f.kind);
        const std::size_t at = begin_frame(f);
        const std::size_t len_at = out_.size() - 4;  // begin_frame ends with the payload's length
        payload(out_);
        patch_payload(len_at);
        end_frame(at);
    }

    static bool carries_payload(frame_kind k) {
        return k == frame_kind::request || k == frame_kind::send || k == frame_kind::reply;
    }
    // Header and fields, and for a kind that carries a payload its length (0, patched later).
    std::size_t begin_frame(const frame& f);
    void end_frame(std::size_t at);           // patches the body length, counts in a batch
    void patch_payload(std::size_t len_at);
    [[noreturn]] static void throw_unregistered(message_type t);
    [[noreturn]] static void throw_no_payload(frame_kind k);

    net::byte_buffer& out_;
    frame_limits limits_;
    std::size_t batch_at_ = SIZE_MAX;  // where the open BATCH's header starts
    std::uint32_t batch_count_ = 0;
    std::size_t item_len_at_ = 0;
};

/// Decodes one ZeroMQ message into frames (one, or the frames of a BATCH), counting every
/// rejection under its reason. Never throws.
class MAILROOM_NET_EXPORT frame_decoder {
public:
    explicit frame_decoder(frame_limits limits = {}) : limits_(limits) {}

    /// Decodes `in`: none and frames() set, or the reason and nothing in frames(). A BATCH is
    /// all or nothing: one bad frame inside rejects the whole message.
    frame_error decode(std::span<const std::byte> in);

    /// The frames of the last accepted message (views into its bytes).
    std::span<const frame> frames() const noexcept { return frames_; }
    /// What was wrong with the last rejected message, for a log line.
    const std::string& detail() const noexcept { return detail_; }

    /// Decodes the payload of a REQUEST, SEND or REPLY into a new envelope; an unknown type or
    /// bytes that do not decode are counted as undecodable_payload.
    net::decode_result decode_payload(const net::type_registry& registry, const frame& f,
                                      const net::decode_limits& limits, envelope_ref& out);

    /// Messages rejected for `e` (for `none`: messages accepted).
    std::uint64_t count(frame_error e) const noexcept { return counts_[static_cast<std::size_t>(e)]; }
    /// Messages rejected, for any reason.
    std::uint64_t rejected() const noexcept;

private:
    frame_error fail(frame_error e, std::string_view why);
    frame_error decode_one(std::span<const std::byte> in, bool in_batch);

    frame_limits limits_;
    std::vector<frame> frames_;
    std::vector<hello_type> types_;
    std::string detail_;
    std::array<std::uint64_t, frame_error_count> counts_{};
};

}  // namespace mailroom::internal
