#pragma once
// What a message is delivered to, and how an mbox names it.
//
// A receiver is the addressable part of a serial context of the layer above: its generation,
// its start gate, its queue and its gate. The layer above keeps receivers type-stable (recycled,
// never freed while a handle or an mbox may name one) and moves the generation on at the end of
// each life, so that a sender holding a stale (receiver, generation) reads valid memory and
// finds the life over. A sender therefore needs no atomic read-modify-write on the receiver to
// send, and no virtual call: a route is plain data, and queueing is inline.

#include <mailroom/core/message.hpp>
#include <mailroom/core/pool.hpp>
#include <mailroom/dispatch/event_object.hpp>
#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/queue/futex.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

namespace mailroom::internal {

/// How a delivery was sent, which decides how it counts when it finds no handler or no receiver:
/// to an agent's direct mbox (no handler: ignored; receiver gone: lost), to a session's inbox
/// (either: lost), or published through an MPMC mbox (either: ignored, the receiver left the
/// topic).
enum class delivery_kind : std::uint8_t { direct, inbox, fanout };

/// What an mbox did with one delivery.
enum class accept_result : std::uint8_t {
    queued,    ///< taken and queued (counted sent)
    diverted,  ///< over a message limit: dropped, redirected or transformed, and counted (limit_table.hpp)
    gone,      ///< the receiver's life (or its object) is over: counted lost (direct) or ignored (published)
    unwanted,  ///< not a type the route takes (an inbox of another type): counted ignored
};

/// A lock of a few instructions for short sections that never block inside (a receiver's
/// pre-start list and name, a context's list of event objects, the free list of records): the
/// size of a bool, no system call. Taken with std::lock_guard.
class spin_mutex {
public:
    void lock() noexcept {
        while (flag_.exchange(true, std::memory_order_acquire))
            while (flag_.load(std::memory_order_relaxed)) cpu_relax();
    }
    void unlock() noexcept { flag_.store(false, std::memory_order_release); }

private:
    std::atomic<bool> flag_{false};
};

class limit_table;

/// The addressable part of a serial context (see the file comment). The layer above derives
/// its context record from it and sets `run_message`, which executes a message_demand.
///
/// Threads: `gen`, `start`, `queue` and the gate are read by any thread (stale senders
/// included); the pending list is under `pending_lock`.
class receiver {
public:
    static constexpr std::uint8_t start_closed = 0;    // before start: demands wait in `pending`
    static constexpr std::uint8_t start_open = 1;      // running: demands go straight to the queue
    static constexpr std::uint8_t start_finished = 2;  // gone: demands are run at once (and count themselves lost)
    // Or'ed into `start` (under pending_lock) when the record gets its limit table, and kept as
    // long as the table (until the record is freed): a send tests `start` anyway, and one that
    // finds anything but a bare start_open leaves the inline path (accept_slow), so that a
    // receiver without limits pays no test of its own for them.
    static constexpr std::uint8_t start_limited = 4;
    static constexpr std::uint8_t start_state_mask = 3;

    /// Where the life is: start_closed, start_open or start_finished. Any thread.
    std::uint8_t start_state(std::memory_order o = std::memory_order_acquire) const noexcept {
        return start.load(o) & start_state_mask;
    }
    /// A new life of the record: closed until its start (the limits bit stays with the table).
    /// Before the record is shared with the new life's users.
    void close_start() noexcept { start.fetch_and(start_limited, std::memory_order_release); }

    /// Any thread. Queues `d` (or holds it until start, or runs it at once when finished: it
    /// then finds a newer generation and counts itself).
    void push(demand* d) noexcept {
        if (start_state() == start_open) [[likely]] {
            queue.load(std::memory_order_acquire)->push(d);
            return;
        }
        push_slow(d);
    }
    void push_slow(demand* d) noexcept;
    /// Like push(), but leaves `d` to the caller (returns false) when the life finished.
    bool push_unless_finished(demand* d) noexcept;
    /// Registration commit: `first` (the start demand) goes first, then what waited, then the
    /// start gate opens. Sessions open at creation with no first demand.
    void open(demand* first) noexcept;
    /// The end of a life: the generation moves on, what waited before start is run (and
    /// counts itself lost), the start gate is finished for good.
    void finish_life() noexcept;

    // Read by any thread.
    std::atomic<std::uint32_t> gen{1};
    std::atomic<std::uint8_t> start{start_closed};  // a start_* state, with start_limited or'ed in
    spin_mutex pending_lock;  // the pre-start list (and, above, the name): never on the running path
    // The message limits, made (under pending_lock) by the first limit declared in any life of
    // the record and kept until the record is freed: a demand counted by it names its slot and
    // may run after the life ended (limit_table.hpp). A send reads it only when `start` has
    // start_limited, which is set after it.
    std::atomic<limit_table*> limits{nullptr};
    std::atomic<event_queue*> queue{nullptr};
    context_gate gate;

