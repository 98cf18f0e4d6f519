#include <mailroom/session/fd_watch.hpp>

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using test::eventually;

// A connected pair of non-blocking stream sockets, closed at the end of the scope.
struct socket_pair {
    int fd[2] = {-1, -1};
    socket_pair() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd) != 0) ADD_FAILURE() << "socketpair";
    }
    ~socket_pair() {
        close(0);
        close(1);
    }
    void close(int i) {
        if (fd[i] >= 0) ::close(fd[i]);
        fd[i] = -1;
    }
    void send(int i, char c = 'x') const { ASSERT_EQ(::write(fd[i], &c, 1), 1); }
    // Reads what is there; the number of bytes read.
    static int drain(int f) {
        char buf[256];
        int total = 0;
        for (;;) {
            auto n = ::read(f, buf, sizeof buf);
            if (n <= 0) return total;
            total += static_cast<int>(n);
        }
    }
};


// Runs `f` on the session's context and waits (bounded) for it.
template <class F>
void on_context(session& s, F f) {
    std::promise<void> done;
    auto fut = done.get_future();
    s.post([&] {
        f();
        done.set_value();
    });
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready) << "the session did not run a posted call within 10 s";
}

struct loops : ::testing::Test {
    environment env{{.name = "fd"}};
    event_loop_pool::handle pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2});
};

TEST_F(loops, readiness_is_delivered_on_the_loop_thread_of_the_session) {
    session s(env, {.name = "s", .bind = pool.bind_loop(1)});
    std::thread::id loop_thread;
    on_context(s, [&] { loop_thread = std::this_thread::get_id(); });
    socket_pair p;
    std::promise<std::pair<std::thread::id, fd_events>> seen;
    auto f = seen.get_future();
    std::atomic<int> calls{0};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events ready) {
        socket_pair::drain(p.fd[0]);
        if (calls.fetch_add(1) == 0) seen.set_value({std::this_thread::get_id(), ready});
        return fd_events::read;
    });
    EXPECT_TRUE(w);
    p.send(1);
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "no readiness within 10 s";
    auto [tid, ready] = f.get();
    EXPECT_EQ(tid, loop_thread);
    EXPECT_TRUE(any_of(ready, fd_events::read));
    EXPECT_EQ(pool.loops()[1].fds_watched, 1u);
    EXPECT_TRUE(eventually([&] { return pool.loops()[1].fd_callbacks >= 1; }));
    w.shutdown();
    EXPECT_EQ(pool.loops()[1].fds_watched, 0u);
}

TEST_F(loops, the_callback_returns_the_next_interest_and_none_takes_the_fd_out_until_set_interest_asks_again) {
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair p;
    std::atomic<int> writes{0}, reads{0};
    // Writable at once: the callback asks for read next, then for nothing.
    auto w = s.watch(p.fd[0], fd_events::write, [&](fd_events ready) {
        if (any_of(ready, fd_events::write)) {
            writes.fetch_add(1);
            return fd_events::read;
        }
        if (any_of(ready, fd_events::read)) {
            socket_pair::drain(p.fd[0]);
            reads.fetch_add(1);
        }
        return fd_events::none;
    });
    ASSERT_TRUE(eventually([&] { return writes.load() == 1; }));
    p.send(1);
    ASSERT_TRUE(eventually([&] { return reads.load() == 1; }));
    // Out of the set now: neither more data nor the room to write calls it back.
    p.send(1);
    std::this_thread::sleep_for(20ms);
    on_context(s, [] {});
    EXPECT_EQ(reads.load(), 1);
    EXPECT_EQ(writes.load(), 1);
    EXPECT_EQ(pool.loops()[0].fds_watched, 0u);
    // Asked again: the data waiting is reported.
    EXPECT_TRUE(w.set_interest(fd_events::read));
    ASSERT_TRUE(eventually([&] { return reads.load() == 2; }));
    EXPECT_EQ(writes.load(), 1);
}

