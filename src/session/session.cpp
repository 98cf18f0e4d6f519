#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/session/event_object.hpp>
#include <mailroom/mbox/mchain_impl.hpp>
#include <mailroom/mbox/limit_table.hpp>
#include <mailroom/core/handle_access.hpp>
#include <mailroom/dispatch/event_loop_impl.hpp>

#include <sys/epoll.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include <vector>

namespace mailroom {
namespace internal {

namespace {
std::atomic<std::uint64_t> next_object_id{1};
const char runtime_key = 0;
}  // namespace

// ---- event objects ----

event_object::event_object(context_ref o, kind k, handler f) noexcept
    : owner(std::move(o)), fn(std::move(f)), id(next_object_id.fetch_add(1, std::memory_order_relaxed)), what(k) {
    retire.obj = this;
}

event_object::~event_object() = default;

std::string event_object::display_name() const {
    std::string n = what == kind::timer          ? "timer"
                    : what == kind::inbox        ? "inbox"
                    : what == kind::subscription ? "subscription"
                                                 : "fd watcher";
    n += " #" + std::to_string(id) + " of ";
    // The owner's name is constant for its life; once the life is over the record may be
    // renamed for another, so only the id is given then.
    if (owner.core->gen.load(std::memory_order_acquire) == owner.gen)
        n += owner.core->describe();
    else
        n += "a destroyed context";
    return n;
}

// ---- the session layer's extension ----

namespace {

std::string session_name(const context_core& c) { return c.name.str(); }
exception_policy session_policy(const context_core&) noexcept { return exception_policy::log_and_continue; }
// Sessions have no exception policy of their own: a callback that throws is logged and
// counted, and the session carries on.
const context_ops session_ops{&session_name, &session_policy, nullptr, nullptr};

}  // namespace

session_runtime::session_runtime(env_core* e) : env(e), arena(std::make_shared<context_arena>(e)) {}

session_runtime::~session_runtime() = default;

session_runtime& session_runtime::of(env_core& env) {
    return env.extension<session_runtime>(&runtime_key, [&] { return std::make_unique<session_runtime>(&env); });
}

const session_runtime* session_runtime::find(const env_core& env) noexcept {
    return env.find_extension<session_runtime>(&runtime_key);
}

session_stats session_runtime::stats() const noexcept {
    session_stats s;
    s.sessions_created = sessions_created.load(std::memory_order_acquire);
    s.sessions_destroyed = sessions_destroyed.load(std::memory_order_acquire);
    s.event_objects_created = objects_created.load(std::memory_order_acquire);
    s.event_objects_destroyed = objects_destroyed.load(std::memory_order_acquire);
    return s;
}

std::string session_runtime::describe(std::string_view kind, std::uint64_t id) const {
    if (kind != running_kind_name(agent_running_kind) && kind != running_kind_name(session_running_kind)) return {};
    std::string out;
    return arena->describe(id, out) ? out : std::string();
}

// ---- running a timer's fire ----

namespace {

struct session_scope {
    explicit session_scope(context_core* c) noexcept : prev(current_context()), prev_env(current_env()) {
        current_context() = c;
        current_env() = c->env;
    }
    ~session_scope() {
        current_context() = prev;
        current_env() = prev_env;
    }
    context_core* prev;
    env_core* prev_env;
};

class timer_object;
void timer_fire_done(timer_object* t) noexcept;

/// A session timer's fire on its way to the context. Holds a reference to the timer.
struct fire_demand final : demand {
    timer_object* timer;
    static void execute_fn(demand* base, demand_mode mode) noexcept;
};

class timer_object final : public timer_entry, public event_object {
public:
    timer_object(context_ref s, handler f) noexcept : event_object(std::move(s), kind::timer, std::move(f)) {}

    void add_ref() noexcept override { timer_entry::add_ref(); }
    void release() noexcept override { timer_entry::release(); }
    // cancel() unlinks the entry from the wheel (it leaves at the timer thread's next wake, not
    // at its deadline) and does not wait here: this timer's deliveries never count themselves
    // in timer_entry's state.
    void stop_source() noexcept override { timer_entry::cancel(); }

    /// On the context, once a fire has run, been refused or discarded: the next period may
    /// queue one again.
    void fire_done() noexcept { fire_queued_.store(false, std::memory_order_release); }

private:
    ~timer_object() override = default;

    // On the timer thread. A timer slower than its period never has more than one fire queued
    // or running: a period that comes up meanwhile is skipped (and counted by the service).
    // Only this thread sets the flag, and only while it is clear, so a load and a store do.
    fire_result fire() noexcept override {
        if (shut.load(std::memory_order_relaxed)) return fire_result::none;  // an early answer; the gate decides
        if (fire_queued_.load(std::memory_order_acquire)) return fire_result::skipped;
        fire_demand* d;
        try {
            d = new (pool_allocate(sizeof(fire_demand))) fire_demand;
        } catch (...) {
            return fire_result::skipped;  // out of memory: this tick is skipped
        }
        d->execute = &fire_demand::execute_fn;
        d->timer = this;
        add_ref();
        fire_queued_.store(true, std::memory_order_relaxed);  // published by the push
        owner.core->push(d);
        return fire_result::queued;
    }

    void destroy() noexcept override { delete this; }

