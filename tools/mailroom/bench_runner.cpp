// `mailroom bench`: the benchmark runner.
//
// It finds the benchmark executables (bench_wN_* for mailroom, bench_caf_wN_* for CAF,
// bench_sobjectizer_wN_* for SObjectizer, bench_asio_wN_* for Asio, bench_floor_wN_* for the
// floor), runs each workload's systems interleaved (mailroom, caf, sobjectizer, asio, floor,
// mailroom, ...) in fresh processes with
// `--reps 1`, waiting before each run for a quiet machine, and parses the RESULT line each
// program ends with:
//   RESULT workload=W1 system=mailroom value=312 unit=ns_per_round_trip [key=value ...]
// It then prints medians, min and max, the ratios to CAF, SObjectizer, Asio and the floor (>1:
// mailroom is better) and the DESIGN.md target, and writes JSON (--json) and an SVG chart (--chart).
// bench/README.md documents the options, the JSON schema and how to read the ratios.

#include "bench_runner.hpp"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mailroom::tool {
namespace {

using steady = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// The workloads and their DESIGN.md targets

struct workload_info {
    const char* id;
    const char* title;  // one line, for the table
    const char* short_title;  // for the chart's axis
    const char* unit;  // as printed by the programs
    const char* unit_text;  // for people
    bool higher_better;
    double target;  // DESIGN.md's mailroom target at scale 1; 0: none that a number can say
    const char* target_text;
    bool available;
    // The workload's number in the program names and RESULT lines ("W9"), and the part the
    // program is asked for (`--part a`, checked against the RESULT line's `part=`); nullptr: the
    // id itself, no part.
    const char* program = nullptr;
    const char* part = nullptr;
    // Peers that have no program for this part (W9c: CAF has no CURVE): shown as n/a, never run.
    const char* not_available_for = nullptr;
    // A target relative to the floor in the same run: met when the "vs floor" ratio (>1: mailroom
    // better) is at least this (W9a: 0.8; W9b: 1 / 1.2). 0: none.
    double floor_ratio_target = 0;

