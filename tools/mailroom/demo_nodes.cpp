#include "demo_nodes.hpp"

#include <mailroom/core/error.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#if MAILROOM_TOOL_WITH_NET
#include "node_types.hpp"

#include <mailroom/net/node.hpp>
#endif

namespace mailroom::tool {

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr const char* child_name = "pricing-node";
constexpr auto start_limit = 10s;
constexpr auto stop_limit = 10s;

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// The number after `label` in `line` ("replied 12, ..." -> 12); false when it is not there.
bool number_after(const std::string& line, const std::string& label, std::uint64_t& out) {
    const auto at = line.find(label);
    if (at == std::string::npos) return false;
    const char* p = line.c_str() + at + label.size();
    char* end = nullptr;
    out = std::strtoull(p, &end, 10);
    return end != p;
}

}  // namespace

#if MAILROOM_TOOL_WITH_NET
struct remote_pricing::node_holder {
    net::node node;
};
#else
struct remote_pricing::node_holder {};
#endif

remote_pricing::remote_pricing(environment& env, const std::string& exe) {
#if MAILROOM_TOOL_WITH_NET
    int fd[2];
    if (::pipe2(fd, O_CLOEXEC) != 0) throw usage_error("demo --nodes: pipe failed");
    std::vector<std::string> args{exe, "node", "--name", child_name, "--listen", "tcp://127.0.0.1:0", "--serve",
                                  "pricing"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    std::fflush(nullptr);
    child_ = ::fork();
    if (child_ < 0) {
        ::close(fd[0]);
        ::close(fd[1]);
        throw usage_error("demo --nodes: fork failed");
    }
    if (child_ == 0) {
        // Only what exec needs: this process may have threads. The child dies with the demo.
        if (::dup2(fd[1], 1) < 0) ::_exit(126);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(126);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    ::close(fd[1]);
    out_ = fd[0];

    // READY <endpoint>, within the time.
    std::string endpoint;
    const auto deadline = steady::now() + start_limit;
    while (endpoint.empty()) {
        const auto nl = buffer_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buffer_.substr(0, nl);
            buffer_.erase(0, nl + 1);
            lines_.push_back(line);
            if (starts_with(line, "READY ")) endpoint = line.substr(6);
            continue;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
        pollfd p{out_, POLLIN, 0};
        if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0)
            throw usage_error("demo --nodes: the pricing node ('" + exe + " node ...') did not say READY within 10 s");
        char buf[512];
        const ssize_t n = ::read(out_, buf, sizeof buf);
        if (n <= 0) throw usage_error("demo --nodes: the pricing node ended before it was READY");
        buffer_.append(buf, static_cast<std::size_t>(n));
    }

    net::node_options o;
    o.types = node_types();
    node_ = std::make_unique<node_holder>(node_holder{net::node(env, "demo", std::move(o))});
    node_->node.connect(endpoint);
    if (!node_->node.wait_for_peer(child_name, start_limit))
        throw usage_error("demo --nodes: the pricing node at " + endpoint + " did not come up within 10 s");
    target_ = std::string(child_name) + "/pricing/quote";
#else
    (void)env;
    (void)exe;
    throw usage_error("demo --nodes: this mailroom was built without the net layer (libzmq, cppzmq, msgpack-cxx)");
#endif
}

remote_pricing::~remote_pricing() {
    if (child_ > 0) {
        ::kill(child_, SIGKILL);
        int st = 0;
        ::waitpid(child_, &st, 0);
    }
    if (out_ >= 0) ::close(out_);
}

nodes_report remote_pricing::finish() {
    nodes_report r;
    r.enabled = true;
    r.peer = child_name;
    r.target = target_;
#if MAILROOM_TOOL_WITH_NET
    if (node_) {
        node_->node.stop();  // stopped with the environment already; idempotent
        const net::node_stats s = node_->node.stats();
        r.requests_out = s.requests_out;
        r.requests_replied = s.requests_replied;
        r.requests_rejected = s.requests_rejected;
        r.requests_abandoned = s.requests_abandoned;
        r.frames_rejected = s.frames_rejected;
        r.peers_down = s.peers_down;
    }
#endif
    if (child_ <= 0) return r;
    ::kill(child_, SIGTERM);
    // Its report comes as it exits: read until it closes its end, bounded.
    const auto deadline = steady::now() + stop_limit;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
        pollfd p{out_, POLLIN, 0};
        if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) break;
        char buf[4096];
        const ssize_t n = ::read(out_, buf, sizeof buf);
        if (n <= 0) break;
        buffer_.append(buf, static_cast<std::size_t>(n));
    }
    for (std::size_t nl; (nl = buffer_.find('\n')) != std::string::npos;) {
        lines_.push_back(buffer_.substr(0, nl));
        buffer_.erase(0, nl + 1);
    }
    int st = 0;
    pid_t got = 0;
    while ((got = ::waitpid(child_, &st, WNOHANG)) == 0 && steady::now() < deadline) std::this_thread::sleep_for(2ms);
    if (got != child_) {
        ::kill(child_, SIGKILL);
        ::waitpid(child_, &st, 0);
    }
    r.child_exited_ok = got == child_ && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    child_ = -1;

    for (const auto& line : lines_) {
        if (starts_with(line, ("node " + r.peer + ":").c_str())) r.child_node_line = line;
        else if (starts_with(line, "named:")) r.child_named_line = line;
        else if (starts_with(line, "books:")) r.child_books_line = line;
    }
    r.child_books_balanced = r.child_books_line.find("(balanced)") != std::string::npos;
    r.child_parsed = number_after(r.child_node_line, "served ", r.child_served) &&
                     number_after(r.child_named_line, "requests posted ", r.child_posted) &&
                     number_after(r.child_named_line, "replied ", r.child_replied) &&
                     number_after(r.child_named_line, "rejected ", r.child_rejected) &&
                     number_after(r.child_named_line, "abandoned ", r.child_abandoned);
    return r;
}

}  // namespace mailroom::tool