    std::atomic<bool> fire_queued_{false};
};

void timer_fire_done(timer_object* t) noexcept { t->fire_done(); }

void fire_demand::execute_fn(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<fire_demand*>(base);
    timer_object* t = d->timer;
    d->~fire_demand();
    pool_free(d, sizeof(fire_demand));
    context_core& c = *t->owner.core;
    thread_counters& counters = c.env->counters();
    if (mode == demand_mode::discard) {
        thread_counters::bump(counters.callbacks_discarded);
    } else {
        const run_outcome r = run_callback(
            c, t->owner.gen, static_cast<event_object*>(t), t->shut, "timer callback", message_type_of<timer_callback_tag>(),
            [](void* p) { static_cast<timer_object*>(p)->fn(nullptr); }, t);
        thread_counters::bump(r == run_outcome::ran ? counters.callbacks_run : counters.callbacks_refused);
    }
    timer_fire_done(t);
    t->release();
}

// ---- inboxes and subscriptions ----

// What keeps an object alive for an mbox that delivers to it (its inbox address, or a topic's
// subscriber table): a reference, dropped with the last copy.
std::shared_ptr<void> keep_alive(event_object* o) {
    o->add_ref();
    try {
        return std::shared_ptr<void>(static_cast<void*>(o), [](void* p) { static_cast<event_object*>(p)->release(); });
    } catch (...) {
        o->release();
        throw;
    }
}

// An inbox: its address is a direct mbox whose route leads to the context under the inbox's own
// key, restricted to the inbox's type and closed by the inbox's shut flag (a cheap early answer
// on the sender's thread; the context checks again).
class inbox_object final : public event_object {
public:
    inbox_object(context_ref s, message_type t, handler f, std::shared_ptr<inbox_stop_hook> on_stop) noexcept
        : event_object(std::move(s), kind::inbox, std::move(f)), on_stop_(std::move(on_stop)) {
        type = t;
    }

    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    // Whoever shuts the inbox (its handle, or its context's end) stops what goes with it
    // before returning: a named object's name is free once either returns.
    // Its delivery filter goes with it too: no predicate runs once a shutdown returns.
    void stop_source() noexcept override {
        if (filters) filters->close();
        if (on_stop_) on_stop_->stop();
    }

