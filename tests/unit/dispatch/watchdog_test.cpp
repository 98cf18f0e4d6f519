#include <mailroom/dispatch/watchdog.hpp>

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/core/handle_access.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/fd_watch.hpp>
#include <mailroom/session/job.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

// A blocking function with a name no other frame has, for the stack in the report. External
// linkage, no inlining or cloning (noipa) and -rdynamic (the test target exports its symbols)
// let dladdr name it. Blocks in
// short sleeps until `release` (sleep is a call every sanitizer lets a signal through in), for
// at most `limit`.
__attribute__((noipa)) void watchdog_test_distinctive_blocking_wait(const std::atomic<bool>& release,
                                                                       std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!release.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    asm volatile("" ::: "memory");  // not a tail call: this frame stays on the stack
}

namespace {

using namespace mailroom;

// Stall reports handed to a stall_action::callback, with the thread each came on.
struct stall_collector : test::collector<stall_report> {
    watchdog_params params(std::chrono::nanoseconds timeout) {
        return {.timeout = timeout, .action = stall_action::callback, .on_stall = adder()};
    }
    /// Waits (bounded) for the first report, notes whether the stalled work had not
    /// `returned` by then, and lets it go (`release`) either way. False when none came.
    bool first_then_release(std::atomic<bool>& release, const std::atomic<bool>& returned, stall_report& first,
                            bool& still_running) {
        const bool reported = wait_until([](auto& rs) { return !rs.empty(); });
        still_running = !returned.load();
        if (reported) {
            std::lock_guard g(m);
            first = items.front();
        }
        release = true;
        return reported;
    }
};

bool stack_has(const stall_report& r, const std::string& name) {
    for (auto& f : r.stack)
        if (f.find(name) != std::string::npos) return true;
    return false;
}

std::string stack_text(const stall_report& r) { return r.text; }

TEST(watchdog, handler_blocked_past_its_timeout_is_reported_with_its_stack_while_blocked_and_its_resumption_after) {
    stall_collector c;
    environment env({.name = "watched"});
    auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(40ms)});
    session s(env, {.name = "stuck", .bind = disp.bind()});
    std::atomic<bool> release{false}, returned{false};
    std::atomic<std::thread::id> worker_thread{};
    ASSERT_TRUE(s.post([&] {
        worker_thread = std::this_thread::get_id();
        watchdog_test_distinctive_blocking_wait(release, 10s);
        returned = true;
    }));
    ASSERT_TRUE(c.wait_until([](auto& rs) { return !rs.empty(); })) << "no report in 10 s";
    stall_report first;
    {
        std::lock_guard g(c.m);
        first = c.items.front();
        EXPECT_NE(c.threads.front(), worker_thread.load()) << "the callback ran on the stalled thread";
    }
    EXPECT_FALSE(returned.load()) << "reported only after the handler returned";
    EXPECT_FALSE(first.resumed);
    EXPECT_EQ(first.environment, "watched");
    EXPECT_EQ(first.dispatcher, "slow");
    EXPECT_EQ(first.worker, 0u);
    EXPECT_NE(first.thread_id, 0);
    EXPECT_NE(first.context.find("session 'stuck'"), std::string::npos) << first.context;
    EXPECT_EQ(first.message_type, "posted call");
    EXPECT_GE(first.running_for, 40ms);
    EXPECT_EQ(first.timeout, 40ms);
    EXPECT_TRUE(stack_has(first, "watchdog_test_distinctive_blocking_wait")) << stack_text(first);
    EXPECT_NE(first.text.find("job queue"), std::string::npos) << first.text;
    EXPECT_NE(first.text.find("watchdog_test_distinctive_blocking_wait"), std::string::npos) << first.text;
    // The counters while it is stalled.
    environment_stats during = env.stats();
    EXPECT_EQ(during.stalls_reported, 1u);
    EXPECT_EQ(during.stalled_now, 1u);
    EXPECT_GE(during.longest_stall, 40ms);

    // Past the 2x report: the stall runs more than 3x its timeout.
    const bool twice = c.wait_until([](auto& rs) { return rs.size() >= 2; });
    std::this_thread::sleep_for(50ms);
    release = true;
    ASSERT_TRUE(twice);
    ASSERT_TRUE(c.wait_until([](auto& rs) { return !rs.empty() && rs.back().resumed; })) << "no resumed report";
    stall_report last;
    {
        std::lock_guard g(c.m);
        last = c.items.back();
        EXPECT_EQ(std::count_if(c.items.begin(), c.items.end(), [](auto& r) { return r.resumed; }), 1);
    }
    EXPECT_TRUE(returned.load());
    EXPECT_GE(last.running_for, 120ms);
    EXPECT_TRUE(last.stack.empty());
    EXPECT_NE(last.text.find("resumed"), std::string::npos) << last.text;
    // The worker carries on.
    std::atomic<bool> next{false};
    ASSERT_TRUE(s.post([&] { next = true; }));
    for (int i = 0; i < 10000 && !next.load(); ++i) std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(next.load());
    environment_stats after = env.stats();
    EXPECT_EQ(after.stalls_reported, 1u);
    EXPECT_EQ(after.stalled_now, 0u);
    EXPECT_GE(after.longest_stall, last.running_for);
}

