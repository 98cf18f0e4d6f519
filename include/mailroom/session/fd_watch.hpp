#pragma once
/// fd watchers: event objects that call back into a session bound to an event_loop_pool when a
/// file descriptor is ready (docs/event-loops.md). What a watch is asked for and told, and its
/// handle.

#include <mailroom/mbox/event_handle.hpp>
#include <mailroom/export.hpp>

#include <cstdint>
#include <utility>

namespace mailroom {

class session;

/// Readiness of an fd, as a set of flags: what a watcher is interested in, and what its
/// callback is told. `error` and `hangup` are always reported when they happen (epoll does),
/// whether asked for or not; asking for them alone keeps the fd watched for them only.
enum class fd_events : std::uint32_t {
    none = 0,
    read = 1,    ///< readable (or a peer's orderly close: a read returns 0)
    write = 2,   ///< writable
    error = 4,   ///< an error condition (EPOLLERR)
    hangup = 8,  ///< hung up (EPOLLHUP, or EPOLLRDHUP: the peer shut its writing side)
};
constexpr fd_events operator|(fd_events a, fd_events b) noexcept {
    return fd_events(std::uint32_t(a) | std::uint32_t(b));
}
constexpr fd_events operator&(fd_events a, fd_events b) noexcept {
    return fd_events(std::uint32_t(a) & std::uint32_t(b));
}
constexpr fd_events& operator|=(fd_events& a, fd_events b) noexcept { return a = a | b; }
/// True when `e` holds any of `flags`.
constexpr bool any_of(fd_events e, fd_events flags) noexcept { return (e & flags) != fd_events::none; }

/// How readiness is reported. level: the callback runs again on the loop's next turn while the
/// fd stays ready (read or write part of it, or ask for less). edge: it runs once per change
/// (new data, new room), and the callback must read or write until EAGAIN.
enum class fd_trigger : std::uint8_t { level, edge };

namespace internal {
class handle_target;
/// Changes a watcher's interest (see fd_watch_handle::set_interest).
MAILROOM_EXPORT bool set_fd_interest(handle_target* t, fd_events interest);
/// Moves a watcher to the session `to` (see fd_watch_handle::move_to); returns the new one (the
/// handle's reference). `t` stays the caller's to destroy.
MAILROOM_EXPORT handle_target* move_fd_watch(handle_target* t, const session& to);
/// What a watcher's type-erased callback is given and returns.
struct fd_call {
    fd_events ready = fd_events::none;
    fd_events next = fd_events::none;
};
}  // namespace internal

/// The handle of an fd watcher (session::watch): event_handle's verbs (docs/lifetimes.md) and
/// set_interest(). Once shutdown() returns on a thread other than the session's, the callback
/// is not running and never will again, and the fd is out of the loop's epoll set: the caller
/// may close it at once, and a new fd with the same number may be watched at once.
class MAILROOM_EXPORT fd_watch_handle final : public extended_handle {
public:
    fd_watch_handle() noexcept = default;
    explicit fd_watch_handle(internal::handle_target* t) noexcept : extended_handle(t), target_(t) {}
    fd_watch_handle(fd_watch_handle&& o) noexcept
        : extended_handle(std::move(o)), target_(std::exchange(o.target_, nullptr)) {}
    fd_watch_handle& operator=(fd_watch_handle&& o) noexcept {
        extended_handle::operator=(std::move(o));
        target_ = std::exchange(o.target_, nullptr);
        return *this;
    }
    ~fd_watch_handle() = default;

    /// Replaces the interest: the readiness the callback runs for from now on (none: the fd
    /// leaves the epoll set until a callback or set_interest asks again). Any thread,
    /// including the callback itself. Atomic with respect to the callback: a set_interest
    /// made while the callback runs wins over what that callback returns. False (nothing done)
    /// when the watcher is shut down or the handle empty; raises mailroom::error naming the
    /// watcher when epoll refuses (the fd was closed before the watcher was shut down).
    bool set_interest(fd_events interest) { return target_ && internal::set_fd_interest(target_, interest); }

    /// Moves the watcher to `target` (a session bound to an event_loop_pool, on the same loop or
    /// another): the same fd, callback, interest and trigger, called back on `target`'s context
    /// from then on. Atomic with respect to the callback: it shuts this watcher down first
    /// (waiting for a running callback), so the callback never runs on both loops, nor on the
    /// old one after this returns; readiness that comes meanwhile is reported on the new loop.
    /// The handle then holds the new watcher. Any thread but the watcher's own context
    /// (usage_error there: the running callback cannot be moved). Raises binding_error naming
    /// `target` when it is not bound to an event loop (the watcher is left as it was),
    /// session_destroyed_error when this watcher or its session is already ended, and what
    /// session::watch raises for `target`. Does nothing on an empty handle.
    inline void move_to(const session& target);

    /// event_handle::destroy(); the handle becomes empty.
    void destroy() noexcept {
        target_ = nullptr;
        extended_handle::destroy();
    }
    /// A plain handle of the same watcher (extended_handle::to_event_handle); this one
    /// becomes empty.
    ::mailroom::event_handle to_event_handle() && noexcept {
        target_ = nullptr;
        return static_cast<extended_handle&&>(*this).to_event_handle();
    }
    /// event_handle::detach(); the handle becomes empty.
    void detach() noexcept {
        target_ = nullptr;
        extended_handle::detach();
    }

private:
    internal::handle_target* target_ = nullptr;  // held alive by the base's reference
};

}  // namespace mailroom
