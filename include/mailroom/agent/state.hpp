#pragma once
/// Hierarchical states of an agent: sub-states, initial sub-states, shallow and deep history,
/// enter and exit handlers, subscriptions per state and time limits (docs/states.md).

#include <mailroom/agent/agent.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/export.hpp>
#include <mailroom/mbox/event_handle.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

namespace mailroom {

/// A state was misused: changed to from another thread or from an enter/exit handler, a
/// composite state without an initial sub-state, two initial sub-states, too deep a nesting, a
/// state of another agent, or a loop of transfer_to_state. The message names the agent and the
/// states.
class MAILROOM_EXPORT state_error final : public error {
public:
    using error::error;
};

/// What a composite state remembers of where it was left, for the next time it is entered as a
/// target (a change of state to one of its descendants goes where it is told).
enum class state_history : std::uint8_t {
    none,     ///< entering it goes to its initial sub-state
    shallow,  ///< to the direct sub-state it was last in (then on by that one's initial sub-state or history)
    deep,     ///< to the innermost state it was last in
};

/// How a state is declared (designated initializers: `{.initial = true}`).
struct state_options {
    bool initial = false;                          ///< the initial sub-state of its parent
    state_history history = state_history::none;  ///< what it remembers when it has sub-states
};

/// One state of an agent, declared as a member of the agent (or in its configure()): a
/// top-level state `state{*this, "working"}` or a sub-state `state{working_, "busy"}`. An agent
/// is always in one innermost state and in all of that state's ancestors; it starts in its
/// default_state(), which holds its plain subscriptions.
///
/// Thread rules: states are declared with the agent (as members, or in configure()) and live as
/// long as it. Reactions (event, suppress, transfer_to_state, just_switch_to, unsubscribe)
/// follow agent::subscribe's rules (configure() and the agent's handlers); on_enter, on_exit
/// and time_limit are set in the constructor, configure() or the agent's handlers. name(),
/// path() and parent() may be read from any thread.
class MAILROOM_EXPORT state {
public:
    /// The deepest nesting: a state at this depth (the top level is depth 0) raises state_error.
    static constexpr std::size_t max_depth = 32;

    /// A top-level state of `owner`. Raises state_error for `.initial` (a top-level state has no
    /// parent to start in; the agent starts in its default state).
    state(agent& owner, std::string name, state_options opts = {});
    /// A sub-state of `parent`. Raises state_error when the parent already has an initial
    /// sub-state and this one is initial too, when the parent is the default state, or when it
    /// would make more than max_depth levels.
    state(state& parent, std::string name, state_options opts = {});
    ~state();
    state(const state&) = delete;
    state& operator=(const state&) = delete;

    /// Its own name ("busy").
    const std::string& name() const noexcept { return name_; }
    /// Its names from the top level down, joined by dots ("working.busy.writing").
    std::string path() const;
    /// The state it is a sub-state of (null at the top level).
    const state* parent() const noexcept { return parent_; }
    /// The agent it belongs to.
    const agent& owner() const noexcept { return *owner_; }

    /// Runs `f()` each time the agent enters this state (after the states above it were entered).
    /// `f` must not throw: one that does terminates the process (std::terminate), since a change
    /// of state half done has no state to fall back to. It must not change state either (state_error).
    template <class F>
    state& on_enter(F&& f);
    /// Runs `f()` each time the agent leaves this state (before the states above it are left);
    /// the same rules as on_enter.
    template <class F>
    state& on_exit(F&& f);

    /// Switches the agent to `target` when it has stayed `limit` in this state (from its entry;
    /// a move between its sub-states does not restart it). Leaving the state earlier cancels it:
    /// a limit whose timer fired while the agent was leaving never switches. Applies from the next
    /// entry when set while the agent is in this state. A zero `limit` removes it. Raises
    /// state_error for a target of another agent, usage_error for a negative limit.
    state& time_limit(std::chrono::nanoseconds limit, const state& target);

