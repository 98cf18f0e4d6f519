#pragma once
// `mailroom bench`: runs the benchmark suite (bench/), mailroom against CAF and the floor, and
// prints a table of medians and ratios; optionally writes JSON and an SVG chart.

namespace mailroom::tool {

/// Runs the suite with the arguments after "bench" (argv[0] is the first of them, as for
/// run_demo); returns the process exit code: 0, or 1 when a benchmark's own check failed, or 2
/// on a usage error or when no benchmark executable was found. A slow figure never fails it.
int run_bench(int argc, char** argv);

}  // namespace mailroom::tool
