// The frame format: writer and decoder (see frame.hpp for the layout).

#include <mailroom/net/frame.hpp>

#include <bit>
#include <cstring>
#include <limits>

namespace mailroom::internal {

const char* to_string(frame_kind k) noexcept {
    switch (k) {
        case frame_kind::hello: return "HELLO";
        case frame_kind::heartbeat: return "HEARTBEAT";
        case frame_kind::request: return "REQUEST";
        case frame_kind::send: return "SEND";
        case frame_kind::reply: return "REPLY";
        case frame_kind::reject: return "REJECT";
        case frame_kind::batch: return "BATCH";
        case frame_kind::bye: return "BYE";
    }
    return "?";
}

const char* to_string(reject_reason r) noexcept {
    switch (r) {
        case reject_reason::no_such_object: return "no such object";
        case reject_reason::handler_rejected: return "handler rejected";
        case reject_reason::undecodable_type: return "undecodable type";
        case reject_reason::peer_limits: return "peer limits";
    }
    return "?";
}

const char* to_string(frame_error e) noexcept {
    switch (e) {
        case frame_error::none: return "none";
        case frame_error::truncated: return "truncated";
        case frame_error::oversized: return "oversized";
        case frame_error::unknown_kind: return "unknown kind";
        case frame_error::unknown_version: return "unknown version";
        case frame_error::bad_magic: return "bad magic";
        case frame_error::trailing_bytes: return "trailing bytes";
        case frame_error::malformed: return "malformed";
        case frame_error::undecodable_payload: return "undecodable payload";
    }
    return "?";
}

namespace {

constexpr std::byte magic0{'m'};
constexpr std::byte magic1{'r'};

bool known_kind(std::uint8_t k) noexcept { return k >= 1 && k <= 8; }
bool known_reason(std::uint8_t r) noexcept { return r >= 1 && r <= 4; }

// Little-endian integers: one load or store on a little-endian machine, bytes elsewhere.
template <class U>
U load_le(const std::byte* p) noexcept {
    U r = 0;
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&r, p, sizeof r);
    } else {
        for (std::size_t i = 0; i < sizeof(U); ++i)
            r = static_cast<U>(r | (static_cast<U>(std::to_integer<std::uint8_t>(p[i])) << (8 * i)));
    }
    return r;
}

template <class U>
void store_le(std::byte* p, U v) noexcept {
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(p, &v, sizeof v);
    } else {
        for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    }
}

// Grown by resize and written in place: an encoder that keeps its buffer's capacity does no
// range insert per field.
template <class U>
void put(net::byte_buffer& out, U v) {
    const std::size_t at = out.size();
    out.resize(at + sizeof(U));
    store_le(out.data() + at, v);
}

void put_bytes(net::byte_buffer& out, const void* data, std::size_t n) {
    const std::size_t at = out.size();
    out.resize(at + n);
    if (n) std::memcpy(out.data() + at, data, n);
}

template <class U>
void patch(net::byte_buffer& out, std::size_t at, U v) {
    store_le(out.data() + at, v);
}

// The header with a body length of 0, patched once the body is written.
void put_header(net::byte_buffer& out, frame_kind kind) {
    const std::size_t at = out.size();
    out.resize(at + frame_header_bytes);  // flags, reserved and the body length: zero
    out[at] = magic0;
    out[at + 1] = magic1;
    out[at + 2] = static_cast<std::byte>(frame_version);
    out[at + 3] = static_cast<std::byte>(kind);
}

// Reads fields from a span, each checked against the bytes that remain: a reader that runs out
// stays out (every later read fails), so a decoder checks once per field group.
class reader {
public:
    explicit reader(std::span<const std::byte> in) : in_(in) {}

    template <class U>
    bool get(U& v) {
        if (in_.size() - at_ < sizeof(U)) return short_ = true, false;
        v = load_le<U>(in_.data() + at_);
        at_ += sizeof(U);
        return true;
    }

    // A string of at most `max` bytes; a longer one is oversized (not read).
    bool str(std::string_view& s, std::size_t max) {
        std::uint16_t n = 0;
        if (!get(n)) return false;
        if (n > max) return over_ = true, false;
        if (in_.size() - at_ < n) return short_ = true, false;
        s = std::string_view(reinterpret_cast<const char*>(in_.data() + at_), n);
        at_ += n;
        return true;
    }

