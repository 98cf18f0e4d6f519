// W10 floor: the work of W10 with nothing but raw epoll: 1,000 connected socketpairs, one epoll
// loop per thread (2 threads), each pair bouncing a 64-byte message, 1M round trips in all. The
// two ends of a pair are in different threads' epoll sets, as W10 puts them on different loops.
// Level-triggered, each end read until EAGAIN. Figure: round trips per second.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {

constexpr const char* workload = "W10";
constexpr std::size_t message_size = 64;

struct pair_state;
struct end_ref {
    pair_state* pair;
    int side;
};
struct pair_state {
    int fd[2] = {-1, -1};
    std::uint64_t left = 0;
    char out[message_size];
    end_ref ends[2];
};

bool read_message(int fd, char* buf) {
    std::size_t got = 0;
    while (got < message_size) {
        auto n = ::read(fd, buf + got, message_size - got);
        if (n <= 0) {
            if (got == 0) return false;
            continue;
        }
        got += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"pairs", "N"}, {"loops", "N"}});
    const std::uint64_t total = o.scaled(1'000'000, 1000);
    const auto pairs = static_cast<std::size_t>(o.get_long("pairs", 1000));
    const auto loops = static_cast<std::size_t>(o.get_long("loops", 2));
    std::printf("W10 floor: %zu socketpairs, one raw epoll loop per thread on %zu threads, %llu round trips\n", pairs,
                loops, static_cast<unsigned long long>(total));

    auto s = bench::repeat(o, "round trips/s", [&] {
        std::atomic<std::uint64_t> done{0}, bad{0};
        std::vector<int> ep(loops);
        for (auto& e : ep) e = ::epoll_create1(EPOLL_CLOEXEC);
        std::vector<std::unique_ptr<pair_state>> ps(pairs);
        for (std::size_t i = 0; i < pairs; ++i) {
            auto& p = ps[i];
            p = std::make_unique<pair_state>();
            if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p->fd) != 0)
                bench::fail(workload, "socketpair failed");
            p->left = total / pairs + (i < total % pairs ? 1 : 0);
            std::memset(p->out, static_cast<int>('a' + i % 26), message_size);
            for (int side = 0; side < 2; ++side) {
                p->ends[side] = {p.get(), side};
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.ptr = &p->ends[side];
                ::epoll_ctl(ep[(i + static_cast<std::size_t>(side)) % loops], EPOLL_CTL_ADD, p->fd[side], &ev);
            }
        }
        const std::int64_t t0 = bench::now_ns();
        for (auto& p : ps)
            if (::write(p->fd[0], p->out, message_size) != static_cast<ssize_t>(message_size)) bad++;
        std::vector<std::thread> threads;
        for (std::size_t l = 0; l < loops; ++l) {
            threads.emplace_back([&, l] {
                epoll_event events[64];
                char buf[message_size];
                while (done.load(std::memory_order_relaxed) < pairs) {
                    int n = ::epoll_wait(ep[l], events, 64, 10);
                    for (int k = 0; k < n; ++k) {
                        auto* e = static_cast<end_ref*>(events[k].data.ptr);
                        pair_state& p = *e->pair;
                        const int fd = p.fd[e->side];
                        while (read_message(fd, buf)) {
                            if (e->side == 1) {
                                if (::write(fd, buf, message_size) != static_cast<ssize_t>(message_size)) bad++;
                                continue;
                            }
                            if (std::memcmp(buf, p.out, message_size) != 0) bad++;
                            if (--p.left == 0) {
                                ::epoll_ctl(ep[l], EPOLL_CTL_DEL, fd, nullptr);
                                done.fetch_add(1, std::memory_order_relaxed);
                                break;
                            }
                            if (::write(fd, p.out, message_size) != static_cast<ssize_t>(message_size)) bad++;
                        }
                    }
                }
            });
        }
        for (auto& t : threads) t.join();
        const std::int64_t t1 = bench::now_ns();
        for (auto& p : ps) {
            ::close(p->fd[0]);
            ::close(p->fd[1]);
        }
        for (auto e : ep) ::close(e);
        bench::check(bad.load() == 0, workload, std::to_string(bad.load()) + " messages came back wrong");
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9);
    });
    bench::report(workload, std::to_string(total) + " round trips", s, "round_trips_per_s", {}, "floor");
    return 0;
}
