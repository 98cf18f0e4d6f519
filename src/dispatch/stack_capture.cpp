// The watchdog's stack capture (see stack_capture.hpp and docs/watchdog.md).
//
// libunwind is loaded with dlopen(RTLD_LOCAL) rather than linked: libunwind.so also defines
// the _Unwind_* functions that C++ exceptions use, and linked ahead of libgcc_s it would take
// over every throw in the program. Loaded locally it serves only the capture.

#include <mailroom/dispatch/stack_capture.hpp>

#include <cxxabi.h>
#include <ucontext.h>
#include <dlfcn.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>

#if MAILROOM_HAVE_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

namespace mailroom::internal {

namespace {

// Unwinds from a signal's context (a ucontext_t*) into `frames`; returns the count.
using unwind_fn = int (*)(void* ucontext, void** frames, int max) noexcept;

#if MAILROOM_HAVE_LIBUNWIND
#define MAILROOM_NAME_OF(f) MAILROOM_NAME_OF2(f)
#define MAILROOM_NAME_OF2(f) #f
// The local-unwinding entry points, found by their real names (the header's macros say them).
// unw_backtrace is not used: its per-thread trace cache is freed by a thread-exit destructor
// that ThreadSanitizer cannot follow, and it starts inside the handler rather than at the
// interrupted frame.
struct libunwind_entry {
    decltype(&unw_init_local2) init;
    decltype(&unw_step) step;
    decltype(&unw_get_reg) get_reg;
};
libunwind_entry unw{};

int unwind_with_libunwind(void* ucontext, void** frames, int max) noexcept {
    unw_cursor_t cursor;
    // UNW_INIT_SIGNAL_FRAME: the context is a signal's, the first frame the interrupted one.
    if (unw.init(&cursor, static_cast<unw_context_t*>(ucontext), UNW_INIT_SIGNAL_FRAME) != 0) return 0;
    int n = 0;
    do {
        unw_word_t ip = 0;
        if (unw.get_reg(&cursor, UNW_REG_IP, &ip) != 0 || ip == 0) break;
        frames[n++] = reinterpret_cast<void*>(ip);
    } while (n < max && unw.step(&cursor) > 0);
    return n;
}
#endif

std::atomic<unwind_fn> unwinder{nullptr};
std::once_flag unwinder_once;
const char* unwinder_missing = "no stack: libunwind not built in";

void load_unwinder() noexcept {
#if MAILROOM_HAVE_LIBUNWIND
    void* lib = ::dlopen(MAILROOM_LIBUNWIND_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        unwinder_missing = "no stack: libunwind (" MAILROOM_LIBUNWIND_SONAME ") could not be loaded";
        return;
    }
    unw.init = reinterpret_cast<decltype(unw.init)>(::dlsym(lib, MAILROOM_NAME_OF(unw_init_local2)));
    unw.step = reinterpret_cast<decltype(unw.step)>(::dlsym(lib, MAILROOM_NAME_OF(unw_step)));
    unw.get_reg = reinterpret_cast<decltype(unw.get_reg)>(::dlsym(lib, MAILROOM_NAME_OF(unw_get_reg)));
    auto policy = reinterpret_cast<decltype(&unw_set_caching_policy)>(
        ::dlsym(lib, MAILROOM_NAME_OF(unw_set_caching_policy)));
    auto space = static_cast<unw_addr_space_t*>(::dlsym(lib, MAILROOM_NAME_OF(unw_local_addr_space)));
    if (!unw.init || !unw.step || !unw.get_reg || !policy || !space) {
        unwinder_missing = "no stack: libunwind lacks unw_init_local2";
        return;
    }
    // No cache: nothing shared to lock, nothing per thread to set up, in the signal handler.
    policy(*space, UNW_CACHE_NONE);
    unwinder.store(&unwind_with_libunwind, std::memory_order_release);
#endif
}

// The signal numbers our handler is installed for.
std::mutex install_lock;
std::atomic<bool> installed[NSIG]{};

// On the stalled worker. Async-signal-safe: reads an initial-exec thread-local, runs the
// unwinder (caching off, set up by prepare_stack_capture: it neither allocates nor locks), and
// publishes with a release store. errno is kept: the interrupted code may be about to read it.
extern "C" void on_stack_signal(int, siginfo_t*, void* ucontext) {
    const int saved_errno = errno;
    if (heartbeat* b = tls_heartbeat) {
        stack_slot& s = b->stack;
        const std::uint32_t want = s.requested.load(std::memory_order_acquire);
        if (want != s.answered.load(std::memory_order_relaxed)) {
            unwind_fn f = unwinder.load(std::memory_order_acquire);
            s.count = f ? f(ucontext, s.frames, stack_slot::max_frames) : 0;
            s.answered.store(want, std::memory_order_release);
        }
    }
    errno = saved_errno;
}

std::string name_frame(void* pc, bool return_address) {
    char buf[64];
    Dl_info info{};
    // A return address may be one past the call's last byte, in the next function: look up the
    // byte before it (the innermost frame's address is the interrupted instruction itself).
    const auto addr = reinterpret_cast<std::uintptr_t>(pc);
    if (::dladdr(reinterpret_cast<void*>(return_address ? addr - 1 : addr), &info) == 0) {
        std::snprintf(buf, sizeof buf, "%p", pc);
        return buf;
    }
    std::string out;
    if (info.dli_sname) {
        int status = -1;
        char* readable = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
        out = status == 0 && readable ? readable : info.dli_sname;
        std::free(readable);
        std::snprintf(buf, sizeof buf, " + 0x%zx", static_cast<std::size_t>(addr - reinterpret_cast<std::uintptr_t>(info.dli_saddr)));
        out += buf;
    } else {
        out = "??";
    }
    // The module and the offset in it, for addr2line when the name is not exported.
    std::snprintf(buf, sizeof buf, " + 0x%zx)", static_cast<std::size_t>(addr - reinterpret_cast<std::uintptr_t>(info.dli_fbase)));
    out += " (";
    out += info.dli_fname ? info.dli_fname : "?";
    out += buf;
    return out;
}

}  // namespace

int this_thread_kernel_id() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

void prepare_stack_capture() noexcept {
    // Loads and sets libunwind up (it initialises itself on first use) off the signal path.
    std::call_once(unwinder_once, load_unwinder);
#if MAILROOM_HAVE_LIBUNWIND
    if (unwinder.load(std::memory_order_acquire)) {
        ucontext_t here;
        if (::getcontext(&here) == 0) {
            void* frames[4];
            unwind_with_libunwind(&here, frames, 4);
        }
    }
#endif
}

std::string install_stack_signal(int signal) noexcept {
    try {
        if (signal <= 0 || signal >= NSIG) return "no stack: " + std::to_string(signal) + " is not a signal number";
        std::lock_guard g(install_lock);
        if (installed[signal].load(std::memory_order_acquire)) return {};
        struct sigaction old {};
        if (::sigaction(signal, nullptr, &old) != 0) return "no stack: signal " + std::to_string(signal) + " cannot be handled";
        const bool ours_to_take = (old.sa_flags & SA_SIGINFO) == 0 && (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN);
        if (!ours_to_take)
            return "no stack: signal " + std::to_string(signal) +
                   " has a handler of the program's own (choose another with environment_options::watchdog_signal)";
        struct sigaction sa {};
        sa.sa_sigaction = &on_stack_signal;
        sigemptyset(&sa.sa_mask);
        // SA_RESTART: a system call the signal interrupts is restarted where the kernel can.
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        if (::sigaction(signal, &sa, nullptr) != 0) return "no stack: signal " + std::to_string(signal) + " cannot be handled";
        installed[signal].store(true, std::memory_order_release);
        return {};
    } catch (...) {
        return "no stack: out of memory";
    }
}

captured_stack capture_stack(heartbeat& beat, int thread_id, int signal, std::chrono::nanoseconds wait) {
    captured_stack out;
    std::call_once(unwinder_once, load_unwinder);
    if (!unwinder.load(std::memory_order_acquire)) {
        out.note = unwinder_missing;
        return out;
    }
    if (signal <= 0 || signal >= NSIG) {
        out.note = "no stack: stack capture is off (environment_options::watchdog_signal is 0)";
        return out;
    }
    if (!installed[signal].load(std::memory_order_acquire)) {
        out.note = install_stack_signal(signal);
        if (!out.note.empty()) return out;
    }
    stack_slot& s = beat.stack;
    const std::uint32_t seq = s.requested.load(std::memory_order_relaxed) + 1;
    s.requested.store(seq, std::memory_order_release);
    if (::syscall(SYS_tgkill, ::getpid(), thread_id, signal) != 0) {
        out.note = "no stack: the worker thread could not be signalled (it has exited)";
        return out;
    }
    const auto until = std::chrono::steady_clock::now() + wait;
    while (s.answered.load(std::memory_order_acquire) != seq) {
        if (std::chrono::steady_clock::now() >= until) {
            char ms[32];
            std::snprintf(ms, sizeof ms, "%.0f ms", static_cast<double>(wait.count()) / 1e6);
            out.note = "no stack: the worker did not answer signal " + std::to_string(signal) + " within " + ms;
            return out;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    // Frame 0 is the interrupted instruction, the others return addresses.
    for (int i = 0; i < s.count; ++i) out.frames.push_back(name_frame(s.frames[i], i > 0));
    if (out.frames.empty()) out.note = "no stack: the unwinder found no frames";
    return out;
}

}  // namespace mailroom::internal
