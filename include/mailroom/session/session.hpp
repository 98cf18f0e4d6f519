#pragma once
/// Sessions and event objects (MME's managed lifetimes): a serial execution context for code
/// that wants callbacks without writing an agent, and the timers and inboxes that call back
/// into it, each with a shutdown() that guarantees no callback runs once it returns.

#include <mailroom/mbox/delivery_filter.hpp>
#include <mailroom/mbox/event_handle.hpp>
#include <mailroom/mbox/limits.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/mbox/mchain.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/session/detail/handler.hpp>
#include <mailroom/session/fd_watch.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace mailroom {

namespace internal {
class context_core;
class context_arena;
class env_core;
class handle_target;
struct posted_call;

/// A serial context (a session or an agent) as a handle names it: its record, the life of it
/// the handle refers to, and the arena that keeps the record's memory valid (not the
/// environment: a handle may outlive it, and then finds its life over).
struct context_ref {
    std::shared_ptr<context_arena> arena;
    context_core* core = nullptr;
    std::uint32_t gen = 0;
    bool agent = false;  // an agent's context (else a session's), for error messages
    explicit operator bool() const noexcept { return core != nullptr; }
};

/// Sets (or, with `spec` null, removes) the message limit of `type` on the context's life.
/// Any thread. Raises session_destroyed_error when the life is over, usage_error for a
/// redirect to an empty mbox or a 32nd limited type. `name` names the session or agent.
MAILROOM_EXPORT void set_limit(const context_ref& s, std::string_view name, message_type type,
                               std::shared_ptr<const limit_spec> spec);
/// What the context's limits counted in its life (empty once it is over). Any thread.
MAILROOM_EXPORT std::vector<limit_stats> limit_stats_of(const context_ref& s);
/// Sets (or, with `spec` null, removes) the message limit of the inbox whose address this is.
MAILROOM_EXPORT void set_inbox_limit(const mbox& address, message_type type, std::shared_ptr<const limit_spec> spec);
}  // namespace internal

class session;
namespace internal {
/// What a session handle refers to, for the layers above (named objects, then()).
const context_ref& ref_of(const session& s) noexcept;
}  // namespace internal

/// A session, an agent's context or an event object was used after it was destroyed (or through
/// an empty handle).
class MAILROOM_EXPORT session_destroyed_error final : public error {
public:
    using error::error;
};

struct session_options {
    /// Names the session in errors and logs; "session#<id>" when empty.
    std::string name{};
    /// Where its callbacks run; the environment's default dispatcher when empty. On a
    /// thread_pool the session is a FIFO unit of its own.
    binder bind{};
};

/// An inbox: a private destination for replies. Anyone may `send<Msg>` to its address(); the
/// callback receives each message on its session's or agent's context. A message of another
/// type is counted ignored. Sending to it once it is shut down counts the message lost; once its
/// environment stopped, sending raises environment_stopped_error like any mbox.
/// Its verbs are event_handle's (docs/lifetimes.md).
class MAILROOM_EXPORT inbox_handle final : public extended_handle {
public:
    inbox_handle() noexcept = default;
    inbox_handle(internal::handle_target* t, mbox address) noexcept
        : extended_handle(t), address_(std::move(address)) {}
    inbox_handle(inbox_handle&&) noexcept = default;
    inbox_handle& operator=(inbox_handle&&) noexcept = default;

    /// Where to send; valid (and usable from any thread) even after the inbox is destroyed.
    const mbox& address() const noexcept { return address_; }

private:
    mbox address_;
};

/// A serial execution context bound to a dispatcher: its callbacks (posted calls, timers,
/// inboxes, subscriptions) never run at the same time, and it owns its event objects.
///
/// Threads: create, post, add objects and destroy from any thread, including from inside its
/// own callbacks. destroy() shuts down and destroys every event object of the session; once
/// it returns on a thread other than the session's context, none of its callbacks runs and
/// none will start. The environment destroys the sessions still alive when it stops: after
/// its cooperations are gone and before its dispatchers stop.
class MAILROOM_EXPORT session {
public:
    session() noexcept = default;
    /// Raises environment_stopped_error when the environment is stopping (also when its
    /// teardown shut the binder's dispatcher down while this constructor ran), binding_error
    /// when the binder's dispatcher was shut down by its owner (dispatcher::shutdown).
    explicit session(environment& env, session_options options = {});
    session(session&& o) noexcept : ref_(std::exchange(o.ref_, {})), name_(std::move(o.name_)) {}
    session& operator=(session&& o) noexcept;
    /// Destroys the session unless detach() was called.
    ~session();

