#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/queue/futex.hpp>

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <thread>

namespace mailroom::internal {

std::atomic<bool> event_gate_asymmetric{false};

namespace {
bool thread_sanitized() noexcept {
#if defined(__SANITIZE_THREAD__)
    return true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
    return true;
#else
    return false;
#endif
#else
    return false;
#endif
}
}  // namespace

void event_gate_init() noexcept {
    static std::once_flag once;
    std::call_once(once, [] {
        // ThreadSanitizer does not know that membarrier orders memory: it gets the symmetric
        // seq_cst pair, which it does model.
        if (thread_sanitized()) return;
        long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return;
        if (::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) return;
        event_gate_asymmetric.store(true, std::memory_order_seq_cst);
    });
}

namespace {
std::atomic<std::uint64_t> barrier_calls{0};
}

std::uint64_t context_gate::barriers() noexcept { return barrier_calls.load(std::memory_order_relaxed); }

void context_gate::barrier() noexcept {
    // Beside a system call that interrupts every thread, one uncontended increment is nothing.
    barrier_calls.fetch_add(1, std::memory_order_relaxed);
    if (event_gate_asymmetric.load(std::memory_order_relaxed)) {
        // Registered in event_gate_init(); cannot fail after that.
        if (::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return;
        // The other side's plain store/load would be unprotected: never carry on silently.
        fatal("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registration");
    }
    // Symmetric mode: close() was a seq_cst exchange, enter() a seq_cst store and loads, and
    // wait_not_running() loads seq_cst: the four are in one total order without a fence here.
}

void context_gate::wait_not_running(const void* tag) const noexcept {
    // A callback usually finishes within microseconds; a blocked one may take long, and a
    // sleeping waiter must not steal the CPU it runs on.
    auto busy = [&] {
        // seq_cst, not just acquire: in the symmetric mode this load is the second half of
        // the Dekker pair (the close() exchange is the first); it also synchronises with the
        // leave() that clears it.
        const void* now = running_.load(std::memory_order_seq_cst);
        return tag ? now == tag : now != nullptr;
    };
    for (unsigned i = 0; busy(); ++i) {
        if (i < 256)
            cpu_relax();
        else if (i < 512)
            std::this_thread::yield();
        else
            std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

}  // namespace mailroom::internal
