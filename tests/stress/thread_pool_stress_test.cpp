// A thread pool under load: producer threads push to many strands while another thread keeps
// binding and releasing contexts (strands are recycled under live traffic). Every context must
// run serially, see each producer's demands in order and without gaps, and every demand must be
// consumed exactly once, run or discarded.

#include <mailroom/dispatch/thread_pool_impl.hpp>

#include <mailroom/queue/futex.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using namespace mailroom;
using namespace mailroom::internal;
using namespace std::chrono_literals;

constexpr int producers = 3;
constexpr int slots = 24;

/// One bound context (one binding's lifetime).
struct context {
    std::atomic<int> in_flight{0};
    std::atomic<long> ran{0};
    std::array<std::atomic<long>, producers> expected{};  // next seq per producer, on the context
    std::array<long, producers> sent{};                   // next seq per producer, on the producer
};

struct failures {
    std::atomic<long> overlaps{0};
    std::atomic<long> reorders{0};
    std::atomic<long> discarded{0};
    std::atomic<long> ran{0};
};

struct probe_demand final : demand {
    context* ctx = nullptr;
    failures* fail = nullptr;
    int producer = 0;
    long seq = 0;

    static void exec(demand* d, demand_mode mode) noexcept {
        auto* self = static_cast<probe_demand*>(d);
        if (mode == demand_mode::discard) {
            self->fail->discarded.fetch_add(1, std::memory_order_relaxed);
        } else {
            context& c = *self->ctx;
            if (c.in_flight.fetch_add(1, std::memory_order_acq_rel) != 0)
                self->fail->overlaps.fetch_add(1, std::memory_order_relaxed);
            auto& exp = c.expected[self->producer];
            if (exp.load(std::memory_order_relaxed) != self->seq)
                self->fail->reorders.fetch_add(1, std::memory_order_relaxed);
            exp.store(self->seq + 1, std::memory_order_relaxed);
            for (long i = 0, n = self->seq % 64; i < n; ++i) cpu_relax();
            c.ran.fetch_add(1, std::memory_order_relaxed);
            c.in_flight.fetch_sub(1, std::memory_order_acq_rel);
            self->fail->ran.fetch_add(1, std::memory_order_relaxed);
        }
        delete self;
    }
};

/// A slot: the context currently bound there. Producers and the churn thread share it.
struct slot {
    std::mutex lock;
    std::shared_ptr<binder_impl> binder;
    const void* coop_key = nullptr;
    binding bound;
    context* ctx = nullptr;
};

