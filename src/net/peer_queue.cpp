// The per-peer send queue (see peer_queue.hpp for how it works).

#include <mailroom/net/peer_queue.hpp>

#include <mailroom/core/error.hpp>
#include <mailroom/core/pool.hpp>
#include <mailroom/queue/futex.hpp>

#include <climits>
#include <cstring>
#include <new>

namespace mailroom::internal {

const char* to_string(overflow_reaction r) noexcept {
    switch (r) {
        case overflow_reaction::drop: return "drop";
        case overflow_reaction::reject: return "reject";
        case overflow_reaction::block: return "block";
    }
    return "?";
}

const char* to_string(push_result r) noexcept {
    switch (r) {
        case push_result::queued: return "queued";
        case push_result::queued_wake: return "queued (wake)";
        case push_result::dropped: return "dropped";
        case push_result::rejected: return "rejected";
        case push_result::timed_out: return "timed out";
        case push_result::closed: return "closed";
        case push_result::too_large: return "too large";
    }
    return "?";
}

// ---- outgoing

outgoing_ptr outgoing::make(std::span<const std::byte> encoded, std::uint64_t tag) {
    if (encoded.size() < frame_header_bytes || encoded.size() > UINT32_MAX)
        throw usage_error("outgoing message: " + std::to_string(encoded.size()) + " bytes are not one frame");
    void* block = pool_allocate(sizeof(outgoing) + encoded.size());
    auto* m = ::new (block) outgoing(tag, static_cast<std::uint32_t>(encoded.size()));
    std::memcpy(reinterpret_cast<std::byte*>(m + 1), encoded.data(), encoded.size());
    return outgoing_ptr(m);
}

void outgoing_deleter::operator()(outgoing* m) const noexcept {
    const std::size_t size = sizeof(outgoing) + m->size_;
    m->~outgoing();
    pool_free(m, size);
}

// ---- peer_batch

void peer_batch::append(outgoing* m) noexcept {
    m->next_ = nullptr;
    if (tail_)
        tail_->next_ = m;
    else
        head_ = m;
    tail_ = m;
    ++count_;
}

void peer_batch::clear() noexcept {
    for (outgoing* m = std::exchange(head_, nullptr); m;) outgoing_deleter{}(std::exchange(m, m->next_));
    tail_ = nullptr;
    count_ = 0;
    batch_ = false;
    packed_.clear();
}

// ---- peer_queue

namespace {

constexpr std::size_t max_messages_limit = (std::size_t{1} << 23) - 1;
constexpr std::size_t max_bytes_limit = (std::size_t{1} << 40) - 1;
// A BATCH's own header and count, and each frame's length inside it.
constexpr std::size_t batch_overhead = frame_header_bytes + 4;
constexpr std::size_t item_overhead = 4;

}  // namespace

peer_queue::peer_queue(std::string peer, peer_queue_options options) : peer_(std::move(peer)), options_(options) {
    auto bad = [&](const std::string& what) { throw usage_error("peer queue '" + peer_ + "': " + what); };
    if (options_.max_messages < 1 || options_.max_messages > max_messages_limit)
        bad("max_messages of " + std::to_string(options_.max_messages) + " is not in 1.." +
            std::to_string(max_messages_limit));
    if (options_.max_bytes < 1 || options_.max_bytes > max_bytes_limit)
        bad("max_bytes of " + std::to_string(options_.max_bytes) + " is not in 1.." + std::to_string(max_bytes_limit));
    if (options_.block_timeout.count() < 0) bad("block_timeout is negative");
    if (options_.batch_bytes > frame_limits{}.max_frame_bytes)
        bad("batch_bytes of " + std::to_string(options_.batch_bytes) + " is over the frame limit of " +
            std::to_string(frame_limits{}.max_frame_bytes));
    if (options_.max_batch_frames < 1 || options_.max_batch_frames > frame_limits{}.max_batch)
        bad("max_batch_frames of " + std::to_string(options_.max_batch_frames) + " is not in 1.." +
            std::to_string(frame_limits{}.max_batch));
}

peer_queue::~peer_queue() {
    close([](outgoing_ptr) {});
}

peer_queue::reservation peer_queue::reserve(std::uint64_t size, std::uint64_t& before) noexcept {
    std::uint64_t s = state_.load(std::memory_order_seq_cst);
    for (;;) {
        if (s & closed_bit) return reservation::closed;
        if (count_of(s) + 1 > options_.max_messages || bytes_of(s) + size > options_.max_bytes)
            return reservation::full;
        // seq_cst: a waiting sender's reservation is one half of the Dekker pair with
        // give_room() (see push_waiting), and close() counts the reservations made before it.
        if (state_.compare_exchange_weak(s, s + one_message + size, std::memory_order_seq_cst,
                                         std::memory_order_seq_cst)) {
            before = s;
            return reservation::made;
        }
    }
}

push_result peer_queue::link(outgoing_ptr& m, std::uint64_t before) noexcept {
    const std::uint64_t n = count_of(before) + 1;
    std::uint64_t hw = high_water_.load(std::memory_order_relaxed);
    while (n > hw && !high_water_.compare_exchange_weak(hw, n, std::memory_order_relaxed)) {
    }
    // The room is ours: close() waits for this link if it began after the reservation.
    queue_.push(static_cast<mpsc_node*>(m.release()));
    // Empty before this reservation: the I/O thread gave back all the room it took, so it
    // may be asleep; otherwise an earlier message is still counted, and drain() comes back
    // while queued() is not 0.
    return count_of(before) == 0 ? push_result::queued_wake : push_result::queued;
}

push_result peer_queue::refuse_closed() noexcept {
    refused_closed_.fetch_add(1, std::memory_order_relaxed);
    return push_result::closed;
}

push_result peer_queue::push(outgoing_ptr& m) {
    if (!m) throw usage_error("peer queue '" + peer_ + "': push of an empty message");
    const std::uint64_t size = m->size_;
    std::uint64_t before = 0;
    switch (reserve(size, before)) {
        case reservation::made: return link(m, before);
        case reservation::closed: return refuse_closed();
        case reservation::full: break;
    }
    // Checked only when full (a message over max_bytes never fits): no reaction can help it.
    if (size > options_.max_bytes) {
        too_large_.fetch_add(1, std::memory_order_relaxed);
        return push_result::too_large;
    }
    switch (options_.reaction) {
        case overflow_reaction::drop: dropped_.fetch_add(1, std::memory_order_relaxed); return push_result::dropped;
        case overflow_reaction::reject:
            rejected_.fetch_add(1, std::memory_order_relaxed);
            return push_result::rejected;
        case overflow_reaction::block: break;
    }
    return push_waiting(m, size);
}

push_result peer_queue::push_waiting(outgoing_ptr& m, std::uint64_t size) {
    blocked_.fetch_add(1, std::memory_order_relaxed);
    const auto deadline = std::chrono::steady_clock::now() + options_.block_timeout;
    for (;;) {
        // Announce the wait, read the wake-up word, then look at the room again: give_room()
        // gives room back and then reads waiters_, so (all seq_cst) either it sees us and bumps
        // room_seq_ (our futex_wait returns at once or is woken), or our reservation sees its room.
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        const std::uint32_t seq = room_seq_.load(std::memory_order_seq_cst);
        std::uint64_t before = 0;
        const reservation r = reserve(size, before);
        if (r != reservation::full) {
            waiters_.fetch_sub(1, std::memory_order_relaxed);
            return r == reservation::made ? link(m, before) : refuse_closed();
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            waiters_.fetch_sub(1, std::memory_order_relaxed);
            blocked_then_refused_.fetch_add(1, std::memory_order_relaxed);
            return push_result::timed_out;
        }
        futex_wait(room_seq_, seq, std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count());
        waiters_.fetch_sub(1, std::memory_order_relaxed);
    }
}

void peer_queue::wake_waiters() noexcept {
    room_seq_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(room_seq_, INT_MAX);
}

void peer_queue::give_room(std::uint64_t taken) noexcept {
    state_.fetch_sub(taken, std::memory_order_seq_cst);
    // The other half of push_waiting's pair; a plain load on x86, and nobody to wake is the
    // common case, so the drain path makes no syscall.
    if (waiters_.load(std::memory_order_seq_cst) != 0) wake_waiters();
}

outgoing* peer_queue::take() noexcept {
    if (pending_) return std::exchange(pending_, nullptr);
    mpsc_node* n = queue_.pop();
    return n ? static_cast<outgoing*>(n) : nullptr;
}

bool peer_queue::drain(peer_batch& out) {
    out.clear();
    if (closing_) return false;
    outgoing* first = take();
    if (!first) return false;
    out.append(first);
    std::uint64_t taken = one_message + first->size_;
    // A frame may go into a BATCH when it is not a HELLO and fits one with a neighbour.
    auto batchable = [&](const outgoing* m) {
        return m->kind() != frame_kind::hello &&
               batch_overhead + 2 * item_overhead + m->size_ + frame_header_bytes <= options_.batch_bytes;
    };
    if (batchable(first)) {
        outgoing* next = take();
        std::size_t used = batch_overhead + item_overhead + first->size_;
        if (next && batchable(next) && used + item_overhead + next->size_ <= options_.batch_bytes &&
            options_.max_batch_frames >= 2) {
            frame_writer w(out.packed_, frame_limits{.max_batch = options_.max_batch_frames});
            w.begin_batch();
            w.write_encoded(first->bytes());
            out.batch_ = true;
            while (next) {
                out.append(next);
                w.write_encoded(next->bytes());
                taken += one_message + next->size_;
                used += item_overhead + next->size_;
                next = take();
                if (next && (!batchable(next) || used + item_overhead + next->size_ > options_.batch_bytes ||
                             out.count_ == options_.max_batch_frames)) {
                    pending_ = next;
                    break;
                }
            }
            w.end_batch();
        } else {
            pending_ = next;
        }
    }
    give_room(taken);
    return true;
}

void peer_queue::sent(peer_batch& b) noexcept {
    if (b.empty()) return;
    auto bump = [](std::atomic<std::uint64_t>& c, std::uint64_t n) {
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    };
    bump(sent_, b.size());
    bump(zmq_messages_, 1);
    if (b.is_batch()) {
        bump(batches_, 1);
        bump(batched_frames_, b.size());
    }
    b.clear();
}

void peer_queue::count_handed_back(std::size_t n) noexcept {
    handed_back_.store(handed_back_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

outgoing* peer_queue::close_take(std::size_t& n) {
    n = 0;
    if (closing_) return nullptr;
    closing_ = true;
    // From here no reservation is made; the count says how many were, and each of those
    // messages is queued already or about to be by a sender between reserve() and link().
    const std::uint64_t s = state_.fetch_or(closed_bit, std::memory_order_seq_cst);
    wake_waiters();
    const std::size_t want = count_of(s);
    outgoing* head = nullptr;
    outgoing* tail = nullptr;
    spin_backoff backoff;
    while (n < want) {
        outgoing* m = take();
        if (!m) {
            backoff.pause();
            continue;
        }
        backoff.reset();
        m->next_ = nullptr;
        (tail ? tail->next_ : head) = m;
        tail = m;
        ++n;
    }
    state_.fetch_sub(s & ~closed_bit, std::memory_order_seq_cst);
    count_handed_back(n);
    return head;
}

peer_queue_stats peer_queue::stats() const noexcept {
    const std::uint64_t s = state_.load(std::memory_order_relaxed);
    peer_queue_stats r;
    r.queued = count_of(s);
    r.queued_bytes = bytes_of(s);
    r.high_water = high_water_.load(std::memory_order_relaxed);
    r.sent = sent_.load(std::memory_order_relaxed);
    r.zmq_messages = zmq_messages_.load(std::memory_order_relaxed);
    r.batches = batches_.load(std::memory_order_relaxed);
    r.batched_frames = batched_frames_.load(std::memory_order_relaxed);
    r.dropped = dropped_.load(std::memory_order_relaxed);
    r.rejected = rejected_.load(std::memory_order_relaxed);
    r.blocked = blocked_.load(std::memory_order_relaxed);
    r.blocked_then_refused = blocked_then_refused_.load(std::memory_order_relaxed);
    r.refused_closed = refused_closed_.load(std::memory_order_relaxed);
    r.too_large = too_large_.load(std::memory_order_relaxed);
    r.handed_back = handed_back_.load(std::memory_order_relaxed);
    return r;
}

}  // namespace mailroom::internal
