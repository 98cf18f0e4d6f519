#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>

#include <mailroom/queue/futex.hpp>

#include <mailroom/session/session.hpp>

#include <mailroom/agent/runtime.hpp>

#include <algorithm>
#include <cxxabi.h>

namespace mailroom {
namespace internal {

namespace {
MAILROOM_FAST_TLS thread_local agent_core* tls_constructing = nullptr;
}  // namespace

// A tiny lock for the pre-start list: taken only before an agent starts (and by senders that
// raced with its start), never on the running path.
struct spin_guard {
    explicit spin_guard(std::atomic<bool>& f) noexcept : flag(f) {
        while (flag.exchange(true, std::memory_order_acquire))
            while (flag.load(std::memory_order_relaxed)) cpu_relax();
    }
    ~spin_guard() { flag.store(false, std::memory_order_release); }
    std::atomic<bool>& flag;
};

namespace {

const char* policy_name(exception_policy p) noexcept {
    switch (p) {
        case exception_policy::abort: return "abort";
        case exception_policy::deregister_coop: return "deregister_coop";
        case exception_policy::log_and_continue: return "log_and_continue";
        case exception_policy::inherit: break;
    }
    return "inherit";
}
}  // namespace

agent_core*& current_agent() noexcept {
    MAILROOM_FAST_TLS thread_local agent_core* core = nullptr;
    return core;
}

agent_core*& constructing_agent() noexcept { return tls_constructing; }

namespace {
// A call to run on an agent's context (a coroutine resumed there): dropped when the agent is
// gone by then (another generation) or its queue is discarded.
struct agent_call final : demand {
    agent_core* target;
    std::uint32_t gen;
    posted_call* call;
};

void execute_agent_call(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<agent_call*>(base);
    agent_core* core = d->target;
    posted_call* c = d->call;
    const std::uint32_t gen = d->gen;
    d->~agent_call();
    pool_free(d, sizeof(agent_call));
    if (mode == demand_mode::run && core->gen.load(std::memory_order_acquire) == gen) {
        core->dispatching = true;
        run_guarded(
            *core, "resumed coroutine", message_type{}, [](void* p) { static_cast<posted_call*>(p)->call(static_cast<posted_call*>(p)); },
            c);
        core->dispatching = false;
        if (core->has_dead || !core->added.empty()) core->settle_subscriptions();
    }
    c->drop(c);
}
}  // namespace

agent_ref current_agent_ref() noexcept {
    agent_core* a = current_agent();
    if (!a) return {};
    return {a, a->gen.load(std::memory_order_relaxed)};
}

void post_to_agent(agent_ref a, posted_call* c) noexcept {
    auto* core = static_cast<agent_core*>(a.core);
    void* block;
    try {
        block = pool_allocate(sizeof(agent_call));
    } catch (...) {
        c->drop(c);
        return;
    }
    auto* d = new (block) agent_call;
    d->execute = &execute_agent_call;
    d->target = core;
    d->gen = a.gen;
    d->call = c;
    {
        // From before the gate check until the call is queued, as a send's (env_core.hpp): the
        // teardown finishes every agent, closes intake and waits for this, so a call that found
        // the gate open is queued before the dispatchers stop and is run or discarded before
        // join() returns, never left in a stopped worker's queue until the core is freed. The
        // scope ends before a call to a gone agent is dropped: what it holds is user code
        // (a coroutine frame), which may wait for the environment.
        send_scope posting(core->rt->env->counters());
        if (core->push_unless_finished(d)) [[likely]] return;
    }
    d->execute(d, demand_mode::run);  // finds a newer generation: dropped
}

bool agent_core::push_slow_unless_finished(demand* d) noexcept {
    std::uint8_t s;
    {
        spin_guard g(pending_lock);
        s = gate.load(std::memory_order_acquire);
        if (s == gate_closed) {
            d->next.store(nullptr, std::memory_order_relaxed);
            if (pending_tail)
                pending_tail->next.store(d, std::memory_order_relaxed);
            else
                pending_head = d;
            pending_tail = d;
            return true;
        }
    }
    if (s == gate_finished) return false;
    queue.load(std::memory_order_acquire)->push(d);  // opened while we waited; the waiting list went first
    return true;
}

void agent_core::push_slow(demand* d) noexcept {
    if (!push_slow_unless_finished(d)) d->execute(d, demand_mode::run);  // finds a newer generation: counted lost
}

void agent_core::open_gate(demand* start) noexcept {
    spin_guard g(pending_lock);
    event_queue* q = queue.load(std::memory_order_relaxed);
    q->push(start);
    for (demand* d = pending_head; d;) {
        auto* next = static_cast<demand*>(d->next.load(std::memory_order_relaxed));
        q->push(d);
        d = next;
    }
    pending_head = pending_tail = nullptr;
    gate.store(gate_open, std::memory_order_release);
}

void agent_core::close_gate() noexcept {
    demand* list = nullptr;
    {
        spin_guard g(pending_lock);
        gate.store(gate_finished, std::memory_order_release);
        list = pending_head;
        pending_head = pending_tail = nullptr;
    }
    while (list) {
        auto* next = static_cast<demand*>(list->next.load(std::memory_order_relaxed));
        list->execute(list, demand_mode::run);  // the generation moved on before: counted lost
        list = next;
    }
}

void agent_core::settle_subscriptions() noexcept {
    if (has_dead) {
        subs.erase(std::remove_if(subs.begin(), subs.end(), [](const subscription& s) { return s.mbox_id == 0; }),
                   subs.end());
        has_dead = false;
    }
    for (auto& s : added) {
        try {
            subs.push_back(std::move(s));
        } catch (...) {
            fatal("out of memory adding a subscription");
        }
    }
    added.clear();
}

std::string agent_core::display_name() const {
    if (!custom_name.empty()) return custom_name;
    std::string type = "agent";
    if (user) {
        int status = 0;
        char* d = abi::__cxa_demangle(typeid(*user).name(), nullptr, nullptr, &status);
        if (status == 0 && d) type = d;
        std::free(d);
    }
    return type + "#" + std::to_string(id);
}

bool agent_core::describe_if(std::uint64_t agent_id, std::string& out) noexcept {
    spin_guard g(pending_lock);
    if (gate.load(std::memory_order_relaxed) != gate_open || id != agent_id) return false;
    try {
        out = display_name();
    } catch (...) {
        out = "agent #" + std::to_string(agent_id);  // short: no allocation
    }
    return true;
}

exception_policy agent_core::effective_policy() const noexcept {
    if (policy != exception_policy::inherit) return policy;
    if (coop && coop->opts.on_exception != exception_policy::inherit) return coop->opts.on_exception;
    exception_policy p = rt->env->options().on_exception;
    return p == exception_policy::inherit ? exception_policy::abort : p;
}

namespace {
// What happens after a handler threw: logged, counted and handled by the policy. Out of line
// and cold, so that the path of a handler that returns normally builds no string.
[[gnu::noinline, gnu::cold]] void on_handler_failure(agent_core& core, const char* what, message_type type,
                                                     const char* failure) noexcept {
    env_core& env = *core.rt->env;
    thread_counters::bump(env.counters().exceptions);
    exception_policy p = core.effective_policy();
    std::string text;
    try {
        text = "agent '" + core.display_name() + "': " + what;
        if (type.info()) text += " for " + readable_name(type);
        text += std::string(" threw: ") + failure + " (policy: " + policy_name(p) + ")";
    } catch (...) {
        text = "a handler threw (and formatting the report ran out of memory)";
    }
    env.log(text);
    switch (p) {
        case exception_policy::deregister_coop:
            if (core.coop) core.coop->deregister(dereg_reason::handler_exception);
            break;
        case exception_policy::log_and_continue: break;
        default: fatal(text.c_str());
    }
}
}  // namespace

bool run_guarded(agent_core& core, const char* what, message_type type, void (*fn)(void*), void* arg) noexcept {
    agent_core*& cur = current_agent();
    agent_core* prev = cur;
    env_core*& cur_env = current_env();
    env_core* prev_env = cur_env;
    cur = &core;
    cur_env = core.rt->env;
    note_running(running_agent | core.id, type.info());
    const char* failure = nullptr;
    std::string text;  // only for an exception's what(), which must outlive the catch
    try {
        fn(arg);
    } catch (const std::exception& ex) {
        try {
            text = ex.what();
            failure = text.c_str();
        } catch (...) {
            failure = "an exception (its message could not be copied)";
        }
    } catch (...) {
        failure = "an exception not derived from std::exception";
    }
    cur = prev;
    cur_env = prev_env;
    if (!failure) [[likely]]
        return true;
    on_handler_failure(core, what, type, failure);
    return false;
}

// ---- the runtime's agent records ----

agent_core* agent_runtime::allocate_core() {
    std::lock_guard g(core_lock_);
    if (!free_cores_) {
        auto chunk = std::make_unique<agent_core[]>(chunk_size_);
        for (std::size_t i = 0; i < chunk_size_; ++i) {
            chunk[i].rt = this;
            chunk[i].free_next = free_cores_;
            free_cores_ = &chunk[i];
        }
        core_chunks_.push_back(std::move(chunk));
        chunk_size_ = std::min<std::size_t>(chunk_size_ * 2, 4096);
    }
    agent_core* c = free_cores_;
    free_cores_ = c->free_next;
    c->free_next = nullptr;
    return c;
}

void agent_runtime::free_core(agent_core* c) noexcept {
    // The generation already moved on; the rest is reset for the next agent. The atomics stay
    // as they are for stale senders: gate is finished until the next owner resets it.
    c->user = nullptr;
    c->coop = nullptr;
    c->subs.clear();
    c->added.clear();
    c->dispatching = false;
    c->has_dead = false;
    c->direct.reset();
    c->direct_handle = mbox();
    c->binder.reset();
    c->bound = {};
    c->finish = nullptr;
    c->policy = exception_policy::inherit;
    c->custom_name.clear();
    std::lock_guard g(core_lock_);
    c->free_next = free_cores_;
    free_cores_ = c;
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

agent::~agent() = default;

const mbox& agent::direct_mbox() const noexcept { return core_->direct_handle; }

environment_stats agent::env_stats() const { return core_->rt->env->stats(); }

std::string agent::name() const { return core_->display_name(); }

environment& agent::env() const noexcept { return *core_->rt->env->owner; }

void agent::set_exception_policy(exception_policy p) noexcept { core_->policy = p; }

void agent::set_name(std::string name) {
    // Under pending_lock: the teardown watch may be reading the name (describe_if).
    internal::spin_guard g(core_->pending_lock);
    core_->custom_name.swap(name);
}

coop_handle agent::cooperation() const {
    if (!core_->coop) return coop_handle();
    return coop_handle(core_->coop->shared_from_this());
}

void agent::deregister_coop(dereg_reason reason) noexcept {
    if (core_->coop) core_->coop->deregister(reason);
}

void agent::stop_environment() noexcept { core_->rt->env->stop(); }

void agent::add_subscription(const mbox& from, message_type type, internal::handler h) {
    using namespace internal;
    agent_core& core = *core_;
    auto describe = [&] {
        return "agent '" + core.display_name() + "': subscription to " + readable_name(type) + " on " + from.name();
    };
    if (current_agent() != &core)
        throw subscription_error(describe() + " made outside the agent's configure() and handlers");
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    mbox_impl& m = *from.impl();
    if (&m.env() != core.rt->env) throw subscription_error(describe() + ": the mbox belongs to another environment");
    if (m.kind() == mbox_kind::direct) {
        // A session's inbox has a direct address too, but no agent behind it: ask, never assume.
        auto* direct = dynamic_cast<internal::direct_mbox*>(&m);
        if (!direct)
            throw subscription_error(describe() +
                                     ": it is the address of a session's inbox (only that inbox's callback receives "
                                     "what is sent to it)");
        if (direct->core() != &core)
            throw subscription_error(describe() + ": it is another agent's direct mbox (only its owner may subscribe)");
    }
    bool dup = core.find(m.id(), type) != nullptr;
    for (auto& s : core.added) dup = dup || (s.mbox_id == m.id() && s.type == type);
    if (dup) throw subscription_error(describe() + ": already subscribed");

    subscription entry{m.id(), type, nullptr, std::move(h)};
    auto& list = core.dispatching ? core.added : core.subs;
    list.reserve(list.size() + 1);  // so that the push_back below cannot throw
    if (m.kind() == mbox_kind::mpmc) {
        entry.source = from.impl();
        static_cast<mpmc_mbox&>(m).add_subscriber(&core, core.gen.load(std::memory_order_relaxed), type);
    }
    list.push_back(std::move(entry));
}

bool agent::remove_subscription(const mbox& from, message_type type) {
    using namespace internal;
    agent_core& core = *core_;
    if (current_agent() != &core)
        throw subscription_error("agent '" + core.display_name() + "': unsubscribing from " + readable_name(type) +
                                 " on " + from.name() + " outside the agent's configure() and handlers");
    if (!from) return false;
    const std::uint64_t id = from.id();
    auto drop = [&](subscription& s) {
        if (s.source) static_cast<mpmc_mbox&>(*s.source).remove_subscriber(&core, core.gen.load(std::memory_order_relaxed), type);
    };
    for (auto it = core.added.begin(); it != core.added.end(); ++it)
        if (it->mbox_id == id && it->type == type) {
            drop(*it);
            core.added.erase(it);
            return true;
        }
    for (auto it = core.subs.begin(); it != core.subs.end(); ++it)
        if (it->mbox_id == id && it->type == type) {
            drop(*it);
            if (core.dispatching) {
                it->mbox_id = 0;  // the running handler may be this one: free it after it returns
                core.has_dead = true;
            } else {
                core.subs.erase(it);
            }
            return true;
        }
    return false;
}

}  // namespace mailroom
