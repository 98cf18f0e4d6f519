#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/core/user_call.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/session/context.hpp>
#include <mailroom/session/event_object.hpp>

#include <algorithm>

namespace mailroom::internal {

namespace {

void execute_post(demand* base, demand_mode mode) noexcept;

}  // namespace

MAILROOM_FAST_TLS constinit thread_local context_core* tls_current_context = nullptr;

context_core*& current_context() noexcept { return tls_current_context; }

bool context_core::describe_if(std::uint64_t wanted, std::string& out) noexcept {
    std::lock_guard g(pending_lock);
    if (start_state(std::memory_order_relaxed) != start_open || id != wanted) return false;
    try {
        out = describe();
        if (ops->where) out += ops->where(*this);
    } catch (...) {
        out = "context #" + std::to_string(wanted);  // short: no allocation
    }
    return true;
}

// ---- the table ----

void context_core::add_entry(table_entry e) {
    list_for_adding().push_back(std::move(e));
}

table_entry context_core::take_entry(std::uint64_t mbox_id, message_type type) noexcept {
    if (added)
        for (auto it = added->begin(); it != added->end(); ++it)
            if (it->mbox_id == mbox_id && it->type == type) {
                table_entry out = std::move(*it);
                added->erase(it);
                return out;
            }
    for (auto it = table.begin(); it != table.end(); ++it)
        if (it->mbox_id == mbox_id && it->type == type) {
            if (dispatching) {
                // The running handler may be this one: it is destroyed after it returns.
                table_entry out;
                out.mbox_id = it->mbox_id;
                out.type = it->type;
                out.obj = it->obj;
                out.source = std::move(it->source);
                it->obj = nullptr;
                it->mbox_id = 0;
                after_call |= after_removed;
                return out;
            }
            table_entry out = std::move(*it);
            table.erase(it);
            return out;
        }
    return {};
}

void context_core::settle() noexcept {
    if (after_call & after_removed)
        table.erase(std::remove_if(table.begin(), table.end(), [](const table_entry& e) { return e.mbox_id == 0; }),
                    table.end());
    after_call = 0;
    if (added) {
        for (auto& e : *added) {
            try {
                table.push_back(std::move(e));
            } catch (...) {
                fatal("out of memory adding a subscription");
            }
        }
        added.reset();
    }
}

// ---- the arena ----

context_arena::~context_arena() = default;

context_core* context_arena::allocate() {
    std::lock_guard g(lock_);
    if (!free_) {
        auto chunk = std::make_unique<context_core[]>(chunk_size_);
        for (std::size_t i = 0; i < chunk_size_; ++i) {
            chunk[i].arena = this;
            chunk[i].env = env_;
            chunk[i].run_message = &execute_message;
            chunk[i].reg_next = free_;
            free_ = &chunk[i];
        }
        chunks_.push_back(std::move(chunk));
        chunk_size_ = std::min<std::size_t>(chunk_size_ * 2, 4096);
    }
    context_core* c = free_;
    free_ = c->reg_next;
    c->reg_next = nullptr;
    return c;
}

void context_arena::recycle(context_core* c) noexcept {
    // The generation already moved on; the rest is reset for the next life. The atomics read by
    // stale senders stay as they are until the next owner resets them.
    // An entry of an event object holds a reference: one whose retire comes after the life's
    // end (an agent's inbox destroyed in on_finish) still has its entry here.
    for (auto* list : {&c->table, c->added.get()}) {
        if (!list) continue;
        for (auto& e : *list)
            if (e.obj) e.obj->release();
        list->clear();
    }
    c->added.reset();
    c->dispatching = false;
    c->after_call = 0;
    c->dead = false;
    c->objects = nullptr;
    c->binder.reset();
    c->bound = {};
    c->owner = nullptr;
    c->group = nullptr;
    c->policy = exception_policy::inherit;
    c->direct = mbox();
    c->direct_made.store(false, std::memory_order_relaxed);
    c->end_limits();
    std::unique_ptr<std::string> no_name;  // the old one, freed outside the lock
    {
        std::lock_guard g(c->pending_lock);
        c->name.swap(no_name);
    }
    std::lock_guard g(lock_);
    c->reg_next = free_;
    free_ = c;
}

bool context_arena::describe(std::uint64_t id, std::string& out) noexcept {
    std::lock_guard g(lock_);
    // Chunk sizes double from 64 up to 4096, in the order they were made.
    std::size_t size = 64;
    for (auto& chunk : chunks_) {
        for (std::size_t i = 0; i < size; ++i)
            if (chunk[i].describe_if(id, out)) return true;
        size = std::min<std::size_t>(size * 2, 4096);
    }
    return false;
}

// ---- running callbacks ----

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

// What happens after a callback threw: logged, counted and handled by the policy. Out of line
// and cold, so that the path of a callback that returns normally builds no string.
[[gnu::noinline, gnu::cold]] void on_failure(context_core& c, const char* what, message_type type,
                                             const char* failure) noexcept {
    env_core& env = *c.env;
    const exception_policy p = c.ops->policy(c);
    std::string text;
    try {
        text = c.describe() + ": " + what;
        if (type.info()) text += " for " + readable_name(type);
        text += std::string(" threw: ") + failure;
        if (c.kind == context_kind::agent) text += std::string(" (policy: ") + policy_name(p) + ")";
    } catch (...) {
        text = "a callback threw (and formatting the report ran out of memory)";
    }
    env.log(text);
    // Counted after it is logged: whoever sees the count sees the report too.
    thread_counters::bump(env.counters().exceptions);
    switch (p) {
        case exception_policy::deregister_coop:
            if (c.ops->deregister) c.ops->deregister(c);
            break;
        case exception_policy::log_and_continue: break;
        default: fatal(text.c_str());
    }
}
}  // namespace

