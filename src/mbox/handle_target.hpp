#pragma once
// What an event_handle refers to. Every kind of event object implements these four once (a
// send_delayed timer in src/mbox/timer.cpp; the session layer's event_object for session and
// agent timers, inboxes, subscriptions and named objects), and event_handle is written once
// over them: a new kind of event object is a class that implements this, not a new handle.

#include <mailroom/mbox/event_handle.hpp>

namespace mailroom::internal {

/// The handle holds one reference to the object; handle_destroy() and handle_detach() each
/// let go of it (exactly one of them is called, once). Any thread, the object's own callbacks
/// included; none may throw.
class handle_target {
public:
    /// Not shut down, and its owner has not ended it.
    virtual bool handle_live() const noexcept = 0;
    /// Guarantee 2 (docs/lifetimes.md): closes the object and, off its own context, waits for a
    /// callback of it that is running. True if this call closed it.
    virtual bool handle_shutdown() noexcept = 0;
    /// Shuts it down, has it freed once nothing can touch it, and drops the handle's reference.
    virtual void handle_destroy() noexcept = 0;
    /// Drops the handle's reference; the object lives on until its owner ends it.
    virtual void handle_detach() noexcept = 0;

protected:
    ~handle_target() = default;
};

}  // namespace mailroom::internal
