#pragma once
// A type-erased message handler with inline storage (a lambda capturing `this`, or an object
// pointer with a member function pointer, fits without allocating). The traits that deduce a
// handler's message type from its signature are in core/detail/callable.hpp.

#include <mailroom/core/detail/callable.hpp>
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

}  // namespace mailroom::internal