TEST_F(loops, shutdown_from_a_foreign_thread_waits_for_the_running_callback_and_none_runs_after) {
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair p;
    std::promise<void> entered;
    std::atomic<bool> release{false}, running{false};
    std::atomic<int> calls{0}, after{0};
    std::atomic<bool> shut_returned{false};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events) {
        if (shut_returned.load()) after.fetch_add(1);
        running = true;
        if (calls.fetch_add(1) == 0) {
            entered.set_value();
            const auto until = std::chrono::steady_clock::now() + 10s;
            while (!release.load() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        }
        running = false;
        return fd_events::read;  // level-triggered and never drained: it would run again and again
    });
    p.send(1);
    ASSERT_EQ(entered.get_future().wait_for(10s), std::future_status::ready);
    // Taken before the releaser starts: the callback is let go at least 50 ms after it, however
    // long this thread is preempted before shutdown() begins.
    const auto t0 = std::chrono::steady_clock::now();
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        release = true;
    });
    w.shutdown();
    shut_returned = true;
    EXPECT_FALSE(running.load()) << "shutdown() returned while the callback ran";
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms) << "shutdown() did not wait for the running callback";
    releaser.join();
    p.send(1);
    std::this_thread::sleep_for(20ms);
    on_context(s, [] {});
    EXPECT_EQ(after.load(), 0);
    EXPECT_FALSE(w);
}

TEST_F(loops, the_fd_may_be_closed_and_its_number_watched_again_at_once_after_shutdown) {
    session s(env, {.name = "s", .bind = pool.bind()});
    for (int round = 0; round < 50; ++round) {
        socket_pair p;
        std::atomic<int> old_calls_after{0};
        std::atomic<bool> shut{false};
        const int number = p.fd[0];
        auto w = s.watch(p.fd[0], fd_events::read | fd_events::write, [&](fd_events) {
            if (shut.load()) old_calls_after.fetch_add(1);
            return fd_events::read | fd_events::write;  // always ready to write: runs every turn
        });
        std::this_thread::sleep_for(1ms);
        w.shutdown();
        shut = true;
        p.close(0);
        // The same number, another socket: only the new watcher hears of it.
        socket_pair q;
        int reused = q.fd[0] == number ? 0 : 1;
        if (q.fd[reused] != number) {
            ADD_FAILURE() << "fd number " << number << " was not reused";
            return;
        }
        std::atomic<int> new_calls{0};
        auto w2 = s.watch(q.fd[reused], fd_events::read, [&](fd_events) {
            socket_pair::drain(q.fd[reused]);
            new_calls.fetch_add(1);
            return fd_events::read;
        });
        q.send(1 - reused);
        ASSERT_TRUE(eventually([&] { return new_calls.load() >= 1; })) << "round " << round;
        w2.shutdown();
        EXPECT_EQ(old_calls_after.load(), 0) << "round " << round;
    }
}

