#include <mailroom/agent/state.hpp>

#include <mailroom/agent/runtime.hpp>
#include <mailroom/agent/state_machine.hpp>

#include <algorithm>

namespace mailroom {
namespace internal {

namespace {

state& mut(const state& s) noexcept { return const_cast<state&>(s); }  // the agent's own states

const char* reaction_name(state_reaction r) noexcept {
    switch (r) {
        case state_reaction::handle: return "subscription";
        case state_reaction::suppress: return "suppress";
        case state_reaction::transfer: return "transfer_to_state";
        case state_reaction::switch_to: return "just_switch_to";
    }
    return "reaction";
}

// Enter and exit handlers are noexcept by contract: a change of state half done has no state
// to fall back to, so one that throws ends the process here (std::terminate), not later.
void run_hook(const std::function<void()>& f) noexcept {
    if (f) f();
}

}  // namespace

agent_states::agent_states(agent& a, context_core& c)
    : owner(a), core(c), default_state(a, state::default_tag{}), current(&default_state) {}

std::string agent_states::describe() const { return "agent '" + agent_display_name(core) + "'"; }

state_slot* agent_states::find_slot(std::uint64_t mbox_id, message_type type) noexcept {
    for (auto& s : slots)
        if (!s->removed && s->mbox_id == mbox_id && s->type == type) return s.get();
    return nullptr;
}

const state_action* agent_states::reaction_in(const state_slot& slot, const state* s) const noexcept {
    for (; s; s = s->parent_)
        for (const auto& a : slot.actions)
            if (a->in == s && !a->removed) return a.get();
    return nullptr;
}

const state* agent_states::resolve(const state& target) const {
    const state* s = &target;
    while (s->has_children_) {
        if (s->history_ == state_history::deep && s->last_leaf_)
            s = s->last_leaf_;  // a leaf when it was recorded; the loop goes on if it has sub-states since
        else if (s->history_ == state_history::shallow && s->last_child_)
            s = s->last_child_;
        else if (s->initial_)
            s = s->initial_;
        else
            throw state_error(describe() + ": state '" + s->path() +
                              "' has sub-states but no initial sub-state to enter (declare one with "
                              "{.initial = true})");
    }
    return s;
}

void agent_states::throw_loop(const state_slot& slot, const std::vector<const state*>& seen,
                              const state* again) const {
    std::string chain;
    for (const state* s : seen) {
        chain.append(1, '\'').append(s->path()).append("' -> ");
    }
    chain.append(1, '\'').append(again->path()).append(1, '\'');
    throw state_error(describe() + ": transfer_to_state of " + readable_name(slot.type) + " loops: " + chain);
}

void agent_states::dispatch(state_slot& slot, envelope* e) {
    ++dispatching;
    struct leave {
        agent_states& m;
        ~leave() {
            if (--m.dispatching == 0 && m.sweep_due) m.sweep();
        }
    } leaving{*this};

    const state_action* a = reaction_in(slot, current.load(std::memory_order_relaxed));
    if (a && a->reaction == state_reaction::transfer) [[unlikely]] {
        // The chain of transfers is followed first without changing state, so that a loop is
        // refused before any exit or enter handler runs (a loop never ends otherwise).
        std::vector<const state*> seen{current.load(std::memory_order_relaxed)};
        for (const state_action* t = a; t && t->reaction == state_reaction::transfer;) {
            const state* to = resolve(*t->target);
            if (std::find(seen.begin(), seen.end(), to) != seen.end()) throw_loop(slot, seen, to);
            seen.push_back(to);
            t = reaction_in(slot, to);
        }
        // Then it is taken. Enter and exit handlers cannot change state, so it goes as checked,
        // save for history the exits update on the way: still refused at the first repeat.
        seen.assign(1, current.load(std::memory_order_relaxed));
        while (a && a->reaction == state_reaction::transfer) {
            change(*a->target);
            const state* now = current.load(std::memory_order_relaxed);
            if (std::find(seen.begin(), seen.end(), now) != seen.end()) throw_loop(slot, seen, now);
            seen.push_back(now);
            a = reaction_in(slot, now);
        }
    }
    if (!a || a->reaction == state_reaction::suppress) {
        core.decline();  // counted ignored, as a message nobody subscribed to
        return;
    }
    if (a->reaction == state_reaction::switch_to) {
        change(*a->target);
        return;
    }
    const_cast<handler&>(a->fn)(e);
}

void agent_states::sweep() noexcept {
    sweep_due = false;
    for (auto& s : slots)
        s->actions.erase(std::remove_if(s->actions.begin(), s->actions.end(), [](const auto& a) { return a->removed; }),
                         s->actions.end());
    slots.erase(std::remove_if(slots.begin(), slots.end(), [](const auto& s) { return s->removed; }), slots.end());
}

void agent_states::change(const state& target) {
    if (target.owner_ != &owner)
        throw state_error(describe() + ": change_state to state '" + target.path() + "' of " +
                          (target.owner_ ? "agent '" + target.owner_->name() + "'" : std::string("no agent")));
    if (current_context() != &core)
        throw state_error(describe() + ": change_state to '" + target.path() +
                          "' outside the agent's own context (its configure(), on_start(), handlers, on_finish() "
                          "and timers)");
    const state* from = current.load(std::memory_order_relaxed);
    if (changing)
        throw state_error(describe() + ": change_state to '" + target.path() + "' from an enter or exit handler (of '" +
                          from->path() + "')");
    const state* leaf = resolve(target);
    if (leaf == from) return;

    // The lowest common ancestor (null when they are under different top-level states).
    const state* a = from;
    const state* b = leaf;
    while (a && a->depth_ > b->depth_) a = a->parent_;
    while (b && b->depth_ > (a ? a->depth_ : 0)) b = b->parent_;
    while (a != b) {
        a = a->parent_;
        b = b->parent_;
    }
    const state* common = a;

    changing = true;
    struct done {
        bool& changing;
        ~done() { changing = false; }
    } finishing{changing};

    // Exit from the innermost state up to (not including) the common ancestor. While a state's
    // exit handler runs, it is still the current one.
    for (const state* s = from; s != common; s = s->parent_) {
        state& m = mut(*s);
        m.entry_ = 0;  // its time limit, even one whose callback is queued, never switches now
        if (m.limit_timer_) m.limit_timer_.destroy();
        run_hook(m.exit_);
        if (s->parent_) current.store(s->parent_, std::memory_order_release);
    }
    // Enter from below the common ancestor down to the new innermost state.
    const state* path[state::max_depth];
    std::size_t n = 0;
    for (const state* s = leaf; s != common; s = s->parent_) path[n++] = s;
    while (n > 0) {
        state& m = mut(*path[--n]);
        current.store(&m, std::memory_order_release);
        start_limit(m);
        run_hook(m.enter_);
    }
    // History: every ancestor remembers the way to where the agent is now.
    for (const state* s = leaf; s->parent_; s = s->parent_) {
        mut(*s->parent_).last_child_ = &mut(*s);
        mut(*s->parent_).last_leaf_ = &mut(*leaf);
    }
}

void agent_states::start_limit(state& s) {
    if (!s.limit_target_) return;
    const std::uint64_t entry = ++entries;
    s.entry_ = entry;
    s.limit_timer_ = event_handle(owner.make_timer(s.limit_, std::chrono::nanoseconds(0),
                                                   timer_callback([this, &s, entry] { limit_reached(s, entry); })));
}

void agent_states::limit_reached(state& s, std::uint64_t entry) {
    // Leaving the state destroyed the timer, which refuses a fire already queued; the entry is
    // checked as well, so that a fire of an earlier stay never cuts a later one short.
    if (s.entry_ != entry) return;
    change(*s.limit_target_);
}

}  // namespace internal

// ---- state ----

state::state(agent& owner, default_tag) : owner_(&owner), name_("default"), is_default_(true) {}

state::state(agent& owner, std::string name, state_options opts)
    : owner_(&owner), name_(std::move(name)), history_(opts.history) {
    if (opts.initial)
        throw state_error("agent '" + owner.name() + "': state '" + name_ +
                          "' is top-level: it has no parent to be the initial sub-state of");
    owner.states();
}

state::state(state& parent, std::string name, state_options opts)
    : owner_(parent.owner_), parent_(&parent), name_(std::move(name)), history_(opts.history) {
    if (parent.is_default_)
        throw state_error("agent '" + owner_->name() + "': state '" + name_ +
                          "' cannot be a sub-state of the default state (it has none)");
    if (parent.depth_ + 1u >= max_depth)
        throw state_error("agent '" + owner_->name() + "': state '" + path() + "' would be nested " +
                          std::to_string(parent.depth_ + 2u) + " levels deep (at most " + std::to_string(max_depth) +
                          ")");
    if (opts.initial && parent.initial_)
        throw state_error("agent '" + owner_->name() + "': state '" + parent.path() +
                          "' would have two initial sub-states: '" + parent.initial_->name_ + "' and '" + name_ + "'");
    depth_ = static_cast<std::uint8_t>(parent.depth_ + 1);
    if (opts.initial) parent.initial_ = this;
    parent.has_children_ = true;
}

state::~state() = default;

std::string state::path() const {
    std::size_t size = 0;
    for (const state* s = this; s; s = s->parent_) size += s->name_.size() + 1;
    std::string out(size - 1, '.');
    std::size_t end = out.size();
    for (const state* s = this; s; s = s->parent_) {
        end -= s->name_.size();
        out.replace(end, s->name_.size(), s->name_);
        if (end > 0) --end;
    }
    return out;
}

state& state::time_limit(std::chrono::nanoseconds limit, const state& target) {
    if (target.owner_ != owner_)
        throw state_error("agent '" + owner_->name() + "': state '" + path() + "': time_limit to state '" +
                          target.path() + "' of another agent");
    if (limit.count() < 0)
        throw usage_error("agent '" + owner_->name() + "': state '" + path() + "': a negative time_limit");
    limit_ = limit;
    limit_target_ = limit.count() == 0 ? nullptr : &target;
    return *this;
}

void state::react(const mbox& from, message_type type, internal::state_reaction r, const state* target,
                  internal::handler h) {
    owner_->add_state_reaction(from, type, *this, r, target, std::move(h));
}

// ---- the agent's side ----

internal::agent_states& agent::states() {
    using namespace internal;
    if (agent_states* m = states_.load(std::memory_order_relaxed)) [[likely]]
        return *m;
    context_core& core = *core_;
    // Plain subscriptions made before the first state move into the default state: their table
    // entries now dispatch over a slot each. A handler that runs now may be one of them, and it
    // lives in its entry: that case is refused.
    std::size_t plain = 0;
    for (auto* list : {&core.table, core.added.get()})
        if (list)
            for (auto& e : *list) plain += (e.mbox_id != 0 && e.fn && !e.obj) ? 1 : 0;
    if (plain > 0 && core.dispatching)
        throw state_error("agent '" + agent_display_name(core) +
                          "': its first state is declared from a handler while it has plain subscriptions "
                          "(declare states as members of the agent or in configure())");
    auto m = std::make_unique<agent_states>(*this, core);
    m->slots.reserve(plain);
    for (auto* list : {&core.table, core.added.get()}) {
        if (!list) continue;
        for (auto& e : *list) {
            if (e.mbox_id == 0 || !e.fn || e.obj) continue;
            auto slot = std::make_unique<state_slot>();
            slot->mbox_id = e.mbox_id;
            slot->type = e.type;
            auto a = std::make_unique<state_action>();
            a->in = &m->default_state;
            slot->actions.push_back(std::move(a));
            m->slots.push_back(std::move(slot));
        }
    }
    // Nothing throws from here on.
    std::size_t i = 0;
    agent_states* mp = m.get();
    for (auto* list : {&core.table, core.added.get()}) {
        if (!list) continue;
        for (auto& e : *list) {
            if (e.mbox_id == 0 || !e.fn || e.obj) continue;
            state_slot* slot = mp->slots[i++].get();
            slot->actions.front()->fn = std::move(e.fn);
            e.fn = handler([mp, slot](envelope* x) { mp->dispatch(*slot, x); });
        }
    }
    states_.store(m.release(), std::memory_order_release);
    return *mp;
}

state& agent::default_state() { return states().default_state; }

void agent::change_state(const state& target) {
    if (internal::current_context() != core_)
        throw state_error("agent '" + internal::agent_display_name(*core_) + "': change_state to '" + target.path() +
                          "' outside the agent's own context (its configure(), on_start(), handlers, on_finish() "
                          "and timers)");
    states().change(target);
}

std::string agent::current_state_path() const {
    internal::agent_states* m = states_.load(std::memory_order_acquire);
    if (!m) return "default";
    return m->current.load(std::memory_order_acquire)->path();
}

bool agent::is_in(const state& s) const noexcept {
    internal::agent_states* m = states_.load(std::memory_order_acquire);
    if (!m) return false;
    for (const state* c = m->current.load(std::memory_order_acquire); c; c = c->parent())
        if (c == &s) return true;
    return false;
}

void agent::add_state_reaction(const mbox& from, message_type type, const state& in, internal::state_reaction r,
                               const state* target, internal::handler h) {
    using namespace internal;
    context_core& core = *core_;
    auto describe = [&] {
        return "agent '" + agent_display_name(core) + "': state '" + in.path() + "': " + reaction_name(r) + " of " +
               readable_name(type) + " on " + from.name();
    };
    if (in.owner_ != this) throw state_error(describe() + ": the state belongs to agent '" + in.owner_->name() + "'");
    if (target && target->owner_ != this)
        throw state_error(describe() + ": its target '" + target->path() + "' belongs to agent '" +
                          target->owner_->name() + "'");
    if (current_context() != &core)
        throw subscription_error(describe() + " made outside the agent's configure() and handlers");
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    agent_states& m = states();
    state_slot* slot = m.find_slot(from.id(), type);
    if (slot)
        for (auto& a : slot->actions)
            if (a->in == &in && !a->removed) throw subscription_error(describe() + ": already subscribed in this state");
    auto action = std::make_unique<state_action>();
    action->in = &in;
    action->reaction = r;
    action->target = target;
    action->fn = std::move(h);
    if (slot) {
        slot->actions.push_back(std::move(action));
        return;
    }
    auto fresh = std::make_unique<state_slot>();
    fresh->mbox_id = from.id();
    fresh->type = type;
    fresh->actions.push_back(std::move(action));
    m.slots.reserve(m.slots.size() + 1);  // so that the push_back below cannot throw
    state_slot* s = fresh.get();
    add_table_entry(from, type, handler([mp = &m, s](envelope* e) { mp->dispatch(*s, e); }));
    m.slots.push_back(std::move(fresh));
}

bool agent::remove_state_reaction(const mbox& from, message_type type, const state& in) {
    using namespace internal;
    context_core& core = *core_;
    if (current_context() != &core)
        throw subscription_error("agent '" + agent_display_name(core) + "': state '" + in.path() + "': unsubscribing from " +
                                 readable_name(type) + " on " + from.name() + " outside the agent's configure() and handlers");
    agent_states* m = states_.load(std::memory_order_relaxed);
    if (!m || !from) return false;
    state_slot* slot = m->find_slot(from.id(), type);
    if (!slot) return false;
    auto it = std::find_if(slot->actions.begin(), slot->actions.end(),
                           [&](const auto& a) { return a->in == &in && !a->removed; });
    if (it == slot->actions.end()) return false;
    // While a dispatch runs, the handler running may be this one (it lives in the action).
    if (m->dispatching > 0) {
        (*it)->removed = true;
        m->sweep_due = true;
    } else {
        slot->actions.erase(it);
    }
    const bool left = std::any_of(slot->actions.begin(), slot->actions.end(), [](const auto& a) { return !a->removed; });
    if (!left) {
        remove_table_entry(from, type);
        slot->removed = true;
        m->sweep_due = true;
        if (m->dispatching == 0) m->sweep();
    }
    return true;
}

}  // namespace mailroom