TEST(watchdog, a_stall_is_reported_again_at_twice_and_four_times_the_timeout) {
    stall_collector c;
    environment env({.name = "repeats"});
    auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(30ms)});
    session s(env, {.name = "stuck", .bind = disp.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    const bool three = c.wait_until([](auto& rs) { return rs.size() >= 3; });
    release = true;
    ASSERT_TRUE(three) << "fewer than three reports in 10 s";
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; }));
    std::lock_guard g(c.m);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_FALSE(c.items[i].resumed);
        EXPECT_GE(c.items[i].running_for, 30ms * (1 << i)) << "report " << i;
    }
}

TEST(watchdog, extend_deadline_keeps_a_handler_that_makes_progress_unreported) {
    stall_collector c;
    environment env({.name = "extends"});
    // A timeout with room for a loaded machine. A machine that still starves the handler of
    // the CPU for a whole timeout between two of its calls makes a report true: the handler
    // measures its longest gap, and only a gap under the timeout forbids a report.
    auto disp = one_thread::make_dispatcher(env, "long", {.watchdog = c.params(100ms)});
    session s(env, {.name = "progress", .bind = disp.bind()});
    std::atomic<bool> done{false};
    std::atomic<std::int64_t> longest_gap_ns{0};
    ASSERT_TRUE(s.post([&] {
        auto last = std::chrono::steady_clock::now();
        const auto until = last + 500ms;  // 5x the timeout
        std::chrono::nanoseconds longest{0};
        while (std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(2ms);
            extend_deadline();
            const auto t = std::chrono::steady_clock::now();
            longest = std::max<std::chrono::nanoseconds>(longest, t - last);
            last = t;
        }
        longest_gap_ns = longest.count();
        done = true;
    }));
    for (int i = 0; i < 10000 && !done.load(); ++i) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(done.load());
    std::this_thread::sleep_for(50ms);
    if (std::chrono::nanoseconds(longest_gap_ns.load()) < 100ms) {
        EXPECT_EQ(c.count(), 0u) << "longest gap between extend_deadline() calls "
                                 << std::chrono::nanoseconds(longest_gap_ns.load()).count() << " ns";
        EXPECT_EQ(env.stats().stalls_reported, 0u);
    }
    {
        std::lock_guard g(c.m);
        c.items.clear();
    }
    // The same handler without the calls is reported: the watchdog was watching.
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    EXPECT_TRUE(reported);
}