void on_thrown(context_core& c, const char* what, message_type type) noexcept {
    std::string text;  // the exception's what(), which must outlive the catch
    const char* failure = call_catching([] { throw; }, text);
    on_failure(c, what, type, failure);
}

bool run_guarded(context_core& c, const char* what, message_type type, void (*fn)(void*), void* arg) noexcept {
    return guarded(c, what, type, [&] { fn(arg); });
}

run_outcome run_callback(context_core& c, std::uint32_t g, const void* tag, const context_gate::flag& shut,
                         const char* what, message_type type, void (*fn)(void*), void* arg) noexcept {
    // The context's own thread: its generation only changes here (or before its start).
    if (c.gen.load(std::memory_order_acquire) != g) return run_outcome::gone;
    // An agent's own callbacks (its handlers, hooks and posted calls) are never waited for
    // from another thread: an agent ends on its own context.
    return run_checked(c, tag != &c || c.kind != context_kind::agent, tag, shut, what, type, fn, arg);
}

namespace {

struct handler_call {
    const handler* fn;
    envelope* msg;
};

void call_handler(void* p) {
    auto* h = static_cast<handler_call*>(p);
    const_cast<handler&>(*h->fn)(h->msg);
}

}  // namespace

void execute_message(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<message_demand*>(base);
    auto* c = static_cast<context_core*>(d->target);
    thread_counters& counters = c->env->counters();
    // A demand counted by a message limit came through execute_limited() (limit_table.cpp),
    // which gave back its count first: this path pays nothing for limits.
    if (mode == demand_mode::discard) [[unlikely]] {
        thread_counters::bump(counters.discarded);
        d->free();
        return;
    }
    // The one check of the life on the execute path: the context's own thread, where the
    // generation only changes between callbacks.
    if (c->gen.load(std::memory_order_acquire) != d->gen) [[unlikely]] {
        thread_counters::bump(d->kind == delivery_kind::fanout ? counters.ignored : counters.lost);
        d->free();
        return;
    }
    const table_entry* e = c->find(d->key, d->msg->type());
    if (!e) [[unlikely]] {
        // An inbox that is gone loses what is sent to it; an agent's direct mbox or a topic
        // with no handler for the type ignores it.
        thread_counters::bump(d->kind == delivery_kind::inbox ? counters.lost : counters.ignored);
        d->free();
        return;
    }
    if (d->timer && !d->timer->begin_delivery()) {  // a send_delayed, cancelled
        thread_counters::bump(counters.cancelled);
        d->free();
        return;
    }
    event_object* o = e->obj;
    if (!o && c->kind == context_kind::agent) [[likely]] {
        // An agent's own handler: not gated (nothing waits for it from another thread), called
        // directly. What it left to do (a table change, a decline by its state) costs one test.
        c->dispatching = true;
        guarded(*c, "handler", d->msg->type(), [&] { const_cast<handler&>(e->fn)(d->msg); });
        c->dispatching = false;
        bool declined = false;
        if (c->after_call) [[unlikely]] {
            declined = c->after_call & context_core::after_declined;
            c->settle();
        }
        thread_counters::bump(declined ? counters.ignored : counters.delivered);
    } else {
        handler_call call{o ? &o->fn : &e->fn, d->msg};
        const run_outcome r = run_checked(*c, true, o ? static_cast<const void*>(o) : c, o ? o->shut : c->own_shut,
                                          o ? o->kind_name() : "handler", d->msg->type(), &call_handler, &call);
        if (r == run_outcome::ran) [[likely]] {
            thread_counters::bump(counters.delivered);
            if (o) thread_counters::bump(counters.callbacks_run);
        } else {
            if (o) thread_counters::bump(counters.callbacks_refused);
            thread_counters::bump(d->kind == delivery_kind::fanout ? counters.ignored : counters.lost);
        }
    }
    if (d->timer) d->timer->end_delivery();
    d->free();
}

