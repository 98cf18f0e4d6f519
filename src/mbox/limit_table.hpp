#pragma once
// Message limits: a side table of a receiver, made when its first limit is declared.
//
// Cost. A receiver that never had a limit has a null `receiver::limits` and no start_limited bit
// in its start byte, which every send tests anyway: no test of its own, no atomic
// read-modify-write, no allocation, no lock; its demands run with the context's own execute
// function (a limited one gets one that gives its count back first). A record recycled from a
// life with limits keeps its table (inactive) and the bit: its sends pay a call and one more
// load. With
// limits, a send finds its type's slot (a scan of at most `capacity` type pointers), adds to the
// slot's counts (two relaxed fetch_adds) and, when that is over the bound, takes them back and
// applies the reaction. The demand remembers its slot (a byte in its padding), and gives back
// what it took when its handling begins or when it is refused, discarded or finds its receiver
// gone (limit_release, from the execute function a limited demand gets, before the one execute
// path runs it): every path, so counts never leak, and a demand without a limit pays nothing.
//
// Lifetime. The table is made once per record and kept until the record is freed (records are
// type-stable), so a demand of an ended life still finds its slot, and a stale sender that read
// the pointer just before the life ended reads valid memory (what it counts, its demand gives
// back). Slots are never freed before the table; a slot whose limit was removed and that counts
// nothing is reused for the next type declared.
//
// Changes at run time. The bound on messages and the reaction are one word (`word`), so a send
// sees either the old limit or the new one whole; the byte bound is a second word. What a
// redirect or transform needs (an mbox, a function) is a shared spec read under the table's
// lock, on the over-limit path only.

#include <mailroom/mbox/limits.hpp>
#include <mailroom/mbox/receiver.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

namespace mailroom::internal {

/// The limit of one message type (or, slot 0, of every type without its own) of one receiver.
struct limit_slot {
    /// `word` when there is no limit.
    static constexpr std::uint64_t none = 0;
    static std::uint64_t pack(std::uint64_t messages, limit_reaction r) noexcept {
        constexpr std::uint64_t max = (std::uint64_t{1} << 61) - 1;
        return (messages > max ? max : messages) << 3 | std::uint64_t(r) << 1 | 1;
    }
    static std::uint64_t messages_of(std::uint64_t w) noexcept { return w >> 3; }
    static limit_reaction reaction_of(std::uint64_t w) noexcept { return limit_reaction((w >> 1) & 3); }

    std::atomic<const std::type_info*> type{nullptr};  // null for slot 0 (the default limit)
    std::atomic<std::uint64_t> key{0};                 // one route's (an inbox's or a subscription's) limit; 0: the receiver's
    std::atomic<std::uint64_t> word{none};             // the bound on messages and the reaction
    std::atomic<std::uint64_t> max_bytes{~std::uint64_t{0}};
    std::atomic<std::uint64_t> queued{0}, queued_bytes{0};
    std::atomic<std::uint64_t> dropped{0}, redirected{0}, transformed{0}, aborted{0};
    std::atomic<bool> timer_abort_logged{false};
    std::shared_ptr<const limit_spec> spec;  // under the table's lock
};

/// A receiver's limits (see the file comment).
class limit_table {
public:
    static constexpr std::uint32_t capacity = 32;  // slot 0 and 31 message types

    explicit limit_table(env_core* env);
    ~limit_table();
    limit_table(const limit_table&) = delete;
    limit_table& operator=(const limit_table&) = delete;

    /// The slot that governs `t` sent along a route with `key`: the route's own limit of the
    /// type, else the receiver's limit of the type, else slot 0; and its index. Any thread.
    limit_slot& find(message_type t, std::uint64_t key, std::uint8_t& index) const noexcept {
        const std::uint32_t n = used_.load(std::memory_order_acquire);
        std::uint32_t found = 0;
        for (std::uint32_t i = 1; i < n; ++i) {
            limit_slot* s = slots_[i].load(std::memory_order_relaxed);
            const std::type_info* ty = s->type.load(std::memory_order_relaxed);
            if (!ty || !(message_type(*ty) == t) || s->word.load(std::memory_order_relaxed) == limit_slot::none)
                continue;
            const std::uint64_t k = s->key.load(std::memory_order_relaxed);
            if (k == key) {
                found = i;
                break;
            }
            if (k == 0 && !found) found = i;
        }
        index = static_cast<std::uint8_t>(found);
        return *slots_[found].load(std::memory_order_relaxed);
    }
    limit_slot& at(std::uint8_t index) const noexcept { return *slots_[index].load(std::memory_order_relaxed); }

    /// Sets (or, with `spec` null, removes) the limit of `t` (of one route's when `key` is not
    /// 0: an inbox's); `owner` names the receiver in
    /// reports ("agent 'x'"). Any thread. Returns the spec it replaced (for the caller to free
    /// outside its locks). Raises usage_error naming `owner` when a 32nd type is limited.
    std::shared_ptr<const limit_spec> set(message_type t, std::uint64_t key, std::shared_ptr<const limit_spec> spec,
                                          const std::string& owner);
    /// The reaction's spec as it is now, or null. Any thread.
    std::shared_ptr<const limit_spec> spec_of(limit_slot& s) const;
    /// "agent 'x'" (as the last declaration named it).
    std::string owner() const;
    /// A snapshot of the active slots. Any thread.
    std::vector<limit_stats> stats() const;
    /// Every slot without limit, its statistics zeroed (the end of a life); the specs go to
    /// `old` (as far as its capacity goes) to be freed outside the caller's locks.
    void reset(std::vector<std::shared_ptr<const limit_spec>>& old) noexcept;

    env_core* const env;
    /// Whether this life has limits: off, a send counts nothing (a record recycled from an
    /// agent with limits keeps its table). Written under the receiver's pending_lock.
    std::atomic<bool> active{false};

private:
    mutable spin_mutex lock_;  // declarations, specs, the owner's name
    std::atomic<std::uint32_t> used_{1};
    std::atomic<limit_slot*> slots_[capacity]{};
    std::string owner_;
};

/// Declares (or, with `spec` null, removes) a limit on `r`'s messages of type `t` (sent along
/// the route with `key` only, when not 0) in its life `gen`; the first declaration makes the table and turns counting on for the life. Any thread.
/// Returns false (and does nothing) when that life is over.
bool declare_limit(receiver& r, std::uint32_t gen, message_type t, std::uint64_t key,
                   std::shared_ptr<const limit_spec> spec, const std::string& owner);
/// What `r`'s limits counted in its life (empty when it has none). Any thread.
std::vector<limit_stats> limit_stats_of(const receiver& r);

/// Marks a timer's send on this thread (the timer thread): a message over its limit is then
/// dropped and counted, whatever the reaction.
class timer_send_scope {
public:
    timer_send_scope() noexcept;
    ~timer_send_scope();
    timer_send_scope(const timer_send_scope&) = delete;
    timer_send_scope& operator=(const timer_send_scope&) = delete;
};

/// How many redirects and transforms may nest on one thread before the next one is a drop.
inline constexpr int max_limit_depth = 32;

}  // namespace mailroom::internal