TEST(watchdog, a_handler_under_its_timeout_is_never_reported) {
    stall_collector c;
    test::log_lines logged;
    environment_options o;  // filled field by field: GCC 12 warns falsely on the designated form
    o.name = "quick";
    o.log = logged.sink();
    environment env(std::move(o));
    auto disp = thread_pool::make_dispatcher(env, "pool", {.threads = 2, .watchdog = c.params(150ms)});
    session a(env, {.name = "a", .bind = disp.bind()});
    session b(env, {.name = "b", .bind = disp.bind()});
    std::atomic<int> done{0};
    // Each handler measures itself: a machine that starves one past the timeout makes its
    // report true, but no report may say a handler ran longer than the longest one did.
    std::atomic<std::int64_t> longest_ns{0};
    auto handler = [&] {
        const auto t0 = std::chrono::steady_clock::now();
        std::this_thread::sleep_for(30ms);
        const std::int64_t ran = std::chrono::nanoseconds(std::chrono::steady_clock::now() - t0).count();
        for (std::int64_t l = longest_ns.load(); ran > l && !longest_ns.compare_exchange_weak(l, ran);) {}
        ++done;
    };
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(a.post(handler));
        ASSERT_TRUE(b.post(handler));
    }
    for (int i = 0; i < 10000 && done.load() < 10; ++i) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(done.load(), 10);
    std::this_thread::sleep_for(50ms);  // a resumption report, if any, comes on a later sample
    const std::chrono::nanoseconds longest(longest_ns.load());
    if (longest < 150ms) {
        EXPECT_EQ(c.count(), 0u) << "longest handler " << longest.count() << " ns";
        EXPECT_EQ(env.stats().stalls_reported, 0u);
        std::lock_guard g(logged.m);
        for (auto& l : logged.items) EXPECT_EQ(l.find("watchdog"), std::string::npos) << l;
    }
    std::lock_guard g(c.m);
    for (auto& r : c.items) {
        if (!r.resumed) {  // a resumption's "in all" counts to a later sample
            EXPECT_LE(r.running_for, longest) << r.text;
        }
    }
}

