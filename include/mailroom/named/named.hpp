#pragma once
/// Named objects and requests (YAMI4's routing, with MME's shutdown): a name in the
/// environment's registry maps to a handler that runs on a session; messages to it carry a
/// header; a request returns an outgoing handle whose state moves posted -> transmitted ->
/// replied, rejected or abandoned, and can be waited for, called back, turned into a future
/// or co_awaited inside a session's callback. See docs/named-objects.md.

#include <mailroom/agent/agent.hpp>
#include <mailroom/session/session.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace mailroom {

/// A name is empty, too long, uses characters outside [A-Za-z0-9._:/-], or is `*` where a
/// plain name is needed. (A name that is taken raises duplicate_name_error.)
class MAILROOM_EXPORT invalid_name_error final : public error {
public:
    using error::error;
};

/// A one-way message found no object of that name and no `*`: it was rejected (and counted).
class MAILROOM_EXPORT no_such_object_error final : public error {
public:
    using error::error;
};

/// outgoing::wait() was called on a worker thread of the environment that would have to answer
/// the request: it could wait for itself (the answering session may share the thread), and
/// the environment could not stop. Use then() or co_await there.
class MAILROOM_EXPORT would_deadlock_error final : public error {
public:
    using error::error;
};

/// The longest name the registry accepts.
inline constexpr std::size_t max_name_length = 255;

/// Raises invalid_name_error naming `name` unless it is a valid name (`*` allowed when
/// `allow_any`).
MAILROOM_EXPORT void check_name(std::string_view name, bool allow_any = false);

/// What every message to a named object carries.
struct message_header {
    std::string source;       ///< the sender: its session's or agent's name, or send_options::source
    std::string destination;  ///< the name it was sent to (also when `*` received it)
    std::uint64_t id = 0;     ///< unique in the environment; a request's id
    std::string reply_to;     ///< where the sender wants answers to a one-way message ("" if none)
    bool request = false;     ///< a tracked request: the handler answers with reply() or reject()
};

/// Where a request is. The last three are final.
enum class request_state : std::uint8_t {
    posted,       ///< handed to the registry
    transmitted,  ///< accepted by the destination's queue
    replied,      ///< the handler replied
    rejected,     ///< the handler rejected it, or no object matched
    abandoned,    ///< the destination went away, the environment stopped, it timed out or was cancelled
};
MAILROOM_EXPORT const char* to_string(request_state s) noexcept;

/// A request was rejected or abandoned (from outgoing::reply() and futures).
class MAILROOM_EXPORT request_failed_error final : public error {
public:
    request_failed_error(request_state state, const std::string& what) : error(what), state_(state) {}
    request_state state() const noexcept { return state_; }

private:
    request_state state_;
};

namespace internal {
class request_core;
struct named_delivery;
MAILROOM_EXPORT request_core* new_request(environment& env, message_type reply_type,
                                          std::chrono::nanoseconds timeout);
MAILROOM_EXPORT void request_add_ref(request_core* r) noexcept;
MAILROOM_EXPORT void request_release(request_core* r) noexcept;
MAILROOM_EXPORT request_state request_get_state(const request_core* r) noexcept;
MAILROOM_EXPORT std::uint64_t request_id(const request_core* r) noexcept;
MAILROOM_EXPORT std::string request_reason(const request_core* r);
MAILROOM_EXPORT envelope* request_reply(const request_core* r) noexcept;
/// Raises would_deadlock_error when it would block (not final, a non-zero timeout) on a worker
/// thread running a callback of the request's environment.
MAILROOM_EXPORT bool request_wait(const request_core* r, std::int64_t timeout_ns);
MAILROOM_EXPORT bool request_cancel(request_core* r) noexcept;
/// Runs `fn(arg)` once the request is final: at once when it is, else on the finishing
/// thread. One continuation per request (usage_error otherwise).
MAILROOM_EXPORT void request_continue(request_core* r, void (*fn)(void*) noexcept, void* arg);
/// A callback on `s` when the request is final, unless cancelled first (see outgoing::then).
MAILROOM_EXPORT void request_then(request_core* r, const context_ref& s, handler fn);
/// Resumes `h` on the session or agent whose callback is running now (usage_error outside one).
MAILROOM_EXPORT void request_resume_here(request_core* r, std::coroutine_handle<> h);
/// Sends a request or one-way message; takes `body` over.
MAILROOM_EXPORT void send_named(environment& env, std::string_view name, envelope* body, request_core* r,
                                std::string source, std::string reply_to, bool wait_for_peer = false);
}  // namespace internal

