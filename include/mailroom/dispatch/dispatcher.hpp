#pragma once
/// Dispatchers own worker threads and the queues of the contexts bound to them; binders say
/// where a cooperation's agents run.

#include <mailroom/core/message.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom {

namespace internal {
class dispatcher_impl;
class binder_impl;
class dispatcher_registry;
}  // namespace internal

/// How long an idle worker spins, looking for work, before it parks (sleeps in the kernel):
/// waking a parked thread costs tens of microseconds, a short spin keeps a busy exchange
/// between threads off that path.
inline constexpr std::chrono::nanoseconds default_worker_spin{std::chrono::microseconds(20)};

/// One worker thread shared by every context bound to it.
struct one_thread_params {
    /// Bounded spin before the worker parks.
    std::chrono::nanoseconds spin = default_worker_spin;
};

/// A worker thread per bound agent, started at binding and stopped when the agent is gone.
struct active_obj_params {
    std::chrono::nanoseconds spin = default_worker_spin;
};

/// A worker thread per named group, started with the group's first agent, stopped with its last.
struct active_group_params {
    std::chrono::nanoseconds spin = default_worker_spin;
};

/// Which contexts of a thread pool keep FIFO order among themselves.
enum class fifo : std::uint8_t {
    cooperation,  ///< all agents of one cooperation share one queue: never run in parallel
    agent,        ///< each agent has its own queue: agents of a cooperation may run in parallel
};

/// N worker threads taking turns on the queues of their bound contexts.
struct thread_pool_params {
    /// Worker threads; 0 means one per hardware thread.
    std::size_t threads = 0;
    /// The FIFO unit for bindings that do not say otherwise.
    fifo order = fifo::cooperation;
    /// Demands a worker handles from one queue before moving on to the next ready queue.
    std::size_t max_demands_at_once = 16;
    std::chrono::nanoseconds spin = default_worker_spin;
};

/// What kind of context a busy worker is running.
enum class running_kind : std::uint8_t {
    none,     ///< idle, or a demand of no agent or session (a control demand)
    agent,    ///< an agent's handler or hook
    session,  ///< a session's callback
};

/// Counters of one worker thread, for statistics, the teardown watch and the watchdog.
struct worker_stats {
    std::uint64_t handled = 0;  ///< demands finished
    bool busy = false;          ///< running a demand right now
    std::uint64_t parks = 0;    ///< times the worker parked
    /// While busy: the agent or session running and its id (agents and sessions share one
    /// id space per environment), and the message type it handles (empty when unknown).
    running_kind running = running_kind::none;
    std::uint64_t running_id = 0;
    message_type running_type{};
};

/// A snapshot of a dispatcher's state.
struct dispatcher_stats {
    std::string name;
    std::string kind;
    std::size_t threads = 0;
    std::size_t bound_contexts = 0;
    std::size_t queue_depth = 0;  ///< demands queued and not yet started, approximately
    std::vector<worker_stats> workers;
};

/// Says on which dispatcher (and which worker or group) an agent runs. Held by the cooperation
/// (or by the agent when it was given its own); cheap to copy.
class MAILROOM_EXPORT binder {
public:
    binder() noexcept = default;
    explicit binder(std::shared_ptr<internal::binder_impl> impl) noexcept;

    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
    const std::shared_ptr<internal::binder_impl>& impl() const noexcept { return impl_; }

private:
    std::shared_ptr<internal::binder_impl> impl_;
};

/// A handle to a dispatcher of an environment. Any thread may use it.
class MAILROOM_EXPORT dispatcher {
public:
    dispatcher() noexcept = default;
    explicit dispatcher(std::shared_ptr<internal::dispatcher_impl> impl) noexcept;

    /// True while it refers to a dispatcher that has not been shut down.
    explicit operator bool() const noexcept;

    std::string_view name() const noexcept;

    /// A binder to this dispatcher. For active_group it names the group; for thread_pool the
    /// dispatcher's own FIFO order applies.
    binder bind() const;
    /// active_group: a binder to the named group.
    binder bind_group(std::string group) const;
    /// thread_pool: a binder with its own FIFO order.
    binder bind_fifo(fifo order) const;

    /// Stops the dispatcher once its bound contexts are gone; binding to it afterwards raises
    /// binding_error. The environment shuts every dispatcher down when it stops.
    void shutdown() noexcept;

    dispatcher_stats stats() const;

    const std::shared_ptr<internal::dispatcher_impl>& impl() const noexcept { return impl_; }

private:
    std::shared_ptr<internal::dispatcher_impl> impl_;
};

}  // namespace mailroom
