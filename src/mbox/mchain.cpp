#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/mbox/mchain.hpp>

#include <mailroom/core/handle_access.hpp>
#include <mailroom/mbox/mchain_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <algorithm>
#include <limits>
#include <thread>

namespace mailroom {
namespace internal {

namespace {

// An overflow reaction that threw a message away (drop newest, remove oldest, a timer's message
// over a full chain): an outcome of the books, like a message limit's drop, first counted sent.
void count_dropped(thread_counters& c) noexcept {
    thread_counters::bump(c.sent);
    thread_counters::bump(c.dropped);
}

}  // namespace

// ---- the wait lists ----

void mchain_impl::wait_list::push(mchain_wait_node& n) noexcept {
    n.prev = tail;
    n.next = nullptr;
    if (tail)
        tail->next = &n;
    else
        head = &n;
    tail = &n;
    n.linked = true;
    watchers.fetch_add(1, std::memory_order_seq_cst);  // before the waiter looks once more
}

void mchain_impl::wait_list::remove(mchain_wait_node& n) noexcept {
    if (n.prev)
        n.prev->next = n.next;
    else
        head = n.next;
    if (n.next)
        n.next->prev = n.prev;
    else
        tail = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
    watchers.fetch_sub(1, std::memory_order_relaxed);
}

void mchain_impl::wait_list::wake_one(std::uint64_t& woken) noexcept {
    mchain_wait_node* n = head;
    if (!n) return;
    remove(*n);
    ++woken;
    // Under the chain's lock: the woken thread unlinks under it before its word goes away.
    n->word->store(1, std::memory_order_release);
    futex_wake(*n->word);
}

void mchain_impl::wait_list::wake_all(std::uint64_t& woken) noexcept {
    while (head) wake_one(woken);
}

// ---- the chain ----

mchain_impl::mchain_impl(std::shared_ptr<env_core> env, mchain_options options)
    : mbox_impl(std::move(env), mbox_kind::mchain), options_(std::move(options)),
      sender_wake_at_(options_.capacity ? options_.capacity - std::max<std::size_t>(1, options_.capacity / 4) : 0),
      pow2_(options_.capacity != 0 && (options_.capacity & (options_.capacity - 1)) == 0) {
    if (options_.memory == mchain_memory::preallocated) {
        if (options_.capacity >= 2) {
            ring_ = std::make_unique<cell[]>(options_.capacity);
            for (std::size_t i = 0; i < options_.capacity; ++i) ring_[i].seq.store(i, std::memory_order_relaxed);
        } else {
            // A ring of one cell cannot tell "written" (seq == p + 1) from "free for the next
            // put" (seq == p + capacity): one message is kept under the lock.
            buf_ = std::make_unique<envelope*[]>(options_.capacity);
            alloc_ = options_.capacity;
        }
    }
}

mchain_impl::~mchain_impl() {
    // The last handle, mbox or subscription went: what is left is discarded, and counted.
    std::size_t n = 0;
    if (ring_) {
        n = ring_drain();
    } else {
        while (count_) {
            pop_front()->release();
            ++n;
        }
    }
    if (n) {
        thread_counters& c = env_->counters();
        thread_counters::bump(c.sent, n);  // the books see a chain's message at its outcome
        thread_counters::bump(c.discarded, n);
    }
}

std::string mchain_impl::name() const {
    return options_.name.empty() ? "mchain #" + std::to_string(id_) : "mchain '" + options_.name + "'";
}

void mchain_impl::push_back(envelope* e) {
    if (count_ == alloc_) {
        // The locked store is dynamic (a preallocated chain is a ring): double, in order.
        std::size_t next = alloc_ ? alloc_ * 2 : 16;
        if (options_.capacity && next > options_.capacity) next = options_.capacity;
        auto grown = std::make_unique<envelope*[]>(next);
        for (std::size_t i = 0; i < count_; ++i) {
            std::size_t at = head_at_ + i;
            if (at >= alloc_) at -= alloc_;
            grown[i] = buf_[at];
        }
        buf_ = std::move(grown);
        alloc_ = next;
        head_at_ = 0;
    }
    std::size_t at = head_at_ + count_;
    if (at >= alloc_) at -= alloc_;
    buf_[at] = e;
    ++count_;
    size_.store(count_, std::memory_order_relaxed);
    if (count_ > stats_.high_water) stats_.high_water = count_;
}

envelope* mchain_impl::pop_front() noexcept {
    envelope* e = buf_[head_at_];
    if (++head_at_ == alloc_) head_at_ = 0;
    --count_;
    size_.store(count_, std::memory_order_relaxed);
    // Dynamic storage is given back when a burst has drained.
    if (count_ == 0 && options_.memory == mchain_memory::dynamic && alloc_ > 1024) {
        buf_.reset();
        alloc_ = 0;
        head_at_ = 0;
    }
    return e;
}

// ---- the lock-free ring ----

mchain_impl::ring_status mchain_impl::ring_push(envelope* e) noexcept {
    std::uint64_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
        if (pos & closed_bit) [[unlikely]]
            return ring_status::closed;
        cell& c = ring_[cell_at(pos)];
        const std::uint64_t seq = c.seq.load(std::memory_order_acquire);
        const auto diff = static_cast<std::int64_t>(seq - pos);
        if (diff == 0) {
            // seq_cst: the sender's half of the Dekker pair with parked receivers (top of the header).
            if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                c.e = e;
                c.seq.store(pos + 1, std::memory_order_release);
                // The high-water mark is sampled (reading the head on every put would cost the
                // taker its cache line); a full chain is seen exactly, below.
                if ((pos & 63) == 0) [[unlikely]] {
                    const std::uint64_t h = head_.load(std::memory_order_relaxed);
                    if (h <= pos) note_high_water(static_cast<std::size_t>(pos + 1 - h));  // else taken already
                }
                return ring_status::done;
            }
        } else if (diff < 0) {
            // The cell still holds the message of the lap before: the chain is full.
            note_high_water(options_.capacity);
            pos = tail_.load(std::memory_order_relaxed);
            return pos & closed_bit ? ring_status::closed : ring_status::full_or_empty;
        } else {
            pos = tail_.load(std::memory_order_relaxed);  // another put took this position
        }
    }
}

