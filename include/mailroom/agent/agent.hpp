#pragma once
/// Agents: user classes whose handlers run on a serial context, one message at a time.

#include <mailroom/mbox/delivery_filter.hpp>
#include <mailroom/mbox/limits.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/session/session.hpp>
#include <mailroom/session/detail/handler.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace mailroom {

namespace internal {
class context_core;
struct agent_access;
class agent_states;
enum class state_reaction : std::uint8_t;
}
class agent;
class state;
namespace internal {
/// What an agent is as a serial context, for the layers above (named objects, then()).
MAILROOM_EXPORT context_ref ref_of(const agent& a) noexcept;
}  // namespace internal
class coop_handle;

/// Why a cooperation was deregistered.
enum class dereg_reason : std::uint8_t {
    normal,             ///< asked for by the user
    shutdown,           ///< the environment is stopping
    parent_deregistered,///< its parent cooperation is going away
    handler_exception,  ///< a handler threw and the policy is deregister_coop
    user_defined,       ///< values from here on are the user's own; use `dereg_reason(int(user_defined) + n)`
};

MAILROOM_EXPORT const char* to_string(dereg_reason r) noexcept;

/// Base class of agents. Construct agents only with `coop::make_agent`; the constructor may
/// already use `direct_mbox()` and `env()`.
///
/// Thread rules: hooks and handlers run on the agent's serial context (never two at once).
/// `subscribe`/`unsubscribe` are legal in `configure()` and in handlers; anywhere else they
/// raise subscription_error.
class MAILROOM_EXPORT agent {
public:
    agent();
    virtual ~agent();
    agent(const agent&) = delete;
    agent& operator=(const agent&) = delete;

    /// The agent's own MPSC mbox. Any thread. Made on the first call (an agent that is never
    /// addressed directly costs no mbox), which may raise std::bad_alloc; the same mbox after
    /// it. Asked for after the agent finished, it is an mbox whose sends count lost.
    const mbox& direct_mbox() const;

    /// A snapshot of the counters of the environment the agent lives in (messages, timers;
    /// the layers' own counters are read with agent_stats_of and the like). Any thread.
    environment_stats env_stats() const;

    /// A readable name for errors and logs: the one given with `set_name`, else the type and id.
    std::string name() const;

