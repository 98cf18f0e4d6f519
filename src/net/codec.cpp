// Codecs: the bounded msgpack unpack, raw bytes, and the type registry.

#include <mailroom/net/codec.hpp>
#include <mailroom/named/named.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <typeindex>
#include <unordered_map>

namespace mailroom::net {

const char* to_string(decode_status s) noexcept {
    switch (s) {
        case decode_status::ok: return "ok";
        case decode_status::malformed: return "malformed";
        case decode_status::limit_exceeded: return "limit_exceeded";
        case decode_status::trailing_bytes: return "trailing_bytes";
        case decode_status::type_mismatch: return "type_mismatch";
        case decode_status::unknown_type: return "unknown_type";
    }
    return "?";
}

namespace detail {

namespace {

// The limits of one unpack: every element of an array takes at least one byte, every pair of a
// map two, and a string, binary or extension no more than the payload, so capping the counts
// by the payload's size bounds what the unpacker reserves by what the peer actually sent
// (msgpack-c #1013).
struct limit_key {
    std::size_t array, map, str, bin, ext, depth;
    bool operator==(const limit_key&) const = default;

    msgpack::unpack_limit unpack_limit() const { return msgpack::unpack_limit(array, map, str, bin, ext, depth); }
};

limit_key limits_for(std::size_t n, const decode_limits& limits) {
    return {std::min(limits.max_array, n), std::min(limits.max_map, n / 2), std::min(limits.max_str, n),
            std::min(limits.max_bin, n),   std::min(limits.max_ext, n),     limits.max_depth};
}

// The checks every unpack makes: the payload's size against the limit, then `unpack(data, n,
// offset, key)` (key: the limits for this payload) with msgpack's exceptions mapped to a status,
// then no bytes after the value.
template <class Unpack>
decode_result bounded_unpack(std::span<const std::byte> in, const decode_limits& limits, Unpack&& unpack) {
    if (in.size() > limits.max_bytes)
        return decode_result::failure(decode_status::limit_exceeded,
                                      "payload of " + std::to_string(in.size()) + " bytes over the limit of " +
                                          std::to_string(limits.max_bytes));
    if (in.empty()) return decode_result::failure(decode_status::malformed, "empty payload");
    const std::size_t n = in.size();
    std::size_t offset = 0;
    try {
        unpack(reinterpret_cast<const char*>(in.data()), n, offset, limits_for(n, limits));
    } catch (const msgpack::size_overflow& e) {
        return decode_result::failure(decode_status::limit_exceeded, e.what());
    } catch (const msgpack::insufficient_bytes& e) {
        return decode_result::failure(decode_status::malformed, std::string("cut short: ") + e.what());
    } catch (const std::bad_alloc&) {
        return decode_result::failure(decode_status::limit_exceeded, "out of memory while unpacking");
    } catch (const std::exception& e) {
        return decode_result::failure(decode_status::malformed, e.what());
    }
    if (offset != n)
        return decode_result::failure(decode_status::trailing_bytes,
                                      std::to_string(n - offset) + " bytes after the value");
    return {};
}

// msgpack's unpack() makes a visitor and a parser per call, each with a stack on the heap: two
// allocations and two frees per message. A thread keeps a few of each instead, one per set of
// limits (a visitor's limits are fixed when it is made, and limits_for depends on the payload's
// size), reused while a stream repeats its sizes, as most do; another size replaces the
// oldest. Every use starts from init(), so one that threw mid-value leaves nothing behind.
using object_visitor = msgpack::v2::detail::create_object_visitor;
using object_parser = msgpack::v2::detail::parse_helper<object_visitor>;

struct kept_parser {
    limit_key key;
    object_visitor visitor;
    object_parser parser;

    explicit kept_parser(const limit_key& k)
        : key(k),
          visitor(nullptr, nullptr, k.unpack_limit()),
          parser(visitor) {}
};

kept_parser& parser_for(const limit_key& k) {
    constexpr std::size_t kept = 8;
    thread_local std::unique_ptr<kept_parser> parsers[kept];
    thread_local std::size_t next = 0;
    for (auto& p : parsers)
        if (p && p->key == k) return *p;
    auto& slot = parsers[next];
    next = (next + 1) % kept;
    slot = std::make_unique<kept_parser>(k);
    return *slot;
}

}  // namespace

decode_result msgpack_unpack_into(std::span<const std::byte> in, const decode_limits& limits,
                                  void (*convert)(const msgpack::object& from, void* to), void* out) {
    // Every message a node receives is unpacked here: into a zone of this thread that keeps its
    // first chunk between messages (cleared after each), instead of a new zone (an 8 KiB
    // allocation) per message. The object lives only until it is converted.
    thread_local msgpack::zone zone;
    struct clear_after {
        ~clear_after() { zone.clear(); }
    } clear;
    msgpack::object obj;
    decode_result r = bounded_unpack(in, limits, [&](const char* data, std::size_t n, std::size_t& offset,
                                                     const limit_key& key) {
        // What msgpack::unpack(zone, ...) does, with this thread's parser for these limits.
        kept_parser& p = parser_for(key);
        p.parser.init();
        p.visitor.set_zone(zone);
        p.visitor.set_referenced(false);
        std::size_t noff = offset;
        const msgpack::parse_return ret = p.parser.execute(data, n, noff);
        if (ret == msgpack::PARSE_CONTINUE) p.visitor.insufficient_bytes(noff - 1, noff);  // throws
        if (ret == msgpack::PARSE_SUCCESS || ret == msgpack::PARSE_EXTRA_BYTES) offset = noff;
        obj = p.visitor.data();
    });
    if (!r) return r;
    try {
        convert(obj, out);
    } catch (const std::exception& e) {
        return decode_result::failure(decode_status::type_mismatch, e.what());
    }
    return {};
}

decode_result msgpack_unpack(std::span<const std::byte> in, const decode_limits& limits,
                             msgpack::object_handle& out) {
    return bounded_unpack(in, limits, [&](const char* data, std::size_t n, std::size_t& offset,
                                          const limit_key& key) {
        out = msgpack::unpack(data, n, offset, nullptr, nullptr, key.unpack_limit());
    });
}

decode_result raw_decode(std::span<const std::byte> in, raw_bytes& out, const decode_limits& limits) {
    if (in.size() > limits.max_bin)
        return decode_result::failure(decode_status::limit_exceeded,
                                      "raw payload of " + std::to_string(in.size()) + " bytes over the limit of " +
                                          std::to_string(limits.max_bin));
    out.bytes.assign(in.begin(), in.end());
    return {};
}

}  // namespace detail

namespace {

std::string describe(const type_entry& e) {
    char id[24];
    std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(e.id));
    return "'" + e.name + "' (" + e.type.name() + ", wire id 0x" + id + ")";
}

}  // namespace