mchain_impl::ring_status mchain_impl::ring_pop(envelope*& out) noexcept {
    std::uint64_t pos = head_.load(std::memory_order_relaxed);
    for (;;) {
        cell& c = ring_[cell_at(pos)];
        const std::uint64_t seq = c.seq.load(std::memory_order_acquire);
        const auto diff = static_cast<std::int64_t>(seq - (pos + 1));
        if (diff == 0) {
            // seq_cst: the taker's half of the Dekker pair with parked senders.
            if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                out = c.e;
                c.seq.store(pos + options_.capacity, std::memory_order_release);
                return ring_status::done;
            }
        } else if (diff < 0) {
            // Nothing written at the head: empty, or a put claimed it and is writing (busy), or
            // closed with nothing left (no put claims a position once the bit is set).
            const std::uint64_t t = tail_.load(std::memory_order_seq_cst);
            if ((t & ~closed_bit) != pos) return ring_status::busy;
            return t & closed_bit ? ring_status::closed : ring_status::full_or_empty;
        } else {
            pos = head_.load(std::memory_order_relaxed);  // another taker took this position
        }
    }
}

void mchain_impl::note_high_water(std::size_t n) noexcept {
    std::size_t seen = rc_.high_water.load(std::memory_order_relaxed);
    while (n > seen && !rc_.high_water.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
    }
}

void mchain_impl::notify_takers() noexcept {
    std::lock_guard g(lock_);
    if (receivers_.head) receivers_.wake_one(stats_.wakeups);
    for (mchain_listener* l : listeners_) l->on_message_put();
}

void mchain_impl::notify_senders() noexcept {
    std::lock_guard g(lock_);
    // See try_take: a sender is woken once a quarter of the chain is free.
    if (senders_.head && ring_size() <= sender_wake_at_) senders_.wake_one(stats_.wakeups);
}

