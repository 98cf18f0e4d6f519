// The multi-process test harness (see process.hpp).

#include "process.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <thread>
#include <utility>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace mailroom::test {

namespace {

using clock = std::chrono::steady_clock;

std::string errno_text(int e) { return std::strerror(e); }

std::string basename_of(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

int remaining_ms(clock::time_point deadline) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
    return left <= 0 ? 0 : left > 60'000 ? 60'000 : static_cast<int>(left);
}

exit_status status_of(int st) {
    exit_status s;
    if (WIFEXITED(st)) {
        s.exited = true;
        s.code = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
        s.signal = WTERMSIG(st);
    }
    return s;
}

bool ended(int st) { return WIFEXITED(st) || WIFSIGNALED(st); }
bool stopped(int st) { return WIFSTOPPED(st); }
bool continued(int st) { return WIFCONTINUED(st); }

// What the child runs between fork and exec: raw system calls only. The parent may be built
// with ThreadSanitizer or AddressSanitizer, whose interceptors (dup2, write, ...) must not run
// in the child of a threaded process; syscall() is not intercepted.
[[noreturn]] void exec_child(char* const* argv, int stdin_fd, int stdout_fd, int status_fd, pid_t parent) {
    long r = ::syscall(SYS_dup2, stdin_fd, 0);
    if (r >= 0) r = ::syscall(SYS_dup2, stdout_fd, 1);
    // Killed with the thread that started it: a test binary that crashes leaves nothing behind.
    if (r >= 0) r = ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (r >= 0 && ::syscall(SYS_getppid) != parent) ::syscall(SYS_exit_group, 127);  // orphaned already
    if (r >= 0) ::syscall(SYS_execve, argv[0], argv, environ);
    const int e = errno;
    ::syscall(SYS_write, status_fd, &e, sizeof e);
    ::syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

}  // namespace

std::string signal_name(int sig) {
    if (const char* abbrev = ::sigabbrev_np(sig)) return std::string("SIG") + abbrev;
    return "signal " + std::to_string(sig);
}

std::string exit_status::describe() const {
    return exited ? "exited with " + std::to_string(code) : "killed by " + signal_name(signal);
}

child_process child_process::spawn(std::vector<std::string> argv) {
    if (argv.empty() || argv[0].empty()) throw process_error("child process: no program to start");
    child_process c;
    c.program_ = argv[0];
    const std::string who = "child process '" + c.program_ + "'";
    // Everything the child needs is made before fork: it only calls the kernel.
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int out[2], status[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw process_error(who + ": pipe: " + errno_text(errno));
    if (::pipe2(status, O_CLOEXEC) != 0) {
        const int e = errno;
        ::close(out[0]), ::close(out[1]);
        throw process_error(who + ": pipe: " + errno_text(e));
    }
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const pid_t parent = ::getpid();
    const pid_t pid = null_fd < 0 ? -1 : ::fork();
    if (pid == 0) exec_child(args.data(), null_fd, out[1], status[1], parent);
    const int fork_errno = errno;
    ::close(out[1]);
    ::close(status[1]);
    if (null_fd >= 0) ::close(null_fd);
    if (pid < 0) {
        ::close(out[0]), ::close(status[0]);
        throw process_error(who + ": cannot fork: " + errno_text(fork_errno));
    }
    c.pid_ = pid;
    c.out_fd_ = out[0];
    ::fcntl(c.out_fd_, F_SETFL, ::fcntl(c.out_fd_, F_GETFL) | O_NONBLOCK);
    // The status pipe closes on a successful exec (close-on-exec) or carries exec's errno.
    pollfd p{status[0], POLLIN, 0};
    int ready = 0;
    do ready = ::poll(&p, 1, 10'000);
    while (ready < 0 && errno == EINTR);
    int exec_errno = 0;
    const ssize_t n = ready > 0 ? ::read(status[0], &exec_errno, sizeof exec_errno) : -1;
    ::close(status[0]);
    if (n == sizeof exec_errno) {
        c.wait_change(0, std::chrono::seconds(10), ended);
        throw process_error(who + ": cannot start it: " + errno_text(exec_errno));
    }
    if (n != 0) throw process_error(who + " (pid " + std::to_string(pid) + "): no word from exec within 10 s");
    return c;
}

child_process::child_process(child_process&& other) noexcept { *this = std::move(other); }

child_process& child_process::operator=(child_process&& other) noexcept {
    if (this != &other) {
        release();
        pid_ = std::exchange(other.pid_, -1);
        out_fd_ = std::exchange(other.out_fd_, -1);
        program_ = std::move(other.program_);
        buffer_ = std::move(other.buffer_);
        eof_ = other.eof_;
        status_ = std::exchange(other.status_, std::nullopt);
    }
    return *this;
}

child_process::~child_process() { release(); }

void child_process::release() noexcept {
    if (pid_ > 0 && !status_) {
        ::kill(pid_, SIGKILL);  // also ends a stopped child
        int st = 0;
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        status_ = status_of(st);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    out_fd_ = -1;
    pid_ = -1;
}

std::string child_process::name() const { return basename_of(program_) + " (pid " + std::to_string(pid_) + ")"; }

void child_process::require_live(const char* what) const {
    if (pid_ <= 0) throw process_error(std::string("child process: ") + what + " with no child");
    if (status_) throw process_error(name() + ": " + what + " after it " + status_->describe() + " and was reaped");
}

bool child_process::fill(clock::time_point deadline) {
    if (eof_ || out_fd_ < 0) return false;
    for (;;) {
        char buf[4096];
        const ssize_t n = ::read(out_fd_, buf, sizeof buf);
        if (n > 0) {
            buffer_.append(buf, static_cast<std::size_t>(n));
            return true;
        }
        if (n == 0) {
            eof_ = true;
            return true;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN) throw process_error(name() + ": reading its output: " + errno_text(errno));
        pollfd p{out_fd_, POLLIN, 0};
        const int ready = ::poll(&p, 1, remaining_ms(deadline));
        if (ready == 0) return false;
        if (ready < 0 && errno != EINTR) throw process_error(name() + ": poll: " + errno_text(errno));
    }
}

std::optional<std::string> child_process::read_line(std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    for (;;) {
        const auto nl = buffer_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buffer_.substr(0, nl);
            buffer_.erase(0, nl + 1);
            return line;
        }
        if (eof_) {
            if (buffer_.empty()) return std::nullopt;
            return std::exchange(buffer_, std::string());  // a last line without its newline
        }
        if (!fill(deadline)) return std::nullopt;
    }
}

std::string child_process::wait_for_line(std::string_view prefix, std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    std::string skipped;
    for (;;) {
        std::optional<std::string> line = read_line(std::chrono::milliseconds(remaining_ms(deadline)));
        if (line && line->starts_with(prefix)) return *line;
        if (line) {
            skipped += "\n  " + *line;
            continue;
        }
        if (!eof_ && clock::now() < deadline) continue;
        throw process_error(name() + ": no line starting with '" + std::string(prefix) + "' within " +
                            std::to_string(timeout.count()) + " ms" + (eof_ ? " (its output ended)" : "") +
                            (skipped.empty() ? "; it printed nothing" : "; it printed:" + skipped));
    }
}

void child_process::signal(int sig) {
    require_live("a signal");
    if (::kill(pid_, sig) != 0) throw process_error(name() + ": " + signal_name(sig) + ": " + errno_text(errno));
}

bool child_process::wait_change(int options, std::chrono::milliseconds timeout, bool (*seen)(int)) {
    const auto deadline = clock::now() + timeout;
    for (;;) {
        int st = 0;
        const pid_t r = ::waitpid(pid_, &st, options | WNOHANG);
        if (r == pid_) {
            if (ended(st)) {
                status_ = status_of(st);
                return seen(st);
            }
            if (seen(st)) return true;
            continue;  // a change it was not asked about (a stop while waiting for a continue)
        }
        if (r < 0 && errno != EINTR) throw process_error(name() + ": waitpid: " + errno_text(errno));
        if (clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void child_process::stop(std::chrono::milliseconds timeout) {
    signal(SIGSTOP);
    if (!wait_change(WUNTRACED, timeout, stopped))
        throw process_error(name() + ": not seen stopped within " + std::to_string(timeout.count()) + " ms" +
                            (status_ ? "; it " + status_->describe() : ""));
}

void child_process::resume(std::chrono::milliseconds timeout) {
    signal(SIGCONT);
    if (!wait_change(WCONTINUED, timeout, continued))
        throw process_error(name() + ": not seen running again within " + std::to_string(timeout.count()) + " ms" +
                            (status_ ? "; it " + status_->describe() : ""));
}

exit_status child_process::wait(std::chrono::milliseconds timeout) {
    if (status_) return *status_;
    if (pid_ <= 0) throw process_error("child process: wait with no child");
    if (!wait_change(0, timeout, ended))
        throw process_error(name() + ": still running after " + std::to_string(timeout.count()) + " ms");
    return *status_;
}

std::optional<exit_status> child_process::try_wait() {
    if (!status_ && pid_ > 0) wait_change(0, std::chrono::milliseconds(0), ended);
    return status_;
}

int free_tcp_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw process_error("free_tcp_port: socket: " + errno_text(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        const int e = errno;
        ::close(fd);
        throw process_error("free_tcp_port: bind 127.0.0.1:0: " + errno_text(e));
    }
    ::close(fd);
    return ntohs(a.sin_port);
}

}  // namespace mailroom::test