/// Options of a send or request to a named object. Views, copied by the call: the options are
/// trivially destructible, so `co_await request<R>(env, name, msg, {.timeout = 50ms})` is safe
/// under g++ 12 too (which frees a braced temporary holding a std::string written inside a
/// co_await expression at a wrong address).
struct send_options {
    /// Overrides the header's source (by default the session or agent running, else "").
    std::string_view source{};
    /// The header's reply_to, for one-way messages.
    std::string_view reply_to{};
    /// Requests only: abandoned when no answer came within this time (zero: no limit).
    std::chrono::nanoseconds timeout{0};
    /// Requests to another node's object (`node/object`, docs/nodes.md) whose peer is down:
    /// false (the default) abandons them at once; true lets them wait for the peer to come
    /// back, bounded by `timeout` (without a timeout they fail fast all the same).
    bool wait_for_peer = false;
};

/// A message to a named object, as its handler sees it. Move it out of the handler (into a
/// queue, another thread) to answer later; a request whose incoming is destroyed unanswered is
/// abandoned, with a reason saying so: no requester waits forever.
class MAILROOM_EXPORT incoming {
public:
    incoming() noexcept = default;
    explicit incoming(internal::named_delivery* d) noexcept : d_(d) {}
    /// Moving an unanswered request out of the handler lets the environment find it when it
    /// stops: a request still open then is abandoned, whoever holds its incoming.
    incoming(incoming&& o) noexcept;
    incoming& operator=(incoming&& o) noexcept;
    ~incoming();

    const message_header& header() const;
    message_type type() const;
    template <class T>
    bool is() const {
        return type() == message_type_of<T>();
    }
    /// The payload; raises usage_error naming both types when it is not a `T`.
    template <class T>
    const T& as() const {
        check_type(message_type_of<T>());
        return internal::payload_of<T>(body());
    }

    /// Answers the request with a `T` built from `args`. Raises usage_error when this is not a
    /// request or was answered already; a reply of another type than the requester expects
    /// rejects the request (saying so) and raises usage_error. A reply that arrives after the
    /// request was abandoned (timed out, cancelled) is counted, not lost silently.
    template <class T, class... Args>
    void reply(Args&&... args) {
        reply_envelope(internal::make_envelope<T>(std::forward<Args>(args)...));
    }
    void reject(std::string reason);
    /// True once reply() or reject() was called, or for a one-way message.
    bool answered() const noexcept;

private:
    void check_type(message_type t) const;
    internal::envelope* body() const noexcept;
    void reply_envelope(internal::envelope* e);
    internal::named_delivery* d_ = nullptr;
};

/// A request in flight or done. Copyable (shares the request); any thread.
template <class R>
class outgoing {
public:
    outgoing() noexcept = default;
    explicit outgoing(internal::request_core* r) noexcept : r_(r) {}  // takes a reference
    outgoing(const outgoing& o) noexcept : r_(o.r_) {
        if (r_) internal::request_add_ref(r_);
    }
    outgoing(outgoing&& o) noexcept : r_(std::exchange(o.r_, nullptr)) {}
    outgoing& operator=(outgoing o) noexcept {
        std::swap(r_, o.r_);
        return *this;
    }
    ~outgoing() {
        if (r_) internal::request_release(r_);
    }

    explicit operator bool() const noexcept { return r_ != nullptr; }
    request_state state() const noexcept { return internal::request_get_state(r_); }
    bool done() const noexcept { return state() >= request_state::replied; }
    std::uint64_t id() const noexcept { return internal::request_id(r_); }
    /// Why it was rejected or abandoned ("" otherwise).
    std::string reason() const { return internal::request_reason(r_); }

    /// Blocks until the request is final or `timeout` passed; true when final. Raises
    /// would_deadlock_error instead of blocking on a worker thread of the request's environment
    /// (inside a session's callback or an agent's handler): the answering session may share
    /// that thread, and the environment could not stop. There, use then() or co_await. A
    /// request that is final already, or a zero timeout (a poll), never raises.
    bool wait_for(std::chrono::nanoseconds timeout) const { return internal::request_wait(r_, timeout.count()); }
    /// Blocks until final; returns the final state. Raises would_deadlock_error like wait_for().
    request_state wait() const {
        internal::request_wait(r_, -1);
        return state();
    }

