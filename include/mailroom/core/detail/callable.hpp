#pragma once
// Deducing a handler's message type from its signature, and calling it with a message's
// payload: shared by every layer that takes handlers (an agent's and a session's event objects,
// receive() and select() on mchains). Internal to the public templates; not for users.

#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>

#include <string>
#include <type_traits>
#include <utility>

namespace mailroom::internal {

template <class Sig>
struct handler_signature;

template <class R, class A>
struct handler_signature<R(A)> {
    using arg = A;
    using message = std::remove_cv_t<std::remove_reference_t<A>>;
    static constexpr bool has_arg = true;
};

template <class R>
struct handler_signature<R()> {
    using arg = void;
    using message = void;
    static constexpr bool has_arg = false;
};

template <class T>
struct callable_signature : callable_signature<decltype(&T::operator())> {};

template <class C, class R, class... A>
struct callable_signature<R (C::*)(A...)> : handler_signature<R(A...)> {};
template <class C, class R, class... A>
struct callable_signature<R (C::*)(A...) const> : handler_signature<R(A...)> {};
template <class C, class R, class... A>
struct callable_signature<R (C::*)(A...) noexcept> : handler_signature<R(A...)> {};
template <class C, class R, class... A>
struct callable_signature<R (C::*)(A...) const noexcept> : handler_signature<R(A...)> {};
template <class R, class... A>
struct callable_signature<R (*)(A...)> : handler_signature<R(A...)> {};

template <class PMF>
struct member_class;
template <class C, class R, class... A>
struct member_class<R (C::*)(A...)> {
    using type = C;
};
template <class C, class R, class... A>
struct member_class<R (C::*)(A...) const> {
    using type = C;
};
template <class C, class R, class... A>
struct member_class<R (C::*)(A...) noexcept> {
    using type = C;
};
template <class C, class R, class... A>
struct member_class<R (C::*)(A...) const noexcept> {
    using type = C;
};

/// Calls `f` with the payload of `e` as the signature asks: by const reference (shared), or by
/// value / rvalue reference (moved out when this receiver holds the only reference, copied
/// otherwise), or with nothing (signals, or when the payload is not wanted).
template <class Msg, class Arg, class F>
void call_with_payload(F& f, envelope* e) {
    if constexpr (std::is_void_v<Arg>) {
        f();
    } else if constexpr (is_signal_v<Msg>) {
        static const Msg instance{};
        f(instance);
    } else if constexpr (std::is_lvalue_reference_v<Arg>) {
        static_assert(std::is_const_v<std::remove_reference_t<Arg>>,
                      "a handler takes a message by const reference, by value or by rvalue reference: "
                      "a fanned-out message is shared and immutable");
        f(payload_of<Msg>(e));
    } else {
        if (e->exclusive()) {
            f(std::move(payload_of<Msg>(e)));
        } else if constexpr (std::is_copy_constructible_v<Msg>) {
            Msg copy(static_cast<const Msg&>(payload_of<Msg>(e)));
            f(std::move(copy));
        } else {
            throw usage_error(std::string("a move-only message of type ") + e->type().name() +
                              " reached a handler that takes it by value while it is shared by several receivers");
        }
    }
}

}  // namespace mailroom::internal
