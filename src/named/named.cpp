// Named objects and requests.
//
// A named object is an inbox (a session event object) whose messages are `named_delivery`s,
// plus an entry in the environment's name_table pointing at the inbox's address. Sending looks
// the name up inside an RCU read-side critical section (no lock) and delivers to the inbox;
// unregistering removes the entry (new lookups miss it) and then shuts the inbox down, which
// gives MME's guarantee: once that returns on a foreign thread no message is being handled and
// none will be, even one already queued (the gate refuses it).
//
// A request is a reference-counted request_core. The delivery carrying it answers it on
// destruction if nobody did (abandoned, saying why), so no requester waits forever: not when
// the object is unregistered with the request queued, nor when its session or the environment
// goes away, nor when a handler drops it unanswered.

#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/core/pool.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/queue/futex.hpp>

#include <mailroom/agent/runtime.hpp>
#include <mailroom/session/context.hpp>
#include <mailroom/session/event_object.hpp>
#include <mailroom/named/name_table.hpp>
#include <mailroom/named/remote_router.hpp>
#include <mailroom/core/handle_access.hpp>

#include <array>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <mutex>

namespace mailroom {

const char* to_string(request_state s) noexcept {
    switch (s) {
        case request_state::posted: return "posted";
        case request_state::transmitted: return "transmitted";
        case request_state::replied: return "replied";
        case request_state::rejected: return "rejected";
        case request_state::abandoned: return "abandoned";
    }
    return "?";
}

void check_name(std::string_view name, bool allow_any) {
    auto bad = [&](const char* why) {
        throw invalid_name_error("invalid name '" + std::string(name.substr(0, 64)) +
                                 (name.size() > 64 ? "...'" : "'") + ": " + why);
    };
    if (name.empty()) bad("empty");
    if (name.size() > max_name_length) bad("longer than 255 characters");
    if (name == "*") {
        if (!allow_any) bad("'*' is the any-object, not a plain name");
        return;
    }
    // Every send checks its name: one table look-up per character.
    static constexpr auto allowed = [] {
        std::array<bool, 256> t{};
        for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
        for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
        for (int c = '0'; c <= '9'; ++c) t[c] = true;
        for (unsigned char c : std::string_view("._:/-")) t[c] = true;
        return t;
    }();
    bool ok = true;
    for (char c : name) ok &= allowed[static_cast<unsigned char>(c)];
    if (!ok) bad("characters are limited to A-Z a-z 0-9 . _ : / -");
}

// Like a session's callback that throws: logged through the environment whose session or
// agent runs the coroutine, and counted in its handler_exceptions.
void task::promise_type::unhandled_exception() noexcept {
    std::string what;
    try {
        throw;
    } catch (const std::exception& e) {
        try {
            what = e.what();
        } catch (...) {
        }
    } catch (...) {
        what = "an exception not derived from std::exception";
    }
    internal::env_core* env = internal::current_env();
    if (!env) {
        std::fprintf(stderr, "mailroom: a coroutine task threw: %s\n", what.c_str());
        return;
    }
    try {
        internal::context_core* c = internal::current_context();
        env->log((c ? c->describe() : std::string("a callback")) + ": coroutine task threw: " + what);
    } catch (...) {
    }
    internal::thread_counters::bump(env->counters().exceptions);
}

namespace internal {

class request_core;

// ---- the registry: one per environment ----

class named_registry final : public env_extension {
public:
    explicit named_registry(env_core* e) : env(e) {}
    ~named_registry() override = default;

    /// The registry of `e`, made on first use. Any thread; the caller holds `e`.
    static named_registry& of(env_core& e) {
        // Every request and send asks: the last environment this thread asked about is
        // remembered (ids are never reused, so a stale entry cannot match), and only a miss
        // takes the environment's extension lock.
        struct last_asked {
            std::uint64_t env_id = 0;
            named_registry* reg = nullptr;
        };
        MAILROOM_FAST_TLS static thread_local last_asked last;
        if (last.env_id == e.id()) return *last.reg;
        auto& reg = e.extension<named_registry>(&key, [&] { return std::make_unique<named_registry>(&e); });
        last = {e.id(), &reg};
        return reg;
    }

    // After the agent and session layers': the cooperations finish (and their on_finish may
    // still reach named objects) and the sessions are destroyed, each taking its names with it
    // (counted unregistered), before this one closes the registry (guarantee 4's order).
    static constexpr int phase = session_runtime::phase + 1;
    static_assert(phase > agent_runtime::phase && phase < mbox_registry::phase);
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override {}
    void wait_stopped() noexcept override {
        // The sessions are gone, and their names with them (each named object unregisters when
        // its session is destroyed). Whatever is still listed is unlisted now, and every
        // entry's release runs before the environment goes on.
        {
            std::lock_guard g(lock);
            closed = true;
        }
        std::vector<std::string> names;
        try {
            table.for_each([&](name_entry& e) { names.push_back(e.name()); });
        } catch (...) {
        }
        for (auto& n : names) table.remove(n);
        abandon_open_requests();
        table.wait_for_releases();
    }

