#pragma once
// The agent layer's records: agent cores, mbox implementations, cooperations, and the runtime
// (an environment extension) that owns them.
//
// Lifetime without a reference count per message: an agent_core is type-stable. Cores are
// recycled, never freed before the runtime, and every demand names its target as (core,
// generation). When an agent is destroyed its core's generation moves on, so a demand that a
// stale sender queued later finds a different generation and counts itself lost. A sender
// therefore needs no atomic read-modify-write on the receiver to send, and the receiver none
// to run a message.

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/env/env_core.hpp>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <string_view>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mailroom::internal {

class agent_runtime;
class coop_impl;
class agent_core;
class session_impl;

/// A message on its way to one agent.
struct message_demand final : demand {
    agent_core* target;
    std::uint32_t gen;
    std::uint64_t mbox_id;
    envelope* msg;
    timer_entry* timer;  // holds a reference when set
    // Published through an MPMC mbox: when the subscriber is gone by the time it arrives, it
    // is counted ignored (the subscriber left the topic), not lost (guarantee 6 is about
    // direct sends).
    bool fanout;

    static message_demand* make(agent_core* target, std::uint32_t gen, std::uint64_t mbox_id, envelope* msg,
                                timer_entry* timer, bool fanout);
    void free() noexcept;
};

/// start and finish run on the agent's context like messages.
struct control_demand final : demand {
    agent_core* target = nullptr;
};

struct subscription {
    std::uint64_t mbox_id;
    message_type type;
    std::shared_ptr<mbox_impl> source;  // MPMC only: to leave its subscriber list
    handler fn;
};

class mbox_impl {
public:
    mbox_impl(std::shared_ptr<env_core> env, agent_runtime* rt, mbox_kind kind);
    virtual ~mbox_impl();

    /// Takes ownership of `e` (and of a reference to `timer` per delivery it creates).
    /// Raises environment_stopped_error when the environment is closed.
    virtual void deliver(envelope* e, timer_entry* timer) = 0;
    virtual std::string name() const = 0;

    std::uint64_t id() const noexcept { return id_; }
    mbox_kind kind() const noexcept { return kind_; }
    env_core& env() const noexcept { return *env_; }
    agent_runtime& runtime() const noexcept { return *rt_; }
    const std::shared_ptr<env_core>& env_ptr() const noexcept { return env_; }

protected:
    std::shared_ptr<env_core> env_;
    agent_runtime* rt_;
    std::uint64_t id_;
    mbox_kind kind_;
};

class direct_mbox final : public mbox_impl {
public:
    direct_mbox(std::shared_ptr<env_core> env, agent_runtime* rt, agent_core* core, std::uint32_t gen,
                std::uint64_t agent_id);
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    agent_core* core() const noexcept { return core_; }

private:
    agent_core* core_;
    std::uint32_t gen_;
    std::uint64_t agent_id_;
};

/// A subscriber of an MPMC mbox that is not an agent: a session's subscription
/// (src/agent/session.cpp). Reference counted: every subscriber table that lists it holds a
/// reference, so a publisher delivering from an old snapshot always touches live memory.
class topic_subscriber {
public:
    virtual void add_ref() noexcept = 0;
    virtual void release() noexcept = 0;
    /// The publisher's thread. Takes over one reference to `e` unless it throws (out of
    /// memory, before taking it). Returns false when the subscription is shut already: the
    /// publisher counts the message sent, then ignored (in that order, so that a snapshot of
    /// the counters never shows an outcome before its send).
    virtual bool publish(envelope* e, timer_entry* timer) = 0;

protected:
    ~topic_subscriber() = default;
};

class mpmc_mbox final : public mbox_impl {
public:
    mpmc_mbox(std::shared_ptr<env_core> env, agent_runtime* rt, std::string name);
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    void add_subscriber(agent_core* core, std::uint32_t gen, message_type type);
    void remove_subscriber(agent_core* core, std::uint32_t gen, message_type type) noexcept;
    /// The table takes a reference to `sub` (and drops it when `sub` is removed).
    void add_subscriber(topic_subscriber* sub, message_type type);
    void remove_subscriber(topic_subscriber* sub, message_type type) noexcept;

private:
    // An agent (core set: type-stable, checked by generation at the receiver) or a session's
    // subscription (`other` set: kept alive by the reference this entry holds). The agent path
    // costs one predictable branch more than before.
    struct subscriber {
        agent_core* core = nullptr;
        std::uint32_t gen = 0;
        topic_subscriber* other = nullptr;

        subscriber(agent_core* c, std::uint32_t g) noexcept : core(c), gen(g) {}
        explicit subscriber(topic_subscriber* o) noexcept : other(o) { o->add_ref(); }
        subscriber(const subscriber& s) noexcept : core(s.core), gen(s.gen), other(s.other) {
            if (other) other->add_ref();
        }
        subscriber(subscriber&& s) noexcept : core(s.core), gen(s.gen), other(std::exchange(s.other, nullptr)) {}
        subscriber& operator=(subscriber s) noexcept {
            core = s.core;
            gen = s.gen;
            std::swap(other, s.other);
            return *this;
        }
        ~subscriber() {
            if (other) other->release();
        }
    };
    struct table {
        std::vector<std::pair<message_type, std::vector<subscriber>>> by_type;
    };

    // Copy-on-write edits of the table, under lock_.
    void add_entry(subscriber entry, message_type type);
    template <class Match>
    void remove_entries(message_type type, Match&& match) noexcept;

    std::string name_;
    mutable std::mutex lock_;
    // Copy on write: a publisher takes a snapshot under the lock and delivers outside it, so
    // subscribing and unsubscribing are safe while deliveries run on other threads.
    std::shared_ptr<const table> table_;
};

class agent_core {
public:
    static constexpr std::uint8_t gate_closed = 0;    // before start: demands wait in `pending`
    static constexpr std::uint8_t gate_open = 1;      // running: demands go straight to the queue
    static constexpr std::uint8_t gate_finished = 2;  // gone: demands are counted lost

    /// Any thread. Queues `d` for this core (or holds it until start, or drops it when gone).
    void push(demand* d) noexcept {
        if (gate.load(std::memory_order_acquire) == gate_open) {
            queue.load(std::memory_order_acquire)->push(d);
            return;
        }
        push_slow(d);
    }
    void push_slow(demand* d) noexcept;
    /// Like push(), but leaves `d` to the caller (returns false) when the core is gone.
    bool push_unless_finished(demand* d) noexcept {
        if (gate.load(std::memory_order_acquire) == gate_open) [[likely]] {
            queue.load(std::memory_order_acquire)->push(d);
            return true;
        }
        return push_slow_unless_finished(d);
    }
    bool push_slow_unless_finished(demand* d) noexcept;
    /// Registration commit: start goes first, then what waited, then the gate opens.
    void open_gate(demand* start) noexcept;
    /// Rollback or destruction: drops what waited (counted), and closes for good.
    void close_gate() noexcept;

    const subscription* find(std::uint64_t mbox_id, message_type type) const noexcept {
        for (const auto& s : subs)
            if (s.mbox_id == mbox_id && s.type == type) return &s;
        return nullptr;
    }

    /// After a handler returns: applies the subscription changes it made. While a handler runs,
    /// `subs` must not move (the running handler lives in it), so additions wait in `added`
    /// and removals only mark the entry dead (mbox_id 0).
    void settle_subscriptions() noexcept;

    std::string display_name() const;
    /// The teardown watch's view: fills `out` with "agent 'name'" when this core is a running
    /// agent with this id. Reads nothing that its own thread may clear or free meanwhile: it
    /// holds pending_lock, under which the gate opens and closes (before the agent is deleted
    /// and its core recycled) and the name is set. Any thread.
    bool describe_if(std::uint64_t agent_id, std::string& out) noexcept;

    // The agent's hooks are protected; the core is its friend.
    static void call_configure(agent& a) { a.configure(); }
    static void call_start(agent& a) { a.on_start(); }
    static void call_finish(agent& a) { a.on_finish(); }
    exception_policy effective_policy() const noexcept;

    // Read by any thread (stale senders included): atomics.
    std::atomic<std::uint32_t> gen{1};
    std::atomic<std::uint8_t> gate{gate_closed};
    std::atomic<bool> pending_lock{false};
    std::atomic<event_queue*> queue{nullptr};

    // Guarded by pending_lock.
    demand* pending_head = nullptr;
    demand* pending_tail = nullptr;

    // The agent's own context (or the registering thread before start).
    agent* user = nullptr;
    coop_impl* coop = nullptr;
    agent_runtime* rt = nullptr;
    std::vector<subscription> subs;
    std::vector<subscription> added;
    bool dispatching = false;
    bool has_dead = false;
    std::shared_ptr<mbox_impl> direct;
    mailroom::mbox direct_handle;
    std::shared_ptr<binder_impl> binder;
    binding bound{};
    control_demand* finish = nullptr;
    exception_policy policy = exception_policy::inherit;
    std::string custom_name;
    std::uint64_t id = 0;
    agent_core* free_next = nullptr;
};

class coop_impl : public std::enable_shared_from_this<coop_impl> {
public:
    enum class state : std::uint8_t { building, registering, registered, deregistering, gone };

    coop_impl(agent_runtime* rt, environment& env, coop_options opts);
    ~coop_impl();

    void deregister(dereg_reason reason) noexcept;
    void start_finishing() noexcept;
    void agent_finished() noexcept;
    /// Destroys agents that never started (an unregistered or rolled-back cooperation).
    void destroy_unstarted() noexcept;

    agent_runtime* rt;
    environment* env;
    // Keeps the runtime (owned by the core) alive for as long as a coop object or handle may
    // reach it, even after the environment is gone. No cycle outlives the teardown: the
    // runtime's map lets go of a cooperation when it is finalized.
    std::shared_ptr<env_core> env_keep;
    std::uint64_t id;
    std::string name;
    bool named;
    coop_options opts;
    std::shared_ptr<binder_impl> default_binder;
    std::vector<agent_core*> agents;
    std::shared_ptr<coop_impl> parent;

    // Guarded by the runtime's tree lock.
    state st = state::building;
    std::vector<coop_impl*> children;
    std::size_t live_children = 0;
    dereg_reason reason = dereg_reason::normal;
    // on_registered has returned (or there was none). Until then the cooperation does not
    // start finishing, so that on_deregistered never runs before or during on_registered.
    bool announced = false;
    // deregister() while it was being built or configured: applied once registration commits.
    bool dereg_requested = false;
    dereg_reason requested_reason = dereg_reason::normal;

    /// With the tree lock held: deregistering, no child left, and announced. Whoever makes
    /// this true (deregister, the last child, the end of registration) starts finishing.
    bool ready_to_finish() const noexcept {
        return st == state::deregistering && live_children == 0 && announced;
    }

    std::atomic<std::size_t> live_agents{0};
};

class agent_runtime final : public env_extension {
public:
    explicit agent_runtime(env_core* env);
    ~agent_runtime() override;

    static agent_runtime& of(env_core& env);

    // env_extension. The first phase: cooperations, then sessions, stop before anything the
    // layers above keep about them.
    static constexpr int phase = 100;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override;
    void wait_stopped() noexcept override;
    void add_stats(environment_stats& s) const noexcept override;
    std::string describe(running_kind kind, std::uint64_t id) const override;

    agent_core* allocate_core();
    void free_core(agent_core* c) noexcept;

    std::uint64_t next_id() noexcept { return next_id_.fetch_add(1, std::memory_order_relaxed); }

    coop_handle register_coop(std::shared_ptr<coop_impl> c);
    void finalize(coop_impl& c) noexcept;

    mbox make_named(std::string name, bool may_exist);
    mbox find_named(std::string_view name);

    env_core* env;
    std::shared_ptr<env_core> env_shared() const { return env->shared_from_this(); }

    std::atomic<std::uint64_t> agents_created{0}, agents_destroyed{0}, coops_registered{0}, coops_deregistered{0};

    mutable std::mutex tree_lock;

    // Sessions (src/agent/session.cpp). The registry lists every session until it retired
    // and holds a reference to every one not yet destroyed (the retire demand takes it over);
    // wait_stopped() destroys those left, after the cooperations are gone, and waits until
    // each has retired on its own context, before the dispatchers stop.
    mutable std::mutex session_lock;
    session_impl* sessions = nullptr;  // guarded by session_lock
    std::size_t live_sessions = 0;     // created and not yet retired; guarded by session_lock
    bool sessions_closed = false;      // guarded by session_lock
    std::condition_variable sessions_idle;
    std::atomic<std::uint64_t> sessions_created{0}, sessions_destroyed{0}, objects_created{0},
        objects_destroyed{0};
    void stop_sessions() noexcept;
    std::string describe_session(std::uint64_t id) const;

private:
    std::atomic<std::uint64_t> next_id_{1};

    std::mutex core_lock_;
    std::vector<std::unique_ptr<agent_core[]>> core_chunks_;
    agent_core* free_cores_ = nullptr;
    std::size_t chunk_size_ = 64;

    // Guarded by tree_lock.
    std::unordered_map<std::uint64_t, std::shared_ptr<coop_impl>> coops_;
    std::unordered_map<std::string, std::uint64_t> coop_names_;
    std::size_t busy_ = 0;  // registered cooperations plus registrations under way
    std::condition_variable idle_;
    std::map<std::string, std::shared_ptr<mbox_impl>, std::less<>> named_;
    bool named_closed_ = false;  // the registry was emptied by wait_stopped
};

/// The agent whose configure() or handler this thread is running.
agent_core*& current_agent() noexcept;

/// True when `b` binds to a dispatcher of `env`. A context bound to another environment's
/// dispatcher would run on threads its own environment's teardown neither waits for nor joins.
inline bool binds_in(const binder_impl& b, const env_core& env) noexcept { return b.target().owner() == &env; }
/// Raises binding_error naming both environments; `what` names the cooperation, agent or session.
[[noreturn]] void throw_foreign_binder(const binder_impl& b, const env_core& env, const std::string& what);
/// Binds one context through `b` (binder_impl::prepare). A caller checks that the environment
/// is not stopping before it binds, but the teardown may shut the dispatcher down in between:
/// that refusal raises environment_stopped_error naming `what`, `object` and the environment,
/// not the dispatcher's binding_error. A dispatcher the user shut down still raises binding_error.
binding prepare_binding(binder_impl& b, const void* key, const env_core& env, const char* what,
                        std::string_view object);

/// Runs an agent's handler or hook under its policy; returns false if it threw.
bool run_guarded(agent_core& core, const char* what, message_type type, void (*fn)(void*), void* arg) noexcept;

}  // namespace mailroom::internal
