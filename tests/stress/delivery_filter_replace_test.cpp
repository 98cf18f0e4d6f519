// A delivery filter replaced over and over from one thread while several threads send: each
// message is judged by exactly one predicate, one that was installed at some moment during its
// send (the one before the send began, or one installed while it ran), and it is delivered
// exactly when that predicate accepted it. A replaced predicate is destroyed by the time the
// replacement returns and never runs after (a predicate that finds its own state destroyed, or
// that ASan finds freed, fails the test). Both kinds of mbox: an MPMC subscription and an
// agent's direct mbox.

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::probe;

struct msg {
    long id = 0;
};

struct board {
    explicit board(long ids, long filters)
        : judged_by(ids), judgements(ids), delivered(ids), lo(ids), hi(ids), dead(filters) {}
    std::vector<std::atomic<long>> judged_by, judgements, delivered, lo, hi;
    std::vector<std::atomic<bool>> dead;  // per predicate: its captured state was destroyed
    std::atomic<long> installed{0};       // the newest predicate whose installation returned
    std::atomic<long> ran_dead{0};        // a predicate ran after its state was destroyed
    std::atomic<long> old_alive{0};       // a replacement returned with the old state alive
};

struct alive {
    alive(board* b, long k) : b(b), k(k) {}
    alive(const alive&) = delete;
    ~alive() { b->dead[k] = true; }
    board* b;
    long k;
};

// Predicate k accepts the ids whose parity matches k's.
auto predicate(board& b, long k) {
    return [a = std::make_shared<alive>(&b, k)](const msg& m) {
        board& b = *a->b;
        if (b.dead[a->k].load()) b.ran_dead.fetch_add(1);
        b.judged_by[m.id].store(a->k, std::memory_order_relaxed);
        b.judgements[m.id].fetch_add(1, std::memory_order_relaxed);
        return (m.id + a->k) % 2 == 0;
    };
}

void run(bool direct) {
    const bool san = test::sanitized;
    const long senders = 3;
    const long per_sender = san ? 20'000 : 200'000;
    const long ids = senders * per_sender;
    const long max_filters = san ? 20'000 : 200'000;
    const auto deadline = std::chrono::steady_clock::now() + (san ? 8s : 3s);
    board b(ids, max_filters + 1);

    environment env;
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mbox topic = make_mpmc_mbox(env);
    std::atomic<probe*> agent{nullptr};
    std::atomic<long> delivered_total{0};
    mbox self = test::add_probe(
        env,
        [&](probe& p) {
            const mbox& from = direct ? p.direct_mbox() : topic;
            p.subscribe(from, [&](const msg& m) {
                b.delivered[m.id].fetch_add(1, std::memory_order_relaxed);
                delivered_total.fetch_add(1, std::memory_order_relaxed);
            });
            p.set_delivery_filter(from, predicate(b, 1));
            b.installed = 1;
            agent = &p;
        },
        {.bind = pool.bind_fifo(thread_pool::fifo::agent)});
    const mbox& to = direct ? self : topic;

    std::atomic<long> sending{senders};
    std::atomic<long> sent{0};
    std::vector<std::thread> threads;
    for (long t = 0; t < senders; ++t)
        threads.emplace_back([&, t] {
            for (long i = 0; i < per_sender; ++i) {
                if ((i & 255) == 0 && std::chrono::steady_clock::now() > deadline) break;
                const long id = t * per_sender + i;
                b.lo[id].store(b.installed.load());
                send<msg>(to, id);
                b.hi[id].store(b.installed.load());
                sent.fetch_add(1, std::memory_order_relaxed);
            }
            sending.fetch_sub(1);
        });
    long k = 1;
    while (sending.load() != 0 && k < max_filters) {
        ++k;
        agent.load()->set_delivery_filter(to, predicate(b, k));
        if (!b.dead[k - 1].load()) b.old_alive.fetch_add(1);
        b.installed = k;
    }
    for (auto& t : threads) t.join();

    // What the predicates accepted reaches the agent; then the books are read.
    long accepted = 0;
    for (long id = 0; id < ids; ++id) {
        const long by = b.judged_by[id].load();
        if (by != 0 && (id + by) % 2 == 0) ++accepted;
    }
    ASSERT_TRUE(test::eventually([&] { return delivered_total.load() >= accepted; }, 30s));
    env.stop();
    ASSERT_TRUE(test::join_within(env));

    EXPECT_EQ(b.ran_dead, 0);
    EXPECT_EQ(b.old_alive, 0);
    EXPECT_GT(k, 10) << "too few replacements to mean anything";
    long judged = 0, bad_count = 0, bad_range = 0, bad_delivery = 0;
    for (long id = 0; id < ids; ++id) {
        const long n = b.judgements[id].load();
        if (b.lo[id].load() == 0) {  // never sent
            bad_count += n != 0;
            continue;
        }
        ++judged;
        if (n != 1) {
            ++bad_count;
            continue;
        }
        const long by = b.judged_by[id].load();
        if (by < b.lo[id].load() || by > b.hi[id].load() + 1) ++bad_range;
        if (b.delivered[id].load() != ((id + by) % 2 == 0 ? 1 : 0)) ++bad_delivery;
    }
    EXPECT_EQ(judged, sent.load());
    EXPECT_EQ(bad_count, 0);
    EXPECT_EQ(bad_range, 0);
    EXPECT_EQ(bad_delivery, 0);
    auto s = env.stats();
    EXPECT_EQ(s.messages_sent, static_cast<std::uint64_t>(sent.load()));
    EXPECT_EQ(s.messages_filtered, static_cast<std::uint64_t>(sent.load() - accepted));
    EXPECT_EQ(s.messages_delivered, static_cast<std::uint64_t>(accepted));
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                   s.messages_cancelled + s.messages_dropped);
    std::printf("%s: %ld messages, %ld filters\n", direct ? "direct" : "mpmc", sent.load(), k);
}

TEST(delivery_filter_stress, each_send_sees_the_old_or_the_new_predicate_while_it_is_replaced_on_mpmc) {
    run(false);
}

TEST(delivery_filter_stress, each_send_sees_the_old_or_the_new_predicate_while_it_is_replaced_on_a_direct_mbox) {
    run(true);
}

}  // namespace
