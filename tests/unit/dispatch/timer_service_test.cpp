#include <mailroom/dispatch/timer_service.hpp>

#include <mailroom/core/clock.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <time.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace mailroom::internal;
using namespace std::chrono_literals;
using mailroom::now_ns;
using mailroom::test::eventually;

/// Counts its firings and its destruction; deletes itself when the last reference goes.
class test_timer final : public timer_entry {
public:
    struct record {
        std::atomic<int> fired{0};
        std::atomic<std::int64_t> first_fire_ns{0};
        std::atomic<int> destroyed{0};
        const timer_service* svc = nullptr;      // set: fire() records the wheel's tick
        std::atomic<std::uint64_t> fired_tick{0};  // the tick of the first firing
    };

    static test_timer* make(record& r, std::int64_t deadline, std::int64_t period = 0) {
        auto* t = new test_timer(r);
        t->deadline_ns = deadline;
        t->period_ns = period;
        return t;
    }

private:
    explicit test_timer(record& r) : rec_(r) {}
    fire_result fire() noexcept override {
        std::int64_t zero = 0;
        rec_.first_fire_ns.compare_exchange_strong(zero, now_ns());
        if (rec_.svc && rec_.fired.load() == 0) rec_.fired_tick.store(rec_.svc->current_tick());
        rec_.fired.fetch_add(1);
        return fire_result::queued;
    }
    void destroy() noexcept override {
        rec_.destroyed.fetch_add(1);
        delete this;
    }
    record& rec_;
};

constexpr std::int64_t ms(std::int64_t n) { return n * 1'000'000; }

bool each_fired_once(const std::vector<std::unique_ptr<test_timer::record>>& records) {
    for (auto& r : records)
        if (r->fired.load() != 1) return false;
    return true;
}

// CPU time this thread has used, in ns.
std::int64_t thread_cpu_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

TEST(timer_service, a_one_shot_fires_once_and_not_before_its_deadline) {
    timer_service svc;
    test_timer::record r;
    const std::int64_t deadline = now_ns() + ms(30);
    auto* t = test_timer::make(r, deadline);
    ASSERT_TRUE(svc.arm(t));
    ASSERT_TRUE(eventually([&] { return r.fired.load() == 1; }, 10s));
    EXPECT_GE(r.first_fire_ns.load(), deadline) << "fired " << (deadline - r.first_fire_ns.load()) << " ns early";
    // The service dropped its (only) reference once it fired: the entry is gone and never fires again.
    EXPECT_TRUE(eventually([&] { return r.destroyed.load() == 1; }, 10s));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(r.fired.load(), 1);
    auto s = svc.stats();
    EXPECT_EQ(s.armed, 1u);
    EXPECT_EQ(s.fired, 1u);
    EXPECT_EQ(s.cancelled, 0u);
    EXPECT_EQ(s.pending, 0u);
}

TEST(timer_service, timers_fire_in_deadline_order_not_arming_order) {
    // A round proves the order only if the early timer was armed before the late one's
    // deadline: a test thread preempted past it between the two arms tries again.
    for (int round = 0;; ++round) {
        ASSERT_LT(round, 20) << "the second arm() never came within 60 ms of the first";
        test_timer::record late, early;
        timer_service svc;
        const std::int64_t now = now_ns();
        ASSERT_TRUE(svc.arm(test_timer::make(late, now + ms(60))));
        ASSERT_TRUE(svc.arm(test_timer::make(early, now + ms(15))));
        const bool in_time = now_ns() < now + ms(60);
        ASSERT_TRUE(eventually([&] { return late.fired.load() == 1 && early.fired.load() == 1; }, 10s));
        if (!in_time) continue;
        EXPECT_LT(early.first_fire_ns.load(), late.first_fire_ns.load());
        EXPECT_GE(late.first_fire_ns.load(), now + ms(60));
        return;
    }
}

TEST(timer_service, a_timer_beyond_the_first_wheel_level_fires_after_its_deadline) {
    // 100 µs ticks: 300 ms is about 3,000 ticks, past level 0's 256 slots, so it cascades.
    timer_service svc(100us);
    test_timer::record r;
    const std::int64_t deadline = now_ns() + ms(300);
    ASSERT_TRUE(svc.arm(test_timer::make(r, deadline)));
    ASSERT_TRUE(eventually([&] { return r.fired.load() == 1; }, 10s));
    EXPECT_GE(r.first_fire_ns.load(), deadline);
}