std::size_t mchain_impl::ring_drain() noexcept {
    // Puts claimed before the close are written shortly (nothing blocks between a claim and its
    // write): wait for them, so that nothing stays behind.
    std::size_t n = 0;
    spin_backoff backoff;
    for (;;) {
        envelope* e = nullptr;
        const ring_status st = ring_pop(e);
        if (st == ring_status::done) {
            e->release();
            ++n;
            backoff.reset();
            continue;
        }
        if (st != ring_status::busy) break;  // empty, or closed and emptied
        backoff.pause();
    }
    rc_.evicted.fetch_add(n, std::memory_order_relaxed);
    rc_.discarded.fetch_add(n, std::memory_order_relaxed);
    return n;
}

// ---- the locked store ----

void mchain_impl::after_put() noexcept {
    ++stats_.stored;
    if (receivers_.head) [[unlikely]]
        receivers_.wake_one(stats_.wakeups);
    for (mchain_listener* l : listeners_) l->on_message_put();
}

std::string mchain_impl::overflow_text(envelope* e) const {
    return name() + " is full (capacity " + std::to_string(options_.capacity) + "): a message of type " +
           readable_name(e->type()) + " was refused";
}

void mchain_impl::overflow_abort(envelope* e) const noexcept {
    std::string text;
    try {
        text = overflow_text(e) + " and its overflow reaction is abort";
    } catch (...) {
        text = "an mchain is full and its overflow reaction is abort";
    }
    fatal(text.c_str());
}

void mchain_impl::refuse_closed(thread_counters& c, std::unique_lock<std::mutex>& g) {
    if (by_env_) {
        g.unlock();
        throw environment_stopped_error("sending through " + name() + ": environment '" + env_->name() +
                                        "' is stopping (its teardown closed the chain)");
    }
    rc_.refused_closed.fetch_add(1, std::memory_order_relaxed);
    thread_counters::bump(c.sent);  // every counted outcome was first counted sent
    thread_counters::bump(c.lost);
}

void mchain_impl::refuse_full(envelope* e, thread_counters& c, bool timer_thread) {
    switch (options_.on_overflow) {
        case mchain_overflow::throw_error:
            if (!timer_thread) {
                rc_.refused_full.fetch_add(1, std::memory_order_relaxed);
                throw mchain_overflow_error(overflow_text(e));
            }
            [[fallthrough]];  // a timer thread never throws: it drops
        case mchain_overflow::drop_newest:
            rc_.dropped_newest.fetch_add(1, std::memory_order_relaxed);
            count_dropped(c);
            return;
        case mchain_overflow::abort: overflow_abort(e);
        case mchain_overflow::remove_oldest: break;  // the store's own (it takes the oldest out)
    }
}

void mchain_impl::deliver(envelope* e, timer_entry*) {
    // A send_delayed's timer is done once its message is in the chain: the chain is where it
    // was delivered (cancelling the timer afterwards does not take it back out).
    envelope_ref ref(e);   // released after the send ended: the payload's destructor is user code
    envelope_ref evicted;  // remove_oldest's victim, likewise
    env_core& env = *env_;
    thread_counters& counters = env.counters();
    // A timer thread never waits nor throws: a full chain drops what it fires.
    const bool timer_thread = on_timer_thread();
    const bool may_wait = options_.wait_for_space.count() > 0 && !timer_thread;
    std::int64_t deadline = 0;
    bool waited = false;
    for (;;) {
        {
            send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
            if (!env.open()) env.check_open("sending through", name());
            const bool last_try = !may_wait || waited;
            if (ring_ ? offer_ring(ref, evicted, counters, last_try, timer_thread)
                      : offer_locked(ref, evicted, counters, last_try, timer_thread))
                return;
        }
        // Full, and this sender may wait for room: outside the send scope (join() must not wait
        // for a blocked sender; the teardown closes the chain, which wakes it).
        if (wait_for_room(deadline)) waited = true;
    }
}

