#pragma once
// `mailroom node`: runs a networked node (docs/nodes.md, "Running a node from the command
// line"); `node keygen` writes a CURVE key pair.

namespace mailroom::tool {

/// Runs `mailroom node` with the arguments after "node"; returns the process exit code.
int run_node(int argc, char** argv);

}  // namespace mailroom::tool