    /// True while it refers to a session that was not destroyed.
    explicit operator bool() const noexcept;

    /// The session's name ("" for an empty handle).
    std::string name() const;

    /// Runs `f()` on the session's context. Any thread; never blocks. Returns false (and drops
    /// `f`) when the session is destroyed or the handle is empty. A posted call still queued
    /// when the session is destroyed does not run (it is counted refused).
    template <class F>
    bool post(F&& f);

    /// A timer calling `f()` on the session's context after `delay`, then every `period`
    /// (one-shot when `period` is zero). Any thread. Raises session_destroyed_error on a
    /// destroyed session, usage_error for a negative delay or period. A periodic timer never has
    /// more than one call queued or running: periods that come up meanwhile are skipped and
    /// counted (environment_stats::timers_skipped).
    template <class F>
    [[nodiscard]] event_handle add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f);

    /// An inbox of `Msg`s handled by `f`, which takes `Msg` by value, by `Msg&&` or by
    /// `const Msg&` (a move-only message is moved out). Any thread. Raises
    /// session_destroyed_error on a destroyed session.
    template <class Msg, class F>
    [[nodiscard]] inbox_handle add_inbox(F&& f);

    /// add_inbox() with a delivery filter: `pred` takes `const Msg&` and returns true for a
    /// message to deliver. It runs on the sender's thread before anything is queued (a refused
    /// message is counted sent, ignored and filtered: environment_stats), possibly on several
    /// threads at once: thread-safe, short, never blocking; a predicate that throws refuses the
    /// message (logged and counted). It is the inbox's for its whole life: once the inbox's
    /// shutdown() returns (or its session's destroy()), it runs nowhere and is destroyed.
    template <class Msg, class F, class P>
    [[nodiscard]] inbox_handle add_inbox(F&& f, P&& pred)
        requires delivery_predicate<const std::decay_t<P>, Msg>;
    /// add_inbox() with a message limit of its own (see limit()): at most `bounds` of its
    /// messages wait, and what comes over them meets `reaction`. Set before the address is
    /// returned. The session's limit of Msg, if any, does not count the inbox's messages.
    template <class Msg, class F, class Reaction>
    [[nodiscard]] inbox_handle add_inbox(F&& f, limit_bounds bounds, Reaction reaction);

    /// A subscription to the `Msg`s published to the MPMC mbox `from` (anonymous or named):
    /// `f` runs on the session's context for each, and takes `const Msg&` (the shared,
    /// immutable instance when fanned out) or `Msg` (a copy when shared). Any thread. Like
    /// any event object: when shutdown() returns on a foreign thread no callback runs and none
    /// starts, not even for a publication already queued (a publication that finds it shut is
    /// counted ignored, as for an agent that left the topic). Raises session_destroyed_error
    /// on a destroyed session, subscription_error for an empty handle, a direct mbox (an
    /// agent's or an inbox) or an mbox of another environment.
    template <class Msg, class F>
    [[nodiscard]] event_handle subscribe(const mbox& from, F&& f);

    /// subscribe() with a delivery filter `pred` (as add_inbox's): only the publications it
    /// accepts are queued for this subscription. It goes with the subscription: once its
    /// shutdown() returns, the predicate runs nowhere and is destroyed.
    template <class Msg, class F, class P>
    [[nodiscard]] event_handle subscribe(const mbox& from, F&& f, P&& pred)
        requires delivery_predicate<const std::decay_t<P>, Msg>;
    /// A subscription to the mchain `from`: the chain feeds this session's context, with no
    /// thread polling it. Each handler takes its message type (`[](const job&)`, by value or
    /// `job&&` to move it out); a message no handler takes is extracted and counted ignored.
    /// A turn handles at most 32 messages, then the session's other callbacks get their turn.
    /// Several subscriptions (and receive() on other threads) may take from one chain: each
    /// message goes to one of them. Any thread. Like any event object: once shutdown() returns
    /// on a foreign thread no handler of it runs and none starts, and what it has not taken
    /// stays in the chain. Raises session_destroyed_error on a destroyed session,
    /// subscription_error for an empty handle or a chain of another environment.
    template <class... Handlers>
    [[nodiscard]] event_handle subscribe(const mchain& from, Handlers&&... handlers);
    /// Limits how many `Msg`s (any_other_message: messages of every type without a limit of its
    /// own, counted together) may wait in the session's queue, over all its inboxes and
    /// subscriptions, and says what becomes of one more: limit_drop, limit_abort,
    /// limit_log_then_abort{f}, limit_redirect{mbox}, limit_transform{f}. Replaces the type's
    /// limit if it had one. Any thread, at any time: a send sees the old limit or the new one.
    /// Raises session_destroyed_error on a destroyed session, usage_error for a redirect to an
    /// empty handle or a 32nd limited type. See docs/limits-and-filters.md.
    template <class Msg, class Reaction>
    void limit(limit_bounds bounds, Reaction reaction) {
        internal::set_limit(ref_, name_, message_type_of<Msg>(), internal::make_limit<Msg>(bounds, std::move(reaction)));
    }
    /// limit() with a bound on messages only.
    template <class Msg, class Reaction>
    void limit(std::uint64_t max_messages, Reaction reaction) {
        limit<Msg>(limit_bounds{.messages = max_messages}, std::move(reaction));
    }
    /// Removes the limit of `Msg` (which then falls under any_other_message's, if any). Any thread.
    template <class Msg>
    void remove_limit() {
        internal::set_limit(ref_, name_, message_type_of<Msg>(), nullptr);
    }

    /// subscribe() with a message limit of its own (see limit()), declared before it joins
    /// the topic. The session's limit of Msg, if any, does not count this subscription's
    /// messages.
    template <class Msg, class F, class Reaction>
    [[nodiscard]] event_handle subscribe(const mbox& from, F&& f, limit_bounds bounds, Reaction reaction);

    /// An fd watcher: `f(fd_events ready)` runs on the session's context (its event loop's
    /// thread) when `fd` is ready for part of `interest`, and returns the next interest (none
    /// takes the fd out of the loop's epoll set until set_interest asks again). `trigger`: level
    /// or edge (fd_trigger). The session must be bound to an event_loop_pool; otherwise
    /// binding_error naming the session and its dispatcher. Raises session_destroyed_error on a
    /// destroyed session, usage_error for a negative fd, mailroom::error naming the session and
    /// the fd when epoll refuses it (a regular file, an fd already watched by this loop, a
    /// closed fd). The session does not own the fd: shut the watcher down before closing it.
    /// Any thread. See docs/event-loops.md.
    template <class F>
    [[nodiscard]] fd_watch_handle watch(int fd, fd_events interest, F&& f, fd_trigger trigger = fd_trigger::level);

    /// Destroys the session and every event object it owns (see the class comment). Any
    /// thread, including its own callbacks; a no-op when already destroyed.
    void destroy() noexcept;

    /// Lets the session live on without this handle, until the environment stops.
    void detach() noexcept;

