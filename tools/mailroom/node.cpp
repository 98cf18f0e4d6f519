// `mailroom node keygen --out DIR --name NAME [--force]`: a node's CURVE key pair as key files
// (NAME.key, the secret, mode 0600; NAME.pub, the public key, mode 0644). `mailroom node` alone
// will run a node; until the net layer has one, it says so and exits 2.

#include "node.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#if MAILROOM_TOOL_WITH_NET
#include <mailroom/net/security.hpp>
#endif

namespace mailroom::tool {

namespace {

void print_usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: mailroom node keygen --out DIR --name NAME [--force]\n"
                 "       mailroom node            (the node runner: not built yet; exits 2)\n"
                 "\n"
                 "keygen writes a CURVE key pair for node NAME:\n"
                 "  DIR/NAME.key   the secret key (mode 0600): stays on this node\n"
                 "  DIR/NAME.pub   the public key (mode 0644): copy it into the allow-list\n"
                 "                 directory of every node that this node may connect to\n"
                 "  --out DIR      where to write them (made, mode 0700, if missing)\n"
                 "  --name NAME    the node's name: [A-Za-z0-9._:-], 1 to 255 characters\n"
                 "  --force        replace existing key files (refused otherwise)\n"
                 "Exit codes: 0 written, 1 not written (files exist, I/O error), 2 bad arguments.\n");
}

int keygen(int argc, char** argv) {
    std::string out_dir;
    std::string name;
    bool force = false;
    for (int i = 0; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](std::string& into) {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "mailroom node keygen: %s needs a value\n", a.c_str());
                return false;
            }
            into = argv[++i];
            return true;
        };
        if (a == "-h" || a == "--help" || a == "help") {
            print_usage(stdout);
            return 0;
        } else if (a == "--out") {
            if (!value(out_dir)) return 2;
        } else if (a == "--name") {
            if (!value(name)) return 2;
        } else if (a == "--force") {
            force = true;
        } else {
            std::fprintf(stderr, "mailroom node keygen: unknown argument '%s' (try: mailroom node --help)\n", a.c_str());
            return 2;
        }
    }
    if (out_dir.empty() || name.empty()) {
        std::fprintf(stderr, "mailroom node keygen: --out DIR and --name NAME are both needed\n");
        return 2;
    }
#if MAILROOM_TOOL_WITH_NET
    try {
        net::check_node_name(name);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mailroom node keygen: %s\n", e.what());
        return 2;
    }
    namespace fs = std::filesystem;
    try {
        fs::path dir(out_dir);
        std::error_code ec;
        if (!fs::exists(dir, ec)) {
            fs::create_directories(dir);
            fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
        }
        fs::path secret = dir / (name + ".key");
        fs::path pub = dir / (name + ".pub");
        net::curve_keypair keys = net::curve_keypair::generate();
        net::write_key_files(keys, name, secret, pub, {.overwrite = force});
        std::printf("wrote %s (secret key, mode 0600) and %s (public key, mode 0644)\n"
                    "public key of node '%s': %s\n",
                    secret.c_str(), pub.c_str(), name.c_str(), keys.public_key.c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mailroom node keygen: %s\n", e.what());
        return 1;
    }
#else
    std::fprintf(stderr, "mailroom node keygen: this mailroom was built without the net layer "
                         "(libzmq, cppzmq, msgpack-cxx: bash tools/setup.sh installs them)\n");
    return 2;
#endif
}

}  // namespace

int run_node(int argc, char** argv) {
    if (argc >= 1 && (std::strcmp(argv[0], "-h") == 0 || std::strcmp(argv[0], "--help") == 0 ||
                      std::strcmp(argv[0], "help") == 0)) {
        print_usage(stdout);
        return 0;
    }
    if (argc >= 1 && std::strcmp(argv[0], "keygen") == 0) return keygen(argc - 1, argv + 1);
    std::fprintf(stderr, "mailroom node: the node runner is not built yet; `mailroom node keygen` makes key "
                         "files (try: mailroom node --help)\n");
    return 2;
}

}  // namespace mailroom::tool
