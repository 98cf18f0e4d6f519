#pragma once
// The per-peer send queue of a node: encoded frames on their way to one peer. Any thread fills
// it (push); the node's single I/O thread drains it (drain, sent, hand_back, close).
//
// Bounded twice, in messages and in bytes, with one reaction when either limit is reached:
// drop the new message and count it, refuse it at once (the sender rejects its request with
// "peer limits"), or make the sender wait for room up to a bounded time and then refuse it.
// Closing it (the peer is lost, the node stops) hands back every message still queued, so that
// each requester can be told, and wakes every waiting sender with a refusal: nothing is lost
// silently and nothing waits forever.
//
// Batching: drain() takes what is queued and, when more than one small frame is waiting, packs
// them into one BATCH frame up to a byte budget, so that one ZeroMQ message (one syscall, one
// CURVE box) carries many; a frame alone is sent as itself, unchanged, without a copy.
//
// How it works. The two limits and a closed bit live in one 64-bit word (closed | messages |
// bytes), which a sender reserves room in with one compare-and-swap before it links its
// message into a lock-free MPSC queue (the worker mailbox's): the limits are exact (never
// over, never a spurious refusal from a neighbour's transient count), and the count also
// covers a message whose sender has reserved room but not linked it yet, which is what lets
// close() wait for exactly those messages and hand them back too. The I/O thread takes no
// lock: it pops, then gives the room back with one subtraction per drain. Waiting senders
// sleep on a futex word that the I/O thread bumps only when the waiter count says someone
// sleeps (the Dekker pair is written out at the two places it happens). A message is one
// block from the block pool holding its header and its bytes: nothing else is allocated.

#include <mailroom/net/frame.hpp>
#include <mailroom/net_export.hpp>
#include <mailroom/queue/mpsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace mailroom::internal {

/// What a full peer_queue does with one more message.
enum class overflow_reaction : std::uint8_t {
    drop,    ///< the new message is refused and counted as dropped (a one-way send's loss)
    reject,  ///< the new message is refused at once (a request is rejected with "peer limits")
    block,   ///< the sender waits for room up to block_timeout, then is refused
};
MAILROOM_NET_EXPORT const char* to_string(overflow_reaction r) noexcept;

/// A peer_queue's limits, reaction and batching budget.
struct peer_queue_options {
    std::size_t max_messages = 10'000;                ///< messages queued at most (1 .. 2^23 - 1)
    std::size_t max_bytes = std::size_t{64} << 20;    ///< bytes of encoded frames queued at most (1 .. 2^40 - 1)
    overflow_reaction reaction = overflow_reaction::reject;
    std::chrono::milliseconds block_timeout{1000};    ///< block: the longest a sender waits for room
    std::size_t batch_bytes = std::size_t{64} << 10;  ///< the largest BATCH drain() packs, header included
    std::size_t max_batch_frames = 4096;              ///< frames in one BATCH (a decoder's max_batch)
};

/// What push() did with a message.
enum class push_result : std::uint8_t {
    queued,       ///< queued; the I/O thread has other messages of this queue to drain first
    queued_wake,  ///< queued into an empty queue: the sender must wake the I/O thread
    dropped,      ///< full, reaction drop: refused and counted as dropped
    rejected,     ///< full, reaction reject: refused at once
    timed_out,    ///< full, reaction block: still no room after block_timeout
    closed,       ///< the queue was closed (peer lost, node stopped), before or while the sender waited
    too_large,    ///< the message alone is over max_bytes: it could never be queued
};
MAILROOM_NET_EXPORT const char* to_string(push_result r) noexcept;

/// True for the two results that mean "queued".
constexpr bool accepted(push_result r) noexcept {
    return r == push_result::queued || r == push_result::queued_wake;
}

class outgoing;

/// Frees an outgoing message's block.
struct outgoing_deleter {
    MAILROOM_NET_EXPORT void operator()(outgoing* m) const noexcept;
};

/// Owns one outgoing message.
using outgoing_ptr = std::unique_ptr<outgoing, outgoing_deleter>;

/// One encoded frame on its way to a peer, with the sender's tag (the node's cookie: a request
/// id, so that a message handed back tells which requester to answer; 0 for a one-way send).
/// One block holds the header and the frame's bytes.
class outgoing final : private mpsc_node {
public:
    /// A message holding a copy of `encoded` (one whole frame, as a frame_writer wrote it).
    /// Any thread.
    MAILROOM_NET_EXPORT static outgoing_ptr make(std::span<const std::byte> encoded, std::uint64_t tag = 0);

