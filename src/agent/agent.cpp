#include <mailroom/core/error.hpp>

#include <mailroom/agent/runtime.hpp>
#include <mailroom/agent/state_machine.hpp>
#include <mailroom/core/handle_access.hpp>

#include <algorithm>
#include <cxxabi.h>

namespace mailroom {
namespace internal {

namespace {
MAILROOM_FAST_TLS thread_local context_core* tls_constructing = nullptr;
}  // namespace

context_core*& constructing_agent() noexcept { return tls_constructing; }

std::string agent_display_name(const context_core& c) {
    if (!c.name.empty()) return c.name.str();
    std::string type = "agent";
    if (const agent* a = user_of(c)) {
        int status = 0;
        char* d = abi::__cxa_demangle(typeid(*a).name(), nullptr, nullptr, &status);
        if (status == 0 && d) type = d;
        std::free(d);
    }
    return type + "#" + std::to_string(c.id);
}

}  // namespace internal

// ---- agent ----

const char* to_string(dereg_reason r) noexcept {
    switch (r) {
        case dereg_reason::normal: return "normal";
        case dereg_reason::shutdown: return "shutdown";
        case dereg_reason::parent_deregistered: return "parent_deregistered";
        case dereg_reason::handler_exception: return "handler_exception";
        case dereg_reason::user_defined: break;
    }
    return "user_defined";
}

agent::agent() : core_(internal::tls_constructing) {
    if (!core_) throw usage_error("an agent can only be constructed by coop::make_agent");
    internal::tls_constructing = nullptr;  // a member agent constructed inside must not take it
}

agent::~agent() { delete states_.load(std::memory_order_relaxed); }

const mbox& agent::direct_mbox() const {
    if (!core_->direct_made.load(std::memory_order_acquire)) [[unlikely]]
        internal::make_direct_mbox(*core_);
    return core_->direct;
}

environment_stats agent::env_stats() const { return core_->env->stats(); }

std::string agent::name() const { return internal::agent_display_name(*core_); }

environment& agent::env() const noexcept { return *core_->env->owner; }

void agent::set_exception_policy(exception_policy p) noexcept { core_->policy = p; }

void agent::set_name(std::string name) {
    // Made before and freed after the lock (pending_lock: the teardown watch may be reading the
    // name, describe_if).
    auto n = name.empty() ? std::unique_ptr<std::string>() : std::make_unique<std::string>(std::move(name));
    std::lock_guard g(core_->pending_lock);
    core_->name.swap(n);
}

coop_handle agent::cooperation() const {
    auto* c = static_cast<internal::coop_impl*>(core_->group);
    if (!c) return coop_handle();
    return coop_handle(c->shared_from_this());
}

void agent::deregister_coop(dereg_reason reason) noexcept {
    if (auto* c = static_cast<internal::coop_impl*>(core_->group)) c->deregister(reason);
}

void agent::stop_environment() noexcept { core_->env->stop(); }

internal::context_ref internal::ref_of(const agent& a) noexcept {
    context_core* c = agent_access::core(a);
    return {c->arena->shared_from_this(), c, c->gen.load(std::memory_order_relaxed), true};
}

internal::handle_target* agent::make_timer(std::chrono::nanoseconds delay, std::chrono::nanoseconds period,
                                           internal::handler fn) {
    return internal::add_timer(internal::ref_of(*this), internal::agent_display_name(*core_), delay, period,
                               std::move(fn));
}

internal::handle_target* agent::make_fd_watch(int fd, fd_events interest, fd_trigger trigger, internal::handler fn) {
    return internal::add_fd_watch(internal::ref_of(*this), internal::agent_display_name(*core_), fd, interest, trigger,
                                  std::move(fn));
}

internal::handle_target* agent::make_inbox(message_type type, internal::handler fn, mbox& address,
                                           std::shared_ptr<const internal::filter_predicate> filter) {
    return internal::add_inbox(internal::ref_of(*this), internal::agent_display_name(*core_), type, std::move(fn),
                               address, {}, std::move(filter));
}

internal::handle_target* agent::make_chain_subscription(const mchain& from, internal::mchain_handlers hs) {
    return internal::add_mchain_subscription(internal::ref_of(*this), internal::agent_display_name(*core_), from,
                                             std::move(hs));
}

void agent::add_subscription(const mbox& from, message_type type, internal::handler h) {
    // An agent with states subscribes its plain handlers in its default state.
    if (internal::agent_states* m = states_.load(std::memory_order_relaxed)) [[unlikely]] {
        add_state_reaction(from, type, m->default_state, internal::state_reaction::handle, nullptr, std::move(h));
        return;
    }
    add_table_entry(from, type, std::move(h));
}

void agent::add_table_entry(const mbox& from, message_type type, internal::handler h) {
    using namespace internal;
    context_core& core = *core_;
    auto describe = [&] {
        return "agent '" + agent_display_name(core) + "': subscription to " + readable_name(type) + " on " + from.name();
    };
    if (current_context() != &core)
        throw subscription_error(describe() + " made outside the agent's configure() and handlers");
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    mbox_impl& m = *internal::impl_of(from);
    if (&m.env() != core.env) throw subscription_error(describe() + ": the mbox belongs to another environment");
    if (m.kind() == mbox_kind::mchain)
        throw subscription_error(describe() + ": it is an mchain (take from it with subscribe(chain, handlers...))");
    if (m.kind() == mbox_kind::direct && !(core.direct_made.load(std::memory_order_acquire) && m.id() == core.direct.id())) {
        // An inbox has a direct address too, but only its own callback receives: ask, never assume.
        if (static_cast<internal::direct_mbox&>(m).target().kind == delivery_kind::inbox)
            throw subscription_error(describe() +
                                     ": it is the address of an inbox (only that inbox's callback receives what is "
                                     "sent to it)");
        throw subscription_error(describe() + ": it is another agent's direct mbox (only its owner may subscribe)");
    }
    bool dup = core.find(m.id(), type) != nullptr;
    if (core.added)
        for (auto& s : *core.added) dup = dup || (s.mbox_id == m.id() && s.type == type);
    if (dup) throw subscription_error(describe() + ": already subscribed");

    table_entry entry{m.id(), type, std::move(h), nullptr, nullptr};
    auto& list = core.list_for_adding();
    list.reserve(list.size() + 1);  // so that the push_back below cannot throw
    if (m.kind() == mbox_kind::mpmc) {
        entry.source = internal::impl_of(from);
        static_cast<mpmc_mbox&>(m).add_subscriber(
            route{&core, core.gen.load(std::memory_order_relaxed), delivery_kind::fanout, m.id()}, type);
    }
    list.push_back(std::move(entry));
}

void agent::set_limit(message_type type, std::shared_ptr<const internal::limit_spec> spec) {
    internal::set_limit(internal::ref_of(*this), internal::agent_display_name(*core_), type, std::move(spec));
}

std::vector<limit_stats> limit_stats_of(const agent& a) { return internal::limit_stats_of(internal::ref_of(a)); }

bool agent::remove_subscription(const mbox& from, message_type type) {
    using namespace internal;
    if (agent_states* m = states_.load(std::memory_order_relaxed)) [[unlikely]]
        return remove_state_reaction(from, type, m->default_state);
    return remove_table_entry(from, type);
}

bool agent::remove_table_entry(const mbox& from, message_type type) {
    using namespace internal;
    context_core& core = *core_;
    if (current_context() != &core)
        throw subscription_error("agent '" + agent_display_name(core) + "': unsubscribing from " + readable_name(type) +
                                 " on " + from.name() + " outside the agent's configure() and handlers");
    if (!from) return false;
    table_entry e = core.take_entry(from.id(), type);
    if (e.mbox_id == 0) return false;
    if (e.source)
        static_cast<mpmc_mbox&>(*e.source).remove_subscriber(
            route{&core, core.gen.load(std::memory_order_relaxed), delivery_kind::fanout, e.mbox_id}, type);
    if (e.obj) e.obj->release();
    return true;
}

namespace {

// The filters an agent's filter on `from` for `type` lives in: its direct mbox's, or those of
// its listing on an MPMC mbox (made when `make`). Empty when there is no listing to filter.
internal::filter_ref agent_filters(internal::context_core& core, const mbox& from, message_type type,
                                   const char* verb, bool make) {
    using namespace internal;
    auto describe = [&] {
        return "agent '" + agent_display_name(core) + "': " + verb + " the delivery filter for " +
               readable_name(type) + " on " + from.name();
    };
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    mbox_impl& m = *internal::impl_of(from);
    if (&m.env() != core.env) throw subscription_error(describe() + ": the mbox belongs to another environment");
    if (m.kind() == mbox_kind::direct) {
        if (!(core.direct_made.load(std::memory_order_acquire) && m.id() == core.direct.id())) {
            if (static_cast<direct_mbox&>(m).target().kind == delivery_kind::inbox)
                throw subscription_error(describe() + ": it is the address of an inbox (give its filter to add_inbox)");
            throw subscription_error(describe() + ": it is another agent's direct mbox (only its owner filters it)");
        }
        auto& d = static_cast<direct_mbox&>(m);
        if (!make && !d.has_filters()) return {};
        filter_slot& f = d.filters("agent '" + agent_display_name(core) + "'");
        f.add_ref();
        return filter_ref(&f);
    }
    // The listing add_subscription made: the agent's life, under the mbox's id.
    const route r{&core, core.life, delivery_kind::fanout, m.id()};
    auto& topic = static_cast<mpmc_mbox&>(m);
    filter_ref f = topic.filters_of(r, type, "agent '" + agent_display_name(core) + "'", make);
    if (!f && make)
        throw subscription_error(describe() +
                                 ": the agent is not subscribed to it (a filter on an MPMC mbox belongs to a "
                                 "subscription: subscribe first)");
    return f;
}

}  // namespace

void agent::set_filter(const mbox& from, std::shared_ptr<const internal::filter_predicate> pred) {
    const message_type type = pred->type();
    internal::filter_ref f = agent_filters(*core_, from, type, "setting", true);
    if (!f->set(std::move(pred)))
        throw subscription_error("agent '" + internal::agent_display_name(*core_) +
                                 "': setting the delivery filter for " + readable_name(type) + " on " + from.name() +
                                 ": the subscription ended (or the agent finished)");
}

bool agent::drop_filter(const mbox& from, message_type type) {
    internal::filter_ref f = agent_filters(*core_, from, type, "dropping", false);
    return f && f->drop(type);
}

}  // namespace mailroom
