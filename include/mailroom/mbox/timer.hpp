#pragma once
/// Delayed and periodic messages.

#include <mailroom/mbox/mbox.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <utility>

namespace mailroom {

namespace internal {
class timer_entry;
}

/// Owns a scheduled message. Destroying or cancelling it guarantees the message is not
/// delivered afterwards, even when it is already queued at the receiver: when cancel() returns
/// on a thread other than the receiver's, no delivery of it is running and none will start.
/// Call `detach()` to let a timer run on without its handle.
class MAILROOM_EXPORT timer_handle {
public:
    timer_handle() noexcept = default;
    explicit timer_handle(internal::timer_entry* e) noexcept : entry_(e) {}
    timer_handle(timer_handle&& o) noexcept : entry_(std::exchange(o.entry_, nullptr)) {}
    timer_handle& operator=(timer_handle&& o) noexcept;
    ~timer_handle();

    /// True while it refers to a timer that was not cancelled (a fired one-shot still counts).
    explicit operator bool() const noexcept;

    /// Cancels the timer (see the class comment); returns false if it was already cancelled.
    /// Any thread. Inside a handler of this very timer's message it does not wait. The message
    /// is released at once (on this thread); the timer leaves the wheel within 256 ticks.
    bool cancel() noexcept;

    /// Lets the timer live on without this handle (it can then no longer be cancelled).
    void detach() noexcept;

private:
    internal::timer_entry* entry_ = nullptr;
};

namespace internal {
MAILROOM_EXPORT timer_entry* schedule(const mbox& to, envelope* e, std::chrono::nanoseconds delay,
                                      std::chrono::nanoseconds period);
}

/// Sends a `T` built from `args` to `to` after `delay` (zero: at the next tick; negative raises
/// usage_error naming the mbox). Any thread. The handle cancels on destruction.
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

/// Fire and forget: like send_delayed, without a handle (it cannot be cancelled).
template <class T, class... Args>
void post_delayed(const mbox& to, std::chrono::nanoseconds delay, Args&&... args) {
    send_delayed<T>(to, delay, std::forward<Args>(args)...).detach();
}

}  // namespace mailroom