    /// A request whose incoming left its handler unanswered: listed, so that the teardown can
    /// abandon it whoever holds the incoming (the timer of its timeout stops with the
    /// environment). Any thread; the request is not final or is made so here.
    void track(request_core* r) noexcept;
    /// Unlists `r` (once it is final); true when the list's reference is now the caller's.
    bool untrack(request_core* r) noexcept;
    void abandon_open_requests() noexcept;
    /// The registry of `e` if one was made, else null. Any thread.
    static const named_registry* find(const env_core& e) noexcept { return e.find_extension<named_registry>(&key); }

    named_stats stats() const noexcept {
        named_stats s;
        s.named_registered = registered.load(std::memory_order_acquire);
        s.named_unregistered = unregistered.load(std::memory_order_acquire);
        s.named_messages = messages.load(std::memory_order_acquire);
        s.named_rejected = rejected_sends.load(std::memory_order_acquire);
        s.requests_posted = requests.load(std::memory_order_acquire);
        s.requests_replied = replied.load(std::memory_order_acquire);
        s.requests_rejected = rejected.load(std::memory_order_acquire);
        s.requests_abandoned = abandoned.load(std::memory_order_acquire);
        s.replies_orphaned = orphaned.load(std::memory_order_acquire);
        return s;
    }

    env_core* env;
    name_table table;
    std::mutex lock;     // registration against closing
    bool closed = false;
    std::mutex open_lock;               // the tracked requests
    request_core* open_head = nullptr;  // guarded by open_lock, with a reference each
    bool open_closed = false;           // guarded by open_lock: the teardown swept them
    std::atomic<std::uint64_t> next_id{1};
    std::atomic<std::uint64_t> registered{0}, unregistered{0}, messages{0}, rejected_sends{0}, requests{0},
        replied{0}, rejected{0}, abandoned{0}, orphaned{0};

    // The remote router (remote_router.hpp). Read only when a name missed every local object
    // and has a '/': the flag keeps the local miss path free of the lock.
    std::atomic<bool> has_router{false};
    std::mutex router_lock;
    std::shared_ptr<remote_router> router;  // guarded by router_lock

private:
    static constexpr int key = 0;  // the extension's key: its address
};

/// What the table lists: the object's inbox address. Freed after the grace period.
struct named_entry final : name_entry {
    named_entry(std::string n, mbox a) : name_entry(std::move(n)), address(std::move(a)) {}
    void table_released() noexcept override { delete this; }
    mbox address;
};

/// Held by the object's inbox and stopped with it (by any handle, the session's destroy or the
/// teardown): the name goes with the object, not with one handle. Unregisters once.
struct named_object_impl final : inbox_stop_hook {
    std::string name;
    std::shared_ptr<env_core> env_keep;  // keeps the registry
    named_registry* reg = nullptr;
    named_entry* entry = nullptr;
    event_object* inbox = nullptr;  // set before the name is listed, so before any delivery
    std::atomic<bool> done{false};

    void stop() noexcept override { unregister(); }

    void unregister() noexcept {
        if (done.exchange(true, std::memory_order_acq_rel)) return;
        // By name and identity: the teardown may have removed (and freed) the entry already,
        // and nothing can have taken the name since (the registry is closed then).
        if (reg->table.remove(name, entry)) reg->unregistered.fetch_add(1, std::memory_order_release);
    }
};

// ---- requests ----

class request_core {
public:
    request_core(std::shared_ptr<env_core> e, named_registry* r, message_type t)
        : env(std::move(e)), reg(r), id(r->next_id.fetch_add(1, std::memory_order_relaxed)), reply_type(t) {}
    ~request_core() {
        if (reply) reply->release();
    }

    void add_ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    request_state get() const noexcept { return static_cast<request_state>(st.load(std::memory_order_acquire)); }

    void mark_transmitted() noexcept {
        std::uint32_t expected = static_cast<std::uint32_t>(request_state::posted);
        st.compare_exchange_strong(expected, static_cast<std::uint32_t>(request_state::transmitted),
                                   std::memory_order_acq_rel);
    }

    /// Moves to a final state unless it is in one; takes `body` over. False when it was final.
    /// `cancelling` also drops a then-callback not yet run, for good.
    bool finish(request_state final, envelope* body, std::string why, bool cancelling = false) noexcept;

    /// Runs the then-callback on its session; what it throws goes to the session's guard.
    void run_then(handler& fn);

    std::atomic<std::uint32_t> refs{1};
    std::atomic<std::uint32_t> st{static_cast<std::uint32_t>(request_state::posted)};
    std::atomic<std::uint32_t> sleepers{0};
    std::shared_ptr<env_core> env;
    named_registry* reg;
    std::uint64_t id;
    message_type reply_type;
    std::int64_t timeout_ns = 0;
    envelope* reply = nullptr;  // written before the final state is stored
    std::string reason;         // the same

    std::mutex lock;
    // Guarded by lock.
    void (*cont)(void*) noexcept = nullptr;
    void* cont_arg = nullptr;
    bool has_continuation = false;
    context_ref then_ctx;                    // until the callback is posted
    const context_core* then_home = nullptr;  // where then() runs its callback
    handler then_fn;
    bool cancelled = false;
    bool then_running = false;
    std::condition_variable then_idle;
    timer_entry* timer = nullptr;  // with a reference