    filter_ref filters;  // set before the inbox is shared (also held by its address): read-only

private:
    ~inbox_object() override = default;
    std::atomic<std::uint32_t> refs_{1};  // the list's
    const std::shared_ptr<inbox_stop_hook> on_stop_;  // set before the inbox is shared: read-only
};

// A context's subscription to an MPMC mbox: the mbox lists a route to the context under this
// object's key (closed by its shut flag), the context's table maps (key, type) to this object. It holds the mbox until it is shut down:
// stop_source() leaves the topic and drops the mbox (which keeps nothing of the environment
// alive past the context's end).
class subscription_object final : public event_object {
public:
    subscription_object(context_ref s, message_type t, handler f) noexcept
        : event_object(std::move(s), kind::subscription, std::move(f)) {
        type = t;
    }

    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Joins the topic, unless the object was shut down meanwhile (its context ended on another
    /// thread between attach() and here). May throw (out of memory).
    void join(std::shared_ptr<mbox_impl> m, filter_ref filter) {
        std::lock_guard g(source_lock_);
        if (left_) return;
        static_cast<mpmc_mbox&>(*m).add_subscriber(route{owner.core, owner.gen, delivery_kind::fanout, mbox_id}, type,
                                                   object_link{&shut, keep_alive(this)}, std::move(filter));
        source_ = std::move(m);
    }

    // Any thread; idempotent. After it, no new snapshot lists the context for this topic and
    // type; an older one may still deliver, and the shut flag (set before) refuses it.
    void stop_source() noexcept override {
        std::shared_ptr<mbox_impl> m;
        {
            std::lock_guard g(source_lock_);
            left_ = true;
            m = std::move(source_);
        }
        if (m)
            static_cast<mpmc_mbox&>(*m).remove_subscriber(route{owner.core, owner.gen, delivery_kind::fanout, mbox_id},
                                                          type);
    }

private:
    ~subscription_object() override = default;
    std::atomic<std::uint32_t> refs_{1};  // the list's
    std::mutex source_lock_;
    bool left_ = false;                  // guarded by source_lock_
    std::shared_ptr<mbox_impl> source_;  // guarded by source_lock_
};

// Adds an object's table entry on its context: queued before the object's address is given
// out (or before it joins its topic), so that every delivery to it comes after the entry.
struct attach_demand final : demand {
    event_object* obj;  // a reference, the entry's once attached
    static void execute_fn(demand* base, demand_mode mode) noexcept;
};

void attach_entry(event_object* o) noexcept {
    context_core& c = *o->owner.core;
    try {
        c.add_entry(table_entry{o->mbox_id, o->type, handler(), o, nullptr});
    } catch (...) {
        fatal("out of memory attaching an event object");
    }
}

void attach_demand::execute_fn(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<attach_demand*>(base);
    event_object* o = d->obj;
    d->~attach_demand();
    pool_free(d, sizeof(attach_demand));
    // Only for the life it was made for, and not once the object's retire may have run.
    if (mode == demand_mode::run && o->owner.core->gen.load(std::memory_order_acquire) == o->owner.gen &&
        !o->shut.load(std::memory_order_acquire)) {
        attach_entry(o);  // takes over the reference
        return;
    }
    o->release();
}

// Queues (or, on the context itself, makes) the object's entry. May throw (out of memory)
// before anything is queued.
void attach(event_object* o) {
    context_core& c = *o->owner.core;
    if (current_context() == &c) {
        o->add_ref();
        attach_entry(o);
        return;
    }
    auto* d = new (pool_allocate(sizeof(attach_demand))) attach_demand;
    d->execute = &attach_demand::execute_fn;
    o->add_ref();
    d->obj = o;
    c.push(d);
}

// ---- shutdown and destroy ----

// Destroys an object's callback: on the context (or, with the dispatchers stopped, wherever its
// queue is discarded). Nothing can run the callback any more: the object was shut before it was
// unlisted, and the context runs one thing at a time. Its table entry goes with it.
void retire_object(event_object* o) noexcept {
    context_core& c = *o->owner.core;
    {
        session_scope scope(&c);  // what the callback captured may destroy handles
        o->on_retire();
        if ((o->what == event_object::kind::inbox || o->what == event_object::kind::subscription) &&
            c.gen.load(std::memory_order_acquire) == o->owner.gen) {
            table_entry e = c.take_entry(o->mbox_id, o->type);
            if (e.obj) e.obj->release();  // the entry's reference
        }
        handler dead = std::move(o->fn);
    }
    session_runtime::of(*c.env).objects_destroyed.fetch_add(1, std::memory_order_release);
    o->release();  // the list's reference
}

void execute_object_retire(demand* base, demand_mode) noexcept {
    retire_object(static_cast<object_retire*>(base)->obj);
}

void list_object(context_core& c, event_object* o, const std::string& who) {
    std::lock_guard g(c.lock);
    if (c.dead || c.gen.load(std::memory_order_relaxed) != o->owner.gen)
        throw session_destroyed_error(who + " is destroyed: cannot add an event object");
    o->retire.execute = &execute_object_retire;
    o->listed = true;
    o->next = c.objects;
    if (c.objects) c.objects->prev = o;
    c.objects = o;
    session_runtime::of(*c.env).objects_created.fetch_add(1, std::memory_order_release);
}

}  // namespace

bool shutdown_object(event_object* o) noexcept {
    const bool first = context_gate::close(o->shut);
    o->stop_source();
    if (current_context() != o->owner.core) {
        context_gate::barrier();
        o->owner.core->gate.wait_not_running(o);
    }
    return first;
}

bool event_object::handle_live() const noexcept {
    if (shut.load(std::memory_order_acquire) != 0) return false;
    const context_core& c = *owner.core;
    return c.gen.load(std::memory_order_acquire) == owner.gen && !c.gate.shut();
}

bool event_object::handle_shutdown() noexcept { return shutdown_object(this); }

void event_object::handle_destroy() noexcept {
    destroy_object(this);
    release();
}

void event_object::handle_detach() noexcept { release(); }

void destroy_object(event_object* o) noexcept {
    shutdown_object(o);
    context_core& c = *o->owner.core;
    std::lock_guard g(c.lock);
    if (!o->listed) return;  // destroyed already, or its context ended
    o->listed = false;
    if (o->prev)
        o->prev->next = o->next;
    else
        c.objects = o->next;
    if (o->next) o->next->prev = o->prev;
    // Under the lock, so that it is queued before a session's own retire (which is pushed
    // after `dead` was set under this lock): the queue is still this life's. An agent's object
    // may be destroyed before the agent starts (held until then, run by the end of a rolled
    // back life) and during on_finish() (its retire then runs after the agent's, which lets go
    // of the object's table entry: context_arena::recycle).
    c.push(&o->retire);
}

event_object* close_objects(context_core& c) noexcept {
    event_object* list;
    {
        std::lock_guard g(c.lock);
        c.dead = true;
        list = std::exchange(c.objects, nullptr);
        for (event_object* o = list; o; o = o->next) {
            o->listed = false;
            context_gate::close(o->shut);
        }
    }
    // Outside the lock (a source may take locks of its own, a name's may wait for readers):
    // the list is this call's alone now, and stop_source() is idempotent against a destroy()
    // on another thread that shut the object first.
    for (event_object* o = list; o; o = o->next) o->stop_source();
    return list;
}

void retire_objects(event_object* list) noexcept {
    for (event_object* o = list; o;) {
        event_object* next = o->next;
        retire_object(o);
        o = next;
    }
}

namespace {

// ---- sessions ----

// The end of a session's life, on its context (or wherever its queue is discarded).
void execute_session_retire(demand* base, demand_mode mode) noexcept {
    context_core* c = context_core::of_end(base);
    retire_objects(std::exchange(c->retiring, nullptr));
    // Its entries (an agent's subscriptions have none here) and topics go with the objects.
    // In discard mode the dispatcher is being joined (it may hold its own lock): it releases
    // what is bound to it itself.
    if (mode == demand_mode::run) c->binder->release(c->bound, c);
    session_runtime& rt = session_runtime::of(*c->env);
    rt.sessions_destroyed.fetch_add(1, std::memory_order_release);
    c->finish_life();
    {
        std::lock_guard g(rt.lock);
        if (c->reg_prev)
            c->reg_prev->reg_next = c->reg_next;
        else
            rt.sessions = c->reg_next;
        if (c->reg_next) c->reg_next->reg_prev = c->reg_prev;
        c->reg_prev = c->reg_next = nullptr;
        --rt.live;
        // Under the lock: once the joiner sees zero it may go on and free the runtime.
        rt.idle.notify_all();
    }
    c->arena->recycle(c);
}

// Destroying a session goes in two halves around the barrier that pairs with the gate, so that
// the teardown can close every session left and pay one barrier for all of them.
bool close_session(context_core* c, std::uint32_t gen) noexcept {
    session_runtime& rt = session_runtime::of(*c->env);
    bool winner;
    {
        std::lock_guard g(rt.lock);
        // It stays listed until it retired, so that the teardown watch can name it.
        winner = c->gen.load(std::memory_order_relaxed) == gen && std::exchange(c->registered, false);
    }
    if (!winner) return false;
    c->gate.close();
    c->retiring = close_objects(*c);
    return true;
}

// After close_session() and a barrier (unless on the session's own context). Every thread
// that destroys it waits (not only the winner): the guarantee holds for each; but not for a
// later life of the record.
void finish_session(context_core* c, std::uint32_t gen, bool winner) noexcept {
    if (current_context() != c && c->gen.load(std::memory_order_acquire) == gen) c->gate.wait_not_running(nullptr);
    if (!winner) return;
    c->end_demand.execute = &execute_session_retire;
    c->queue.load(std::memory_order_acquire)->push(&c->end_demand);
}

void destroy_session(const context_ref& s) noexcept {
    const bool winner = close_session(s.core, s.gen);
    if (current_context() != s.core) context_gate::barrier();
    finish_session(s.core, s.gen, winner);
}

}  // namespace

void session_runtime::wait_stopped() noexcept {
    std::vector<context_core*> left;
    {
        std::lock_guard g(lock);
        closed = true;
        try {
            for (context_core* c = sessions; c; c = c->reg_next)
                if (c->registered) left.push_back(c);
        } catch (...) {
            fatal("out of memory destroying sessions");
        }
    }
    // One barrier for the whole sweep (it interrupts every running thread of the process).
    std::vector<std::pair<std::uint32_t, bool>> closing;
    try {
        closing.reserve(left.size());
    } catch (...) {
        fatal("out of memory destroying sessions");
    }
    for (context_core* c : left) {
        const std::uint32_t gen = c->gen.load(std::memory_order_relaxed);
        closing.emplace_back(gen, close_session(c, gen));
    }
    if (!left.empty()) context_gate::barrier();
    for (std::size_t i = 0; i < left.size(); ++i) finish_session(left[i], closing[i].first, closing[i].second);
    std::unique_lock g(lock);
    idle.wait(g, [&] { return live == 0; });
}

// ---- what the layers above and the templates call ----

context_ref current_context_ref() noexcept {
    context_core* c = current_context();
    if (!c) return {};
    return {c->arena->shared_from_this(), c, c->gen.load(std::memory_order_relaxed), c->kind == context_kind::agent};
}

env_core* context_env(const context_ref& c) noexcept {
    return c.core->gen.load(std::memory_order_acquire) == c.gen ? c.core->env : nullptr;
}

std::string current_context_name() {
    if (context_core* c = current_context()) return c->ops->name(*c);
    return {};
}

namespace {
std::string who(const context_ref& s, std::string_view name) {
    return std::string(s.agent ? "agent '" : "session '") + std::string(name) + "'";
}

// Holds the environment's core for the length of an add_*: the context's life may be over with
// an environment that is gone (then it raises), or be ending now (then list_object raises).
std::shared_ptr<env_core> live_env(const context_ref& s, std::string_view name, const char* what) {
    if (std::shared_ptr<env_core> keep = s.arena->env_alive())
        if (s.core->gen.load(std::memory_order_acquire) == s.gen) return keep;
    throw session_destroyed_error(who(s, name) + " is destroyed" +
                                  (s.arena->env_alive() ? "" : " (its environment is gone)") + ": cannot add " + what);
}
}  // namespace

void set_limit(const context_ref& s, std::string_view name, message_type type,
               std::shared_ptr<const limit_spec> spec) {
    const char* what = spec ? "set a message limit" : "remove a message limit";
    if (!s) throw session_destroyed_error(std::string("an empty handle: cannot ") + what);
    std::shared_ptr<env_core> keep = live_env(s, name, what);
    if (spec && spec->reaction == limit_reaction::redirect && !spec->to)
        throw usage_error(who(s, name) + ": the limit of " + readable_name(type) +
                          " redirects to an empty mbox handle");
    if (!declare_limit(*s.core, s.gen, type, 0, std::move(spec), who(s, name)))
        throw session_destroyed_error(who(s, name) + " is destroyed: cannot " + what);
}

void set_inbox_limit(const mbox& address, message_type type, std::shared_ptr<const limit_spec> spec) {
    const auto& m = static_cast<const direct_mbox&>(*impl_of(address));
    const route& r = m.target();
    if (spec && spec->reaction == limit_reaction::redirect && !spec->to)
        throw usage_error(m.name() + ": the limit of " + readable_name(type) + " redirects to an empty mbox handle");
    if (!declare_limit(*r.to, r.gen, type, r.key, std::move(spec), m.name()))
        throw session_destroyed_error(m.name() + ": its session is destroyed: cannot set a message limit");
}

std::vector<limit_stats> limit_stats_of(const context_ref& s) {
    if (!s || s.core->gen.load(std::memory_order_acquire) != s.gen) return {};
    return limit_stats_of(static_cast<const receiver&>(*s.core));
}

handle_target* add_timer(const context_ref& s, std::string_view name, std::chrono::nanoseconds delay,
                        std::chrono::nanoseconds period, handler fn) {
    const std::shared_ptr<env_core> keep = live_env(s, name, "a timer");
    if (delay.count() < 0)
        throw usage_error(who(s, name) + ": add_timer with a negative delay (" + std::to_string(delay.count()) +
                          " ns)");
    if (period.count() < 0)
        throw usage_error(who(s, name) + ": add_timer with a negative period (" +
                          std::to_string(period.count()) + " ns)");
    auto* t = new timer_object(s, std::move(fn));  // one reference: the list's
    t->deadline_ns = now_ns() + delay.count();
    t->period_ns = period.count();
    // The handle's reference before it is listed: once listed, the context's end may retire it
    // (dropping the list's) on another thread at once.
    t->add_ref();
    try {
        list_object(*s.core, t, who(s, name));
    } catch (...) {
        t->release();
        t->release();
        throw;
    }
    t->add_ref();  // the wheel's (arm() takes it over, and releases it when the service stopped)
    s.core->env->timers().arm(t);
    return t;
}

// ---- fd watchers ----

namespace {

std::uint32_t epoll_bits(fd_events e) noexcept {
    std::uint32_t b = 0;
    if (any_of(e, fd_events::read)) b |= EPOLLIN | EPOLLRDHUP;
    if (any_of(e, fd_events::write)) b |= EPOLLOUT;
    return b;
}

fd_events ready_of(std::uint32_t b) noexcept {
    fd_events e = fd_events::none;
    if (b & (EPOLLIN | EPOLLPRI)) e |= fd_events::read;
    if (b & EPOLLOUT) e |= fd_events::write;
    if (b & EPOLLERR) e |= fd_events::error;
    if (b & (EPOLLHUP | EPOLLRDHUP)) e |= fd_events::hangup;
    return e;
}

// An fd watcher: a source of its context's loop, under a slot key (event_loop_impl.hpp). The
// epoll registration is changed under `lock_` only, by the thread that changes the interest
// (the loop after a callback, set_interest on any thread) or shuts the watcher down; once
// stop_source() returned the fd is out of the epoll set and nothing puts it back. `epoch_`
// moves with each set_interest, so that the loop keeps a newer interest over what a callback
// that ran meanwhile returned, without a lock when nothing changed.
class fd_watch_object final : public event_object, public fd_source {
public:
    fd_watch_object(context_ref s, handler f, event_loop* loop, int fd, bool edge) noexcept
        : event_object(std::move(s), kind::fd_watch, std::move(f)), fd_source(fd), loop_(loop), fd_(fd), edge_(edge) {}

    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    void stop_source() noexcept override {
        std::lock_guard g(lock_);
        stopped_ = true;
        if (in_epoll_) remove_locked();
    }

