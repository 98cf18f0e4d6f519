#pragma once
/// The shared core of an environment, for the layers above it. It outlives the environment
/// object while anything (an mbox handle, a timer) still refers to it, so that a stale sender
/// gets a clear error instead of touching freed memory.

#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <string>
#include <vector>

namespace mailroom::internal {

struct running_facts;  // report_text.hpp

/// Counters one thread writes for one environment: single writer, so an increment is a plain
/// load and store, never a locked instruction on the hot path.
struct thread_counters {
    std::atomic<std::uint64_t> sent{0}, delivered{0}, lost{0}, ignored{0}, discarded{0}, cancelled{0},
        exceptions{0};
    // Deliveries a delivery filter refused (each also counted sent, then ignored), and
    // predicates that threw (their messages among the refused).
    std::atomic<std::uint64_t> filtered{0}, filter_exceptions{0};
    // What message limits did (the mbox layer's limit_table.cpp): `dropped` is an outcome of the
    // ledger; a redirect or transform is not (the message is counted where it went instead).
    std::atomic<std::uint64_t> dropped{0}, redirected{0}, transformed{0}, limit_aborts{0};
    // Callbacks that are not messages (posted calls, timer fires, inbox deliveries), counted by
    // the layer that runs them; read back through callback_totals().
    std::atomic<std::uint64_t> callbacks_run{0}, callbacks_refused{0}, callbacks_discarded{0};
    // Sends of this thread into this environment that have begun and not ended (see send_scope).
    std::atomic<std::uint32_t> sending{0};

    // A release store (a plain store on x86): a snapshot that reads an outcome with acquire then
    // sees everything that happened before it, the send that was counted first included (the
    // message travelled from sender to receiver through a queue's release/acquire).
    static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept {
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_release);
    }
};

/// The counters block of the environment this thread counted in last (env_core::counters()).
struct counters_cache {
    std::uint64_t env_id = 0;
    thread_counters* block = nullptr;
};
MAILROOM_FAST_TLS extern MAILROOM_EXPORT constinit thread_local counters_cache tls_counters;

/// A single-writer count of scopes this thread has open, which another thread waits to see at
/// zero: the writer's half of the asymmetric Dekker pair of send_scope and entry_scope.
class in_flight_mark {
public:
    explicit in_flight_mark(std::atomic<std::uint32_t>& n) noexcept : n_(n) {
        const std::uint32_t v = n.load(std::memory_order_relaxed) + 1;
        if (event_gate_asymmetric.load(std::memory_order_relaxed)) [[likely]] {
            n.store(v, std::memory_order_relaxed);
            std::atomic_signal_fence(std::memory_order_seq_cst);
        } else {
            n.store(v, std::memory_order_seq_cst);
        }
    }
    ~in_flight_mark() { n_.store(n_.load(std::memory_order_relaxed) - 1, std::memory_order_release); }
    in_flight_mark(const in_flight_mark&) = delete;
    in_flight_mark& operator=(const in_flight_mark&) = delete;

private:
    std::atomic<std::uint32_t>& n_;
};

/// Marks a send into an environment in flight, from before its open() check until the message
/// is queued or counted. env_core::join() closes intake, then waits for every send in flight to
/// end, so that no message passes the check, sleeps through the teardown and lands in a queue
/// after the last sweep: when join() builds its report, sent = delivered + lost + ignored +
/// discarded + cancelled + dropped holds exactly.
///
/// The handshake is a Dekker pair (this side: `sending`, then `closed_`; join's side: `closed_`,
/// then `sending`), made asymmetric as the context gate's is (dispatch/event_object.hpp): with
/// membarrier, join() pays the system call and a send pays two plain stores to its own
/// thread's counters and a compiler fence; without it, the store here is seq_cst.
/// Nests (a payload's destructor may send). Must not enclose anything that waits for the
/// environment.
class send_scope {
public:
    explicit send_scope(thread_counters& c) noexcept : mark_(c.sending) {}

private:
    in_flight_mark mark_;
};

/// One thread's marker for entry_scope, process-wide (outside every environment). Slots are
/// never freed: a thread's is handed to a later thread once it exited.
struct entry_slot {
    std::atomic<std::uint32_t> depth{0};
    std::atomic<bool> taken{true};
    entry_slot* next = nullptr;  // set before the slot is published, then never changed
};

/// This thread's slot. Any thread; the first call on a thread registers it.
MAILROOM_EXPORT entry_slot& this_thread_entry_slot() noexcept;

/// Marks the step from finding a serial context open to opening a send_scope into its
/// environment, for a caller that reaches the environment through the context's raw pointer
/// (a posted call): that pointer is valid only while the context is open, and once the context
/// closed, nothing else keeps the environment alive. join() of every environment waits, after it
/// closed its contexts, for every thread's step to end (in wait_for_senders), so that a thread that
/// found a context open and was preempted then has opened its send_scope (which join() then waits
/// for) before the environment can be freed. The handshake is the same Dekker pair as
/// send_scope's, against the context's gate. The step never runs user code and never waits, so
/// waiting for a thread of another environment is waiting for a few instructions.
class entry_scope {
public:
    entry_scope() noexcept : mark_(this_thread_entry_slot().depth) {}

private:
    in_flight_mark mark_;
};