    // In the registry's list of open requests (see named_registry::track). `tracked` is also
    // read by finish() without the list's lock: a Dekker pair with the final state.
    std::atomic<bool> tracked{false};
    request_core* open_prev = nullptr;  // guarded by reg->open_lock
    request_core* open_next = nullptr;  // guarded by reg->open_lock
};

namespace {

template <class F>
void post_on(const context_ref& c, F&& f) {
    post_to(c.core, c.gen, make_posted_call(std::forward<F>(f)));  // dropped (its destructor run) when the context is gone
}

// A request's timeout. It holds the request (and so its reply and the environment) only until
// it fires or is cancelled: the request's finish() cancels it, and cancel() lets go of the
// request at once (release_payload) instead of when the deadline comes. The pointer is
// exchanged because fire() may run on the timer thread at that moment.
struct timeout_entry final : timer_entry {
    timeout_entry(request_core* r, std::int64_t after) : req(r), after_ns(after) { r->add_ref(); }
    fire_result fire() noexcept override {
        request_core* r = req.exchange(nullptr, std::memory_order_acq_rel);
        if (!r) return fire_result::none;  // cancelled meanwhile
        char text[64];
        std::snprintf(text, sizeof text, "timed out after %.3f ms", static_cast<double>(after_ns) / 1e6);
        r->finish(request_state::abandoned, nullptr, text);
        r->release();
        return fire_result::queued;
    }
    void release_payload() noexcept override {
        if (request_core* r = req.exchange(nullptr, std::memory_order_acq_rel)) r->release();
    }
    void destroy() noexcept override {
        if (request_core* r = req.load(std::memory_order_relaxed)) r->release();
        delete this;
    }
    std::atomic<request_core*> req;
    std::int64_t after_ns;
};

// The then-callback, posted to the requester's session when the request is final.
struct then_call {
    request_core* r;  // a reference
    handler fn;
    then_call(request_core* req, handler f) noexcept : r(req), fn(std::move(f)) {}
    then_call(then_call&& o) noexcept : r(std::exchange(o.r, nullptr)), fn(std::move(o.fn)) {}
    ~then_call() {
        if (r) r->release();
    }
    void operator()() { r->run_then(fn); }
};

// A coroutine waiting on a request, resumed on its session; destroyed unresumed if the session
// is destroyed first.
struct resumer {
    std::coroutine_handle<> h;
    explicit resumer(std::coroutine_handle<> c) noexcept : h(c) {}
    resumer(resumer&& o) noexcept : h(std::exchange(o.h, {})) {}
    ~resumer() {
        if (h) h.destroy();
    }
    void operator()() { std::exchange(h, {}).resume(); }
};

struct resume_ctx {
    context_ref ctx;  // the session or agent whose callback awaited
    std::coroutine_handle<> h;
};

void post_resumer(resume_ctx* c) noexcept {
    try {
        post_on(c->ctx, resumer(c->h));
    } catch (...) {
        c->h.destroy();
    }
}

}  // namespace

bool request_core::finish(request_state final, envelope* body, std::string why, bool cancelling) noexcept {
    void (*c)(void*) noexcept = nullptr;
    void* carg = nullptr;
    context_ref ts;
    handler tf;
    timer_entry* t = nullptr;
    bool won = false;
    {
        std::lock_guard g(lock);
        if (cancelling) cancelled = true;
        ts = std::exchange(then_ctx, {});
        tf = std::move(then_fn);
        if (get() < request_state::replied) {
            won = true;
            reply = std::exchange(body, nullptr);
            try {
                reason = std::move(why);
            } catch (...) {
            }
            // Counted before the state is published: whoever sees it final sees it counted.
            switch (final) {
                case request_state::replied: reg->replied.fetch_add(1, std::memory_order_release); break;
                case request_state::rejected: reg->rejected.fetch_add(1, std::memory_order_release); break;
                default: reg->abandoned.fetch_add(1, std::memory_order_release); break;
            }
            st.store(static_cast<std::uint32_t>(final), std::memory_order_seq_cst);
            c = std::exchange(cont, nullptr);
            carg = cont_arg;
            t = std::exchange(timer, nullptr);
        }
    }
    if (body) body->release();
    // Tracked (its incoming left the handler): unlisted now that it is final. The caller holds
    // a reference, so dropping the list's one below cannot free it while this runs.
    const bool untracked = won && tracked.load(std::memory_order_seq_cst) && reg->untrack(this);
    if (won) {
        if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake(st, INT_MAX);
        if (t) {
            t->cancel();
            t->release();
        }
        if (c) c(carg);
    }
    if (ts) {
        if (won && tf && !cancelling) {
            add_ref();
            try {
                post_on(ts, then_call(this, std::move(tf)));
            } catch (...) {
            }
        }
    }
    if (untracked) release();
    return won;
}

void request_core::run_then(handler& fn) {
    {
        std::lock_guard g(lock);
        if (cancelled) return;
        then_running = true;
    }
    // Cleared however fn leaves, so that a cancel() on another thread returns.
    struct idle_again {
        request_core* r;
        ~idle_again() {
            std::lock_guard g(r->lock);
            r->then_running = false;
            r->then_idle.notify_all();
        }
    } done{this};
    fn(nullptr);  // what it throws goes to the session's guard: logged, counted, the session goes on
}

void named_registry::track(request_core* r) noexcept {
    if (r->tracked.load(std::memory_order_relaxed)) return;  // set only here, under the lock
    bool stopped;
    {
        std::lock_guard g(open_lock);
        if (r->tracked.load(std::memory_order_relaxed)) return;
        stopped = open_closed;
        if (!stopped) {
            // With finish(): it stores the final state, then reads `tracked`; here the reverse.
            // One of the two sees the other, so a final request is never left listed.
            r->tracked.store(true, std::memory_order_seq_cst);
            if (r->st.load(std::memory_order_seq_cst) >= static_cast<std::uint32_t>(request_state::replied)) {
                r->tracked.store(false, std::memory_order_relaxed);
                return;
            }
            r->add_ref();  // the list's
            r->open_prev = nullptr;
            r->open_next = open_head;
            if (open_head) open_head->open_prev = r;
            open_head = r;
        }
    }
    if (stopped) {
        std::string why;
        try {
            why = "environment '" + env->name() + "' stopped before it was answered";
        } catch (...) {
        }
        r->finish(request_state::abandoned, nullptr, std::move(why));
    }
}

bool named_registry::untrack(request_core* r) noexcept {
    std::lock_guard g(open_lock);
    if (!r->tracked.load(std::memory_order_relaxed)) return false;  // the teardown took it
    r->tracked.store(false, std::memory_order_relaxed);
    if (r->open_prev)
        r->open_prev->open_next = r->open_next;
    else
        open_head = r->open_next;
    if (r->open_next) r->open_next->open_prev = r->open_prev;
    return true;
}

void named_registry::abandon_open_requests() noexcept {
    request_core* list;
    {
        std::lock_guard g(open_lock);
        open_closed = true;
        list = std::exchange(open_head, nullptr);
        for (request_core* r = list; r; r = r->open_next) r->tracked.store(false, std::memory_order_relaxed);
    }
    // The chain is ours now (nobody links or unlinks an untracked request), with its references.
    std::string why;
    try {
        why = "environment '" + env->name() + "' stopped before it was answered";
    } catch (...) {
    }
    while (request_core* r = list) {
        list = r->open_next;
        r->finish(request_state::abandoned, nullptr, why);
        r->release();
    }
}

request_core* new_request(environment& env, message_type reply_type, std::chrono::nanoseconds timeout) {
    auto& reg = named_registry::of(*internal::core_of(env));
    auto* r = new request_core(internal::core_of(env), &reg, reply_type);
    r->timeout_ns = timeout.count() > 0 ? timeout.count() : 0;
    reg.requests.fetch_add(1, std::memory_order_release);
    if (timeout.count() > 0) {
        auto* t = new timeout_entry(r, timeout.count());
        t->deadline_ns = now_ns() + timeout.count();
        t->add_ref();  // the request's; the first one goes to the wheel
        {
            std::lock_guard g(r->lock);
            r->timer = t;
        }
        if (!internal::core_of(env)->timers().arm(t))
            r->finish(request_state::abandoned, nullptr, "environment '" + env.name() + "' is stopped");
    }
    return r;
}

void request_add_ref(request_core* r) noexcept { r->add_ref(); }
void request_release(request_core* r) noexcept { r->release(); }
request_state request_get_state(const request_core* r) noexcept { return r ? r->get() : request_state::abandoned; }
std::uint64_t request_id(const request_core* r) noexcept { return r ? r->id : 0; }
std::string request_reason(const request_core* r) {
    if (!r || r->get() < request_state::replied) return {};
    return r->reason;  // written before the final state, never after
}
envelope* request_reply(const request_core* r) noexcept { return r->reply; }

bool request_wait(const request_core* cr, std::int64_t timeout_ns) {
    if (!cr) return true;
    auto* r = const_cast<request_core*>(cr);
    // On a worker running a callback of this environment, a wait could be for this very
    // thread (the answering session may share it, as every default-bound one does), and the
    // environment's teardown would wait for the waiter. Said at once, rather than never.
    if (timeout_ns != 0 && tls_heartbeat && current_env() == r->env.get() && r->get() < request_state::replied)
        throw would_deadlock_error("request #" + std::to_string(r->id) + ": wait() on a worker thread of environment '" +
                                   r->env->name() + "' (in " +
                                   (current_context_name().empty() ? std::string("a callback")
                                                                   : "'" + current_context_name() + "'") +
                                   "), which may be the one that has to answer it: use then() or co_await there");
    const std::int64_t end = timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns;
    // A short spin (5 us at most): a reply from a busy peer comes within microseconds, a
    // park and wake-up cost tens.
    const std::int64_t spin_end = now_ns() + 5'000;
    for (unsigned i = 1;; ++i) {
        if (r->get() >= request_state::replied) return true;
        cpu_relax();
        if ((i & 15) == 0 && now_ns() >= spin_end) break;
    }
    for (;;) {
        std::uint32_t s = r->st.load(std::memory_order_seq_cst);
        if (s >= static_cast<std::uint32_t>(request_state::replied)) return true;
        const std::int64_t now = now_ns();
        if (now >= end) return false;
        r->sleepers.fetch_add(1, std::memory_order_seq_cst);
        if (r->st.load(std::memory_order_seq_cst) == s) futex_wait(r->st, s, timeout_ns < 0 ? -1 : end - now);
        r->sleepers.fetch_sub(1, std::memory_order_seq_cst);
    }
}

bool request_cancel(request_core* r) noexcept {
    r->add_ref();
    const bool abandoned_now = r->finish(request_state::abandoned, nullptr, "cancelled by the requester", true);
    {
        // A then-callback running on another thread: wait until it returned (not on its own
        // session: there the caller is that callback, or runs instead of it).
        std::unique_lock g(r->lock);
        if (current_context() != r->then_home) r->then_idle.wait(g, [&] { return !r->then_running; });
    }
    r->release();
    return abandoned_now;
}

void request_continue(request_core* r, void (*fn)(void*) noexcept, void* arg) {
    {
        std::lock_guard g(r->lock);
        if (r->has_continuation)
            throw usage_error("request #" + std::to_string(r->id) +
                              ": it already has a continuation (then, future or co_await: one of them, once)");
        r->has_continuation = true;
        if (r->get() < request_state::replied) {
            r->cont = fn;
            r->cont_arg = arg;
            return;
        }
    }
    fn(arg);
}

void request_then(request_core* r, const context_ref& s, handler fn) {
    {
        std::lock_guard g(r->lock);
        if (r->has_continuation)
            throw usage_error("request #" + std::to_string(r->id) +
                              ": it already has a continuation (then, future or co_await: one of them, once)");
        r->has_continuation = true;
        r->then_home = s.core;
        if (r->get() < request_state::replied) {
            if (r->cancelled) return;
            r->then_ctx = s;
            r->then_fn = std::move(fn);
            return;
        }
        if (r->cancelled) return;
    }
    r->add_ref();
    post_on(s, then_call(r, std::move(fn)));
}

void request_resume_here(request_core* r, std::coroutine_handle<> h) {
    context_core* cur = current_context();
    if (!cur)
        throw usage_error("request #" + std::to_string(r->id) +
                          ": co_await is for coroutines running in a session's callback or an agent's handler");
    // The request holds its environment, and with it the arena of that environment's
    // contexts: a context of the same environment needs no reference of its own (taking one
    // would bounce the arena's count between the requester's and the replier's threads).
    context_ref here{nullptr, cur, cur->gen.load(std::memory_order_relaxed), cur->kind == context_kind::agent};
    if (cur->env != r->env.get()) here.arena = cur->arena->shared_from_this();
    auto* c = new resume_ctx{std::move(here), h};
    try {
        request_continue(
            r,
            [](void* arg) noexcept {
                auto* c = static_cast<resume_ctx*>(arg);
                post_resumer(c);
                delete c;
            },
            c);
    } catch (...) {
        delete c;
        throw;
    }
}

// ---- deliveries ----

/// The message a named object's inbox carries.
struct named_delivery {
    message_header hdr;
    envelope* body = nullptr;
    request_core* req = nullptr;  // a reference, until answered
    named_registry* reg = nullptr;
    bool handled = false;
    // The envelope this delivery lives in, when an incoming holds it there (one reference of
    // it) rather than a copy on the heap: the incoming releases it instead of deleting.
    envelope* home = nullptr;

