#include <mailroom/queue/worker_mailbox.hpp>

#include <mailroom/core/clock.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;
using namespace std::chrono_literals;
using mailroom::now_ns;
using mailroom::test::eventually;

struct note : mpsc_node {};

// A reader thread that calls wait() once and records when it returned. If wait() never returns
// the test fails and the thread is abandoned (detached, its state leaked) rather than hanging.
struct one_wait {
    struct state {
        worker_mailbox box;
        std::atomic<bool> returned{false};
        std::atomic<std::int64_t> returned_at{0};
        explicit state(std::chrono::nanoseconds spin) : box(spin) {}
    };
    std::shared_ptr<state> s;
    std::thread t;

    one_wait(std::chrono::nanoseconds spin, std::int64_t deadline) : s(std::make_shared<state>(spin)) {
        t = std::thread([st = s, deadline] {
            st->box.wait(deadline);
            st->returned_at.store(now_ns());
            st->returned.store(true, std::memory_order_release);
        });
    }
    bool returned_within(std::chrono::milliseconds limit) {
        return eventually([&] { return s->returned.load(std::memory_order_acquire); }, limit);
    }
    ~one_wait() {
        if (s->returned.load()) {
            t.join();
        } else {
            note* n = new note;  // last try to release it; leaked on purpose if it does not work
            s->box.push(n);
            if (eventually([&] { return s->returned.load(); }, 2s))
                t.join();
            else
                t.detach();
        }
    }
};

TEST(worker_mailbox, pop_returns_what_was_pushed_in_order) {
    worker_mailbox box;
    note a, b;
    EXPECT_FALSE(box.maybe_nonempty());
    box.push(&a);
    box.push_quiet(&b);
    EXPECT_TRUE(box.maybe_nonempty());
    EXPECT_EQ(box.pop(), &a);
    EXPECT_EQ(box.pop(), &b);
    EXPECT_EQ(box.pop(), nullptr);
    EXPECT_FALSE(box.maybe_nonempty());
}

TEST(worker_mailbox, wait_returns_at_once_when_something_is_queued) {
    worker_mailbox box(std::chrono::hours(1));  // a wait that spun would never end
    note a;
    box.push(&a);
    box.wait();
    EXPECT_EQ(box.parks(), 0u);
    EXPECT_EQ(box.pop(), &a);
}

TEST(worker_mailbox, a_spinning_reader_takes_a_push_without_parking_or_a_wake) {
    one_wait w(std::chrono::hours(1), -1);
    note a;
    w.s->box.push(&a);
    EXPECT_TRUE(w.returned_within(10s));
    EXPECT_EQ(w.s->box.parks(), 0u);
    EXPECT_EQ(w.s->box.wakes(), 0u);
    EXPECT_EQ(w.s->box.pop(), &a);
}

TEST(worker_mailbox, an_idle_reader_parks_after_its_bounded_spin) {
    one_wait w(1ms, -1);
    // Nobody pushes: the reader must give up spinning and park on its own.
    ASSERT_TRUE(eventually([&] { return w.s->box.parks() == 1; }, 10s)) << "the reader never parked";
    EXPECT_FALSE(w.s->returned.load()) << "wait() returned with nothing queued and no deadline";
    note n;
    w.s->box.push(&n);
    EXPECT_TRUE(w.returned_within(10s)) << "a push did not wake the parked reader";
    EXPECT_EQ(w.s->box.wakes(), 1u);
    EXPECT_EQ(w.s->box.pop(), &n);
}

TEST(worker_mailbox, wake_wakes_a_parked_reader) {
    one_wait w(0ns, -1);
    ASSERT_TRUE(eventually([&] { return w.s->box.parks() == 1; }, 10s));
    EXPECT_FALSE(w.s->returned.load());
    w.s->box.wake();
    EXPECT_TRUE(w.returned_within(10s)) << "wake() did not wake the parked reader";
    EXPECT_EQ(w.s->box.wakes(), 1u);
    EXPECT_FALSE(w.s->box.maybe_nonempty());
}