    /// A timer calling `f()` on the agent's context after `delay`, then every `period`
    /// (one-shot when zero): an event object of the agent, with session::add_timer's semantics
    /// and the one handle's verbs (docs/lifetimes.md). Any thread while the agent exists: its
    /// constructor, configure(), handlers and other threads (before the agent starts, fires
    /// wait for its on_start()). Its cooperation's deregistration destroys it with the agent:
    /// no callback of it runs after on_finish() (one added in on_finish() goes right after it).
    /// Raises usage_error for a negative delay or period, session_destroyed_error when the
    /// agent's end already destroyed its objects (another thread racing the deregistration).
    template <class F>
    [[nodiscard]] event_handle add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f);

    /// An inbox of `Msg`s handled by `f` on the agent's context (`f` takes `Msg`, `Msg&&` or
    /// `const Msg&`): an event object of the agent like add_timer's, with session::add_inbox's
    /// semantics. Any thread while the agent exists; raises session_destroyed_error like
    /// add_timer.
    template <class Msg, class F>
    [[nodiscard]] inbox_handle add_inbox(F&& f);
    /// add_inbox() with a delivery filter `pred` (`const Msg&` -> bool, run on the sender's
    /// thread: session::add_inbox's), which goes with the inbox.
    template <class Msg, class F, class P>
    [[nodiscard]] inbox_handle add_inbox(F&& f, P&& pred)
        requires delivery_predicate<const std::decay_t<P>, Msg>;

    /// An fd watcher on the agent's context, with session::watch's semantics (docs/event-loops.md):
    /// the agent's cooperation must bind it to an event_loop_pool. From on_start() on (its own
    /// context), or from any thread once its registration returned; before the agent is bound
    /// (its constructor, configure()) it raises binding_error naming the agent. Its
    /// cooperation's deregistration destroys it with the agent, like add_timer's.
    template <class F>
    [[nodiscard]] fd_watch_handle watch(int fd, fd_events interest, F&& f, fd_trigger trigger = fd_trigger::level);

    /// The path of the innermost state the agent is in, from the top level down
    /// ("working.busy.writing"; "default" for the default state). Any thread: a snapshot, which
    /// during a change of state shows the state whose enter or exit handler runs.
    std::string current_state_path() const;
    /// True when the agent is in `s`: the innermost state or one of its ancestors. Any thread,
    /// a snapshot like current_state_path().
    bool is_in(const state& s) const noexcept;

    /// A subscription to the mchain `from`, handled on the agent's context: an event object of
    /// the agent like add_timer's, with session::subscribe(chain, ...)'s semantics. Any thread
    /// while the agent exists (before the agent starts, its turns wait for on_start()).
    template <class... Handlers>
    [[nodiscard]] event_handle subscribe(const mchain& from, Handlers&&... handlers);

    /// Limits how many `Msg`s may wait in this agent's queue (from all the mboxes it listens
    /// to, inboxes included), and says what becomes of one more: limit_drop (counted),
    /// limit_abort, limit_log_then_abort{f}, limit_redirect{mbox} or limit_transform{f}
    /// (docs/limits-and-filters.md). `any_other_message` declares the default limit: every type
    /// without a limit of its own, counted together; a type without a limit, with no default,
    /// is not limited. A message counts from its send until its handling begins.
    /// Declare limits in the constructor or configure(); change or remove them later from any
    /// thread (a send sees the old limit or the new one, never half of each). Replaces the
    /// type's limit if it had one. Raises usage_error for a redirect to an empty handle or a
    /// 32nd limited type, session_destroyed_error once the agent's life is over.
    template <class Msg, class Reaction>
    void limit(limit_bounds bounds, Reaction reaction) {
        set_limit(message_type_of<Msg>(), internal::make_limit<Msg>(bounds, std::move(reaction)));
    }
    /// limit() with a bound on messages only.
    template <class Msg, class Reaction>
    void limit(std::uint64_t max_messages, Reaction reaction) {
        limit<Msg>(limit_bounds{.messages = max_messages}, std::move(reaction));
    }
    /// Removes the limit of `Msg` (which then falls under any_other_message's, if any). Any thread.
    template <class Msg>
    void remove_limit() {
        set_limit(message_type_of<Msg>(), nullptr);
    }