TEST_F(loops, set_interest_from_another_thread_wins_over_what_a_running_callback_returns) {
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair p;
    std::promise<void> entered;
    std::atomic<bool> release{false};
    std::atomic<int> write_calls{0}, read_calls{0};
    auto w = s.watch(p.fd[0], fd_events::write, [&](fd_events ready) {
        if (any_of(ready, fd_events::write) && write_calls.fetch_add(1) == 0) {
            entered.set_value();
            const auto until = std::chrono::steady_clock::now() + 10s;
            while (!release.load() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
            return fd_events::write;  // stale: set_interest(read) was made meanwhile
        }
        if (any_of(ready, fd_events::read)) {
            socket_pair::drain(p.fd[0]);
            read_calls.fetch_add(1);
        }
        return fd_events::read;
    });
    ASSERT_EQ(entered.get_future().wait_for(10s), std::future_status::ready);
    EXPECT_TRUE(w.set_interest(fd_events::read));
    release = true;
    std::this_thread::sleep_for(20ms);
    on_context(s, [] {});
    EXPECT_EQ(write_calls.load(), 1) << "the callback's stale interest (write) won over set_interest";
    p.send(1);
    EXPECT_TRUE(eventually([&] { return read_calls.load() == 1; }));
    w.shutdown();
    EXPECT_FALSE(w.set_interest(fd_events::read));
}

TEST_F(loops, edge_triggered_runs_once_per_change_and_level_triggered_while_ready) {
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair edge_pair, level_pair;
    std::atomic<int> edge_calls{0}, level_calls{0};
    // Neither drains: level keeps calling, edge calls once per arrival.
    auto e = s.watch(edge_pair.fd[0], fd_events::read, [&](fd_events) {
        edge_calls.fetch_add(1);
        return fd_events::read;
    }, fd_trigger::edge);
    auto l = s.watch(level_pair.fd[0], fd_events::read, [&](fd_events) {
        level_calls.fetch_add(1);
        return fd_events::read;
    });
    edge_pair.send(1);
    level_pair.send(1);
    ASSERT_TRUE(eventually([&] { return level_calls.load() >= 10; }));
    EXPECT_TRUE(eventually([&] { return edge_calls.load() == 1; }));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(edge_calls.load(), 1);
    edge_pair.send(1);
    EXPECT_TRUE(eventually([&] { return edge_calls.load() == 2; }));
    e.shutdown();
    l.shutdown();
}

TEST_F(loops, a_peer_that_closes_is_reported_as_readable_and_hung_up) {
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair p;
    std::promise<fd_events> seen;
    auto f = seen.get_future();
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events ready) {
        seen.set_value(ready);
        return fd_events::none;
    });
    p.close(1);
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    EXPECT_TRUE(any_of(f.get(), fd_events::hangup));
}

// The loop runs an fd callback inline (run_object_callback): a throw is caught, logged and
// counted under the session's policy, and the loop and the session carry on. The callback
// returned no interest: its fd leaves the set, as with `none`, until set_interest asks again.
TEST(fd_watch, an_fd_callback_that_throws_is_logged_and_counted_and_its_fd_rests_until_set_interest) {
    test::log_lines logged;
    environment env({.name = "fd", .log = logged.sink()});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 1});
    session s(env, {.name = "reader", .bind = pool.bind()});
    socket_pair p;
    std::atomic<int> calls{0};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events) -> fd_events {
        socket_pair::drain(p.fd[0]);
        if (calls.fetch_add(1) == 0) throw std::runtime_error("fd boom");
        return fd_events::read;
    });
    p.send(1);
    ASSERT_TRUE(eventually([&] { return env.stats().handler_exceptions == 1; })) << "the throw was not counted";
    {
        std::lock_guard g(logged.m);
        ASSERT_EQ(logged.items.size(), 1u);
        EXPECT_NE(logged.items[0].find("session 'reader'"), std::string::npos) << logged.items[0];
        EXPECT_NE(logged.items[0].find("fd boom"), std::string::npos) << logged.items[0];
    }
    int posted = 0;
    on_context(s, [&] { ++posted; });  // the session runs on
    EXPECT_EQ(posted, 1);
    EXPECT_EQ(pool.loops()[0].fds_watched, 0u);
    p.send(1);
    on_context(s, [] {});
    EXPECT_EQ(calls.load(), 1);
    EXPECT_TRUE(w.set_interest(fd_events::read));
    ASSERT_TRUE(eventually([&] { return calls.load() == 2; })) << "the watcher was not called again";
    EXPECT_EQ(env.stats().handler_exceptions, 1u);
    w.shutdown();
}