bool mchain_impl::offer_ring(envelope_ref& ref, envelope_ref& evicted, thread_counters& c, bool last_try,
                             bool timer_thread) {
    ring_status st = ring_push(ref.get());
    if (st == ring_status::done) [[likely]] {
        ref.release();
        after_ring_put();
        return true;
    }
    if (st == ring_status::full_or_empty) {
        if (!last_try) return false;
        if (options_.on_overflow != mchain_overflow::remove_oldest) {
            refuse_full(ref.get(), c, timer_thread);
            return true;
        }
        // Takes the oldest out as a taker would, then puts; another sender may take the room
        // first, and then the next oldest goes: each removal made room in a full chain, and each
        // is counted.
        for (;;) {
            envelope* old = nullptr;
            if (ring_pop(old) == ring_status::done) {
                rc_.evicted.fetch_add(1, std::memory_order_relaxed);
                rc_.removed_oldest.fetch_add(1, std::memory_order_relaxed);
                count_dropped(c);
                evicted = envelope_ref(old);
            }
            st = ring_push(ref.get());
            if (st == ring_status::done) {
                ref.release();
                after_ring_put();
                return true;
            }
            if (st == ring_status::closed) break;
            cpu_relax();
        }
    }
    std::unique_lock g(lock_);  // closed: by_env_ is read under the lock
    refuse_closed(c, g);
    return true;
}

bool mchain_impl::offer_locked(envelope_ref& ref, envelope_ref& evicted, thread_counters& c, bool last_try,
                               bool timer_thread) {
    std::unique_lock g(lock_);
    if (closed_flag_.load(std::memory_order_relaxed)) [[unlikely]] {
        refuse_closed(c, g);
        return true;
    }
    if (!full()) [[likely]] {
        push_back(ref.get());
        ref.release();
        after_put();
        return true;
    }
    if (!last_try) return false;
    if (options_.on_overflow != mchain_overflow::remove_oldest) {
        refuse_full(ref.get(), c, timer_thread);
        return true;
    }
    evicted = envelope_ref(pop_front());
    rc_.removed_oldest.fetch_add(1, std::memory_order_relaxed);
    count_dropped(c);
    push_back(ref.get());  // room was just made: no allocation
    ref.release();
    after_put();
    return true;
}

bool mchain_impl::wait_for_room(std::int64_t& deadline) noexcept {
    if (!deadline) deadline = now_ns() + options_.wait_for_space.count();
    std::atomic<std::uint32_t> word{0};
    mchain_wait_node node;
    node.word = &word;
    node.sender = true;
    if (!link_sender(node)) {
        for (std::int64_t now = now_ns(); word.load(std::memory_order_acquire) == 0 && now < deadline; now = now_ns())
            futex_wait(word, 0, deadline - now);
        unlink(node);
    } else {
        // Room (or the close) was seen; on a ring, the take that made room may still be
        // freeing its cell: let it run.
        std::this_thread::yield();
    }
    return now_ns() >= deadline;
}

mchain_impl::take_result mchain_impl::try_take(envelope*& out, matcher match, void* ctx, int& index) noexcept {
    if (ring_) {
        // Closed with drop_content: nothing is taken any more (the closer drops it all).
        if (drop_.load(std::memory_order_acquire)) [[unlikely]]
            return take_result::closed;
        spin_backoff backoff;
        for (;;) {
            switch (ring_pop(out)) {
                case ring_status::done: break;
                case ring_status::full_or_empty: return take_result::empty;
                case ring_status::closed: return take_result::closed;
                case ring_status::busy:
                    // A put claimed the head and is writing it: it is there in a moment.
                    backoff.pause();
                    continue;
            }
            break;
        }
        index = match(ctx, out);
        if (index < 0) rc_.ignored.fetch_add(1, std::memory_order_relaxed);
        // The taker's half of the Dekker pair with parked senders (the CAS on the head came first).
        if (put_watchers_.load(std::memory_order_seq_cst) != 0) [[unlikely]]
            notify_senders();
        return take_result::got;
    }
    std::lock_guard g(lock_);
    if (count_) [[likely]] {
        out = pop_front();
        ++stats_.extracted;
        index = match(ctx, out);
        ++(index >= 0 ? stats_.handled : stats_.ignored);
        // Senders waiting for room are woken once a quarter of the chain is free, not at each
        // take: a producer woken for every slot would cost a wake-up (tens of microseconds) per
        // message. A sender whose wait runs out looks again before its reaction applies, and a
        // receiver that stops taking passes the wake on (pass_on), so the room is never lost.
        if (senders_.head && count_ <= sender_wake_at_) [[unlikely]]
            senders_.wake_one(stats_.wakeups);
        return take_result::got;
    }
    return closed_flag_.load(std::memory_order_relaxed) ? take_result::closed : take_result::empty;
}

