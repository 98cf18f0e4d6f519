#pragma once
// The serial context: the one machinery under sessions and agents (an agent is a session with
// subscriptions by (mbox, type), lifecycle hooks and states, whose table entries then
// dispatch by state in the agent layer).
//
// - Addressing without a reference count per message. A context_core lives in its
//   environment's arena: type-stable (recycled, never freed before the arena) and with a
//   generation per life. Demands, direct mboxes and MPMC tables name it as (core, generation);
//   a demand of an older life counts itself lost (or ignored, refused). The arena outlives the
//   environment while a handle refers to it, so a handle (core, generation) kept past the
//   environment reads valid memory and finds its generation gone.
// - One demand family with one execute path for messages, posted calls and timer fires, plus
//   the control demands (start, finish, retire) whose bodies the owner layer provides.
// - One gate (context_gate: a shutdown waits for a running callback) and, for agents, a start
//   gate that holds demands until registration commits.
// - One guarded runner with the exception policy; one current-context thread-local; one post
//   path (entry_scope, the check, send_scope, push).
// - One table of entries (mbox id, type) -> handler, looked up at the receiver: an agent's
//   subscriptions (a handler of its own) and a session's inboxes and topic subscriptions (an
//   event object's handler, behind the object's shut flag) alike.
//
// Threads: the table, `dispatching` and the start/finish bodies belong to the context (its
// worker, or the registering thread before start). The gate words, the generation and the
// queue pointer are atomics read by any thread. The object list is under `lock`.

#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/mbox/mbox_impl.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/queue/futex.hpp>
#include <mailroom/session/detail/handler.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mailroom::internal {

class context_core;
class context_arena;
class event_object;

/// A context's name: no bytes beyond a pointer until one is given (agents rarely have one).
class context_name {
public:
    bool empty() const noexcept { return !s_ || s_->empty(); }
    const std::string& str() const noexcept {
        static const std::string none;
        return s_ ? *s_ : none;
    }
    /// Replaces the name; the old one comes back in `n` (to be freed outside a lock).
    void swap(std::unique_ptr<std::string>& n) noexcept { s_.swap(n); }
    void clear() noexcept { s_.reset(); }

private:
    std::unique_ptr<std::string> s_;
};

/// Which layer owns a context; what a report calls it.
enum class context_kind : std::uint8_t { session, agent };

/// What the owner layer adds to its contexts. One static table per kind.
struct context_ops {
    /// The context's name for logs and reports, without its kind ("x", "feed#12"). Any thread
    /// that holds the record's pending_lock, or the context's own.
    std::string (*name)(const context_core&);
    /// The policy applied when a callback throws: sessions log and carry on; agents ask their
    /// agent, cooperation and environment.
    exception_policy (*policy)(const context_core&) noexcept;
    /// After a callback threw and the policy is deregister_coop (agents only; may be null).
    void (*deregister)(context_core&) noexcept;
    /// What a teardown report adds after the name (" of cooperation 'c'"); may be null. Under
    /// the record's pending_lock, while the context runs.
    std::string (*where)(const context_core&);
};

/// One entry of a context's table.
struct table_entry {
    std::uint64_t mbox_id = 0;  // 0: removed while a handler ran (swept after it returns)
    message_type type{};
    handler fn;                             // an agent's own handler (empty when `obj` is set)
    event_object* obj = nullptr;            // a session's inbox or subscription (holds a reference)
    std::shared_ptr<mbox_impl> source;      // MPMC only: to leave its subscriber table
};

/// A control demand embedded in the record (an agent's start, the end of a life), queued on it
/// by its owner layer; context_core::of_start() and of_end() find the record from it.
struct context_retire final : demand {};

/// What became of a callback that run_callback() was asked to run.
enum class run_outcome : std::uint8_t { ran, refused, gone };

class context_core final : public receiver {
public:
    /// The table (the context's own thread, or the registering thread before start).
    const table_entry* find(std::uint64_t mbox_id, message_type type) const noexcept {
        for (const auto& e : table)
            if (e.mbox_id == mbox_id && e.type == type) return &e;
        return nullptr;
    }
    /// Adds an entry; while a handler runs, the table must not move (the running handler lives
    /// in it), so the entry waits in `added` until settle().
    void add_entry(table_entry e);
    /// Takes the entry out and returns it (mbox_id 0 when there was none): the caller leaves
    /// its topic and releases its object. While a handler runs, the slot is only marked
    /// (mbox_id 0) and swept by settle(), and the returned entry carries no handler (the
    /// running one may be it: it is destroyed with the slot).
    table_entry take_entry(std::uint64_t mbox_id, message_type type) noexcept;
    /// After a handler returns: applies what it added and removed (and forgets a decline).
    void settle() noexcept;
    /// Where an entry added now goes: the table, or (while a handler runs) the added list.
    std::vector<table_entry>& list_for_adding() {
        if (!dispatching) return table;
        if (!added) added = std::make_unique<std::vector<table_entry>>();
        after_call |= after_added;
        return *added;
    }
    /// Called by an agent's handler that did not handle its message after all (its state has
    /// no handler for the message, or suppresses it): execute_message then counts the message
    /// ignored, not delivered. The context's own thread, inside the handler.
    void decline() noexcept { after_call |= after_declined; }

