#pragma once
// What `mailroom demo` prints: the live progress line, and the shutdown report with its checks.

#include "demo_io.hpp"
#include "demo_metrics.hpp"
#include "demo_nodes.hpp"

#include <mailroom/agent/coop.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/mbox/mchain.hpp>
#include <mailroom/named/named.hpp>
#include <mailroom/session/session.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mailroom::tool {

/// Every layer's counters of the demo's environment in one snapshot (their field names are
/// distinct): the environment's messages and timers, agents, sessions, named objects.
struct demo_stats : environment_stats, agent_stats, session_stats, named_stats {};
/// Any thread.
demo_stats snapshot_stats(const environment& env);

/// "1,234,567"
std::string format_count(std::uint64_t n);
/// "412.3 k/s", "26.40 M/s"
std::string format_rate(double per_second);
/// "850 ns", "18.2 µs", "1.24 ms", "2.10 s"
std::string format_duration_ns(std::uint64_t ns);

/// The progress line, once a second. On a terminal it rewrites one line in place; into a file
/// or a pipe it writes one line per call. Called from the reporter agent only.
class progress_printer {
public:
    progress_printer(const demo_metrics& metrics, bool quiet);

    void start(const demo_stats& now);
    void print(const demo_stats& now);
    /// Ends the line on a terminal, so that what follows starts on a fresh one.
    void finish();

private:
    struct sample {
        std::int64_t at_ns = 0;
        demo_stats env;
        std::uint64_t published = 0;
        latency_snapshot latency;
    };
    sample take(const demo_stats& now) const;

    const demo_metrics& metrics_;
    bool quiet_;
    bool terminal_;
    std::int64_t started_ns_ = 0;
    sample last_;
    bool line_open_ = false;
};

/// One line of the verdict: what must hold, and whether it did.
struct check {
    std::string what;
    bool passed;
};

/// What the run was, for the report's heading.
struct run_summary {
    double seconds = 0;
    int steady_subscribers = 0;
    std::size_t pool_threads = 0;
    /// From the reporter's stop() to the end of join().
    std::int64_t shutdown_ns = 0;
    /// The chain a plain thread fed (demo_flow.hpp), after the environment stopped.
    mchain_stats ticks{};
    /// The event loops, the job queue and the watchdog (demo_io.hpp), after join.
    io_report io{};
    /// `--nodes`: both sides of the requests to the second process (enabled false otherwise).
    nodes_report nodes{};
};

/// The checks a clean run passes, from the environment's final statistics (after join) and the
/// demo's own counters.
std::vector<check> evaluate(const run_summary& run, const demo_stats& s, const demo_metrics& m);

/// Prints the shutdown report and the verdict; returns true when every check passed.
bool print_report(const run_summary& run, const demo_stats& s, const demo_metrics& m,
                  const std::vector<check>& checks);

}  // namespace mailroom::tool