bool mchain_impl::has_messages() const noexcept {
    std::lock_guard g(lock_);
    return has_messages_locked();
}

mchain_impl::put_result mchain_impl::try_put(envelope* e, thread_counters& c) {
    if (ring_) {
        switch (ring_push(e)) {
            case ring_status::done: after_ring_put(); return put_result::put;
            case ring_status::closed: break;
            default: return put_result::full;
        }
    }
    std::lock_guard g(lock_);
    // A ring gets here only closed: the bit is set under the lock, after closed_flag_.
    if (ring_ || closed_flag_.load(std::memory_order_relaxed)) {
        if (!by_env_) {
            // Counted as any send to a closed chain; the caller releases the message.
            rc_.refused_closed.fetch_add(1, std::memory_order_relaxed);
            thread_counters::bump(c.sent);
            thread_counters::bump(c.lost);
        }
        return put_result::closed;
    }
    if (full()) return put_result::full;
    push_back(e);
    after_put();
    return put_result::put;
}

void mchain_impl::close(mchain_close how, bool by_env) noexcept {
    std::size_t n = 0, head = 0;
    {
        std::lock_guard g(lock_);
        if (!closed_flag_.load(std::memory_order_relaxed)) {
            by_env_ = by_env;  // before the bit: a sender that sees the bit reads this under the lock
            closed_flag_.store(true, std::memory_order_release);
            if (ring_) tail_.fetch_or(closed_bit, std::memory_order_seq_cst);
        }
        if (how == mchain_close::drop_content) {
            if (ring_) {
                drop_.store(true, std::memory_order_release);  // takers stop; emptied below
            } else {
                // Emptied here, released below outside the lock (a payload's destructor is user
                // code): a closed chain never stores again, so the ring's slots stay as they are.
                n = count_;
                head = head_at_;
                count_ = 0;
                size_.store(0, std::memory_order_relaxed);
                stats_.discarded += n;
            }
        }
        receivers_.wake_all(stats_.wakeups);
        senders_.wake_all(stats_.wakeups);
    }
    if (ring_) {
        // Outside the lock: the payloads' destructors are user code.
        if (how == mchain_close::drop_content) n = ring_drain();
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            std::size_t at = head + i;
            if (at >= alloc_) at -= alloc_;
            buf_[at]->release();
        }
    }
    if (n) {
        thread_counters& c = env_->counters();
        thread_counters::bump(c.sent, n);
        thread_counters::bump(c.discarded, n);
    }
}

bool mchain_impl::closed_by_env() const noexcept {
    std::lock_guard g(lock_);
    return by_env_;
}

bool mchain_impl::link_receiver(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (closed_flag_.load(std::memory_order_relaxed)) return true;
    receivers_.push(n);  // raises take_watchers_ (seq_cst) before the look below
    if (has_messages_locked()) {
        receivers_.remove(n);
        return true;
    }
    return false;
}

bool mchain_impl::link_sender(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (closed_flag_.load(std::memory_order_relaxed)) return true;
    senders_.push(n);  // raises put_watchers_ (seq_cst) before the look below
    if (!full_locked()) {
        senders_.remove(n);
        return true;
    }
    return false;
}

bool mchain_impl::unlink(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (!n.linked) return true;
    (n.sender ? senders_ : receivers_).remove(n);
    return false;
}

void mchain_impl::pass_on() noexcept {
    std::lock_guard g(lock_);
    if (receivers_.head && has_messages_locked()) receivers_.wake_one(stats_.wakeups);
    if (senders_.head && !full_locked()) senders_.wake_one(stats_.wakeups);
}

