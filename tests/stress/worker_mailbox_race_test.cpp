// The lost wake-up race of the worker mailbox: writers push exactly while the reader decides to
// park. A writer that misses the `parked` flag, or a reader that misses the push it re-checks
// for, leaves a message in the queue of a sleeping reader. Each writer has one message in flight
// at a time and waits for the reader's acknowledgement; a watchdog turns a message not picked
// up within a few seconds into a failure (and rescues the reader) instead of a hang.

#include <mailroom/queue/worker_mailbox.hpp>

#include <mailroom/core/clock.hpp>
#include <mailroom/queue/futex.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;
using namespace std::chrono_literals;
using mailroom::now_ns;

struct message : mpsc_node {
    int writer = 0;
};

struct race_params {
    int writers;
    std::chrono::nanoseconds spin;
};

struct alignas(cache_line) writer_slot {
    message msg;
    std::atomic<long> acked{0};
    long rounds = 0;
};

std::uint64_t xorshift(std::uint64_t& s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

// Varied tiny delays before a push, so that it lands at every point of the reader's way into
// futex_wait: before it announces `parked`, between that and its re-check, and during the sleep.
void tiny_delay(std::uint64_t& rng) {
    const std::uint64_t r = xorshift(rng);
    // Most delays are a few pause instructions: the reader's way from its last look at the
    // queue to futex_wait is a few dozen instructions long, and that is where a push gets lost.
    // A pause instruction costs tens of nanoseconds: the delays stay within the reader's few
    // hundred nanoseconds between its acknowledgement and its sleep, with a tail beyond it.
    std::uint64_t pauses = 0;
    switch (r % 10) {
        case 0:
        case 1:
        case 2:
        case 3:
            break;
        case 4:
        case 5:
        case 6:
            pauses = (r >> 8) % 4;
            break;
        case 7:
            pauses = (r >> 8) % 16;
            break;
        case 8:
            if ((r >> 8) % 16 == 0) std::this_thread::yield();
            pauses = (r >> 16) % 64;
            break;
        default:
            if ((r >> 8) % 256 == 0) std::this_thread::sleep_for(1us);
            pauses = (r >> 16) % 2;
            break;
    }
    for (std::uint64_t i = 0; i < pauses; ++i) cpu_relax();
}

class worker_mailbox_race : public ::testing::TestWithParam<race_params> {};

TEST_P(worker_mailbox_race, no_wake_up_is_lost) {
    const race_params p = GetParam();
    const long target_rounds = mailroom::test::rounds(2'000'000);
    // Bounded in time as well as rounds: on a loaded machine a round can cost a scheduler time
    // slice instead of a microsecond. The watchdog is generous so that a descheduled reader is
    // not mistaken for a lost wake-up; a real one never recovers, however long we wait.
    const auto time_limit = mailroom::test::sanitized ? 4s : 10s;
    const auto watchdog = mailroom::test::sanitized ? 20s : 10s;
    const long min_rounds = mailroom::test::sanitized ? 500 : 2'000;

    worker_mailbox box(p.spin);
    std::vector<std::unique_ptr<writer_slot>> slots;
    for (int w = 0; w < p.writers; ++w) {
        slots.push_back(std::make_unique<writer_slot>());
        slots.back()->msg.writer = w;
    }
    message stop_msg;
    stop_msg.writer = -1;

    std::atomic<bool> failed{false};
    std::atomic<long> failed_round{-1};
    std::atomic<bool> stop{false};

    std::thread reader([&] {
        std::uint64_t rng = 0x9e3779b97f4a7c15ull;
        for (;;) {
            bool stopping = false;
            while (mpsc_node* n = box.pop()) {
                auto* m = static_cast<message*>(n);
                if (m->writer < 0) {
                    stopping = true;
                    continue;
                }
                slots[m->writer]->acked.fetch_add(1, std::memory_order_release);
            }
            if (stopping) break;
            // Mostly an unbounded wait; sometimes a far deadline, for the timed futex path. Never
            // a near one: it would hide a lost wake-up.
            if (xorshift(rng) % 4 == 0)
                box.wait(now_ns() + 60'000'000'000);
            else
                box.wait();
        }
    });

    const auto start = std::chrono::steady_clock::now();
    const auto end = start + time_limit;
    std::vector<std::thread> writers;
    for (int w = 0; w < p.writers; ++w) {
        writers.emplace_back([&, w] {
            writer_slot& s = *slots[w];
            std::uint64_t rng = 0x2545F4914F6CDD1Dull + static_cast<std::uint64_t>(w) * 7919;
            const long my_target = target_rounds / p.writers;
            for (long r = 0; r < my_target && !stop.load(std::memory_order_relaxed); ++r) {
                if ((r & 255) == 0 && std::chrono::steady_clock::now() >= end) break;
                tiny_delay(rng);
                box.push(&s.msg);
                // Wait for the reader to take it: spin through a wake-up's latency so that the
                // next push follows the reader's acknowledgement closely, then yield (two cores,
                // several threads), checking the watchdog now and then.
                const auto give_up = std::chrono::steady_clock::now() + watchdog;
                for (unsigned i = 0; s.acked.load(std::memory_order_acquire) != r + 1; ++i) {
                    if (i < 4096) {
                        cpu_relax();
                        continue;
                    }
                    std::this_thread::yield();
                    if ((i & 255) == 0 && std::chrono::steady_clock::now() >= give_up) {
                        failed.store(true);
                        failed_round.store(r);
                        stop.store(true);
                        box.wake();  // rescue the reader so that the test ends
                        while (s.acked.load(std::memory_order_acquire) != r + 1) std::this_thread::yield();
                        break;
                    }
                }
                s.rounds = r + 1;
            }
        });
    }
    for (auto& t : writers) t.join();
    box.push(&stop_msg);
    reader.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    long rounds = 0;
    for (auto& s : slots) rounds += s->rounds;
    std::cout << "[ race     ] writers=" << p.writers << " spin=" << p.spin.count() << "ns rounds=" << rounds
              << " parks=" << box.parks() << " wakes=" << box.wakes() << " in " << secs << " s\n";
    RecordProperty("rounds", std::to_string(rounds));
    RecordProperty("parks", std::to_string(box.parks()));

    EXPECT_FALSE(failed.load()) << "lost wake-up: a message sat unread for " << watchdog.count()
                                << " s while the reader slept (round " << failed_round.load() << ")";
    EXPECT_GE(rounds, min_rounds) << "too few rounds to mean anything";
    // The race is only exercised if the reader really parks, often.
    EXPECT_GE(box.parks(), static_cast<std::uint64_t>(min_rounds / 20)) << "the reader hardly ever parked";
}

INSTANTIATE_TEST_SUITE_P(writers, worker_mailbox_race,
                         ::testing::Values(race_params{1, std::chrono::nanoseconds(0)},
                                           race_params{3, std::chrono::nanoseconds(0)},
                                           race_params{2, std::chrono::nanoseconds(300)}),
                         [](const ::testing::TestParamInfo<race_params>& i) {
                             return std::to_string(i.param.writers) + "_writers_spin_" +
                                    std::to_string(i.param.spin.count()) + "ns";
                         });

}  // namespace