// An idle loop spins on its mailbox for params::spin before it sleeps in epoll_wait, and looks
// at its fds while it spins: readiness that comes meanwhile is called back at once, not when
// the spin ends (here 3 s).
TEST(fd_watch, readiness_that_comes_while_the_loop_spins_idle_is_called_back_before_the_spin_ends) {
    environment env({.name = "fd"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 1, .spin = 3s});
    session s(env, {.name = "s", .bind = pool.bind()});
    socket_pair p;
    std::atomic<std::int64_t> called_at{0};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events) {
        socket_pair::drain(p.fd[0]);
        called_at.store(std::chrono::steady_clock::now().time_since_epoch().count());
        return fd_events::read;
    });
    on_context(s, [] {});  // the loop ran all it had: it spins idle from here on
    std::this_thread::sleep_for(20ms);
    const auto sent = std::chrono::steady_clock::now().time_since_epoch().count();
    p.send(1);
    ASSERT_TRUE(eventually([&] { return called_at.load() != 0; })) << "no callback within 10 s";
    const auto waited = std::chrono::nanoseconds(called_at.load() - sent);
    EXPECT_LT(waited, 1s) << "the readiness waited "
                          << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()
                          << " ms for the loop's spin to end";
    w.shutdown();
}

// The loop counts its fd callbacks once per batch: the count still says every one that ran.
TEST_F(loops, loop_stats_count_every_fd_callback_run_and_none_refused) {
    session s(env, {.name = "s", .bind = pool.bind_loop(0)});
    socket_pair p;
    std::atomic<int> calls{0};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events) {
        socket_pair::drain(p.fd[0]);
        calls.fetch_add(1);
        return fd_events::read;
    });
    constexpr int rounds = 20;
    for (int i = 1; i <= rounds; ++i) {
        p.send(1);
        ASSERT_TRUE(eventually([&] { return calls.load() == i; })) << "no callback for send " << i;
    }
    EXPECT_TRUE(eventually([&] { return pool.loops()[0].fd_callbacks == rounds; }))
        << pool.loops()[0].fd_callbacks << " fd callbacks counted for " << rounds;
    w.shutdown();
    EXPECT_EQ(pool.loops()[0].fd_callbacks, static_cast<std::uint64_t>(calls.load()));
}

TEST(fd_watch, watching_from_a_session_not_bound_to_an_event_loop_raises_binding_error_naming_it) {
    environment env({.name = "fd"});
    session s(env, {.name = "plain"});
    socket_pair p;
    try {
        auto w = s.watch(p.fd[0], fd_events::read, [](fd_events) { return fd_events::none; });
        ADD_FAILURE() << "watch on a one_thread session did not raise";
    } catch (const binding_error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("'plain'"), std::string::npos) << m;
        EXPECT_NE(m.find("'default'"), std::string::npos) << m;
        EXPECT_NE(m.find("event_loop_pool"), std::string::npos) << m;
    }
}

