#pragma once
// An mchain: a queue of envelopes under one mutex, with lists of the threads blocked on it
// (receivers waiting for a message, senders waiting for room), and its mbox face (deliver()).
//
// Waking costs one wake per event: a put wakes at most one blocked receiver (it unlinks that
// receiver's node, so the next put wakes another), a take wakes at most one blocked sender, and
// only once a quarter of a full chain is free again (see try_take).
// A thread blocked in select() over many chains has one futex word and a node on each chain;
// whichever chain has something for it first wakes it. A thread that was woken by a chain and
// then returns without taking from it passes the wake on (pass_on()), so that a message never
// waits in a chain while another receiver sleeps on it.
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
    /// Which handler of the taker takes `e`'s type (an index), or -1. Runs under the chain's
    /// lock: it only compares types.
    using matcher = int (*)(void* ctx, envelope* e) noexcept;
    /// Takes the oldest message (the caller owns it) and finds its handler with `match`, so that
    /// the chain counts it handled or ignored under the one lock of the take. `index` is the
    /// match (-1: none).
    take_result try_take(envelope*& out, matcher match, void* ctx, int& index) noexcept;
    /// True when it holds messages (under the lock: a listener's re-check).
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

    /// A lock-free snapshot for a spin before parking.
    std::size_t size_hint() const noexcept { return size_.load(std::memory_order_relaxed); }
    std::size_t capacity() const noexcept { return options_.capacity; }
    bool room_hint() const noexcept { return options_.capacity == 0 || size_hint() < options_.capacity; }
    mchain_stats stats() const;
    const mchain_options& options() const noexcept { return options_; }

private:
    struct wait_list {
        mchain_wait_node* head = nullptr;
        mchain_wait_node* tail = nullptr;
        void push(mchain_wait_node& n) noexcept;
        void remove(mchain_wait_node& n) noexcept;
        /// Wakes the first node's thread and unlinks it; counts it in `woken`.
        void wake_one(std::uint64_t& woken) noexcept;
        void wake_all(std::uint64_t& woken) noexcept;
    };

    bool full() const noexcept { return options_.capacity != 0 && count_ == options_.capacity; }
    // Under the lock; may throw (out of memory growing dynamic storage).
    void push_back(envelope* e);
    envelope* pop_front() noexcept;
    void after_put() noexcept;
    [[noreturn]] void overflow_abort(envelope* e) const noexcept;
    std::string overflow_text(envelope* e) const;

    const mchain_options options_;
    const std::size_t sender_wake_at_;  // a take that leaves this many or fewer wakes a waiting sender
    mutable std::mutex lock_;
    // A ring of envelopes: `buf_` has room for `alloc_`, the oldest at `head_`.
    std::unique_ptr<envelope*[]> buf_;
    std::size_t alloc_ = 0;
    std::size_t head_ = 0;
    std::size_t count_ = 0;
    std::atomic<std::size_t> size_{0};  // count_, for lock-free readers
    std::atomic<bool> closed_flag_{false};
    bool by_env_ = false;
    wait_list receivers_;
    wait_list senders_;
    std::vector<mchain_listener*> listeners_;
    // Counted under the lock (the chain's own; environment_stats are counted per thread).
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
