#pragma once
// Template bodies of session.hpp: a posted call carries its callable inline in the demand (one
// allocation from the recycling pool per post), and callbacks of event objects are type-erased
// into a `handler`. Included at the end of session.hpp; included first, it brings session.hpp.

#include <mailroom/session/session.hpp>
#include <mailroom/core/pool.hpp>
#include <mailroom/dispatch/demand.hpp>

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailroom::internal {

/// A call posted to a serial context (a session or an agent). `execute`, `target` and `gen` are
/// filled in by post_to().
struct posted_call : demand {
    context_core* target = nullptr;
    std::uint32_t gen = 0;
    void (*call)(posted_call*) = nullptr;        // runs the callable (may throw)
    void (*drop)(posted_call*) noexcept = nullptr;  // destroys it and frees the block
};

template <class F>
struct posted_call_of final : posted_call {
    explicit posted_call_of(F&& f) : fn(std::move(f)) {
        call = [](posted_call* p) { static_cast<posted_call_of*>(p)->fn(); };
        drop = [](posted_call* p) noexcept {
            auto* self = static_cast<posted_call_of*>(p);
            self->~posted_call_of();
            pool_free_for<posted_call_of>(self);
        };
    }
    F fn;
};

/// Builds a posted call of `f` in a pool block.
template <class F>
posted_call* make_posted_call(F&& f) {
    using Fn = std::decay_t<F>;
    using call_t = posted_call_of<Fn>;
    void* block = pool_allocate_for<call_t>();
    try {
        return new (block) call_t(Fn(std::forward<F>(f)));
    } catch (...) {
        pool_free_for<call_t>(block);
        throw;
    }
}

/// The serial context whose callback this thread runs (a session's or an agent's), as a handle
/// names it; empty on other threads.
MAILROOM_EXPORT context_ref current_context_ref() noexcept;
/// The environment of a context's life (null once that life is over). The caller keeps the
/// environment alive meanwhile.
MAILROOM_EXPORT env_core* context_env(const context_ref& c) noexcept;
/// The name of the session or agent whose callback this thread runs ("" on other threads).
MAILROOM_EXPORT std::string current_context_name();

/// The one post path: queues `p` on the context's life `gen`, to run under its exception policy;
/// takes `p` over (drops it and returns false when that life is over). Any thread.
MAILROOM_EXPORT bool post_to(context_core* c, std::uint32_t gen, posted_call* p) noexcept;

/// Tests only: `hook(arg)` runs inside post_to() on the posting thread, right after it found
/// the session open and before it touches the session's environment (null: none). Set it
/// while no call is being posted.
MAILROOM_EXPORT void set_post_call_hook(void (*hook)(void*), void* arg) noexcept;
// `name` names the session or agent in errors (its handle's copy: the record may be reused).
/// Returns the timer (the handle's reference).
MAILROOM_EXPORT handle_target* add_timer(const context_ref& s, std::string_view name, std::chrono::nanoseconds delay,
                                         std::chrono::nanoseconds period, handler fn);
/// Returns the fd watcher (the handle's reference); `fn` is a watch_callback.
MAILROOM_EXPORT handle_target* add_fd_watch(const context_ref& s, std::string_view name, int fd, fd_events interest,
                                            fd_trigger trigger, handler fn);
/// A watcher's callback: `f(ready)` returns the next interest. The handler is given the
/// fd_call (as the envelope pointer every handler takes).
template <class F>
handler watch_callback(F&& f) {
    return handler([fn = std::decay_t<F>(std::forward<F>(f))](envelope* e) mutable {
        auto* call = reinterpret_cast<fd_call*>(e);
        call->next = fn(call->ready);
    });
}

/// What an inbox stops together with its callbacks (a named object's registry entry).
class inbox_stop_hook {
public:
    /// Runs on the thread that shuts the inbox down (its handle, its session's destroy, the
    /// environment's teardown), after the inbox refuses deliveries and before that shutdown
    /// waits for a running callback; possibly more than once, from several threads: it must be
    /// idempotent and thread-safe, and must not block on the session. Called under the
    /// session's lock when the session is destroyed.
    virtual void stop() noexcept = 0;

protected:
    ~inbox_stop_hook() = default;
};

/// Returns the object (the handle's reference) and fills `address`. `on_stop`, when set, is
/// held by the inbox and stopped with it (see inbox_stop_hook). `filter`, when set, is the
/// address's delivery filter from the first send on, closed with the inbox.
MAILROOM_EXPORT handle_target* add_inbox(const context_ref& s, std::string_view name, message_type type, handler fn,
                                         mbox& address, std::shared_ptr<inbox_stop_hook> on_stop = {},
                                         std::shared_ptr<const filter_predicate> filter = {});
/// Returns the object (the handle's reference), subscribed to `from` (filtered by `filter` from
/// the first publication on, when set; closed with the subscription; with a message limit of
/// its own when `limit` is set, declared before it joins the topic).
MAILROOM_EXPORT handle_target* add_subscription(const context_ref& s, std::string_view name, const mbox& from,
                                                message_type type, handler fn,
                                                std::shared_ptr<const filter_predicate> filter = {},
                                                std::shared_ptr<const limit_spec> limit = {});

/// The handlers of a subscription to an mchain, by message type (the first that takes a type wins).
using mchain_handlers = std::vector<std::pair<message_type, handler>>;
/// Returns the object (the handle's reference), listening to `from`.
MAILROOM_EXPORT handle_target* add_mchain_subscription(const context_ref& s, std::string_view name, const mchain& from,
                                                       mchain_handlers handlers);

/// A timer's callback (a session's or an agent's add_timer): `f()`.
template <class F>
handler timer_callback(F&& f) {
    return handler([fn = std::decay_t<F>(std::forward<F>(f))](envelope*) mutable { fn(); });
}

/// The callback of an inbox or a subscription of `Msg`s (a session's or an agent's): `f` takes
/// `Msg` by value, by `Msg&&` or by `const Msg&` (a move-only message is moved out).
template <class Msg, class F>
handler message_callback(F&& f) {
    static_assert(!std::is_reference_v<Msg> && !std::is_const_v<Msg>,
                  "add_inbox/subscribe<Msg>: Msg is the plain message type");
    using Fn = std::decay_t<F>;
    using sig = callable_signature<Fn>;
    static_assert(sig::has_arg, "an inbox or subscription callback takes the message");
    static_assert(std::is_same_v<typename sig::message, Msg>, "the callback must take the Msg it is added for");
    return handler(
        [fn = Fn(std::forward<F>(f))](envelope* e) mutable { call_with_payload<Msg, typename sig::arg>(fn, e); });
}

/// The handlers of a subscription to an mchain, each typed by its signature.
template <class... F>
mchain_handlers make_mchain_handlers(F&&... fs) {
    static_assert(sizeof...(F) > 0, "subscribe(chain, handlers...) needs at least one handler");
    mchain_handlers hs;
    hs.reserve(sizeof...(F));
    (hs.emplace_back(message_type_of<handler_message_t<F>>(),
                     message_callback<handler_message_t<F>>(std::forward<F>(fs))),
     ...);
    return hs;
}

}  // namespace mailroom::internal