    void on_retire() noexcept override {
        if (key_) loop_->remove_source(std::exchange(key_, 0));
    }

    // The loop thread.
    void on_ready(std::uint32_t events) noexcept override {
        fd_call call{ready_of(events), fd_events::none};
        const std::uint64_t epoch = epoch_.load(std::memory_order_acquire);
        context_core& c = *owner.core;
        thread_counters& counters = c.env->counters();
        // Inlined (run_object_callback): a readiness costs no call but the callback's own.
        const run_outcome r = run_object_callback(c, owner.gen, this, shut, "fd watcher callback",
                                                  message_type_of<fd_callback_tag>(),
                                                  [&] { fn(reinterpret_cast<envelope*>(&call)); });
        if (r != run_outcome::ran) {
            thread_counters::bump(counters.callbacks_refused);
            return;
        }
        thread_counters::bump(counters.callbacks_run);
        // The common case (the same interest, no set_interest meanwhile) takes no lock.
        if (epoch_.load(std::memory_order_acquire) == epoch && call.next == interest_.load(std::memory_order_relaxed))
            return;
        std::lock_guard g(lock_);
        if (epoch_.load(std::memory_order_relaxed) != epoch) return;  // a newer set_interest wins
        apply_locked(call.next);  // a failure leaves the fd out of the set (it was closed)
    }

