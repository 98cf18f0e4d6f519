#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/queue/futex.hpp>

#include <pthread.h>

#include <array>
#include <climits>
#include <limits>
#include <thread>
#include <vector>

namespace mailroom::internal {

namespace {
MAILROOM_FAST_TLS thread_local timer_entry* tls_delivering = nullptr;
// The service whose timer thread this is: it never waits for its own stop().
MAILROOM_FAST_TLS thread_local timer_service* tls_timer_thread = nullptr;
}  // namespace

bool on_timer_thread() noexcept { return tls_timer_thread != nullptr; }

bool timer_entry::cancel() noexcept {
    timer_service* svc = service_.load(std::memory_order_acquire);
    // The first canceller sets `unlinking` with `cancelled`: a later cancel() then waits for the
    // unlink as for a delivery, so that none returns while the service is still being told.
    const std::uint32_t bits = cancelled_bit | (svc ? unlinking_bit : 0);
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    while (!(s & cancelled_bit) &&
           !state_.compare_exchange_weak(s, s | bits, std::memory_order_seq_cst, std::memory_order_relaxed)) {
    }
    const bool first = (s & cancelled_bit) == 0;
    if (first) {
        // Unlink first: the payload may be what keeps the service alive (a request holds its
        // environment).
        if (svc) {
            if (in_service_.load(std::memory_order_acquire)) svc->unlink(this);
            notify_if_waiting(state_.fetch_and(~unlinking_bit, std::memory_order_release));
        }
        release_payload();
    }
    // Inside a delivery of this very timer: never wait (it would wait for itself, or for a
    // sibling delivery on another thread that may be cancelling too).
    if (tls_delivering == this) return first;
    // A delivery is a handler: it may run for long. Spin briefly (most finish within a few
    // microseconds), then sleep on the state word; end_delivery() wakes us when it sees
    // `waiting` set. The timer thread (a request's continuation run from fire()) does not wait
    // for another canceller's unlink: that one may be waiting for stop(), which joins us.
    const std::uint32_t mask = tls_timer_thread ? busy_mask & ~unlinking_bit : busy_mask;
    for (unsigned i = 0;; ++i) {
        s = state_.load(std::memory_order_acquire);
        if ((s & mask) == 0) break;
        if (i < 256) {
            cpu_relax();
            continue;
        }
        if (!(s & waiting_bit)) {
            if (!state_.compare_exchange_weak(s, s | waiting_bit, std::memory_order_acq_rel, std::memory_order_acquire))
                continue;
            s |= waiting_bit;
        }
        futex_wait(state_, s);
    }
    return first;
}

void timer_entry::notify_if_waiting(std::uint32_t before) noexcept {
    if (before & waiting_bit) [[unlikely]]
        futex_wake(state_, INT_MAX);
}

bool timer_entry::begin_delivery() noexcept {
    std::uint32_t before = state_.fetch_add(1, std::memory_order_acq_rel);
    if (before & cancelled_bit) {
        notify_if_waiting(state_.fetch_sub(1, std::memory_order_release));
        return false;
    }
    tls_delivering = this;
    return true;
}

void timer_entry::end_delivery() noexcept {
    tls_delivering = nullptr;
    // The returned value costs nothing: the wake is paid only when a canceller sleeps.
    notify_if_waiting(state_.fetch_sub(1, std::memory_order_release));
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

    /// Files `e` by its deadline, no earlier than tick `floor`: now_tick + 1 for what is armed
    /// or re-armed (the current tick has fired), now_tick itself for what a cascade brings down
    /// while the current tick's slot is still to fire (an entry due exactly on a cascade
    /// boundary fires in that tick, not the next).
    void insert(timer_entry* e, std::uint64_t floor) noexcept {
        std::uint64_t t = tick_of(e->deadline_ns);
        if (t < floor) t = floor;
        std::uint64_t delta = t - now_tick;
        unsigned level = 0;
        while (level + 1 < levels && delta >= (std::uint64_t{1} << (bits * (level + 1)))) ++level;
        if (level == levels - 1 && delta >= (std::uint64_t{1} << (bits * levels)))
            t = now_tick + (std::uint64_t{1} << (bits * levels)) - 1;  // re-cascaded when it comes up
        const auto index = static_cast<std::uint8_t>((t >> (bits * level)) & (slots - 1));
        slot_list& list = slot[level][index];
        e->slot_level_ = static_cast<std::uint8_t>(level);
        e->slot_index_ = index;
        e->slot_pos_ = static_cast<std::uint32_t>(list.size());
        try {
            list.push_back(e);
        } catch (...) {
            fatal("out of memory in the timer wheel");
        }
        ++count;
    }

    /// Takes a cancelled entry out of its slot: the last entry of the slot takes its place.
    void remove(timer_entry* e) noexcept {
        slot_list& list = slot[e->slot_level_][e->slot_index_];
        timer_entry* last = list.back();
        list[e->slot_pos_] = last;
        last->slot_pos_ = e->slot_pos_;
        list.pop_back();
        e->slot_level_ = timer_entry::no_slot;
        --count;
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
    if (arm_hook_) [[unlikely]]
        arm_hook_(arm_hook_arg_);
    armed_.fetch_add(1, std::memory_order_relaxed);
    e->in_service_.store(true, std::memory_order_relaxed);  // published with the push
    e->service_.store(this, std::memory_order_release);
    // Read before the push: from then on the entry is the timer thread's, which may fire it and
    // drop the last reference before this thread looks at it again.
    const std::int64_t deadline = e->deadline_ns;
    commands_.push_quiet(e);
    // The timer thread publishes how long it means to sleep before it parks; a deadline after
    // that needs no wake-up (it is picked up when the thread wakes anyway). Both sides use
    // seq_cst, so either this load sees the new sleep time or the thread sees this push.
    if (deadline < sleep_until_.load(std::memory_order_seq_cst)) commands_.wake_if_parked();
    return after_push();
}

bool timer_service::after_push() noexcept {
    // stop() stores `stopped_` (seq_cst) before it pushes its stop node; the push above is a
    // seq_cst exchange before this seq_cst load. So either this load sees `stopped_` false, and
    // the push is ahead of the stop node (the timer thread takes it before it stops), or it sees
    // true, and the command may be behind the stop node, where nobody would ever take it: this
    // thread then drains the queue itself, once stop() has finished (its lock), so that the
    // queue still has one consumer at a time.
    if (!stopped_.load(std::memory_order_seq_cst)) [[likely]]
        return true;
    // On the timer thread itself (a request's continuation arming or cancelling from fire()):
    // stop() drains after joining it, and waiting for stop() here would wait for ourselves.
    if (tls_timer_thread == this) return false;
    std::lock_guard g(stop_lock_);
    release_all(nullptr);
    return false;
}

void timer_service::unlink(timer_entry* e) noexcept {
    // A stopped service has released (or is releasing) every entry it held.
    if (stopped_.load(std::memory_order_acquire)) return;
    e->add_ref();  // the command's
    // Quiet: the timer thread takes it when it next wakes, at the latest at the next cascade
    // (256 ticks) while anything is armed; a wake-up per cancel would cost the cancelling
    // thread a system call and the timer thread a context switch.
    commands_.push_quiet(&e->unlink_);
    after_push();
}

void timer_service::stop() noexcept {
    std::lock_guard g(stop_lock_);
    if (stopped_.exchange(true, std::memory_order_seq_cst)) return;
    commands_.push(&stop_);
    if (thread_.joinable()) thread_.join();
    release_all(wheel_.get());
}

void timer_service::drop(timer_entry* e) noexcept {
    e->slot_level_ = timer_entry::no_slot;
    e->in_service_.store(false, std::memory_order_release);
    e->release();
    cancelled_.fetch_add(1, std::memory_order_relaxed);
    removed_.fetch_add(1, std::memory_order_release);  // after the release: see run()
}

void timer_service::discard_command(timer_command* c) noexcept {
    if (c == &stop_) return;
    if (c->unlinks)
        c->unlinks->release();  // the entry itself is in the wheel (dropped below) or gone
    else
        drop(static_cast<timer_entry*>(c));
}

void timer_service::release_all(wheel* w) noexcept {
    // After the timer thread stopped (or under stop_lock_): every command ahead of the stop node
    // was taken by the timer thread, so a null pop is a push mid-way behind it, whose pusher
    // sees `stopped_` and drains it itself.
    while (commands_.maybe_nonempty()) {
        mpsc_node* n = commands_.pop();
        if (!n) break;
        discard_command(static_cast<timer_command*>(n));
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
    spin_backoff backoff;
    while (commands_.maybe_nonempty()) {
        mpsc_node* n = commands_.pop();
        if (!n) {  // a push is mid-way: its producer may have been preempted
            backoff.pause();
            continue;
        }
        if (n == &stop_) {
            running = false;
            return;  // what follows is stop()'s to release
        }
        auto* c = static_cast<timer_command*>(n);
        if (timer_entry* e = c->unlinks) {
            // The first cancel() of an entry: out of its slot now, not at its deadline.
            if (e->slot_level_ != timer_entry::no_slot) {
                w.remove(e);
                drop(e);
            }
            e->release();  // the command's
            continue;
        }
        auto* e = static_cast<timer_entry*>(c);
        if (e->cancelled())
            drop(e);
        else
            w.insert(e, w.now_tick + 1);
    }
}

void timer_service::run() noexcept {
    tls_timer_thread = this;
    wheel& w = *wheel_;
    bool running = true;
    while (running) {
        drain_commands(w, running);
        if (!running) break;

        const std::int64_t now = now_ns();
        const std::uint64_t due = now <= w.base_ns ? 0 : static_cast<std::uint64_t>((now - w.base_ns) / w.tick_ns);
        while (w.now_tick < due) {
            std::uint64_t t = ++w.now_tick;
            // Cascade higher levels whose block starts at this tick, lowest first. Entries due
            // at this very tick land in level 0's slot for it, which fires just below.
            for (unsigned level = 1; level < wheel::levels; ++level) {
                if ((t & ((std::uint64_t{1} << (wheel::bits * level)) - 1)) != 0) break;
                const std::uint64_t index = t >> (wheel::bits * level);
                wheel::slot_list list = w.take(level, index);
                for (std::size_t i = 0; i < list.size(); ++i) {
                    wheel::prefetch(list, i);
                    w.insert(list[i], t);
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
                switch (e->fire()) {
                    case fire_result::queued: fired_.fetch_add(1, std::memory_order_relaxed); break;
                    case fire_result::skipped: skipped_.fetch_add(1, std::memory_order_relaxed); break;
                    case fire_result::none: break;
                }
                if (e->period_ns > 0 && !e->cancelled()) {
                    e->deadline_ns += e->period_ns;
                    if (e->deadline_ns <= now) {  // we fell behind: the periods already gone are skipped
                        skipped_.fetch_add(static_cast<std::uint64_t>((now - e->deadline_ns) / e->period_ns) + 1,
                                           std::memory_order_relaxed);
                        e->deadline_ns = now + e->period_ns;
                    }
                    w.insert(e, w.now_tick + 1);
                } else {
                    e->slot_level_ = timer_entry::no_slot;
                    e->in_service_.store(false, std::memory_order_release);
                    if (e->cancelled()) cancelled_.fetch_add(1, std::memory_order_relaxed);
                    // Counted out of the wheel only once its reference is let go: whoever sees
                    // it no longer pending (stats()) holds the last references.
                    e->release();
                    removed_.fetch_add(1, std::memory_order_release);
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

std::int64_t timer_service::origin_ns() const noexcept { return wheel_->base_ns; }

std::uint64_t timer_service::current_tick() const noexcept { return wheel_->now_tick; }

timer_service_stats timer_service::stats() const noexcept {
    timer_service_stats s;
    s.armed = armed_.load(std::memory_order_relaxed);
    s.fired = fired_.load(std::memory_order_relaxed);
    s.cancelled = cancelled_.load(std::memory_order_relaxed);
    s.skipped = skipped_.load(std::memory_order_relaxed);
    std::uint64_t removed = removed_.load(std::memory_order_acquire);
    s.pending = s.armed > removed ? s.armed - removed : 0;
    return s;
}

}  // namespace mailroom::internal