void mchain_impl::add_listener(mchain_listener* l) {
    std::lock_guard g(lock_);
    listeners_.push_back(l);
    // A ring's senders notify only when they see a watcher: raised before the look below (the
    // Dekker pair at the top of the header).
    take_watchers_.fetch_add(1, std::memory_order_seq_cst);
    // What is in the chain already is for it too.
    if (has_messages_locked()) l->on_message_put();
}

void mchain_impl::remove_listener(mchain_listener* l) noexcept {
    std::lock_guard g(lock_);
    const auto before = listeners_.size();
    listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), l), listeners_.end());
    if (listeners_.size() != before) take_watchers_.fetch_sub(1, std::memory_order_relaxed);
    // A receiver that stops taking passes the wake on (see try_take).
    if (senders_.head && !full_locked()) senders_.wake_one(stats_.wakeups);
}

mchain_stats mchain_impl::stats() const {
    std::lock_guard g(lock_);
    mchain_stats s = stats_;
    if (ring_) {
        // A snapshot: a take under way may show as extracted before it is counted ignored or
        // evicted; once the chain is quiet the figures are exact.
        const std::uint64_t ignored = rc_.ignored.load(std::memory_order_acquire);
        const std::uint64_t evicted = rc_.evicted.load(std::memory_order_acquire);
        const std::uint64_t head = head_.load(std::memory_order_acquire);
        const std::uint64_t tail = tail_.load(std::memory_order_acquire) & ~closed_bit;
        s.stored = tail;
        s.extracted = head > evicted ? head - evicted : 0;
        s.ignored = std::min(ignored, s.extracted);
        s.handled = s.extracted - s.ignored;
        s.size = static_cast<std::size_t>(tail >= head ? tail - head : 0);
        s.discarded = rc_.discarded.load(std::memory_order_relaxed);
        s.high_water = std::max(rc_.high_water.load(std::memory_order_relaxed), s.size);
    } else {
        s.size = count_;
    }
    s.refused_closed = rc_.refused_closed.load(std::memory_order_relaxed);
    s.removed_oldest = rc_.removed_oldest.load(std::memory_order_relaxed);
    s.dropped_newest = rc_.dropped_newest.load(std::memory_order_relaxed);
    s.refused_full = rc_.refused_full.load(std::memory_order_relaxed);
    for (const mchain_wait_node* n = receivers_.head; n; n = n->next) ++s.receivers_waiting;
    for (const mchain_wait_node* n = senders_.head; n; n = n->next) ++s.senders_waiting;
    return s;
}

// ---- the registry ----

namespace {
const char registry_key = 0;
}  // namespace

mchain_registry& mchain_registry::of(env_core& env) {
    return env.extension<mchain_registry>(&registry_key, [&] { return std::make_unique<mchain_registry>(&env); });
}

void mchain_registry::begin_stop() noexcept {
    std::vector<std::shared_ptr<mchain_impl>> open;
    {
        std::lock_guard g(lock_);
        closed_ = true;
        for (auto& w : chains_)
            if (auto c = w.lock()) {
                try {
                    open.push_back(std::move(c));
                } catch (...) {
                    c->close(mchain_close::drop_content, true);  // under the lock: out of memory only
                }
            }
        chains_.clear();
    }
    for (auto& c : open) c->close(mchain_close::drop_content, true);
}

void mchain_registry::add(const std::shared_ptr<mchain_impl>& c) {
    std::lock_guard g(lock_);
    if (closed_)
        throw environment_stopped_error("creating " + c->name() + ": environment '" + env_->name() +
                                        "' is stopping");
    if (chains_.size() >= prune_at_) {
        chains_.erase(std::remove_if(chains_.begin(), chains_.end(), [](auto& w) { return w.expired(); }),
                      chains_.end());
        prune_at_ = std::max<std::size_t>(16, chains_.size() * 2);
    }
    chains_.push_back(c);
}

// ---- receive and select ----

namespace {

mchain_impl& chain_of(const select_case& c) noexcept {
    return static_cast<mchain_impl&>(*impl_of(*c.chain));
}

bool case_ready(const select_case& c) noexcept {
    const mchain_impl& ch = chain_of(c);
    if (ch.closed()) return true;
    return c.to_send ? ch.room_hint() : ch.size_hint() != 0;
}

}  // namespace

