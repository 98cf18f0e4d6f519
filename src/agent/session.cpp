// Sessions and event objects: MME's managed lifetimes over mailroom's dispatchers.
//
// The states of an event object (see docs/lifetimes.md):
//
//   live --shutdown()--> shut --destroy()/session destroyed--> retired --last reference--> freed
//
// - live: listed in its session; deliveries (timer fires, inbox messages) are queued on the
//   session's context and each passes the session's context_gate (enter/leave) around the
//   callback.
// - shut: its flag is set; the gate refuses every later delivery; a shutdown on a foreign
//   thread has waited until its running callback (if any) left.
// - retired: unlisted; its callback (and what the callback captured) is destroyed on the
//   session's context by a retire demand that was preallocated with the object, so destroy()
//   cannot fail.
// - freed: reference counted. References: the session's list (handed to the retire demand),
//   the handle, each queued delivery, the inbox's mbox, and for timers the timer wheel
//   (a session timer is a timer_entry, so it shares the wheel's count). Whatever still points
//   at a shut object (a queued delivery, the timer thread in fire(), a sender in deliver())
//   holds a reference, so freeing is always safe.
//
// A session is counted the same way: the environment's registry holds a reference (handed to
// its retire demand on destroy), the handle one, each object one, each posted call one. Its
// retire demand runs on its own context after every callback already running, destroys the
// callbacks of the objects it still owned, and releases the binding.

#include <mailroom/session/session.hpp>
#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/dispatch/timer_service.hpp>

#include <mailroom/agent/runtime.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace mailroom {
namespace internal {

class event_object;

namespace {
// The session whose callback (or retire) this thread is running: shutdown() of an object of
// that session must not wait (it would wait for itself).
MAILROOM_FAST_TLS thread_local session_impl* tls_session = nullptr;
std::atomic<std::uint64_t> next_object_id{1};
}  // namespace

struct object_retire final : demand {
    event_object* obj = nullptr;
};

struct session_retire final : demand {
    session_impl* s = nullptr;
    event_object* objects = nullptr;  // the list it still owned, each with its list reference
};

class session_impl {
public:
    session_impl(std::shared_ptr<env_core> e, agent_runtime* r, std::string n)
        : env_keep(std::move(e)), env_weak(env_keep), env(env_keep.get()), rt(r), id(r->next_id()),
          name(n.empty() ? "session#" + std::to_string(id) : std::move(n)) {}

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    std::atomic<std::uint32_t> refs{2};  // the registry's and the handle's
    std::shared_ptr<env_core> env_keep;  // the queue pointer and counters stay valid with it
    // What a handle checks before it touches the runtime: the core (which owns the runtime)
    // may be gone once the session retired and its environment was destroyed.
    std::weak_ptr<env_core> env_weak;
    env_core* env;
    agent_runtime* rt;
    std::uint64_t id;
    std::string name;
    std::shared_ptr<binder_impl> binder;
    binding bound{};
    context_gate gate;
    context_gate::flag posts_shut{0};  // posted calls have no flag of their own: never set

    // Guarded by `lock`.
    std::mutex lock;
    bool dead = false;
    event_object* objects = nullptr;

    // Guarded by rt->session_lock. Listed in the runtime's registry from creation until its
    // retire ran; `registered` until it was destroyed.
    bool registered = false;
    session_impl* reg_prev = nullptr;
    session_impl* reg_next = nullptr;

    session_retire retire;
};

class event_object {
public:
    enum class kind : std::uint8_t { timer, inbox, subscription };

    event_object(session_impl* s, kind k, handler f) noexcept
        : owner(s), fn(std::move(f)), id(next_object_id.fetch_add(1, std::memory_order_relaxed)), what(k) {
        s->add_ref();
        retire.obj = this;
    }

    virtual void add_ref() noexcept = 0;
    virtual void release() noexcept = 0;
    /// Stops the source (the timer wheel) from producing more deliveries. Any thread.
    virtual void stop_source() noexcept {}

    std::string display_name() const {
        return std::string(what == kind::timer ? "timer" : what == kind::inbox ? "inbox" : "subscription") + " #" + std::to_string(id) + " of session '" +
               owner->name + "'";
    }

