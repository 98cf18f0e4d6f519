// A tiny child program for the multi-process harness's own tests: a raw ZeroMQ ROUTER that binds
// tcp://127.0.0.1:0 (or the endpoint given as its argument), prints "READY <endpoint>" with the
// port the kernel chose, and sends every message back to whoever sent it. A message "exit N"
// is answered "bye" and the program exits with code N.
//
//   echo_child [endpoint]

#include <zmq.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "echo_child: %s: %s\n", what, zmq_strerror(zmq_errno()));
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    const char* endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:0";
    void* ctx = zmq_ctx_new();
    void* router = zmq_socket(ctx, ZMQ_ROUTER);
    if (!router) die("socket");
    const int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(router, endpoint) != 0) die("bind");
    char bound[256] = {};
    std::size_t bound_len = sizeof bound;
    if (zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, bound, &bound_len) != 0) die("last endpoint");
    std::printf("READY %s\n", bound);
    std::fflush(stdout);

    std::vector<std::string> parts;
    for (;;) {
        parts.clear();
        int more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, router, 0) < 0) die("recv");
            parts.emplace_back(static_cast<const char*>(zmq_msg_data(&m)), zmq_msg_size(&m));
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        int code = -1;
        if (parts.size() >= 2 && parts.back().starts_with("exit ")) {
            code = std::atoi(parts.back().c_str() + 5);
            parts.back() = "bye";
        }
        for (std::size_t i = 0; i < parts.size(); ++i)
            if (zmq_send(router, parts[i].data(), parts[i].size(), i + 1 < parts.size() ? ZMQ_SNDMORE : 0) < 0)
                die("send");
        if (code >= 0) {
            const int drain_ms = 2000;  // let "bye" leave before the socket closes
            zmq_setsockopt(router, ZMQ_LINGER, &drain_ms, sizeof drain_ms);
            zmq_close(router);
            zmq_ctx_term(ctx);
            return code;
        }
    }
}
