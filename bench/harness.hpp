#pragma once
// A small harness shared by the workload programs: command line (--scale, --reps and a few
// named extras), repetitions with median and spread, self-checks that fail loudly, and the
// one machine-readable RESULT line each program ends with.
//
// The CAF and floor programs use it too: they define MAILROOM_BENCH_WITHOUT_LIBRARY before
// including it, which leaves out the parts that need mailroom itself.

#ifndef MAILROOM_BENCH_WITHOUT_LIBRARY
#include <mailroom/mailroom.hpp>
#endif

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

inline std::int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

/// The command line: `--scale F` (size factor), `--reps N` (repetitions, median printed) and
/// the extras a program declares (`--name value`).
struct options {
    double scale = 1.0;
    int reps = 3;
    std::map<std::string, std::string> extra;

    std::string get(const std::string& name, const std::string& fallback) const {
        auto it = extra.find(name);
        return it == extra.end() ? fallback : it->second;
    }
    long get_long(const std::string& name, long fallback) const {
        auto it = extra.find(name);
        return it == extra.end() ? fallback : std::strtol(it->second.c_str(), nullptr, 10);
    }
    /// `base * scale`, at least `min`.
    std::uint64_t scaled(std::uint64_t base, std::uint64_t min = 1) const {
        auto v = static_cast<std::uint64_t>(std::llround(static_cast<double>(base) * scale));
        return std::max(v, min);
    }
};

[[noreturn]] inline void usage(const char* argv0, const std::map<std::string, std::string>& extras) {
    std::fprintf(stderr, "usage: %s [--scale F] [--reps N]", argv0);
    for (auto& [k, help] : extras) std::fprintf(stderr, " [--%s %s]", k.c_str(), help.c_str());
    std::fprintf(stderr, "\n");
    std::exit(2);
}

/// `extras` maps each accepted extra flag to a one-word description of its value.
inline options parse(int argc, char** argv, const std::map<std::string, std::string>& extras = {}) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help" || a.rfind("--", 0) != 0 || i + 1 >= argc) usage(argv[0], extras);
        std::string name = a.substr(2), value = argv[++i];
        if (name == "scale") {
            o.scale = std::strtod(value.c_str(), nullptr);
            if (!(o.scale > 0)) usage(argv[0], extras);
        } else if (name == "reps") {
            o.reps = static_cast<int>(std::strtol(value.c_str(), nullptr, 10));
            if (o.reps < 1) usage(argv[0], extras);
        } else if (extras.count(name)) {
            o.extra[name] = value;
        } else {
            usage(argv[0], extras);
        }
    }
    return o;
}

/// Prints a loud failure and exits non-zero.
[[noreturn]] inline void fail(const char* workload, const std::string& what) {
    std::fflush(stdout);
    std::fprintf(stderr, "\n*** %s CHECK FAILED: %s ***\n\n", workload, what.c_str());
    std::fflush(stderr);
    std::_Exit(1);
}

inline void check(bool ok, const char* workload, const std::string& what) {
    if (!ok) fail(workload, what);
}

#ifndef MAILROOM_BENCH_WITHOUT_LIBRARY
/// Fails unless every message sent was delivered and none was lost, ignored, cancelled or dropped.
inline void check_stats(const char* workload, const mailroom::environment_stats& s, std::uint64_t min_delivered) {
    auto u = [](std::uint64_t v) { return std::to_string(v); };
    std::string text = "sent " + u(s.messages_sent) + " delivered " + u(s.messages_delivered) + " lost " +
                       u(s.messages_lost) + " ignored " + u(s.messages_ignored) + " cancelled " +
                       u(s.messages_cancelled) + " dropped " + u(s.messages_dropped) + " exceptions " +
                       u(s.handler_exceptions);
    check(s.messages_lost == 0 && s.messages_ignored == 0 && s.messages_cancelled == 0 && s.messages_dropped == 0 &&
              s.handler_exceptions == 0,
          workload, "environment counters: " + text);
    check(s.messages_delivered >= min_delivered, workload,
          "expected at least " + u(min_delivered) + " deliveries; " + text);
}

/// Times the workers of every dispatcher of `env` parked (a diagnostic: each park costs a wake-up).
inline std::uint64_t total_parks(const mailroom::environment& env) {
    std::uint64_t n = 0;
    for (auto& d : env.dispatcher_stats_all())
        for (auto& w : d.workers) n += w.parks;
    return n;
}
#endif

/// Resident set size of this process, from /proc/self/statm.
inline std::size_t rss_bytes() {
    std::ifstream f("/proc/self/statm");
    std::size_t size = 0, resident = 0;
    f >> size >> resident;
    return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Runs `measure` in a fresh child process (fork) and returns the figure it computed there, so
/// that memory an earlier repetition freed (and the allocator kept) does not hide what this one
/// takes. Fails `workload` if the child fails (a failed check in it exits non-zero).
inline double in_child_process(const char* workload, const std::function<double()>& measure) {
    std::fflush(stdout);
    int fd[2];
    if (::pipe(fd) != 0) fail(workload, "pipe failed");
    const pid_t pid = ::fork();
    if (pid < 0) fail(workload, "fork failed");
    if (pid == 0) {
        ::close(fd[0]);
        const double v = measure();
        if (::write(fd[1], &v, sizeof v) != sizeof v) std::_Exit(3);
        std::fflush(stdout);
        std::_Exit(0);
    }
    ::close(fd[1]);
    double v = 0;
    const auto got = ::read(fd[0], &v, sizeof v);
    ::close(fd[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == sizeof v, workload,
          "the measuring child process failed (status " + std::to_string(status) + ")");
    return v;
}

struct summary {
    double median, min, max;
};

inline summary summarize(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    return {med, v.front(), v.back()};
}

/// Runs `once` `reps` times (each returns the figure of one run), printing each figure as it
/// comes, and returns the summary.
inline summary repeat(const options& o, const char* unit, const std::function<double()>& once) {
    std::vector<double> values;
    for (int r = 0; r < o.reps; ++r) {
        double v = once();
        std::printf("  rep %d: %.4g %s\n", r + 1, v, unit);
        std::fflush(stdout);
        values.push_back(v);
    }
    return summarize(values);
}

/// The last two lines: a human one, then the machine-readable one. `fields` are extra
/// `key=value` pairs (space-separated) appended to the RESULT line; `system` names the system
/// measured (mailroom, caf or floor).
inline void report(const char* workload, const std::string& human, const summary& s, const char* unit,
                   const std::string& fields = {}, const char* system = "mailroom") {
    std::printf("%s: %s: median %.4g %s (min %.4g, max %.4g)\n", workload, human.c_str(), s.median, unit, s.min, s.max);
    std::printf("RESULT workload=%s system=%s value=%.6g unit=%s%s%s\n", workload, system, s.median, unit,
                fields.empty() ? "" : " ", fields.c_str());
    std::fflush(stdout);
}

}  // namespace bench