    session_impl* owner;
    handler fn;  // the context's; destroyed at retire
    context_gate::flag shut{0};
    std::uint64_t id;
    kind what;
    message_type type{};  // an inbox's or a subscription's message type

    // Guarded by owner->lock.
    bool listed = false;
    event_object* prev = nullptr;
    event_object* next = nullptr;

    object_retire retire;

protected:
    virtual ~event_object() { owner->release(); }
};

namespace {

// ---- running callbacks on the session's context ----

struct session_scope {
    explicit session_scope(session_impl* s) noexcept
        : prev_session(tls_session), prev_env(current_env()) {
        tls_session = s;
        current_env() = s->env;
    }
    ~session_scope() {
        tls_session = prev_session;
        current_env() = prev_env;
    }
    session_impl* prev_session;
    env_core* prev_env;
};

// Sessions have no exception policy of their own: a callback that throws is logged and
// counted, and the session carries on.
template <class F>
void run_guarded_callback(session_impl& s, const char* what, F&& f) noexcept {
    try {
        f();
        return;
    } catch (const std::exception& ex) {
        try {
            s.env->log("session '" + s.name + "': " + what + " threw: " + ex.what());
        } catch (...) {
        }
    } catch (...) {
        try {
            s.env->log("session '" + s.name + "': " + what + " threw an exception not derived from std::exception");
        } catch (...) {
        }
    }
    thread_counters::bump(s.env->counters().exceptions);
}

void timer_fire_done(event_object* o) noexcept;  // a session timer's fire left the queue

/// A timer fire, an inbox message or a publication on its way to an object. Holds a reference
/// to the object (and to the timer of a send_delayed, and the message).
struct event_demand final : demand {
    event_object* obj;
    envelope* msg;
    timer_entry* timer;
    // Published through an MPMC mbox: refused, it counts ignored (the subscriber left the
    // topic), not lost, as for an agent.
    bool fanout;

    static void execute_fn(demand* base, demand_mode mode) noexcept;