protected:
    /// Called during registration, on the registering thread, before the agent is bound to run.
    /// Make subscriptions here. Throwing cancels the whole registration.
    virtual void configure() {}
    /// First thing that runs on the agent's context after its cooperation is registered.
    virtual void on_start() {}
    /// Last thing that runs on the agent's context before it is destroyed.
    virtual void on_finish() {}

    /// Subscribes `handler` to messages of type Msg arriving at `from`. Msg is deduced from the
    /// handler's parameter (`const T&`, `T`, `T&&`) unless given. A handler that takes no
    /// parameter needs Msg given explicitly. Raises subscription_error when already subscribed
    /// to (from, Msg), when `from` is another agent's direct mbox, or when not called from
    /// `configure()` or one of this agent's handlers.
    template <class Msg = void, class F>
    void subscribe(const mbox& from, F&& handler);

    /// Removes the subscription; queued messages of it are not delivered afterwards. Same thread
    /// rules as subscribe. Returns false when there was none.
    template <class Msg>
    bool unsubscribe(const mbox& from);

    /// The state the agent starts in, which holds its plain subscriptions (subscribe()). It has
    /// no sub-states. Called first from a handler of an agent that declared no state while it has
    /// plain subscriptions, it raises state_error (declare states as members or in configure()).
    state& default_state();
    /// Switches to `target` (to its initial sub-state or history when it has sub-states): runs
    /// the exit handlers from the innermost state up to the common ancestor, then the enter
    /// handlers down to the new innermost state. Nothing happens when that is the state the
    /// agent is in. Legal on the agent's own context (configure(), on_start(), handlers,
    /// on_finish(), its timers), not from an enter or exit handler; raises state_error otherwise,
    /// for a state of another agent, or a composite state without an initial sub-state.
    void change_state(const state& target);
    /// Sets (or replaces) this agent's delivery filter for the Msgs arriving at `from`: `pred`
    /// takes `const Msg&` and returns true for a message to deliver. It runs on the sender's
    /// thread before anything is queued (a refused message is counted sent, ignored and
    /// filtered: environment_stats), possibly on several threads at once, so it must be
    /// thread-safe, short, and must not block; a predicate that throws refuses the message (the
    /// exception is logged and counted). Msg is deduced from `pred`'s parameter unless given.
    /// `from` is this agent's direct mbox (a filter per type, with or without a subscription) or
    /// an MPMC mbox the agent is subscribed to for Msg (the filter belongs to that subscription
    /// and goes with it). A replacement is atomic for concurrent sends: each sees the old
    /// predicate or the new one; when this returns, the old one runs nowhere and is destroyed.
    /// Any thread while the agent exists (not from inside one of the filter's own predicates).
    /// Raises subscription_error for an empty handle, an mbox of another environment, another
    /// agent's direct mbox or an inbox, no subscription to (from, Msg), or an agent that finished.
    template <class Msg = void, class F>
    void set_delivery_filter(const mbox& from, F&& pred);

    /// Removes the delivery filter set for Msgs arriving at `from`; when it returns, the
    /// predicate runs nowhere and is destroyed. Same threads as set_delivery_filter. Returns
    /// false when there was none.
    template <class Msg>
    bool drop_delivery_filter(const mbox& from);

    /// Sets what happens when one of this agent's handlers throws (overrides the cooperation's).
    void set_exception_policy(exception_policy p) noexcept;
    /// Names the agent in errors and logs.
    void set_name(std::string name);

    /// The cooperation this agent belongs to (e.g. the parent of a child cooperation it
    /// registers). Valid from configure() on; any thread.
    coop_handle cooperation() const;

    /// Deregisters this agent's cooperation. Any thread; returns at once. From the constructor
    /// or configure() it takes effect as soon as registration commits (the agents start, then
    /// finish), with this reason.
    void deregister_coop(dereg_reason reason = dereg_reason::normal) noexcept;

    /// Stops the whole environment (asynchronously). Any thread.
    void stop_environment() noexcept;

    /// The environment's core, for send_delayed and the like.
    environment& env() const noexcept;

private:
    friend struct internal::agent_access;
    friend class state;
    friend class internal::agent_states;
    void add_table_entry(const mbox& from, message_type type, internal::handler h);
    bool remove_table_entry(const mbox& from, message_type type);
    internal::agent_states& states();
    void add_state_reaction(const mbox& from, message_type type, const state& in, internal::state_reaction r,
                            const state* target, internal::handler h);
    bool remove_state_reaction(const mbox& from, message_type type, const state& in);
    void add_subscription(const mbox& from, message_type type, internal::handler h);
    internal::handle_target* make_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period,
                                        internal::handler fn);
    internal::handle_target* make_fd_watch(int fd, fd_events interest, fd_trigger trigger, internal::handler fn);
    internal::handle_target* make_inbox(message_type type, internal::handler fn, mbox& address,
                                        std::shared_ptr<const internal::filter_predicate> filter = {});
    internal::handle_target* make_chain_subscription(const mchain& from, internal::mchain_handlers hs);
    bool remove_subscription(const mbox& from, message_type type);
    void set_filter(const mbox& from, std::shared_ptr<const internal::filter_predicate> pred);
    bool drop_filter(const mbox& from, message_type type);
    void set_limit(message_type type, std::shared_ptr<const internal::limit_spec> spec);

    internal::context_core* core_;
    // Made by the first state declared (none: always in the default state). Atomic only for
    // current_state_path() and is_in() on other threads; set on the agent's own context.
    std::atomic<internal::agent_states*> states_{nullptr};
};

