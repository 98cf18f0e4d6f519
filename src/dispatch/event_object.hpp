#pragma once
/// The state machine behind every event object's shutdown guarantee: a gate that the object's
/// serial context passes through around each callback, and that shutdown() closes and waits on.

#include <mailroom/export.hpp>

#include <atomic>
#include <cstdint>

namespace mailroom::internal {

/// True when shutdowns pair with a membarrier(2) (enter() then costs no locked instruction);
/// false when the kernel lacks MEMBARRIER_CMD_PRIVATE_EXPEDITED (or under ThreadSanitizer, which
/// does not model it) and both sides use a seq_cst store/load pair instead. Decided once, by
/// event_gate_init(), before the first gate is used.
MAILROOM_EXPORT extern std::atomic<bool> event_gate_asymmetric;

/// Decides the mode above (registers the process with membarrier). Idempotent, any thread;
/// must be called before any gate is entered (sessions call it when they are created).
MAILROOM_EXPORT void event_gate_init() noexcept;

/// The gate of one serial context (a session) and its event objects. Two kinds of words, each
/// written by one side (a Dekker pair):
///
///   running_   written only by the serial context: which object's callback runs now (or null)
///   shut flag  one per event object plus one for the whole context, written by shutdown()
///
/// enter(o)  (the context, before a callback):  running_ = o; fence; if o or context shut:
///                                               running_ = null and refuse
/// shutdown(o) (any thread):                     shut(o) = 1; fence; wait while running_ == o
///
/// Why nothing slips through: with both fences full barriers the two stores come before the
/// two loads in one total order, so at least one side sees the other's store. Either enter()
/// sees the shut flag and refuses, or shutdown() sees running_ == o and waits for the leave()
/// that clears it (a release store, paired with the waiter's acquire load: everything the
/// callback did happens before shutdown() returns). running_ moves away from o only by that
/// leave() (or by a refusing enter() of o itself), so seeing any other value means the callback
/// is over; any later enter(o) comes after the fence and sees the flag. One running_ word per
/// context suffices because the context runs one callback at a time.
///
/// The fence on the hot side costs nothing: enter() uses a compiler fence only
/// (atomic_signal_fence), and shutdown() makes up for it with membarrier(MEMBARRIER_CMD_
/// PRIVATE_EXPEDITED), which runs a full barrier on every thread of the process that is
/// running at that moment (a thread that is not running passes a context switch, itself a full
/// barrier). So the context's relaxed store of running_ and load of the flag, kept in program
/// order by the compiler fence, either both come before the barrier point on that thread (then
/// the store is visible to the waiter's loads after membarrier returned) or the load comes
/// after it (then it sees the flag, stored before membarrier). This is the asymmetric Dekker of
/// liburcu and folly: the rare side (shutdown) pays a system call so that the frequent side
/// (every callback) pays two plain stores and two loads, no locked instruction. Without
/// membarrier both sides use seq_cst (one locked instruction, the store, per callback).
///
/// Threads: enter()/leave() only on the serial context. close(), barrier(), wait_not_running()
/// from any thread; wait_not_running() never on the context itself (it would wait for itself).
class context_gate {
public:
    using flag = std::atomic<std::uint32_t>;

    /// The context, before a callback of the object tagged `tag` whose shut flag is `object`.
    /// False means "shut: do not run it".
    bool enter(const void* tag, const flag& object) noexcept {
        if (event_gate_asymmetric.load(std::memory_order_relaxed)) [[likely]] {
            running_.store(tag, std::memory_order_relaxed);
            std::atomic_signal_fence(std::memory_order_seq_cst);
            if ((object.load(std::memory_order_relaxed) | shut_.load(std::memory_order_relaxed)) == 0) [[likely]]
                return true;
        } else {
            running_.store(tag, std::memory_order_seq_cst);
            if ((object.load(std::memory_order_seq_cst) | shut_.load(std::memory_order_seq_cst)) == 0) return true;
        }
        running_.store(nullptr, std::memory_order_release);
        return false;
    }

    /// The context, after a callback that enter() let through.
    void leave() noexcept { running_.store(nullptr, std::memory_order_release); }

    /// Any thread. Shuts the whole context; true if this call did. Follow with barrier() and
    /// wait_not_running(nullptr) unless on the context itself.
    bool close() noexcept { return close(shut_); }
    /// Opens a closed gate again for a new life of a recycled context, before the context is
    /// shared: nothing runs on it and nothing waits on it for the new life yet.
    void reopen() noexcept {
        running_.store(nullptr, std::memory_order_relaxed);
        shut_.store(0, std::memory_order_release);
    }
    /// Any thread. seq_cst (a plain load on x86, as acquire would be): a post's check of it is
    /// the second half of send_scope's handshake with join() when membarrier is not available.
    bool shut() const noexcept { return shut_.load(std::memory_order_seq_cst) != 0; }

    /// Any thread. Shuts one object; true if this call did.
    static bool close(flag& f) noexcept { return f.exchange(1, std::memory_order_seq_cst) == 0; }

    /// Any thread, after the close() calls it covers: the far side of the Dekker pair.
    MAILROOM_EXPORT static void barrier() noexcept;
    /// How many times barrier() was called in this process (for tests: a barrier interrupts
    /// every running thread, so a teardown pays one per sweep, not one per session).
    MAILROOM_EXPORT static std::uint64_t barriers() noexcept;

    /// Any thread but the context's own. Returns once no callback of `tag` is running (with
    /// `tag` null: once no callback at all is running). Spins briefly, then yields, then sleeps
    /// in short steps.
    MAILROOM_EXPORT void wait_not_running(const void* tag) const noexcept;

private:
    std::atomic<const void*> running_{nullptr};
    flag shut_{0};
};

}  // namespace mailroom::internal