    const char* program_id() const noexcept { return program ? program : id; }
};

constexpr std::array<workload_info, 15> workloads{{
    {"W1", "ping-pong across two threads", "ping-pong, 2 threads", "ns_per_round_trip", "ns/round trip", false, 250,
     "<= 250", true},
    {"W2", "ping-pong of two agents on one thread", "ping-pong, 1 thread", "ns_per_round_trip", "ns/round trip", false,
     40, "<= 40", true},
    {"W3", "fan-in, 2 producers x 5M to one agent", "fan-in 2 x 5M", "M_msgs_per_s", "M msg/s", true, 30, ">= 30",
     true},
    {"W4", "fan-out, 100k msgs to 100 subscribers", "fan-out to 100", "M_deliveries_per_s", "M deliveries/s", true, 30,
     ">= 30", true},
    {"W5", "skynet, 1,111,111 agents", "skynet", "ms", "ms", false, 500, "<= 500", true},
    {"W6", "1M timers over 0..100 ms", "1M timers", "ms", "ms", false, 200, "<= 200", true},
    {"W7", "bytes per idle agent (100k agents)", "idle agent", "bytes_per_agent", "bytes/agent", false, 256, "<= 256",
     true},
    {"W8", "request/reply, named object, 2 threads", "named request", "ns_per_round_trip", "ns/round trip", false,
     400, "<= 400", true},
    // W9's three parts are three rows, each a run of the same programs with `--part`.
    {"W9a", "nodes over tcp loopback, one-way 64 B, pipelined", "nodes, one-way", "M_msgs_per_s", "M msg/s", true, 0,
     ">= 0.8 x floor", true, "W9", "a", nullptr, 0.8},
    {"W9b", "nodes over tcp loopback, request/reply", "nodes, round trip", "us_per_round_trip", "us/round trip", false,
     0, "<= 1.2 x floor", true, "W9", "b", nullptr, 1 / 1.2},
    {"W9c", "nodes over tcp loopback, one-way 64 B, CURVE", "nodes, CURVE", "M_msgs_per_s", "M msg/s", true, 1,
     ">= 1", true, "W9", "c", "caf"},
    {"W10", "event loop, 1,000 socketpairs on 2 loops", "event loop", "round_trips_per_s", "round trips/s", true, 0,
     ">= 0.9 x raw epoll", true},
    {"W11", "job queue, 1M empty jobs, completion on the session", "job queue", "ns_per_job", "ns/job", false, 0,
     "<= 2 x floor", true},
    {"W12", "mchain, 2 producers x 5M, capacity 1,024", "mchain 2 x 5M", "M_msgs_per_s", "M msg/s", true, 0,
     "> SObjectizer, >= 0.5 x floor", true},
    {"W13", "fan-in 2 x 5M, drop limit of 1,000", "fan-in, drop limit", "M_msgs_per_s_offered", "M msg/s offered", true, 0,
     "> SObjectizer, memory flat", true},
}};

// In the order they run and are shown; every one but mailroom is a peer, compared with mailroom.
constexpr std::array<const char*, 5> systems{"mailroom", "caf", "sobjectizer", "asio", "floor"};
constexpr std::array<const char*, 4> peers{"caf", "sobjectizer", "asio", "floor"};

// Workloads that --quick runs at a tenth of its scale: their full size takes seconds even at 0.1,
// and --quick checks their results, not their figures.
constexpr std::array<const char*, 2> quick_tiny{"W10", "W11"};

// ---------------------------------------------------------------------------------------------
// Options

struct options {
    std::vector<std::string> selected;  // empty: all
    std::string bench_dir;
    int reps = 3;
    double scale = 1.0;
    bool quick = false;
    std::string json_path, chart_path;
    std::vector<std::string> systems{"mailroom", "caf", "sobjectizer", "asio", "floor"};
    double quiet_idle = 0.75;  // fraction of all CPUs idle over 200 ms that counts as quiet
    double quiet_wait_s = 10;  // at most this long waiting for it, per run
    double timeout_s = 900;    // per run
    bool verbose = false;
    bool quick_tiny = false;  // --quick without --scale: the quick_tiny workloads at scale / 10
};

void print_usage(std::FILE* f) {
    std::fprintf(f,
                 "usage: mailroom bench [W1 W2 ...] [options]\n"
                 "  Runs the benchmark suite: each workload for mailroom, CAF, SObjectizer, Asio and the floor,\n"
                 "  interleaved, and prints medians, min/max, ratios (>1: mailroom better) and the DESIGN.md\n"
                 "  targets.\n"
                 "options:\n"
                 "  --bench-dir DIR     where the bench_* executables are (default: $MAILROOM_BENCH_DIR, else\n"
                 "                      <exe dir>/../../bench, <exe dir>/../bench, <exe dir>/bench, ./bench)\n"
                 "  --reps N            repetitions of each system, in fresh processes (default 3)\n"
                 "  --scale F           size factor passed to every program (default 1)\n"
                 "  --quick             --scale 0.1 (0.01 for W10, W11) --reps 1 and short quiet waits: the suite\n"
                 "                      in about a minute, its results checked, its figures not worth reading\n"
                 "  --systems LIST      comma-separated subset of mailroom,caf,sobjectizer,asio,floor\n"
                 "  --json PATH         write the results as JSON (schema: bench/README.md)\n"
                 "  --chart PATH        write an SVG chart\n"
                 "  --quiet-idle F      idle CPU fraction that counts as a quiet machine (default 0.75)\n"
                 "  --quiet-wait S      longest wait for a quiet machine before each run (default 10; 0: never wait)\n"
                 "  --timeout S         longest a single run may take (default 900)\n"
                 "  --verbose           echo every program's output\n");
}

std::optional<options> parse_options(int argc, char** argv) {
    options o;
    bool reps_set = false, scale_set = false, wait_set = false;
    for (int i = 0; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::optional<std::string> {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "mailroom bench: %s needs a value\n", a.c_str());
                return std::nullopt;
            }
            return std::string(argv[++i]);
        };
        auto number = [&](double& out, double min) {
            auto v = value();
            if (!v) return false;
            char* end = nullptr;
            out = std::strtod(v->c_str(), &end);
            if (end == v->c_str() || *end != '\0' || !(out >= min)) {
                std::fprintf(stderr, "mailroom bench: bad value '%s' for %s\n", v->c_str(), a.c_str());
                return false;
            }
            return true;
        };
        if (a == "-h" || a == "--help" || a == "help") {
            print_usage(stdout);
            std::exit(0);
        } else if (a == "--bench-dir") {
            auto v = value();
            if (!v) return std::nullopt;
            o.bench_dir = *v;
        } else if (a == "--reps") {
            double r = 0;
            if (!number(r, 1)) return std::nullopt;
            o.reps = static_cast<int>(r);
            reps_set = true;
        } else if (a == "--scale") {
            if (!number(o.scale, 1e-6)) return std::nullopt;
            scale_set = true;
        } else if (a == "--quick") {
            o.quick = true;
        } else if (a == "--json") {
            auto v = value();
            if (!v) return std::nullopt;
            o.json_path = *v;
        } else if (a == "--chart") {
            auto v = value();
            if (!v) return std::nullopt;
            o.chart_path = *v;
        } else if (a == "--systems") {
            auto v = value();
            if (!v) return std::nullopt;
            o.systems.clear();
            std::stringstream ss(*v);
            for (std::string s; std::getline(ss, s, ',');) {
                if (std::find(systems.begin(), systems.end(), s) == systems.end()) {
                    std::fprintf(stderr, "mailroom bench: unknown system '%s' (mailroom, caf, sobjectizer, asio, floor)\n",
                                 s.c_str());
                    return std::nullopt;
                }
                o.systems.push_back(s);
            }
        } else if (a == "--quiet-idle") {
            if (!number(o.quiet_idle, 0)) return std::nullopt;
        } else if (a == "--quiet-wait") {
            if (!number(o.quiet_wait_s, 0)) return std::nullopt;
            wait_set = true;
        } else if (a == "--timeout") {
            if (!number(o.timeout_s, 1)) return std::nullopt;
        } else if (a == "--verbose" || a == "-v") {
            o.verbose = true;
        } else if (a.size() >= 2 && (a[0] == 'W' || a[0] == 'w') && std::isdigit(static_cast<unsigned char>(a[1]))) {
            // "W9" picks its three parts (W9a, W9b, W9c); "W9b" picks one.
            std::string id = "W" + a.substr(1);
            bool any = false;
            for (const auto& w : workloads)
                if (id == w.id || (w.program && id == w.program)) {
                    o.selected.emplace_back(w.id);
                    any = true;
                }
            if (!any) {
                std::fprintf(stderr, "mailroom bench: unknown workload '%s' (W1..W13; W9a, W9b, W9c)\n", a.c_str());
                return std::nullopt;
            }
        } else {
            std::fprintf(stderr, "mailroom bench: unknown argument '%s'\n", a.c_str());
            print_usage(stderr);
            return std::nullopt;
        }
    }
    if (o.quick) {
        if (!scale_set) {
            o.scale = 0.1;
            o.quick_tiny = true;
        }
        if (!reps_set) o.reps = 1;
        if (!wait_set) o.quiet_wait_s = 0.6;
    }
    return o;
}

// ---------------------------------------------------------------------------------------------
// Finding the benchmark executables

struct found_programs {
    std::string dir;
    std::map<std::string, std::map<std::string, std::string>> path;  // workload -> system -> path
    std::size_t count = 0;
};

std::string exe_dir() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return ".";
    std::string p(buf, static_cast<std::size_t>(n));
    const auto slash = p.rfind('/');
    return slash == std::string::npos ? "." : p.substr(0, slash);
}

bool is_executable_file(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

// Reads `dir`: bench_w<N>_<name> (mailroom), bench_<peer>_w<N>_<name> for each peer (caf,
// sobjectizer, asio, floor).
found_programs scan(const std::string& dir) {
    found_programs f;
    f.dir = dir;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return f;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
        if (name.rfind("bench_", 0) != 0) continue;
        std::string rest = name.substr(6), system = "mailroom";
        for (const char* s : peers) {
            const std::string prefix = std::string(s) + "_";
            if (rest.rfind(prefix, 0) == 0) {
                system = s;
                rest = rest.substr(prefix.size());
            }
        }
        if (rest.size() < 3 || rest[0] != 'w' || !std::isdigit(static_cast<unsigned char>(rest[1]))) continue;
        const auto underscore = rest.find('_');
        if (underscore == std::string::npos) continue;
        const std::string id = "W" + rest.substr(1, underscore - 1);
        const std::string full = dir + "/" + name;
        if (!is_executable_file(full)) continue;
        if (f.path[id].emplace(system, full).second) ++f.count;
    }
    return f;
}