    /// "agent 'x'" or "session 'y'".
    std::string describe() const {
        return std::string(kind == context_kind::agent ? "agent '" : "session '") + ops->name(*this) + "'";
    }
    /// The teardown watch's view: fills `out` when this record is a started context with this
    /// id. Reads only what its own thread cannot free meanwhile (under pending_lock, under which
    /// it starts, finishes and is renamed). Any thread.
    bool describe_if(std::uint64_t wanted, std::string& out) noexcept;

    // The members are grouped by size, not by who guards them, so that the record (one per
    // agent) has no holes; each says which thread or lock it belongs to.

    context_gate::flag own_shut{0};  // any thread: posted calls and an agent's handlers (never set; the gate's own flag shuts all)
    std::uint32_t life = 0;          // constant for the life: its generation (agents)

    const context_ops* ops = nullptr;  // constant for the life
    context_arena* arena = nullptr;    // constant
    std::uint64_t id = 0;              // constant for the life

    std::vector<table_entry> table;                   // the context's own thread
    std::unique_ptr<std::vector<table_entry>> added;  // the context's own thread: made when a handler first adds an entry

    event_object* objects = nullptr;   // under `lock`: the event objects (timers, inboxes, subscriptions, named objects)
    event_object* retiring = nullptr;  // under `lock`: the list a closing context hands to its retire

    std::shared_ptr<binder_impl> binder;
    binding bound{};
    context_name name;  // set before the context is shared, or under pending_lock (describe_if)

    // Guarded by the owner layer's registry lock (sessions: session_runtime::lock).
    context_core* reg_prev = nullptr;
    context_core* reg_next = nullptr;  // also the arena's free list while the record is free

    // The owner layer's, for the life (an agent's: its object, its cooperation and direct mbox).
    // Embedded so that creating an agent allocates no record of its own.
    void* owner = nullptr;
    void* group = nullptr;
    mbox direct;

    context_kind kind = context_kind::session;            // constant for the life
    std::atomic<bool> direct_made{false};                 // any thread: `direct` is set (agents make it on first use)
    bool dispatching = false;                             // the context's own thread
    // What a callback left to do once it returns, so that the path after a callback tests one
    // byte (the context's own thread): entries it removed (swept) or added (moved into the
    // table), a message it declined (counted ignored).
    static constexpr std::uint8_t after_removed = 1, after_added = 2, after_declined = 4;
    std::uint8_t after_call = 0;
    spin_mutex lock;                                      // guards `objects`, `retiring` and `dead`
    bool dead = false;                                    // under `lock`
    bool registered = false;                              // under the owner layer's registry lock
    exception_policy policy = exception_policy::inherit;  // the owner layer's (an agent's)
    context_retire start_demand;  // an agent's on_start, queued first when its start gate opens
    context_retire end_demand;    // the end of the life (a session's retire, an agent's finish)

    /// The record a start_demand or end_demand is embedded in (no pointer back: 16 bytes less
    /// per agent).
    static context_core* of_start(demand* d) noexcept { return from_member(d, start_offset()); }
    static context_core* of_end(demand* d) noexcept { return from_member(d, end_offset()); }

private:
    static context_core* from_member(demand* d, std::size_t offset) noexcept {
        return reinterpret_cast<context_core*>(reinterpret_cast<char*>(static_cast<context_retire*>(d)) - offset);
    }
    // offsetof of a class that is not standard-layout is conditionally supported; GCC and Clang
    // support it (a record has no virtual base, so the offset is the same in every record).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
    static constexpr std::size_t start_offset() noexcept { return offsetof(context_core, start_demand); }
    static constexpr std::size_t end_offset() noexcept { return offsetof(context_core, end_demand); }
#pragma GCC diagnostic pop
};

/// The contexts of one environment: type-stable records in chunks, recycled. Held by the
/// environment's session-layer extension and by every session and event handle, so that a
/// handle kept past the environment reads valid memory.
class context_arena : public std::enable_shared_from_this<context_arena> {
public:
    explicit context_arena(env_core* env) : env_(env), env_weak_(env->weak_from_this()) {}
    ~context_arena();
    context_arena(const context_arena&) = delete;
    context_arena& operator=(const context_arena&) = delete;