receive_result run_select(const receive_params& p, select_case* cs, std::size_t n, bool is_select) {
    // The send cases' messages are this call's until they are sent; whatever path leaves it.
    struct owned {
        select_case* cs;
        std::size_t n;
        ~owned() {
            for (std::size_t i = 0; i < n; ++i)
                if (cs[i].to_send) std::exchange(cs[i].to_send, nullptr)->release();
        }
    } own{cs, n};
    if (is_select && p.chain())
        throw usage_error("select: its conditions come from from_all(), not from(" + p.chain().name() +
                          "): the chains are given by its cases");
    for (std::size_t i = 0; i < n; ++i)
        if (!cs[i].chain || !*cs[i].chain)
            throw usage_error(is_select ? "select: case #" + std::to_string(i + 1) + " has an empty mchain handle"
                                        : std::string("receive: from() was given an empty mchain handle"));

    std::atomic<std::uint32_t> word{0};
    for (std::size_t i = 0; i < n; ++i) {
        cs[i].node.word = &word;
        cs[i].node.sender = cs[i].to_send != nullptr;
    }
    // On the way out, a chain that woke this thread and was not used wakes another one.
    struct passer {
        select_case* cs;
        std::size_t n;
        ~passer() {
            for (std::size_t i = 0; i < n; ++i)
                if (!cs[i].done) chain_of(cs[i]).pass_on();
        }
    } pass{cs, n};

    constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
    const auto deadline_after = [](std::int64_t from, std::chrono::nanoseconds d) {
        return d == std::chrono::nanoseconds::max() || d.count() > never - from ? never : from + d.count();
    };
    const std::int64_t start = now_ns();
    const std::int64_t total_deadline = deadline_after(start, p.total_time_value());
    std::int64_t empty_deadline = deadline_after(start, p.empty_timeout_value());
    const std::size_t handle_limit = p.handle_limit();
    const std::size_t extract_limit = p.extract_limit();

    receive_result r;
    bool env_closed = false;
    bool any_closed = false;
    std::size_t next = 0;  // the case tried first: round robin, so that no chain starves the others
    const auto case_closed = [&](select_case& c) {
        c.done = true;
        any_closed = true;
        if (chain_of(c).closed_by_env()) env_closed = true;
        if (c.to_send) std::exchange(c.to_send, nullptr)->release();
        if (p.close_handler()) p.close_handler()(*c.chain);
    };

    for (;;) {
        if (p.stop_predicate() && p.stop_predicate()()) {
            r.status = receive_status::stopped;
            return r;
        }
        bool progress = false;
        bool all_done = true;
        for (std::size_t k = 0; k < n && !progress; ++k) {
            const std::size_t i = (next + k) % n;
            select_case& c = cs[i];
            if (c.done) continue;
            mchain_impl& ch = chain_of(c);
            env_core& env = ch.env();
            thread_counters& counters = env.counters();
            if (c.to_send) {
                mchain_impl::put_result pr;
                {
                    send_scope sending(counters);
                    pr = env.open() ? ch.try_put(c.to_send, counters) : mchain_impl::put_result::closed;
                }
                if (pr == mchain_impl::put_result::closed) {
                    if (!env.open()) env_closed = true;
                    case_closed(c);
                    continue;
                }
                if (pr == mchain_impl::put_result::full) {
                    all_done = false;
                    continue;
                }
                c.to_send = nullptr;
                c.done = true;
                ++r.sent;
                progress = true;
                next = i + 1;
                c.on_sent(c.ctx);
                continue;
            }
            envelope* e = nullptr;
            int index = -1;
            switch (ch.try_take(e, c.match, c.ctx, index)) {
                case mchain_impl::take_result::closed: case_closed(c); continue;
                case mchain_impl::take_result::empty: all_done = false; continue;
                case mchain_impl::take_result::got: break;
            }
            envelope_ref ref(e);
            ++r.extracted;
            progress = true;
            next = i + 1;
            thread_counters::bump(counters.sent);  // the books see a chain's message at its outcome
            if (index < 0) {
                thread_counters::bump(counters.ignored);
                continue;
            }
            // Counted before it runs: a handler that throws was delivered to all the same.
            thread_counters::bump(counters.delivered);
            ++r.handled;
            c.invoke(c.ctx, index, e);
        }
        if (progress) {
            if (handle_limit && r.handled + r.sent >= handle_limit) {
                r.status = receive_status::handled_n;
                return r;
            }
            if (extract_limit && r.extracted >= extract_limit) {
                r.status = receive_status::extracted_n;
                return r;
            }
            // Without an empty_timeout there is no deadline to move: no clock read per message.
            if (empty_deadline != never) empty_deadline = deadline_after(now_ns(), p.empty_timeout_value());
            continue;
        }
        if (all_done) {
            r.status = env_closed ? receive_status::environment_stopped
                       : any_closed ? receive_status::closed
                                    : receive_status::completed;
            return r;
        }
        // Nothing ready: spin briefly (a wake-up costs tens of microseconds), then park.
        std::int64_t now = now_ns();
        const std::int64_t deadline = std::min(empty_deadline, total_deadline);
        if (now >= deadline) {
            r.status = empty_deadline <= total_deadline ? receive_status::empty_timeout : receive_status::total_time;
            return r;
        }
        bool ready = false;
        for (int spin = 0; spin < 256 && !ready; ++spin) {
            cpu_relax();
            for (std::size_t i = 0; i < n && !ready; ++i) ready = !cs[i].done && case_ready(cs[i]);
        }
        if (ready) continue;
        word.store(0, std::memory_order_relaxed);
        std::size_t linked = 0;
        for (; linked < n && !ready; ++linked) {
            select_case& c = cs[linked];
            if (c.done) continue;
            mchain_impl& ch = chain_of(c);
            ready = c.to_send ? ch.link_sender(c.node) : ch.link_receiver(c.node);
        }
        if (!ready)
            for (now = now_ns(); word.load(std::memory_order_acquire) == 0 && now < deadline; now = now_ns())
                futex_wait(word, 0, deadline - now);
        for (std::size_t i = 0; i < linked; ++i)
            if (!cs[i].done) chain_of(cs[i]).unlink(cs[i].node);
    }
}

}  // namespace internal