std::optional<found_programs> find_programs(const options& o) {
    std::vector<std::string> candidates;
    if (!o.bench_dir.empty()) {
        candidates.push_back(o.bench_dir);
    } else {
        if (const char* env = std::getenv("MAILROOM_BENCH_DIR")) candidates.emplace_back(env);
        const std::string here = exe_dir();
        // The build tree puts the tool in <build>/tools/mailroom/ and the programs in <build>/bench/.
        candidates.push_back(here + "/../../bench");
        candidates.push_back(here + "/../bench");
        candidates.push_back(here + "/bench");
        candidates.push_back(here);
        candidates.emplace_back("bench");
        candidates.emplace_back("build/bench");
    }
    for (const auto& c : candidates) {
        found_programs f = scan(c);
        if (f.count > 0) {
            char real[4096];
            if (::realpath(c.c_str(), real)) f.dir = real;
            return f;
        }
    }
    std::fprintf(stderr, "mailroom bench: no benchmark executables (bench_w*) found; looked in:\n");
    for (const auto& c : candidates) std::fprintf(stderr, "  %s\n", c.c_str());
    std::fprintf(stderr, "build them (cmake --build <build dir>, MAILROOM_BUILD_BENCH=ON) or pass --bench-dir DIR\n");
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// A quiet machine

struct cpu_times {
    unsigned long long idle = 0, total = 0;
};

cpu_times read_cpu_times() {
    std::ifstream f("/proc/stat");
    std::string cpu;
    unsigned long long v[10] = {};
    f >> cpu;
    for (auto& x : v) f >> x;
    cpu_times t;
    for (auto x : v) t.total += x;
    t.total -= v[8] + v[9];  // guest time is already counted in user and nice
    t.idle = v[3] + v[4];    // idle + iowait
    return t;
}

double read_loadavg() {
    std::ifstream f("/proc/loadavg");
    double l = -1;
    f >> l;
    return l;
}

struct quiet_state {
    bool quiet = true;
    double idle = 1;      // fraction of all CPUs idle over the last 200 ms sample
    double loadavg = -1;  // 1-minute load average when the run started
    double waited_s = 0;
};

quiet_state wait_for_quiet(const options& o, const std::function<void(double)>& tick) {
    quiet_state q;
    const auto start = steady::now();
    for (;;) {
        const cpu_times a = read_cpu_times();
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const cpu_times b = read_cpu_times();
        const auto total = b.total - a.total;
        q.idle = total ? static_cast<double>(b.idle - a.idle) / static_cast<double>(total) : 1.0;
        q.waited_s = std::chrono::duration<double>(steady::now() - start).count();
        q.loadavg = read_loadavg();
        q.quiet = q.idle >= o.quiet_idle;
        if (q.quiet || q.waited_s >= o.quiet_wait_s) return q;
        tick(q.idle);
    }
}

// ---------------------------------------------------------------------------------------------
// Running one program

struct run_record {
    std::string workload, system;
    std::string program, part;  // the RESULT line's workload, and its part ("" for none)
    int rep = 0;
    bool ok = false;
    std::string failure;  // why not ok
    double value = 0;
    std::string unit;
    std::map<std::string, double> extras;
    quiet_state quiet;
    double seconds = 0;
};

// Parses "RESULT workload=W1 system=mailroom value=312 unit=ns_per_round_trip k=v ...".
bool parse_result(const std::string& line, run_record& r) {
    if (line.rfind("RESULT ", 0) != 0) return false;
    std::istringstream ss(line.substr(7));
    std::map<std::string, std::string> kv;
    for (std::string tok; ss >> tok;) {
        const auto eq = tok.find('=');
        if (eq != std::string::npos) kv[tok.substr(0, eq)] = tok.substr(eq + 1);
    }
    if (!kv.count("value") || kv["workload"] != r.program || kv["system"] != r.system) return false;
    if (!r.part.empty() && kv["part"] != r.part) return false;
    r.value = std::strtod(kv["value"].c_str(), nullptr);
    r.unit = kv["unit"];
    for (auto& [k, v] : kv) {
        if (k == "workload" || k == "system" || k == "value" || k == "unit") continue;
        char* end = nullptr;
        const double d = std::strtod(v.c_str(), &end);
        if (end != v.c_str()) r.extras[k] = d;
    }
    return true;
}

// Runs `path --scale F --reps 1` in its own process group, collecting its output (stdout and
// stderr together); `tick` is called about every 200 ms while it runs.
void run_program(const options& o, const std::string& path, run_record& r, const std::function<void()>& tick) {
    int fd[2];
    if (::pipe(fd) != 0) {
        r.failure = "pipe failed";
        return;
    }
    char scale[32];
    const bool tiny = o.quick_tiny && std::find_if(quick_tiny.begin(), quick_tiny.end(),
                                                   [&](const char* id) { return r.workload == id; }) != quick_tiny.end();
    std::snprintf(scale, sizeof scale, "%g", tiny ? o.scale / 10 : o.scale);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        r.failure = "fork failed";
        ::close(fd[0]);
        ::close(fd[1]);
        return;
    }
    if (pid == 0) {
        ::setpgid(0, 0);
        ::dup2(fd[1], 1);
        ::dup2(fd[1], 2);
        ::close(fd[0]);
        ::close(fd[1]);
        const char* args[] = {path.c_str(), "--scale", scale, "--reps", "1", nullptr, nullptr, nullptr};
        if (!r.part.empty()) {
            args[5] = "--part";
            args[6] = r.part.c_str();
        }
        ::execv(path.c_str(), const_cast<char* const*>(args));
        std::fprintf(stderr, "exec %s: %s\n", path.c_str(), std::strerror(errno));
        std::_Exit(127);
    }
    ::setpgid(pid, pid);
    ::close(fd[1]);
    const auto start = steady::now();
    std::string out;
    bool timed_out = false;
    for (;;) {
        pollfd p{fd[0], POLLIN, 0};
        const int n = ::poll(&p, 1, 200);
        if (n > 0) {
            char buf[4096];
            const ssize_t got = ::read(fd[0], buf, sizeof buf);
            if (got <= 0) break;
            out.append(buf, static_cast<std::size_t>(got));
            if (o.verbose) std::fwrite(buf, 1, static_cast<std::size_t>(got), stderr);
        }
        tick();
        if (std::chrono::duration<double>(steady::now() - start).count() > o.timeout_s) {
            ::kill(-pid, SIGKILL);  // the process group of the program we started
            timed_out = true;
            break;
        }
    }
    ::close(fd[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.seconds = std::chrono::duration<double>(steady::now() - start).count();

    bool have_result = false;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);)
        if (parse_result(line, r)) have_result = true;
    auto tail = [&] {
        // The last lines of its output, where a failing check says why.
        std::vector<std::string> ls;
        std::istringstream in(out);
        for (std::string l; std::getline(in, l);)
            if (!l.empty()) ls.push_back(l);
        std::string t;
        for (std::size_t i = ls.size() > 6 ? ls.size() - 6 : 0; i < ls.size(); ++i) t += "\n      | " + ls[i];
        return t;
    };
    if (timed_out) {
        r.failure = "timed out after " + std::to_string(static_cast<int>(o.timeout_s)) + " s" + tail();
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        r.failure = (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                         : "exit code " + std::to_string(WEXITSTATUS(status))) +
                    tail();
    } else if (!have_result) {
        r.failure = "no RESULT line" + tail();
    } else {
        r.ok = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Progress on stderr

class progress {
public:
    progress(std::size_t total) : total_(total), tty_(::isatty(2)), start_(steady::now()) {}

    void begin(const std::string& what) {
        what_ = what;
        status_.clear();
        draw();
    }
    void status(const std::string& s) {
        status_ = s;
        draw();
    }
    void tick() { draw(); }
    // A finished run: one line above the bar.
    void done(const std::string& line) {
        ++done_;
        if (tty_) std::fprintf(stderr, "\r\033[K");
        std::fprintf(stderr, "%s\n", line.c_str());
        draw();
    }
    void finish() {
        if (tty_) std::fprintf(stderr, "\r\033[K");
        std::fflush(stderr);
    }

private:
    void draw() {
        if (!tty_) return;
        const double elapsed = std::chrono::duration<double>(steady::now() - start_).count();
        constexpr int width = 30;
        const int filled = total_ ? static_cast<int>(width * done_ / total_) : width;
        std::string bar(static_cast<std::size_t>(filled), '#');
        bar.resize(width, '.');
        std::fprintf(stderr, "\r\033[K[%s] %zu/%zu  %s%s%s  %d:%02d", bar.c_str(), done_, total_, what_.c_str(),
                     status_.empty() ? "" : "  ", status_.c_str(), static_cast<int>(elapsed) / 60,
                     static_cast<int>(elapsed) % 60);
        std::fflush(stderr);
    }

    std::size_t total_, done_ = 0;
    bool tty_;
    steady::time_point start_;
    std::string what_, status_;
};

// ---------------------------------------------------------------------------------------------
// Summaries

struct system_summary {
    bool present = false;  // a program exists
    std::vector<double> values;
    double median = 0, min = 0, max = 0;
    std::string unit;
    std::map<std::string, double> extras;  // medians
    int failures = 0, busy_runs = 0;
};

struct workload_summary {
    const workload_info* info = nullptr;
    bool selected = false, runnable = false;
    std::map<std::string, system_summary> sys;
    std::map<std::string, double> vs;  // peer -> mailroom's ratio to it (>1: mailroom better); absent: no figure
    double target = 0;                       // at this scale; 0: none
    bool target_scaled = false;
    std::optional<bool> target_met;
    bool mailroom_not_built = false;  // mailroom was asked for but its program is missing
};

double median_of(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// >1 when `mine` is better than `theirs`.
std::optional<double> ratio(const workload_info& w, const system_summary& mine, const system_summary& theirs) {
    if (mine.values.empty() || theirs.values.empty() || mine.median <= 0 || theirs.median <= 0) return std::nullopt;
    return w.higher_better ? mine.median / theirs.median : theirs.median / mine.median;
}

std::string fmt_value(double v) {
    char buf[64];
    const double a = std::fabs(v);
    if (a >= 10000) {
        // Thousands separators for big figures.
        std::snprintf(buf, sizeof buf, "%.0f", v);
        std::string s = buf, out;
        int n = 0;
        for (auto it = s.rbegin(); it != s.rend(); ++it) {
            if (n && n % 3 == 0 && std::isdigit(static_cast<unsigned char>(*it))) out.insert(out.begin(), ',');
            out.insert(out.begin(), *it);
            ++n;
        }
        return out;
    }
    if (a >= 100) std::snprintf(buf, sizeof buf, "%.0f", v);
    else if (a >= 10) std::snprintf(buf, sizeof buf, "%.1f", v);
    else if (a >= 1) std::snprintf(buf, sizeof buf, "%.2f", v);
    else std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

std::string fmt_ratio(const std::optional<double>& r) {
    if (!r) return "-";
    char buf[32];
    if (*r >= 100) std::snprintf(buf, sizeof buf, "%.0fx", *r);
    else if (*r >= 10) std::snprintf(buf, sizeof buf, "%.1fx", *r);
    else std::snprintf(buf, sizeof buf, "%.2fx", *r);
    return buf;
}

std::string pad(const std::string& s, std::size_t w) { return s.size() >= w ? s : s + std::string(w - s.size(), ' '); }
std::string lpad(const std::string& s, std::size_t w) { return s.size() >= w ? s : std::string(w - s.size(), ' ') + s; }

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += c;
        else if (c == '\n') o += "\\n";
        else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
        else o += c;
    }
    return o;
}

std::string xml_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '<') o += "&lt;";
        else if (c == '>') o += "&gt;";
        else if (c == '&') o += "&amp;";
        else if (c == '"') o += "&quot;";
        else o += c;
    }
    return o;
}

