#pragma once
// The multi-process test harness: start a child program, read the lines it prints with a
// bounded wait, send it signals, wait for it to end with a bounded wait, and never leave it
// behind.
//
// A child_process is its own guard: its destructor kills the child (SIGKILL) and reaps it, so
// a test that fails an assertion, throws or returns early leaves no process and no zombie. The
// child is also killed if the thread that started it dies (PR_SET_PDEATHSIG), so that a test
// binary that crashes outright does not leave it running: start children from the test's own
// thread, or from a thread that outlives them.
//
// Ports: the harness supports both ways, and prefers the second. free_tcp_port() binds
// 127.0.0.1:0 and returns the port the kernel chose (another process may take it before the
// child binds it: a small race). Better, the child binds tcp://127.0.0.1:0 itself and prints the
// endpoint it got ("READY tcp://127.0.0.1:41234"), which wait_for_line() returns: no race.
//
// Every wait is bounded and fails with a process_error that names the program and its pid and
// says what was seen. Threads: one thread uses a child_process at a time.

#include <mailroom/core/error.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

namespace mailroom::test {

/// A harness failure: a child that could not start, did not print a line in time, did not
/// exit in time, or was used after it was reaped. Its message names the program and its pid.
class process_error final : public mailroom::error {
public:
    using error::error;
};

/// How a child ended.
struct exit_status {
    bool exited = false;  ///< exited by itself, with `code`
    int code = 0;
    int signal = 0;       ///< killed by this signal (when !exited)

    /// "exited with 0", "killed by SIGKILL".
    std::string describe() const;
};

/// One child program, running from spawn() until it is reaped (wait(), or the destructor).
class child_process {
public:
    /// Starts `argv[0]` (a path) with `argv`: fork, then in the child only async-signal-safe
    /// calls (dup2, prctl, execv) until exec, as a ThreadSanitizer parent requires. Its stdout
    /// comes to this object through a pipe; stdin is /dev/null; stderr is shared with the test.
    /// process_error, naming the program and the reason, if it cannot be started.
    static child_process spawn(std::vector<std::string> argv);

    child_process(child_process&& other) noexcept;
    child_process& operator=(child_process&& other) noexcept;
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    /// Kills the child (SIGKILL) unless it was reaped, and reaps it.
    ~child_process();

    pid_t pid() const noexcept { return pid_; }
    /// "echo_child (pid 1234)", for messages.
    std::string name() const;

    /// The next line the child prints (without its newline), or nothing if none came within
    /// `timeout` or the child closed its stdout (see at_eof()).
    std::optional<std::string> read_line(std::chrono::milliseconds timeout);
    /// Skips lines until one starts with `prefix` and returns it. process_error if none came
    /// within `timeout` or stdout closed first; the message quotes the lines it skipped.
    std::string wait_for_line(std::string_view prefix, std::chrono::milliseconds timeout);
    /// True once the child's stdout reached its end (the child exited or closed it).
    bool at_eof() const noexcept { return eof_; }

    /// Sends `sig`. process_error once the child was reaped (its pid may belong to another).
    void signal(int sig);
    void kill() { signal(9); }
    /// SIGSTOP, then waits (bounded) until the kernel reports the child stopped.
    void stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));
    /// SIGCONT, then waits (bounded) until the kernel reports it running again.
    void resume(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    /// Waits for the child to end and reaps it. process_error if it is still running after
    /// `timeout` (it is left running: the destructor kills it).
    exit_status wait(std::chrono::milliseconds timeout);
    /// The status if the child has ended (and reaps it), nothing while it runs.
    std::optional<exit_status> try_wait();
    /// True until the child is reaped.
    bool running() const noexcept { return pid_ > 0 && !status_; }
    /// How it ended, once reaped.
    const std::optional<exit_status>& status() const noexcept { return status_; }

private:
    child_process() = default;
    void release() noexcept;
    void require_live(const char* what) const;
    bool fill(std::chrono::steady_clock::time_point deadline);  // reads more of stdout
    // Waits for a state change among `options` (WUNTRACED, WCONTINUED, or 0 for an exit).
    bool wait_change(int options, std::chrono::milliseconds timeout, bool (*seen)(int status));

    pid_t pid_ = -1;
    int out_fd_ = -1;
    std::string program_;
    std::string buffer_;  // read from stdout, not returned as a line yet
    bool eof_ = false;
    std::optional<exit_status> status_;
};

/// A tcp port on 127.0.0.1 that was free a moment ago (bind 127.0.0.1:0, read it, close).
/// Prefer letting the child bind port 0 and print its endpoint: see the top of this file.
int free_tcp_port();

/// The name of a signal ("SIGKILL").
std::string signal_name(int sig);

}  // namespace mailroom::test