// ---- the handle ----

mchain::mchain(std::shared_ptr<internal::mchain_impl> impl) noexcept : impl_(std::move(impl)) {}

mbox mchain::as_mbox() const { return impl_ ? mbox(impl_) : mbox(); }

std::string mchain::name() const { return impl_ ? impl_->name() : std::string("<empty mchain>"); }

std::size_t mchain::size() const noexcept { return impl_ ? impl_->size_hint() : 0; }

std::size_t mchain::capacity() const noexcept { return impl_ ? impl_->capacity() : 0; }

bool mchain::closed() const noexcept { return impl_ && impl_->closed(); }

void mchain::close(mchain_close how) const noexcept {
    if (impl_) impl_->close(how, false);
}

mchain_stats mchain::stats() const { return impl_ ? impl_->stats() : mchain_stats{}; }

mchain_closer::~mchain_closer() {
    for (const mchain& c : chains_) c.close(how_);
}

mchain make_mchain(environment& env, mchain_options options) {
    auto& core = internal::core_of(env);
    const std::string shown = options.name.empty() ? std::string("mchain") : "mchain '" + options.name + "'";
    if (options.memory == mchain_memory::preallocated && options.capacity == 0)
        throw usage_error("creating " + shown + ": preallocated memory needs a capacity");
    if (options.wait_for_space.count() < 0)
        throw usage_error("creating " + shown + ": wait_for_space is negative");
    if (options.named && options.name.empty()) throw usage_error("creating a named mchain: the name is empty");
    core->check_not_stopping("creating", shown);
    auto c = std::make_shared<internal::mchain_impl>(core, std::move(options));
    internal::mchain_registry::of(*core).add(c);
    if (c->options().named) internal::mbox_registry::of(*core).add(c->options().name, c);
    return mchain(std::move(c));
}

}  // namespace mailroom