std::string num(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

std::string now_text() {
    std::time_t t = std::time(nullptr);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&t));
    return buf;
}

std::string host_name() {
    char buf[256] = "unknown";
    ::gethostname(buf, sizeof buf - 1);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Output: table, JSON, SVG

struct run_context {
    const options& o;
    std::string bench_dir, started;
    std::vector<workload_summary> results;
    std::vector<run_record> runs;
    int failures = 0, busy_runs = 0, total_runs = 0;
};

void print_table(const run_context& c) {
    std::printf("\nmailroom bench: %d rep%s per system (fresh process each, systems interleaved), scale %g%s, %u CPUs\n",
                c.o.reps, c.o.reps == 1 ? "" : "s", c.o.scale, c.o.quick_tiny ? " (W10, W11: a tenth of it)" : "",
                std::thread::hardware_concurrency());
    std::printf("programs: %s\n", c.bench_dir.c_str());
    std::printf("values: median (min..max). Ratios vs CAF, vs SObjectizer (sobj), vs Asio and vs the floor: >1 means\n"
                "mailroom is better (faster, more throughput or fewer bytes); the floor is the best possible,\n"
                "so vs floor is <= 1.\n\n");
    // The cells first, then each column as wide as its widest cell: a missing peer or a long
    // min..max never pushes the columns out of line.
    struct row {
        std::vector<std::string> cells;  // empty: a workload that is not available yet
        std::string title, note;         // note: the line under the row
    };
    std::vector<std::string> header{"workload"};
    for (const char* sname : systems) header.emplace_back(sname);
    for (const char* peer : peers)
        header.push_back(std::string("vs ") + (std::string(peer) == "sobjectizer" ? "sobj" : peer));
    header.emplace_back("target");
    header.emplace_back("met");
    const std::size_t first_ratio = 1 + systems.size(), first_after_ratios = first_ratio + peers.size();
    std::vector<row> rows;
    for (const auto& r : c.results) {
        const auto& w = *r.info;
        if (!r.selected) continue;
        row out;
        out.title = std::string(w.id) + " " + w.title;
        if (!w.available) {
            out.note = std::string("not available yet (target ") + w.target_text + " " + w.unit_text + ")";
            rows.push_back(out);
            continue;
        }
        auto cell = [&](const char* s) -> std::string {
            auto it = r.sys.find(s);
            if (it == r.sys.end() || !it->second.present)
                return std::string(s) == "mailroom" && r.mailroom_not_built ? "not built" : "n/a";
            const auto& ss = it->second;
            if (ss.values.empty()) return ss.failures ? "FAILED" : "-";
            std::string t = fmt_value(ss.median);
            if (ss.values.size() > 1) t += " (" + fmt_value(ss.min) + ".." + fmt_value(ss.max) + ")";
            if (ss.failures) t += " !";
            if (ss.busy_runs) t += " *";
            return t;
        };
        std::string target = w.target_text;
        if (r.target_scaled) target = (w.higher_better ? ">= " : "<= ") + fmt_value(r.target) + "~";
        out.cells.push_back(out.title);
        for (const char* sname : systems) out.cells.push_back(cell(sname));
        for (const char* peer : peers) {
            auto v = r.vs.find(peer);
            out.cells.push_back(fmt_ratio(v == r.vs.end() ? std::nullopt : std::optional<double>(v->second)));
        }
        out.cells.push_back(target);
        out.cells.push_back(!r.target_met ? "-" : *r.target_met ? "yes" : "no");
        out.note = std::string(w.unit_text) + ", " + (w.higher_better ? "higher" : "lower") + " is better";
        if (w.not_available_for) out.note += std::string(" (") + w.not_available_for + ": not available for this part)";
        rows.push_back(out);
    }
    std::vector<std::size_t> width(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
    for (const auto& rw : rows)
        for (std::size_t i = 0; i < rw.cells.size(); ++i) width[i] = std::max(width[i], rw.cells[i].size());
    auto line = [&](const std::vector<std::string>& cells) {
        std::string t;
        for (std::size_t i = 0; i < cells.size(); ++i) {
            const bool ratio_col = i >= first_ratio && i < first_after_ratios;
            t += (i ? (i == first_after_ratios ? "   " : "  ") : "");
            t += ratio_col ? lpad(cells[i], width[i]) : i + 1 == cells.size() ? cells[i] : pad(cells[i], width[i]);
        }
        std::printf("%s\n", t.c_str());
        return t.size();
    };
    const std::size_t total = line(header);
    std::printf("%s\n", std::string(total, '-').c_str());
    for (const auto& rw : rows) {
        if (rw.cells.empty()) {
            std::printf("%s  %s\n", pad(rw.title, width[0]).c_str(), rw.note.c_str());
            continue;
        }
        line(rw.cells);
        std::printf("   %s\n", rw.note.c_str());
    }

    // Allocations and CPU for the workloads whose programs print them.
    bool any = false;
    for (const auto& r : c.results)
        for (const auto& [name, s] : r.sys)
            if (s.extras.count("allocs_per_msg")) any = true;
    if (any) {
        std::printf("\nheap allocations per message and CPU time in the timed window (medians):\n");
        std::printf("%s %s %s %s %s %s\n", pad("workload", 8).c_str(), pad("system", 11).c_str(),
                    lpad("allocs/msg", 11).c_str(), lpad("cpu s", 9).c_str(), lpad("wall s", 9).c_str(),
                    lpad("cores busy", 11).c_str());
        for (const auto& r : c.results)
            for (const char* sname : systems) {
                auto it = r.sys.find(sname);
                if (it == r.sys.end() || !it->second.extras.count("allocs_per_msg")) continue;
                const auto& e = it->second.extras;
                const double cpu = e.count("cpu_s") ? e.at("cpu_s") : 0, wall = e.count("wall_s") ? e.at("wall_s") : 0;
                char buf[256];
                std::snprintf(buf, sizeof buf, "%s %s %11.3f %9.3f %9.3f %11.2f", pad(r.info->id, 8).c_str(),
                              pad(sname, 11).c_str(), e.at("allocs_per_msg"), cpu, wall, wall > 0 ? cpu / wall : 0.0);
                std::printf("%s\n", buf);
            }
    }

    std::printf("\n");
    if (c.results.end() != std::find_if(c.results.begin(), c.results.end(), [](auto& r) { return r.selected && r.target_scaled; }))
        std::printf("~ target scaled from DESIGN.md's scale-1 figure to this --scale (W5: by the number of agents)\n");
    if (c.busy_runs)
        std::printf("* %d of %d runs started on a busy machine (less than %.0f%% CPU idle after waiting %.1f s): "
                    "their figures are noisier\n",
                    c.busy_runs, c.total_runs, c.o.quiet_idle * 100, c.o.quiet_wait_s);
    if (c.failures) std::printf("! %d run%s FAILED %s own check (see above)\n", c.failures, c.failures == 1 ? "" : "s", c.failures == 1 ? "its" : "their");
    std::printf("targets are DESIGN.md's (2-core machine, quiet, medians of 3): a slow figure is reported, never a failure\n");
}

void write_json(const run_context& c, const std::string& path) {
    std::ofstream f(path);
    if (!f) {
        std::fprintf(stderr, "mailroom bench: cannot write %s\n", path.c_str());
        return;
    }
    f << "{\n  \"schema\": \"mailroom-bench/1\",\n";
    f << "  \"started\": \"" << c.started << "\",\n  \"host\": \"" << json_escape(host_name()) << "\",\n";
    f << "  \"cpus\": " << std::thread::hardware_concurrency() << ",\n";
    f << "  \"bench_dir\": \"" << json_escape(c.bench_dir) << "\",\n";
    f << "  \"scale\": " << num(c.o.scale) << ",\n  \"reps\": " << c.o.reps << ",\n";
    f << "  \"quick\": " << (c.o.quick ? "true" : "false") << ",\n";
    f << "  \"quiet\": {\"idle_threshold\": " << num(c.o.quiet_idle) << ", \"max_wait_s\": " << num(c.o.quiet_wait_s)
      << ", \"busy_runs\": " << c.busy_runs << ", \"total_runs\": " << c.total_runs << "},\n";
    f << "  \"failed\": " << (c.failures ? "true" : "false") << ",\n";
    f << "  \"workloads\": [";
    bool first_w = true;
    for (const auto& r : c.results) {
        if (!r.selected) continue;
        const auto& w = *r.info;
        f << (first_w ? "\n" : ",\n");
        first_w = false;
        f << "    {\"id\": \"" << w.id << "\", \"title\": \"" << json_escape(w.title) << "\", \"unit\": \"" << w.unit
          << "\", \"better\": \"" << (w.higher_better ? "higher" : "lower") << "\", \"available\": "
          << (w.available ? "true" : "false") << ",\n";
        f << "     \"target\": {\"text\": \"" << json_escape(w.target_text) << "\", \"value\": "
          << (r.target > 0 ? num(r.target) : "null") << ", \"scaled\": " << (r.target_scaled ? "true" : "false")
          << ", \"met\": " << (!r.target_met ? "null" : *r.target_met ? "true" : "false") << "},\n";
        f << "     \"ratios\": {";
        for (std::size_t i = 0; i < peers.size(); ++i) {
            auto v = r.vs.find(peers[i]);
            f << (i ? ", " : "") << "\"mailroom_vs_" << peers[i] << "\": " << (v != r.vs.end() ? num(v->second) : "null");
        }
        f << "},\n";
        f << "     \"systems\": {";
        bool first_s = true;
        for (const char* sname : systems) {
            auto it = r.sys.find(sname);
            if (it == r.sys.end() || !it->second.present) continue;
            const auto& s = it->second;
            f << (first_s ? "\n" : ",\n");
            first_s = false;
            f << "       \"" << sname << "\": {";
            if (s.values.empty()) {
                f << "\"median\": null, \"min\": null, \"max\": null";
            } else {
                f << "\"median\": " << num(s.median) << ", \"min\": " << num(s.min) << ", \"max\": " << num(s.max);
            }
            f << ", \"values\": [";
            for (std::size_t i = 0; i < s.values.size(); ++i) f << (i ? ", " : "") << num(s.values[i]);
            f << "], \"extras\": {";
            bool first_e = true;
            for (auto& [k, v] : s.extras) {
                f << (first_e ? "" : ", ") << "\"" << json_escape(k) << "\": " << num(v);
                first_e = false;
            }
            f << "}, \"failures\": " << s.failures << ", \"busy_runs\": " << s.busy_runs << "}";
        }
        f << (first_s ? "}" : "\n     }") << "}";
    }
    f << "\n  ],\n  \"runs\": [";
    for (std::size_t i = 0; i < c.runs.size(); ++i) {
        const auto& r = c.runs[i];
        f << (i ? ",\n" : "\n") << "    {\"workload\": \"" << r.workload << "\", \"system\": \"" << r.system
          << "\", \"rep\": " << r.rep << ", \"ok\": " << (r.ok ? "true" : "false")
          << ", \"value\": " << (r.ok ? num(r.value) : "null") << ", \"unit\": \"" << json_escape(r.unit)
          << "\", \"extras\": {";
        bool first_e = true;
        for (auto& [k, v] : r.extras) {
            f << (first_e ? "" : ", ") << "\"" << json_escape(k) << "\": " << num(v);
            first_e = false;
        }
        f << "}, \"seconds\": " << num(r.seconds) << ", \"quiet\": " << (r.quiet.quiet ? "true" : "false")
          << ", \"idle\": " << num(r.quiet.idle) << ", \"loadavg\": " << num(r.quiet.loadavg)
          << ", \"waited_s\": " << num(r.quiet.waited_s);
        if (!r.ok) f << ", \"failure\": \"" << json_escape(r.failure) << "\"";
        f << "}";
    }
    f << "\n  ]\n}\n";
    std::fprintf(stderr, "wrote %s\n", path.c_str());
}

// Grouped bars per workload: each system's figure relative to the DESIGN.md target (so that
// every workload, whatever its unit, reads the same way: above 1 beats the target), on a log
// scale, with min..max whiskers and the raw figure written on each bar.
void write_chart(const run_context& c, const std::string& path) {
    struct bar {
        const char* system;
        double rel, rel_lo, rel_hi, value;
        bool not_built = false;  // mailroom's program is missing: a label in its place, no bar
    };
    struct group {
        const workload_summary* r;
        std::vector<bar> bars;
    };
    std::vector<group> groups;
    double lo = 1, hi = 1;
    for (const auto& r : c.results) {
        if (!r.selected || !r.info->available || r.target <= 0) continue;
        group g{&r, {}};
        for (const char* sname : systems) {
            if (std::string(sname) == "mailroom" && r.mailroom_not_built) {
                g.bars.push_back(bar{sname, 1, 1, 1, 0, true});
                continue;
            }
            auto it = r.sys.find(sname);
            if (it == r.sys.end() || it->second.values.empty()) continue;
            const auto& s = it->second;
            auto rel = [&](double v) { return r.info->higher_better ? v / r.target : r.target / std::max(v, 1e-12); };
            bar b{sname, rel(s.median), std::min(rel(s.min), rel(s.max)), std::max(rel(s.min), rel(s.max)), s.median};
            lo = std::min(lo, b.rel_lo);
            hi = std::max(hi, b.rel_hi);
            g.bars.push_back(b);
        }
        groups.push_back(g);
    }
    const double dlo = std::floor(std::log10(lo)), dhi = std::ceil(std::log10(hi) + 0.15);
    const int W = 1180, H = 600, left = 80, right = 30, top = 96, bottom = 110;
    const double plot_w = W - left - right, plot_h = H - top - bottom;
    auto y_of = [&](double rel) { return top + plot_h * (dhi - std::log10(rel)) / (dhi - dlo); };
    const std::map<std::string, std::string> colour{
        {"mailroom", "#2a7ab9"}, {"caf", "#e08a2c"}, {"sobjectizer", "#3a9a4a"}, {"asio", "#8e5ab5"},
        {"floor", "#7f7f7f"}};

    std::ostringstream s;
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
      << " " << H << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
    s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    s << "<text x=\"" << left << "\" y=\"30\" font-size=\"20\" font-weight=\"bold\">mailroom bench: mailroom, CAF, "
         "SObjectizer, Asio and the floor against the DESIGN.md targets</text>\n";
    char sub[256];
    std::snprintf(sub, sizeof sub, "%s, %s, %u CPUs, scale %g, %d rep%s; medians, whiskers min..max", c.started.c_str(),
                  host_name().c_str(), std::thread::hardware_concurrency(), c.o.scale, c.o.reps, c.o.reps == 1 ? "" : "s");
    s << "<text x=\"" << left << "\" y=\"52\" font-size=\"13\" fill=\"#444\">" << xml_escape(sub) << "</text>\n";
    s << "<text x=\"" << left << "\" y=\"70\" font-size=\"13\" fill=\"#444\">Bar height: how many times better than "
         "the target (log scale). Above the red line the target is met. Labels: the measured figure.</text>\n";
    // Legend: the systems, then the target line (labelled here, where no bar can cover it).
    int lx = W - right - 105 * static_cast<int>(systems.size()) - 75;
    for (const char* sname : systems) {
        s << "<rect x=\"" << lx << "\" y=\"78\" width=\"14\" height=\"14\" fill=\"" << colour.at(sname) << "\"/>";
        s << "<text x=\"" << lx + 19 << "\" y=\"90\" font-size=\"13\">" << sname << "</text>\n";
        lx += 105;
    }
    s << "<line x1=\"" << lx << "\" x2=\"" << lx + 24 << "\" y1=\"85\" y2=\"85\" stroke=\"#d62728\" stroke-width=\"2\" "
         "stroke-dasharray=\"6,4\"/>";
    s << "<text x=\"" << lx + 29 << "\" y=\"90\" font-size=\"13\">target</text>\n";
    // Grid and axis.
    for (double d = dlo; d <= dhi + 1e-9; d += 1) {
        const double y = y_of(std::pow(10, d));
        s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << y << "\" y2=\"" << y
          << "\" stroke=\"#ddd\"/>";
        char lbl[32];
        if (d >= 0) std::snprintf(lbl, sizeof lbl, "%gx", std::pow(10, d));
        else std::snprintf(lbl, sizeof lbl, "1/%gx", std::pow(10, -d));
        s << "<text x=\"" << left - 8 << "\" y=\"" << y + 4 << "\" font-size=\"12\" text-anchor=\"end\" fill=\"#555\">"
          << lbl << "</text>\n";
    }
    const double y1 = y_of(1);
    s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << y1 << "\" y2=\"" << y1
      << "\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/>\n";
    s << "<text transform=\"translate(18," << top + plot_h / 2
      << ") rotate(-90)\" font-size=\"13\" text-anchor=\"middle\" fill=\"#444\">times better than target</text>\n";

    const double gw = groups.empty() ? plot_w : plot_w / static_cast<double>(groups.size());
    const double base = top + plot_h;
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
        const auto& g = groups[gi];
        const auto& w = *g.r->info;
        const double gx = left + gw * static_cast<double>(gi);
        const double bw = std::min(40.0, (gw - 24) / static_cast<double>(systems.size()));
        const double start = gx + (gw - bw * static_cast<double>(g.bars.size())) / 2;
        for (std::size_t bi = 0; bi < g.bars.size(); ++bi) {
            const auto& b = g.bars[bi];
            const double x = start + bw * static_cast<double>(bi);
            if (b.not_built) {
                s << "<text transform=\"translate(" << x + bw / 2 + 4 << "," << base - 6
                  << ") rotate(-90)\" font-size=\"11\" fill=\"" << colour.at(b.system) << "\">" << b.system
                  << " not built</text>\n";
                continue;
            }
            const double y = y_of(b.rel);
            s << "<rect x=\"" << x + 2 << "\" y=\"" << y << "\" width=\"" << bw - 4 << "\" height=\"" << base - y
              << "\" fill=\"" << colour.at(b.system) << "\"><title>" << w.id << " " << b.system << ": "
              << fmt_value(b.value) << " " << w.unit_text << "</title></rect>\n";
            if (b.rel_hi > b.rel_lo * 1.001) {
                const double cx = x + bw / 2;
                s << "<line x1=\"" << cx << "\" x2=\"" << cx << "\" y1=\"" << y_of(b.rel_hi) << "\" y2=\""
                  << y_of(b.rel_lo) << "\" stroke=\"#222\"/>";
                s << "<line x1=\"" << cx - 4 << "\" x2=\"" << cx + 4 << "\" y1=\"" << y_of(b.rel_hi) << "\" y2=\""
                  << y_of(b.rel_hi) << "\" stroke=\"#222\"/>";
                s << "<line x1=\"" << cx - 4 << "\" x2=\"" << cx + 4 << "\" y1=\"" << y_of(b.rel_lo) << "\" y2=\""
                  << y_of(b.rel_lo) << "\" stroke=\"#222\"/>\n";
            }
            // The raw figure, written upwards above the bar.
            const double ty = std::min(y, y_of(b.rel_hi)) - 6;
            s << "<text transform=\"translate(" << x + bw / 2 + 4 << "," << ty
              << ") rotate(-90)\" font-size=\"11\" fill=\"#222\">" << xml_escape(fmt_value(b.value)) << "</text>\n";
        }
        s << "<text x=\"" << gx + gw / 2 << "\" y=\"" << base + 22 << "\" font-size=\"14\" font-weight=\"bold\" "
             "text-anchor=\"middle\">"
          << w.id << "</text>\n";
        s << "<text x=\"" << gx + gw / 2 << "\" y=\"" << base + 40 << "\" font-size=\"12\" text-anchor=\"middle\">"
          << xml_escape(w.short_title) << "</text>\n";
        s << "<text x=\"" << gx + gw / 2 << "\" y=\"" << base + 56
          << "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">" << xml_escape(w.unit_text) << "</text>\n";
        std::string t = "target " + (g.r->target_scaled ? std::string(w.higher_better ? ">= " : "<= ") + fmt_value(g.r->target)
                                                        : std::string(w.target_text));
        s << "<text x=\"" << gx + gw / 2 << "\" y=\"" << base + 72
          << "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#d62728\">" << xml_escape(t) << "</text>\n";
    }
    s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << base << "\" y2=\"" << base
      << "\" stroke=\"#444\"/>\n";
    // Workloads that are not on the chart, and mailroom programs that were not built.
    std::string missing, not_built;
    for (const auto& r : c.results) {
        if (r.selected && !r.info->available) missing += std::string(missing.empty() ? "" : ", ") + r.info->id;
        else if (r.selected && r.mailroom_not_built) not_built += std::string(not_built.empty() ? "" : ", ") + r.info->id;
    }
    std::string footer;
    if (!not_built.empty()) footer += "mailroom not built: " + not_built + ". ";
    if (!missing.empty()) footer += "Not available yet: " + missing + ".";
    if (!footer.empty())
        s << "<text x=\"" << left << "\" y=\"" << H - 14 << "\" font-size=\"12\" fill=\"#555\">"
          << xml_escape(footer) << "</text>\n";
    s << "</svg>\n";
    std::ofstream f(path);
    if (!f) {
        std::fprintf(stderr, "mailroom bench: cannot write %s\n", path.c_str());
        return;
    }
    f << s.str();
    std::fprintf(stderr, "wrote %s\n", path.c_str());
}

}  // namespace