    static event_demand* make(event_object* o, envelope* m, timer_entry* t, bool fanout = false) {
        auto* d = new (pool_allocate(sizeof(event_demand))) event_demand;
        d->execute = &execute_fn;
        d->obj = o;
        d->msg = m;
        d->timer = t;
        d->fanout = fanout;
        o->add_ref();
        if (t) t->add_ref();
        return d;
    }
    void free() noexcept {
        if (msg) msg->release();
        if (timer) timer->release();
        obj->release();
        this->~event_demand();
        pool_free(this, sizeof(event_demand));
    }
};

void event_demand::execute_fn(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<event_demand*>(base);
    event_object* o = d->obj;
    session_impl* s = o->owner;
    thread_counters& c = s->env->counters();
    // A session timer's own fire (no message) lets the timer queue the next one once it is done.
    const bool timer_fire = o->what == event_object::kind::timer;
    if (mode == demand_mode::discard) {
        thread_counters::bump(d->msg ? c.discarded : c.callbacks_discarded);
        if (timer_fire) timer_fire_done(o);
        d->free();
        return;
    }
    if (d->timer && !d->timer->begin_delivery()) {  // a send_delayed to the inbox or topic, cancelled
        thread_counters::bump(c.cancelled);
        d->free();
        return;
    }
    // The hot path: enter() is two plain stores and two loads (see context_gate).
    if (s->gate.enter(o, o->shut)) [[likely]] {
        note_running(running_session | s->id, d->msg ? d->msg->type().info() : &typeid(timer_callback_tag));
        {
            session_scope scope(s);
            run_guarded_callback(*s,
                                 o->what == event_object::kind::timer   ? "timer callback"
                                 : o->what == event_object::kind::inbox ? "inbox callback"
                                                                         : "subscription callback",
                                 [&] { o->fn(d->msg); });
        }
        s->gate.leave();
        thread_counters::bump(c.callbacks_run);
        if (d->msg) thread_counters::bump(c.delivered);
    } else {
        thread_counters::bump(c.callbacks_refused);
        if (d->msg) thread_counters::bump(d->fanout ? c.ignored : c.lost);
    }
    if (timer_fire) timer_fire_done(o);
    if (d->timer) d->timer->end_delivery();
    d->free();
}

void execute_post(demand* base, demand_mode mode) noexcept {
    auto* p = static_cast<posted_call*>(base);
    session_impl* s = p->owner;
    thread_counters& c = s->env->counters();
    if (mode == demand_mode::run && s->gate.enter(s, s->posts_shut)) [[likely]] {
        note_running(running_session | s->id, &typeid(posted_call_tag));
        {
            session_scope scope(s);
            run_guarded_callback(*s, "posted call", [&] { p->call(p); });
        }
        s->gate.leave();
        thread_counters::bump(c.callbacks_run);
    } else {
        thread_counters::bump(mode == demand_mode::run ? c.callbacks_refused : c.callbacks_discarded);
    }
    p->drop(p);
    s->release();
}

// Destroys an object's callback: on the session's context (or, with the dispatchers stopped,
// wherever its queue is discarded). Nothing can run the callback any more: the object was shut
// before it was unlisted, and the context runs one thing at a time.
void retire_object(event_object* o) noexcept {
    {
        session_scope scope(o->owner);  // what the callback captured may destroy handles
        handler dead = std::move(o->fn);
    }
    o->owner->rt->objects_destroyed.fetch_add(1, std::memory_order_relaxed);
    o->release();  // the list's reference
}

void execute_object_retire(demand* base, demand_mode) noexcept {
    retire_object(static_cast<object_retire*>(base)->obj);
}

void execute_session_retire(demand* base, demand_mode mode) noexcept {
    auto* r = static_cast<session_retire*>(base);
    session_impl* s = r->s;
    for (event_object* o = std::exchange(r->objects, nullptr); o;) {
        event_object* next = o->next;
        retire_object(o);
        o = next;
    }
    // In discard mode the dispatcher is being joined (it may hold its own lock): it releases
    // what is bound to it itself.
    if (mode == demand_mode::run) s->binder->release(s->bound, s);
    s->binder.reset();
    // A demand pushed late (a sender that passed its checks just before the teardown) may sit
    // in a stopped dispatcher's queue until the environment's core is freed: it holds this
    // session, which must not hold the core in turn.
    std::shared_ptr<env_core> keep = std::move(s->env_keep);
    agent_runtime* rt = s->rt;
    rt->sessions_destroyed.fetch_add(1, std::memory_order_relaxed);
    {
        std::lock_guard g(rt->session_lock);
        if (s->reg_prev)
            s->reg_prev->reg_next = s->reg_next;
        else
            rt->sessions = s->reg_next;
        if (s->reg_next) s->reg_next->reg_prev = s->reg_prev;
        --rt->live_sessions;
        // Under the lock: once the joiner sees zero it may go on and free the runtime.
        rt->sessions_idle.notify_all();
    }
    s->release();  // the registry's reference
}

// ---- timers and inboxes ----

class timer_object final : public timer_entry, public event_object {
public:
    timer_object(session_impl* s, handler f) noexcept : event_object(s, kind::timer, std::move(f)) {}

    void add_ref() noexcept override { timer_entry::add_ref(); }
    void release() noexcept override { timer_entry::release(); }
    // cancel() unlinks the entry from the wheel (it leaves at the timer thread's next wake, not
    // at its deadline) and does not wait here: this timer's deliveries never count themselves
    // in timer_entry's state.
    void stop_source() noexcept override { timer_entry::cancel(); }

    /// On the session's context, once a fire has run, been refused or discarded: the next
    /// period may queue one again.
    void fire_done() noexcept { fire_queued_.store(false, std::memory_order_release); }

private:
    ~timer_object() override = default;

    // On the timer thread. A timer slower than its period never has more than one fire queued
    // or running: a period that comes up meanwhile is skipped (and counted by the service).
    // Only this thread sets the flag, and only while it is clear, so a load and a store do.
    fire_result fire() noexcept override {
        if (shut.load(std::memory_order_relaxed)) return fire_result::none;  // an early answer; the gate decides
        if (fire_queued_.load(std::memory_order_acquire)) return fire_result::skipped;
        event_demand* d;
        try {
            d = event_demand::make(this, nullptr, nullptr);
        } catch (...) {
            return fire_result::skipped;  // out of memory: this tick is skipped
        }
        fire_queued_.store(true, std::memory_order_relaxed);  // published by the push
        owner->bound.queue->push(d);
        return fire_result::queued;
    }