private:
    friend const internal::context_ref& internal::ref_of(const session& s) noexcept;
    internal::context_ref ref_;
    std::string name_;  // kept by the handle: the record may carry another life's name later
};

inline const internal::context_ref& internal::ref_of(const session& s) noexcept { return s.ref_; }

/// Counters of the serial contexts of an environment (agents' contexts included in the
/// callback counters): what the session layer adds to environment_stats.
struct session_stats {
    std::uint64_t sessions_created = 0;
    std::uint64_t sessions_destroyed = 0;       ///< retired: their event objects and callbacks gone
    std::uint64_t event_objects_created = 0;    ///< timers, inboxes, subscriptions and named objects of sessions and agents
    std::uint64_t event_objects_destroyed = 0;  ///< retired: their callbacks destroyed
    std::uint64_t callbacks_run = 0;  ///< session callbacks run (posted calls, timers, inbox messages)
    /// Deliveries that found their object or session shut when they came up and did not run:
    /// expected after a shutdown; what never happens is a callback running after shutdown().
    std::uint64_t callbacks_refused = 0;
    std::uint64_t callbacks_discarded = 0;  ///< still queued when the dispatchers stopped
};

/// What the session's message limits counted, one entry per limited type. Any thread; empty
/// for a destroyed session.
MAILROOM_EXPORT std::vector<limit_stats> limit_stats_of(const session& s);

/// A snapshot of `env`'s session counters; any thread, also after the environment stopped
/// (all zero when no session was ever made in it).
MAILROOM_EXPORT session_stats session_stats_of(const environment& env);

}  // namespace mailroom

#include <mailroom/session/detail/session_impl.hpp>