TEST(watchdog, a_watcher_held_past_the_timeout_does_not_report_a_handler_that_started_just_before_it_looked) {
    // The watcher's delay made explicit: its thread is held in the on_stall callback of another
    // dispatcher's stall for longer than the watched dispatcher's timeout (as a watcher starved
    // of the CPU would be), and a handler starts on the watched dispatcher just before the
    // watcher is let go. The handler runs well under its timeout: no report may name it.
    constexpr auto timeout = 500ms;
    std::mutex m;
    std::condition_variable cv;
    bool held = false, let_go = false;  // under m
    stall_collector c;                  // the watched dispatcher's reports
    environment env({.name = "late"});
    watchdog_params holder{.timeout = 30ms, .action = stall_action::callback, .on_stall = [&](const stall_report& r) {
                               if (r.resumed) return;
                               std::unique_lock g(m);
                               if (held) return;  // only the first report holds the watcher
                               held = true;
                               cv.notify_all();
                               cv.wait_for(g, 10s, [&] { return let_go; });
                           }};
    auto stuck = one_thread::make_dispatcher(env, "stuck", {.watchdog = holder});
    auto watched = one_thread::make_dispatcher(env, "watched", {.watchdog = c.params(timeout)});
    session blocker(env, {.name = "blocker", .bind = stuck.bind()});
    session quick(env, {.name = "quick", .bind = watched.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(blocker.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    bool was_held;
    {
        std::unique_lock g(m);
        was_held = cv.wait_for(g, 10s, [&] { return held; });
    }
    if (!was_held) release = true;
    ASSERT_TRUE(was_held) << "the blocked handler was not reported in 10 s";
    // The watcher's last sample is now further back than the watched timeout.
    std::this_thread::sleep_for(timeout + 100ms);
    std::atomic<bool> started{false}, done{false};
    std::atomic<std::int64_t> ran_ns{0};
    ASSERT_TRUE(quick.post([&] {
        const auto t0 = std::chrono::steady_clock::now();
        started = true;
        std::this_thread::sleep_for(100ms);  // a fifth of its timeout, long enough to be sampled
        ran_ns = std::chrono::nanoseconds(std::chrono::steady_clock::now() - t0).count();
        done = true;
    }));
    for (int i = 0; i < 10000 && !started.load(); ++i) std::this_thread::sleep_for(1ms);
    {
        std::lock_guard g(m);
        let_go = true;
        cv.notify_all();
    }
    for (int i = 0; i < 10000 && !done.load(); ++i) std::this_thread::sleep_for(1ms);
    release = true;
    ASSERT_TRUE(done.load());
    // A machine that starved the handler itself past its timeout makes a report true; none may
    // say it ran longer than it did.
    const std::chrono::nanoseconds ran(ran_ns.load());
    std::lock_guard g(c.m);
    if (ran < timeout) {
        EXPECT_TRUE(c.items.empty()) << c.items.front().text;
    }
    for (auto& r : c.items) {
        if (!r.resumed) {  // a resumption's "in all" counts to a later sample
            EXPECT_LE(r.running_for, ran) << r.text;
        }
    }
}

TEST(watchdog, a_dispatcher_made_while_the_watcher_waits_is_sampled_at_once_and_its_stall_timed_from_its_start) {
    // A sample is 10 ms here; 60 ms leaves room for a late watcher. Sampled only after its long
    // tick, the stall is timed from about 100 ms after the handler began, in every attempt. A
    // loaded machine may hold the watcher itself past 60 ms: it gets three attempts.
    std::string missed;
    for (int attempt = 0; attempt < 3; ++attempt) {
        stall_collector c;
        environment_options o;
        o.name = "late";
        environment env(std::move(o));
        // The watcher now waits its longest tick (no short timeout yet); the new dispatcher wakes it.
        std::this_thread::sleep_for(5ms);
        auto disp = one_thread::make_dispatcher(env, "late", {.watchdog = c.params(40ms)});
        session s(env, {.name = "slow", .bind = disp.bind()});
        std::atomic<std::int64_t> ran_ns{0};
        ASSERT_TRUE(s.post([&] {
            const auto t0 = std::chrono::steady_clock::now();
            std::this_thread::sleep_for(400ms);
            ran_ns = std::chrono::nanoseconds(std::chrono::steady_clock::now() - t0).count();
        }));
        ASSERT_TRUE(c.wait_until([](auto& rs) { return !rs.empty() && rs.back().resumed; }));
        stall_report last;
        {
            std::lock_guard g(c.m);
            last = c.items.back();
        }
        if (last.running_for >= std::chrono::nanoseconds(ran_ns.load()) - 60ms) return;
        missed += "\nattempt " + std::to_string(attempt) + ": ran " + std::to_string(ran_ns.load()) +
                  " ns; " + last.text;
    }
    ADD_FAILURE() << "each stall was timed from more than 60 ms after its handler began:" << missed;
}

TEST(watchdog, report_action_logs_the_report_with_its_stack_through_the_environment_log) {
    test::log_lines logged;
    environment_options o;  // filled field by field: GCC 12 warns falsely on the designated form
    o.name = "logs";
    o.log = logged.sink();
    environment env(std::move(o));
    // A timeout that leaves a loaded machine time to run the stack signal's handler (the
    // watcher waits for the stack as long as the timeout, up to 200 ms).
    auto disp = thread_pool::make_dispatcher(env, "pool", {.threads = 1, .watchdog = {.timeout = 200ms}});
    session s(env, {.name = "stuck", .bind = disp.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    const bool first = logged.wait_for("past the dispatcher's timeout");
    // A machine that starves the stalled thread longer than the stack wait gets a report that
    // says so; the repeats at 2x, 4x ... the timeout ask again.
    const bool stack = first && logged.wait_for("watchdog_test_distinctive_blocking_wait");
    release = true;
    ASSERT_TRUE(first);
    EXPECT_TRUE(stack);
    EXPECT_TRUE(logged.has("dispatcher 'pool' worker 0"));
    EXPECT_TRUE(logged.wait_for("resumed"));
}

TEST(watchdog, without_a_stack_signal_the_report_says_why_it_has_no_stack) {
    stall_collector c;
    environment env({.name = "nostack", .watchdog_signal = 0});
    auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(30ms)});
    session s(env, {.name = "stuck", .bind = disp.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_TRUE(reported);
    std::lock_guard g(c.m);
    EXPECT_TRUE(c.items.front().stack.empty());
    EXPECT_NE(c.items.front().stack_note.find("no stack"), std::string::npos) << c.items.front().stack_note;
}

struct slow_quote {
    int n = 0;
};

class blocking_agent final : public agent {
public:
    explicit blocking_agent(std::atomic<bool>& release) : release_(release) {}

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const slow_quote&) { watchdog_test_distinctive_blocking_wait(release_, 10s); });
    }

private:
    std::atomic<bool>& release_;
};

TEST(watchdog, a_stalled_agent_is_named_with_its_cooperation_and_the_message_type_it_handles) {
    stall_collector c;
    environment env({.name = "agents"});
    auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(30ms)});
    std::atomic<bool> release{false};
    coop co(env, {.name = "feeders", .bind = disp.bind()});
    mbox to = co.make_agent<blocking_agent>(release).direct_mbox();
    register_coop(std::move(co));
    send<slow_quote>(to, 7);
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_TRUE(reported);
    std::lock_guard g(c.m);
    const stall_report& r = c.items.front();
    EXPECT_NE(r.context.find("agent"), std::string::npos) << r.context;
    EXPECT_NE(r.context.find("feeders"), std::string::npos) << r.context;
    EXPECT_NE(r.message_type.find("slow_quote"), std::string::npos) << r.message_type;
    EXPECT_TRUE(stack_has(r, "watchdog_test_distinctive_blocking_wait")) << r.text;
}

