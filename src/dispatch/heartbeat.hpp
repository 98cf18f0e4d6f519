#pragma once
/// What a worker publishes about the demand it runs, for the teardown watch and the watchdog.

#include <mailroom/core/clock.hpp>
#include <mailroom/export.hpp>

#include <atomic>
#include <cstdint>
#include <string_view>
#include <typeinfo>

namespace mailroom::internal {

/// A kind of context that runs on workers, as the layer above that defines it names it: the
/// extension point through which an upper layer tells the heartbeat, worker_stats and the
/// teardown watch what a worker runs, without the dispatch layer knowing what it is. 0 is "no
/// context"; registered kinds are 1..255.
using running_kind = std::uint8_t;

/// Registers a kind by its name (a string with static storage, e.g. a literal) and returns its
/// number; the same name gives the same number. Any thread, at any time (a layer does it once,
/// in a static initializer); aborts when 255 kinds are registered.
MAILROOM_EXPORT running_kind register_running_kind(const char* name) noexcept;
/// The name a kind was registered with; empty for 0 and for a number never handed out.
MAILROOM_EXPORT std::string_view running_kind_name(running_kind kind) noexcept;

/// A heartbeat's context word: the kind in the top byte, the context's id below.
inline constexpr unsigned running_kind_shift = 56;
inline constexpr std::uint64_t running_id_mask = (std::uint64_t{1} << running_kind_shift) - 1;

/// Where a worker's stack lands when the watchdog asks for it (see stack_capture.hpp): filled by
/// the worker's own signal handler, read by the watcher once `answered` says so. Preallocated
/// with the heartbeat: the handler allocates nothing.
struct stack_slot {
    static constexpr int max_frames = 48;
    /// The watcher's request number (the watcher is the only writer).
    std::atomic<std::uint32_t> requested{0};
    /// The request the frames below answer (the signal handler is the only writer; release).
    std::atomic<std::uint32_t> answered{0};
    int count = 0;
    void* frames[max_frames];
};

/// What a worker publishes as it runs handlers, for the teardown watch and the watchdog:
/// relaxed stores on the hot path, read by a watcher that only needs them eventually.
struct heartbeat {
    /// Demands this worker has finished; moves while the worker makes progress.
    std::atomic<std::uint64_t> handled{0};
    /// Non-zero while the worker is running a demand.
    std::atomic<std::uint32_t> busy{0};
    /// Times this worker parked (slept in the kernel) for want of work.
    std::atomic<std::uint64_t> parks{0};
    /// The running demand's context (its running_kind << running_kind_shift | its id); 0 until
    /// the upper layer says, and for demands that belong to no context.
    std::atomic<std::uint64_t> context{0};
    /// The running handler's message type (a tag type for timers and posted calls).
    std::atomic<const std::type_info*> type{nullptr};
    /// Bumped by extend_deadline() in a handler: the watchdog counts its timeout from the last
    /// change it saw. Off the hot path (only a handler that asks writes it).
    std::atomic<std::uint64_t> extended{0};
    /// A job's deadline while it runs, in now_ns() terms (0: none): the watchdog reports a job
    /// that runs past it. Written by job queue threads only (off the hot path).
    std::atomic<std::int64_t> deadline_ns{0};
    /// For the watchdog's stack capture; untouched by the hot path.
    stack_slot stack;

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
struct fd_callback_tag {};

/// Says what this worker runs now: the context of a registered `kind` with `id` (below 2^56)
/// and the message type it handles. Two relaxed stores, nothing on threads that are not workers.
inline void note_running(running_kind kind, std::uint64_t id, const std::type_info* type) noexcept {
    if (heartbeat* b = tls_heartbeat) {
        b->context.store(std::uint64_t{kind} << running_kind_shift | (id & running_id_mask), std::memory_order_relaxed);
        b->type.store(type, std::memory_order_relaxed);
    }
}

}  // namespace mailroom::internal
