// Several threads open socketpairs and pipes, watch them from sessions pinned to the loops of an
// event_loop_pool, make them ready, and have the watchers shut down by themselves, by timers of
// sessions on the other loop, or by posted calls of sessions on another dispatcher's thread;
// then they close the fds at once (the numbers are reused by the other threads). Bounded in
// time. No callback may run once its watcher's shutdown() returned, and none may see an fd that
// is closed or that now names another file.

#include <mailroom/mailroom.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

struct totals {
    std::atomic<long> watched{0}, callbacks{0}, after_shutdown{0}, wrong_fd{0}, unheard{0};
};

// One watched fd: what its callback checks.
struct watched_fd {
    int fd = -1;
    ino_t ino = 0;
    dev_t dev = 0;
    std::atomic<bool> shut{false};
    std::atomic<bool> heard{false};
    fd_watch_handle handle;
};

fd_events on_ready(watched_fd& w, totals& t) {
    t.callbacks.fetch_add(1, std::memory_order_relaxed);
    if (w.shut.load(std::memory_order_acquire)) t.after_shutdown.fetch_add(1, std::memory_order_relaxed);
    struct stat st {};
    if (::fstat(w.fd, &st) != 0 || st.st_ino != w.ino || st.st_dev != w.dev) {
        t.wrong_fd.fetch_add(1, std::memory_order_relaxed);
        return fd_events::none;
    }
    char buf[64];
    while (::read(w.fd, buf, sizeof buf) > 0) {
    }
    w.heard.store(true, std::memory_order_release);
    return fd_events::read;
}

TEST(event_loop_fd_stress, no_callback_after_shutdown_and_none_on_a_closed_or_reused_fd) {
    totals t;
    {
        environment env({.name = "fd-stress"});
        auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
        auto other = one_thread::make_dispatcher(env, "other");
        std::vector<session> watchers, killers;
        for (int i = 0; i < 4; ++i) watchers.emplace_back(env, session_options{.bind = pool.bind_loop(i % 2)});
        for (int i = 0; i < 2; ++i) killers.emplace_back(env, session_options{.bind = pool.bind_loop(i % 2)});
        session foreign(env, {.bind = other.bind()});

        const auto end = std::chrono::steady_clock::now() + 3s;
        std::vector<std::thread> threads;
        for (int ti = 0; ti < 4; ++ti) {
            threads.emplace_back([&, ti] {
                std::mt19937 rng(static_cast<unsigned>(ti) * 7919u + 1u);
                for (long iter = 0; iter < 200000 && std::chrono::steady_clock::now() < end; ++iter) {
                    int fds[2];
                    const bool pipe = rng() % 2;
                    if ((pipe ? ::pipe2(fds, O_NONBLOCK | O_CLOEXEC)
                              : ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds)) != 0) {
                        ADD_FAILURE() << "pipe/socketpair: " << errno;
                        return;
                    }
                    auto w = std::make_shared<watched_fd>();
                    w->fd = fds[0];
                    struct stat st {};
                    ::fstat(fds[0], &st);
                    w->ino = st.st_ino;
                    w->dev = st.st_dev;
                    session& owner = watchers[rng() % watchers.size()];
                    const auto trigger = rng() % 2 ? fd_trigger::edge : fd_trigger::level;
                    w->handle = owner.watch(fds[0], fd_events::read, [w, &t](fd_events) { return on_ready(*w, t); },
                                            trigger);
                    t.watched.fetch_add(1, std::memory_order_relaxed);
                    char c = 'x';
                    [[maybe_unused]] auto n = ::write(fds[1], &c, 1);
                    const bool wait_heard = rng() % 2;
                    if (wait_heard) {
                        const auto until = std::chrono::steady_clock::now() + 5s;
                        while (!w->heard.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < until)
                            std::this_thread::yield();
                        if (!w->heard.load()) t.unheard.fetch_add(1);
                    }
                    // Who shuts it down: this thread, a timer of a session on a loop, a posted
                    // call on another dispatcher's thread.
                    switch (rng() % 3) {
                        case 0:
                            w->handle.shutdown();
                            break;
                        case 1: {
                            auto done = std::make_shared<std::promise<void>>();
                            auto f = done->get_future();
                            auto timer = killers[rng() % killers.size()].add_timer(
                                std::chrono::microseconds(rng() % 300), 0ns, [w, done] {
                                    w->handle.shutdown();
                                    done->set_value();
                                });
                            timer.detach();
                            if (f.wait_for(10s) != std::future_status::ready) {
                                ADD_FAILURE() << "a killer's timer did not fire within 10 s";
                                w->handle.shutdown();
                            }
                            break;
                        }
                        default: {
                            auto done = std::make_shared<std::promise<void>>();
                            auto f = done->get_future();
                            foreign.post([w, done] {
                                w->handle.shutdown();
                                done->set_value();
                            });
                            if (f.wait_for(10s) != std::future_status::ready) {
                                ADD_FAILURE() << "a foreign post did not run within 10 s";
                                w->handle.shutdown();
                            }
                            break;
                        }
                    }
                    w->shut.store(true, std::memory_order_release);
                    ::close(fds[0]);
                    ::close(fds[1]);
                    // Destroyed on whichever side lets go last (this thread, or a callback's copy).
                    w->handle.destroy();
                }
            });
        }
        for (auto& th : threads) th.join();
        auto loops = pool.loops();
        EXPECT_EQ(loops[0].fds_watched + loops[1].fds_watched, 0u);
    }
    EXPECT_GT(t.watched.load(), 100);
    EXPECT_GT(t.callbacks.load(), 50);
    EXPECT_EQ(t.after_shutdown.load(), 0);
    EXPECT_EQ(t.wrong_fd.load(), 0);
    EXPECT_EQ(t.unheard.load(), 0);
}

}  // namespace
