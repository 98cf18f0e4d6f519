// The books of sends under concurrency: every message counted sent ends in exactly one outcome
// (delivered, lost, ignored, discarded, cancelled), a snapshot taken while messages flow never
// shows more outcomes than sends, and once join() returns the books balance exactly, even while
// senders are still racing the teardown. Senders use every path that counts: an agent's direct
// mbox, a session inbox, and MPMC mboxes with agent and session subscribers.

#include <mailroom/session/session.hpp>
#include "all_stats.hpp"

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct ping {
    int n = 0;
};

std::uint64_t outcomes(const mailroom::environment_stats& s) {
    return s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded + s.messages_cancelled +
           s.messages_dropped;
}

// An environment with one receiver of each kind: an agent subscribed to its direct mbox and to
// two topics, a session with an inbox and a subscription to each topic.
struct receivers {
    std::unique_ptr<mailroom::environment> env = std::make_unique<mailroom::environment>();
    std::atomic<long> handled{0};
    mailroom::mbox direct, inbox;
    std::vector<mailroom::mbox> topics;

    receivers() {
        topics = {mailroom::make_mpmc_mbox(*env), mailroom::make_mpmc_mbox(*env)};
        direct = mailroom::test::add_probe(*env, [this](mailroom::test::probe& p) {
            p.subscribe(p.direct_mbox(), [this](const ping&) { handled.fetch_add(1, std::memory_order_relaxed); });
            for (auto& t : topics)
                p.subscribe(t, [this](const ping&) { handled.fetch_add(1, std::memory_order_relaxed); });
        });
        mailroom::session s(*env, {.name = "books"});
        auto in = s.add_inbox<ping>([this](const ping&) { handled.fetch_add(1, std::memory_order_relaxed); });
        inbox = in.address();
        in.detach();
        for (auto& t : topics)
            s.subscribe<ping>(t, [this](const ping&) { handled.fetch_add(1, std::memory_order_relaxed); }).detach();
        s.detach();
    }

    // Sends to every receiver in turn until the environment refuses; counts what it sent.
    void produce(std::atomic<bool>& refused, long limit) {
        const mailroom::mbox* to[] = {&direct, &inbox, &topics[0], &topics[1]};
        for (long i = 0; i < limit; ++i) {
            try {
                mailroom::send<ping>(*to[i % 4], ping{static_cast<int>(i)});
            } catch (const mailroom::environment_stopped_error&) {
                refused = true;
                return;
            }
        }
    }
};

}  // namespace

// A sender passes the environment's open check, is preempted, and pushes after the teardown's
// last sweep: its message was counted sent while its outcome (discarded) was counted only when
// the core was freed, after join() had built its report. Now join() waits for every send that
// passed the check, so the books read as soon as join() returns balance exactly, with senders
// still running (every later send is refused uncounted).
TEST(books, sent_equals_outcomes_exactly_when_join_returns_while_senders_race_the_teardown) {
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 20s : 10s);
    const long rounds = mailroom::test::rounds(400);
    long done = 0;
    for (; done < rounds && std::chrono::steady_clock::now() < end; ++done) {
        receivers r;
        std::vector<std::atomic<bool>> refused(4);
        std::vector<std::thread> producers;
        for (auto& f : refused) producers.emplace_back([&r, &f] { r.produce(f, 50'000'000); });
        ASSERT_TRUE(mailroom::test::eventually([&] { return r.handled.load() > 200; }));
        r.env->stop();
        ASSERT_TRUE(mailroom::test::join_within(*r.env));
        const auto st = mailroom::test::all_stats_of(*r.env);  // the producers may still be running
        for (auto& p : producers) p.join();
        for (auto& f : refused) EXPECT_TRUE(f.load());
        ASSERT_EQ(st.messages_sent, outcomes(st))
            << "round " << done << ": delivered " << st.messages_delivered << ", lost " << st.messages_lost
            << ", ignored " << st.messages_ignored << ", discarded " << st.messages_discarded << ", cancelled "
            << st.messages_cancelled << ", dropped " << st.messages_dropped;
        // Nothing counted after join() either (the core is freed here).
        const auto after = mailroom::test::all_stats_of(*r.env);
        ASSERT_EQ(after.messages_sent, st.messages_sent);
        ASSERT_EQ(outcomes(after), outcomes(st));
    }
    EXPECT_GT(done, 0);
}

