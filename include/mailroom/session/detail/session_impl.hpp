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

namespace mailroom::internal {

/// A call posted to a session. execute and `owner` are filled in by post_call().
struct posted_call : demand {
    session_impl* owner = nullptr;
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
            pool_free(self, sizeof(posted_call_of));
        };
    }
    F fn;
};

/// The session whose callback this thread is running, or null.
MAILROOM_EXPORT session_impl* current_session() noexcept;
/// Keeps a session's memory alive (not the session: it may still be destroyed meanwhile).
MAILROOM_EXPORT void session_add_ref(session_impl* s) noexcept;
MAILROOM_EXPORT void session_release(session_impl* s) noexcept;
/// The environment a session lives in.
MAILROOM_EXPORT env_core* session_env(session_impl* s) noexcept;
/// The name of the session or agent whose callback this thread runs ("" on other threads).
MAILROOM_EXPORT std::string current_context_name();

/// The agent whose handler this thread runs (its core and generation); null core elsewhere.
struct agent_ref {
    void* core = nullptr;
    std::uint32_t gen = 0;
};
MAILROOM_EXPORT agent_ref current_agent_ref() noexcept;
/// Runs `c` on the agent's context, under its exception policy, if it still exists then;
/// drops `c` otherwise (its destructor runs). Any thread; takes `c` over.
MAILROOM_EXPORT void post_to_agent(agent_ref a, posted_call* c) noexcept;

/// Queues `c` on the session; takes it over (drops it and returns false when destroyed).
MAILROOM_EXPORT bool post_call(session_impl* s, posted_call* c) noexcept;
/// Tests only: `hook(arg)` runs inside post_call() on the posting thread, right after it found
/// the session open and before it touches the session's environment (null: none). Set it
/// while no call is being posted.
MAILROOM_EXPORT void set_post_call_hook(void (*hook)(void*), void* arg) noexcept;
MAILROOM_EXPORT event_object* add_timer(session_impl* s, std::chrono::nanoseconds delay,
                                        std::chrono::nanoseconds period, handler fn);
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
/// held by the inbox and stopped with it (see inbox_stop_hook).
MAILROOM_EXPORT event_object* add_inbox(session_impl* s, message_type type, handler fn, mbox& address,
                                        std::shared_ptr<inbox_stop_hook> on_stop = {});
/// Returns the object (the handle's reference), subscribed to `from`.
MAILROOM_EXPORT event_object* add_subscription(session_impl* s, const mbox& from, message_type type, handler fn);

}  // namespace mailroom::internal

namespace mailroom {

template <class F>
bool session::post(F&& f) {
    using Fn = std::decay_t<F>;
    using call_t = internal::posted_call_of<Fn>;
    if (!impl_) return false;
    void* block = internal::pool_allocate(sizeof(call_t));
    call_t* c;
    try {
        c = new (block) call_t(Fn(std::forward<F>(f)));
    } catch (...) {
        internal::pool_free(block, sizeof(call_t));
        throw;
    }
    return internal::post_call(impl_, c);
}

template <class F>
event_handle session::add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f) {
    if (!impl_) throw session_destroyed_error("add_timer: the session handle is empty");
    return event_handle(internal::add_timer(
        impl_, delay, period, internal::handler([fn = std::decay_t<F>(std::forward<F>(f))](internal::envelope*) mutable {
            fn();
        })));
}

template <class Msg, class F>
inbox_handle session::add_inbox(F&& f) {
    static_assert(!std::is_reference_v<Msg> && !std::is_const_v<Msg>, "add_inbox<Msg>: Msg is the plain message type");
    using Fn = std::decay_t<F>;
    using sig = internal::callable_signature<Fn>;
    static_assert(sig::has_arg, "an inbox callback takes the message");
    static_assert(std::is_same_v<typename sig::message, Msg>, "the inbox callback must take the inbox's Msg");
    if (!impl_) throw session_destroyed_error("add_inbox: the session handle is empty");
    mbox address;
    internal::event_object* o = internal::add_inbox(
        impl_, message_type_of<Msg>(),
        internal::handler([fn = Fn(std::forward<F>(f))](internal::envelope* e) mutable {
            internal::call_with_payload<Msg, typename sig::arg>(fn, e);
        }),
        address);
    return inbox_handle(o, std::move(address));
}

template <class Msg, class F>
event_handle session::subscribe(const mbox& from, F&& f) {
    static_assert(!std::is_reference_v<Msg> && !std::is_const_v<Msg>, "subscribe<Msg>: Msg is the plain message type");
    using Fn = std::decay_t<F>;
    using sig = internal::callable_signature<Fn>;
    static_assert(sig::has_arg, "a subscription callback takes the message");
    static_assert(std::is_same_v<typename sig::message, Msg>, "the subscription callback must take the subscribed Msg");
    if (!impl_) throw session_destroyed_error("subscribe: the session handle is empty");
    return event_handle(internal::add_subscription(
        impl_, from, message_type_of<Msg>(),
        internal::handler([fn = Fn(std::forward<F>(f))](internal::envelope* e) mutable {
            internal::call_with_payload<Msg, typename sig::arg>(fn, e);
        })));
}

}  // namespace mailroom
