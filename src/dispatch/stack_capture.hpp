#pragma once
/// The watchdog's stack capture: the watcher signals a stalled worker, whose handler unwinds its
/// own stack into the heartbeat's preallocated stack_slot (async-signal-safe: libunwind's
/// unw_init_local2 and unw_step on the signal's context, caching off: no allocation, no lock); the watcher waits a bounded time for the answer and
/// names the frames outside the handler (dladdr, abi::__cxa_demangle).

#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace mailroom::internal {

/// The calling thread's kernel id.
MAILROOM_EXPORT int this_thread_kernel_id() noexcept;

/// Called by each worker thread as it starts: loads the unwinder (once per process) and runs it
/// once on this thread, so that what it sets up per thread is not set up in a signal handler.
MAILROOM_EXPORT void prepare_stack_capture() noexcept;

/// Installs the capture handler for `signal` (process-wide, once per signal number). Returns ""
/// when it is installed (now or before), else why not: the program has a handler of its own
/// for that signal (it is left alone), or the number is not a signal. Any thread.
MAILROOM_EXPORT std::string install_stack_signal(int signal) noexcept;

/// A stack, or why there is none.
struct captured_stack {
    std::vector<std::string> frames;  ///< innermost first, the signal handler's own frames left out
    std::string note;                 ///< why `frames` is empty, when it is
};

/// Asks the worker thread `thread_id`, whose heartbeat is `beat`, for its stack through
/// `signal`, and waits up to `wait` for the answer. The caller holds the worker alive (it
/// cannot end meanwhile: see dispatcher_impl::visit_workers) and is the only one asking
/// through this heartbeat.
MAILROOM_EXPORT captured_stack capture_stack(heartbeat& beat, int thread_id, int signal,
                                             std::chrono::nanoseconds wait);

}  // namespace mailroom::internal