int run_bench(int argc, char** argv) {
    auto parsed = parse_options(argc, argv);
    if (!parsed) return 2;
    const options& o = *parsed;
    auto found = find_programs(o);
    if (!found) return 2;

    run_context c{o, found->dir, now_text(), {}, {}, 0, 0, 0};
    std::size_t planned = 0;
    for (const auto& w : workloads) {
        workload_summary r;
        r.info = &w;
        r.selected = o.selected.empty() || std::find(o.selected.begin(), o.selected.end(), w.id) != o.selected.end();
        auto pit = found->path.find(w.program_id());
        for (const auto& sname : o.systems) {
            if (w.not_available_for && sname == w.not_available_for) continue;
            if (pit != found->path.end() && pit->second.count(sname)) {
                r.sys[sname].present = true;
                if (r.selected && w.available) planned += static_cast<std::size_t>(o.reps);
            } else if (sname == "mailroom") {
                r.mailroom_not_built = true;
            }
        }
        // A workload that is not available yet is listed but never run, even if a program exists.
        r.runnable = r.selected && w.available && !r.sys.empty();
        if (r.selected && w.available && r.sys.empty())
            std::fprintf(stderr, "mailroom bench: %s: no program found in %s\n", w.id, found->dir.c_str());
        else if (r.selected && w.available && r.mailroom_not_built)
            // Not a failure: the others still run, and mailroom's cell says "not built".
            std::fprintf(stderr, "mailroom bench: %s: no mailroom program (bench_w%s_*) in %s; running the others\n",
                         w.id, w.program_id() + 1, found->dir.c_str());
        r.target = w.target;
        if (w.target > 0 && o.scale != 1.0 && std::string(w.id) == "W5") {
            // skynet's time grows with the agent count: 10^depth leaves, depth = 6 + round(log10 scale).
            const double depth = std::max(1.0, std::round(6 + std::log10(o.scale)));
            r.target = w.target * std::pow(10.0, depth - 6);
            r.target_scaled = true;
        }
        c.results.push_back(r);
    }

    std::fprintf(stderr, "mailroom bench: %zu runs from %s (scale %g, %d rep%s, quiet = %.0f%% CPU idle, wait <= %gs)\n",
                 planned, found->dir.c_str(), o.scale, o.reps, o.reps == 1 ? "" : "s", o.quiet_idle * 100,
                 o.quiet_wait_s);
    progress bar(planned);
    for (auto& r : c.results) {
        if (!r.runnable) continue;
        for (int rep = 1; rep <= o.reps; ++rep) {
            for (const char* sname : systems) {
                auto sit = r.sys.find(sname);
                if (sit == r.sys.end() || !sit->second.present) continue;
                run_record rec;
                rec.workload = r.info->id;
                rec.program = r.info->program_id();
                rec.part = r.info->part ? r.info->part : "";
                rec.system = sname;
                rec.rep = rep;
                char what[96];
                std::snprintf(what, sizeof what, "%s %-11s rep %d/%d", r.info->id, sname, rep, o.reps);
                bar.begin(what);
                if (o.quiet_wait_s > 0) {
                    rec.quiet = wait_for_quiet(o, [&](double idle) {
                        char st[64];
                        std::snprintf(st, sizeof st, "waiting for a quiet machine (%.0f%% idle)", idle * 100);
                        bar.status(st);
                    });
                } else {
                    rec.quiet.loadavg = read_loadavg();
                }
                bar.status("running");
                run_program(o, found->path[r.info->program_id()][sname], rec, [&] { bar.tick(); });
                ++c.total_runs;
                auto& s = sit->second;
                if (!rec.quiet.quiet) {
                    ++s.busy_runs;
                    ++c.busy_runs;
                }
                char line[512];
                if (rec.ok) {
                    s.values.push_back(rec.value);
                    s.unit = rec.unit;
                    std::snprintf(line, sizeof line, "  %s %-11s rep %d: %s %s%s", r.info->id, sname, rep,
                                  fmt_value(rec.value).c_str(), rec.unit.c_str(),
                                  rec.quiet.quiet ? "" : "  (machine busy)");
                } else {
                    ++s.failures;
                    ++c.failures;
                    std::snprintf(line, sizeof line, "  %s %-11s rep %d: FAILED: ", r.info->id, sname, rep);
                }
                bar.done(std::string(line) + (rec.ok ? "" : rec.failure));
                c.runs.push_back(std::move(rec));
            }
        }
    }
    bar.finish();

    // Summaries.
    for (auto& r : c.results) {
        for (auto& [sname, s] : r.sys) {
            if (s.values.empty()) continue;
            s.median = median_of(s.values);
            s.min = *std::min_element(s.values.begin(), s.values.end());
            s.max = *std::max_element(s.values.begin(), s.values.end());
            std::map<std::string, std::vector<double>> ex;
            for (const auto& rec : c.runs)
                if (rec.ok && rec.workload == r.info->id && rec.system == sname)
                    for (auto& [k, v] : rec.extras) ex[k].push_back(v);
            for (auto& [k, v] : ex) s.extras[k] = median_of(v);
        }
        auto m = r.sys.find("mailroom");
        if (m != r.sys.end()) {
            for (const char* peer : peers)
                if (auto p = r.sys.find(peer); p != r.sys.end())
                    if (auto v = ratio(*r.info, m->second, p->second)) r.vs[peer] = *v;
            if (r.target > 0 && !m->second.values.empty())
                r.target_met = r.info->higher_better ? m->second.median >= r.target : m->second.median <= r.target;
            else if (r.info->floor_ratio_target > 0 && r.vs.count("floor"))
                r.target_met = r.vs.at("floor") >= r.info->floor_ratio_target * (1 - 1e-9);
        }
    }

    print_table(c);
    if (!o.json_path.empty()) write_json(c, o.json_path);
    if (!o.chart_path.empty()) write_chart(c, o.chart_path);
    std::fflush(stdout);
    return c.failures ? 1 : 0;
}

}  // namespace mailroom::tool