    // Any thread: 0 on success, else the errno of epoll_ctl; -1 when shut down.
    int set_interest(fd_events interest) {
        std::lock_guard g(lock_);
        if (stopped_) return -1;
        epoch_.fetch_add(1, std::memory_order_acq_rel);
        return apply_locked(interest);
    }

    std::uint64_t key_ = 0;  // set before the watcher is shared; cleared at retire
    int fd() const noexcept { return fd_; }
    fd_trigger trigger() const noexcept { return edge_ ? fd_trigger::edge : fd_trigger::level; }
    fd_events interest() noexcept {
        std::lock_guard g(lock_);
        return interest_.load(std::memory_order_relaxed);
    }

private:
    ~fd_watch_object() override = default;

    int apply_locked(fd_events interest) noexcept {
        if (stopped_) return -1;
        interest_.store(interest, std::memory_order_relaxed);
        const std::uint32_t bits = epoll_bits(interest) | EPOLLERR | EPOLLHUP;
        if (interest == fd_events::none) {
            if (in_epoll_) remove_locked();
            return 0;
        }
        epoll_event ev{};
        ev.events = bits | (edge_ ? EPOLLET : 0u);
        ev.data.u64 = key_;
        if (::epoll_ctl(loop_->epoll_fd(), in_epoll_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd_, &ev) != 0) {
            const int err = errno;
            if (in_epoll_) remove_locked();
            return err;
        }
        if (!in_epoll_) loop_->count_fd(+1);
        in_epoll_ = true;
        return 0;
    }

    void remove_locked() noexcept {
        epoll_event ev{};
        ::epoll_ctl(loop_->epoll_fd(), EPOLL_CTL_DEL, fd_, &ev);  // fails only for an fd closed too early
        in_epoll_ = false;
        loop_->count_fd(-1);
    }

