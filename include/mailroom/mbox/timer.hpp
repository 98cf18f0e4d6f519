#pragma once
/// Delayed and periodic messages.

#include <mailroom/mbox/event_handle.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <utility>

namespace mailroom {

/// The handle of a delayed or periodic message: the one handle of every event object
/// (event_handle, docs/lifetimes.md). Its shutdown() (or `cancel()`, a synonym) guarantees the
/// message is not delivered afterwards, even when it is already queued at the receiver: once it
/// returns on a thread other than the receiver's, no delivery of it is running and none will
/// start; inside a handler of this very timer's message it does not wait. The message is
/// released at once (on the calling thread); the timer leaves the wheel within 256 ticks.
/// detach() lets the timer run on without its handle (it can then no longer be stopped).
using timer_handle = event_handle;

namespace internal {
/// Returns the timer (the handle's reference).
MAILROOM_EXPORT handle_target* schedule(const mbox& to, envelope* e, std::chrono::nanoseconds delay,
                                        std::chrono::nanoseconds period);
}

/// Sends a `T` built from `args` to `to` after `delay` (zero: at the next tick; negative raises
/// usage_error naming the mbox). Any thread. The handle stops it on destruction.
template <class T, class... Args>
[[nodiscard]] timer_handle send_delayed(const mbox& to, std::chrono::nanoseconds delay, Args&&... args) {
    return timer_handle(internal::schedule(to, internal::make_envelope<T>(std::forward<Args>(args)...), delay,
                                           std::chrono::nanoseconds::zero()));
}

/// Sends a `T` to `to` after `delay` and then every `period` (which must be positive; a
/// negative delay raises usage_error). The same immutable instance is delivered each time, every
/// period, even while earlier ones are still queued (a message limit bounds a slow receiver).
template <class T, class... Args>
[[nodiscard]] timer_handle send_periodic(const mbox& to, std::chrono::nanoseconds delay,
                                         std::chrono::nanoseconds period, Args&&... args) {
    if (period.count() <= 0) throw usage_error("send_periodic to " + to.name() + ": the period must be positive");
    return timer_handle(
        internal::schedule(to, internal::make_envelope<T>(std::forward<Args>(args)...), delay, period));
}

/// Fire and forget: like send_delayed, without a handle (it cannot be stopped).
template <class T, class... Args>
void post_delayed(const mbox& to, std::chrono::nanoseconds delay, Args&&... args) {
    send_delayed<T>(to, delay, std::forward<Args>(args)...).detach();
}

}  // namespace mailroom