    bool bytes(std::span<const std::byte>& b) {
        std::uint32_t n = 0;
        if (!get(n)) return false;
        if (in_.size() - at_ < n) return short_ = true, false;
        b = in_.subspan(at_, n);
        at_ += n;
        return true;
    }

    std::size_t remaining() const noexcept { return in_.size() - at_; }
    bool short_read() const noexcept { return short_; }
    bool over() const noexcept { return over_; }

private:
    std::span<const std::byte> in_;
    std::size_t at_ = 0;
    bool short_ = false;
    bool over_ = false;
};

}  // namespace

// ---- writer

void frame_writer::throw_no_payload(frame_kind k) {
    throw usage_error(std::string("frame writer: a ") + to_string(k) + " carries no payload");
}

void frame_writer::throw_unregistered(message_type t) {
    throw usage_error(std::string("frame writer: type ") + t.name() + " is not registered");
}

std::size_t frame_writer::begin_frame(const frame& f) {
    auto check = [&](std::string_view s, std::size_t max, const char* field) {
        if (s.size() > max)
            throw usage_error(std::string("frame writer: ") + to_string(f.kind) + " " + field + " of " +
                              std::to_string(s.size()) + " bytes is over the limit of " + std::to_string(max));
    };
    if (f.kind == frame_kind::batch) throw usage_error("frame writer: a BATCH is written with begin_batch()");
    if (batch_at_ != SIZE_MAX && f.kind == frame_kind::hello)
        throw usage_error("frame writer: a HELLO cannot go inside a BATCH");
    // The fields' size first (each string checked against its limit), then one resize and the
    // fields written through a pointer: a frame per message costs one growth of the buffer,
    // not one per field.
    std::size_t n = frame_header_bytes;
    auto str_size = [&](std::string_view s, std::size_t max, const char* field) {
        check(s, max, field);
        n += 2 + s.size();
    };
    switch (f.kind) {
        case frame_kind::hello:
            if (f.types.size() > limits_.max_types)
                throw usage_error("frame writer: HELLO with " + std::to_string(f.types.size()) +
                                  " types is over the limit of " + std::to_string(limits_.max_types));
            str_size(f.node, limits_.max_name, "node name");
            n += 1 + 4;
            for (const hello_type& t : f.types) {
                n += 8;
                str_size(t.name, limits_.max_name, "type name");
            }
            break;
        case frame_kind::heartbeat: n += 8; break;
        case frame_kind::request:
            n += 8 + 4 + 8;
            str_size(f.source, limits_.max_name, "source");
            str_size(f.target, limits_.max_name, "target");
            break;
        case frame_kind::send:
            n += 8;
            str_size(f.source, limits_.max_name, "source");
            str_size(f.target, limits_.max_name, "target");
            str_size(f.reply_to, limits_.max_name, "reply-to");
            break;
        case frame_kind::reply: n += 8 + 8; break;
        case frame_kind::reject:
            n += 8 + 1;
            str_size(f.text, limits_.max_text, "reason text");
            break;
        case frame_kind::bye: str_size(f.text, limits_.max_text, "reason text"); break;
        case frame_kind::batch: break;
    }
    const bool payload = carries_payload(f.kind);
    if (payload) n += 4;
    const bool in_batch = batch_at_ != SIZE_MAX;
    if (in_batch) {
        item_len_at_ = out_.size();
        n += 4;
    }
    const std::size_t start = out_.size();
    out_.resize(start + n);
    std::byte* p = out_.data() + start;
    auto w = [&p](auto v) {
        store_le(p, v);
        p += sizeof v;
    };
    auto wstr = [&](std::string_view s) {
        w(static_cast<std::uint16_t>(s.size()));
        if (!s.empty()) std::memcpy(p, s.data(), s.size());
        p += s.size();
    };
    if (in_batch) w(std::uint32_t{0});  // the item's length, patched by end_frame
    const std::size_t at = static_cast<std::size_t>(p - out_.data());
    // The header with a body length of 0 (patched by end_frame): magic, version, kind, flags
    // and reserved, the body length.
    p[0] = magic0;
    p[1] = magic1;
    p[2] = static_cast<std::byte>(frame_version);
    p[3] = static_cast<std::byte>(f.kind);
    std::memset(p + 4, 0, frame_header_bytes - 4);
    p += frame_header_bytes;
    switch (f.kind) {
        case frame_kind::hello:
            wstr(f.node);
            w(f.protocol_version);
            w(static_cast<std::uint32_t>(f.types.size()));
            for (const hello_type& t : f.types) {
                w(t.id);
                wstr(t.name);
            }
            break;
        case frame_kind::heartbeat: w(f.sequence); break;
        case frame_kind::request:
            w(f.request_id);
            w(f.timeout_ms);
            w(f.type);
            wstr(f.source);
            wstr(f.target);
            break;
        case frame_kind::send:
            w(f.type);
            wstr(f.source);
            wstr(f.target);
            wstr(f.reply_to);
            break;
        case frame_kind::reply:
            w(f.request_id);
            w(f.type);
            break;
        case frame_kind::reject:
            w(f.request_id);
            w(static_cast<std::uint8_t>(f.reason));
            wstr(f.text);
            break;
        case frame_kind::bye: wstr(f.text); break;
        case frame_kind::batch: break;
    }
    if (payload) w(std::uint32_t{0});  // the payload's length, patched by patch_payload
    return at;
}