    event_loop* const loop_;
    const int fd_;
    const bool edge_;
    std::atomic<std::uint32_t> refs_{1};
    std::atomic<std::uint64_t> epoch_{0};
    std::atomic<fd_events> interest_{fd_events::none};
    std::mutex lock_;
    bool in_epoll_ = false;  // under lock_
    bool stopped_ = false;   // under lock_
};

std::string errno_text(int err) { return std::string(std::strerror(err)); }

}  // namespace

handle_target* add_fd_watch(const context_ref& s, std::string_view name, int fd, fd_events interest,
                            fd_trigger trigger, handler fn) {
    const std::shared_ptr<env_core> keep = live_env(s, name, "an fd watcher");
    if (fd < 0) throw usage_error(who(s, name) + ": watch of a negative fd (" + std::to_string(fd) + ")");
    context_core& c = *s.core;
    event_loop* loop = c.bound.queue ? c.bound.queue->loop() : nullptr;
    if (!c.bound.queue)
        throw binding_error(who(s, name) + " is not bound to a dispatcher yet: it cannot watch fd " +
                            std::to_string(fd) + " (an agent watches from on_start() on)");
    if (!loop) {
        const auto& d = c.binder->target();
        throw binding_error(who(s, name) + " is bound to dispatcher '" + d.name() + "' (" + d.kind() +
                            "), not to an event_loop_pool: it cannot watch fd " + std::to_string(fd));
    }
    auto* o = new fd_watch_object(s, std::move(fn), loop, fd, trigger == fd_trigger::edge);  // the list's reference
    o->add_ref();  // the handle's, before it is listed (see add_timer)
    try {
        o->key_ = loop->add_source(o);
    } catch (...) {
        o->release();
        o->release();
        throw;
    }
    try {
        list_object(c, o, who(s, name));
    } catch (...) {
        loop->remove_source(o->key_);  // never in the epoll set: no event carries its key
        o->release();
        o->release();
        throw;
    }
    const int err = o->set_interest(interest);
    if (err > 0) {
        destroy_object(o);
        o->release();
        throw error(who(s, name) + ": cannot watch fd " + std::to_string(fd) + ": " + errno_text(err));
    }
    return o;
}

namespace {
// Raises binding_error unless `to` may watch fds (a live context pinned to a loop).
void check_on_loop(const context_ref& to, std::string_view name, int fd) {
    if (!to) throw session_destroyed_error("move_to: the target session handle is empty");
    const std::shared_ptr<env_core> keep = live_env(to, name, "an fd watcher");
    const context_core& c = *to.core;
    if (!c.bound.queue || !c.bound.queue->loop())
        throw binding_error(who(to, name) + " is not bound to an event_loop_pool: fd " + std::to_string(fd) +
                            " cannot move to it");
}
}  // namespace

handle_target* move_fd_watch(handle_target* t, const session& target) {
    auto* o = static_cast<fd_watch_object*>(static_cast<event_object*>(t));
    const context_ref& to = ref_of(target);
    const std::string to_name = target.name();
    if (current_context() == o->owner.core)
        throw usage_error(o->display_name() + ": move_to from its own context (the running callback cannot move)");
    check_on_loop(to, to_name, o->fd());
    shutdown_object(o);  // no callback of it runs from here on, anywhere
    handler fn;
    {
        // Listed, no retire is queued for it: its callback is not destroyed meanwhile.
        std::lock_guard g(o->owner.core->lock);
        if (o->listed) fn = std::move(o->fn);
    }
    if (!fn) throw session_destroyed_error(o->display_name() + " has ended: nothing to move");
    return add_fd_watch(to, to_name, o->fd(), o->interest(), o->trigger(), std::move(fn));
}

bool set_fd_interest(handle_target* t, fd_events interest) {
    auto* o = static_cast<fd_watch_object*>(static_cast<event_object*>(t));
    const int err = o->set_interest(interest);
    if (err > 0)
        throw error(o->display_name() + ": cannot change the interest in fd " + std::to_string(o->fd()) + ": " +
                    errno_text(err));
    return err == 0;
}

namespace {
// A filter slot holding `p`, named after its owner.
filter_ref filter_holding(std::shared_ptr<const filter_predicate> p, std::string owner) {
    filter_ref f(new filter_slot(std::move(owner)));
    f->set(std::move(p));
    return f;
}
}  // namespace

handle_target* add_inbox(const context_ref& s, std::string_view name, message_type type, handler fn, mbox& address,
                        std::shared_ptr<inbox_stop_hook> on_stop, std::shared_ptr<const filter_predicate> filter) {
    const std::shared_ptr<env_core> keep = live_env(s, name, "an inbox");
    auto* o = new inbox_object(s, type, std::move(fn), std::move(on_stop));
    std::shared_ptr<direct_mbox> m;
    try {
        o->mbox_id = new_delivery_key();
        m = std::make_shared<direct_mbox>(keep, route{s.core, s.gen, delivery_kind::inbox, o->mbox_id},
                                          object_link{&o->shut, keep_alive(o), type},
                                          "inbox #" + std::to_string(o->id) + " of " + who(s, name));
        if (filter) {
            o->filters = filter_holding(std::move(filter), "inbox #" + std::to_string(o->id) + " of " + who(s, name));
            m->adopt_filters(o->filters);
        }
        o->add_ref();  // the handle's, before it is listed (see add_timer)
        try {
            list_object(*s.core, o, who(s, name));
        } catch (...) {
            o->release();
            throw;
        }
    } catch (...) {
        m.reset();
        o->release();
        throw;
    }
    try {
        attach(o);
    } catch (...) {
        destroy_object(o);
        o->release();
        throw;
    }
    address = mbox(std::move(m));
    return o;
}

handle_target* add_subscription(const context_ref& s, std::string_view name, const mbox& from, message_type type,
                               handler fn, std::shared_ptr<const filter_predicate> filter,
                               std::shared_ptr<const limit_spec> limit) {
    const std::shared_ptr<env_core> keep = live_env(s, name, "a subscription");
    auto describe = [&] {
        return who(s, name) + ": subscription to " + readable_name(type) + " on " + from.name();
    };
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    mbox_impl& m = *internal::impl_of(from);
    if (&m.env() != s.core->env) throw subscription_error(describe() + ": the mbox belongs to another environment");
    if (m.kind() == mbox_kind::mchain)
        throw subscription_error(describe() + ": it is an mchain (take from it with subscribe(chain, handlers...))");
    if (m.kind() != mbox_kind::mpmc)
        throw subscription_error(describe() + ": it is a direct mbox (event objects subscribe to MPMC mboxes only)");
    if (limit && limit->reaction == limit_reaction::redirect && !limit->to)
        throw usage_error(describe() + ": its limit redirects to an empty mbox handle");
    filter_ref filters;
    if (filter) filters = filter_holding(std::move(filter), who(s, name));
    auto* o = new subscription_object(s, type, std::move(fn));
    o->mbox_id = new_delivery_key();
    o->add_ref();  // the handle's, before it is listed (see add_timer)
    try {
        list_object(*s.core, o, who(s, name));
    } catch (...) {
        o->release();
        o->release();
        throw;
    }
    try {
        attach(o);
        // Its own limit before it joins the topic: no publication reaches it unlimited.
        if (limit && !declare_limit(*s.core, s.gen, type, o->mbox_id, std::move(limit), describe()))
            throw session_destroyed_error(who(s, name) + " is destroyed: cannot add a subscription");
        o->join(internal::impl_of(from), std::move(filters));
    } catch (...) {
        destroy_object(o);
        o->release();
        throw;
    }
    return o;
}

// ---- subscriptions to mchains ----

namespace {

class chain_subscription;
void execute_drain(demand* base, demand_mode mode) noexcept;

// A context's subscription to an mchain: the chain tells it when a message is put
// (on_message_put, under the chain's lock), and it queues one drain on its context unless one is
// queued already; the drain takes a bounded batch per turn, so that a busy chain does not hold
// the worker from the other contexts bound to it, and queues itself again while messages remain.
// No thread polls.
class chain_subscription final : public event_object, public mchain_listener {
public:
    chain_subscription(context_ref s, std::shared_ptr<mchain_impl> chain, mchain_handlers hs) noexcept
        : event_object(std::move(s), kind::subscription, handler()), chain_(std::move(chain)),
          handlers_(std::move(hs)) {
        drain_.execute = &execute_drain;
        drain_.obj = this;
    }

    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Starts listening (what is in the chain already is drained too). May throw (out of memory).
    void listen() { chain_->add_listener(this); }

