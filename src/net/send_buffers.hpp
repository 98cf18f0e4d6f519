#pragma once
// The buffers a node's I/O thread hands its large ZeroMQ messages (BATCH frames) to ZeroMQ in,
// kept and used again. zmq_send() copies a message into a block it mallocs on the calling
// thread and frees on its own I/O thread once written; for a 64 KiB BATCH, glibc's malloc then
// gives that memory back to the system (the freed block joins the top of the arena, past its
// trim threshold) and the next BATCH faults it in again, page by page: measured in W9 (a), a
// fault per page of every BATCH, on both threads. Here the I/O thread copies the BATCH into a
// buffer of its own and hands it over with zmq_msg_init_data(); ZeroMQ's thread gives it back
// (give_back, ZeroMQ's free function) to a lock-free list the I/O thread takes from.
//
// Lifetime: ZeroMQ may free a message after its node is gone (a context several nodes share,
// a linger), so the pool is counted: one reference for its owner (close() lets go of it) and
// one per buffer out in ZeroMQ. The last to let go deletes the pool and every buffer it holds.

#include <atomic>
#include <cstddef>
#include <new>
#include <utility>

namespace mailroom::net::internal_node {

class send_buffers {
public:
    /// Buffers of `size` bytes; at most `keep` of them kept idle for the I/O thread.
    static send_buffers* make(std::size_t size, std::size_t keep) { return new send_buffers(size, keep); }

    std::size_t size() const noexcept { return size_; }

    /// The I/O thread: a buffer to fill and hand to zmq_msg_init_data() with give_back and
    /// hint() (one reference of the pool goes with it). bad_alloc when none can be had.
    std::byte* take() {
        if (!idle_) {
            // What ZeroMQ gave back since: the I/O thread's now, down to `keep` of them.
            idle_ = returned_.exchange(nullptr, std::memory_order_acquire);
            idle_count_ = 0;
            for (buffer** b = &idle_; *b;) {
                if (idle_count_ == keep_) {
                    free_list(std::exchange(*b, nullptr));
                    break;
                }
                ++idle_count_;
                b = &(*b)->next;
            }
        }
        buffer* b = idle_;
        if (b) {
            idle_ = b->next;
            --idle_count_;
        } else {
            b = static_cast<buffer*>(::operator new(sizeof(buffer) + size_));
        }
        b->next = nullptr;
        // Release: what this thread wrote of the buffer happens before give_back() touches it
        // (the hand-over through ZeroMQ is invisible to ThreadSanitizer: libzmq is not
        // instrumented).
        refs_.fetch_add(1, std::memory_order_release);
        return reinterpret_cast<std::byte*>(b + 1);
    }

    /// ZeroMQ's free function for a buffer from take() (`hint` is hint()). Any thread.
    static void give_back(void* data, void* hint) noexcept {
        auto* home = static_cast<send_buffers*>(hint);
        (void)home->refs_.load(std::memory_order_acquire);  // pairs with take()'s release
        buffer* b = static_cast<buffer*>(data) - 1;
        buffer* head = home->returned_.load(std::memory_order_relaxed);
        do {
            b->next = head;
        } while (!home->returned_.compare_exchange_weak(head, b, std::memory_order_release, std::memory_order_relaxed));
        home->release();
    }

    /// The hint that goes with a buffer from take().
    void* hint() noexcept { return this; }

    /// The owner lets go (the I/O thread, once it sends no more): deleted now, or when ZeroMQ
    /// gave the last buffer back.
    void close() noexcept {
        free_list(std::exchange(idle_, nullptr));
        release();
    }

private:
    struct alignas(std::max_align_t) buffer {
        buffer* next;
    };

    send_buffers(std::size_t size, std::size_t keep) noexcept : size_(size), keep_(keep) {}
    ~send_buffers() {
        free_list(idle_);
        free_list(returned_.load(std::memory_order_acquire));
    }

    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    static void free_list(buffer* b) noexcept {
        while (b) ::operator delete(std::exchange(b, b->next));
    }

    const std::size_t size_;
    const std::size_t keep_;
    std::atomic<std::size_t> refs_{1};  // the owner's and one per buffer out
    std::atomic<buffer*> returned_{nullptr};  // given back by ZeroMQ, not yet taken
    buffer* idle_ = nullptr;                  // the I/O thread's
    std::size_t idle_count_ = 0;
};

}  // namespace mailroom::net::internal_node
