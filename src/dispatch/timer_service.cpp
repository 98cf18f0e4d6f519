#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/queue/futex.hpp>

#include <pthread.h>

#include <array>
#include <limits>
#include <thread>
#include <vector>

namespace mailroom::internal {

namespace {
MAILROOM_FAST_TLS thread_local timer_entry* tls_delivering = nullptr;
}

bool timer_entry::cancel() noexcept {
    std::uint32_t before = state_.fetch_or(cancelled_bit, std::memory_order_acq_rel);
    // Inside a delivery of this very timer: never wait (it would wait for itself, or for a
    // sibling delivery on another thread that may be cancelling too).
    if (tls_delivering == this) return (before & cancelled_bit) == 0;
    for (unsigned i = 0; (state_.load(std::memory_order_acquire) & ~cancelled_bit) != 0; ++i) {
        if (i < 128)
            cpu_relax();
        else
            std::this_thread::yield();
    }
    return (before & cancelled_bit) == 0;
}

bool timer_entry::begin_delivery() noexcept {
    std::uint32_t before = state_.fetch_add(1, std::memory_order_acq_rel);
    if (before & cancelled_bit) {
        state_.fetch_sub(1, std::memory_order_release);
        return false;
    }
    tls_delivering = this;
    return true;
}

void timer_entry::end_delivery() noexcept {
    tls_delivering = nullptr;
    state_.fetch_sub(1, std::memory_order_release);
}

// A hierarchical timing wheel: four levels of 256 slots. Level 0 holds what is due within 256
// ticks, level 1 within 65,536, and so on; when level 0 wraps, the next level's slot for the
// coming 256 ticks is cascaded down. Arming and firing are O(1); only the timer thread touches it.
//
// A slot is an array of entry pointers, not an intrusive list: a busy tick holds thousands of
// entries that were armed long ago and are cold in this core's cache, and walking a list would
// take one cache miss after another. With the addresses in an array the walk prefetches a few
// entries ahead and the misses overlap.
struct timer_service::wheel {
    static constexpr unsigned bits = 8;
    static constexpr std::uint64_t slots = 1u << bits;
    static constexpr unsigned levels = 4;
    static constexpr std::size_t prefetch_ahead = 8;
    // A slot that held more than this gives its memory back once fired (a burst of timers must
    // not pin its peak forever); below it, the capacity is kept for the next round.
    static constexpr std::size_t kept_capacity = 1024;

    using slot_list = std::vector<timer_entry*>;
    std::array<std::array<slot_list, slots>, levels> slot{};
    std::uint64_t now_tick = 0;  // every timer due at or before this tick has fired
    std::uint64_t count = 0;
    std::int64_t base_ns = 0;
    std::int64_t tick_ns = 1;

    std::uint64_t tick_of(std::int64_t t) const noexcept {
        if (t <= base_ns) return 0;
        return static_cast<std::uint64_t>((t - base_ns + tick_ns - 1) / tick_ns);
    }

    void insert(timer_entry* e) noexcept {
        std::uint64_t t = tick_of(e->deadline_ns);
        if (t <= now_tick) t = now_tick + 1;
        std::uint64_t delta = t - now_tick;
        unsigned level = 0;
        while (level + 1 < levels && delta >= (std::uint64_t{1} << (bits * (level + 1)))) ++level;
        if (level == levels - 1 && delta >= (std::uint64_t{1} << (bits * levels)))
            t = now_tick + (std::uint64_t{1} << (bits * levels)) - 1;  // re-cascaded when it comes up
        try {
            slot[level][(t >> (bits * level)) & (slots - 1)].push_back(e);
        } catch (...) {
            fatal("out of memory in the timer wheel");
        }
        ++count;
    }

    /// Takes a slot's entries out (the slot is left empty, with its capacity unless it was large).
    slot_list take(unsigned level, std::uint64_t index) noexcept {
        slot_list out;
        out.swap(slot[level][index & (slots - 1)]);
        count -= out.size();
        return out;
    }

    /// Gives a drained list's memory back to its slot, unless a burst made it large.
    void give_back(unsigned level, std::uint64_t index, slot_list&& used) noexcept {
        slot_list& target = slot[level][index & (slots - 1)];
        if (target.empty() && used.capacity() <= kept_capacity) {
            used.clear();
            target.swap(used);
        }
    }

    static void prefetch(const slot_list& list, std::size_t i) noexcept {
        if (i + prefetch_ahead < list.size()) {
            const char* p = reinterpret_cast<const char*>(list[i + prefetch_ahead]);
            __builtin_prefetch(p, 1);
            __builtin_prefetch(p + 64, 1);
        }
    }

