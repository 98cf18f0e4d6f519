// The books of sends under concurrency: every message counted sent ends in exactly one outcome
// (delivered, lost, ignored, discarded, cancelled), a snapshot taken while messages flow never
// shows more outcomes than sends, and once join() returns the books balance exactly, even while
// senders are still racing the teardown. Senders use every path that counts: an agent's direct
// mbox, a session inbox, and MPMC mboxes with agent and session subscribers.

#include <mailroom/agent/session.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

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
    return s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded + s.messages_cancelled;
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
        const auto st = r.env->stats();  // the producers may still be running
        for (auto& p : producers) p.join();
        for (auto& f : refused) EXPECT_TRUE(f.load());
        ASSERT_EQ(st.messages_sent, outcomes(st))
            << "round " << done << ": delivered " << st.messages_delivered << ", lost " << st.messages_lost
            << ", ignored " << st.messages_ignored << ", discarded " << st.messages_discarded << ", cancelled "
            << st.messages_cancelled;
        // Nothing counted after join() either (the core is freed here).
        const auto after = r.env->stats();
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
    const auto end = std::chrono::steady_clock::now() + (mailroom::test::sanitized ? 3s : 1500ms);
    while (std::chrono::steady_clock::now() < end && snapshots < 200'000) {
        const auto st = r.env->stats();
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
    const auto st = r.env->stats();
    EXPECT_EQ(st.messages_sent, outcomes(st));
}
