#pragma once
// What the W9 programs share: the client process starts its server as a second process (the
// same program, exec'd again with `--role server`), reads the server's "READY <address>" line
// from a pipe with a bounded wait, and reaps it with a bounded wait (then SIGKILL). The server
// is in the client's process group, so `mailroom bench`, which kills a program's group on a
// timeout, leaves no server behind; it also dies with its client (PR_SET_PDEATHSIG).

#include "harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace bench {

/// The server process of a two-process run: started by spawn_self(), reaped by finish() or
/// the destructor.
class server_process {
public:
    /// Starts this program again with `args` (after argv[0]) and waits up to 30 s for its
    /// "READY ..." line; returns what follows "READY ". Fails `workload` otherwise.
    std::string spawn_self(const char* workload, const std::vector<std::string>& args) {
        workload_ = workload;
        // The program's own path, read before the fork: exec'ing "/proc/self/exe" itself would
        // start valgrind's tool instead under `valgrind --trace-children=yes`.
        std::string self = "/proc/self/exe";
        char path[4096];
        if (const ssize_t len = ::readlink("/proc/self/exe", path, sizeof path - 1); len > 0) self.assign(path, len);
        std::vector<std::string> argv{self};
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<char*> cargv;
        for (auto& a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        int fd[2];
        if (::pipe2(fd, O_CLOEXEC) != 0) fail(workload, "pipe failed");
        const pid_t parent = ::getpid();
        std::fflush(nullptr);
        pid_ = ::fork();
        if (pid_ < 0) fail(workload, "fork failed");
        if (pid_ == 0) {
            // The child: only what exec needs (the client may have threads).
            if (::dup2(fd[1], 1) < 0) ::_exit(126);
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(126);
            ::execv(cargv[0], cargv.data());
            ::_exit(127);
        }
        ::close(fd[1]);
        out_ = fd[0];
        std::string line;
        const auto deadline = clock::now() + std::chrono::seconds(30);
        for (;;) {
            const auto nl = buffer_.find('\n');
            if (nl != std::string::npos) {
                line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                if (line.rfind("READY ", 0) == 0) return line.substr(6);
                continue;  // anything else the server says before it is ready
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
            pollfd p{out_, POLLIN, 0};
            if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0)
                fail(workload, "the server process did not say READY within 30 s");
            char buf[512];
            const ssize_t n = ::read(out_, buf, sizeof buf);
            if (n <= 0) fail(workload, "the server process ended before it was READY");
            buffer_.append(buf, static_cast<std::size_t>(n));
        }
    }

    /// Waits up to `timeout` for the server to exit by itself (it was told to), then kills it.
    /// Fails `workload` unless it exited with 0 within the time.
    void finish(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        if (pid_ <= 0) return;
        const auto deadline = clock::now() + timeout;
        int st = 0;
        for (;;) {
            const pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) break;
            if (clock::now() >= deadline) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &st, 0);
                pid_ = -1;
                fail(workload_, "the server process did not exit within " + std::to_string(timeout.count()) + " ms");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        pid_ = -1;
        if (out_ >= 0) ::close(out_);
        out_ = -1;
        check(WIFEXITED(st) && WEXITSTATUS(st) == 0, workload_,
              "the server process failed (status " + std::to_string(st) + ")");
    }

    server_process() = default;
    server_process(const server_process&) = delete;
    server_process& operator=(const server_process&) = delete;
    ~server_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        if (out_ >= 0) ::close(out_);
    }

private:
    const char* workload_ = "W9";
    pid_t pid_ = -1;
    int out_ = -1;
    std::string buffer_;
};

/// W9's sizes for one part, the same for mailroom and its floor: parts a and c are pipelined
/// one-way messages (M msg/s), part b round trips one at a time (microseconds each).
struct w9_plan {
    bool pipelined;
    std::uint64_t n, warmup;
    const char* unit;
};
inline w9_plan plan_w9(const options& o, const std::string& part) {
    const bool pipelined = part != "b";
    return {pipelined, pipelined ? o.scaled(1'000'000, 1000) : o.scaled(20'000, 100),
            pipelined ? std::uint64_t{10'000} : std::uint64_t{1'000},
            pipelined ? "M_msgs_per_s" : "us_per_round_trip"};
}

/// Runs `run(warmup)`, then times `run(n)`: M msg/s when `pipelined` (one-way messages), else
/// microseconds per round trip.
template <class Run>
double w9_figure(bool pipelined, std::uint64_t warmup, std::uint64_t n, Run&& run) {
    run(warmup);
    const auto t0 = now_ns();
    run(n);
    const auto ns = static_cast<double>(now_ns() - t0);
    return pipelined ? static_cast<double>(n) * 1e3 / ns : ns / 1e3 / static_cast<double>(n);
}

/// The server's side: says where it can be reached, on its stdout, for spawn_self().
inline void say_ready(const std::string& address) {
    std::printf("READY %s\n", address.c_str());
    std::fflush(stdout);
}

}  // namespace bench