    /// The reply; raises request_failed_error (state and reason) when it was rejected or
    /// abandoned, usage_error when it is not final yet.
    const R& reply() const {
        request_state s = state();
        if (s == request_state::replied) return internal::payload_of<R>(internal::request_reply(r_));
        if (s < request_state::replied)
            throw usage_error("request #" + std::to_string(id()) + ": reply() before it was answered (state " +
                              to_string(s) + ")");
        throw request_failed_error(s, "request #" + std::to_string(id()) + " " + to_string(s) + ": " + reason());
    }

    /// Calls `f(const outgoing<R>&)` on session `s` once the request is final. Cancelling the
    /// request (cancel()) guarantees `f` will not run; when cancel() returns on another thread
    /// than `s`'s, `f` is not running either. Like any posted call, `f` does not run (and is
    /// destroyed) when `s` is destroyed first, e.g. when the environment stops.
    template <class F>
    void then(session& s, F&& f) {
        then_on(internal::ref_of(s), std::forward<F>(f));
    }
    /// The same on an agent's context (from its handlers, or any thread).
    template <class F>
    void then(agent& a, F&& f) {
        then_on(internal::ref_of(a), std::forward<F>(f));
    }

    /// A future that gets the reply, or request_failed_error.
    std::future<R> future() {
        auto* p = new std::promise<R>();
        std::future<R> fut = p->get_future();
        struct ctx {
            std::promise<R>* p;
            outgoing self;
        };
        auto* c = new ctx{p, *this};
        try {
            internal::request_continue(
                r_,
                [](void* arg) noexcept {
                    auto* c = static_cast<ctx*>(arg);
                    try {
                        c->p->set_value(c->self.reply());
                    } catch (...) {
                        try {
                            c->p->set_exception(std::current_exception());
                        } catch (...) {
                        }
                    }
                    delete c->p;
                    delete c;
                },
                c);
        } catch (...) {
            delete p;
            delete c;
            throw;
        }
        return fut;
    }

    /// Gives up: a request not final yet is abandoned ("cancelled"); a callback given to then()
    /// will not run. Returns true if this call abandoned it.
    bool cancel() noexcept { return r_ && internal::request_cancel(r_); }

    /// `co_await req` inside a session's callback or an agent's handler (a coroutine returning
    /// mailroom::task): resumes on the same session or agent once the request is final, and
    /// yields the outgoing itself. If the session is destroyed (or the agent deregistered)
    /// first, the coroutine is destroyed without resuming.
    auto operator co_await() const noexcept {
        struct awaiter {
            outgoing self;
            bool await_ready() const noexcept { return self.done(); }
            void await_suspend(std::coroutine_handle<> h) { internal::request_resume_here(self.r_, h); }
            outgoing await_resume() noexcept { return std::move(self); }
        };
        return awaiter{*this};
    }

private:
    template <class F>
    void then_on(const internal::context_ref& c, F&& f) {
        if (!c) throw session_destroyed_error("then: the session handle is empty");
        internal::request_then(r_, c,
                               internal::handler([self = *this, fn = std::decay_t<F>(std::forward<F>(f))](
                                                     internal::envelope*) mutable { fn(std::as_const(self)); }));
    }

    internal::request_core* r_ = nullptr;
};

/// A fire-and-forget coroutine for session callbacks and agent handlers: `s.post([&] { run(args); })` with
/// `task run(args) { auto r = co_await request<int>(...); ... }`. It starts at once, runs on
/// the session until its first co_await, and resumes there. An exception that escapes it is
/// logged through the environment's log and counted in handler_exceptions, like one from a
/// session's callback (it does not apply an agent's exception policy; outside any session or
/// agent it goes to stderr); keep the parameters by value (a lambda's captures die when the
/// lambda returns, before the coroutine resumes).
struct task {
    struct promise_type {
        task get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        MAILROOM_EXPORT void unhandled_exception() noexcept;
    };
};

/// Sends a request for an `R` to the named object `name`. Any thread. Never throws for a
/// missing object, a stopped environment or a full stop: the returned request says so
/// (rejected or abandoned, with a reason). Raises invalid_name_error for an invalid name (the
/// request is counted rejected).
template <class R, class Msg>
[[nodiscard]] outgoing<R> request(environment& env, std::string_view name, Msg&& msg, send_options options) {
    internal::request_core* r = internal::new_request(env, message_type_of<R>(), options.timeout);
    outgoing<R> out(r);
    internal::request_add_ref(r);  // the delivery's
    internal::send_named(env, name, internal::make_envelope<std::decay_t<Msg>>(std::forward<Msg>(msg)), r,
                         std::string(options.source), std::string(options.reply_to), options.wait_for_peer);
    return out;
}

