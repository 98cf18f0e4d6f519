#pragma once
/// mchains: CSP channels. A chain holds messages (the same envelopes as an mbox's) until a
/// thread takes them out with receive() or select(), or a session or agent subscribed to it
/// handles them on its own context. Bounded or not, with a reaction when it is full; closed
/// with its content dropped or retained. See docs/mchains.md.

#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>
#include <mailroom/mbox/mbox.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mailroom {

namespace internal {
class mchain_impl;
struct handle_access;
}  // namespace internal

/// What a full bounded chain does with a message sent to it (after waiting for space, when
/// mchain_options::wait_for_space is set and the sender may wait).
enum class mchain_overflow : std::uint8_t {
    drop_newest,    ///< the new message is dropped (counted in mchain_stats::dropped_newest)
    remove_oldest,  ///< the oldest message is removed to make room (counted in mchain_stats::removed_oldest)
    throw_error,    ///< the sender gets mchain_overflow_error naming the chain
    abort,          ///< the process aborts with a message naming the chain
};

/// Where a bounded chain keeps its messages.
enum class mchain_memory : std::uint8_t {
    dynamic,       ///< grows as needed (up to the capacity) and shrinks when it empties
    preallocated,  ///< room for `capacity` messages made with the chain, never given back
};

/// What close() does with the messages still in the chain.
enum class mchain_close : std::uint8_t {
    drop_content,    ///< they are dropped (counted discarded); receivers see the close at once
    retain_content,  ///< they are still received; then receivers see the close
};

struct mchain_options {
    /// Names the chain in errors; "mchain #<id>" when empty.
    std::string name{};
    /// Also lists the chain's mbox under `name` among the environment's named mboxes, so that
    /// find_named_mbox(env, name) (and whatever sends by that name) reaches the chain. Raises
    /// duplicate_name_error when the name is taken. The environment then holds the chain until
    /// it stops.
    bool named = false;
    /// The most messages it holds; 0: unbounded.
    std::size_t capacity = 0;
    mchain_memory memory = mchain_memory::dynamic;
    /// What a bounded chain does when full (after the wait below, if any).
    mchain_overflow on_overflow = mchain_overflow::drop_newest;
    /// How long a sender waits for space in a full chain before `on_overflow` applies; zero:
    /// not at all. A send from a timer thread never waits (nor throws: it drops).
    std::chrono::nanoseconds wait_for_space{0};
};

/// A message was sent to a full chain whose overflow reaction is throw_error.
class MAILROOM_EXPORT mchain_overflow_error final : public error {
public:
    using error::error;
};

/// A chain's counters. Any thread; a snapshot. environment_stats sees a chain's message once,
/// at its outcome (sent, then delivered, ignored, discarded or lost), so that its books balance
/// while messages wait in chains; what waits is `size`, and the overflow reactions are here.
struct mchain_stats {
    std::uint64_t stored = 0;          ///< messages put into the chain
    std::uint64_t extracted = 0;       ///< taken out by receive/select or a subscribed context
    std::uint64_t handled = 0;         ///< extracted, and a handler ran (environment: sent, delivered)
    std::uint64_t ignored = 0;         ///< extracted, and no handler took its type (environment: sent, ignored)
    std::uint64_t discarded = 0;       ///< dropped by close(drop_content), the teardown or the last handle (environment: sent, discarded)
    std::uint64_t refused_closed = 0;  ///< sent after the chain was closed (environment: sent, lost)
    std::uint64_t removed_oldest = 0;  ///< removed by remove_oldest to make room
    std::uint64_t dropped_newest = 0;  ///< refused by drop_newest when full (or sent by a timer to a full chain)
    std::uint64_t refused_full = 0;    ///< refused by throw_error when full (the sender was told)
    std::uint64_t wakeups = 0;         ///< threads woken from a wait on it (receivers, senders, selects)
    std::size_t size = 0;              ///< messages in it now
    std::size_t receivers_waiting = 0; ///< threads parked now waiting for a message (receive, select)
    std::size_t senders_waiting = 0;   ///< threads parked now waiting for room (send, send_case)
    std::size_t high_water = 0;        ///< the most it ever held at once (sampled on a preallocated chain: docs/mchains.md)
};