namespace {

void execute_post(demand* base, demand_mode mode) noexcept {
    auto* p = static_cast<posted_call*>(base);
    context_core* c = p->target;
    thread_counters& counters = c->env->counters();
    if (mode == demand_mode::discard) {
        thread_counters::bump(counters.callbacks_discarded);
    } else {
        const run_outcome r = run_callback(
            *c, p->gen, c, c->own_shut, "posted call", message_type{},
            [](void* arg) {
                auto* p = static_cast<posted_call*>(arg);
                p->call(p);
            },
            p);
        thread_counters::bump(r == run_outcome::ran ? counters.callbacks_run : counters.callbacks_refused);
    }
    p->drop(p);
}

void (*post_hook)(void*) = nullptr;
void* post_hook_arg = nullptr;

}  // namespace

void set_post_call_hook(void (*hook)(void*), void* arg) noexcept {
    post_hook = hook;
    post_hook_arg = arg;
}

bool post_to(context_core* c, std::uint32_t g, posted_call* p) noexcept {
    {
        // The context's environment is reached through its record, which names it only while
        // the life `g` lasts. The entry scope covers the step from finding that life open to
        // opening the send scope; join() waits for it after it closed every context
        // (env_core.hpp), so the environment outlives the step.
        entry_scope entering;
        if (c->gen.load(std::memory_order_acquire) == g && !c->gate.shut()) [[likely]] {
            if (post_hook) [[unlikely]]
                post_hook(post_hook_arg);
            // From before the check until the call is queued, as a send's: join() closes every
            // context, then waits for this, so a call that passed the check is queued before
            // the dispatchers stop and is run, refused or discarded (and counted) before join()
            // builds its report. Both scopes end before drop(): what the callable captured is
            // user code, which may wait for the environment.
            send_scope posting(c->env->counters());
            if (c->gen.load(std::memory_order_acquire) == g && !c->gate.shut()) [[likely]] {
                p->target = c;
                p->gen = g;
                p->execute = &execute_post;
                if (c->push_unless_finished(p)) return true;
            }
        }
    }
    p->drop(p);
    return false;
}

// ---- binding ----

void throw_foreign_binder(const binder_impl& b, const env_core& env, const std::string& what) {
    const dispatcher_impl& d = b.target();
    throw binding_error(what + " of environment '" + env.name() + "': dispatcher '" + d.name() + "' belongs to " +
                        (d.owner() ? "environment '" + d.owner_name() + "'" : std::string("no environment")) +
                        ", not to this one (a context runs only on its own environment's dispatchers)");
}

binding prepare_binding(binder_impl& b, const void* key, const env_core& env, const char* what,
                        std::string_view object, const binding* first) {
    try {
        return first ? b.prepare_again(*first, key) : b.prepare(key);
    } catch (const binding_error&) {
        // The teardown sets `stopping` before it shuts the dispatchers down (release/acquire on
        // both flags), so a dispatcher it shut down is always seen with `stopping` set.
        if (!env.stopping() || b.target().accepting()) throw;
        throw environment_stopped_error(std::string(what) + " '" + std::string(object) + "': environment '" +
                                        env.name() + "' is stopping (its teardown shut dispatcher '" +
                                        b.target().name() + "' down)");
    }
}

}  // namespace mailroom::internal