    /// Handles messages of type Msg arriving at `from` while the agent is in this state or a
    /// sub-state of it that does not handle them itself. Msg is deduced from the handler as in
    /// agent::subscribe. Raises subscription_error as agent::subscribe does (already
    /// subscribed in this state, the wrong mbox, the wrong thread).
    template <class Msg = void, class F>
    state& event(const mbox& from, F&& handler);
    /// In this state (and its sub-states that do not say otherwise), messages of type Msg from
    /// `from` are ignored (counted `ignored`) even when a parent state handles them.
    template <class Msg>
    state& suppress(const mbox& from);
    /// In this state, a Msg from `from` switches the agent to `target` (down through its history
    /// or initial sub-states) and is handled again there. A chain of transfers that comes back to a state it passed raises state_error naming
    /// the states, before any change of state (an exception of the handler: the agent's policy
    /// applies).
    template <class Msg>
    state& transfer_to_state(const mbox& from, const state& target);
    /// In this state, a Msg from `from` switches the agent to `target`; nothing else handles it.
    template <class Msg>
    state& just_switch_to(const mbox& from, const state& target);
    /// Removes what this state does with Msg from `from`; queued messages find the states as
    /// they are when they arrive. Returns false when there was nothing.
    template <class Msg>
    bool unsubscribe(const mbox& from);

private:
    friend class internal::agent_states;
    friend class agent;
    struct default_tag {};
    state(agent& owner, default_tag);

    void react(const mbox& from, message_type type, internal::state_reaction r, const state* target,
               internal::handler h);

    agent* owner_;
    state* parent_ = nullptr;
    std::string name_;
    std::uint8_t depth_ = 0;
    state_history history_ = state_history::none;
    bool has_children_ = false;
    bool is_default_ = false;
    state* initial_ = nullptr;     // its initial sub-state
    state* last_child_ = nullptr;  // shallow history: the direct sub-state it was last in
    state* last_leaf_ = nullptr;   // deep history: the innermost state it was last in
    std::function<void()> enter_, exit_;
    std::chrono::nanoseconds limit_{0};
    const state* limit_target_ = nullptr;
    event_handle limit_timer_;      // while the agent is in this state and a limit is set
    std::uint64_t entry_ = 0;       // which entry the running limit belongs to (0: not in it)
};

// ---- template bodies ----

namespace internal {
enum class state_reaction : std::uint8_t { handle, suppress, transfer, switch_to };
}  // namespace internal

template <class F>
state& state::on_enter(F&& f) {
    enter_ = std::forward<F>(f);
    return *this;
}

template <class F>
state& state::on_exit(F&& f) {
    exit_ = std::forward<F>(f);
    return *this;
}

template <class Msg, class F>
state& state::event(const mbox& from, F&& f) {
    using Fn = std::decay_t<F>;
    using sig = internal::callable_signature<Fn>;
    using M = std::conditional_t<std::is_void_v<Msg>, typename sig::message, Msg>;
    static_assert(!std::is_void_v<M>, "give the message type: event<Msg>(mbox, handler)");
    using Arg = typename sig::arg;
    if constexpr (std::is_member_function_pointer_v<Fn>) {
        using Self = typename internal::member_class<Fn>::type;
        auto* self = static_cast<Self*>(owner_);
        react(from, message_type_of<M>(), internal::state_reaction::handle, nullptr,
              internal::handler([self, f](internal::envelope* e) {
                  auto call = [&](auto&&... a) { (self->*f)(std::forward<decltype(a)>(a)...); };
                  internal::call_with_payload<M, Arg>(call, e);
              }));
    } else {
        react(from, message_type_of<M>(), internal::state_reaction::handle, nullptr,
              internal::handler([fn = Fn(std::forward<F>(f))](internal::envelope* e) mutable {
                  internal::call_with_payload<M, Arg>(fn, e);
              }));
    }
    return *this;
}

template <class Msg>
state& state::suppress(const mbox& from) {
    react(from, message_type_of<Msg>(), internal::state_reaction::suppress, nullptr, internal::handler());
    return *this;
}

template <class Msg>
state& state::transfer_to_state(const mbox& from, const state& target) {
    react(from, message_type_of<Msg>(), internal::state_reaction::transfer, &target, internal::handler());
    return *this;
}

template <class Msg>
state& state::just_switch_to(const mbox& from, const state& target) {
    react(from, message_type_of<Msg>(), internal::state_reaction::switch_to, &target, internal::handler());
    return *this;
}

template <class Msg>
bool state::unsubscribe(const mbox& from) {
    return owner_->remove_state_reaction(from, message_type_of<Msg>(), *this);
}

}  // namespace mailroom
