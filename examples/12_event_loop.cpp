// An fd watched on an event loop: a session bound to an event_loop_pool of two loops watches the
// reading end of a socketpair. A foreign thread writes lines; the callback, on the session's loop
// thread, reads until EAGAIN and counts them. A timer of the same session fires on that same
// thread, so the callback and the timer share the session's state without a lock. The interest
// is switched off and on again from main(), then the watcher is shut down and the fd closed at
// once, and a new socket (likely with the same fd number) is watched at once. See
// docs/event-loops.md.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

// Writes `line` and a newline; false (errno set) when the socket refused it.
bool write_line(int fd, const std::string& line) {
    const std::string text = line + "\n";
    // MSG_NOSIGNAL: no SIGPIPE should the reader be gone.
    return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

}  // namespace

int main() {
    example::checks check(64);

    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
        std::printf("socketpair: %s\n", std::strerror(errno));
        return 1;
    }
    const int reader = fds[0], writer = fds[1];

    // Touched only on the session's loop thread (callback and timer never run at once); atomics
    // only because main() reads them while they change.
    std::atomic<int> lines{0}, callbacks{0};
    std::atomic<std::thread::id> watch_thread{}, timer_thread{};
    std::string partial;  // a line split across reads: the loop thread's alone

    mailroom::environment env({.name = "loops"});
    auto loops = mailroom::event_loop_pool::make_dispatcher(env, "io", {.threads = 2});
    {
        mailroom::session conn(env, {.name = "conn", .bind = loops.bind()});

        auto w = conn.watch(reader, mailroom::fd_events::read, [&](mailroom::fd_events ready) {
            watch_thread = std::this_thread::get_id();
            callbacks.fetch_add(1);
            if (mailroom::any_of(ready, mailroom::fd_events::read)) {
                char buf[256];
                for (;;) {  // until EAGAIN: everything the peer wrote so far
                    const ssize_t n = ::read(reader, buf, sizeof buf);
                    if (n > 0) {
                        for (ssize_t i = 0; i < n; ++i) {
                            if (buf[i] == '\n') {
                                lines.fetch_add(1);
                                partial.clear();
                            } else {
                                partial += buf[i];
                            }
                        }
                        continue;
                    }
                    if (n < 0 && errno == EINTR) continue;
                    break;  // EAGAIN (drained), 0 (peer closed) or an error
                }
            }
            return mailroom::fd_events::read;  // the next interest: keep reading
        });
        auto once = conn.add_timer(5ms, 0ms, [&] { timer_thread = std::this_thread::get_id(); });

        // A foreign thread writes a few lines.
        std::thread peer([&] {
            for (int i = 1; i <= 5; ++i)
                if (!write_line(writer, "quote " + std::to_string(i))) std::printf("write: %s\n", std::strerror(errno));
        });
        peer.join();
        check(example::eventually([&] { return lines.load() == 5; }), "the callback read the five lines the peer wrote");
        check(example::eventually([&] { return timer_thread.load() != std::thread::id{}; }), "the session's timer fired");
        check(watch_thread.load() == timer_thread.load(), "the fd callback and the timer ran on the same loop thread");
        check(watch_thread.load() != std::this_thread::get_id(), "which is not main()'s thread");

        // From another thread: no interest, so a new line waits in the socket unread ...
        check(w.set_interest(mailroom::fd_events::none), "set_interest(none) from main()");
        const int callbacks_before = callbacks.load();
        check(write_line(writer, "quote 6"), "main() writes one more line");
        std::this_thread::sleep_for(30ms);  // a generous window in which the loop could have read it
        check(lines.load() == 5 && callbacks.load() == callbacks_before, "with no interest the new line is not read");
        // ... until the interest is back.
        check(w.set_interest(mailroom::fd_events::read), "set_interest(read) from main()");
        check(example::eventually([&] { return lines.load() == 6; }), "with the interest back the line is read");

        // shutdown() from a thread other than the session's: once it returns, the callback is not
        // running and never will again, and the fd is out of the epoll set, so it may be closed
        // at once.
        w.shutdown();
        ::close(reader);
        check(!w, "the shut-down handle says so");
        check(!w.set_interest(mailroom::fd_events::read), "set_interest after shutdown does nothing");
        const int lines_at_shutdown = lines.load(), callbacks_at_shutdown = callbacks.load();

        // The kernel reuses the closed fd's number at once, and a new watcher may take it at
        // once, on the same loop: readiness of the new socket never reaches the old callback.
        int fds2[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds2) != 0) {
            std::printf("socketpair: %s\n", std::strerror(errno));
            return 1;
        }
        std::printf("the new socket's fd is %d (the closed one's was %d)\n", fds2[0], reader);
        std::atomic<int> new_reads{0}, new_callbacks{0};
        auto w2 = conn.watch(fds2[0], mailroom::fd_events::read, [&](mailroom::fd_events) {
            new_callbacks.fetch_add(1);
            char buf[64];
            while (::read(fds2[0], buf, sizeof buf) > 0) new_reads.fetch_add(1);
            return mailroom::fd_events::read;
        });
        check(write_line(fds2[1], "hello"), "a peer writes to the new socket");
        check(example::eventually([&] { return new_reads.load() == 1; }), "the new watcher reads it");
        check(lines.load() == lines_at_shutdown && callbacks.load() == callbacks_at_shutdown,
              "no callback of the old watcher after its shutdown() returned");
        w2.shutdown();
        ::close(fds2[0]);
        ::close(fds2[1]);

        std::size_t pinned = 0, watched = 0, fd_callbacks = 0;
        for (std::size_t i = 0; const mailroom::event_loop_pool::loop_stats& l : loops.loops()) {
            std::printf("loop %zu: %zu contexts, %zu fds watched, %llu fd callbacks, %llu busy cycles "
                        "(mean %llu ns, longest %llu ns)\n",
                        i++, l.contexts, l.fds_watched, static_cast<unsigned long long>(l.fd_callbacks),
                        static_cast<unsigned long long>(l.cycles),
                        static_cast<unsigned long long>(l.cycles ? l.busy_ns / l.cycles : 0),
                        static_cast<unsigned long long>(l.max_cycle_ns));
            pinned += l.contexts;
            watched += l.fds_watched;
            fd_callbacks += l.fd_callbacks;
        }
        check(pinned == 1, "one context pinned to one of the two loops");
        check(watched == 0, "no fd left in any epoll set");
        check(fd_callbacks == static_cast<std::size_t>(callbacks_at_shutdown + new_callbacks.load()),
              "the loops counted every fd callback of both watchers");
    }  // the session ends here, with the timer handle it still owns
    ::close(writer);

    env.stop();
    env.join();
    return check.exit_code();
}
