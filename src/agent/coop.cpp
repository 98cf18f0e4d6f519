#include <mailroom/core/error.hpp>

#include <mailroom/agent/runtime.hpp>

#include <algorithm>

namespace mailroom {
namespace internal {

agent_core*& constructing_agent() noexcept;

namespace {
const char runtime_key = 0;

void log_callback_failure(env_core& env, const std::string& what) noexcept {
    try {
        env.log(what);
    } catch (...) {
    }
}

void execute_start(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<control_demand*>(base);
    agent_core* core = d->target;
    delete d;
    if (mode == demand_mode::discard) return;
    run_guarded(
        *core, "on_start", message_type(),
        [](void* p) {
            auto* c = static_cast<agent_core*>(p);
            agent_core::call_start(*c->user);
        },
        core);
    if (core->has_dead || !core->added.empty()) core->settle_subscriptions();
}

// Undoes an agent: its generation moves on (so stale demands count themselves lost), it leaves
// the MPMC mboxes it subscribed to, it is destroyed and unbound, and its core is recycled.
// Leaves every MPMC mbox the agent subscribed to, so that publishers stop queueing for it.
void leave_topics(agent_core* core) noexcept {
    const std::uint32_t gen = core->gen.load(std::memory_order_relaxed);
    for (auto* list : {&core->subs, &core->added})
        for (auto& s : *list)
            if (s.source && s.mbox_id != 0) {
                static_cast<mpmc_mbox&>(*s.source).remove_subscriber(core, gen, s.type);
                s.source.reset();
            }
}

void retire(agent_core* core, bool bound) noexcept {
    agent_runtime* rt = core->rt;
    leave_topics(core);
    const std::uint32_t gen = core->gen.load(std::memory_order_relaxed);
    core->gen.store(gen + 1, std::memory_order_release);
    core->close_gate();
    {
        // The destructor is a callback of the environment: it may run on a thread that is not
        // a worker (a rollback, a cooperation dropped unregistered) and may destroy it.
        env_scope scope(rt->env);
        delete core->user;
    }
    core->user = nullptr;
    if (bound && core->binder) core->binder->release(core->bound, core->coop);
    delete core->finish;
    core->finish = nullptr;
    rt->agents_destroyed.fetch_add(1, std::memory_order_relaxed);
    rt->free_core(core);
}

void execute_finish(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<control_demand*>(base);
    agent_core* core = d->target;
    coop_impl* c = core->coop;
    // First leave the topics: what is published from now on is not queued for an agent that
    // is finishing (what is already queued behind this demand is counted ignored).
    leave_topics(core);
    if (mode == demand_mode::run) {
        run_guarded(
            *core, "on_finish", message_type(),
            [](void* p) {
                auto* a = static_cast<agent_core*>(p);
                agent_core::call_finish(*a->user);
            },
            core);
    }
    core->finish = nullptr;  // this demand; freed below
    retire(core, true);
    delete d;
    c->agent_finished();
}
}  // namespace

void throw_foreign_binder(const binder_impl& b, const env_core& env, const std::string& what) {
    const dispatcher_impl& d = b.target();
    throw binding_error(what + " of environment '" + env.name() + "': dispatcher '" + d.name() + "' belongs to " +
                        (d.owner() ? "environment '" + d.owner_name() + "'" : std::string("no environment")) +
                        ", not to this one (a context runs only on its own environment's dispatchers)");
}

binding prepare_binding(binder_impl& b, const void* key, const env_core& env, const char* what,
                        std::string_view object) {
    try {
        return b.prepare(key);
    } catch (const binding_error&) {
        // The teardown sets `stopping` before it shuts the dispatchers down (release/acquire on
        // both flags), so a dispatcher it shut down is always seen with `stopping` set.
        if (!env.stopping() || b.target().accepting()) throw;
        throw environment_stopped_error(std::string(what) + " '" + std::string(object) + "': environment '" +
                                        env.name() + "' is stopping (its teardown shut dispatcher '" +
                                        b.target().name() + "' down)");
    }
}

agent_runtime& agent_runtime::of(env_core& env) {
    return env.extension<agent_runtime>(&runtime_key, [&] { return std::make_unique<agent_runtime>(&env); });
}

agent_runtime::agent_runtime(env_core* e) : env(e) {}

agent_runtime::~agent_runtime() = default;

std::string agent_runtime::describe(running_kind kind, std::uint64_t id) const {
    if (kind == running_kind::agent) {
        std::lock_guard g(tree_lock);
        std::string name;
        for (auto& [cid, c] : coops_)
            for (agent_core* a : c->agents)
                if (a->describe_if(id, name)) return "agent '" + name + "' of cooperation '" + c->name + "'";
    } else if (kind == running_kind::session) {
        return describe_session(id);
    }
    return {};
}

void agent_runtime::add_stats(environment_stats& s) const noexcept {
    s.agents_created += agents_created.load(std::memory_order_relaxed);
    s.agents_destroyed += agents_destroyed.load(std::memory_order_relaxed);
    s.coops_registered += coops_registered.load(std::memory_order_relaxed);
    s.coops_deregistered += coops_deregistered.load(std::memory_order_relaxed);
    s.sessions_created += sessions_created.load(std::memory_order_relaxed);
    s.sessions_destroyed += sessions_destroyed.load(std::memory_order_relaxed);
    s.event_objects_created += objects_created.load(std::memory_order_relaxed);
    s.event_objects_destroyed += objects_destroyed.load(std::memory_order_relaxed);
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
    std::map<std::string, std::shared_ptr<mbox_impl>, std::less<>> named;
    {
        std::unique_lock g(tree_lock);
        idle_.wait(g, [&] { return busy_ == 0; });
        named.swap(named_);  // breaks the cycle mbox -> environment core -> registry -> mbox
        // Intake closes only after this returns: a name made in between would rebuild the cycle.
        named_closed_ = true;
    }
    // Guarantee 4's order: sessions and their event objects after the cooperations, before
    // the dispatchers.
    stop_sessions();
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
    std::vector<control_demand*> starts;
    std::size_t bound = 0;
    try {
        starts.reserve(c->agents.size());
        if (!c->default_binder) {
            if (c->opts.bind)
                c->default_binder = c->opts.bind.impl();
            else
                c->default_binder = env->default_dispatcher()->make_binder();
        }
        // Even with no agent to bind: a binder of another environment is a mistake to report.
        if (!binds_in(*c->default_binder, *env))
            throw_foreign_binder(*c->default_binder, *env, "cooperation '" + c->name + "'");
        for (agent_core* core : c->agents) {
            if (!core->binder) core->binder = c->default_binder;
            if (!binds_in(*core->binder, *env))
                throw_foreign_binder(*core->binder, *env,
                                     "cooperation '" + c->name + "': agent '" + core->display_name() + "'");
            core->bound = prepare_binding(*core->binder, c.get(), *env, "registering cooperation", c->name);
            core->queue.store(core->bound.queue, std::memory_order_release);
            ++bound;
            core->finish = new control_demand;
            core->finish->execute = &execute_finish;
            core->finish->target = core;
            auto* start = new control_demand;
            start->execute = &execute_start;
            start->target = core;
            starts.push_back(start);

            agent_core*& cur = current_agent();
            agent_core* prev = cur;
            cur = core;
            try {
                agent_core::call_configure(*core->user);
            } catch (...) {
                cur = prev;
                throw;
            }
            cur = prev;
        }
    } catch (...) {
        for (auto* s : starts) delete s;
        for (std::size_t i = 0; i < c->agents.size(); ++i) {
            agent_core* core = c->agents[i];
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
    coops_registered.fetch_add(1, std::memory_order_relaxed);
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
    for (std::size_t i = 0; i < c->agents.size(); ++i) c->agents[i]->open_gate(starts[i]);
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
    coops_deregistered.fetch_add(1, std::memory_order_relaxed);
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

mbox agent_runtime::make_named(std::string name, bool may_exist) {
    env->check_open("creating named mbox", name);
    std::lock_guard g(tree_lock);
    if (named_closed_)
        throw environment_stopped_error("creating named mbox '" + name + "': environment '" + env->name() +
                                        "' is stopped");
    auto it = named_.find(name);
    if (it != named_.end()) {
        if (may_exist) return mbox(it->second);
        throw duplicate_name_error("named mbox '" + name + "' already exists in environment '" + env->name() + "'");
    }
    auto m = std::make_shared<mpmc_mbox>(env_shared(), this, name);
    named_.emplace(std::move(name), m);
    return mbox(std::move(m));
}

mbox agent_runtime::find_named(std::string_view name) {
    std::lock_guard g(tree_lock);
    auto it = named_.find(name);
    return it == named_.end() ? mbox() : mbox(it->second);
}

// ---- coop_impl ----

coop_impl::coop_impl(agent_runtime* r, environment& e, coop_options o)
    : rt(r), env(&e), env_keep(e.core()), id(r->next_id()), named(!o.name.empty()), opts(std::move(o)) {
    name = named ? opts.name : "coop#" + std::to_string(id);
    parent = opts.parent.impl();
    opts.parent = coop_handle();
}

coop_impl::~coop_impl() = default;

void coop_impl::destroy_unstarted() noexcept {
    for (agent_core* core : agents) retire(core, false);
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
    std::vector<agent_core*> list;
    try {
        list = agents;
    } catch (...) {
        fatal("out of memory deregistering a cooperation");
    }
    for (agent_core* core : list) core->push(core->finish);
}

void coop_impl::agent_finished() noexcept {
    if (live_agents.fetch_sub(1, std::memory_order_acq_rel) == 1) rt->finalize(*this);
}

}  // namespace internal

// ---- coop ----

coop::coop(environment& env, coop_options options) : env_(&env) {
    auto& core = *env.core();
    core.check_not_stopping("creating cooperation", options.name);
    auto& rt = internal::agent_runtime::of(core);
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
    internal::agent_core* core = c.rt->allocate_core();
    try {
        core->id = c.rt->next_id();
        core->coop = &c;
        core->binder = b.impl();
        const std::uint32_t gen = core->gen.load(std::memory_order_relaxed);
        core->direct = std::make_shared<internal::direct_mbox>(c.rt->env_shared(), c.rt, core, gen, core->id);
        core->direct_handle = mbox(core->direct);
    } catch (...) {
        c.rt->free_core(core);
        throw;
    }
    core->gate.store(internal::agent_core::gate_closed, std::memory_order_release);
    internal::constructing_agent() = core;
    return core;
}

void coop::abandon_agent(void* slot) noexcept {
    internal::constructing_agent() = nullptr;
    auto* core = static_cast<internal::agent_core*>(slot);
    core->gen.fetch_add(1, std::memory_order_release);
    core->gate.store(internal::agent_core::gate_finished, std::memory_order_release);
    core->rt->free_core(core);
}

void coop::adopt_agent(void* slot, agent* a) noexcept {
    internal::constructing_agent() = nullptr;
    auto* core = static_cast<internal::agent_core*>(slot);
    core->user = a;
    impl_->agents.push_back(core);  // reserved in prepare_agent
    core->rt->agents_created.fetch_add(1, std::memory_order_relaxed);
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

}  // namespace mailroom
