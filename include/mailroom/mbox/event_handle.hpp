#pragma once
/// The one handle of every event object: timers (send_delayed, send_periodic, a session's or an
/// agent's add_timer), inboxes, subscriptions and named objects. Its verbs are documented once,
/// in docs/lifetimes.md ("The handle of an event object").

#include <mailroom/export.hpp>

#include <utility>

namespace mailroom {

namespace internal {
class handle_target;
}

/// Owns one event object. Move-only; destroying (or move-assigning over) the handle destroys
/// the object unless detach() was called. All verbs are callable from any thread, including the
/// object's own callbacks, and are no-ops (false) on an empty handle or an object already
/// destroyed (by its handle, its owner or the environment's teardown).
///
/// Handles that carry more than their object (inbox_handle, named_handle) are extended_handles.
class MAILROOM_EXPORT event_handle {
public:
    event_handle() noexcept = default;
    /// Takes over the handle's reference to `t`.
    explicit event_handle(internal::handle_target* t) noexcept : target_(t) {}
    event_handle(event_handle&& o) noexcept : target_(std::exchange(o.target_, nullptr)) {}
    event_handle& operator=(event_handle&& o) noexcept;
    ~event_handle() { destroy(); }

    /// True while the object is live: not shut down, not destroyed, and its owner (session,
    /// agent, environment) has not ended it. A one-shot timer that fired is still live.
    explicit operator bool() const noexcept;

    /// Stops the object's callbacks (guarantee 2): once it returns on a thread other than the
    /// object's own context, no callback of it is running and none will start; inside that
    /// context it does not wait. True if this call shut it (false: already shut, or empty).
    bool shutdown() noexcept;

    /// A synonym of shutdown(), kept for timers (timer_handle::cancel).
    bool cancel() noexcept { return shutdown(); }

    /// shutdown(), then the object is freed once nothing can touch it (its callback is
    /// destroyed on its own context). The handle becomes empty.
    void destroy() noexcept;

    /// Lets the object live on without this handle, until its owner ends (a timer of
    /// send_delayed: until it fired, or for good when periodic). The handle becomes empty.
    void detach() noexcept;

private:
    internal::handle_target* target_ = nullptr;
};

/// The base of handles that carry more than their object (inbox_handle: an address;
/// named_handle: a name): event_handle's verbs, held privately, so that such a handle never
/// converts to an `event_handle&` whose assignment would empty it and leave the rest behind;
/// and its own moves are protected, so it cannot be sliced into an extended_handle either.
class MAILROOM_EXPORT extended_handle : private event_handle {
public:
    using event_handle::operator bool;
    using event_handle::shutdown;
    using event_handle::destroy;
    using event_handle::detach;

    /// A plain handle of the same object, for a collection of handles of every kind; the
    /// object keeps its meaning (an inbox its address, a named object its name). This handle
    /// becomes empty; what it carries (address(), name()) stays as it was.
    event_handle to_event_handle() && noexcept { return std::move(static_cast<event_handle&>(*this)); }

protected:
    extended_handle() noexcept = default;
    explicit extended_handle(internal::handle_target* t) noexcept : event_handle(t) {}
    extended_handle(extended_handle&&) noexcept = default;
    extended_handle& operator=(extended_handle&&) noexcept = default;
    ~extended_handle() = default;
};

}  // namespace mailroom