/// What the agent's message limits counted in its life, one entry per limited type (the
/// default limit as any_other_message). Any thread; empty once the agent's life is over.
MAILROOM_EXPORT std::vector<limit_stats> limit_stats_of(const agent& a);

// ---- template bodies ----

template <class Msg, class F>
void agent::subscribe(const mbox& from, F&& f) {
    using Fn = std::decay_t<F>;
    if constexpr (std::is_member_function_pointer_v<Fn>) {
        using sig = internal::callable_signature<Fn>;
        using M = std::conditional_t<std::is_void_v<Msg>, typename sig::message, Msg>;
        static_assert(!std::is_void_v<M>, "give the message type: subscribe<Msg>(mbox, handler)");
        using Arg = typename sig::arg;
        using Self = typename internal::member_class<Fn>::type;
        auto* self = static_cast<Self*>(this);
        add_subscription(from, message_type_of<M>(),
                         internal::handler([self, f](internal::envelope* e) {
                             auto call = [&](auto&&... a) { (self->*f)(std::forward<decltype(a)>(a)...); };
                             internal::call_with_payload<M, Arg>(call, e);
                         }));
    } else {
        using sig = internal::callable_signature<Fn>;
        using M = std::conditional_t<std::is_void_v<Msg>, typename sig::message, Msg>;
        static_assert(!std::is_void_v<M>, "give the message type: subscribe<Msg>(mbox, handler)");
        using Arg = typename sig::arg;
        add_subscription(from, message_type_of<M>(),
                         internal::handler([fn = Fn(std::forward<F>(f))](internal::envelope* e) mutable {
                             internal::call_with_payload<M, Arg>(fn, e);
                         }));
    }
}

template <class... Handlers>
event_handle agent::subscribe(const mchain& from, Handlers&&... handlers) {
    return event_handle(
        make_chain_subscription(from, internal::make_mchain_handlers(std::forward<Handlers>(handlers)...)));
}

template <class Msg>
bool agent::unsubscribe(const mbox& from) {
    return remove_subscription(from, message_type_of<Msg>());
}

template <class Msg, class F>
void agent::set_delivery_filter(const mbox& from, F&& pred) {
    using sig = internal::callable_signature<std::decay_t<F>>;
    using M = std::conditional_t<std::is_void_v<Msg>, typename sig::message, Msg>;
    static_assert(!std::is_void_v<M>, "give the message type: set_delivery_filter<Msg>(mbox, pred)");
    set_filter(from, internal::make_filter_predicate<M>(std::forward<F>(pred)));
}

template <class Msg>
bool agent::drop_delivery_filter(const mbox& from) {
    return drop_filter(from, message_type_of<Msg>());
}

template <class F>
event_handle agent::add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f) {
    return event_handle(make_timer(delay, period, internal::timer_callback(std::forward<F>(f))));
}

template <class F>
fd_watch_handle agent::watch(int fd, fd_events interest, F&& f, fd_trigger trigger) {
    static_assert(std::is_invocable_r_v<fd_events, std::decay_t<F>&, fd_events>,
                  "watch: the callback takes fd_events (what is ready) and returns fd_events (the next interest)");
    return fd_watch_handle(make_fd_watch(fd, interest, trigger, internal::watch_callback(std::forward<F>(f))));
}

template <class Msg, class F>
inbox_handle agent::add_inbox(F&& f) {
    mbox address;
    internal::handle_target* o =
        make_inbox(message_type_of<Msg>(), internal::message_callback<Msg>(std::forward<F>(f)), address);
    return inbox_handle(o, std::move(address));
}

template <class Msg, class F, class P>
inbox_handle agent::add_inbox(F&& f, P&& pred)
    requires delivery_predicate<const std::decay_t<P>, Msg>
{
    internal::handler h = internal::message_callback<Msg>(std::forward<F>(f));
    auto filter = internal::make_filter_predicate<Msg>(std::forward<P>(pred));
    mbox address;
    internal::handle_target* o = make_inbox(message_type_of<Msg>(), std::move(h), address, std::move(filter));
    return inbox_handle(o, std::move(address));
}

}  // namespace mailroom

#include <mailroom/agent/state.hpp>
