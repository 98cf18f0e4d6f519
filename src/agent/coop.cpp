#include <mailroom/core/error.hpp>

#include <mailroom/agent/runtime.hpp>
#include <mailroom/core/handle_access.hpp>

#include <algorithm>

namespace mailroom {
namespace internal {

context_core*& constructing_agent() noexcept;
event_object* close_objects(context_core& c) noexcept;
void retire_objects(event_object* list) noexcept;

namespace {
const char runtime_key = 0;

void log_callback_failure(env_core& env, const std::string& what) noexcept {
    try {
        env.log(what);
    } catch (...) {
    }
}

// ---- the agent kind of context ----

std::string agent_name(const context_core& c) { return agent_display_name(c); }

exception_policy agent_policy(const context_core& c) noexcept {
    if (c.policy != exception_policy::inherit) return c.policy;
    auto* coop = static_cast<coop_impl*>(c.group);
    if (coop && coop->opts.on_exception != exception_policy::inherit) return coop->opts.on_exception;
    exception_policy p = c.env->options().on_exception;
    return p == exception_policy::inherit ? exception_policy::abort : p;
}

void agent_deregister(context_core& c) noexcept {
    if (auto* coop = static_cast<coop_impl*>(c.group)) coop->deregister(dereg_reason::handler_exception);
}

std::string agent_where(const context_core& c) {
    auto* coop = static_cast<coop_impl*>(c.group);
    return coop ? " of cooperation '" + coop->name + "'" : std::string();
}

const context_ops agent_ops{&agent_name, &agent_policy, &agent_deregister, &agent_where};

void execute_start(demand* base, demand_mode mode) noexcept {
    context_core* core = context_core::of_start(base);
    if (mode == demand_mode::discard) return;
    run_callback(
        *core, core->gen.load(std::memory_order_relaxed), core, core->own_shut, "on_start", message_type(),
        [](void* p) { agent_access::start(*user_of(*static_cast<context_core*>(p))); }, core);
}

// Leaves every MPMC mbox the agent subscribed to, so that publishers stop queueing for it.
void leave_topics(context_core* core) noexcept {
    const std::uint32_t gen = core->gen.load(std::memory_order_relaxed);
    for (auto* list : {&core->table, core->added.get()})
        if (list)
            for (auto& e : *list)
                if (e.source && e.mbox_id != 0) {
                    static_cast<mpmc_mbox&>(*e.source).remove_subscriber(
                        route{core, gen, delivery_kind::fanout, e.mbox_id}, e.type);
                    e.source.reset();
                }
}

// Undoes an agent: it leaves the topics it subscribed to, its event objects are retired, its
// life ends (so stale demands count themselves lost), it is destroyed and unbound, and its
// record is recycled.
void retire(context_core* core, bool bound) noexcept {
    agent_runtime& rt = agent_runtime::of(*core->env);
    leave_topics(core);  // closes the delivery filters of its subscriptions
    // The direct mbox may outlive the agent: its filters (which may capture the agent) run no
    // more once this returns, and are destroyed here, before the agent is.
    if (core->direct_made.load(std::memory_order_acquire))
        static_cast<direct_mbox&>(*internal::impl_of(core->direct)).close_filters();
    retire_objects(close_objects(*core));
    core->gate.close();
    core->finish_life();
    {
        // The destructor is a callback of the environment: it may run on a thread that is not
        // a worker (a rollback, a cooperation dropped unregistered) and may destroy it.
        env_scope scope(core->env);
        delete user_of(*core);
    }
    core->owner = nullptr;
    if (bound && core->binder) core->binder->release(core->bound, core->group);
    rt.agents_destroyed.fetch_add(1, std::memory_order_release);
    core->arena->recycle(core);
}

void execute_finish(demand* base, demand_mode mode) noexcept {
    context_core* core = context_core::of_end(base);
    auto* c = static_cast<coop_impl*>(core->group);
    // First leave the topics: what is published from now on is not queued for an agent that
    // is finishing (what is already queued behind this demand is counted ignored).
    leave_topics(core);
    if (mode == demand_mode::run)
        run_callback(
            *core, core->gen.load(std::memory_order_relaxed), core, core->own_shut, "on_finish", message_type(),
            [](void* p) { agent_access::finish(*user_of(*static_cast<context_core*>(p))); }, core);
    retire(core, true);
    c->agent_finished();
}
}  // namespace

context_core* agent_runtime::make_agent_context(coop_impl& c, std::shared_ptr<binder_impl> b) {
    context_arena& arena = *contexts.arena;
    context_core* core = arena.allocate();
    try {
        core->ops = &agent_ops;
        core->kind = context_kind::agent;
        core->id = arena.next_id();
        core->group = &c;
        core->binder = std::move(b);
        core->gate.reopen();
        core->life = core->gen.load(std::memory_order_relaxed);
    } catch (...) {
        core->finish_life();
        arena.recycle(core);
        throw;
    }
    core->close_start();
    return core;
}

void make_direct_mbox(context_core& core) {
    // Under pending_lock, which a rename and the start take too: made once, by whichever
    // thread asks first. Its route names the agent's life, not the record's current one, so an
    // mbox made after the agent finished never reaches the record's next life.
    std::lock_guard g(core.pending_lock);
    if (core.direct_made.load(std::memory_order_relaxed)) return;
    core.direct = mbox(std::make_shared<direct_mbox>(core.env->shared_from_this(),
                                                     route{&core, core.life, delivery_kind::direct}, "agent", core.id));
    core.direct_made.store(true, std::memory_order_release);
}

void agent_runtime::abandon_agent_context(context_core* core) noexcept {
    core->finish_life();
    core->arena->recycle(core);
}

agent_runtime& agent_runtime::of(env_core& env) {
    // Made first, outside the extension lock that making this one holds.
    session_runtime& contexts = session_runtime::of(env);
    return env.extension<agent_runtime>(&runtime_key,
                                        [&] { return std::make_unique<agent_runtime>(&env, contexts); });
}

agent_runtime::agent_runtime(env_core* e, session_runtime& s) : env(e), contexts(s) {}

agent_runtime::~agent_runtime() = default;

const agent_runtime* agent_runtime::find(const env_core& env) noexcept {
    return env.find_extension<agent_runtime>(&runtime_key);
}

agent_stats agent_runtime::stats() const noexcept {
    agent_stats s;
    s.agents_created = agents_created.load(std::memory_order_acquire);
    s.agents_destroyed = agents_destroyed.load(std::memory_order_acquire);
    s.coops_registered = coops_registered.load(std::memory_order_acquire);
    s.coops_deregistered = coops_deregistered.load(std::memory_order_acquire);
    return s;
}

void agent_runtime::begin_stop() noexcept {
    std::vector<std::shared_ptr<coop_impl>> roots;
    {
        std::lock_guard g(tree_lock);
        for (auto& [id, c] : coops_)
            if (!c->parent && c->st == coop_impl::state::registered) roots.push_back(c);
    }
    for (auto& c : roots) c->deregister(dereg_reason::shutdown);
}

void agent_runtime::wait_stopped() noexcept {
    std::unique_lock g(tree_lock);
    idle_.wait(g, [&] { return busy_ == 0; });
}

coop_handle agent_runtime::register_coop(std::shared_ptr<coop_impl> c) {
    try {
        std::lock_guard g(tree_lock);
        env->check_not_stopping("registering cooperation", c->name);
        if (c->named && coop_names_.count(c->name))
            throw duplicate_name_error("cooperation '" + c->name + "' is already registered in environment '" +
                                       env->name() + "'");
        if (c->parent && c->parent->st != coop_impl::state::registered)
            throw usage_error("cooperation '" + c->name + "': its parent '" + c->parent->name +
                              "' is not registered (it is being deregistered or is gone)");
        // So that the emplace at commit cannot throw; reserve(size + 1) would rehash on every call.
        if (coops_.size() + 1 > coops_.bucket_count() * coops_.max_load_factor())
            coops_.reserve(2 * coops_.size() + 16);
        if (c->parent) c->parent->children.reserve(c->parent->children.size() + 1);
        if (c->named) coop_names_.emplace(c->name, c->id);  // last: nothing below can throw
        // A registration under way counts as a live child: the parent cannot finish (and be
        // gone) before this one has either committed, and joined its children, or rolled back.
        if (c->parent) ++c->parent->live_children;
        c->st = coop_impl::state::registering;
        ++busy_;
    } catch (...) {
        // Rejected before anything was bound or configured: the agents, which the caller gave
        // up with the coop object, are destroyed here (they would leak otherwise).
        c->destroy_unstarted();
        throw;
    }
    std::size_t bound = 0;
    try {
        if (!c->default_binder) {
            if (c->opts.bind)
                c->default_binder = internal::impl_of(c->opts.bind);
            else
                c->default_binder = env->default_dispatcher()->make_binder();
        }
        // Even with no agent to bind: a binder of another environment is a mistake to report.
        if (!binds_in(*c->default_binder, *env))
            throw_foreign_binder(*c->default_binder, *env, "cooperation '" + c->name + "'");
        context_core* last = nullptr;  // the last agent bound: the next one through the same binder shares it
        for (context_core* core : c->agents) {
            if (!core->binder) core->binder = c->default_binder;
            const bool again = last && last->binder == core->binder;
            if (!again && !binds_in(*core->binder, *env))
                throw_foreign_binder(*core->binder, *env,
                                     "cooperation '" + c->name + "': agent '" + agent_display_name(*core) + "'");
            core->bound = prepare_binding(*core->binder, c.get(), *env, "registering cooperation", c->name,
                                          again ? &last->bound : nullptr);
            last = core;
            core->queue.store(core->bound.queue, std::memory_order_release);
            ++bound;
            core->start_demand.execute = &execute_start;
            core->end_demand.execute = &execute_finish;

            context_core*& cur = current_context();
            env_core*& cur_env = current_env();
            context_core* prev = cur;
            env_core* prev_env = cur_env;
            cur = core;
            cur_env = env;
            try {
                agent_access::configure(*user_of(*core));
            } catch (...) {
                cur = prev;
                cur_env = prev_env;
                throw;
            }
            cur = prev;
            cur_env = prev_env;
        }
    } catch (...) {
        for (std::size_t i = 0; i < c->agents.size(); ++i) {
            context_core* core = c->agents[i];
            if (i >= bound) core->binder.reset();
            retire(core, i < bound);
        }
        c->agents.clear();
        std::shared_ptr<coop_impl> parent_ready;
        {
            std::lock_guard g(tree_lock);
            if (c->named) coop_names_.erase(c->name);
            c->st = coop_impl::state::gone;
            if (c->parent) {
                --c->parent->live_children;
                if (c->parent->ready_to_finish()) parent_ready = c->parent;
            }
            --busy_;
        }
        c->parent.reset();
        if (parent_ready) parent_ready->start_finishing();  // it was waiting for this registration
        idle_.notify_all();
        throw;
    }

    // Commit: nothing below can fail.
    bool stop_now;
    bool parent_leaving = false;
    {
        std::lock_guard g(tree_lock);
        c->st = coop_impl::state::registered;
        coops_.emplace(c->id, c);
        if (c->parent) {
            c->parent->children.push_back(c.get());  // already counted in live_children
            // The parent began deregistering while this one was being configured: it did not
            // see this child, so the child follows it on its own (below).
            parent_leaving = c->parent->st != coop_impl::state::registered;
        }
        stop_now = env->stopping();
    }
    c->live_agents.store(c->agents.size(), std::memory_order_relaxed);
    coops_registered.fetch_add(1, std::memory_order_release);
    coop_handle h(c);
    // Before the agents start, so that it always comes before on_deregistered (an agent may
    // deregister its cooperation in its very first on_start). A deregistration that comes
    // meanwhile (another thread, a parent, the environment stopping) waits for `announced`.
    if (c->opts.on_registered) {
        env_scope scope(env);
        try {
            c->opts.on_registered(h);
        } catch (const std::exception& ex) {
            log_callback_failure(*env, "cooperation '" + c->name + "': on_registered threw: " + ex.what());
        } catch (...) {
            log_callback_failure(*env, "cooperation '" + c->name + "': on_registered threw");
        }
    }
    for (context_core* core : c->agents) core->open(&core->start_demand);
    bool finish_now;
    bool requested;
    {
        std::lock_guard g(tree_lock);
        c->announced = true;
        finish_now = c->ready_to_finish();
        requested = c->dereg_requested;
    }
    if (finish_now)
        c->start_finishing();
    else if (requested)
        c->deregister(c->requested_reason);  // asked for while it was built or configured
    else if (parent_leaving)
        c->deregister(dereg_reason::parent_deregistered);
    else if (stop_now)
        c->deregister(dereg_reason::shutdown);
    return h;
}

void agent_runtime::finalize(coop_impl& c) noexcept {
    std::shared_ptr<coop_impl> self;
    std::shared_ptr<coop_impl> parent_ready;
    {
        std::lock_guard g(tree_lock);
        auto it = coops_.find(c.id);
        if (it != coops_.end()) {
            self = std::move(it->second);
            coops_.erase(it);
        }
        if (c.named) coop_names_.erase(c.name);
        c.st = coop_impl::state::gone;
        if (c.parent) {
            auto& kids = c.parent->children;
            kids.erase(std::remove(kids.begin(), kids.end(), &c), kids.end());
            --c.parent->live_children;
            if (c.parent->ready_to_finish()) parent_ready = c.parent;
        }
    }
    coops_deregistered.fetch_add(1, std::memory_order_release);
    if (c.opts.on_deregistered) {
        env_scope scope(env);
        try {
            c.opts.on_deregistered(c.name, c.reason);
        } catch (const std::exception& ex) {
            log_callback_failure(*env, "cooperation '" + c.name + "': on_deregistered threw: " + ex.what());
        } catch (...) {
            log_callback_failure(*env, "cooperation '" + c.name + "': on_deregistered threw");
        }
    }
    c.parent.reset();
    if (parent_ready) parent_ready->start_finishing();
    std::lock_guard g(tree_lock);
    --busy_;
    // Under the lock: once the joiner sees zero it may go on and free the runtime.
    idle_.notify_all();
}

// ---- coop_impl ----

coop_impl::coop_impl(agent_runtime* r, environment& e, coop_options o)
    : rt(r), env(&e), env_keep(internal::core_of(e)), id(r->contexts.arena->next_id()), named(!o.name.empty()), opts(std::move(o)) {
    name = named ? opts.name : "coop#" + std::to_string(id);
    parent = internal::impl_of(opts.parent);
    opts.parent = coop_handle();
}

coop_impl::~coop_impl() = default;

void coop_impl::destroy_unstarted() noexcept {
    for (context_core* core : agents) retire(core, false);
    agents.clear();
}

void coop_impl::deregister(dereg_reason r) noexcept {
    std::vector<std::shared_ptr<coop_impl>> kids;
    bool finish_now = false;
    {
        std::lock_guard g(rt->tree_lock);
        if (st == state::building || st == state::registering) {
            // From an agent's constructor or configure(): the registration goes on, and the
            // cooperation is deregistered with this reason as soon as it has committed.
            if (!dereg_requested) {
                dereg_requested = true;
                requested_reason = r;
            }
            return;
        }
        if (st != state::registered) return;
        st = state::deregistering;
        reason = r;
        try {
            for (auto* k : children) kids.push_back(k->shared_from_this());
        } catch (...) {
            fatal("out of memory deregistering a cooperation");
        }
        finish_now = ready_to_finish();
    }
    for (auto& k : kids) k->deregister(dereg_reason::parent_deregistered);
    if (finish_now) start_finishing();
}

void coop_impl::start_finishing() noexcept {
    if (agents.empty()) {
        rt->finalize(*this);
        return;
    }
    // Copy first: the last finish may run (and finalize) before this loop ends.
    std::vector<context_core*> list;
    try {
        list = agents;
    } catch (...) {
        fatal("out of memory deregistering a cooperation");
    }
    for (context_core* core : list) core->push(&core->end_demand);
}

void coop_impl::agent_finished() noexcept {
    if (live_agents.fetch_sub(1, std::memory_order_acq_rel) == 1) rt->finalize(*this);
}

}  // namespace internal

// ---- coop ----

coop::coop(environment& env, coop_options options) : env_(&env) {
    auto& core = *internal::core_of(env);
    core.check_not_stopping("creating cooperation", options.name);
    auto& rt = internal::agent_runtime::of(core);
    internal::event_gate_init();
    impl_ = std::make_shared<internal::coop_impl>(&rt, env, std::move(options));
}

coop::~coop() {
    if (impl_) impl_->destroy_unstarted();
}

coop::coop(coop&&) noexcept = default;

coop& coop::operator=(coop&& o) noexcept {
    if (this != &o) {
        if (impl_) impl_->destroy_unstarted();
        env_ = o.env_;
        impl_ = std::move(o.impl_);
    }
    return *this;
}

std::size_t coop::size() const noexcept { return impl_ ? impl_->agents.size() : 0; }

void* coop::prepare_agent(binder b) {
    if (!impl_) throw usage_error("coop: making an agent in a cooperation that was already registered");
    auto& c = *impl_;
    if (c.agents.size() == c.agents.capacity()) c.agents.reserve(std::max<std::size_t>(16, 2 * c.agents.size()));
    internal::context_core* core = c.rt->make_agent_context(c, internal::impl_of(b));
    internal::constructing_agent() = core;
    return core;
}

void coop::abandon_agent(void* slot) noexcept {
    internal::constructing_agent() = nullptr;
    impl_->rt->abandon_agent_context(static_cast<internal::context_core*>(slot));
}

void coop::adopt_agent(void* slot, agent* a) noexcept {
    internal::constructing_agent() = nullptr;
    auto* core = static_cast<internal::context_core*>(slot);
    core->owner = a;
    impl_->agents.push_back(core);  // reserved in prepare_agent
    impl_->rt->agents_created.fetch_add(1, std::memory_order_release);
}

coop_handle register_coop(coop&& c) {
    if (!c.impl_) throw usage_error("register_coop: the cooperation was already registered");
    // The coop object gives up its agents whatever happens: on failure they are destroyed.
    auto impl = std::move(c.impl_);
    auto& rt = *impl->rt;
    return rt.register_coop(std::move(impl));
}

// ---- coop_handle ----

coop_handle::coop_handle(std::shared_ptr<internal::coop_impl> impl) noexcept : impl_(std::move(impl)) {}

coop_handle::operator bool() const noexcept {
    if (!impl_) return false;
    std::lock_guard g(impl_->rt->tree_lock);
    return impl_->st == internal::coop_impl::state::registered ||
           impl_->st == internal::coop_impl::state::deregistering;
}

std::string coop_handle::name() const { return impl_ ? impl_->name : std::string(); }

void coop_handle::deregister(dereg_reason reason) noexcept {
    if (impl_) impl_->deregister(reason);
}

// ---- statistics ----

agent_stats agent_stats_of(const environment& env) {
    const internal::agent_runtime* r = internal::agent_runtime::find(*internal::core_of(env));
    return r ? r->stats() : agent_stats{};
}

}  // namespace mailroom
