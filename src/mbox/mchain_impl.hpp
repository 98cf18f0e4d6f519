#pragma once
// An mchain, in one of two stores, and its mbox face (deliver()):
//
// - A preallocated chain (of capacity 2 or more) is a lock-free ring of envelope pointers
//   (Vyukov's bounded MPMC queue: each cell carries a sequence number that says whose turn it
//   is; a sender claims the tail position with one CAS, a taker the head position with one
//   CAS). The put and take paths take no lock; the mutex below is taken only to park or wake
//   a thread, to notify a subscribed context, and on the rare paths (a send to a closed
//   chain, stats, close).
// - Any other chain (unbounded, or bounded with dynamic memory) is a ring under the mutex,
//   grown and shrunk as needed.
//
// Both keep lists of the threads blocked on the chain (receivers waiting for a message, senders
// waiting for room) under the mutex. Waking costs one wake per event: a put wakes at most one
// blocked receiver (it unlinks that receiver's node, so the next put wakes another), a take
// wakes at most one blocked sender, and only once a quarter of a full chain is free again (see
// try_take). A thread blocked in select() over many chains has one futex word and a node on
// each chain; whichever chain has something for it first wakes it. A thread that was woken by a
// chain and then returns without taking from it passes the wake on (pass_on()), so that a
// message never waits in a chain while another receiver sleeps on it.
//
// The lock-free ring finds out whether anyone must be woken with one atomic load: a put loads
// `take_watchers_` (parked receivers plus subscribed contexts), a take loads `put_watchers_`
// (parked senders); both are zero unless someone waits, and then the waker takes the mutex.
// That no wake is lost is an asymmetric Dekker pair, on seq_cst operations only: a sender's CAS
// on `tail_` comes before its load of `take_watchers_`; a receiver that parks increments
// `take_watchers_` (under the mutex) before it loads `tail_` to look once more. In the single
// order of seq_cst operations one of the two comes first: either the sender sees the receiver
// and wakes it, or the receiver sees the claimed position and does not sleep (a claimed cell
// not yet written is a put under way: the receiver spins, then yields, until it is written).
// Likewise for takers (the CAS on `head_`) and parked senders (`put_watchers_`, then `head_`).
// On x86 the CAS is a locked instruction and the loads are plain loads: the pair costs nothing.
//
// The waker stores the word and calls futex_wake under the chain's lock: the blocked thread
// takes that lock to unlink its node before it returns, so its word is alive for the wake.
//
// Threads: every member function, any thread. Listeners (a context subscribed to the chain)
// are called under the lock and must only queue work (receiver::push), never take it.