    named_delivery() = default;
    named_delivery(named_delivery&& o) noexcept
        : hdr(std::move(o.hdr)), body(std::exchange(o.body, nullptr)), req(std::exchange(o.req, nullptr)),
          reg(o.reg), handled(o.handled) {}

    // What an incoming does with the delivery it holds, once done with it.
    static void dispose(named_delivery* d) noexcept {
        if (!d) return;
        if (d->home)
            d->home->release();
        else
            delete d;
    }
    ~named_delivery() {
        if (body) body->release();
        if (req) {
            if (req->get() < request_state::replied) {
                std::string why;
                try {
                    why = handled ? "the handler of '" + hdr.destination + "' returned without answering"
                                  : "'" + hdr.destination + "' went away before handling it";
                } catch (...) {
                }
                req->finish(request_state::abandoned, nullptr, std::move(why));
            }
            req->release();
        }
    }
};

namespace {

// One path for request(), send_to() and a router's local deliveries. `local_only` never asks
// the router and never throws for an outcome (the result says it).
//
// The delivery (an envelope of its own) is made only for a local object: a message that a
// node takes goes out without one, and a `node/object` name skips the local look-up while no
// local name has a '/'.
local_send send_core(env_core& core, std::string_view name, envelope* body, request_core* r, std::string source,
                     std::string reply_to, bool wait_for_peer, bool local_only, std::size_t messages = 1) {
    envelope_ref b(body);
    auto& reg = named_registry::of(core);
    auto fail = [&](request_state st, const std::string& why) {
        if (r) {
            r->finish(st, nullptr, why);
            r->release();
        }
    };
    try {
        // What arrives from another node (local_only) was checked by the node: its name is valid.
        if (!local_only) check_name(name);
    } catch (const invalid_name_error& e) {
        fail(request_state::rejected, e.what());
        throw;
    }
    if (!core.open()) {
        std::string why = "environment '" + core.name() + "' is stopped";
        fail(request_state::abandoned, why);
        if (r || local_only) return local_send::stopped;
        throw environment_stopped_error("sending to '" + std::string(name) + "': " + why);
    }
    message_header hdr;
    hdr.source = source.empty() ? current_context_name() : std::move(source);
    hdr.reply_to = std::move(reply_to);
    hdr.request = r != nullptr;
    request_core* keep = r;
    if (keep) keep->add_ref();  // to mark it transmitted after the delivery left our hands
    // Until a delivery or the router takes them, the body is in `b` and the caller's reference
    // to the request in `r`.
    auto make_delivery = [&]() -> envelope* {
        envelope* d = make_envelope<named_delivery>();  // a fresh one, not yet shared: no race
        auto& nd = payload_of<named_delivery>(d);
        nd.hdr = std::move(hdr);
        nd.hdr.destination.assign(name);
        nd.hdr.id = r ? r->id : reg.next_id.fetch_add(messages, std::memory_order_relaxed);
        nd.body = b.release();
        nd.req = std::exchange(r, nullptr);  // the caller's reference goes with the delivery
        nd.reg = &reg;
        return d;
    };
    auto to = [&](name_entry* e) -> bool {
        if (!e) return false;
        deliver(static_cast<named_entry*>(e)->address, make_delivery());
        return true;
    };
    bool sent = false;
    try {
        const bool remote = !local_only && name.find('/') != std::string_view::npos &&
                            reg.has_router.load(std::memory_order_acquire);
        if (!remote || reg.table.has_slashed()) sent = reg.table.read(name, to);
        // No local object of that name: a node's name (`node/object`) goes to the router, if
        // one is installed and takes it, before the local `*` may.
        if (!sent && remote) {
            std::shared_ptr<remote_router> router;
            {
                std::lock_guard g(reg.router_lock);
                router = reg.router;
            }
            if (router && router->route(name, b, r, hdr, wait_for_peer)) {
                if (keep) keep->release();
                return local_send::delivered;
            }
        }
        if (!sent) sent = reg.table.read("*", to);
    } catch (...) {
        if (r) {  // still ours: told as a delivery dropped unhandled would tell it
            if (r->get() < request_state::replied) {
                std::string why;
                try {
                    why = "'" + std::string(name) + "' went away before handling it";
                } catch (...) {
                }
                r->finish(request_state::abandoned, nullptr, std::move(why));
            }
            r->release();
        }
        if (keep) keep->release();
        throw;
    }
    if (sent) {
        if (keep) {
            keep->mark_transmitted();
            keep->release();
        } else {
            reg.messages.fetch_add(messages, std::memory_order_release);
        }
        return local_send::delivered;
    }
    std::string why = "no object named '" + std::string(name) + "' in environment '" + core.name() + "' (and no '*')";
    if (keep) {
        keep->finish(request_state::rejected, nullptr, why);
        keep->release();
        if (r) r->release();
        return local_send::no_such_object;
    }
    reg.rejected_sends.fetch_add(messages, std::memory_order_release);
    if (local_only) return local_send::no_such_object;
    throw no_such_object_error("sending to '" + std::string(name) + "': " + why);
}

}  // namespace

void send_named(environment& env, std::string_view name, envelope* body, request_core* r, std::string source,
                std::string reply_to, bool wait_for_peer) {
    send_core(*internal::core_of(env), name, body, r, std::move(source), std::move(reply_to), wait_for_peer, false);
}

local_send send_named_local(env_core& env, std::string_view name, envelope* body, request_core* r,
                            std::string source, std::string reply_to, std::size_t messages) {
    return send_core(env, name, body, r, std::move(source), std::move(reply_to), false, true, messages);
}

// ---- the remote router ----

remote_router::~remote_router() = default;

void set_remote_router(env_core& env, std::shared_ptr<remote_router> router) {
    auto& reg = named_registry::of(env);
    std::lock_guard g(reg.router_lock);
    if (reg.router) throw usage_error("environment '" + env.name() + "' has a node already (one node per environment)");
    reg.router = std::move(router);
    reg.has_router.store(true, std::memory_order_release);
}

void clear_remote_router(env_core& env, const remote_router* router) noexcept {
    auto* found = named_registry::find(env);  // made by set_remote_router if a router was ever set
    if (!found) return;
    auto& reg = const_cast<named_registry&>(*found);
    std::shared_ptr<remote_router> gone;  // released outside the lock
    std::lock_guard g(reg.router_lock);
    if (reg.router.get() != router) return;
    gone = std::move(reg.router);
    reg.has_router.store(false, std::memory_order_release);
}

bool request_finish(request_core* r, request_state final, envelope* body, std::string why) noexcept {
    return r->finish(final, body, std::move(why));
}
void request_mark_transmitted(request_core* r) noexcept { r->mark_transmitted(); }
message_type request_reply_type(const request_core* r) noexcept { return r->reply_type; }
std::chrono::nanoseconds request_timeout(const request_core* r) noexcept {
    return std::chrono::nanoseconds(r->timeout_ns);
}
void request_count_orphan(request_core* r) noexcept { r->reg->orphaned.fetch_add(1, std::memory_order_release); }

// ---- registration ----

namespace {

// A deferred_batch's messages (remote_router.hpp), decoded and handed to the handler one by
// one, each in a delivery of its own with `nd`'s header and the next id. Between two, the
// inbox or its context shut (by this handler, another thread, the session's end) ends the
// run: the rest is lost, as queued messages are. A handler that throws is reported as the
// guarded run of a single message would report it, and the run goes on when the policy lets
// the object go on. The demand itself counts one message; the others are counted here.
void deliver_batch(named_delivery& nd, std::function<void(incoming&)>& fn, const event_object& inbox) {
    envelope_ref raw(std::exchange(nd.body, nullptr));
    auto& b = payload_of<deferred_batch>(raw.get());
    b.taken = true;
    context_core& c = *current_context();
    const std::size_t n = b.size();
    std::size_t i = 0;
    for (; i < n; ++i) {
        if (i > 0 && (inbox.shut.load(std::memory_order_relaxed) != 0 || c.gate.shut())) break;
        envelope* body = b.decode(b.items[i].type, b.context, b.bytes(i), nd.hdr);
        if (!body) continue;  // reported by the router; never reaches the handler
        envelope* e = make_envelope<named_delivery>();
        auto& one = payload_of<named_delivery>(e);
        one.body = body;
        one.reg = nd.reg;
        one.handled = true;
        one.home = e;  // the incoming's reference
        incoming in(&one);
        try {
            one.hdr = nd.hdr;
            one.hdr.id = nd.hdr.id + i;
            fn(in);
        } catch (...) {
            on_thrown(c, inbox.kind_name(), message_type_of<named_delivery>());
            if (c.ops->policy(c) != exception_policy::log_and_continue) {
                ++i;
                break;
            }
        }
    }
    thread_counters& counters = c.env->counters();
    if (n > 1) thread_counters::bump(counters.sent, n - 1);
    if (i > 1) {
        thread_counters::bump(counters.delivered, i - 1);
        thread_counters::bump(counters.callbacks_run, i - 1);
    }
    if (i < n) {
        thread_counters::bump(counters.lost, n - i);
        thread_counters::bump(counters.callbacks_refused, n - i);
    }
}

}  // namespace

named_handle register_named(const context_ref& s, const std::string& owner, std::string name,
                            std::function<void(incoming&)> fn) {
    check_name(name, true);
    if (!s) throw session_destroyed_error("registering '" + name + "': the session handle is empty");
    const std::shared_ptr<env_core> keep = s.arena->env_alive();
    env_core* live = keep ? context_env(s) : nullptr;
    if (!live)
        throw session_destroyed_error("registering '" + name + "': " + (s.agent ? "agent '" : "session '") + owner +
                                      "' was destroyed");
    env_core& core = *live;
    auto& reg = named_registry::of(core);
    {
        std::lock_guard g(reg.lock);
        core.check_not_stopping("registering named object", name);
        if (reg.closed) core.check_open("registering named object", name);
    }
    auto n = std::make_shared<named_object_impl>();
    n->name = name;
    n->env_keep = core.shared_from_this();
    n->reg = &reg;
    // The entry exists before the inbox (which may be stopped at once, its session destroyed
    // by another thread), so that the hook reads a pointer written before it was shared.
    auto* entry = new named_entry(name, mbox{});
    n->entry = entry;
    mbox address;
    handle_target* o;
    try {
        o = add_inbox(s, owner, message_type_of<named_delivery>(),
                      handler([fn = std::move(fn), impl = n.get()](envelope* e) mutable {
                          auto& nd = payload_of<named_delivery>(e);
                          if (nd.body && nd.body->type() == message_type_of<deferred_batch>()) [[unlikely]]
                              return deliver_batch(nd, fn, *impl->inbox);
                          // A message from another node still encoded: decoded here, on the
                          // object's thread (remote_router.hpp). One that does not decode was
                          // reported by its router and goes no further.
                          if (nd.body && nd.body->type() == message_type_of<deferred_body>()) {
                              envelope_ref raw(std::exchange(nd.body, nullptr));
                              const auto& b = payload_of<deferred_body>(raw.get());
                              nd.body = b.decode(b.type, b.context, b.bytes(), nd.hdr);
                              if (!nd.body) return;  // one-way only: no requester to tell
                          }
                          nd.handled = true;
                          // The incoming holds the delivery where it is, by a reference to its
                          // envelope (its only other holder is the queue, which lets go after
                          // this returns): no copy, no heap.
                          named_delivery* d = &nd;
                          if (e->exclusive()) {
                              e->add_refs(1);
                              nd.home = e;
                          } else {
                              d = new named_delivery(std::move(nd));
                          }
                          incoming in(d);
                          fn(in);
                      }),
                      address, n);
    } catch (...) {
        delete entry;
        throw;
    }
    named_handle h(o, name);  // from here on, a throw destroys the inbox
    n->inbox = static_cast<event_object*>(o);
    entry->address = std::move(address);  // not yet listed: no reader sees it
    bool listed;
    {
        // Under the registry's lock, so that the teardown's closing sweep cannot miss it: an
        // entry listed after it would hold the environment's core through its mbox.
        std::lock_guard g(reg.lock);
        listed = !reg.closed && reg.table.insert(entry);
        if (!listed && reg.closed) {
            n->done.store(true, std::memory_order_relaxed);
            delete entry;
            core.check_open("registering named object", name);
            throw environment_stopped_error("registering named object '" + name + "': environment '" +
                                            core.name() + "' is stopping");
        }
    }
    if (!listed) {
        n->done.store(true, std::memory_order_relaxed);
        delete entry;
        throw duplicate_name_error("named object '" + name + "' is already registered in environment '" +
                                   core.name() + "'");
    }
    reg.registered.fetch_add(1, std::memory_order_release);
    // The session was destroyed meanwhile: its stop ran before the insert (both take the
    // table's lock), so the name is ours to free.
    if (n->done.load(std::memory_order_acquire)) {
        if (reg.table.remove(name, entry)) reg.unregistered.fetch_add(1, std::memory_order_release);
        throw session_destroyed_error("registering '" + name + "': " + (s.agent ? "agent '" : "session '") + owner +
                                      "' was destroyed");
    }
    return h;
}

}  // namespace internal

// ---- incoming ----

incoming::incoming(incoming&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {
    if (d_ && d_->req) d_->reg->track(d_->req);
}

incoming& incoming::operator=(incoming&& o) noexcept {
    if (this != &o) {
        internal::named_delivery::dispose(d_);
        d_ = std::exchange(o.d_, nullptr);
        if (d_ && d_->req) d_->reg->track(d_->req);
    }
    return *this;
}

incoming::~incoming() { internal::named_delivery::dispose(d_); }

const message_header& incoming::header() const {
    if (!d_) throw usage_error("incoming: empty (moved from)");
    return d_->hdr;
}

message_type incoming::type() const {
    if (!d_) throw usage_error("incoming: empty (moved from)");
    return d_->body ? d_->body->type() : message_type{};
}

internal::envelope* incoming::body() const noexcept { return d_->body; }

void incoming::check_type(message_type t) const {
    if (type() != t)
        throw usage_error("message to '" + d_->hdr.destination + "' is a " + readable_name(type()) + ", not a " +
                          readable_name(t));
}

bool incoming::answered() const noexcept { return !d_ || !d_->req; }

void incoming::reply_envelope(internal::envelope* e) {
    internal::envelope_ref keep(e);
    if (!d_ || !d_->hdr.request)
        throw usage_error("reply to '" + (d_ ? d_->hdr.destination : std::string("?")) + "': not a request");
    if (!d_->req)
        throw usage_error("reply to request #" + std::to_string(d_->hdr.id) + " to '" + d_->hdr.destination +
                          "': answered already");
    internal::request_core* r = std::exchange(d_->req, nullptr);
    // A request made by a remote router takes any type: its requester checks on its node.
    if (r->reply_type != message_type{} && e->type() != r->reply_type) {
        std::string why = "the handler of '" + d_->hdr.destination + "' replied with a " + readable_name(e->type()) +
                          " where a " + readable_name(r->reply_type) + " was expected";
        if (!r->finish(request_state::rejected, nullptr, why)) d_->reg->orphaned.fetch_add(1, std::memory_order_release);
        r->release();
        throw usage_error(why);
    }
    if (!r->finish(request_state::replied, keep.release(), {}))
        d_->reg->orphaned.fetch_add(1, std::memory_order_release);
    r->release();
}

void incoming::reject(std::string reason) {
    if (!d_ || !d_->hdr.request)
        throw usage_error("reject to '" + (d_ ? d_->hdr.destination : std::string("?")) + "': not a request");
    if (!d_->req)
        throw usage_error("reject of request #" + std::to_string(d_->hdr.id) + " to '" + d_->hdr.destination +
                          "': answered already");
    internal::request_core* r = std::exchange(d_->req, nullptr);
    if (!r->finish(request_state::rejected, nullptr, std::move(reason)))
        d_->reg->orphaned.fetch_add(1, std::memory_order_release);
    r->release();
}

// ---- named_handle ----

named_handle::named_handle(internal::handle_target* o, std::string name) noexcept
    : extended_handle(o), name_(std::move(name)) {}

// ---- statistics ----

named_stats named_stats_of(const environment& env) {
    const internal::named_registry* r = internal::named_registry::find(*internal::core_of(env));
    return r ? r->stats() : named_stats{};
}

}  // namespace mailroom