    // The next tick worth waking for, or 0 when the wheel is empty.
    std::uint64_t next_tick() const noexcept {
        if (count == 0) return 0;
        for (std::uint64_t t = now_tick + 1; t <= now_tick + slots; ++t) {
            if (!slot[0][t & (slots - 1)].empty()) return t;
            if ((t & (slots - 1)) == 0) return t;  // a cascade is due here
        }
        return now_tick + 1;
    }
};

timer_service::timer_service(std::chrono::nanoseconds tick)
    : tick_ns_(tick.count() > 0 ? tick.count() : 1), commands_(std::chrono::microseconds(5)),
      wheel_(std::make_unique<wheel>()) {
    wheel_->tick_ns = tick_ns_;
    wheel_->base_ns = now_ns();
    sleep_until_.store(std::numeric_limits<std::int64_t>::min(), std::memory_order_relaxed);
    thread_ = std::thread([this] { run(); });
    ::pthread_setname_np(thread_.native_handle(), "mailroom-timer");
}

timer_service::~timer_service() {
    stop();
    release_all(nullptr);  // arms that raced with stop()
}

bool timer_service::arm(timer_entry* e) noexcept {
    if (stopped_.load(std::memory_order_acquire)) {
        e->release();
        return false;
    }
    armed_.fetch_add(1, std::memory_order_relaxed);
    // Read before the push: from then on the entry is the timer thread's, which may fire it and
    // drop the last reference before this thread looks at it again.
    const std::int64_t deadline = e->deadline_ns;
    commands_.push_quiet(e);
    // The timer thread publishes how long it means to sleep before it parks; a deadline after
    // that needs no wake-up (it is picked up when the thread wakes anyway). Both sides use
    // seq_cst, so either this load sees the new sleep time or the thread sees this push.
    if (deadline < sleep_until_.load(std::memory_order_seq_cst)) commands_.wake_if_parked();
    return true;
}

void timer_service::stop() noexcept {
    if (stopped_.exchange(true, std::memory_order_acq_rel)) return;
    commands_.push(&stop_);
    if (thread_.joinable()) thread_.join();
    release_all(wheel_.get());
}

void timer_service::drop(timer_entry* e) noexcept {
    e->release();
    cancelled_.fetch_add(1, std::memory_order_relaxed);
    removed_.fetch_add(1, std::memory_order_relaxed);
}

void timer_service::release_all(wheel* w) noexcept {
    while (commands_.maybe_nonempty()) {
        mpsc_node* n = commands_.pop();
        if (!n || n == &stop_) continue;
        drop(static_cast<timer_entry*>(n));
    }
    if (!w) return;
    for (auto& level : w->slot)
        for (auto& list : level) {
            for (timer_entry* e : list) drop(e);
            list = {};
        }
    w->count = 0;
}

void timer_service::drain_commands(wheel& w, bool& running) noexcept {
    while (commands_.maybe_nonempty()) {
        mpsc_node* n = commands_.pop();
        if (!n) continue;
        if (n == &stop_) {
            running = false;
            continue;
        }
        auto* e = static_cast<timer_entry*>(n);
        if (e->cancelled())
            drop(e);
        else
            w.insert(e);
    }
}

void timer_service::run() noexcept {
    wheel& w = *wheel_;
    bool running = true;
    while (running) {
        drain_commands(w, running);
        if (!running) break;

        const std::int64_t now = now_ns();
        const std::uint64_t due = now <= w.base_ns ? 0 : static_cast<std::uint64_t>((now - w.base_ns) / w.tick_ns);
        while (w.now_tick < due) {
            std::uint64_t t = ++w.now_tick;
            // Cascade higher levels whose block starts at this tick, lowest first.
            for (unsigned level = 1; level < wheel::levels; ++level) {
                if ((t & ((std::uint64_t{1} << (wheel::bits * level)) - 1)) != 0) break;
                const std::uint64_t index = t >> (wheel::bits * level);
                wheel::slot_list list = w.take(level, index);
                for (std::size_t i = 0; i < list.size(); ++i) {
                    wheel::prefetch(list, i);
                    w.insert(list[i]);
                }
                w.give_back(level, index, std::move(list));
            }
            wheel::slot_list list = w.take(0, t);
            for (std::size_t i = 0; i < list.size(); ++i) {
                wheel::prefetch(list, i);
                timer_entry* e = list[i];
                if (e->cancelled()) {
                    drop(e);
                    continue;
                }
                e->fire();
                fired_.fetch_add(1, std::memory_order_relaxed);
                if (e->period_ns > 0 && !e->cancelled()) {
                    e->deadline_ns += e->period_ns;
                    if (e->deadline_ns <= now) e->deadline_ns = now + e->period_ns;  // we fell behind: skip
                    w.insert(e);
                } else {
                    removed_.fetch_add(1, std::memory_order_relaxed);
                    if (e->cancelled()) cancelled_.fetch_add(1, std::memory_order_relaxed);
                    e->release();
                }
            }
            w.give_back(0, t, std::move(list));
        }

        std::uint64_t next = w.next_tick();
        std::int64_t deadline = next ? w.base_ns + static_cast<std::int64_t>(next) * w.tick_ns : -1;
        sleep_until_.store(deadline < 0 ? std::numeric_limits<std::int64_t>::max() : deadline,
                           std::memory_order_seq_cst);
        commands_.wait(deadline);
        sleep_until_.store(std::numeric_limits<std::int64_t>::min(), std::memory_order_relaxed);
    }
}

timer_service_stats timer_service::stats() const noexcept {
    timer_service_stats s;
    s.armed = armed_.load(std::memory_order_relaxed);
    s.fired = fired_.load(std::memory_order_relaxed);
    s.cancelled = cancelled_.load(std::memory_order_relaxed);
    std::uint64_t removed = removed_.load(std::memory_order_relaxed);
    s.pending = s.armed > removed ? s.armed - removed : 0;
    return s;
}

}  // namespace mailroom::internal