    /// The encoded frame.
    std::span<const std::byte> bytes() const noexcept {
        return {reinterpret_cast<const std::byte*>(this + 1), size_};
    }
    /// The tag given to make().
    std::uint64_t tag() const noexcept { return tag_; }
    /// The frame's kind (from its header).
    frame_kind kind() const noexcept { return static_cast<frame_kind>(std::to_integer<std::uint8_t>(bytes()[3])); }

private:
    friend class peer_queue;
    friend class peer_batch;
    friend struct outgoing_deleter;

    outgoing(std::uint64_t tag, std::uint32_t size) noexcept : tag_(tag), size_(size) {}

    outgoing* next_ = nullptr;  // the chain of a peer_batch or of a hand-back
    std::uint64_t tag_;
    std::uint32_t size_;
};

/// What one drain() took: the messages and the one ZeroMQ message that carries them. Owned by
/// the I/O thread, which keeps one and reuses it (its packing buffer keeps its capacity).
class MAILROOM_NET_EXPORT peer_batch {
public:
    peer_batch() = default;
    peer_batch(const peer_batch&) = delete;
    peer_batch& operator=(const peer_batch&) = delete;
    ~peer_batch() { clear(); }

    /// The bytes of the one ZeroMQ message to send: the lone frame itself, or the BATCH frame.
    std::span<const std::byte> bytes() const noexcept {
        if (!head_) return {};
        return batch_ ? std::span<const std::byte>(packed_) : head_->bytes();
    }
    /// Messages taken.
    std::size_t size() const noexcept { return count_; }
    bool empty() const noexcept { return count_ == 0; }
    /// True when the messages were packed into a BATCH frame.
    bool is_batch() const noexcept { return batch_; }

    /// Calls `f(const outgoing&)` for each message taken, oldest first (to mark requests
    /// transmitted once bytes() went to the socket).
    template <class F>
    void for_each(F&& f) const {
        for (const outgoing* m = head_; m; m = m->next_) f(*m);
    }

    /// Frees the messages taken (the packing buffer keeps its capacity).
    void clear() noexcept;

private:
    friend class peer_queue;

    void append(outgoing* m) noexcept;

    outgoing* head_ = nullptr;
    outgoing* tail_ = nullptr;
    std::size_t count_ = 0;
    bool batch_ = false;
    net::byte_buffer packed_;
};

/// A peer_queue's figures. Any thread may read them; each is exact on its own, not as a set.
struct peer_queue_stats {
    std::uint64_t queued = 0;                ///< messages queued now (with any a sender is linking)
    std::uint64_t queued_bytes = 0;          ///< their bytes
    std::uint64_t high_water = 0;            ///< the most messages queued at once
    std::uint64_t sent = 0;                  ///< messages handed to the socket (sent())
    std::uint64_t zmq_messages = 0;          ///< ZeroMQ messages they went in (lone frames and BATCHes)
    std::uint64_t batches = 0;               ///< BATCH frames among those
    std::uint64_t batched_frames = 0;        ///< messages that went inside a BATCH
    std::uint64_t dropped = 0;               ///< refused by the drop reaction
    std::uint64_t rejected = 0;              ///< refused by the reject reaction
    std::uint64_t blocked = 0;               ///< sends that had to wait for room (block reaction)
    std::uint64_t blocked_then_refused = 0;  ///< of those, refused after block_timeout
    std::uint64_t refused_closed = 0;        ///< refused because the queue was closed (waiting or not)
    std::uint64_t too_large = 0;             ///< refused because the message alone is over max_bytes
    std::uint64_t handed_back = 0;           ///< messages handed back by close() or hand_back()
};

/// The send queue of one peer. Threads: push() from any thread; drain(), sent(), hand_back()
/// and close() from the one thread that drains it (the node's I/O thread); the observers from
/// any thread. Messages from one sender keep their order.
class MAILROOM_NET_EXPORT peer_queue {
public:
    /// A queue for the peer named `peer` (the name its errors carry). usage_error, naming the
    /// peer, on options out of range.
    explicit peer_queue(std::string peer, peer_queue_options options = {});
    peer_queue(const peer_queue&) = delete;
    peer_queue& operator=(const peer_queue&) = delete;
    /// Frees whatever is still queued: the owner close()s first to tell the requesters. No
    /// sender may be inside push() any more.
    ~peer_queue();

    /// Queues `m` (on success `m` is left empty), or refuses it by the reaction (then `m` is
    /// still the caller's, to tell its requester). Any thread. Never blocks unless the reaction
    /// is block and the queue is full, and then for block_timeout at most (close() ends the
    /// wait at once). On queued_wake the caller wakes the I/O thread: the queue was empty.
    push_result push(outgoing_ptr& m);

