#pragma once
// A type-erased message handler with inline storage (a lambda capturing `this`, or an object
// pointer with a member function pointer, fits without allocating), and the traits that deduce
// a handler's message type from its signature.

#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>

#include <cstddef>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

namespace mailroom::internal {

class handler {
public:
    handler() noexcept = default;

    template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, handler>>>
    explicit handler(F&& f) {
        using Fn = std::decay_t<F>;
        if constexpr (sizeof(Fn) <= sizeof(storage_) && alignof(Fn) <= alignof(void*) &&
                      std::is_nothrow_move_constructible_v<Fn>) {
            new (&storage_) Fn(std::forward<F>(f));
            invoke_ = [](void* s, envelope* e) { (*static_cast<Fn*>(s))(e); };
            manage_ = [](void* dst, void* src) noexcept {
                if (dst) new (dst) Fn(std::move(*static_cast<Fn*>(src)));
                static_cast<Fn*>(src)->~Fn();
            };
        } else {
            *reinterpret_cast<Fn**>(&storage_) = new Fn(std::forward<F>(f));
            invoke_ = [](void* s, envelope* e) { (**static_cast<Fn**>(s))(e); };
            manage_ = [](void* dst, void* src) noexcept {
                if (dst)
                    *static_cast<Fn**>(dst) = *static_cast<Fn**>(src);
                else
                    delete *static_cast<Fn**>(src);
            };
        }
    }

    handler(handler&& o) noexcept : invoke_(o.invoke_), manage_(o.manage_) {
        if (manage_) manage_(&storage_, &o.storage_);
        o.invoke_ = nullptr;
        o.manage_ = nullptr;
    }

    handler& operator=(handler&& o) noexcept {
        if (this != &o) {
            reset();
            invoke_ = o.invoke_;
            manage_ = o.manage_;
            if (manage_) manage_(&storage_, &o.storage_);
            o.invoke_ = nullptr;
            o.manage_ = nullptr;
        }
        return *this;
    }

    ~handler() { reset(); }

    void operator()(envelope* e) { invoke_(&storage_, e); }
    explicit operator bool() const noexcept { return invoke_ != nullptr; }

private:
    void reset() noexcept {
        if (manage_) manage_(nullptr, &storage_);
        invoke_ = nullptr;
        manage_ = nullptr;
    }

    // Pointer-aligned: a lambda capturing pointers, or an object pointer with a member function
    // pointer, fits; a type that needs more alignment is allocated.
    alignas(void*) unsigned char storage_[24];
    void (*invoke_)(void*, envelope*) = nullptr;
    void (*manage_)(void* dst, void* src) noexcept = nullptr;
};

// ---- deducing the message type from a handler's signature ----

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