// A publication to an MPMC mbox was counted sent after its deliveries were queued, so a
// snapshot could show a receiver's outcome before the send; and stats() read each thread's
// sent before its outcomes. Now the sender counts first and stats() reads the outcomes first.
TEST(books, every_snapshot_shows_no_more_outcomes_than_sends_while_messages_flow) {
    receivers r;
    std::atomic<bool> stop_producing{false};
    std::atomic<bool> refused{false};
    std::vector<std::thread> producers;
    for (int t = 0; t < 2; ++t)
        producers.emplace_back([&] {
            const mailroom::mbox* to[] = {&r.direct, &r.inbox, &r.topics[0], &r.topics[1]};
            for (long i = 0; !stop_producing.load(std::memory_order_relaxed); ++i) {
                try {
                    mailroom::send<ping>(*to[i % 4], ping{});
                } catch (const mailroom::environment_stopped_error&) {
                    refused = true;
                    return;
                }
                if (i % 256 == 0) std::this_thread::yield();  // let the receivers keep up
            }
        });
    long snapshots = 0, bad = 0;
    std::string first_bad;
    // Until the time or the snapshot budget is spent, and in any case until some message went
    // through (on a loaded machine the receivers may not have run yet when the budget is).
    const auto start = std::chrono::steady_clock::now();
    const auto end = start + (mailroom::test::sanitized ? 3s : 1500ms);
    const auto last = start + 20s;
    auto more = [&] {
        const auto now = std::chrono::steady_clock::now();
        return (now < end && snapshots < 200'000) || (r.handled.load() == 0 && now < last);
    };
    while (more()) {
        const auto st = mailroom::test::all_stats_of(*r.env);
        ++snapshots;
        if (outcomes(st) > st.messages_sent) {
            if (!bad++)
                first_bad = "sent " + std::to_string(st.messages_sent) + " < outcomes " + std::to_string(outcomes(st));
        }
    }
    stop_producing = true;
    for (auto& p : producers) p.join();
    EXPECT_FALSE(refused.load());
    EXPECT_GT(r.handled.load(), 0);
    EXPECT_EQ(bad, 0) << bad << " of " << snapshots << " snapshots showed more outcomes than sends; first: "
                      << first_bad;
    r.env->stop();
    ASSERT_TRUE(mailroom::test::join_within(*r.env));
    const auto st = mailroom::test::all_stats_of(*r.env);
    EXPECT_EQ(st.messages_sent, outcomes(st));
}

namespace {

// Holds a posting thread wherever a signal finds it (its post may be between the session's
// liveness check and the push), for at most 50 ms: with posts marked in flight, join() waits for
// a held post, so the hold must end by itself.
std::atomic<bool> hold_posters{false};
extern "C" void hold_poster(int) {
    for (int i = 0; i < 100 && hold_posters.load(std::memory_order_relaxed); ++i) {
        timespec ts{0, 500'000};
        ::nanosleep(&ts, nullptr);
    }
}

// hold_poster on SIGUSR1 for the life of the object.
struct posters_held_by_signal {
    struct sigaction old {};
    bool installed = false;
    posters_held_by_signal() {
        struct sigaction act {};
        act.sa_handler = &hold_poster;
        sigemptyset(&act.sa_mask);
        act.sa_flags = SA_RESTART;
        installed = ::sigaction(SIGUSR1, &act, &old) == 0;
    }
    ~posters_held_by_signal() {
        if (installed) ::sigaction(SIGUSR1, &old, nullptr);
    }
};

// Holds every posting thread wherever it is, then stops the environment and joins it (bounded).
bool stop_while_posters_are_held(mailroom::environment& env, std::vector<std::thread>& threads) {
    hold_posters = true;
    for (auto& t : threads) ::pthread_kill(t.native_handle(), SIGUSR1);
    env.stop();
    return mailroom::test::join_within(env);
}

}  // namespace

// A posted call passed its session's liveness check, was preempted, and was queued after the
// teardown's last sweep: it was discarded (and counted) only when the core was freed, after
// join() had built its report. Now a post is in flight from before its check until it is queued
// and join() waits for it, so every post that returned true is run, refused or discarded by the
// time join() returns. Posting threads race the teardown, held by a signal wherever they are
// when it begins (often inside post()).
TEST(books, posted_calls_balance_run_refused_and_discarded_when_join_returns_while_posters_race_the_teardown) {
    posters_held_by_signal held;
    ASSERT_TRUE(held.installed);
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 30s : 15s);
    const long rounds = mailroom::test::sanitized ? 100 : 300;
    long done = 0;
    for (; done < rounds && std::chrono::steady_clock::now() < end; ++done) {
        auto env = std::make_unique<mailroom::environment>();
        auto pool = mailroom::thread_pool::make_dispatcher(*env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(*env, "own");
        std::vector<mailroom::session> sessions;
        sessions.emplace_back(*env, mailroom::session_options{.name = "default"});
        sessions.emplace_back(*env, mailroom::session_options{.name = "pooled", .bind = pool.bind()});
        sessions.emplace_back(*env, mailroom::session_options{.name = "own", .bind = own.bind()});
        std::atomic<long> ran{0};
        constexpr int posters = 4;
        std::vector<long> posted(posters, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < posters; ++t)
            threads.emplace_back([&, t] {
                // Posts until every session refuses (the teardown destroyed them).
                for (long i = 0;; ++i) {
                    bool any = false;
                    for (auto& s : sessions)
                        if (s.post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); })) {
                            ++posted[t];
                            any = true;
                        }
                    if (!any) return;
                    if (i % 64 == 0) std::this_thread::yield();  // let the sessions keep up
                }
            });
        ASSERT_TRUE(mailroom::test::eventually([&] { return ran.load() > 200; }));
        ASSERT_TRUE(stop_while_posters_are_held(*env, threads));
        const auto st = mailroom::test::all_stats_of(*env);
        hold_posters = false;
        for (auto& t : threads) t.join();
        long total = 0;
        for (long p : posted) total += p;
        ASSERT_EQ(static_cast<std::uint64_t>(total), st.callbacks_run + st.callbacks_refused + st.callbacks_discarded)
            << "round " << done << ": run " << st.callbacks_run << ", refused " << st.callbacks_refused
            << ", discarded " << st.callbacks_discarded;
        // Nothing counted after join() either.
        const auto after = mailroom::test::all_stats_of(*env);
        ASSERT_EQ(after.callbacks_run + after.callbacks_refused + after.callbacks_discarded,
                  st.callbacks_run + st.callbacks_refused + st.callbacks_discarded);
    }
    EXPECT_GT(done, 0);
}