// Overloads rather than a default argument: g++ 12 destroys a defaulted class-type argument
// twice when the call is inside a coroutine.
template <class R, class Msg>
[[nodiscard]] outgoing<R> request(environment& env, std::string_view name, Msg&& msg) {
    return request<R>(env, name, std::forward<Msg>(msg), send_options{});
}

/// Sends a one-way message to `name`. Any thread. Raises no_such_object_error when no object
/// has that name and there is no `*`, environment_stopped_error once the environment stopped,
/// invalid_name_error for an invalid name.
template <class Msg>
void send_to(environment& env, std::string_view name, Msg&& msg, send_options options) {
    internal::send_named(env, name, internal::make_envelope<std::decay_t<Msg>>(std::forward<Msg>(msg)), nullptr,
                         std::string(options.source), std::string(options.reply_to));
}
template <class Msg>
void send_to(environment& env, std::string_view name, Msg&& msg) {
    send_to(env, name, std::forward<Msg>(msg), send_options{});
}

/// A named object's handle: shutdown() unregisters the name and stops the handler (when it
/// returns on another thread than the session's, no message is being handled and none will
/// be); destroy() also frees it; the handle going out of scope destroys it unless detached.
/// detach() keeps the name registered until its session or agent is destroyed. The name belongs
/// to the object, not to this handle: made a plain event_handle (to_event_handle()), that
/// handle's shutdown() and destroy() unregister it the same way. The verbs are event_handle's
/// (docs/lifetimes.md).
class MAILROOM_EXPORT named_handle final : public extended_handle {
public:
    named_handle() noexcept = default;
    named_handle(internal::handle_target* o, std::string name) noexcept;
    named_handle(named_handle&&) noexcept = default;
    named_handle& operator=(named_handle&& o) noexcept = default;

    /// The name it was registered under ("" for an empty handle).
    const std::string& name() const noexcept { return name_; }

private:
    std::string name_;
};

namespace internal {
/// `owner` names the session or agent in errors.
MAILROOM_EXPORT named_handle register_named(const context_ref& s, const std::string& owner, std::string name,
                                            std::function<void(incoming&)> fn);
}

/// Registers `name` (or `*`, the any-object) on session `s`: `f(incoming&)` runs on the
/// session for every message sent to it (`f` must be copyable: it is held in a std::function). Any thread. Raises invalid_name_error,
/// duplicate_name_error (naming it), session_destroyed_error, environment_stopped_error.
template <class F>
[[nodiscard]] named_handle register_named(session& s, std::string name, F&& f) {
    return internal::register_named(internal::ref_of(s), s.name(), std::move(name),
                                    std::function<void(incoming&)>(std::forward<F>(f)));
}

/// The same on an agent: `f` runs on the agent's context, like its handlers. The name is freed
/// when the handle is destroyed or when the agent is.
template <class F>
[[nodiscard]] named_handle register_named(agent& a, std::string name, F&& f) {
    return internal::register_named(internal::ref_of(a), a.name(), std::move(name),
                                    std::function<void(incoming&)>(std::forward<F>(f)));
}

/// Counters of the named objects and requests of an environment: what the named layer adds to
/// environment_stats. Requests balance once none is open: posted = replied + rejected +
/// abandoned.
struct named_stats {
    std::uint64_t named_registered = 0;
    std::uint64_t named_unregistered = 0;
    std::uint64_t named_messages = 0;      ///< one-way messages delivered to a named object's queue
    std::uint64_t named_rejected = 0;      ///< one-way messages that found no object and no `*`
    std::uint64_t requests_posted = 0;
    std::uint64_t requests_replied = 0;
    std::uint64_t requests_rejected = 0;
    std::uint64_t requests_abandoned = 0;  ///< went away, environment stopped, timed out or cancelled
    std::uint64_t replies_orphaned = 0;    ///< answers to a request that was already abandoned
};

/// A snapshot of `env`'s named-object and request counters; any thread, also after the
/// environment stopped (all zero when no named object or request was ever made in it).
MAILROOM_EXPORT named_stats named_stats_of(const environment& env);

}  // namespace mailroom