TEST_F(loops, watching_a_closed_fd_or_a_negative_one_raises_naming_the_session) {
    session s(env, {.name = "s", .bind = pool.bind()});
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    ::close(fds[0]);
    ::close(fds[1]);
    try {
        auto w = s.watch(fds[0], fd_events::read, [](fd_events) { return fd_events::none; });
        ADD_FAILURE() << "watch of a closed fd did not raise";
    } catch (const error& e) {
        EXPECT_NE(std::string(e.what()).find("'s'"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)s.watch(-1, fd_events::read, [](fd_events) { return fd_events::none; }), usage_error);
    EXPECT_EQ(pool.loops()[0].fds_watched + pool.loops()[1].fds_watched, 0u);
}

TEST_F(loops, destroying_the_session_ends_its_watchers_and_their_fds_leave_the_loop) {
    auto s = std::make_unique<session>(env, session_options{.name = "s", .bind = pool.bind_loop(0)});
    socket_pair p;
    std::atomic<int> calls{0};
    auto w = s->watch(p.fd[0], fd_events::write, [&](fd_events) {
        calls.fetch_add(1);
        return fd_events::write;
    });
    ASSERT_TRUE(eventually([&] { return calls.load() > 0; }));
    s->destroy();
    const int at_destroy = calls.load();
    EXPECT_FALSE(w);
    EXPECT_EQ(pool.loops()[0].fds_watched, 0u);
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(calls.load(), at_destroy);
}

// An agent that watches `fd` from on_start and counts what it reads; its constructor tries to
// watch too, before it is bound.
class fd_agent final : public agent {
public:
    fd_agent(int fd, std::atomic<int>& bytes, std::string& early_error) : fd_(fd), bytes_(bytes) {
        try {
            auto w = watch(fd, fd_events::read, [](fd_events) { return fd_events::none; });
        } catch (const binding_error& e) {
            early_error = e.what();
        }
    }
    void on_start() override {
        w_ = watch(fd_, fd_events::read, [this](fd_events) {
            bytes_.fetch_add(socket_pair::drain(fd_));
            return fd_events::read;
        });
    }

private:
    int fd_;
    std::atomic<int>& bytes_;
    fd_watch_handle w_;
};

TEST_F(loops, an_agent_bound_to_a_loop_watches_from_on_start_and_not_before_it_is_bound) {
    socket_pair p;
    std::atomic<int> bytes{0};
    std::string early;
    coop c(env, {.name = "c", .bind = pool.bind()});
    c.make_agent<fd_agent>(p.fd[0], bytes, early);
    coop_handle h = register_coop(std::move(c));
    EXPECT_NE(early.find("not bound"), std::string::npos) << early;
    p.send(1);
    p.send(1);
    EXPECT_TRUE(eventually([&] { return bytes.load() == 2; }));
    h.deregister();
    EXPECT_TRUE(eventually([&] { return pool.loops()[0].fds_watched + pool.loops()[1].fds_watched == 0; }));
}

TEST_F(loops, move_to_another_loop_calls_back_there_and_never_again_on_the_old_one) {
    session a(env, {.name = "a", .bind = pool.bind_loop(0)});
    session b(env, {.name = "b", .bind = pool.bind_loop(1)});
    session plain(env, {.name = "plain"});
    std::thread::id ta, tb;
    on_context(a, [&] { ta = std::this_thread::get_id(); });
    on_context(b, [&] { tb = std::this_thread::get_id(); });
    socket_pair p;
    std::atomic<int> on_a{0}, on_b{0}, on_a_after_move{0};
    std::atomic<bool> moved{false};
    std::atomic<int> bytes{0};
    std::string inside_error;
    std::atomic<bool> armed{false};
    fd_watch_handle w;
    w = a.watch(p.fd[0], fd_events::read, [&](fd_events) {
        const auto me = std::this_thread::get_id();
        if (me == ta) {
            on_a.fetch_add(1);
            if (moved.load()) on_a_after_move.fetch_add(1);
            // `armed` publishes the assignment of `w` (ThreadSanitizer does not see the socket).
            if (armed.load(std::memory_order_acquire) && inside_error.empty()) {
                try {
                    w.move_to(b);
                } catch (const usage_error& e) {
                    inside_error = e.what();
                }
            }
        }
        if (me == tb) on_b.fetch_add(1);
        bytes.fetch_add(socket_pair::drain(p.fd[0]));
        return fd_events::read;
    });
    armed.store(true, std::memory_order_release);
    p.send(1);
    ASSERT_TRUE(eventually([&] { return bytes.load() == 1; }));
    on_context(a, [] {});
    EXPECT_NE(inside_error.find("own context"), std::string::npos) << inside_error;
    // A target that is not on a loop: refused, and the watcher is left as it was.
    EXPECT_THROW(w.move_to(plain), binding_error);
    p.send(1);
    ASSERT_TRUE(eventually([&] { return bytes.load() == 2; }));
    // The move: the data sent meanwhile is reported on b's loop.
    w.move_to(b);
    moved = true;
    EXPECT_TRUE(w);
    p.send(1);
    ASSERT_TRUE(eventually([&] { return bytes.load() == 3; }));
    EXPECT_GE(on_b.load(), 1);
    EXPECT_EQ(on_a_after_move.load(), 0);
    EXPECT_EQ(pool.loops()[0].fds_watched, 0u);
    EXPECT_EQ(pool.loops()[1].fds_watched, 1u);
    EXPECT_TRUE(w.set_interest(fd_events::none));
    EXPECT_EQ(pool.loops()[1].fds_watched, 0u);
}

}  // namespace