TEST(thread_pool_stress, serial_and_ordered_under_churn) {
    // The run lasts `time_limit`, longer if the machine is so loaded that the rebinding thread or
    // the producers have not yet done what the test is about (rebinds under live traffic); never
    // longer than `hard_limit` (or than their iteration bounds).
    const auto time_limit = mailroom::test::sanitized ? 4s : 5s;
    const auto hard_limit = 60s;
    const long max_per_producer = mailroom::test::rounds(2'000'000);
    const long max_rebinds = 10'000'000;
    const long min_rebinds = mailroom::test::sanitized ? 20 : 100;
    const long min_pushed = mailroom::test::sanitized ? 5'000 : 50'000;

    thread_pool::params params;
    params.threads = 3;
    params.order = thread_pool::fifo::agent;
    params.max_demands_at_once = 8;
    params.spin = 2us;
    auto disp = make_thread_pool("stress", params);

    static const int coop_keys[4] = {};
    std::deque<std::unique_ptr<context>> contexts;  // every context ever bound; freed at the end
    std::mutex contexts_lock;
    auto new_context = [&] {
        std::lock_guard g(contexts_lock);
        contexts.push_back(std::make_unique<context>());
        return contexts.back().get();
    };

    // Odd slots: one strand per agent. Even slots: four cooperations, so several contexts share
    // a strand (and the strand outlives any one of them).
    std::vector<std::unique_ptr<slot>> table;
    for (int i = 0; i < slots; ++i) {
        auto s = std::make_unique<slot>();
        if (i % 2) {
            s->binder = disp->make_binder();
            s->coop_key = s.get();
        } else {
            s->binder = bind_fifo(*disp, thread_pool::fifo::cooperation);
            s->coop_key = &coop_keys[(i / 2) % 4];
        }
        s->ctx = new_context();
        s->bound = s->binder->prepare(s->coop_key);
        table.push_back(std::move(s));
    }

    failures fail;
    std::atomic<bool> stop{false};
    std::atomic<long> pushed{0};
    std::atomic<long> rebinds{0};
    const auto start = std::chrono::steady_clock::now();
    const auto end = start + time_limit;
    const auto hard_end = start + hard_limit;

    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            std::uint64_t rng = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(p + 1);
            for (long i = 0; i < max_per_producer && !stop.load(std::memory_order_relaxed); ++i) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                slot& s = *table[rng % slots];
                auto* d = new probe_demand;
                d->execute = &probe_demand::exec;
                d->fail = &fail;
                d->producer = p;
                // Under the slot's lock, so that the sequence numbers of one context follow the
                // order of the pushes into its queue.
                std::lock_guard g(s.lock);
                d->ctx = s.ctx;
                d->seq = s.ctx->sent[p]++;
                s.bound.queue->push(d);
                pushed.fetch_add(1, std::memory_order_relaxed);
            }
        });
    }
    // Churn: release a slot's context and bind a fresh one in its place, while demands of the
    // old one may still be queued on the strand that the new binding may well reuse. It decides
    // when the run ends (the producers stop with it).
    threads.emplace_back([&] {
        std::uint64_t rng = 12345;
        for (long n = 0; n < max_rebinds; ++n) {
            const auto now = std::chrono::steady_clock::now();
            if (now >= hard_end) break;
            if (now >= end && n >= min_rebinds && pushed.load(std::memory_order_relaxed) >= min_pushed) break;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            slot& s = *table[rng % slots];
            context* fresh = new_context();
            std::lock_guard g(s.lock);
            s.binder->release(s.bound, s.coop_key);
            s.bound = s.binder->prepare(s.coop_key);
            s.ctx = fresh;
            rebinds.fetch_add(1, std::memory_order_relaxed);
            if ((rng & 7) == 0) std::this_thread::sleep_for(50us);
        }
        stop.store(true);
    });
    for (auto& t : threads) t.join();

    const long total = pushed.load();
    const bool drained = mailroom::test::eventually([&] { return fail.ran.load() == total; }, 60s);
    for (auto& s : table) s->binder->release(s->bound, s->coop_key);
    disp->join();
    disp.reset();

    std::cout << "[ stress   ] pushed=" << total << " rebinds=" << rebinds.load() << " contexts=" << contexts.size()
              << "\n";
    EXPECT_TRUE(drained) << fail.ran.load() << " of " << total << " demands ran";
    EXPECT_EQ(fail.ran.load() + fail.discarded.load(), total) << "demands lost or run twice";
    EXPECT_EQ(fail.overlaps.load(), 0) << "demands of one context ran at the same time";
    EXPECT_EQ(fail.reorders.load(), 0) << "a producer's demands to one context were reordered or lost";
    long ran_by_contexts = 0;
    for (auto& c : contexts) {
        ran_by_contexts += c->ran.load();
        for (int p = 0; p < producers; ++p) EXPECT_EQ(c->expected[p].load(), c->sent[p]);
    }
    EXPECT_EQ(ran_by_contexts, total);
    // Only fail when the hard limit passed first: nothing moved for a minute.
    EXPECT_GE(total, min_pushed) << "too little load to mean anything";
    EXPECT_GE(rebinds.load(), min_rebinds) << "too few rebinds under traffic to mean anything";
}

}  // namespace