TEST(worker_mailbox, wake_if_parked_after_a_quiet_push_wakes_a_parked_reader) {
    one_wait w(0ns, -1);
    ASSERT_TRUE(eventually([&] { return w.s->box.parks() == 1; }, 10s));
    note n;
    w.s->box.push_quiet(&n);
    w.s->box.wake_if_parked();
    EXPECT_TRUE(w.returned_within(10s));
    EXPECT_EQ(w.s->box.pop(), &n);
}

TEST(worker_mailbox, wait_honours_a_deadline_while_parked) {
    const std::int64_t deadline = now_ns() + 30'000'000;
    one_wait w(0ns, deadline);
    ASSERT_TRUE(w.returned_within(20s)) << "wait() ignored its deadline";
    EXPECT_GE(w.s->returned_at.load(), deadline) << "wait() returned before its deadline";
    EXPECT_EQ(w.s->box.parks(), 1u);
}

TEST(worker_mailbox, a_deadline_cuts_a_long_spin_short) {
    const std::int64_t deadline = now_ns() + 30'000'000;
    one_wait w(std::chrono::hours(1), deadline);
    ASSERT_TRUE(w.returned_within(20s)) << "wait() spun past its deadline";
    EXPECT_GE(w.s->returned_at.load(), deadline);
}

TEST(worker_mailbox, a_deadline_in_the_past_returns_promptly) {
    one_wait w(std::chrono::hours(1), now_ns() - 1);
    EXPECT_TRUE(w.returned_within(20s));
}

// With a spin far longer than the test and a reader that is always busy popping, the reader
// never parks, so no writer may issue a single futex wake however many pushes it makes.
TEST(worker_mailbox, writers_do_not_signal_a_reader_that_is_awake) {
    const long pushes = mailroom::test::rounds(200000);
    worker_mailbox box(std::chrono::hours(1));
    std::atomic<long> received{0};
    std::atomic<bool> stop{false};
    std::thread reader([&] {
        while (!stop.load(std::memory_order_acquire)) {
            while (mpsc_node* n = box.pop()) {
                delete static_cast<note*>(n);
                received.fetch_add(1, std::memory_order_relaxed);
            }
            box.wait(now_ns() + 1'000'000);  // bounded so that `stop` is seen
        }
        while (mpsc_node* n = box.pop()) delete static_cast<note*>(n);
    });
    std::thread writers[2];
    for (auto& t : writers)
        t = std::thread([&] {
            for (long i = 0; i < pushes / 2; ++i) box.push(new note);
        });
    for (auto& t : writers) t.join();
    EXPECT_TRUE(eventually([&] { return received.load() == pushes; }, 30s));
    stop.store(true);
    reader.join();
    EXPECT_EQ(box.parks(), 0u);
    EXPECT_EQ(box.wakes(), 0u) << "a writer signalled a reader that was not parked";
}

// The converse: with no spin, a reader left idle between pushes parks every time, and every
// push to it must wake it (else this test would hang on its bounded waits and fail).
TEST(worker_mailbox, writers_signal_a_parked_reader) {
    worker_mailbox box(0ns);
    std::atomic<int> received{0};
    std::atomic<bool> stop{false};
    std::thread reader([&] {
        while (!stop.load(std::memory_order_acquire)) {
            while (box.pop()) received.fetch_add(1, std::memory_order_release);
            box.wait(now_ns() + 10'000'000'000);
        }
    });
    std::vector<note> notes(20);
    for (int i = 0; i < 20; ++i) {
        // The reader parked once before the first push and once after each message since.
        ASSERT_TRUE(eventually([&] { return box.parks() >= static_cast<std::uint64_t>(i) + 1; }, 10s))
            << "the reader did not park before push " << i;
        box.push(&notes[i]);
        ASSERT_TRUE(eventually([&] { return received.load(std::memory_order_acquire) == i + 1; }, 5s))
            << "push " << i << " did not wake the parked reader";
    }
    // Each push found the reader parked; its 10 s deadline never passed in between.
    EXPECT_EQ(box.wakes(), 20u);
    stop.store(true);
    box.wake();
    reader.join();
}

}  // namespace
