#pragma once
// `mailroom demo`: the main job, exercising the whole library.

namespace mailroom::tool {

/// Runs the demo with the arguments after "demo"; returns the process exit code.
int run_demo(int argc, char** argv);

}  // namespace mailroom::tool