#include <mailroom/mbox/detail/mchain_select.hpp>
#include <mailroom/mbox/mbox_impl.hpp>
#include <mailroom/mbox/mchain.hpp>

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace mailroom::internal {

/// Told when a message was put into a chain (a subscribed context queues its drain).
class mchain_listener {
public:
    /// Under the chain's lock: must not block, nor call back into the chain.
    virtual void on_message_put() noexcept = 0;

protected:
    ~mchain_listener() = default;
};

class mchain_impl final : public mbox_impl {
public:
    mchain_impl(std::shared_ptr<env_core> env, mchain_options options);
    ~mchain_impl() override;

    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    enum class take_result : std::uint8_t { got, empty, closed };
    /// Which handler of the taker takes `e`'s type (an index), or -1. It only compares types
    /// (it may run under the chain's lock).
    using matcher = int (*)(void* ctx, envelope* e) noexcept;
    /// Takes the oldest message (the caller owns it) and finds its handler with `match`, so that
    /// the chain counts it handled or ignored. `index` is the match (-1: none). Lock-free on a
    /// preallocated chain.
    take_result try_take(envelope*& out, matcher match, void* ctx, int& index) noexcept;
    /// True when it holds messages (a listener's re-check: under the lock, which every
    /// notification of a listener holds too).
    bool has_messages() const noexcept;

    enum class put_result : std::uint8_t { put, full, closed };
    /// A send case: puts `e` if there is room (no overflow reaction). On put, takes `e` and
    /// counts it sent; otherwise leaves it to the caller.
    put_result try_put(envelope* e, thread_counters& c);

    /// Closes it (see mchain::close). `by_env`: the environment's teardown does it.
    void close(mchain_close how, bool by_env) noexcept;
    bool closed() const noexcept { return closed_flag_.load(std::memory_order_acquire); }
    bool closed_by_env() const noexcept;

    /// Under the lock: links `n` to wait for a message (receivers) or room (senders), unless
    /// that is there already (or the chain is closed): then returns true and links nothing.
    bool link_receiver(mchain_wait_node& n) noexcept;
    bool link_sender(mchain_wait_node& n) noexcept;
    /// Unlinks `n` if it is still linked; true when a wake took it off (it was woken).
    bool unlink(mchain_wait_node& n) noexcept;
    /// After a thread woken by this chain returns without using it: wakes another one.
    void pass_on() noexcept;

    void add_listener(mchain_listener* l);
    void remove_listener(mchain_listener* l) noexcept;

    /// A lock-free snapshot for a spin before parking (a ring's count includes puts under way).
    std::size_t size_hint() const noexcept {
        return ring_ ? ring_size() : size_.load(std::memory_order_relaxed);
    }
    std::size_t capacity() const noexcept { return options_.capacity; }
    bool room_hint() const noexcept { return options_.capacity == 0 || size_hint() < options_.capacity; }
    mchain_stats stats() const;
    const mchain_options& options() const noexcept { return options_; }

private:
    struct wait_list {
        explicit wait_list(std::atomic<std::uint32_t>& w) noexcept : watchers(w) {}
        mchain_wait_node* head = nullptr;
        mchain_wait_node* tail = nullptr;
        // The ring's lock-free wakers look here (see the top of this file); seq_cst increments.
        std::atomic<std::uint32_t>& watchers;
        void push(mchain_wait_node& n) noexcept;
        void remove(mchain_wait_node& n) noexcept;
        /// Wakes the first node's thread and unlinks it; counts it in `woken`.
        void wake_one(std::uint64_t& woken) noexcept;
        void wake_all(std::uint64_t& woken) noexcept;
    };

    // ---- the lock-free ring (preallocated chains) ----
    // A cell is free for the put at position p when seq == p, holds that put's message when
    // seq == p + 1, and is free for the put at p + capacity once taken (seq == p + capacity).
    struct cell {
        std::atomic<std::uint64_t> seq;
        envelope* e;
    };
    // `tail_`'s top bit: closed. A put claims a position only while it is clear (the CAS
    // compares the whole word), so the puts of a closed chain are exactly those below it.
    static constexpr std::uint64_t closed_bit = std::uint64_t{1} << 63;
    enum class ring_status : std::uint8_t { done, full_or_empty, busy, closed };
    std::size_t cell_at(std::uint64_t pos) const noexcept {
        return pow2_ ? static_cast<std::size_t>(pos & (options_.capacity - 1))
                     : static_cast<std::size_t>(pos % options_.capacity);
    }
    std::size_t ring_size() const noexcept {
        // Head first: the tail never falls behind a head read before it.
        const std::uint64_t h = head_.load(std::memory_order_seq_cst);
        return static_cast<std::size_t>((tail_.load(std::memory_order_seq_cst) & ~closed_bit) - h);
    }
    /// A put: done, full_or_empty (full), or closed. Claims the tail, writes, publishes.
    ring_status ring_push(envelope* e) noexcept;
    /// A take: done, full_or_empty (empty), busy (a put is under way at the head) or closed
    /// (closed and nothing left; with `drop_` set, at once).
    ring_status ring_pop(envelope*& out) noexcept;
    /// After a put: the slow path of a put that found someone watching.
    void after_ring_put() noexcept {
        if (take_watchers_.load(std::memory_order_seq_cst) != 0) [[unlikely]]
            notify_takers();
    }
    void notify_takers() noexcept;
    void notify_senders() noexcept;
    /// Takes out everything (closes with drop_content, the last handle): returns how many.
    std::size_t ring_drain() noexcept;
    void note_high_water(std::size_t n) noexcept;

    // ---- the locked store (other chains) ----
    bool full() const noexcept { return options_.capacity != 0 && count_ == options_.capacity; }
    // Under the lock; may throw (out of memory growing dynamic storage).
    void push_back(envelope* e);
    envelope* pop_front() noexcept;
    void after_put() noexcept;
    /// One try of deliver(): true when done with `ref` (put, dropped, refused), false when full
    /// and the sender may still wait. `last_try`: the overflow reaction applies if full.
    bool offer_ring(envelope_ref& ref, envelope_ref& evicted, thread_counters& c, bool last_try, bool timer_thread);
    bool offer_locked(envelope_ref& ref, envelope_ref& evicted, thread_counters& c, bool last_try,
                      bool timer_thread);
    /// A sender that found the chain full and may wait: parks until woken (room, a close) or
    /// `deadline` (set on the first call); true once the deadline has passed.
    bool wait_for_room(std::int64_t& deadline) noexcept;
    /// A send to a closed chain (under the lock): counted lost, or environment_stopped_error.
    void refuse_closed(thread_counters& c, std::unique_lock<std::mutex>& g);
    /// A full chain's reaction other than remove_oldest: counts, drops, throws or aborts.
    void refuse_full(envelope* e, thread_counters& c, bool timer_thread);
    [[noreturn]] void overflow_abort(envelope* e) const noexcept;
    std::string overflow_text(envelope* e) const;
    bool has_messages_locked() const noexcept { return ring_ ? ring_size() != 0 : count_ != 0; }
    bool full_locked() const noexcept { return ring_ ? ring_size() >= options_.capacity : full(); }

    const mchain_options options_;
    const std::size_t sender_wake_at_;  // a take that leaves this many or fewer wakes a waiting sender
    const bool pow2_;                   // the capacity is a power of two: cell_at masks
    // The ring, when preallocated: the positions on lines of their own (each written by every
    // put, or by every take), the watcher words on a read-mostly line.
    std::unique_ptr<cell[]> ring_;
    alignas(64) std::atomic<std::uint64_t> tail_{0};
    alignas(64) std::atomic<std::uint64_t> head_{0};
    alignas(64) std::atomic<std::uint32_t> take_watchers_{0};  // receivers parked + listeners
    std::atomic<std::uint32_t> put_watchers_{0};               // senders parked
    std::atomic<bool> drop_{false};                            // closed with drop_content: take nothing
    // The rare outcomes of both stores, and the ring's counters (its stored and extracted follow
    // from the positions).
    struct rare_counts {
        std::atomic<std::uint64_t> ignored{0};
        std::atomic<std::uint64_t> evicted{0};  // taken out, not extracted: removed_oldest, dropped content
        std::atomic<std::uint64_t> discarded{0};
        std::atomic<std::uint64_t> refused_closed{0};
        std::atomic<std::uint64_t> removed_oldest{0};
        std::atomic<std::uint64_t> dropped_newest{0};
        std::atomic<std::uint64_t> refused_full{0};
        std::atomic<std::size_t> high_water{0};
    };
    alignas(64) rare_counts rc_;

    alignas(64) mutable std::mutex lock_;
    // The locked store: `buf_` has room for `alloc_`, the oldest at `head_at_`.
    std::unique_ptr<envelope*[]> buf_;
    std::size_t alloc_ = 0;
    std::size_t head_at_ = 0;
    std::size_t count_ = 0;
    std::atomic<std::size_t> size_{0};  // count_, for lock-free readers
    std::atomic<bool> closed_flag_{false};
    bool by_env_ = false;
    wait_list receivers_{take_watchers_};
    wait_list senders_{put_watchers_};
    std::vector<mchain_listener*> listeners_;
    // Counted under the lock (the chain's own; environment_stats are counted per thread): the
    // locked store's stored, extracted, handled, ignored, discarded and high_water, and both
    // stores' wakeups.
    mchain_stats stats_;
};

/// An environment's chains: its teardown closes them (dropping their content) as it begins, so
/// that threads blocked on them are woken and told.
class mchain_registry final : public env_extension {
public:
    explicit mchain_registry(env_core* env) : env_(env) {}
    static mchain_registry& of(env_core& env);

    // Its begin_stop() does the work; the phase only orders wait_stopped (which does nothing).
    static constexpr int phase = 120;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override;
    void wait_stopped() noexcept override { begin_stop(); }

    /// Raises environment_stopped_error once the teardown began.
    void add(const std::shared_ptr<mchain_impl>& c);

private:
    env_core* env_;
    std::mutex lock_;
    std::vector<std::weak_ptr<mchain_impl>> chains_;
    std::size_t prune_at_ = 16;
    bool closed_ = false;
};

}  // namespace mailroom::internal