TEST(watchdog, a_worker_that_does_not_answer_the_signal_in_time_is_reported_without_a_stack_saying_so) {
    stall_collector c;
    environment env({.name = "deaf"});
    auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(30ms)});
    session s(env, {.name = "masked", .bind = disp.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] {
        // The signal stays pending while it is blocked here; unblocked before the handler
        // returns, it is then delivered and answered late (and ignored by the watcher).
        sigset_t urg, old;
        sigemptyset(&urg);
        sigaddset(&urg, SIGURG);
        pthread_sigmask(SIG_BLOCK, &urg, &old);
        watchdog_test_distinctive_blocking_wait(release, 10s);
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }));
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_TRUE(reported);
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; }));
    std::lock_guard g(c.m);
    const stall_report& r = c.items.front();
    EXPECT_TRUE(r.stack.empty());
    EXPECT_NE(r.stack_note.find("did not answer signal"), std::string::npos) << r.stack_note;
    EXPECT_NE(r.text.find("did not answer signal"), std::string::npos) << r.text;
}

// ---- event loops and job queues ----

// A connected pair of non-blocking stream sockets, closed at the end of the scope.
struct socket_pair {
    int fd[2] = {-1, -1};
    socket_pair() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd) != 0) ADD_FAILURE() << "socketpair";
    }
    ~socket_pair() {
        for (int f : fd)
            if (f >= 0) ::close(f);
    }
};

// The worker threads a dispatcher has listed with the watchdog now.
std::size_t listed_workers(const dispatcher& d) {
    std::size_t n = 0;
    internal::checked(internal::impl_of(d)).visit_workers([&](auto&) { ++n; });
    return n;
}

using test::eventually;

TEST(watchdog, stalled_fd_callback_on_an_event_loop_is_reported_while_running_with_its_fd_and_stack) {
    stall_collector c;
    environment env({.name = "loops"});
    // A timeout that leaves a loaded machine time to run the stack signal's handler (the
    // watcher waits for the stack as long as the timeout, up to 200 ms).
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 2, .watchdog = c.params(200ms)});
    session s(env, {.name = "reader", .bind = pool.bind_loop(1)});
    socket_pair p;
    std::atomic<bool> release{false}, returned{false};
    auto w = s.watch(p.fd[0], fd_events::read, [&](fd_events) {
        char buf[16];
        [[maybe_unused]] auto n = ::read(p.fd[0], buf, sizeof buf);
        watchdog_test_distinctive_blocking_wait(release, 10s);
        returned = true;
        return fd_events::read;
    });
    ASSERT_TRUE(w);
    ASSERT_EQ(::write(p.fd[1], "x", 1), 1);
    stall_report first;
    bool still_running = false;
    ASSERT_TRUE(c.first_then_release(release, returned, first, still_running)) << "no report in 10 s";
    EXPECT_TRUE(still_running) << "reported only after the callback returned";
    EXPECT_FALSE(first.resumed);
    EXPECT_FALSE(first.job);
    EXPECT_EQ(first.dispatcher, "ev");
    EXPECT_EQ(first.worker, 1u);
    EXPECT_NE(first.context.find("session 'reader'"), std::string::npos) << first.context;
    EXPECT_EQ(first.message_type, "fd " + std::to_string(p.fd[0]) + " callback");
    EXPECT_TRUE(stack_has(first, "watchdog_test_distinctive_blocking_wait")) << first.text;
    EXPECT_NE(first.text.find("belongs in a job queue"), std::string::npos) << first.text;
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; })) << "no resumed report";
    w.shutdown();
}