    // Any thread; idempotent. After it the chain never calls this object again.
    void stop_source() noexcept override { chain_->remove_listener(this); }

    // Under the chain's lock: only queues (a receiver's push never takes the chain's lock).
    void on_message_put() noexcept override {
        if (shut.load(std::memory_order_relaxed) || scheduled_.exchange(true, std::memory_order_acq_rel)) return;
        add_ref();  // the queued drain's
        owner.core->push(&drain_);
    }

    /// The handler of `e`'s type (the chain's matcher: under its lock, types only).
    static int match(void* p, envelope* e) noexcept {
        const mchain_handlers& hs = static_cast<chain_subscription*>(p)->handlers_;
        for (std::size_t i = 0; i < hs.size(); ++i)
            if (hs[i].first == e->type()) return static_cast<int>(i);
        return -1;
    }

    /// On the context: one turn, inside the gate.
    static void drain(void* p) {
        auto* self = static_cast<chain_subscription*>(p);
        thread_counters& counters = self->owner.core->env->counters();
        for (int i = 0; i < batch; ++i) {
            // A shutdown from another thread waits for this turn: no message is taken after it.
            if (self->shut.load(std::memory_order_acquire)) return;
            envelope* e = nullptr;
            int index = -1;
            if (self->chain_->try_take(e, &chain_subscription::match, self, index) != mchain_impl::take_result::got)
                return;
            envelope_ref ref(e);
            thread_counters::bump(counters.sent);  // the books see a chain's message at its outcome
            if (index < 0) {
                thread_counters::bump(counters.ignored);
                continue;
            }
            thread_counters::bump(counters.delivered);  // before it runs: a handler that throws was delivered
            self->handlers_[static_cast<std::size_t>(index)].second(e);
        }
    }

    /// On the context, after a turn (or wherever the queue is discarded).
    void after_turn(bool again) noexcept {
        scheduled_.store(false, std::memory_order_seq_cst);
        // A put after the turn's last take either sees `scheduled_` false and queues a drain, or
        // came before this check (which takes the chain's lock, as the put did) and is seen here.
        if (again && !shut.load(std::memory_order_acquire) && chain_->has_messages() &&
            !scheduled_.exchange(true, std::memory_order_acq_rel)) {
            owner.core->push(&drain_);  // keeps the drain's reference
            return;
        }
        release();
    }

