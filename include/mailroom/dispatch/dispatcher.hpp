#pragma once
/// Dispatchers own worker threads and the queues of the contexts bound to them; binders say
/// where a cooperation's agents run. What every kind shares: the generic handle, the binder,
/// statistics and the host a kind's factory adds a dispatcher to. Each kind has a header of its
/// own with its params, its typed handle and its factory (one_thread.hpp, active_obj.hpp,
/// active_group.hpp, thread_pool.hpp, event_loop_pool.hpp).

#include <mailroom/core/message.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace mailroom {

namespace internal {
class dispatcher_impl;
class binder_impl;
struct handle_access;
}  // namespace internal

class dispatcher_host;

/// How long an idle worker spins, looking for work, before it parks (sleeps in the kernel):
/// waking a parked thread costs tens of microseconds, a short spin keeps a busy exchange
/// between threads off that path.
inline constexpr std::chrono::nanoseconds default_worker_spin{std::chrono::microseconds(20)};

/// Counters of one worker thread, for statistics, the teardown watch and the watchdog.
struct worker_stats {
    std::uint64_t handled = 0;  ///< demands finished
    bool busy = false;          ///< running a demand right now
    std::uint64_t parks = 0;    ///< times the worker parked
    /// While busy: the kind of context running, as the layer that runs it names it ("agent",
    /// "session"; empty when idle and for a demand that belongs to no context, such as a
    /// dispatcher's own control demand), the context's id (one id space per environment), and
    /// the message type it handles (empty when unknown). The name has static storage.
    std::string_view running_kind;
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
    /// The run-time watchdog's counts for this dispatcher (docs/watchdog.md), as
    /// environment_stats has them for all: stalls reported (each once), those still running,
    /// and the longest a reported one ran (so far, for one still running).
    std::uint64_t stalls_reported = 0;
    std::size_t stalled_now = 0;
    std::chrono::nanoseconds longest_stall{};
};

/// Says on which dispatcher (and which worker or group) an agent runs. Held by the cooperation
/// (or by the agent when it was given its own); cheap to copy.
class MAILROOM_EXPORT binder {
public:
    binder() noexcept = default;
    explicit binder(std::shared_ptr<internal::binder_impl> impl) noexcept;

    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

private:
    friend struct internal::handle_access;
    std::shared_ptr<internal::binder_impl> impl_;
};

class dispatcher;

namespace internal {
/// Builds a dispatcher of one kind (its threads started); called by the host at most once.
using dispatcher_builder = std::function<std::shared_ptr<dispatcher_impl>()>;
/// Hands what a kind's factory builds to the host (dispatcher_host::host_dispatcher).
MAILROOM_EXPORT dispatcher add_to_host(dispatcher_host& host, std::string_view name, const dispatcher_builder& build);
}  // namespace internal

/// What owns named dispatchers: the extension point through which each kind's factory
/// (`<kind>::make_dispatcher`, in `<mailroom/dispatch/<kind>.hpp>`) adds a dispatcher without
/// the dispatch layer knowing the environment, and the environment adds one without knowing
/// the kind. `environment` is the one host.
class MAILROOM_EXPORT dispatcher_host {
protected:
    dispatcher_host() noexcept = default;
    ~dispatcher_host() = default;

private:
    friend dispatcher internal::add_to_host(dispatcher_host&, std::string_view, const internal::dispatcher_builder&);
    /// Checks that a dispatcher named `name` may be added, calls `build`, and takes what it
    /// built: from then on the host owns it, shuts it down and joins its threads when it stops.
    /// Raises environment_stopped_error when the host is stopping and duplicate_name_error
    /// when the name is taken (a built dispatcher it refuses is joined before it raises).
    virtual std::shared_ptr<internal::dispatcher_impl> host_dispatcher(std::string_view name,
                                                                       const internal::dispatcher_builder& build) = 0;
};

/// A handle to a dispatcher of an environment, of any kind: what `find_dispatcher` returns.
/// Each kind has a typed handle (`one_thread::handle`, `active_obj::handle`,
/// `active_group::handle`, `thread_pool::handle`) that derives from it and adds the kind's own
/// ways to bind; `dispatcher_cast` recovers it. Any thread may use it.
class MAILROOM_EXPORT dispatcher {
public:
    dispatcher() noexcept = default;
    explicit dispatcher(std::shared_ptr<internal::dispatcher_impl> impl) noexcept;

    /// True while it refers to a dispatcher that has not been shut down.
    explicit operator bool() const noexcept;

    /// Empty for an empty handle.
    std::string_view name() const noexcept;
    /// "one_thread", "active_obj", "active_group", "thread_pool", "event_loop_pool"; empty for an
    /// empty handle.
    std::string_view kind() const noexcept;

    /// A binder with the kind's default binding: the one worker (one_thread), a worker of its
    /// own (active_obj), the dispatcher's FIFO order (thread_pool). An active_group dispatcher
    /// has no default (a context needs a group): it raises binding_error naming the dispatcher
    /// (and active_group::handle has no bind(), so there it does not compile).
    binder bind() const;

    /// Stops the dispatcher once its bound contexts are gone; binding to it afterwards raises
    /// binding_error. The environment shuts every dispatcher down when it stops.
    void shutdown() noexcept;

    dispatcher_stats stats() const;

    /// True when both refer to the same dispatcher (or both are empty).
    friend bool operator==(const dispatcher& a, const dispatcher& b) noexcept { return a.impl_ == b.impl_; }

protected:
    /// For the typed handles: `d`, which must be empty or of `kind`; raises
    /// dispatcher_kind_error naming the dispatcher, its kind and `kind` otherwise.
    dispatcher(const dispatcher& d, std::string_view kind);

private:
    friend struct internal::handle_access;
    std::shared_ptr<internal::dispatcher_impl> impl_;
};

/// The typed handle (`thread_pool::handle` and the like) of a dispatcher found by name: an
/// empty handle for an empty one, and dispatcher_kind_error naming the dispatcher when it is of
/// another kind. Any thread.
template <class Handle>
Handle dispatcher_cast(const dispatcher& d);

/// The base of each kind's typed handle: `Handle` names its kind in `Handle::kind_name`, and
/// declares `using kind_handle::kind_handle;` so that only dispatcher_cast (and the kind's
/// factory, through it) makes one from a generic handle.
template <class Handle>
class kind_handle : public dispatcher {
public:
    kind_handle() noexcept = default;

protected:
    explicit kind_handle(const dispatcher& d) : dispatcher(d, Handle::kind_name) {}

private:
    template <class H>
    friend H dispatcher_cast(const dispatcher& d);
};

template <class Handle>
Handle dispatcher_cast(const dispatcher& d) {
    static_assert(std::is_base_of_v<kind_handle<Handle>, Handle>, "dispatcher_cast: Handle is a kind's handle");
    return Handle(d);
}

}  // namespace mailroom