/// A part of the runtime that lives in an environment and must be stopped with it (the agent
/// layer's cooperations and sessions, the named layer's registry). The teardown stops the
/// extensions in the order of their phases, lowest first, whatever the order they were first
/// used in; each layer above names its own phase (a layer stops before the layers it builds on
/// are torn down: contexts before the registries their objects are listed in).
class MAILROOM_EXPORT env_extension {
public:
    virtual ~env_extension();
    /// Where it stops in the teardown: lower phases first (begin_stop and wait_stopped both).
    virtual int teardown_phase() const noexcept = 0;
    /// Any thread. Begins tearing down what it owns.
    virtual void begin_stop() noexcept = 0;
    /// Blocks until what it owns is gone. On the joining thread.
    virtual void wait_stopped() noexcept = 0;
    /// Names the context of `kind` (a name registered with register_running_kind) and `id` for
    /// a report; "" when the kind is not one this extension registered or the id is gone.
    virtual std::string describe(std::string_view kind, std::uint64_t id) const;
};

class MAILROOM_EXPORT env_core : public std::enable_shared_from_this<env_core> {
public:
    explicit env_core(environment_options options);
    ~env_core();

    const std::string& name() const noexcept { return options_.name; }
    /// The environment object; valid until it finished joining.
    environment* owner = nullptr;
    const environment_options& options() const noexcept { return options_; }
    std::uint64_t id() const noexcept { return id_; }

    /// False once the environment finished deregistering its cooperations: sending through its
    /// mboxes raises environment_stopped_error from then on.
    /// seq_cst (a plain load on x86 and ARM, as acquire would be): the second half of
    /// send_scope's handshake when membarrier is not available.
    bool open() const noexcept { return !closed_.load(std::memory_order_seq_cst); }
    bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }
    /// Raises environment_stopped_error naming `what` when the environment is closed.
    void check_open(const char* what, std::string_view object) const;
    /// Same, when it is stopping (for creating new cooperations and the like).
    void check_not_stopping(const char* what, std::string_view object) const;

    timer_service& timers() noexcept { return timers_; }

    /// This thread's counters for this environment. Inline: a thread-local compare on the
    /// path of every callback; the first use on a thread takes the lock (counters_slow()).
    thread_counters& counters() noexcept {
        if (tls_counters.env_id == id_) [[likely]]
            return *tls_counters.block;
        return counters_slow();
    }

    /// Logs through options().log or to stderr. Any thread.
    void log(std::string_view text) const noexcept;

    /// The extension registered under `key`, created by `make` on first use. Any thread.
    /// Finding one that exists takes no lock (the layers above look theirs up per agent).
    template <class E, class Make>
    E& extension(const void* key, Make&& make) {
        for (auto& s : found_) {
            const void* k = s.key.load(std::memory_order_acquire);
            if (!k) break;
            if (k == key) return static_cast<E&>(*s.ext);
        }
        std::lock_guard g(lock_);
        for (auto& [k, e] : extensions_)
            if (k == key) return static_cast<E&>(*e);
        // Kept in phase order (the teardown's), after the others of the same phase.
        std::unique_ptr<env_extension> made = make();
        const int phase = made->teardown_phase();
        auto at = extensions_.begin();
        while (at != extensions_.end() && at->second->teardown_phase() <= phase) ++at;
        env_extension* e = extensions_.emplace(at, key, std::move(made))->second.get();
        // Published in the first free slot (filled in order under lock_, so a reader stops at
        // the first empty one); an extension lives until the core does.
        for (auto& s : found_)
            if (!s.key.load(std::memory_order_relaxed)) {
                s.ext = e;
                s.key.store(key, std::memory_order_release);
                break;
            }
        return static_cast<E&>(*e);
    }

    /// The extension registered under `key`, or null when it was never made. Any thread. An
    /// extension lives as long as the core, so the pointer stays valid while the caller holds
    /// the core.
    template <class E>
    const E* find_extension(const void* key) const noexcept {
        std::lock_guard g(lock_);
        for (auto& [k, e] : extensions_)
            if (k == key) return static_cast<const E*>(e.get());
        return nullptr;
    }

    std::shared_ptr<dispatcher_impl> default_dispatcher() const noexcept { return default_; }
    std::shared_ptr<dispatcher_impl> add_dispatcher(std::shared_ptr<dispatcher_impl> d);
    std::shared_ptr<dispatcher_impl> find_dispatcher(std::string_view name) const;
    std::vector<std::shared_ptr<dispatcher_impl>> dispatchers() const;

    void stop() noexcept;
    teardown_report join();
    /// True on a thread that a join would wait for: a worker of one of its dispatchers, its
    /// teardown watch, or a thread running one of its callbacks (current_env() is this).
    bool own_thread() const noexcept;
    /// The destructor of the environment object on one of its own threads: stops, and hands the
    /// join to a teardown thread that holds `self` until the teardown completed.
    void hand_off_teardown(std::shared_ptr<env_core> self) noexcept;
    /// Any thread. A snapshot of the counters: every outcome counter is read before any sent
    /// counter, so even while messages flow, outcomes never exceed sends in a snapshot.
    environment_stats stats() const;

    /// The callback counters of every thread, summed (thread_counters::callbacks_*). Any thread.
    struct callback_counts {
        std::uint64_t run = 0, refused = 0, discarded = 0;
    };
    callback_counts callback_totals() const noexcept;