/// A handle to an mchain: cheap to copy, usable from any thread. The chain lives while a
/// handle, an mbox of it or a subscription to it refers to it; what it still holds when the
/// last of them goes is discarded (and counted).
class MAILROOM_EXPORT mchain {
public:
    mchain() noexcept = default;
    explicit mchain(std::shared_ptr<internal::mchain_impl> impl) noexcept;

    /// True when it refers to a chain (which may be closed).
    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

    /// The chain as an mbox: send, send_delayed, send_periodic and named sends can target it.
    /// An empty mbox for an empty handle.
    mbox as_mbox() const;
    /// Same as as_mbox(): `send<T>(chain, ...)` works as for any mbox.
    operator mbox() const { return as_mbox(); }

    /// "mchain 'jobs'" or "mchain #12".
    std::string name() const;
    /// Messages in it now (a snapshot). Any thread.
    std::size_t size() const noexcept;
    bool empty() const noexcept { return size() == 0; }
    /// Its capacity; 0 when unbounded.
    std::size_t capacity() const noexcept;
    /// True once closed (by close(), a closer, or its environment's teardown).
    bool closed() const noexcept;

    /// Closes the chain. Any thread; idempotent (a second close with drop_content still drops
    /// what a first retain_content left). Sends after it are counted lost (refused_closed);
    /// threads waiting in receive, select or a send for space are woken.
    void close(mchain_close how) const noexcept;

    mchain_stats stats() const;

    friend bool operator==(const mchain& a, const mchain& b) noexcept { return a.impl_ == b.impl_; }

private:
    friend struct internal::handle_access;
    std::shared_ptr<internal::mchain_impl> impl_;
};

/// A new chain of `env`. Any thread. Raises environment_stopped_error when the environment is
/// stopping, usage_error for preallocated memory without a capacity or a negative wait.
MAILROOM_EXPORT mchain make_mchain(environment& env, mchain_options options = {});

/// Closes a set of chains when it goes out of scope (on any path out, exceptions included).
class MAILROOM_EXPORT mchain_closer {
public:
    mchain_closer(mchain_close how, std::vector<mchain> chains) : how_(how), chains_(std::move(chains)) {}
    mchain_closer(const mchain_closer&) = delete;
    mchain_closer& operator=(const mchain_closer&) = delete;
    ~mchain_closer();

    /// Closes nothing on exit.
    void release() noexcept { chains_.clear(); }

private:
    mchain_close how_;
    std::vector<mchain> chains_;
};

/// `auto closer = close_on_exit(mchain_close::retain_content, a, b);`
template <class... Chains>
[[nodiscard]] mchain_closer close_on_exit(mchain_close how, Chains... chains) {
    return mchain_closer(how, std::vector<mchain>{std::move(chains)...});
}

// ---- receive and select ----

/// Why receive() or select() returned.
enum class receive_status : std::uint8_t {
    handled_n,            ///< handle_n messages were handled (sends of select count too)
    extracted_n,          ///< extract_n messages were extracted
    empty_timeout,        ///< nothing came for empty_timeout (with no_wait(): nothing was there)
    total_time,           ///< total_time ran out
    stopped,              ///< the stop_on predicate said so
    closed,               ///< every case is done, and a chain was closed (when retained: and emptied)
    completed,            ///< every case is done, and none by a close (select: every message sent)
    environment_stopped,  ///< as closed, and a chain was closed by its environment's teardown
};

/// What receive() or select() did, and why it returned.
struct receive_result {
    std::size_t extracted = 0;  ///< messages taken out of the chains
    std::size_t handled = 0;    ///< of them, those a handler ran for (the rest are counted ignored)
    std::size_t sent = 0;       ///< select: send cases whose message went into its chain
    receive_status status = receive_status::closed;
};

/// The conditions of receive() (`from(chain)`) or select() (`from_all()`). Without any limit,
/// they run until every chain is closed.
class MAILROOM_EXPORT receive_params {
public:
    receive_params() = default;
    explicit receive_params(mchain chain) : chain_(std::move(chain)) {}

