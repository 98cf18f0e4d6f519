#pragma once
// Event objects: what calls back into a serial context (a session or an agent): a timer, an
// inbox, a subscription, a named object. Each is a handle_target, so the one event_handle
// (shutdown, destroy, detach, live) serves them all; the four are implemented here once.

#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/mbox/handle_target.hpp>
#include <mailroom/session/context.hpp>
#include <mailroom/session/session.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <string>

namespace mailroom::internal {

class event_object;

/// Destroys an object's callback on its context (queued by destroy, or by the context's retire).
struct object_retire final : demand {
    event_object* obj = nullptr;
};

class event_object : public handle_target {
public:
    enum class kind : std::uint8_t { timer, inbox, subscription, fd_watch };

    event_object(context_ref owner, kind k, handler f) noexcept;

    // handle_target: not shut and its context's life goes on; shutdown_object();
    // destroy_object() and the handle's reference; the handle's reference.
    bool handle_live() const noexcept final;
    bool handle_shutdown() noexcept final;
    void handle_destroy() noexcept final;
    void handle_detach() noexcept final;

    virtual void add_ref() noexcept = 0;
    virtual void release() noexcept = 0;
    /// Stops the source (the timer wheel, the topic, a name) from producing more deliveries.
    /// Any thread; idempotent.
    virtual void stop_source() noexcept {}
    /// At retire, on the object's context (or with its dispatcher joined), before its callback
    /// is destroyed: lets go of what the source keeps on the context's side (an fd watcher's
    /// slot in its loop).
    virtual void on_retire() noexcept {}

    const char* kind_name() const noexcept {
        return what == kind::timer          ? "timer callback"
               : what == kind::inbox        ? "inbox callback"
               : what == kind::subscription ? "subscription callback"
                                            : "fd watcher callback";
    }
    std::string display_name() const;

    context_ref owner;  // the context and the life it belongs to (holds the arena)
    handler fn;         // destroyed at retire, on the context
    context_gate::flag shut{0};
    std::uint64_t id;
    kind what;
    message_type type{};       // an inbox's or a subscription's message type
    std::uint64_t mbox_id = 0;  // the mbox whose deliveries it handles (its table entry's key)

    // Guarded by owner.core->lock.
    bool listed = false;
    event_object* prev = nullptr;
    event_object* next = nullptr;

    object_retire retire;

protected:
    virtual ~event_object();
};

/// The session layer's part of an environment: the arena of its contexts (agents' too), the
/// sessions still alive, and their counters. The teardown destroys the sessions left after the
/// cooperations are gone and waits until each has retired on its own context.
class session_runtime final : public env_extension {
public:
    explicit session_runtime(env_core* env);
    ~session_runtime() override;

    static session_runtime& of(env_core& env);
    /// The runtime of `env` if one was made, else null. Any thread.
    static const session_runtime* find(const env_core& env) noexcept;

    // After the cooperations (agent layer, phase 100), before the registries of what contexts
    // own (named objects, named mboxes).
    static constexpr int phase = 110;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override {}
    void wait_stopped() noexcept override;
    /// Its counters; the callback counters come from the environment's per-thread ones.
    session_stats stats() const noexcept;
    std::string describe(std::string_view kind, std::uint64_t id) const override;

    env_core* env;
    const std::shared_ptr<context_arena> arena;

    mutable std::mutex lock;
    context_core* sessions = nullptr;  // guarded by lock: listed from creation until retired
    std::size_t live = 0;              // created and not yet retired; guarded by lock
    bool closed = false;               // guarded by lock
    std::condition_variable idle;
    std::atomic<std::uint64_t> sessions_created{0}, sessions_destroyed{0}, objects_created{0},
        objects_destroyed{0};
};

/// The dispatch layer's numbers for the two kinds of serial context, which heartbeats carry
/// and worker_stats and the teardown watch name (see dispatch/heartbeat.hpp).
inline const running_kind agent_running_kind = register_running_kind("agent");
inline const running_kind session_running_kind = register_running_kind("session");
inline running_kind running_kind_of(const context_core& c) noexcept {
    return c.kind == context_kind::agent ? agent_running_kind : session_running_kind;
}

/// Called from inside the catch of a callback that threw: names what it threw (rethrown to read
/// it), logs it, counts it and applies the context's policy. Out of line and cold: the path of a
/// callback that returns normally builds no string and pays nothing for it.
[[gnu::noinline, gnu::cold]] void on_thrown(context_core& c, const char* what, message_type type) noexcept;

/// run_guarded()'s body, inlined where the callback is known (execute_message calls the handler
/// directly, an fd watcher its callback): on the path of a callback that returns, two
/// thread-locals are set and restored, the heartbeat notes it, and nothing else happens.
template <class F>
[[gnu::always_inline]] inline bool guarded(context_core& c, const char* what, message_type type, F&& f) noexcept {
    // current_context() and current_env(), by name (see tls_current_env).
    context_core* const prev = tls_current_context;
    env_core* const prev_env = tls_current_env;
    tls_current_context = &c;
    tls_current_env = c.env;
    note_running(running_kind_of(c), c.id, type.info() ? type.info() : &typeid(posted_call_tag));
    try {
        f();
    } catch (...) {
        tls_current_context = prev;
        tls_current_env = prev_env;
        on_thrown(c, what, type);
        return false;
    }
    tls_current_context = prev;
    tls_current_env = prev_env;
    return true;
}

/// run_callback() for a callback of the event object `o` of the life `gen` of `c`, with the
/// callback known: the same steps (the life, the gate, the guarded run, the settling), inlined
/// into a caller that runs once per event (an fd watcher's readiness), so that the callback is
/// reached without a call through a function pointer. The context's own thread.
template <class F>
[[gnu::always_inline]] inline run_outcome run_object_callback(context_core& c, std::uint32_t gen,
                                                              const event_object* o,
                                                              const context_gate::flag& shut, const char* what,
                                                              message_type type, F&& f) noexcept {
    if (c.gen.load(std::memory_order_acquire) != gen) [[unlikely]]
        return run_outcome::gone;
    return run_checked_with(c, true, o, shut, [&] { guarded(c, what, type, f); });
}

/// Shuts the object down (the guarantee-2 wait unless on its own context); true if this call did.
bool shutdown_object(event_object* o) noexcept;
/// Shuts it down and queues its retire on its context (once).
void destroy_object(event_object* o) noexcept;

}  // namespace mailroom::internal