    void destroy() noexcept override { delete this; }

    std::atomic<bool> fire_queued_{false};
};

void timer_fire_done(event_object* o) noexcept { static_cast<timer_object*>(o)->fire_done(); }

class inbox_object final : public event_object {
public:
    inbox_object(session_impl* s, message_type t, handler f, std::shared_ptr<inbox_stop_hook> on_stop) noexcept
        : event_object(s, kind::inbox, std::move(f)), on_stop_(std::move(on_stop)) {
        type = t;
    }
    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    // Whoever shuts the inbox (its handle, or its session's destroy) stops what goes with it
    // before returning: a named object's name is free once either returns.
    void stop_source() noexcept override {
        if (on_stop_) on_stop_->stop();
    }

private:
    ~inbox_object() override = default;
    std::atomic<std::uint32_t> refs_{1};  // the list's
    const std::shared_ptr<inbox_stop_hook> on_stop_;  // set before the inbox is shared: read-only
};

class inbox_mbox final : public mbox_impl {
public:
    inbox_mbox(std::shared_ptr<env_core> env, agent_runtime* rt, event_object* o) noexcept
        : mbox_impl(std::move(env), rt, mbox_kind::direct), obj_(o) {
        o->add_ref();
    }
    ~inbox_mbox() override { obj_->release(); }

    void deliver(envelope* e, timer_entry* timer) override {
        envelope_ref ref(e);  // released after the send ended: the payload's destructor is user code
        env_core& env = *env_;
        thread_counters& c = env.counters();
        // From before the check: join() waits for it, so this message cannot land in a queue
        // after the teardown's last sweep (env_core.hpp).
        send_scope sending(c);
        if (!env.open()) env.check_open("sending through", name());
        if (!(e->type() == obj_->type)) {
            thread_counters::bump(c.sent);
            thread_counters::bump(c.ignored);
            return;
        }
        // A cheap early answer for an inbox that is gone; the receiving side checks again.
        if (obj_->shut.load(std::memory_order_acquire) | obj_->owner->gate.shut()) {
            thread_counters::bump(c.sent);
            thread_counters::bump(c.lost);
            return;
        }
        event_demand* d = event_demand::make(obj_, e, timer);
        ref.release();
        thread_counters::bump(c.sent);
        obj_->owner->bound.queue->push(d);
    }