    /// Return once `n` messages were handled (select: handled plus sent).
    receive_params& handle_n(std::size_t n) noexcept {
        handle_n_ = n;
        return *this;
    }
    /// Return once `n` messages were extracted (handled or not).
    receive_params& extract_n(std::size_t n) noexcept {
        extract_n_ = n;
        return *this;
    }
    /// Return when nothing could be done for `t` (measured from the last message, or the start).
    receive_params& empty_timeout(std::chrono::nanoseconds t) noexcept {
        empty_timeout_ = t;
        return *this;
    }
    /// Never wait: return as soon as nothing is ready.
    receive_params& no_wait() noexcept { return empty_timeout(std::chrono::nanoseconds::zero()); }
    /// Return when `t` has passed since the call began.
    receive_params& total_time(std::chrono::nanoseconds t) noexcept {
        total_time_ = t;
        return *this;
    }
    /// Return when `pred()` is true; asked before each wait and after each handler.
    receive_params& stop_on(std::function<bool()> pred) {
        stop_on_ = std::move(pred);
        return *this;
    }
    /// Called once for each chain the call finds closed (on the calling thread).
    receive_params& on_close(std::function<void(const mchain&)> f) {
        on_close_ = std::move(f);
        return *this;
    }

    // Read by receive() and select().
    const mchain& chain() const noexcept { return chain_; }
    std::size_t handle_limit() const noexcept { return handle_n_; }
    std::size_t extract_limit() const noexcept { return extract_n_; }
    std::chrono::nanoseconds empty_timeout_value() const noexcept { return empty_timeout_; }
    std::chrono::nanoseconds total_time_value() const noexcept { return total_time_; }
    const std::function<bool()>& stop_predicate() const noexcept { return stop_on_; }
    const std::function<void(const mchain&)>& close_handler() const noexcept { return on_close_; }

private:
    mchain chain_;
    std::size_t handle_n_ = 0;  // 0: no limit
    std::size_t extract_n_ = 0;
    std::chrono::nanoseconds empty_timeout_ = std::chrono::nanoseconds::max();  // max: none
    std::chrono::nanoseconds total_time_ = std::chrono::nanoseconds::max();
    std::function<bool()> stop_on_;
    std::function<void(const mchain&)> on_close_;
};

/// The conditions of a receive() from `chain`.
inline receive_params from(mchain chain) { return receive_params(std::move(chain)); }
/// The conditions of a select().
inline receive_params from_all() { return receive_params(); }

/// Takes messages out of the chain of `params` and runs, on this thread, the handler whose
/// message type matches (`[](const quote& q) {...}`, by value or `Msg&&` to move it out);
/// a message no handler takes is counted ignored. Blocks (no busy wait) until a condition of
/// `params` is met. A handler's exception leaves through receive() (its message counts handled).
/// Any thread but a timer thread; from a handler of a dispatcher it blocks that worker.
template <class... Handlers>
receive_result receive(const receive_params& params, Handlers&&... handlers);

/// One message at most: waits up to `timeout` for one and handles it.
template <class... Handlers>
receive_result receive(const mchain& chain, std::chrono::nanoseconds timeout, Handlers&&... handlers);

/// A case of select(): take messages from `chain` for these handlers.
template <class... Handlers>
auto receive_case(const mchain& chain, Handlers&&... handlers);

/// A case of select(): put `msg` into `chain` once there is room (regardless of its overflow
/// reaction), then call `on_sent()`. Done once sent, or when the chain is closed (the message
/// then counts lost, as any send to a closed chain).
template <class Msg, class OnSent>
auto send_case(const mchain& chain, Msg&& msg, OnSent&& on_sent);

/// Waits on several chains at once and handles whatever is ready first, until a condition of
/// `params` (from_all()...) is met or every case is done (its chain closed, its message sent).
/// Cases are tried in turn, so no chain starves the others. A blocked select is woken once per
/// message or room that comes up, never by all chains at once.
template <class... Cases>
receive_result select(const receive_params& params, Cases&&... cases);

}  // namespace mailroom

#include <mailroom/mbox/detail/mchain_select.hpp>