TEST(watchdog, stalled_message_handler_on_an_event_loop_is_reported_like_on_any_dispatcher) {
    stall_collector c;
    environment env({.name = "loops"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.threads = 1, .watchdog = c.params(200ms)});
    std::atomic<bool> release{false};
    coop co(env, {.name = "feeders", .bind = pool.bind()});
    mbox to = co.make_agent<blocking_agent>(release).direct_mbox();
    register_coop(std::move(co));
    send<slow_quote>(to, 7);
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_TRUE(reported) << "no report in 10 s";
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; })) << "no resumed report";
    std::lock_guard g(c.m);
    const stall_report& r = c.items.front();
    EXPECT_EQ(r.dispatcher, "ev");
    EXPECT_EQ(r.worker, 0u);
    EXPECT_NE(r.context.find("feeders"), std::string::npos) << r.context;
    EXPECT_NE(r.message_type.find("slow_quote"), std::string::npos) << r.message_type;
    EXPECT_TRUE(stack_has(r, "watchdog_test_distinctive_blocking_wait")) << r.text;
}

TEST(watchdog, stalled_job_is_reported_with_its_name_queue_thread_and_poster_while_running) {
    stall_collector c;
    environment env({.name = "jobs"});
    auto q = job_queue::make_job_queue(env, "blocking", {.desired = 2, .watchdog = c.params(200ms)});
    session s(env, {.name = "poster"});
    std::atomic<bool> release{false}, returned{false};
    std::promise<job<void>> posted;
    auto f = posted.get_future();
    ASSERT_TRUE(s.post([&] {
        posted.set_value(post_job(q, {.name = "resize images"}, [&] {
            watchdog_test_distinctive_blocking_wait(release, 10s);
            returned = true;
        }));
    }));
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    const job<void> j = f.get();
    stall_report first;
    bool still_running = false;
    ASSERT_TRUE(c.first_then_release(release, returned, first, still_running)) << "no report in 10 s";
    EXPECT_TRUE(still_running) << "reported only after the job returned";
    EXPECT_TRUE(first.job);
    EXPECT_FALSE(first.past_deadline);
    EXPECT_EQ(first.dispatcher, "blocking");
    EXPECT_NE(first.thread_id, 0);
    EXPECT_EQ(first.message_type, "job 'resize images'");
    EXPECT_NE(first.context.find("job #" + std::to_string(j.id())), std::string::npos) << first.context;
    EXPECT_NE(first.context.find("posted by session 'poster'"), std::string::npos) << first.context;
    EXPECT_TRUE(stack_has(first, "watchdog_test_distinctive_blocking_wait")) << first.text;
    EXPECT_NE(first.text.find("job queue 'blocking'"), std::string::npos) << first.text;
    EXPECT_NE(first.text.find("runs on a job queue"), std::string::npos) << first.text;
    EXPECT_EQ(first.text.find("belongs in a job queue"), std::string::npos) << first.text;
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; })) << "no resumed report";
    EXPECT_TRUE(q.drain(10s));
}