    /// A record for a new life (generation already moved on from the last one). Any thread.
    context_core* allocate();
    /// Back to the free list once nothing of its life runs (its generation moved on before).
    void recycle(context_core* c) noexcept;

    std::uint64_t next_id() noexcept { return next_id_.fetch_add(1, std::memory_order_relaxed); }
    /// The environment, if it still exists (held for the caller). Any thread.
    std::shared_ptr<env_core> env_alive() const noexcept { return env_weak_.lock(); }
    /// The teardown watch: names the started context with this id. Any thread.
    bool describe(std::uint64_t id, std::string& out) noexcept;

private:
    env_core* env_;
    std::weak_ptr<env_core> env_weak_;
    std::atomic<std::uint64_t> next_id_{1};
    spin_mutex lock_;
    std::vector<std::unique_ptr<context_core[]>> chunks_;
    context_core* free_ = nullptr;
    std::size_t chunk_size_ = 64;
};

/// The context whose callback this thread is running (or whose configure() it runs), or null.
context_core*& current_context() noexcept;
/// What current_context() refers to, named (never bound to a reference) by the guarded run that
/// sets and restores it around every callback (see tls_current_env).
MAILROOM_FAST_TLS extern MAILROOM_EXPORT constinit thread_local context_core* tls_current_context;

/// Runs `fn(arg)` as a callback of `c` under its exception policy, with current_context() and
/// current_env() set; returns false if it threw (logged, counted, the policy applied).
bool run_guarded(context_core& c, const char* what, message_type type, void (*fn)(void*), void* arg) noexcept;

/// Runs one callback of the life `gen` of `c` on its own thread: refused when that life is over
/// (gone) or `shut` (or the context) is shut; otherwise passes the gate tagged `tag` around
/// run_guarded() and settles the table after it. The one execute path of every demand.
run_outcome run_callback(context_core& c, std::uint32_t gen, const void* tag, const context_gate::flag& shut,
                         const char* what, message_type type, void (*fn)(void*), void* arg) noexcept;

/// run_checked()'s steps around `run` (which calls the callback under run_guarded() or guarded()):
/// the gate, the dispatching flag, the settling of the table. Inlined into each caller, so
/// that a caller that knows its callback (an fd watcher's) calls it without a function pointer.
template <class Run>
[[gnu::always_inline]] inline run_outcome run_checked_with(context_core& c, bool gated, const void* tag,
                                                           const context_gate::flag& shut, Run&& run) noexcept {
    // The hot path: enter() is two plain stores and two loads (see context_gate).
    if (gated && !c.gate.enter(tag, shut)) [[unlikely]]
        return run_outcome::refused;
    c.dispatching = true;
    run();
    c.dispatching = false;
    if (gated) c.gate.leave();
    if (c.after_call) [[unlikely]]
        c.settle();
    return run_outcome::ran;
}

/// run_callback() once the caller checked the life: `gated` is false only for an agent's own
/// callbacks, which nothing waits for from another thread.
inline run_outcome run_checked(context_core& c, bool gated, const void* tag, const context_gate::flag& shut,
                               const char* what, message_type type, void (*fn)(void*), void* arg) noexcept {
    return run_checked_with(c, gated, tag, shut, [&] { run_guarded(c, what, type, fn, arg); });
}

/// Executes a message_demand for a context (the receiver's run_message).
void execute_message(demand* base, demand_mode mode) noexcept;

/// True when `b` binds to a dispatcher of `env`. A context bound to another environment's
/// dispatcher would run on threads its own environment's teardown neither waits for nor joins.
inline bool binds_in(const binder_impl& b, const env_core& env) noexcept { return b.target().owner() == &env; }
/// Raises binding_error naming both environments; `what` names the cooperation, agent or session.
[[noreturn]] void throw_foreign_binder(const binder_impl& b, const env_core& env, const std::string& what);
/// Binds one context through `b` (binder_impl::prepare). A caller checks that the environment
/// is not stopping before it binds, but the teardown may shut the dispatcher down in between:
/// that refusal raises environment_stopped_error naming `what`, `object` and the environment,
/// not the dispatcher's binding_error. A dispatcher the user shut down still raises binding_error.
/// With `first`, binds one more context of the same registration (binder_impl::prepare_again).
binding prepare_binding(binder_impl& b, const void* key, const env_core& env, const char* what,
                        std::string_view object, const binding* first = nullptr);

}  // namespace mailroom::internal
