#pragma once
// The states of one agent (agent::states_, made when its first state is declared): where it is,
// what each state does with each (mbox, message type), and the changes of state.
//
// An agent without states has no machine and its table entries call its handlers directly. An
// agent with states has one table entry per (mbox, type) as before, whose handler is the
// machine's dispatch over a slot: the reactions of each state to that (mbox, type), looked up
// from the innermost state up through its ancestors. A message no state reacts to (or that a
// state suppresses) is declined: execute_message counts it ignored.
//
// Threads: everything here belongs to the agent's context, except `current`, which any thread
// reads (agent::current_state_path, agent::is_in); the names and parents of states are constant
// once declared.

#include <mailroom/agent/state.hpp>
#include <mailroom/session/context.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mailroom::internal {

/// What one state does with messages of one slot.
struct state_action {
    const state* in = nullptr;
    state_reaction reaction = state_reaction::handle;
    bool removed = false;  // taken out while a dispatch ran (its handler may be the one running)
    const state* target = nullptr;
    handler fn;
};

/// What an agent does with messages of one type from one mbox, state by state; the handler of
/// its table entry for (mbox, type) dispatches over it.
struct state_slot {
    std::uint64_t mbox_id = 0;
    message_type type{};
    bool removed = false;  // its last action was taken out while a dispatch ran
    // Each action on the heap: a handler that runs may add reactions to its own slot.
    std::vector<std::unique_ptr<state_action>> actions;
};

class agent_states {
public:
    agent_states(agent& a, context_core& c);

    /// The handler of a stateful agent's table entry: finds the reaction of the current state
    /// (or the nearest ancestor that has one) and applies it.
    void dispatch(state_slot& slot, envelope* e);
    /// The agent's change of state (agent::change_state, a time limit, a reaction).
    void change(const state& target);
    /// The innermost state `target` leads to: itself, or down through history and initial
    /// sub-states. Raises state_error for a composite state without an initial sub-state.
    const state* resolve(const state& target) const;
    state_slot* find_slot(std::uint64_t mbox_id, message_type type) noexcept;
    /// Takes out the slots and actions removed while a dispatch ran.
    void sweep() noexcept;

    std::string describe() const;

    agent& owner;
    context_core& core;
    state default_state;
    std::atomic<const state*> current;
    std::vector<std::unique_ptr<state_slot>> slots;
    int dispatching = 0;     // dispatches running (nested: a handler's change of state runs none, but be exact)
    bool sweep_due = false;  // an action or slot was marked removed
    bool changing = false;   // enter and exit handlers run
    std::uint64_t entries = 0;  // numbers the entries into states that have a time limit

private:
    const state_action* reaction_in(const state_slot& slot, const state* s) const noexcept;
    void start_limit(state& s);
    void limit_reached(state& s, std::uint64_t entry);
    [[noreturn]] void throw_loop(const state_slot& slot, const std::vector<const state*>& seen,
                                 const state* again) const;
};

}  // namespace mailroom::internal