TEST(timer_service, every_wheel_level_cascades_in_order) {
    // A 1 µs tick puts 0.2 ms in level 0, 2..60 ms in level 1 (256 ticks and up) and 70..140 ms
    // in level 2 (65,536 ticks and up): each must come down through the cascades and fire after
    // its deadline, in deadline order, with many entries sharing slots.
    const std::int64_t delays_us[] = {200, 2'000, 9'000, 30'000, 60'000, 70'000, 100'000, 140'000};
    constexpr int per_delay = 50;
    // Before the service: its thread releases (and counts in) the records after they fired.
    std::vector<std::unique_ptr<test_timer::record>> records;
    std::vector<std::int64_t> deadlines;
    timer_service svc(std::chrono::microseconds(1));
    const std::int64_t now = now_ns();
    for (std::int64_t d : delays_us)
        for (int i = 0; i < per_delay; ++i) {
            records.push_back(std::make_unique<test_timer::record>());
            deadlines.push_back(now + d * 1'000);
            ASSERT_TRUE(svc.arm(test_timer::make(*records.back(), deadlines.back())));
        }
    ASSERT_TRUE(eventually([&] { return each_fired_once(records); }, 20s));
    for (std::size_t i = 0; i < records.size(); ++i) {
        EXPECT_GE(records[i]->first_fire_ns.load(), deadlines[i]) << "timer " << i << " fired early";
        if (i >= per_delay) {  // each group after every timer of the group before
            EXPECT_GE(records[i]->first_fire_ns.load(), records[i - per_delay]->first_fire_ns.load()) << i;
        }
    }
    EXPECT_EQ(svc.stats().fired, records.size());
}

TEST(timer_service, a_periodic_timer_fires_repeatedly_until_cancelled) {
    timer_service svc;
    test_timer::record r;
    auto* t = test_timer::make(r, now_ns() + ms(2), ms(2));
    t->add_ref();  // ours, to cancel it
    ASSERT_TRUE(svc.arm(t));
    ASSERT_TRUE(eventually([&] { return r.fired.load() >= 5; }, 10s)) << "fired " << r.fired.load();
    EXPECT_TRUE(t->cancel());
    EXPECT_FALSE(t->cancel()) << "a second cancel() claims to have cancelled it again";
    // It leaves the wheel at its next due tick (at most one firing already under way may land).
    ASSERT_TRUE(eventually([&] { return svc.stats().pending == 0; }, 10s));
    const int fired = r.fired.load();
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(r.fired.load(), fired) << "a cancelled periodic timer kept firing";
    EXPECT_EQ(r.destroyed.load(), 0);  // we still hold a reference
    t->release();
    EXPECT_EQ(r.destroyed.load(), 1);
    auto s = svc.stats();
    EXPECT_EQ(s.armed, 1u);
    EXPECT_EQ(s.fired, static_cast<std::uint64_t>(fired));
    EXPECT_EQ(s.cancelled, 1u);
}

TEST(timer_service, cancel_before_the_deadline_prevents_the_firing) {
    // A round proves something only if cancel() returned before the deadline: a test thread
    // preempted past it between arm() and cancel() tries again.
    for (int round = 0;; ++round) {
        ASSERT_LT(round, 20) << "cancel() never returned within 40 ms of arm()";
        test_timer::record r;
        timer_service svc;
        const std::int64_t deadline = now_ns() + ms(40);
        auto* t = test_timer::make(r, deadline);
        t->add_ref();
        ASSERT_TRUE(svc.arm(t));
        EXPECT_TRUE(t->cancel());
        const bool in_time = now_ns() < deadline;
        EXPECT_TRUE(t->cancelled());
        ASSERT_TRUE(eventually([&] { return svc.stats().pending == 0; }, 10s));
        if (!in_time) {
            t->release();
            continue;
        }
        while (now_ns() < deadline + ms(20)) std::this_thread::sleep_for(5ms);
        EXPECT_EQ(r.fired.load(), 0);
        EXPECT_EQ(svc.stats().cancelled, 1u);
        EXPECT_EQ(svc.stats().fired, 0u);
        t->release();
        EXPECT_EQ(r.destroyed.load(), 1);
        return;
    }
}

TEST(timer_service, begin_delivery_refuses_once_cancelled) {
    test_timer::record r;
    auto* t = test_timer::make(r, 0);
    ASSERT_TRUE(t->begin_delivery());
    t->end_delivery();
    t->cancel();
    EXPECT_FALSE(t->begin_delivery()) << "a delivery began after cancel() returned";
    t->release();
    EXPECT_EQ(r.destroyed.load(), 1);
}

TEST(timer_service, cancel_waits_for_a_delivery_running_on_another_thread) {
    test_timer::record r;
    auto* t = test_timer::make(r, 0);
    std::atomic<bool> in_delivery{false};
    std::atomic<bool> delivery_done{false};
    std::thread receiver([&] {
        ASSERT_TRUE(t->begin_delivery());
        in_delivery.store(true);
        std::this_thread::sleep_for(50ms);  // a handler still running
        delivery_done.store(true);
        t->end_delivery();
    });
    ASSERT_TRUE(eventually([&] { return in_delivery.load(); }, 10s));
    EXPECT_TRUE(t->cancel());
    EXPECT_TRUE(delivery_done.load()) << "cancel() returned while a delivery was still running";
    receiver.join();
    EXPECT_FALSE(t->begin_delivery());
    t->release();
}

TEST(timer_service, cancel_from_inside_a_delivery_does_not_wait_for_itself) {
    test_timer::record r;
    auto* t = test_timer::make(r, 0);
    auto done = std::async(std::launch::async, [t] {
        bool began = t->begin_delivery();
        bool cancelled = t->cancel();  // would wait for itself forever without the in-delivery check
        t->end_delivery();
        return began && cancelled;
    });
    ASSERT_EQ(done.wait_for(10s), std::future_status::ready) << "cancel() inside a delivery deadlocked";
    EXPECT_TRUE(done.get());
    EXPECT_TRUE(t->cancelled());
    EXPECT_FALSE(t->begin_delivery());
    t->release();
}

TEST(timer_service, cancel_from_inside_a_delivery_of_another_timer_still_waits) {
    // The "inside a delivery" exemption is per timer: a handler of timer A cancelling timer B
    // must still wait for B's delivery on another thread.
    test_timer::record ra, rb;
    auto* a = test_timer::make(ra, 0);
    auto* b = test_timer::make(rb, 0);
    std::atomic<bool> b_running{false};
    std::atomic<bool> b_done{false};
    std::thread other([&] {
        ASSERT_TRUE(b->begin_delivery());
        b_running.store(true);
        std::this_thread::sleep_for(50ms);
        b_done.store(true);
        b->end_delivery();
    });
    ASSERT_TRUE(eventually([&] { return b_running.load(); }, 10s));
    ASSERT_TRUE(a->begin_delivery());
    b->cancel();
    EXPECT_TRUE(b_done.load()) << "cancel() of another timer did not wait for its delivery";
    a->end_delivery();
    other.join();
    a->release();
    b->release();
}

TEST(timer_service, stop_releases_every_armed_entry) {
    test_timer::record one_shots, periodics, late;
    {
        timer_service svc;
        const std::int64_t now = now_ns();
        for (int i = 0; i < 50; ++i) ASSERT_TRUE(svc.arm(test_timer::make(one_shots, now + ms(3'600'000) + i)));
        for (int i = 0; i < 20; ++i) ASSERT_TRUE(svc.arm(test_timer::make(periodics, now + ms(5'000), ms(1'000))));
        for (int i = 0; i < 10; ++i) ASSERT_TRUE(svc.arm(test_timer::make(one_shots, now + ms(i))));
        ASSERT_TRUE(eventually([&] { return svc.stats().fired == 10; }, 10s));
        svc.stop();
        EXPECT_EQ(one_shots.destroyed.load(), 60) << "stop() left one-shot entries armed";
        EXPECT_EQ(periodics.destroyed.load(), 20) << "stop() left periodic entries armed";
        auto s = svc.stats();
        EXPECT_EQ(s.armed, 80u);
        EXPECT_EQ(s.fired, 10u);
        EXPECT_EQ(s.pending, 0u);
        // Arming a stopped service releases the entry at once.
        EXPECT_FALSE(svc.arm(test_timer::make(late, now)));
        EXPECT_EQ(late.destroyed.load(), 1);
        svc.stop();  // idempotent
    }
    EXPECT_EQ(one_shots.fired.load(), 10);
    EXPECT_EQ(periodics.fired.load(), 0);
}

TEST(timer_service, many_timers_from_several_threads_all_fire_once) {
    timer_service svc;
    test_timer::record r;
    constexpr int threads = 4;
    const int per_thread = static_cast<int>(mailroom::test::rounds(2000));
    std::vector<std::thread> ts;
    for (int k = 0; k < threads; ++k)
        ts.emplace_back([&, k] {
            for (int i = 0; i < per_thread; ++i)
                svc.arm(test_timer::make(r, now_ns() + ms((i * 7 + k) % 50)));
        });
    for (auto& t : ts) t.join();
    ASSERT_TRUE(eventually([&] { return r.destroyed.load() == threads * per_thread; }, 20s))
        << r.fired.load() << " fired, " << r.destroyed.load() << " released";
    EXPECT_EQ(r.fired.load(), threads * per_thread);
    auto s = svc.stats();
    EXPECT_EQ(s.armed, static_cast<std::uint64_t>(threads * per_thread));
    EXPECT_EQ(s.fired, s.armed);
    EXPECT_EQ(s.pending, 0u);
}

TEST(timer_service, a_timer_due_on_a_cascade_boundary_fires_on_its_own_tick) {
    // 10 µs ticks: a level-1 slot covers 256 ticks (2.56 ms), a level-2 slot 65,536 (655 ms).
    // Timers due exactly on the first tick of such a slot come down in that tick's cascade and
    // must fire in that very tick, not the next; their neighbours one tick either side too.
    const auto tick = std::chrono::microseconds(10);
    std::vector<std::unique_ptr<test_timer::record>> records;  // before the service (see above)
    std::vector<std::uint64_t> due;
    timer_service svc(tick);
    const std::int64_t tick_ns = svc.tick().count();
    const auto round_up = [](std::uint64_t t, std::uint64_t to) { return (t + to - 1) / to * to; };
    const std::uint64_t now_tick = static_cast<std::uint64_t>((now_ns() - svc.origin_ns()) / tick_ns);
    // About 200 ms ahead: still in level 1 for a test thread preempted 150 ms before it arms
    // (20 ms was not: an entry armed past its due tick fires on a later one).
    const std::uint64_t level1 = round_up(now_tick + 20'000, 256);
    const std::uint64_t level2 = round_up(now_tick + 70'000, 65'536);  // 0.7 to 1.4 s ahead: level 2
    for (std::uint64_t boundary : {level1, level1 + 256, level1 + 512, level2})
        for (std::uint64_t t : {boundary - 1, boundary, boundary + 1}) {
            records.push_back(std::make_unique<test_timer::record>());
            records.back()->svc = &svc;
            due.push_back(t);
            ASSERT_TRUE(svc.arm(test_timer::make(*records.back(), svc.origin_ns() + static_cast<std::int64_t>(t) * tick_ns)));
        }
    ASSERT_TRUE(eventually([&] { return each_fired_once(records); }, 20s));
    for (std::size_t i = 0; i < records.size(); ++i)
        EXPECT_EQ(records[i]->fired_tick.load(), due[i])
            << "the timer due at tick " << due[i] << " fired at tick " << records[i]->fired_tick.load()
            << (due[i] % 256 == 0 ? " (a cascade boundary)" : "");
}

TEST(timer_service, a_cancelled_timer_leaves_the_wheel_long_before_its_deadline) {
    // Cancelled timers due in an hour must not stay in the wheel (holding what they carry) for
    // an hour: each leaves within a sweep of the wheel's first level (256 ticks), and with it
    // the wheel's reference goes.
    test_timer::record r;
    timer_service svc;
    constexpr int n = 1000;
    std::vector<test_timer*> ts;
    for (int i = 0; i < n; ++i) {
        auto* t = test_timer::make(r, now_ns() + ms(3'600'000) + i);
        t->add_ref();  // ours
        ASSERT_TRUE(svc.arm(t));
        ts.push_back(t);
    }
    ASSERT_TRUE(eventually([&] { return svc.stats().pending == static_cast<std::uint64_t>(n); }, 10s));
    for (auto* t : ts) {
        EXPECT_TRUE(t->cancel());
        t->release();
    }
    EXPECT_TRUE(eventually([&] { return r.destroyed.load() == n; }, 10s))
        << r.destroyed.load() << " of " << n << " cancelled entries were freed";
    auto s = svc.stats();
    EXPECT_EQ(s.pending, 0u);
    EXPECT_EQ(s.cancelled, static_cast<std::uint64_t>(n));
    EXPECT_EQ(r.fired.load(), 0);
}

TEST(timer_service, an_arm_racing_stop_releases_its_entry_and_says_so) {
    // The arming thread is held inside arm() between its check of the stopped flag and its
    // push until stop() has returned: the entry must still be released (not left in a queue
    // nobody drains, holding whatever it holds), and arm() must report that it did not arm.
    struct hold {
        std::atomic<bool> inside{false};
        std::atomic<bool> go{false};
    } h;
    test_timer::record r;
    timer_service svc;
    svc.set_arm_hook(
        [](void* p) {
            auto& h = *static_cast<hold*>(p);
            h.inside.store(true);
            eventually([&] { return h.go.load(); }, 20s);
        },
        &h);
    auto armed = std::async(std::launch::async, [&] { return svc.arm(test_timer::make(r, now_ns() + ms(10))); });
    ASSERT_TRUE(eventually([&] { return h.inside.load(); }, 10s));
    svc.stop();
    h.go.store(true);
    ASSERT_EQ(armed.wait_for(20s), std::future_status::ready) << "arm() hung after stop()";
    EXPECT_FALSE(armed.get()) << "arm() said it armed a stopped service";
    EXPECT_EQ(r.destroyed.load(), 1) << "the entry armed while stop() ran was left in the stopped queue";
    EXPECT_EQ(r.fired.load(), 0);
    EXPECT_EQ(svc.stats().pending, 0u);
}

TEST(timer_service, cancel_parks_while_a_long_delivery_runs_on_another_thread) {
    // cancel() waits for a delivery running elsewhere; the wait must sleep, not burn a core.
    test_timer::record r;
    auto* t = test_timer::make(r, 0);
    std::atomic<bool> in_delivery{false}, delivery_over{false};
    std::thread receiver([&] {
        ASSERT_TRUE(t->begin_delivery());
        in_delivery.store(true);
        std::this_thread::sleep_for(300ms);  // a handler still running
        delivery_over.store(true);
        t->end_delivery();
    });
    ASSERT_TRUE(eventually([&] { return in_delivery.load(); }, 10s));
    const std::int64_t cpu0 = thread_cpu_ns();
    const std::int64_t wall0 = now_ns();
    EXPECT_TRUE(t->cancel());
    const std::int64_t cpu = thread_cpu_ns() - cpu0;
    const std::int64_t wall = now_ns() - wall0;
    // Not a time: a test thread preempted between seeing `in_delivery` and calling cancel()
    // may find most of the 300 ms gone.
    EXPECT_TRUE(delivery_over.load()) << "cancel() returned while the delivery was still running";
    receiver.join();
    EXPECT_LT(cpu, ms(30)) << "cancel() used " << cpu / 1'000'000 << " ms of CPU waiting " << wall / 1'000'000
                           << " ms for a delivery";
    t->release();
}

TEST(timer_service, a_fired_one_shot_cancelled_later_is_freed_at_once) {
    // The common pattern: send_delayed, let it fire, drop the handle. The service let go of
    // the entry when it fired; the late cancel() must not park a reference in the command
    // queue of a timer thread that may sleep until something else is armed.
    test_timer::record r;
    timer_service svc;
    auto* t = test_timer::make(r, now_ns());
    t->add_ref();  // ours
    ASSERT_TRUE(svc.arm(t));
    ASSERT_TRUE(eventually([&] { return r.fired.load() == 1 && svc.stats().pending == 0; }, 10s));
    EXPECT_TRUE(t->cancel());
    t->release();  // the last reference: freed here and now
    EXPECT_EQ(r.destroyed.load(), 1) << "the entry outlived its last reference outside the service";
}

}  // namespace