void frame_writer::patch_payload(std::size_t len_at) {
    const std::size_t n = out_.size() - len_at - 4;
    if (n > limits_.max_frame_bytes)
        throw usage_error("frame writer: payload of " + std::to_string(n) + " bytes is over the frame limit of " +
                          std::to_string(limits_.max_frame_bytes));
    patch<std::uint32_t>(out_, len_at, static_cast<std::uint32_t>(n));
}

void frame_writer::end_frame(std::size_t at) {
    const std::size_t body = out_.size() - at - frame_header_bytes;
    if (body + frame_header_bytes > limits_.max_frame_bytes)
        throw usage_error("frame writer: frame of " + std::to_string(body + frame_header_bytes) +
                          " bytes is over the limit of " + std::to_string(limits_.max_frame_bytes));
    patch<std::uint32_t>(out_, at + 8, static_cast<std::uint32_t>(body));
    if (batch_at_ != SIZE_MAX) {
        patch<std::uint32_t>(out_, item_len_at_, static_cast<std::uint32_t>(body + frame_header_bytes));
        ++batch_count_;
    }
}

void frame_writer::write(const frame& f) {
    const std::size_t at = begin_frame(f);
    switch (f.kind) {
        case frame_kind::request:
        case frame_kind::send:
        case frame_kind::reply: {
            const std::size_t len_at = out_.size() - 4;
            put_bytes(out_, f.payload.data(), f.payload.size());
            patch_payload(len_at);
            break;
        }
        default: break;
    }
    end_frame(at);
}

void frame_writer::write_encoded(std::span<const std::byte> encoded) {
    std::uint32_t body = 0;
    for (std::size_t i = 0; i < 4 && encoded.size() >= frame_header_bytes; ++i)
        body |= std::to_integer<std::uint32_t>(encoded[8 + i]) << (8 * i);
    if (encoded.size() < frame_header_bytes || encoded[0] != magic0 || encoded[1] != magic1 ||
        body != encoded.size() - frame_header_bytes)
        throw usage_error("frame writer: " + std::to_string(encoded.size()) + " bytes are not one whole frame");
    const auto kind = static_cast<frame_kind>(std::to_integer<std::uint8_t>(encoded[3]));
    if (kind == frame_kind::batch) throw usage_error("frame writer: a BATCH is written with begin_batch()");
    if (encoded.size() > limits_.max_frame_bytes)
        throw usage_error("frame writer: frame of " + std::to_string(encoded.size()) + " bytes is over the limit of " +
                          std::to_string(limits_.max_frame_bytes));
    if (batch_at_ != SIZE_MAX) {
        if (kind == frame_kind::hello) throw usage_error("frame writer: a HELLO cannot go inside a BATCH");
        put<std::uint32_t>(out_, static_cast<std::uint32_t>(encoded.size()));
        ++batch_count_;
    }
    put_bytes(out_, encoded.data(), encoded.size());
}