struct type_registry::impl {
    // Entries live in a list of stable addresses: find() hands out pointers.
    std::vector<std::unique_ptr<type_entry>> owned;
    std::vector<const type_entry*> order;
    std::unordered_map<wire_id, const type_entry*> by_id;
    std::unordered_map<std::string_view, const type_entry*> by_name;
    std::unordered_map<std::type_index, const type_entry*> by_type;
};

type_registry::type_registry() : impl_(std::make_unique<impl>()) {}
type_registry::~type_registry() = default;
type_registry::type_registry(type_registry&&) noexcept = default;
type_registry& type_registry::operator=(type_registry&&) noexcept = default;

void type_registry::add(type_entry entry) {
    if (!impl_) throw usage_error("type registry: used after it was moved from");
    check_name(entry.name);
    if (entry.id == 0) throw usage_error("type registry: wire id 0 of '" + entry.name + "' is reserved");
    if (!entry.type.info() || !entry.encode || !entry.decode)
        throw usage_error("type registry: '" + entry.name + "' has no type or codec");
    auto clash = [&](const type_entry* old, const char* what) {
        throw duplicate_type_error("type registry: " + describe(entry) + " cannot be registered: its " + what +
                                   " is already taken by " + describe(*old));
    };
    if (auto it = impl_->by_id.find(entry.id); it != impl_->by_id.end()) clash(it->second, "wire id");
    if (auto it = impl_->by_name.find(entry.name); it != impl_->by_name.end()) clash(it->second, "name");
    if (auto it = impl_->by_type.find(std::type_index(*entry.type.info())); it != impl_->by_type.end())
        clash(it->second, "C++ type");
    impl_->owned.reserve(impl_->owned.size() + 1);
    impl_->order.reserve(impl_->order.size() + 1);
    auto owned = std::make_unique<type_entry>(std::move(entry));
    const type_entry* e = owned.get();
    impl_->by_id.emplace(e->id, e);
    try {
        impl_->by_name.emplace(std::string_view(e->name), e);
        impl_->by_type.emplace(std::type_index(*e->type.info()), e);
    } catch (...) {
        impl_->by_id.erase(e->id);
        impl_->by_name.erase(std::string_view(e->name));
        throw;
    }
    impl_->owned.push_back(std::move(owned));
    impl_->order.push_back(e);
}

const type_entry* type_registry::find(wire_id id) const noexcept {
    if (!impl_) return nullptr;
    auto it = impl_->by_id.find(id);
    return it == impl_->by_id.end() ? nullptr : it->second;
}

const type_entry* type_registry::find(message_type type) const noexcept {
    if (!impl_ || !type.info()) return nullptr;
    // Every message a node sends is looked up here: a registry of a few types is scanned by
    // type_info address first (one compare each), which saves hashing a mangled type name; the
    // same type seen through another type_info object (another shared library) falls through
    // to the map.
    if (impl_->order.size() <= 16)
        for (const type_entry* e : impl_->order)
            if (e->type.info() == type.info()) return e;
    auto it = impl_->by_type.find(std::type_index(*type.info()));
    return it == impl_->by_type.end() ? nullptr : it->second;
}

std::span<const type_entry* const> type_registry::entries() const noexcept {
    if (!impl_) return {};
    return impl_->order;
}

const type_entry* type_registry::entry_of(message_type type) const {
    const type_entry* e = find(type);
    if (!e) throw usage_error(std::string("type registry: type ") + type.name() + " is not registered");
    return e;
}

decode_result type_registry::decode(wire_id id, std::span<const std::byte> in, const decode_limits& limits,
                                    internal::envelope_ref& out) const {
    const type_entry* e = find(id);
    if (!e) {
        char hex[24];
        std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(id));
        return decode_result::failure(decode_status::unknown_type, std::string("no type of wire id 0x") + hex);
    }
    return e->decode(in, limits, out);
}

}  // namespace mailroom::net