TEST(watchdog, unnamed_job_posted_from_a_plain_thread_is_named_by_its_callable) {
    stall_collector c;
    environment env({.name = "jobs"});
    auto q = job_queue::make_job_queue(env, "blocking", {.watchdog = c.params(50ms)});
    std::atomic<bool> release{false};
    auto j = post_job(q, [&] { watchdog_test_distinctive_blocking_wait(release, 10s); });
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_TRUE(reported) << "no report in 10 s";
    EXPECT_TRUE(j.wait_for(10s));
    std::lock_guard g(c.m);
    const stall_report& r = c.items.front();
    // The lambda's type names the test that wrote it.
    EXPECT_EQ(r.message_type.rfind("job '", 0), 0u) << r.message_type;
    EXPECT_NE(r.message_type.find("unnamed_job_posted_from_a_plain_thread"), std::string::npos) << r.message_type;
    EXPECT_NE(r.context.find("posted from a thread that runs no session or agent"), std::string::npos) << r.context;
}

TEST(watchdog, job_running_past_its_deadline_is_reported_before_the_queue_timeout) {
    stall_collector c;
    environment env({.name = "jobs"});
    // A thread waiting already (floor 1), and a deadline with room for a loaded machine to
    // start the job before it (a job that starts past its deadline expires instead).
    auto q = job_queue::make_job_queue(env, "deadlines",
                                       {.floor = 1, .deadline = 400ms, .watchdog = c.params(30s)});
    std::atomic<bool> release{false};
    auto j = post_job(q, {.name = "slow write"}, [&] { watchdog_test_distinctive_blocking_wait(release, 10s); });
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release = true;
    ASSERT_NE(j.state(), job_state::expired) << "the machine did not start the job within its deadline";
    ASSERT_TRUE(reported) << "no report in 10 s, though the job ran past its 400 ms deadline";
    EXPECT_TRUE(j.wait_for(10s));
    std::lock_guard g(c.m);
    const stall_report& r = c.items.front();
    EXPECT_TRUE(r.past_deadline);
    EXPECT_LT(r.running_for, 10s);  // by the deadline, long before the 30 s timeout
    EXPECT_EQ(r.message_type, "job 'slow write'");
    EXPECT_NE(r.text.find("past its deadline"), std::string::npos) << r.text;
}

