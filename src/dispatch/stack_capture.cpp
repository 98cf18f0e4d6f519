// The watchdog's stack capture (see stack_capture.hpp and docs/watchdog.md).
//
// libunwind is loaded with dlopen(RTLD_LOCAL) rather than linked: libunwind.so also defines
// the _Unwind_* functions that C++ exceptions use, and linked ahead of libgcc_s it would take
// over every throw in the program. Loaded locally it serves only the capture.

#include <mailroom/dispatch/stack_capture.hpp>

#include <cxxabi.h>
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

using backtrace_fn = int (*)(void**, int);
#if MAILROOM_HAVE_LIBUNWIND
static_assert(std::is_same_v<backtrace_fn, decltype(&unw_backtrace)>);
#endif

std::atomic<backtrace_fn> unwinder{nullptr};
std::once_flag unwinder_once;
const char* unwinder_missing = "no stack: libunwind not built in";

void load_unwinder() noexcept {
#if MAILROOM_HAVE_LIBUNWIND
    void* lib = ::dlopen(MAILROOM_LIBUNWIND_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        unwinder_missing = "no stack: libunwind (" MAILROOM_LIBUNWIND_SONAME ") could not be loaded";
        return;
    }
    if (auto f = reinterpret_cast<backtrace_fn>(::dlsym(lib, "unw_backtrace")))
        unwinder.store(f, std::memory_order_release);
    else
        unwinder_missing = "no stack: libunwind has no unw_backtrace";
#endif
}

// The signal numbers our handler is installed for.
std::mutex install_lock;
std::atomic<bool> installed[NSIG]{};

// On the stalled worker. Async-signal-safe: reads an initial-exec thread-local, runs the
// unwinder (which neither allocates nor locks on a thread prepare_stack_capture warmed), and
// publishes with a release store. errno is kept: the interrupted code may be about to read it.
extern "C" void on_stack_signal(int, siginfo_t*, void*) {
    const int saved_errno = errno;
    if (heartbeat* b = tls_heartbeat) {
        stack_slot& s = b->stack;
        const std::uint32_t want = s.requested.load(std::memory_order_acquire);
        if (want != s.answered.load(std::memory_order_relaxed)) {
            backtrace_fn f = unwinder.load(std::memory_order_acquire);
            s.count = f ? f(s.frames, stack_slot::max_frames) : 0;
            s.answered.store(want, std::memory_order_release);
        }
    }
    errno = saved_errno;
}

std::string name_frame(void* pc) {
    char buf[64];
    Dl_info info{};
    // The return address may be one past the call's last byte, in the next function: look up
    // the byte before it.
    const auto addr = reinterpret_cast<std::uintptr_t>(pc);
    if (::dladdr(reinterpret_cast<void*>(addr - 1), &info) == 0) {
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
    std::call_once(unwinder_once, load_unwinder);
    if (backtrace_fn f = unwinder.load(std::memory_order_acquire)) {
        void* frames[4];
        f(frames, 4);
    }
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
    // Frame 0 is the signal handler itself.
    for (int i = 1; i < s.count; ++i) out.frames.push_back(name_frame(s.frames[i]));
    if (out.frames.empty()) out.note = "no stack: the unwinder found no frames";
    return out;
}

}  // namespace mailroom::internal
