#pragma once
/// What a worker publishes about the demand it runs, for the teardown watch and the watchdog.

#include <mailroom/core/clock.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <cstdint>
#include <typeinfo>

namespace mailroom::internal {

/// Which context a worker is running, as the upper layer tags it: the kind in the top bits,
/// the agent's or session's id below.
inline constexpr std::uint64_t running_agent = std::uint64_t{1} << 62;
inline constexpr std::uint64_t running_session = std::uint64_t{2} << 62;
inline constexpr std::uint64_t running_id_mask = (std::uint64_t{1} << 62) - 1;

/// What a worker publishes as it runs handlers, for the teardown watch and the watchdog:
/// relaxed stores on the hot path, read by a watcher that only needs them eventually.
struct heartbeat {
    /// Demands this worker has finished; moves while the worker makes progress.
    std::atomic<std::uint64_t> handled{0};
    /// Non-zero while the worker is running a demand.
    std::atomic<std::uint32_t> busy{0};
    /// Times this worker parked (slept in the kernel) for want of work.
    std::atomic<std::uint64_t> parks{0};
    /// The running demand's context (running_agent or running_session | id); 0 until the
    /// upper layer says, and for demands that belong to no agent or session.
    std::atomic<std::uint64_t> context{0};
    /// The running handler's message type (a tag type for timers and posted calls).
    std::atomic<const std::type_info*> type{nullptr};

    void begin() noexcept {
        busy.store(1, std::memory_order_relaxed);
        context.store(0, std::memory_order_relaxed);
    }
    void end() noexcept {
        handled.store(handled.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        busy.store(0, std::memory_order_relaxed);
    }
};

/// The heartbeat of the worker running on this thread; null on other threads. Set by the
/// dispatchers' worker threads as they start.
MAILROOM_FAST_TLS extern MAILROOM_EXPORT constinit thread_local heartbeat* tls_heartbeat;

/// The "message types" a heartbeat shows for callbacks that have no message.
struct timer_callback_tag {};
struct posted_call_tag {};

/// Says what this worker runs now (an agent's handler or a session's callback): two relaxed
/// stores, nothing on threads that are not workers.
inline void note_running(std::uint64_t context, const std::type_info* type) noexcept {
    if (heartbeat* b = tls_heartbeat) {
        b->context.store(context, std::memory_order_relaxed);
        b->type.store(type, std::memory_order_relaxed);
    }
}

}  // namespace mailroom::internal