    /// I/O thread. Takes what is queued into `out` (cleared first): one frame alone, as itself,
    /// or, when several small frames wait, as many as fit into one BATCH of batch_bytes (a frame
    /// too big for a BATCH goes alone, and a HELLO always does). False when nothing could be
    /// taken. The room the messages took is given back at once (waiting senders wake).
    /// While queued() is not 0 after a drain, the I/O thread drains again before it sleeps: a
    /// sender may be between its reservation and linking its message (a few instructions).
    bool drain(peer_batch& out);

    /// I/O thread: `b`'s bytes went to the socket. Counts its messages as sent and frees them.
    void sent(peer_batch& b) noexcept;

    /// I/O thread: `b`'s bytes could not be sent. Hands each message back, oldest first, as
    /// `each(outgoing_ptr)` (the caller tells its requester), counted as handed back.
    template <class F>
    void hand_back(peer_batch& b, F&& each) {
        outgoing* chain = std::exchange(b.head_, nullptr);
        b.tail_ = nullptr;
        count_handed_back(std::exchange(b.count_, 0));
        b.batch_ = false;
        b.packed_.clear();
        give(chain, each);
    }

    /// I/O thread: closes the queue (the peer is lost, the node stops). Every later push() is
    /// refused as closed; every sender waiting for room wakes and is refused as closed; every
    /// message still queued, including one a sender was linking, is handed back, oldest first
    /// per sender, as `each(outgoing_ptr)`. Returns how many. A second close() hands back nothing.
    template <class F>
    std::size_t close(F&& each) {
        std::size_t n = 0;
        outgoing* chain = close_take(n);
        give(chain, each);
        return n;
    }

    /// True once close() began. Any thread.
    bool closed() const noexcept { return (state_.load(std::memory_order_acquire) & closed_bit) != 0; }
    /// Messages queued now, with any a sender is linking. Any thread.
    std::size_t queued() const noexcept { return count_of(state_.load(std::memory_order_seq_cst)); }
    /// Their bytes. Any thread.
    std::size_t queued_bytes() const noexcept { return bytes_of(state_.load(std::memory_order_seq_cst)); }
    /// The figures. Any thread.
    peer_queue_stats stats() const noexcept;
    /// The peer's name.
    const std::string& peer() const noexcept { return peer_; }
    const peer_queue_options& options() const noexcept { return options_; }

private:
    // The state word: closed (bit 63) | messages (bits 40..62) | bytes (bits 0..39).
    static constexpr std::uint64_t closed_bit = std::uint64_t{1} << 63;
    static constexpr unsigned count_shift = 40;
    static constexpr std::uint64_t bytes_mask = (std::uint64_t{1} << count_shift) - 1;
    static constexpr std::uint64_t one_message = std::uint64_t{1} << count_shift;
    static constexpr std::size_t count_of(std::uint64_t s) noexcept { return (s & ~closed_bit) >> count_shift; }
    static constexpr std::size_t bytes_of(std::uint64_t s) noexcept { return s & bytes_mask; }

    enum class reservation : std::uint8_t { made, full, closed };
    reservation reserve(std::uint64_t size, std::uint64_t& before) noexcept;
    push_result link(outgoing_ptr& m, std::uint64_t before) noexcept;
    push_result push_waiting(outgoing_ptr& m, std::uint64_t size);
    push_result refuse_closed() noexcept;
    outgoing* take() noexcept;
    void give_room(std::uint64_t taken) noexcept;
    void wake_waiters() noexcept;
    outgoing* close_take(std::size_t& n);
    void count_handed_back(std::size_t n) noexcept;

    template <class F>
    static void give(outgoing* chain, F& each) {
        while (chain) {
            outgoing_ptr m(std::exchange(chain, chain->next_));
            m->next_ = nullptr;
            each(std::move(m));
        }
    }

    // Senders' side: the state word and what a sender updates with it.
    alignas(cache_line) std::atomic<std::uint64_t> state_{0};
    std::atomic<std::uint64_t> high_water_{0};
    std::atomic<std::uint32_t> waiters_{0};   // senders about to sleep or asleep on room_seq_
    std::atomic<std::uint32_t> room_seq_{0};  // bumped when room is given back or the queue closes
    // The slow paths' counters.
    std::atomic<std::uint64_t> dropped_{0}, rejected_{0}, blocked_{0}, blocked_then_refused_{0},
        refused_closed_{0}, too_large_{0};

    mpsc_queue queue_;

    // The I/O thread's side (the counters are atomics only so that stats() may read them).
    alignas(cache_line) outgoing* pending_ = nullptr;  // taken from queue_ but left for the next drain
    bool closing_ = false;
    std::atomic<std::uint64_t> sent_{0}, zmq_messages_{0}, batches_{0}, batched_frames_{0}, handed_back_{0};

    const std::string peer_;
    const peer_queue_options options_;
};

}  // namespace mailroom::internal