namespace mailroom {

template <class F>
bool session::post(F&& f) {
    if (!ref_) return false;
    return internal::post_to(ref_.core, ref_.gen, internal::make_posted_call(std::forward<F>(f)));
}

inline void fd_watch_handle::move_to(const session& target) {
    if (!target_) return;
    *this = fd_watch_handle(internal::move_fd_watch(target_, target));
}

template <class F>
fd_watch_handle session::watch(int fd, fd_events interest, F&& f, fd_trigger trigger) {
    static_assert(std::is_invocable_r_v<fd_events, std::decay_t<F>&, fd_events>,
                  "watch: the callback takes fd_events (what is ready) and returns fd_events (the next interest)");
    if (!ref_) throw session_destroyed_error("watch: the session handle is empty");
    return fd_watch_handle(
        internal::add_fd_watch(ref_, name_, fd, interest, trigger, internal::watch_callback(std::forward<F>(f))));
}

template <class F>
event_handle session::add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f) {
    if (!ref_) throw session_destroyed_error("add_timer: the session handle is empty");
    return event_handle(internal::add_timer(ref_, name_, delay, period, internal::timer_callback(std::forward<F>(f))));
}

template <class Msg, class F>
inbox_handle session::add_inbox(F&& f) {
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    if (!ref_) throw session_destroyed_error("add_inbox: the session handle is empty");
    mbox address;
    internal::handle_target* o = internal::add_inbox(ref_, name_, message_type_of<Msg>(), std::move(h), address);
    return inbox_handle(o, std::move(address));
}