void frame_writer::begin_batch() {
    if (batch_at_ != SIZE_MAX) throw usage_error("frame writer: a BATCH cannot go inside a BATCH");
    batch_at_ = out_.size();
    batch_count_ = 0;
    put_header(out_, frame_kind::batch);
    put<std::uint32_t>(out_, 0);  // the count
}

void frame_writer::end_batch() {
    if (batch_at_ == SIZE_MAX) throw usage_error("frame writer: end_batch() without begin_batch()");
    const std::size_t at = std::exchange(batch_at_, SIZE_MAX);
    if (batch_count_ == 0) {
        out_.resize(at);
        throw usage_error("frame writer: a BATCH holds at least one frame");
    }
    if (batch_count_ > limits_.max_batch || out_.size() - at > limits_.max_frame_bytes) {
        out_.resize(at);
        throw usage_error("frame writer: a BATCH of " + std::to_string(batch_count_) + " frames is over the limits");
    }
    patch<std::uint32_t>(out_, at + 8, static_cast<std::uint32_t>(out_.size() - at - frame_header_bytes));
    patch<std::uint32_t>(out_, at + frame_header_bytes, batch_count_);
}

// ---- decoder

std::uint64_t frame_decoder::rejected() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 1; i < frame_error_count; ++i) n += counts_[i];
    return n;
}

frame_error frame_decoder::fail(frame_error e, std::string_view why) {
    detail_.assign(to_string(e));
    detail_.append(": ");
    detail_.append(why);
    return e;
}

frame_error frame_decoder::decode(std::span<const std::byte> in) {
    frames_.clear();
    types_.clear();
    detail_.clear();
    frame_error e = frame_error::none;
    if (in.size() > limits_.max_frame_bytes)
        e = fail(frame_error::oversized, "a message of " + std::to_string(in.size()) + " bytes");
    else
        e = decode_one(in, false);
    if (e != frame_error::none) {
        frames_.clear();
        types_.clear();
    } else if (!frames_.empty() && frames_.front().kind == frame_kind::hello) {
        // The table was built while frames_ could still grow; point the HELLO at it now.
        frames_.front().types = types_;
    }
    ++counts_[static_cast<std::size_t>(e)];
    return e;
}

