#pragma once
// For the tests of the dispatcher kinds: where a session bound through a kind's handle runs,
// which ways to bind a handle has (checked at compile time), and what a checked cast raises.

#include <mailroom/session/session.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/env/environment.hpp>

#include <gtest/gtest.h>

#include <pthread.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

namespace mailroom::test {

// The ways to bind that belong to one kind: a handle that should not have one must not compile
// with it (static_assert on these in each kind's test).
template <class H>
concept binds_plainly = requires(const H& h) { h.bind(); };
template <class H>
concept binds_to_a_group = requires(const H& h) { h.bind_group(std::string()); };
template <class H>
concept binds_in_a_fifo_order = requires(const H& h) { h.bind_fifo(thread_pool::fifo::agent); };

/// What `dispatcher_cast<Handle>(d)` raised as dispatcher_kind_error; empty when it raised
/// nothing (another exception fails the test).
template <class Handle>
std::string kind_error_of(const dispatcher& d) {
    try {
        dispatcher_cast<Handle>(d);
    } catch (const dispatcher_kind_error& e) {
        return e.what();
    }
    return {};
}

/// The thread a callback ran on: its name (what the dispatcher called it) and its id.
struct thread_seen {
    std::string name;
    std::thread::id id;
};

/// Runs a callback of `s` and returns where it ran; an empty name (and a test failure) when it
/// did not run within 10 s.
inline thread_seen where_it_runs(session& s) {
    std::promise<thread_seen> seen;
    auto f = seen.get_future();
    s.post([&seen] {
        char n[16] = {};
        ::pthread_getname_np(::pthread_self(), n, sizeof n);
        seen.set_value({n, std::this_thread::get_id()});
    });
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        ADD_FAILURE() << "session '" << s.name() << "': its callback did not run within 10 s";
        s.destroy();  // no callback runs after this returns: `seen` may go
        return {};
    }
    return f.get();
}

}  // namespace mailroom::test
