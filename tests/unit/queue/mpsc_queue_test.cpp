#include <mailroom/queue/mpsc_queue.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;

struct item : mpsc_node {
    int producer = 0;
    long seq = 0;
};

item* as_item(mpsc_node* n) { return static_cast<item*>(n); }

TEST(mpsc_queue, a_new_queue_is_empty) {
    mpsc_queue q;
    EXPECT_FALSE(q.maybe_nonempty());
    EXPECT_EQ(q.pop(), nullptr);
    EXPECT_FALSE(q.maybe_nonempty());
}

TEST(mpsc_queue, pops_in_push_order) {
    mpsc_queue q;
    std::vector<item> items(10);
    for (int i = 0; i < 10; ++i) {
        items[i].seq = i;
        q.push(&items[i]);
    }
    for (int i = 0; i < 10; ++i) {
        mpsc_node* n = q.pop();
        ASSERT_NE(n, nullptr) << "at " << i;
        EXPECT_EQ(as_item(n)->seq, i);
    }
    EXPECT_EQ(q.pop(), nullptr);
    EXPECT_FALSE(q.maybe_nonempty());
}

// The case of the fixed bug: with A popped and B linked behind it, head_ is B (not the stub) and
// B is still a message.
TEST(mpsc_queue, a_node_left_alone_at_the_head_is_not_empty) {
    mpsc_queue q;
    item a, b;
    q.push(&a);
    q.push(&b);
    ASSERT_EQ(q.pop(), &a);
    EXPECT_TRUE(q.maybe_nonempty()) << "B is queued behind the popped A";
    ASSERT_EQ(q.pop(), &b);
    EXPECT_FALSE(q.maybe_nonempty());
    EXPECT_EQ(q.pop(), nullptr);
}

TEST(mpsc_queue, empties_and_refills_many_times) {
    // The stub goes back into the queue every time it drains; nodes are reused across rounds.
    mpsc_queue q;
    item a, b, c;
    for (int round = 0; round < 100; ++round) {
        q.push(&a);
        EXPECT_TRUE(q.maybe_nonempty());
        ASSERT_EQ(q.pop(), &a);
        EXPECT_FALSE(q.maybe_nonempty());
        q.push(&b);
        q.push(&c);
        ASSERT_EQ(q.pop(), &b);
        EXPECT_TRUE(q.maybe_nonempty());
        q.push(&a);
        ASSERT_EQ(q.pop(), &c);
        EXPECT_TRUE(q.maybe_nonempty());
        ASSERT_EQ(q.pop(), &a);
        EXPECT_FALSE(q.maybe_nonempty());
        EXPECT_EQ(q.pop(), nullptr);
    }
}

// Single-threaded, every push is complete, so maybe_nonempty() must be exact after every step of
// a random push/pop sequence, and pops must come out in push order.
TEST(mpsc_queue, maybe_nonempty_is_exact_through_random_push_pop_sequences) {
    mpsc_queue q;
    std::vector<item> pool(64);
    std::deque<item*> model;
    std::vector<item*> free_list;
    for (auto& i : pool) free_list.push_back(&i);
    std::uint64_t rng = 88172645463325252ull;
    auto next = [&] {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
    };
    for (int step = 0; step < 20000; ++step) {
        bool do_push = !free_list.empty() && (model.empty() || next() % 3 != 0);
        if (do_push) {
            item* it = free_list.back();
            free_list.pop_back();
            it->seq = step;
            q.push(it);
            model.push_back(it);
        } else {
            mpsc_node* n = q.pop();
            if (model.empty()) {
                ASSERT_EQ(n, nullptr) << "step " << step;
            } else {
                ASSERT_EQ(n, model.front()) << "step " << step;
                model.pop_front();
                free_list.push_back(as_item(n));
            }
        }
        ASSERT_EQ(q.maybe_nonempty(), !model.empty()) << "step " << step << ", queued " << model.size();
    }
}

// Several producers: everything arrives exactly once, each producer's nodes in its order, and
// whenever maybe_nonempty() says "empty", every push that had completed before the question
// has already been popped.
TEST(mpsc_queue, several_producers_keep_their_order_and_nothing_is_lost) {
    constexpr int producers = 4;
    const long per_producer = mailroom::test::rounds(200000);
    mpsc_queue q;
    std::vector<std::unique_ptr<item[]>> items;
    for (int p = 0; p < producers; ++p) {
        items.push_back(std::make_unique<item[]>(per_producer));
        for (long i = 0; i < per_producer; ++i) {
            items[p][i].producer = p;
            items[p][i].seq = i;
        }
    }
    std::atomic<long> completed{0};  // pushes that have returned
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            for (long i = 0; i < per_producer; ++i) {
                q.push(&items[p][i]);
                completed.fetch_add(1, std::memory_order_release);
                if ((i & 1023) == 0) std::this_thread::yield();
            }
        });
    }
    go.store(true, std::memory_order_release);

    std::vector<long> next_seq(producers, 0);
    long popped = 0;
    long empty_answers = 0;
    long order_errors = 0;
    long lost_answers = 0;
    const long total = producers * per_producer;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (popped < total && std::chrono::steady_clock::now() < give_up) {
        const long done_before = completed.load(std::memory_order_acquire);
        if (!q.maybe_nonempty()) {
            ++empty_answers;
            if (popped < done_before) ++lost_answers;  // a completed push not yet popped
            std::this_thread::yield();
            continue;
        }
        mpsc_node* n = q.pop();
        if (!n) continue;  // a push is mid-way
        item* it = as_item(n);
        if (it->seq != next_seq[it->producer]) ++order_errors;
        next_seq[it->producer] = it->seq + 1;
        ++popped;
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(popped, total);
    EXPECT_EQ(order_errors, 0);
    EXPECT_EQ(lost_answers, 0) << "maybe_nonempty() said empty with a completed push still queued";
    EXPECT_EQ(q.pop(), nullptr);
    EXPECT_FALSE(q.maybe_nonempty());
    for (int p = 0; p < producers; ++p) EXPECT_EQ(next_seq[p], per_producer) << "producer " << p;
    RecordProperty("empty_answers", std::to_string(empty_answers));
}

}  // namespace
