#pragma once
/// Message limits: how many messages of a type (and optionally how many bytes) may wait in a
/// receiver's queue, and what becomes of one more: dropped, redirected, transformed, or the
/// process aborted. Declared on an agent (agent::limit) or a session (session::limit); see
/// docs/limits-and-filters.md.

#include <mailroom/core/message.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/export.hpp>

#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace mailroom {

/// The message type a default limit is declared for: every type that has no limit of its own
/// (SObjectizer's any_unspecified_message). Those types share the one count.
struct any_other_message final {};

/// What becomes of a message that finds its limit full.
enum class limit_reaction : std::uint8_t {
    drop,       ///< dropped and counted (environment_stats::messages_dropped)
    abort,      ///< the process aborts with a message naming the receiver and the type
    redirect,   ///< sent on to another mbox instead
    transform,  ///< replaced by another message, sent to the mbox the transform names
};

/// How much may wait: messages, and optionally bytes (each message weighs its envelope's
/// bytes(): the payload's size, or what its `limit_bytes()` says).
struct limit_bounds {
    std::uint64_t messages = std::numeric_limits<std::uint64_t>::max();
    std::uint64_t bytes = std::numeric_limits<std::uint64_t>::max();
};

/// The message a transform makes: where it goes and what it is. Empty: the original is dropped
/// (and counted).
class MAILROOM_EXPORT transformed {
public:
    transformed() noexcept = default;
    /// A `T` built from `args`, for `to`.
    template <class T, class... Args>
    static transformed make(mbox to, Args&&... args) {
        transformed t;
        t.to_ = std::move(to);
        t.msg_ = internal::envelope_ref(internal::make_envelope<T>(std::forward<Args>(args)...));
        return t;
    }
    explicit operator bool() const noexcept { return static_cast<bool>(to_) && msg_.get(); }

    const mbox& to() const noexcept { return to_; }
    internal::envelope* release() noexcept { return msg_.release(); }

private:
    mbox to_;
    internal::envelope_ref msg_;
};

/// What a limit counted for one message type of one receiver (limit_stats_of). The counts
/// start with the receiver's life.
struct limit_stats {
    message_type type{};       ///< any_other_message for the default limit
    bool inbox = false;        ///< one inbox's or subscription's own limit (a session's, given when made)
    limit_bounds bounds{};
    limit_reaction reaction = limit_reaction::drop;
    std::uint64_t queued = 0;        ///< waiting now (taken out when their handling begins)
    std::uint64_t queued_bytes = 0;  ///< what they weigh
    std::uint64_t dropped = 0;       ///< by the drop reaction, by a timer's send, or past the redirect depth
    std::uint64_t redirected = 0;
    std::uint64_t transformed = 0;
    std::uint64_t aborted = 0;       ///< seen only by a log_then_abort callback: the process ends after it
};

namespace internal {

/// A limit as the mbox layer keeps it; made by the templates below.
struct limit_spec {
    limit_bounds bounds{};
    limit_reaction reaction = limit_reaction::drop;
    mbox to{};                                               // redirect
    std::function<transformed(envelope*)> transform{};       // transform
    std::function<void(envelope*)> log{};                    // log_then_abort (may be empty)
};

template <class Msg, class F>
decltype(auto) call_on_payload(F& f, envelope* e) {
    if constexpr (std::is_same_v<Msg, any_other_message>) {
        static_assert(std::is_invocable_v<F&>, "a callback of a default limit takes no argument");
        return f();
    } else if constexpr (is_signal_v<Msg>) {
        static const Msg instance{};
        if constexpr (std::is_invocable_v<F&, const Msg&>) return f(instance);
        else return f();
    } else {
        static_assert(std::is_invocable_v<F&, const Msg&>, "the callback takes the message as const Msg&");
        return f(static_cast<const Msg&>(payload_of<Msg>(e)));
    }
}

}  // namespace internal

/// Reaction: drop the message (counted).
struct limit_drop_t {};
inline constexpr limit_drop_t limit_drop{};
/// Reaction: abort the process, logging the receiver, the type and the limit.
struct limit_abort_t {};
inline constexpr limit_abort_t limit_abort{};

/// Reaction: send the message on to `to` instead (on the sender's thread).
struct limit_redirect {
    mbox to;
};
/// Reaction: call `f(const Msg&)` (on the sender's thread); it returns the transformed message
/// to send instead (transformed::make<T>(to, ...)), or an empty one to drop it.
template <class F>
struct limit_transform {
    F f;
};
template <class F>
limit_transform(F) -> limit_transform<F>;
/// Reaction: call `f(const Msg&)` (on the sender's thread) to log what it wants, then abort.
template <class F>
struct limit_log_then_abort {
    F f;
};
template <class F>
limit_log_then_abort(F) -> limit_log_then_abort<F>;

namespace internal {

template <class Msg>
limit_spec make_limit_spec(limit_bounds b, limit_drop_t) {
    return limit_spec{b, limit_reaction::drop, {}, {}, {}};
}
template <class Msg>
limit_spec make_limit_spec(limit_bounds b, limit_abort_t) {
    return limit_spec{b, limit_reaction::abort, {}, {}, {}};
}
template <class Msg>
limit_spec make_limit_spec(limit_bounds b, limit_redirect r) {
    return limit_spec{b, limit_reaction::redirect, std::move(r.to), {}, {}};
}
template <class Msg, class F>
limit_spec make_limit_spec(limit_bounds b, limit_transform<F> t) {
    static_assert(!std::is_same_v<Msg, any_other_message>,
                  "a default limit cannot transform: the type of the message is not known");
    return limit_spec{b, limit_reaction::transform, {},
                      [f = std::move(t.f)](envelope* e) mutable -> transformed {
                          return call_on_payload<Msg>(f, e);
                      },
                      {}};
}
template <class Msg, class F>
limit_spec make_limit_spec(limit_bounds b, limit_log_then_abort<F> l) {
    return limit_spec{b, limit_reaction::abort, {}, {},
                      [f = std::move(l.f)](envelope* e) mutable { call_on_payload<Msg>(f, e); }};
}

/// The limit `limit<Msg>(bounds, reaction)` declares, as agents and sessions keep it.
template <class Msg, class Reaction>
std::shared_ptr<const limit_spec> make_limit(limit_bounds bounds, Reaction reaction) {
    return std::make_shared<const limit_spec>(make_limit_spec<Msg>(bounds, std::move(reaction)));
}

}  // namespace internal

}  // namespace mailroom