template <class... Handlers>
event_handle session::subscribe(const mchain& from, Handlers&&... handlers) {
    internal::mchain_handlers hs = internal::make_mchain_handlers(std::forward<Handlers>(handlers)...);
    if (!ref_) throw session_destroyed_error("subscribe: the session handle is empty");
    return event_handle(internal::add_mchain_subscription(ref_, name_, from, std::move(hs)));
}

template <class Msg, class F, class Reaction>
inbox_handle session::add_inbox(F&& f, limit_bounds bounds, Reaction reaction) {
    std::shared_ptr<const internal::limit_spec> spec = internal::make_limit<Msg>(bounds, std::move(reaction));
    inbox_handle in = add_inbox<Msg>(std::forward<F>(f));
    // Before the address leaves this function, so that no message reaches it unlimited; a
    // refusal destroys the inbox with the handle.
    internal::set_inbox_limit(in.address(), message_type_of<Msg>(), std::move(spec));
    return in;
}

template <class Msg, class F, class Reaction>
event_handle session::subscribe(const mbox& from, F&& f, limit_bounds bounds, Reaction reaction) {
    std::shared_ptr<const internal::limit_spec> spec = internal::make_limit<Msg>(bounds, std::move(reaction));
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    if (!ref_) throw session_destroyed_error("subscribe: the session handle is empty");
    return event_handle(
        internal::add_subscription(ref_, name_, from, message_type_of<Msg>(), std::move(h), {}, std::move(spec)));
}

template <class Msg, class F>
event_handle session::subscribe(const mbox& from, F&& f) {
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    if (!ref_) throw session_destroyed_error("subscribe: the session handle is empty");
    return event_handle(internal::add_subscription(ref_, name_, from, message_type_of<Msg>(), std::move(h)));
}

template <class Msg, class F, class P>
inbox_handle session::add_inbox(F&& f, P&& pred)
    requires delivery_predicate<const std::decay_t<P>, Msg>
{
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    auto filter = internal::make_filter_predicate<Msg>(std::forward<P>(pred));
    if (!ref_) throw session_destroyed_error("add_inbox: the session handle is empty");
    mbox address;
    internal::handle_target* o =
        internal::add_inbox(ref_, name_, message_type_of<Msg>(), std::move(h), address, {}, std::move(filter));
    return inbox_handle(o, std::move(address));
}

template <class Msg, class F, class P>
event_handle session::subscribe(const mbox& from, F&& f, P&& pred)
    requires delivery_predicate<const std::decay_t<P>, Msg>
{
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    auto filter = internal::make_filter_predicate<Msg>(std::forward<P>(pred));
    if (!ref_) throw session_destroyed_error("subscribe: the session handle is empty");
    return event_handle(
        internal::add_subscription(ref_, name_, from, message_type_of<Msg>(), std::move(h), std::move(filter)));
}

}  // namespace mailroom
