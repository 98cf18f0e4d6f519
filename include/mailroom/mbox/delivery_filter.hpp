#pragma once
/// Delivery filters: a predicate per (subscriber, mbox, message type), run on the sender's
/// thread before anything is queued. A message the predicate refuses costs no demand and no
/// queue slot; it is counted sent, then ignored and filtered (environment_stats). The verbs
/// live on agents (agent::set_delivery_filter) and on sessions' subscriptions and inboxes (an
/// argument when they are made); docs/limits-and-filters.md says what holds.

#include <mailroom/core/message.hpp>

#include <concepts>
#include <memory>
#include <type_traits>
#include <utility>

namespace mailroom {

/// A predicate that may filter `Msg`s: called with `const Msg&`, returns something that
/// converts to bool (true: deliver).
template <class F, class Msg>
concept delivery_predicate = std::invocable<F&, const Msg&> &&
                             std::convertible_to<std::invoke_result_t<F&, const Msg&>, bool>;

namespace internal {

/// A type-erased predicate on one message type. Immutable once made; shared by the filter
/// sets that list it and destroyed with the last of them (by whoever replaced or dropped it).
class filter_predicate {
public:
    explicit filter_predicate(message_type t) noexcept : type_(t) {}
    virtual ~filter_predicate() = default;
    filter_predicate(const filter_predicate&) = delete;
    filter_predicate& operator=(const filter_predicate&) = delete;

    message_type type() const noexcept { return type_; }
    /// On a sender's thread, for a message of type(). May throw (the send counts it refused).
    virtual bool test(envelope* e) const = 0;

private:
    message_type type_;
};

template <class Msg, class F>
class filter_predicate_of final : public filter_predicate {
public:
    explicit filter_predicate_of(F f) : filter_predicate(message_type_of<Msg>()), fn_(std::move(f)) {}

    bool test(envelope* e) const override {
        if constexpr (is_signal_v<Msg>) {
            static const Msg instance{};
            return static_cast<bool>(fn_(instance));
        } else {
            return static_cast<bool>(fn_(static_cast<const Msg&>(payload_of<Msg>(e))));
        }
    }

private:
    // Called through a const predicate from several senders at once: like a handler's message,
    // what it captured is shared, so it is called as const.
    F fn_;
};

/// A predicate of `Msg`s built from `f` (a callable taking `const Msg&`).
template <class Msg, class F>
std::shared_ptr<const filter_predicate> make_filter_predicate(F&& f) {
    static_assert(!std::is_reference_v<Msg> && !std::is_const_v<Msg>, "a filter is given the plain message type");
    using Fn = std::decay_t<F>;
    static_assert(delivery_predicate<const Fn, Msg>,
                  "a delivery filter is callable (as const) with `const Msg&` and returns bool");
    return std::make_shared<const filter_predicate_of<Msg, Fn>>(Fn(std::forward<F>(f)));
}

}  // namespace internal
}  // namespace mailroom