TEST(watchdog, job_thread_is_listed_while_alive_and_unlisted_once_it_exited_idle) {
    stall_collector c;
    environment env({.name = "jobs"});
    auto q = job_queue::make_job_queue(env, "elastic",
                                       {.floor = 0, .desired = 1, .idle_time = 20ms, .watchdog = c.params(50ms)});
    std::atomic<bool> release{false};
    auto quick = post_job(q, [&] {
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (!release.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    });
    ASSERT_TRUE(eventually([&] { return quick.state() == job_state::running; }));
    EXPECT_EQ(listed_workers(q), 1u) << "a running job thread is not watched";
    release = true;
    ASSERT_TRUE(quick.wait_for(10s));
    ASSERT_TRUE(eventually([&] { return q.job_stats().threads_exited == 1; })) << "the idle thread did not exit";
    ASSERT_TRUE(eventually([&] { return listed_workers(q) == 0; })) << "an exited job thread is still listed";
    // The next stall is on a thread of its own, reported once; the gone one is not sampled.
    std::atomic<bool> release2{false};
    auto stuck = post_job(q, {.name = "second"}, [&] { watchdog_test_distinctive_blocking_wait(release2, 10s); });
    const bool reported = c.wait_until([](auto& rs) { return !rs.empty(); });
    release2 = true;
    ASSERT_TRUE(reported);
    ASSERT_TRUE(stuck.wait_for(10s));
    ASSERT_TRUE(c.wait_until([](auto& rs) { return rs.back().resumed; }));
    std::lock_guard g(c.m);
    EXPECT_EQ(c.items.front().message_type, "job 'second'");
    EXPECT_EQ(std::count_if(c.items.begin(), c.items.end(), [](auto& r) { return !r.resumed && r.running_for < 50ms; }),
              0);
}

TEST(watchdog, stalls_on_loops_and_job_queues_are_counted_in_the_environment_and_per_dispatcher) {
    stall_collector c;
    environment env({.name = "counted"});
    auto pool = event_loop_pool::make_dispatcher(env, "ev", {.watchdog = c.params(40ms)});
    auto q = job_queue::make_job_queue(env, "jobs", {.watchdog = c.params(40ms)});
    session s(env, {.name = "looped", .bind = pool.bind()});
    std::atomic<bool> release{false};
    ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
    auto j = post_job(q, {.name = "blocker"}, [&] { watchdog_test_distinctive_blocking_wait(release, 10s); });
    const bool both = c.wait_until([](auto& rs) {
        bool loop = false, job = false;
        for (auto& r : rs) (r.job ? job : loop) = true;
        return loop && job;
    });
    const environment_stats during = env.stats();
    const dispatcher_stats pool_during = pool.stats(), q_during = q.stats();
    release = true;
    ASSERT_TRUE(both) << "the loop's and the job's stalls were not both reported in 10 s";
    EXPECT_EQ(during.stalls_reported, 2u);
    EXPECT_EQ(during.stalled_now, 2u);
    EXPECT_GE(during.longest_stall, 40ms);
    EXPECT_EQ(pool_during.stalls_reported, 1u);
    EXPECT_EQ(pool_during.stalled_now, 1u);
    EXPECT_GE(pool_during.longest_stall, 40ms);
    EXPECT_EQ(q_during.stalls_reported, 1u);
    EXPECT_EQ(q_during.stalled_now, 1u);
    ASSERT_TRUE(j.wait_for(10s));
    ASSERT_TRUE(eventually([&] { return env.stats().stalled_now == 0; }));
    EXPECT_EQ(env.stats().stalls_reported, 2u);
    EXPECT_EQ(q.stats().stalled_now, 0u);
    EXPECT_EQ(q.stats().stalls_reported, 1u);
    bool in_all = false;
    for (auto& d : env.dispatcher_stats_all())
        if (d.name == "ev") in_all = d.stalls_reported == 1;
    EXPECT_TRUE(in_all);
}

TEST(watchdog, handler_still_stalled_at_teardown_is_said_once_by_the_teardown_watch_as_the_reported_stall) {
    stall_collector c;
    test::collector<handler_overrun> overruns;
    std::atomic<bool> release{false};
    std::thread releaser;
    {
        environment_options o;  // filled field by field: GCC 12 warns falsely on the designated form
        o.name = "teardown";
        o.teardown_deadline = 60ms;
        o.on_overrun = overruns.adder();
        environment env(std::move(o));
        auto disp = one_thread::make_dispatcher(env, "slow", {.watchdog = c.params(30ms)});
        session s(env, {.name = "stuck", .bind = disp.bind()});
        ASSERT_TRUE(s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); }));
        ASSERT_TRUE(c.wait_until([](auto& rs) { return !rs.empty(); })) << "no stall report in 10 s";
        s.detach();  // the environment's teardown is what waits for the handler
        // The teardown waits for the handler past 60 ms, 120 ms, 240 ms and 480 ms.
        releaser = std::thread([&] {
            std::this_thread::sleep_for(700ms);
            release = true;
        });
    }
    releaser.join();
    std::lock_guard g(overruns.m);
    ASSERT_EQ(overruns.items.size(), 1u) << "the teardown repeated a stall the watchdog reports";
    const handler_overrun& h = overruns.items.front();
    EXPECT_TRUE(h.stall_reported);
    EXPECT_NE(h.text.find("the stall the watchdog reported"), std::string::npos) << h.text;
    EXPECT_NE(h.text.find("session 'stuck'"), std::string::npos) << h.text;
}

TEST(watchdog_death, abort_action_ends_the_process_after_logging_the_report) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            environment env({.name = "doomed"});
            auto disp = one_thread::make_dispatcher(env, "slow",
                                                    {.watchdog = {.timeout = 30ms, .action = stall_action::abort}});
            session s(env, {.name = "stuck", .bind = disp.bind()});
            std::atomic<bool> release{false};
            s.post([&] { watchdog_test_distinctive_blocking_wait(release, 10s); });
            std::this_thread::sleep_for(10s);
            release = true;
        },
        "dispatcher 'slow' worker 0.*session 'stuck'(.|\n)*stall action is abort");
}

}  // namespace