    static constexpr int batch = 32;
    struct drain_demand final : demand {
        chain_subscription* obj = nullptr;
    };
    drain_demand drain_;

private:
    ~chain_subscription() override = default;
    std::atomic<std::uint32_t> refs_{1};  // the list's
    std::atomic<bool> scheduled_{false};  // a drain is queued or running
    const std::shared_ptr<mchain_impl> chain_;
    mchain_handlers handlers_;  // destroyed with the object (no callback can run by then)
};

void execute_drain(demand* base, demand_mode mode) noexcept {
    chain_subscription* o = static_cast<chain_subscription::drain_demand*>(base)->obj;
    context_core& c = *o->owner.core;
    thread_counters& counters = c.env->counters();
    if (mode == demand_mode::discard) {
        // The dispatchers stopped; the chain was closed when the teardown began (its content
        // counted there).
        thread_counters::bump(counters.callbacks_discarded);
        o->after_turn(false);
        return;
    }
    const run_outcome r = run_callback(c, o->owner.gen, static_cast<event_object*>(o), o->shut, "mchain callback",
                                       message_type{}, &chain_subscription::drain, o);
    thread_counters::bump(r == run_outcome::ran ? counters.callbacks_run : counters.callbacks_refused);
    o->after_turn(r == run_outcome::ran);
}

}  // namespace

handle_target* add_mchain_subscription(const context_ref& s, std::string_view name, const mchain& from,
                                       mchain_handlers handlers) {
    const std::shared_ptr<env_core> keep = live_env(s, name, "an mchain subscription");
    if (!from) throw subscription_error(who(s, name) + ": subscription to an empty mchain handle");
    auto chain = std::static_pointer_cast<mchain_impl>(internal::impl_of(from));
    if (&chain->env() != s.core->env)
        throw subscription_error(who(s, name) + ": subscription to " + chain->name() +
                                 ": the chain belongs to another environment");
    auto* o = new chain_subscription(s, std::move(chain), std::move(handlers));
    o->add_ref();  // the handle's, before it is listed (see add_timer)
    try {
        list_object(*s.core, o, who(s, name));
    } catch (...) {
        o->release();
        o->release();
        throw;
    }
    try {
        o->listen();
    } catch (...) {
        destroy_object(o);
        o->release();
        throw;
    }
    return o;
}

}  // namespace internal

// ---- session ----

session::session(environment& env, session_options options) {
    using namespace internal;
    event_gate_init();
    env_core& core = *internal::core_of(env);
    core.check_not_stopping("creating session", options.name);
    session_runtime& rt = session_runtime::of(core);
    context_core* c = rt.arena->allocate();
    c->ops = &session_ops;
    c->kind = context_kind::session;
    c->id = rt.arena->next_id();
    auto n = std::make_unique<std::string>(options.name.empty() ? "session#" + std::to_string(c->id)
                                                                : std::move(options.name));
    c->name.swap(n);
    c->gate.reopen();
    c->close_start();
    const std::uint32_t gen = c->gen.load(std::memory_order_relaxed);
    auto give_back = [&] {
        c->finish_life();
        rt.arena->recycle(c);
    };
    try {
        c->binder = options.bind ? internal::impl_of(options.bind) : core.default_dispatcher()->make_binder();
        if (!binds_in(*c->binder, core)) throw_foreign_binder(*c->binder, core, c->describe());
        c->bound = prepare_binding(*c->binder, c, core, "creating session", c->name.str());
    } catch (...) {
        give_back();
        throw;
    }
    c->queue.store(c->bound.queue, std::memory_order_release);
    // Everything this constructor reads of the record is read or set before it is listed: once
    // listed, the teardown may close the session, retire it on its context and recycle the
    // record before the next line here runs. So it opens first (nobody else can post yet), and
    // the handle keeps its own copy of the name.
    name_ = c->name.str();
    c->open(nullptr);
    rt.sessions_created.fetch_add(1, std::memory_order_release);
    bool listed = false;
    {
        std::lock_guard g(rt.lock);
        if (!rt.closed) {
            c->registered = listed = true;
            c->reg_next = rt.sessions;
            if (rt.sessions) rt.sessions->reg_prev = c;
            rt.sessions = c;
            ++rt.live;
        }
    }
    if (!listed) {
        rt.sessions_created.fetch_sub(1, std::memory_order_release);
        c->binder->release(c->bound, c);
        give_back();
        std::string name = std::exchange(name_, {});
        throw environment_stopped_error("creating session '" + name + "': environment '" + core.name() +
                                        "' is stopping");
    }
    ref_ = {rt.arena, c, gen};
}

session& session::operator=(session&& o) noexcept {
    if (this != &o) {
        destroy();
        ref_ = std::exchange(o.ref_, {});
        name_ = std::move(o.name_);
    }
    return *this;
}

session::~session() { destroy(); }

session::operator bool() const noexcept {
    return ref_ && ref_.core->gen.load(std::memory_order_acquire) == ref_.gen && !ref_.core->gate.shut();
}

std::string session::name() const { return name_; }

void session::destroy() noexcept {
    if (!ref_) return;
    internal::context_ref s = std::exchange(ref_, {});
    name_.clear();
    // The environment may be gone (then the session retired with it and there is nothing to
    // do); while `keep` holds its core, the runtime this touches stays.
    if (std::shared_ptr<internal::env_core> keep = s.arena->env_alive())
        if (s.core->gen.load(std::memory_order_acquire) == s.gen) internal::destroy_session(s);
}

void session::detach() noexcept {
    ref_ = {};
    name_.clear();
}

// ---- statistics ----

std::vector<limit_stats> limit_stats_of(const session& s) { return internal::limit_stats_of(internal::ref_of(s)); }

session_stats session_stats_of(const environment& env) {
    const internal::env_core& core = *internal::core_of(env);
    session_stats s;
    if (const internal::session_runtime* r = internal::session_runtime::find(core)) s = r->stats();
    const auto callbacks = core.callback_totals();
    s.callbacks_run = callbacks.run;
    s.callbacks_refused = callbacks.refused;
    s.callbacks_discarded = callbacks.discarded;
    return s;
}

}  // namespace mailroom
