#pragma once
// `mailroom node`: a networked node's command. `node keygen` writes a CURVE key pair; the node
// runner itself is not built yet.

namespace mailroom::tool {

/// Runs `mailroom node` with the arguments after "node"; returns the process exit code.
int run_node(int argc, char** argv);

}  // namespace mailroom::tool
