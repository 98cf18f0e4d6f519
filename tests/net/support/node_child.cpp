// The child program of tests/net/node_process_test.cpp: `mailroom node` itself (the runner in
// tools/mailroom/node.cpp), built into a small program so that test_net does not depend on the
// tool being built (MAILROOM_BUILD_TOOLS is off in the sanitizer builds) and the runner's code
// runs under ThreadSanitizer and AddressSanitizer with the tests.
//
//   node_child <the arguments of `mailroom node`>

#include "node.hpp"

int main(int argc, char** argv) { return mailroom::tool::run_node(argc - 1, argv + 1); }
