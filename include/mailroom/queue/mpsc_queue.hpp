#pragma once
/// Intrusive multi-producer single-consumer queue: wait-free push, no allocation, no lock.

#include <atomic>
#include <cstddef>

namespace mailroom::internal {

inline constexpr std::size_t cache_line = 64;

/// Link embedded in whatever travels through an mpsc_queue.
struct mpsc_node {
    std::atomic<mpsc_node*> next{nullptr};
};

/// Producers swap themselves into `tail_` with one exchange and then link the previous tail; the
/// single consumer follows `next` links from `head_`. Between a producer's exchange and its link
/// the queue is briefly inconsistent: the consumer sees "not empty yet nothing to pop" and must
/// retry; `pop` reports that case as nullptr and `maybe_nonempty` as true, so a consumer never
/// parks on a queue that has a message in flight.
class mpsc_queue {
public:
    mpsc_queue() noexcept : tail_(&stub_), head_(&stub_) {}
    mpsc_queue(const mpsc_queue&) = delete;
    mpsc_queue& operator=(const mpsc_queue&) = delete;

    /// Any thread; never blocks, never allocates.
    void push(mpsc_node* n) noexcept {
        n->next.store(nullptr, std::memory_order_relaxed);
        // seq_cst: pairs with the consumer's parked-flag store (see worker_mailbox).
        mpsc_node* prev = tail_.exchange(n, std::memory_order_seq_cst);
        prev->next.store(n, std::memory_order_release);
    }

    /// Consumer only. Returns the oldest node, or nullptr when empty or a push is mid-way.
    mpsc_node* pop() noexcept {
        mpsc_node* head = head_;
        mpsc_node* next = head->next.load(std::memory_order_acquire);
        if (head == &stub_) {
            if (!next) return nullptr;
            head_ = next;
            head = next;
            next = next->next.load(std::memory_order_acquire);
        }
        if (next) {
            head_ = next;
            return head;
        }
        if (head != tail_.load(std::memory_order_acquire)) return nullptr;  // a push is mid-way
        push(&stub_);
        next = head->next.load(std::memory_order_acquire);
        if (next) {
            head_ = next;
            return head;
        }
        return nullptr;
    }

    /// Consumer only. False only when no push has started since the last pop found it empty.
    bool maybe_nonempty() const noexcept {
        // head_ is either the stub or the oldest node not yet popped: a node left alone at the
        // head (its successor not linked yet, or none) is still a message.
        if (head_ != &stub_) return true;
        if (stub_.next.load(std::memory_order_acquire)) return true;
        return tail_.load(std::memory_order_seq_cst) != &stub_;
    }

private:
    alignas(cache_line) std::atomic<mpsc_node*> tail_;
    alignas(cache_line) mpsc_node* head_;
    mpsc_node stub_;
};

}  // namespace mailroom::internal
