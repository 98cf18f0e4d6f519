#pragma once
// The delivery filters of one listing (a subscriber of an MPMC mbox for one type) or of one
// direct mbox (an agent's, per type; an inbox's): the set of predicates a sender consults
// before it queues anything.
//
// Reading without a lock. The slot publishes an immutable set through one atomic pointer and
// reclaims a replaced set with a left-right pair of reader counts (Ramalhete and Correia):
//
//   reader:  i = version & 1; readers[i] += 1; s = current; ...test... ; readers[i] -= 1
//   writer:  old = exchange(current, next); wait readers[v^1] == 0; version = v^1;
//            wait readers[v] == 0; free old
//
// Every access is seq_cst. A reader that holds `old` incremented its count before it loaded
// `current`, so before the exchange: while it holds `old`, one of the two counts the writer
// waits for after the exchange is not zero. A reader that increments after the writer saw
// its count at zero loads `current` after the exchange, and gets `next` or newer. The flip in
// between keeps the writer from starving: after it, new readers count in the other slot, so
// each wait only sees readers that came before it, and ends when their predicates return.
// When no filter was ever set, the slot does not exist: the send path tests one pointer.
//
// Once a writer returns, no sender runs a predicate it removed, and the predicate's captured
// state is destroyed on the writer's thread (with the set that held it last). close() ends
// the slot: it empties it, and later writes are refused, so that no predicate runs after its
// owner (a subscription, an agent) is gone.
//
// Threads: accepts() from any sender; the writers from any thread (serialised by `lock_`), but
// never from inside one of the slot's own predicates (that would wait for itself: set() and
// drop() raise usage_error, close() aborts with a message).

#include <mailroom/core/message.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/mbox/delivery_filter.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace mailroom::internal {

class mbox_impl;

class filter_slot {
public:
    /// `owner` names whose filter this is, for a predicate that throws ("agent 'x'").
    explicit filter_slot(std::string owner) : owner_(std::move(owner)) {}
    filter_slot(const filter_slot&) = delete;
    filter_slot& operator=(const filter_slot&) = delete;
    ~filter_slot();

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Any thread, inside the sender's send_scope. True when `e` may be queued: no predicate for
    /// its type, or the predicate accepted it. A predicate that throws refuses the message: the
    /// exception is logged through the environment (naming the owner, the mbox `where` and the
    /// type) and counted in `c`.
    bool accepts(envelope* e, const mbox_impl& where, thread_counters& c) noexcept;

    /// Any thread (not inside a predicate). Installs `p` for its type (replacing the one there);
    /// false when the slot is closed.
    bool set(std::shared_ptr<const filter_predicate> p);
    /// Any thread (not inside a predicate). Removes the predicate of `type`; false when there
    /// was none (or the slot is closed).
    bool drop(message_type type);
    /// Any thread (not inside a predicate); idempotent, never throws. Removes every predicate
    /// and refuses later writes.
    void close() noexcept;

    /// True while this thread runs a predicate (any slot's).
    static bool in_predicate() noexcept;

private:
    struct set_of {
        std::vector<std::shared_ptr<const filter_predicate>> by_type;
    };

    void check_not_in_predicate(const char* what) const;
    // Under lock_: publishes `next` (may be null) and frees the set it replaced once no reader
    // can hold it.
    void publish(const set_of* next) noexcept;
    [[gnu::cold, gnu::noinline]] void report(const mbox_impl& where, message_type type,
                                             const char* failure) const noexcept;

    std::atomic<const set_of*> current_{nullptr};
    std::atomic<std::uint32_t> version_{0};
    std::atomic<std::uint32_t> readers_[2] = {0, 0};
    std::atomic<std::uint32_t> refs_{1};
    std::mutex lock_;
    bool closed_ = false;  // under lock_
    const std::string owner_;
};

/// A counted reference to a filter_slot: the pointer's size, so that a listing without a
/// filter grows by one word.
class filter_ref {
public:
    filter_ref() noexcept = default;
    /// Adopts the reference `s` carries.
    explicit filter_ref(filter_slot* s) noexcept : s_(s) {}
    filter_ref(const filter_ref& o) noexcept : s_(o.s_) {
        if (s_) s_->add_ref();
    }
    filter_ref(filter_ref&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    filter_ref& operator=(filter_ref o) noexcept {
        std::swap(s_, o.s_);
        return *this;
    }
    ~filter_ref() {
        if (s_) s_->release();
    }

    filter_slot* get() const noexcept { return s_; }
    filter_slot* operator->() const noexcept { return s_; }
    explicit operator bool() const noexcept { return s_ != nullptr; }

private:
    filter_slot* s_ = nullptr;
};

}  // namespace mailroom::internal
