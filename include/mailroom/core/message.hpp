#pragma once
/// Message envelopes: any movable C++ type, or a signal that carries no payload.

#include <mailroom/core/pool.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <new>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace mailroom {

/// Base of payload-free messages: `struct tick final : mailroom::signal {};`. Sending one allocates nothing.
struct signal {};

template <class T>
inline constexpr bool is_signal_v = std::is_base_of_v<signal, T>;

/// Identity of a message type; compares by the type, cheap to copy.
class message_type {
public:
    constexpr message_type() noexcept = default;
    explicit constexpr message_type(const std::type_info& info) noexcept : info_(&info) {}

    /// The type's mangled name; for diagnostics.
    const char* name() const noexcept { return info_ ? info_->name() : "<none>"; }
    const std::type_info* info() const noexcept { return info_; }

    friend bool operator==(message_type a, message_type b) noexcept {
        return a.info_ == b.info_ || (a.info_ && b.info_ && *a.info_ == *b.info_);
    }

private:
    const std::type_info* info_ = nullptr;
};

/// The readable (demangled) name of a message type, for errors and logs.
MAILROOM_EXPORT std::string readable_name(message_type t);

template <class T>
message_type message_type_of() noexcept {
    return message_type(typeid(T));
}

namespace internal {

/// Header of every message in flight. Shared by reference count when fanned out; when exactly
/// one reference is left the receiver may move the payload out.
class envelope {
public:
    using destroy_fn = void (*)(envelope*) noexcept;

    envelope(message_type type, destroy_fn destroy, bool immortal, std::uint32_t bytes = 0) noexcept
        : bytes_(bytes), type_(type), destroy_(destroy), immortal_(immortal) {}
    envelope(const envelope&) = delete;
    envelope& operator=(const envelope&) = delete;

    message_type type() const noexcept { return type_; }

    /// What the message weighs for a byte limit (message limits): the payload's size, or what
    /// its `limit_bytes()` says; 0 for a signal. Fixed when the envelope is made.
    std::uint32_t bytes() const noexcept { return bytes_; }

    /// Adds `n` references (the publisher does this once per fan-out, not once per receiver).
    void add_refs(std::uint32_t n) noexcept {
        if (!immortal_) refs_.fetch_add(n, std::memory_order_relaxed);
    }

    /// Drops one reference; the last one destroys the payload and frees the block.
    void release() noexcept {
        if (immortal_) return;
        // A sole holder needs no atomic read-modify-write: nobody else can add a reference.
        if (refs_.load(std::memory_order_acquire) == 1 ||
            refs_.fetch_sub(1, std::memory_order_acq_rel) == 1)
            destroy_(this);
    }

    /// True when the caller holds the only reference, so the payload may be moved out.
    bool exclusive() const noexcept {
        return !immortal_ && refs_.load(std::memory_order_acquire) == 1;
    }

private:
    std::atomic<std::uint32_t> refs_{1};

protected:
    std::uint32_t bytes_;  // in what would be padding: the envelope is no larger for it

private:
    message_type type_;
    destroy_fn destroy_;
    bool immortal_;
};
static_assert(sizeof(envelope) <= 32, "the byte count of message limits must fit in the envelope's padding");

template <class T>
class typed_envelope final : public envelope {
public:
    template <class... Args>
    explicit typed_envelope(Args&&... args)
        : envelope(message_type_of<T>(), &destroy, false, static_cast<std::uint32_t>(sizeof(T))),
          value_(std::forward<Args>(args)...) {
        // A message that owns more than its object (a buffer, a string) may say what it weighs.
        if constexpr (requires(const T& v) { { v.limit_bytes() } -> std::convertible_to<std::size_t>; }) {
            const std::size_t b = static_cast<const T&>(value_).limit_bytes();
            bytes_ = b > UINT32_MAX ? UINT32_MAX : static_cast<std::uint32_t>(b);
        }
    }

    T& value() noexcept { return value_; }

private:
    static void destroy(envelope* e) noexcept {
        auto* self = static_cast<typed_envelope*>(e);
        self->~typed_envelope();
        pool_free_for<typed_envelope>(self);
    }

    T value_;
};

/// The one envelope of a signal type: immortal, so sending it allocates and counts nothing.
template <class S>
envelope* signal_envelope() noexcept {
    static envelope instance(message_type_of<S>(), nullptr, true);
    return &instance;
}

/// Builds an envelope holding a `T` constructed from `args` (or the signal's shared envelope).
template <class T, class... Args>
envelope* make_envelope(Args&&... args) {
    static_assert(std::is_move_constructible_v<T> || std::is_constructible_v<T, Args...>,
                  "a message must be constructible from the arguments given");
    if constexpr (is_signal_v<T>) {
        static_assert(sizeof...(Args) == 0, "a signal carries no payload");
        return signal_envelope<T>();
    } else {
        void* block = pool_allocate_for<typed_envelope<T>>();
        try {
            return new (block) typed_envelope<T>(std::forward<Args>(args)...);
        } catch (...) {
            pool_free_for<typed_envelope<T>>(block);
            throw;
        }
    }
}

template <class T>
T& payload_of(envelope* e) noexcept {
    return static_cast<typed_envelope<T>*>(e)->value();
}

/// Owns one reference to an envelope.
class envelope_ref {
public:
    envelope_ref() noexcept = default;
    explicit envelope_ref(envelope* e) noexcept : e_(e) {}
    envelope_ref(envelope_ref&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    envelope_ref& operator=(envelope_ref&& o) noexcept {
        if (this != &o) {
            reset();
            e_ = std::exchange(o.e_, nullptr);
        }
        return *this;
    }
    ~envelope_ref() { reset(); }

    envelope* get() const noexcept { return e_; }
    envelope* release() noexcept { return std::exchange(e_, nullptr); }
    void reset() noexcept {
        if (e_) std::exchange(e_, nullptr)->release();
    }

private:
    envelope* e_ = nullptr;
};

}  // namespace internal
}  // namespace mailroom
