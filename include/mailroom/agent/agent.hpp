#pragma once
/// Agents: user classes whose handlers run on a serial context, one message at a time.

#include <mailroom/mbox/mbox.hpp>
#include <mailroom/session/session.hpp>
#include <mailroom/session/detail/handler.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <string>
#include <string_view>
#include <type_traits>

namespace mailroom {

namespace internal {
class context_core;
struct agent_access;
}
class agent;
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

    /// A subscription to the mchain `from`, handled on the agent's context: an event object of
    /// the agent like add_timer's, with session::subscribe(chain, ...)'s semantics. Any thread
    /// while the agent exists (before the agent starts, its turns wait for on_start()).
    template <class... Handlers>
    [[nodiscard]] event_handle subscribe(const mchain& from, Handlers&&... handlers);

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
    void add_subscription(const mbox& from, message_type type, internal::handler h);
    internal::handle_target* make_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period,
                                        internal::handler fn);
    internal::handle_target* make_inbox(message_type type, internal::handler fn, mbox& address);
    internal::handle_target* make_chain_subscription(const mchain& from, internal::mchain_handlers hs);
    bool remove_subscription(const mbox& from, message_type type);

    internal::context_core* core_;
};

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

template <class F>
event_handle agent::add_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period, F&& f) {
    return event_handle(make_timer(delay, period, internal::timer_callback(std::forward<F>(f))));
}

template <class Msg, class F>
inbox_handle agent::add_inbox(F&& f) {
    mbox address;
    internal::handle_target* o =
        make_inbox(message_type_of<Msg>(), internal::message_callback<Msg>(std::forward<F>(f)), address);
    return inbox_handle(o, std::move(address));
}

}  // namespace mailroom
