// W10: 1,000 connected socketpairs on an event_loop_pool of 2 loops. Each pair bounces a
// 64-byte message: one end writes it, the other reads it and writes it back, the first reads
// it and counts a round trip, until the pair has made its share of the 1M round trips. The two
// ends of a pair are watched by sessions on different loops. Figure: round trips per second.
// Checks: every pair made its share, and every message came back unchanged.

#include "harness.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <vector>

namespace {

constexpr const char* workload = "W10";
constexpr std::size_t message_size = 64;

struct pair_state {
    int fd[2] = {-1, -1};
    std::uint64_t left = 0;  // round trips still to make (the initiating end's)
    char out[message_size];
    mailroom::fd_watch_handle w[2];
};

struct shared_state {
    std::atomic<std::uint64_t> pairs_done{0};
    std::atomic<std::uint64_t> bad{0};
    std::uint64_t pairs = 0;
    // Set by the pair that finishes last: the main thread sleeps on it instead of polling, as the
    // floor's joins its threads (a polling main thread would preempt the loops it measures).
    std::promise<void> all_done;
};

// Reads a whole message if one is there (64 bytes on a stream socket arrive together here:
// each end has at most one message in flight).
bool read_message(int fd, char* buf) {
    std::size_t got = 0;
    while (got < message_size) {
        auto n = ::read(fd, buf + got, message_size - got);
        if (n <= 0) {
            if (got == 0) return false;
            continue;  // the rest of a message is on its way
        }
        got += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"pairs", "N"}, {"loops", "N"}, {"spin-us", "N"}});
    const std::uint64_t total = o.scaled(1'000'000, 1000);
    const auto pairs = static_cast<std::size_t>(o.get_long("pairs", 1000));
    const auto loops = static_cast<std::size_t>(o.get_long("loops", 2));
    const auto spin = std::chrono::microseconds(
        o.get_long("spin-us", std::chrono::duration_cast<std::chrono::microseconds>(
                                  mailroom::event_loop_pool::params{}.spin).count()));
    std::printf("W10 event loop: %zu socketpairs on %zu loops, %llu round trips of %zu bytes\n", pairs, loops,
                static_cast<unsigned long long>(total), message_size);

    auto s = bench::repeat(o, "round trips/s", [&] {
        shared_state st;
        st.pairs = pairs;
        auto finished = st.all_done.get_future();
        std::vector<std::unique_ptr<pair_state>> ps(pairs);
        std::int64_t t0 = 0, t1 = 0;
        {
            mailroom::environment env;
            auto pool = mailroom::event_loop_pool::make_dispatcher(env, "io", {.threads = loops, .spin = spin});
            std::vector<mailroom::session> sessions;
            for (std::size_t i = 0; i < loops; ++i)
                sessions.emplace_back(env, mailroom::session_options{.bind = pool.bind_loop(i)});
            for (std::size_t i = 0; i < pairs; ++i) {
                auto& p = ps[i];
                p = std::make_unique<pair_state>();
                if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p->fd) != 0)
                    bench::fail(workload, "socketpair failed");
                p->left = total / pairs + (i < total % pairs ? 1 : 0);
                std::memset(p->out, static_cast<int>('a' + i % 26), message_size);
                pair_state* raw = p.get();
                // The echoing end.
                p->w[1] = sessions[(i + 1) % loops].watch(p->fd[1], mailroom::fd_events::read, [raw, &st](mailroom::fd_events) {
                    char buf[message_size];
                    while (read_message(raw->fd[1], buf))
                        if (::write(raw->fd[1], buf, message_size) != static_cast<ssize_t>(message_size)) st.bad++;
                    return mailroom::fd_events::read;
                });
                // The initiating end.
                p->w[0] = sessions[i % loops].watch(p->fd[0], mailroom::fd_events::read, [raw, &st](mailroom::fd_events) {
                    char buf[message_size];
                    while (read_message(raw->fd[0], buf)) {
                        if (std::memcmp(buf, raw->out, message_size) != 0) st.bad++;
                        if (--raw->left == 0) {
                            if (st.pairs_done.fetch_add(1, std::memory_order_acq_rel) + 1 == st.pairs)
                                st.all_done.set_value();
                            return mailroom::fd_events::none;
                        }
                        if (::write(raw->fd[0], raw->out, message_size) != static_cast<ssize_t>(message_size)) st.bad++;
                    }
                    return mailroom::fd_events::read;
                });
            }
            t0 = bench::now_ns();
            for (auto& p : ps)
                if (::write(p->fd[0], p->out, message_size) != static_cast<ssize_t>(message_size)) st.bad++;
            if (finished.wait_for(std::chrono::seconds(300)) != std::future_status::ready)
                bench::fail(workload, "not all pairs finished within 300 s");
            t1 = bench::now_ns();
            for (auto& p : ps) {
                p->w[0].destroy();
                p->w[1].destroy();
                ::close(p->fd[0]);
                ::close(p->fd[1]);
            }
        }
        bench::check(st.bad.load() == 0, workload, std::to_string(st.bad.load()) + " messages came back wrong");
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9);
    });
    bench::report(workload, std::to_string(total) + " round trips", s, "round_trips_per_s");
    return 0;
}