namespace {

// A call posted to an agent (how a coroutine awaiting a request in a handler is resumed): it
// counts its run and, in its destructor, that it ended (run and dropped, or dropped unrun).
struct agent_call_probe {
    std::atomic<long>* ran;
    std::atomic<long>* ended;
    bool live = true;
    agent_call_probe(std::atomic<long>* r, std::atomic<long>* e) noexcept : ran(r), ended(e) {}
    agent_call_probe(agent_call_probe&& o) noexcept : ran(o.ran), ended(o.ended) { o.live = false; }
    ~agent_call_probe() {
        if (live) ended->fetch_add(1, std::memory_order_relaxed);
    }
    void operator()() const { ran->fetch_add(1, std::memory_order_relaxed); }
};

}  // namespace

// A call posted to an agent passed the agent's gate check, was preempted, and was queued after
// the teardown's last sweep: it stayed in a stopped worker's queue (with what it holds: a
// coroutine frame, when a request resumes its awaiting handler) until the core was freed, after
// join() had returned. Now a post to an agent is in flight from before its check until it is
// queued, and join() waits for it, so every call posted has ended (run or dropped) by the time
// join() returns. Posting threads race the teardown, held by a signal wherever they are when it
// begins (often inside the post).
TEST(books, calls_posted_to_agents_have_all_ended_when_join_returns_while_posters_race_the_teardown) {
    posters_held_by_signal held;
    ASSERT_TRUE(held.installed);
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 30s : 15s);
    const long rounds = mailroom::test::sanitized ? 100 : 300;
    long done = 0;
    for (; done < rounds && std::chrono::steady_clock::now() < end; ++done) {
        auto env = std::make_unique<mailroom::environment>();
        auto pool = mailroom::thread_pool::make_dispatcher(*env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(*env, "own");
        constexpr int agents = 3;
        std::vector<mailroom::internal::context_ref> refs(agents);
        std::atomic<int> started{0};
        const mailroom::binder binders[agents] = {mailroom::binder{}, pool.bind(), own.bind()};
        for (int a = 0; a < agents; ++a) {
            mailroom::coop_options opts;
            opts.bind = binders[a];
            mailroom::test::add_probe(
                *env, [](mailroom::test::probe&) {}, std::move(opts), [&refs, &started, a](mailroom::test::probe&) {
                    refs[a] = mailroom::internal::current_context_ref();
                    started.fetch_add(1);
                });
        }
        ASSERT_TRUE(mailroom::test::eventually([&] { return started.load() == agents; }));
        std::atomic<long> ran{0}, ended{0};
        std::atomic<bool> stop_posting{false};
        constexpr int posters = 4;
        std::vector<long> posted(posters, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < posters; ++t)
            threads.emplace_back([&, t] {
                using call_t = mailroom::internal::posted_call_of<agent_call_probe>;
                // Until after join() returned: the agents' cores live as long as the core.
                for (long i = 0; !stop_posting.load(std::memory_order_relaxed); ++i) {
                    for (auto& r : refs) {
                        void* block = mailroom::internal::pool_allocate(sizeof(call_t));
                        mailroom::internal::post_to(r.core, r.gen, new (block) call_t(agent_call_probe(&ran, &ended)));
                        ++posted[t];
                    }
                    if (i % 64 == 0) std::this_thread::yield();  // let the agents keep up
                }
            });
        ASSERT_TRUE(mailroom::test::eventually([&] { return ran.load() > 200; }));
        ASSERT_TRUE(stop_while_posters_are_held(*env, threads));
        // Posts from now on find the agents gone and end at once.
        stop_posting = true;
        hold_posters = false;
        for (auto& t : threads) t.join();
        long total = 0;
        for (long p : posted) total += p;
        ASSERT_EQ(ended.load(), total) << "round " << done << ": " << total - ended.load()
                                       << " posted calls still queued after join() returned (ran " << ran.load()
                                       << ")";
        env.reset();
        ASSERT_EQ(ended.load(), total);
    }
    EXPECT_GT(done, 0);
}