private:
    thread_counters& counters_slow() noexcept;
    /// On the joining thread, after intake closed: returns once no send_scope of this
    /// environment is open on any thread.
    void wait_for_senders() noexcept;

    environment_options options_;
    std::uint64_t id_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> closed_{false};
    timer_service timers_;

    mutable std::mutex lock_;
    std::shared_ptr<dispatcher_impl> default_;
    std::vector<std::shared_ptr<dispatcher_impl>> dispatchers_;
    std::vector<std::pair<const void*, std::unique_ptr<env_extension>>> extensions_;  // in phase order
    struct found_slot {
        std::atomic<const void*> key{nullptr};
        env_extension* ext = nullptr;
    };
    found_slot found_[8];  // the lock-free view of extensions_ (the first eight made)
    std::vector<std::pair<std::thread::id, std::unique_ptr<thread_counters>>> counters_;

    /// Watches the workers while join() waits; see teardown_watch in environment.cpp.
    void watch_teardown(std::stop_token stop);
    teardown_report join_once();
    void report_overrun(const running_facts& f, std::int64_t ns, bool stall_reported);

    std::mutex join_lock_;
    bool joined_ = false;
    bool dispatchers_closed_ = false;  // guarded by lock_: join took its last list of dispatchers
    // The thread a destroy-from-inside handed the teardown to. Set before the environment
    // object lets go of the core; joined by ~env_core (detached there when it runs on it).
    std::thread reaper_;
    teardown_report report_;  // guarded by join_lock_, and by report_lock_ while the watcher runs
    std::mutex report_lock_;
    std::atomic<std::uint64_t> overruns_{0};

    /// The run-time watchdog (see "the run-time watchdog" in environment.cpp): samples the
    /// workers' heartbeats from construction until the dispatchers are joined.
    void watch_stalls(std::stop_token stop);
    /// Names what a busy worker runs: its context (through the extensions' describe) and its
    /// message type.
    void describe_running(const worker_stats& w, std::string& context, std::string& type) const;
    /// Names what worker `beat` of `d` runs, with what its kind adds (an fd, a job's name and
    /// poster); true for a job. With the worker listed (inside visit_workers).
    bool describe_worker(const dispatcher_impl& d, const heartbeat& beat, std::string& context,
                         std::string& type) const;
    /// True while the watchdog has reported the demand `handled` of `beat` and it still runs
    /// (as of the watchdog's last sample): the teardown watch says it once, as that stall.
    bool stall_reported(const heartbeat* beat, std::uint64_t handled) const;
    mutable std::mutex stalled_lock_;
    std::vector<std::pair<const heartbeat*, std::uint64_t>> stalled_;  // under stalled_lock_
    std::atomic<std::uint64_t> stalls_reported_{0};
    std::atomic<std::uint64_t> stalled_now_{0};
    std::atomic<std::int64_t> longest_stall_ns_{0};
    // The watchdog's wait: add_dispatcher() moves watch_epoch_ and wakes it, so a dispatcher
    // made while it waits a long tick (100 ms with no short timeout yet) is sampled at once,
    // with the tick of its own timeout, and its first demands are timed from their start.
    std::mutex watch_lock_;
    std::condition_variable_any watch_cv_;
    std::uint64_t watch_epoch_ = 0;  // under watch_lock_
    // Last: stopped and joined before any member it reads is destroyed.
    std::jthread stall_watch_;
};

/// The environment whose handler this thread is running, if any (set by the agent layer).
MAILROOM_EXPORT env_core*& current_env() noexcept;
/// What current_env() refers to, for the one hot path that sets and restores it around every
/// callback (the session layer's guarded run), which names it instead of calling. Named, never
/// bound to a reference there: GCC 12's UBSan null check of a reference to an initial-exec
/// thread-local reads flags that a `lea` did not set, and reports a null pointer that is not.
MAILROOM_FAST_TLS extern MAILROOM_EXPORT constinit thread_local env_core* tls_current_env;

/// Sets current_env() for a scope: around a callback of the environment that runs on a thread
/// that is not one of its workers (on_registered, on_deregistered, an agent's destructor), so
/// that a join() there raises and a destruction there hands its teardown off.
class env_scope {
public:
    explicit env_scope(env_core* e) noexcept : prev_(current_env()) { current_env() = e; }
    ~env_scope() { current_env() = prev_; }
    env_scope(const env_scope&) = delete;
    env_scope& operator=(const env_scope&) = delete;

private:
    env_core* prev_;
};

}  // namespace mailroom::internal