frame_error frame_decoder::decode_one(std::span<const std::byte> in, bool in_batch) {
    if (in.size() >= 2 && (in[0] != magic0 || in[1] != magic1)) return fail(frame_error::bad_magic, "not \"mr\"");
    if (in.size() < frame_header_bytes)
        return fail(frame_error::truncated, std::to_string(in.size()) + " bytes, less than a header");
    reader h(in.first(frame_header_bytes));
    std::uint8_t m0 = 0, m1 = 0, version = 0, kind = 0;
    std::uint16_t flags = 0, reserved = 0;
    std::uint32_t body_len = 0;
    h.get(m0), h.get(m1), h.get(version), h.get(kind), h.get(flags), h.get(reserved), h.get(body_len);
    if (version != frame_version)
        return fail(frame_error::unknown_version, "version " + std::to_string(version));
    if (!known_kind(kind)) return fail(frame_error::unknown_kind, "kind " + std::to_string(kind));
    if (flags != 0 || reserved != 0) return fail(frame_error::malformed, "flags or reserved bits set");
    const std::size_t rest = in.size() - frame_header_bytes;
    if (body_len > limits_.max_frame_bytes - frame_header_bytes)
        return fail(frame_error::oversized, "a body of " + std::to_string(body_len) + " bytes");
    if (body_len > rest)
        return fail(frame_error::truncated,
                    "a body of " + std::to_string(body_len) + " bytes, " + std::to_string(rest) + " present");
    if (body_len < rest)
        return fail(frame_error::trailing_bytes, std::to_string(rest - body_len) + " bytes after the frame");

    reader r(in.subspan(frame_header_bytes));
    frame f;
    f.kind = static_cast<frame_kind>(kind);
    switch (f.kind) {
        case frame_kind::hello: {
            if (in_batch) return fail(frame_error::malformed, "a HELLO inside a BATCH");
            std::uint32_t n = 0;
            if (r.str(f.node, limits_.max_name) && r.get(f.protocol_version) && r.get(n)) {
                if (n > limits_.max_types)
                    return fail(frame_error::oversized, "a codec table of " + std::to_string(n) + " types");
                // Each entry takes at least 10 bytes: a count past that is cut short, and is
                // refused before anything is reserved for it.
                if (r.remaining() / 10 < n)
                    return fail(frame_error::truncated, "a codec table of " + std::to_string(n) + " types");
                types_.reserve(n);
                for (std::uint32_t i = 0; i < n; ++i) {
                    hello_type t;
                    if (!r.get(t.id) || !r.str(t.name, limits_.max_name)) break;
                    types_.push_back(t);
                }
            }
            break;
        }
        case frame_kind::heartbeat: r.get(f.sequence); break;
        case frame_kind::request:
            r.get(f.request_id) && r.get(f.timeout_ms) && r.get(f.type) && r.str(f.source, limits_.max_name) &&
                r.str(f.target, limits_.max_name) && r.bytes(f.payload);
            break;
        case frame_kind::send:
            r.get(f.type) && r.str(f.source, limits_.max_name) && r.str(f.target, limits_.max_name) &&
                r.str(f.reply_to, limits_.max_name) && r.bytes(f.payload);
            break;
        case frame_kind::reply: r.get(f.request_id) && r.get(f.type) && r.bytes(f.payload); break;
        case frame_kind::reject: {
            std::uint8_t reason = 0;
            if (r.get(f.request_id) && r.get(reason)) {
                if (!known_reason(reason)) return fail(frame_error::malformed, "reject reason " + std::to_string(reason));
                f.reason = static_cast<reject_reason>(reason);
                r.str(f.text, limits_.max_text);
            }
            break;
        }
        case frame_kind::bye: r.str(f.text, limits_.max_text); break;
        case frame_kind::batch: {
            if (in_batch) return fail(frame_error::malformed, "a BATCH inside a BATCH");
            std::uint32_t n = 0;
            if (!r.get(n)) break;
            if (n == 0) return fail(frame_error::malformed, "an empty BATCH");
            if (n > limits_.max_batch) return fail(frame_error::oversized, "a BATCH of " + std::to_string(n) + " frames");
            // Each item takes at least a length and a header.
            if (r.remaining() / (4 + frame_header_bytes) < n)
                return fail(frame_error::truncated, "a BATCH of " + std::to_string(n) + " frames");
            frames_.reserve(n);
            for (std::uint32_t i = 0; i < n; ++i) {
                std::span<const std::byte> item;
                if (!r.bytes(item)) break;
                const frame_error e = decode_one(item, true);
                if (e != frame_error::none) {
                    // "<reason>: frame <i> of a BATCH: <why>": the reason stays first.
                    detail_.insert(std::strlen(to_string(e)) + 2, "frame " + std::to_string(i) + " of a BATCH: ");
                    return e;
                }
            }
            if (r.over()) return fail(frame_error::oversized, "a field of a BATCH");
            if (r.short_read()) return fail(frame_error::truncated, "a BATCH cut short");
            if (r.remaining() != 0)
                return fail(frame_error::trailing_bytes, std::to_string(r.remaining()) + " bytes after a BATCH");
            return frame_error::none;
        }
    }
    if (r.over()) return fail(frame_error::oversized, std::string("a name or text of a ") + to_string(f.kind));
    if (r.short_read()) return fail(frame_error::truncated, std::string("a ") + to_string(f.kind) + " cut short");
    if (r.remaining() != 0)
        return fail(frame_error::trailing_bytes,
                    std::to_string(r.remaining()) + " bytes after the fields of a " + to_string(f.kind));
    frames_.push_back(f);
    return frame_error::none;
}

net::decode_result frame_decoder::decode_payload(const net::type_registry& registry, const frame& f,
                                                 const net::decode_limits& limits, envelope_ref& out) {
    net::decode_result r = registry.decode(f.type, f.payload, limits, out);
    if (!r) ++counts_[static_cast<std::size_t>(frame_error::undecodable_payload)];
    return r;
}

}  // namespace mailroom::internal
