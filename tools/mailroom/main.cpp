// The mailroom command: demo, bench and node (the node runner and node keygen).

#include "bench_runner.hpp"
#include "demo.hpp"
#include "node.hpp"

#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2 || std::strcmp(argv[1], "help") == 0 || std::strcmp(argv[1], "--help") == 0) {
        std::printf("usage: mailroom demo [--seconds N] [--subscribers N] [--quiet]\n"
                    "       mailroom bench [W1 W2 ...] [--quick] [--reps N] [--scale F] [--json PATH] [--chart PATH]\n"
                    "       mailroom node --name NAME [--listen EP]... [--connect EP]... [--serve echo|pricing]... [--for S]\n"
                    "       mailroom node keygen --out DIR --name NAME [--force]\n"
                    "       mailroom demo --help | mailroom bench --help | mailroom node --help\n");
        return argc < 2 ? 2 : 0;
    }
    std::string cmd = argv[1];
    if (cmd == "demo") return mailroom::tool::run_demo(argc - 2, argv + 2);
    if (cmd == "bench") return mailroom::tool::run_bench(argc - 2, argv + 2);
    if (cmd == "node") return mailroom::tool::run_node(argc - 2, argv + 2);
    std::fprintf(stderr, "mailroom: unknown command '%s' (try: mailroom help)\n", argv[1]);
    return 2;
}
