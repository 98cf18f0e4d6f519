#pragma once
// Template bodies of <mailroom/net/codec.hpp>: the type-erased functions of a registered type.
// Included at the end of codec.hpp; included first, it brings codec.hpp.

#include <mailroom/net/codec.hpp>

#include <new>
#include <string>
#include <utility>

namespace mailroom::net {
namespace detail {

template <class T>
void erased_encode(const void* value, byte_buffer& out) {
    codec<T>::encode(*static_cast<const T*>(value), out);
}

template <class T>
void erased_encode_envelope(const internal::envelope* e, byte_buffer& out) {
    if constexpr (is_signal_v<T>) {
        (void)e;
        (void)out;  // a signal's envelope is shared and carries nothing
    } else {
        codec<T>::encode(internal::payload_of<T>(const_cast<internal::envelope*>(e)), out);
    }
}

template <class T>
decode_result erased_decode(std::span<const std::byte> in, const decode_limits& limits,
                            internal::envelope_ref& out) {
    if constexpr (is_signal_v<T>) {
        if (!in.empty()) return decode_result::failure(decode_status::trailing_bytes, "a signal carries no payload");
        out = internal::envelope_ref(internal::make_envelope<T>());
        return {};
    } else {
        static_assert(std::is_default_constructible_v<T>,
                      "a message type that crosses the wire must be default-constructible (it is decoded into)");
        internal::envelope_ref e;
        try {
            e = internal::envelope_ref(internal::make_envelope<T>());
        } catch (const std::bad_alloc&) {
            return decode_result::failure(decode_status::limit_exceeded, "out of memory for the message");
        } catch (...) {
            return decode_result::failure(decode_status::malformed, "the message's constructor threw");
        }
        decode_result r = net::decode<T>(in, internal::payload_of<T>(e.get()), limits);
        if (r) out = std::move(e);
        return r;
    }
}

}  // namespace detail

template <class T>
wire_id register_type(type_registry& registry, std::string_view name, wire_id id) {
    static_assert(std::is_same_v<T, std::remove_cvref_t<T>>, "register the plain type");
    type_entry e;
    e.id = id;
    e.name = std::string(name);
    e.type = message_type_of<T>();
    e.encode = &detail::erased_encode<T>;
    e.encode_envelope = &detail::erased_encode_envelope<T>;
    e.decode = &detail::erased_decode<T>;
    registry.add(std::move(e));
    return id;
}

template <class T>
wire_id register_type(type_registry& registry, std::string_view name) {
    return register_type<T>(registry, name, wire_id_of(name));
}

}  // namespace mailroom::net