    // Set when the record is made, constant after.
    env_core* env = nullptr;
    demand::execute_fn run_message = nullptr;

    // Guarded by pending_lock.
    demand* pending_head = nullptr;
    demand* pending_tail = nullptr;
    /// The end of a life's limits (the record is recycled): sends stop counting, the slots are
    /// reset for the next life. Demands still queued give back what they took when they run.
    void end_limits() noexcept;

protected:
    receiver() = default;
    ~receiver();
};

/// A message on its way to a receiver.
struct message_demand final : demand {
    receiver* target;
    std::uint32_t gen;
    delivery_kind kind;  // how it counts when it finds no handler or no receiver
    // 1 + the slot of target->limits that counted it (in padding). Set only by a limit, which
    // then makes `execute` give the count back first (limit_table.cpp): make() leaves it.
    std::uint8_t limit_slot;
    std::uint64_t key;   // what the receiver's table maps to a handler (an mbox id, or an object's)
    envelope* msg;
    timer_entry* timer;  // holds a reference when set

    static message_demand* make(receiver* target, std::uint32_t gen, std::uint64_t key, envelope* msg,
                                timer_entry* timer, delivery_kind kind) {
        auto* d = new (pool_allocate(sizeof(message_demand))) message_demand;
        d->execute = target->run_message;
        d->target = target;
        d->gen = gen;
        d->kind = kind;
        d->key = key;
        d->msg = msg;
        d->timer = timer;
        if (timer) timer->add_ref();
        return d;
    }
    void free() noexcept {
        if (msg) msg->release();
        if (timer) timer->release();
        this->~message_demand();
        pool_free(this, sizeof(message_demand));
    }
};

/// A receiver as an mbox names it: one listing (a direct mbox's target, or a subscriber of an
/// MPMC mbox), under the key its table maps to a handler.
struct route {
    receiver* to = nullptr;
    std::uint32_t gen = 0;
    delivery_kind kind = delivery_kind::direct;
    std::uint64_t key = 0;

    /// The same listing.
    bool same(const route& o) const noexcept { return to == o.to && gen == o.gen && key == o.key; }
};

/// What a route to an event object (an inbox, a topic subscription) adds: the object's shut
/// flag, what keeps the flag's memory, and the one message type it takes (an inbox's).
struct object_link {
    const context_gate::flag* closed = nullptr;
    std::shared_ptr<void> keep{};
    message_type only{};
};

/// accept() for a receiver with limits (limit_table.cpp): counts `e` in its type's slot and queues
/// it, or applies the limit's reaction (diverted).
accept_result accept_limited(limit_table& t, const route& r, envelope* e, timer_entry* timer, thread_counters& c);

/// accept() past the generation check for a receiver whose `start` is not a bare start_open:
/// one with limits (accept_limited), or one not started yet or finished (receiver::push_slow).
accept_result accept_slow(const route& r, envelope* e, timer_entry* timer, thread_counters& c);

/// Gives back what a limited demand took from its slot: when its handling begins, or when it is
/// refused, discarded or finds its receiver gone (the demand's execute function does it first).
/// The context's thread (or the discarding one).
void limit_release(const message_demand& d) noexcept;

/// Any thread, inside the sender's send_scope. Queues `e` along `r` (and `o`, when it leads to
/// an event object): takes over one reference to `e` (and adds one to `timer` when set), and
/// counts the send in `c` before the delivery is queued (so that no snapshot of the counters
/// shows its outcome first). Over a message limit (diverted) it counted what it did, and the
/// caller releases its reference. Otherwise takes and counts nothing: an early answer, which the
/// receiving side checks again. May throw (out of memory) before it took anything.
inline accept_result accept(const route& r, const object_link* o, envelope* e, timer_entry* timer,
                            thread_counters& c) {
    receiver& to = *r.to;
    if (o) [[unlikely]] {
        if (o->only.info() && !(e->type() == o->only)) return accept_result::unwanted;
        if (o->closed->load(std::memory_order_acquire) | to.gate.shut()) return accept_result::gone;
    }
    if (to.gen.load(std::memory_order_acquire) != r.gen) [[unlikely]]
        return accept_result::gone;
    // The test push() would make, made before the demand: a receiver with limits (or not open)
    // fails it, so that limits cost a send without them no test of its own.
    if (to.start.load(std::memory_order_acquire) != receiver::start_open) [[unlikely]]
        return accept_slow(r, e, timer, c);
    message_demand* d = message_demand::make(&to, r.gen, r.key, e, timer, r.kind);
    thread_counters::bump(c.sent);
    to.queue.load(std::memory_order_acquire)->push(d);
    return accept_result::queued;
}

}  // namespace mailroom::internal