    std::string name() const override { return obj_->display_name(); }

private:
    event_object* obj_;
};

// A session's subscription to an MPMC mbox. References: the session's list, the handle, each
// queued delivery, and each subscriber table of the mbox that lists it (so a publisher
// delivering from an old snapshot touches live memory). It holds the mbox until it is shut
// down: stop_source() leaves the topic and drops the mbox, which breaks the cycle between the
// two (and keeps nothing of the environment alive past the session's teardown).
class subscription_object final : public event_object, public topic_subscriber {
public:
    subscription_object(session_impl* s, message_type t, handler f) noexcept
        : event_object(s, kind::subscription, std::move(f)) {
        type = t;
    }
    void add_ref() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept override {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Joins the topic, unless the object was shut down meanwhile (its session destroyed by
    /// another thread between attach() and here). May throw (out of memory).
    void join(std::shared_ptr<mbox_impl> m) {
        std::lock_guard g(source_lock_);
        if (left_) return;
        static_cast<mpmc_mbox&>(*m).add_subscriber(static_cast<topic_subscriber*>(this), type);
        source_ = std::move(m);
    }

    // Any thread; idempotent. After it, no new snapshot lists the object; an older one may
    // still publish to it, and the shut flag (set before) turns that into "ignored".
    void stop_source() noexcept override {
        std::shared_ptr<mbox_impl> m;
        {
            std::lock_guard g(source_lock_);
            left_ = true;
            m = std::move(source_);
        }
        if (m) static_cast<mpmc_mbox&>(*m).remove_subscriber(static_cast<topic_subscriber*>(this), type);
    }

    // The publisher's thread.
    bool publish(envelope* e, timer_entry* timer) override {
        // A cheap early answer for a subscription that is gone; the gate decides.
        if (shut.load(std::memory_order_acquire) | owner->gate.shut()) {
            e->release();
            return false;
        }
        event_demand* d = event_demand::make(this, e, timer, true);
        owner->bound.queue->push(d);
        return true;
    }

private:
    ~subscription_object() override = default;
    std::atomic<std::uint32_t> refs_{1};  // the list's
    std::mutex source_lock_;
    bool left_ = false;                     // guarded by source_lock_
    std::shared_ptr<mbox_impl> source_;     // guarded by source_lock_
};

// ---- shutdown and destroy ----

bool shutdown_object(event_object* o) noexcept {
    const bool first = context_gate::close(o->shut);
    o->stop_source();
    if (tls_session != o->owner) {
        context_gate::barrier();
        o->owner->gate.wait_not_running(o);
    }
    return first;
}

void destroy_object(event_object* o) noexcept {
    shutdown_object(o);
    session_impl* s = o->owner;
    std::lock_guard g(s->lock);
    if (!o->listed) return;  // destroyed already, or its session was
    o->listed = false;
    if (o->prev)
        o->prev->next = o->next;
    else
        s->objects = o->next;
    if (o->next) o->next->prev = o->prev;
    // Under the lock, so that it is queued before the session's own retire (which is pushed
    // after `dead` was set under this lock): the queue is still the session's.
    s->bound.queue->push(&o->retire);
}

// Destroying a session goes in two halves around the barrier that pairs with the gate, so that
// the teardown can close every session left and pay one barrier for all of them.
struct session_closing {
    bool winner = false;
    event_object* list = nullptr;
};

session_closing close_session(session_impl* s) noexcept {
    agent_runtime* rt = s->rt;
    bool winner;
    {
        std::lock_guard g(rt->session_lock);
        // It stays listed until it retired, so that the teardown watch can name it.
        winner = std::exchange(s->registered, false);
    }
    s->gate.close();
    event_object* list = nullptr;
    if (winner) {
        std::lock_guard g(s->lock);
        s->dead = true;
        list = std::exchange(s->objects, nullptr);
        for (event_object* o = list; o; o = o->next) {
            o->listed = false;
            context_gate::close(o->shut);
            o->stop_source();
        }
    }
    return {winner, list};
}

// After close_session() and a barrier (unless on the session's own context).
void finish_session(session_impl* s, session_closing c) noexcept {
    // Every thread that destroys it waits (not only the winner): the guarantee holds for each.
    if (tls_session != s) s->gate.wait_not_running(nullptr);
    if (c.winner) {
        s->retire.objects = c.list;
        s->bound.queue->push(&s->retire);  // takes over the registry's reference
    }
}

void destroy_session(session_impl* s) noexcept {
    session_closing c = close_session(s);
    if (tls_session != s) context_gate::barrier();
    finish_session(s, c);
}

}  // namespace

session_impl* current_session() noexcept { return tls_session; }
env_core* session_env(session_impl* s) noexcept { return s->env; }
void session_add_ref(session_impl* s) noexcept { s->add_ref(); }
void session_release(session_impl* s) noexcept { s->release(); }

std::string current_context_name() {
    if (session_impl* s = tls_session) return s->name;
    if (agent_core* a = current_agent()) return a->display_name();
    return {};
}

namespace {
void (*post_hook)(void*) = nullptr;
void* post_hook_arg = nullptr;
}  // namespace

void set_post_call_hook(void (*hook)(void*), void* arg) noexcept {
    post_hook = hook;
    post_hook_arg = arg;
}

bool post_call(session_impl* s, posted_call* c) noexcept {
    {
        // The session's environment is reached through a raw pointer, valid while the session
        // is open: a retired session's environment may be gone. The entry scope covers the step
        // from finding the session open to opening the send scope; join() waits for it after it
        // closed every session (env_core.hpp), so the environment outlives the step.
        entry_scope entering;
        if (!s->gate.shut()) [[likely]] {
            if (post_hook) [[unlikely]]
                post_hook(post_hook_arg);
            // From before the check until the call is queued, as a send's (env_core.hpp): join()
            // closes every session's gate, then waits for this, so a call that passed the check
            // is queued before the dispatchers stop and is run, refused or discarded (and
            // counted) before join() builds its report, never swept after it. Both scopes end
            // before drop(): what the callable captured is user code, which may wait for the
            // environment.
            send_scope posting(s->env->counters());
            if (!s->gate.shut()) [[likely]] {
                s->add_ref();
                c->owner = s;
                c->execute = &execute_post;
                s->bound.queue->push(c);
                return true;
            }
        }
    }
    c->drop(c);
    return false;
}

namespace {
// Holds the environment's core for the length of an add_*: the session may have retired with
// an environment that is gone (then it raises), or be retiring now (then attach() raises).
std::shared_ptr<env_core> live_env(session_impl* s, const char* what) {
    std::shared_ptr<env_core> keep = s->env_weak.lock();
    if (!keep)
        throw session_destroyed_error("session '" + s->name + "' is destroyed (its environment is gone): cannot add " +
                                      what);
    return keep;
}

void attach(session_impl* s, event_object* o) {
    std::lock_guard g(s->lock);
    if (s->dead) throw session_destroyed_error("session '" + s->name + "' is destroyed: cannot add an event object");
    o->retire.execute = &execute_object_retire;
    o->listed = true;
    o->next = s->objects;
    if (s->objects) s->objects->prev = o;
    s->objects = o;
    s->rt->objects_created.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

event_object* add_timer(session_impl* s, std::chrono::nanoseconds delay, std::chrono::nanoseconds period, handler fn) {
    if (delay.count() < 0)
        throw usage_error("session '" + s->name + "': add_timer with a negative delay (" +
                          std::to_string(delay.count()) + " ns)");
    if (period.count() < 0)
        throw usage_error("session '" + s->name + "': add_timer with a negative period (" +
                          std::to_string(period.count()) + " ns)");
    const std::shared_ptr<env_core> keep = live_env(s, "a timer");
    auto* t = new timer_object(s, std::move(fn));  // one reference: the list's
    t->deadline_ns = now_ns() + delay.count();
    t->period_ns = period.count();
    try {
        attach(s, t);
    } catch (...) {
        t->release();
        throw;
    }
    t->add_ref();  // the handle's
    t->add_ref();  // the wheel's (arm() takes it over, and releases it when the service stopped)
    s->env->timers().arm(t);
    return t;
}

event_object* add_inbox(session_impl* s, message_type type, handler fn, mbox& address,
                        std::shared_ptr<inbox_stop_hook> on_stop) {
    const std::shared_ptr<env_core> keep = live_env(s, "an inbox");
    auto* o = new inbox_object(s, type, std::move(fn), std::move(on_stop));
    std::shared_ptr<inbox_mbox> m;
    try {
        m = std::make_shared<inbox_mbox>(s->env_keep, s->rt, o);
        attach(s, o);
    } catch (...) {
        m.reset();
        o->release();
        throw;
    }
    o->add_ref();  // the handle's
    address = mbox(std::move(m));
    return o;
}

event_object* add_subscription(session_impl* s, const mbox& from, message_type type, handler fn) {
    const std::shared_ptr<env_core> keep = live_env(s, "a subscription");
    auto describe = [&] {
        return "session '" + s->name + "': subscription to " + readable_name(type) + " on " + from.name();
    };
    if (!from) throw subscription_error(describe() + ": the mbox handle is empty");
    mbox_impl& m = *from.impl();
    if (&m.env() != s->env) throw subscription_error(describe() + ": the mbox belongs to another environment");
    if (m.kind() != mbox_kind::mpmc)
        throw subscription_error(describe() + ": it is a direct mbox (sessions subscribe to MPMC mboxes only)");
    auto* o = new subscription_object(s, type, std::move(fn));
    try {
        attach(s, o);
    } catch (...) {
        o->release();
        throw;
    }
    o->add_ref();  // the handle's
    try {
        o->join(from.impl());
    } catch (...) {
        destroy_object(o);
        o->release();
        throw;
    }
    return o;
}

std::string agent_runtime::describe_session(std::uint64_t id) const {
    std::lock_guard g(session_lock);
    for (session_impl* s = sessions; s; s = s->reg_next)
        if (s->id == id) return "session '" + s->name + "'";
    return {};
}

void agent_runtime::stop_sessions() noexcept {
    std::vector<session_impl*> left;
    {
        std::lock_guard g(session_lock);
        sessions_closed = true;
        try {
            for (session_impl* s = sessions; s; s = s->reg_next) left.push_back(s);
        } catch (...) {
            fatal("out of memory destroying sessions");
        }
        // A user's destroy() may retire (and free) one meanwhile.
        for (session_impl* s : left) s->add_ref();
    }
    // One barrier for the whole sweep (it interrupts every running thread of the process).
    std::vector<session_closing> closing;
    try {
        closing.reserve(left.size());
    } catch (...) {
        fatal("out of memory destroying sessions");
    }
    for (session_impl* s : left) closing.push_back(close_session(s));
    if (!left.empty()) context_gate::barrier();
    for (std::size_t i = 0; i < left.size(); ++i) {
        finish_session(left[i], closing[i]);
        left[i]->release();
    }
    std::unique_lock g(session_lock);
    sessions_idle.wait(g, [&] { return live_sessions == 0; });
}

}  // namespace internal

// ---- event_handle ----

event_handle& event_handle::operator=(event_handle&& o) noexcept {
    if (this != &o) {
        destroy();
        obj_ = std::exchange(o.obj_, nullptr);
    }
    return *this;
}

event_handle::~event_handle() { destroy(); }

event_handle::operator bool() const noexcept {
    return obj_ && obj_->shut.load(std::memory_order_acquire) == 0 && !obj_->owner->gate.shut();
}

bool event_handle::shutdown() noexcept { return obj_ && internal::shutdown_object(obj_); }

void event_handle::destroy() noexcept {
    if (!obj_) return;
    internal::event_object* o = std::exchange(obj_, nullptr);
    internal::destroy_object(o);
    o->release();
}

void event_handle::detach() noexcept {
    if (obj_) std::exchange(obj_, nullptr)->release();
}

// ---- session ----

session::session(environment& env, session_options options) {
    internal::event_gate_init();
    auto& core = *env.core();
    core.check_not_stopping("creating session", options.name);
    auto& rt = internal::agent_runtime::of(core);
    auto* s = new internal::session_impl(env.core(), &rt, std::move(options.name));
    s->retire.s = s;
    s->retire.execute = &internal::execute_session_retire;
    try {
        s->binder = options.bind ? options.bind.impl() : core.default_dispatcher()->make_binder();
        if (!internal::binds_in(*s->binder, core))
            internal::throw_foreign_binder(*s->binder, core, "session '" + s->name + "'");
        s->bound = internal::prepare_binding(*s->binder, s, core, "creating session", s->name);
    } catch (...) {
        delete s;
        throw;
    }
    // Decided under the lock, read from a local: once listed, the teardown may close the
    // session (clearing `registered`) and retire it on its context before this line goes on.
    bool listed = false;
    {
        std::lock_guard g(rt.session_lock);
        if (!rt.sessions_closed) {
            s->registered = listed = true;
            s->reg_next = rt.sessions;
            if (rt.sessions) rt.sessions->reg_prev = s;
            rt.sessions = s;
            ++rt.live_sessions;
        }
    }
    if (!listed) {
        s->binder->release(s->bound, s);
        std::string name = s->name;
        delete s;
        throw environment_stopped_error("creating session '" + name + "': environment '" + core.name() +
                                        "' is stopping");
    }
    rt.sessions_created.fetch_add(1, std::memory_order_relaxed);
    impl_ = s;
}

session& session::operator=(session&& o) noexcept {
    if (this != &o) {
        destroy();
        impl_ = std::exchange(o.impl_, nullptr);
    }
    return *this;
}

session::~session() { destroy(); }

session::operator bool() const noexcept { return impl_ && !impl_->gate.shut(); }

std::string session::name() const { return impl_ ? impl_->name : std::string(); }

void session::destroy() noexcept {
    if (!impl_) return;
    internal::session_impl* s = std::exchange(impl_, nullptr);
    // The environment may be gone (then the session retired with it and there is nothing to
    // do); while `keep` holds its core, the runtime this touches stays.
    if (std::shared_ptr<internal::env_core> keep = s->env_weak.lock()) internal::destroy_session(s);
    s->release();
}

void session::detach() noexcept {
    if (impl_) std::exchange(impl_, nullptr)->release();
}

}  // namespace mailroom
