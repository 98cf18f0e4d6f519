#pragma once
// One loop thread of an event_loop_pool: a worker thread (worker.hpp: its start, heartbeat,
// watchdog listing, drain and stop are every worker's) whose idle wait is epoll_wait over a set
// holding the loop's eventfd (how a writer wakes a loop parked there) and the fds of the
// watchers of the contexts pinned to it.
//
// Sources. An fd is registered with epoll under a key, not under its number: the index of a
// slot in the loop's table and the slot's generation. Freeing a slot moves its generation on,
// so an event harvested for a source that was removed since (its fd closed, its number perhaps
// reused by a new watcher) finds another generation and is dropped. Slots live in chunks that
// never move: any thread may take one (under a lock) while the loop reads others without one;
// a slot is freed on the loop thread between two batches of events (or with the loop joined),
// so the source a matching generation names is alive while the loop calls it.

#include <mailroom/dispatch/demand.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/dispatch/heartbeat.hpp>
#include <mailroom/dispatch/worker.hpp>
#include <mailroom/export.hpp>
#include <mailroom/queue/worker_mailbox.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mailroom::internal {

/// What a loop calls back when an fd it watches is ready. Loop thread only.
class fd_source {
public:
    /// The fd watched, for the watchdog's report of a callback that stalls ("fd 7 callback");
    /// -1 when the source does not say (the report then says "fd callback").
    const int watched_fd;

    explicit fd_source(int fd = -1) noexcept : watched_fd(fd) {}
    /// `events`: the epoll flags that are ready (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, ...).
    virtual void on_ready(std::uint32_t events) noexcept = 0;

protected:
    ~fd_source() = default;
};

class MAILROOM_EXPORT event_loop final : public worker_thread {
public:
    /// Creates the epoll set and the eventfd; raises mailroom::error when the kernel refuses.
    event_loop(std::chrono::nanoseconds spin, std::size_t index);
    ~event_loop();
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    event_loop* loop() noexcept override { return this; }
    // start(name, owner, index), request_stop(), join(), discard_all(), stats(): a worker's.

    /// The loop running on this thread, or null.
    static event_loop* current() noexcept;
    bool on_loop_thread() const noexcept { return current() == this; }

    /// Any thread. Registers `src`; returns the key its epoll registrations carry. Raises
    /// mailroom::error when the loop has 2^20 sources.
    std::uint64_t add_source(fd_source* src);
    /// The loop thread, outside a batch of events (a demand), or any thread once the loop was
    /// joined; also any thread for a key never registered with epoll. Forgets the source of
    /// `key`: events still harvested for it are dropped.
    void remove_source(std::uint64_t key) noexcept;
    /// The epoll set (epoll_ctl is safe from any thread).
    int epoll_fd() const noexcept { return epoll_; }
    /// Counts fds added to or removed from the epoll set (+1 / -1). Any thread.
    /// Release: a reader that sees the count drop (loop_stats, acquire) also sees the epoll_ctl
    /// that took the fd out, so it may close the fd at once.
    void count_fd(int delta) noexcept { fds_.fetch_add(delta, std::memory_order_release); }

    std::size_t index() const noexcept { return index_; }
    std::atomic<std::size_t> contexts{0};

    event_loop_pool::loop_stats loop_stats() const noexcept;
    /// The fd of the last fd callback started (-1 before any): the one running while the
    /// heartbeat's type says an fd callback runs. For the watchdog (a relaxed load, any thread).
    int running_fd() const noexcept { return running_fd_.load(std::memory_order_relaxed); }

private:
    struct slot {
        std::atomic<fd_source*> src{nullptr};
        std::atomic<std::uint32_t> gen{1};
    };
    static constexpr unsigned chunk_bits = 10;
    static constexpr std::size_t chunk_size = std::size_t{1} << chunk_bits;
    static constexpr std::size_t max_chunks = 1024;
    slot* find_slot(std::uint32_t i) const noexcept {
        slot* chunk = chunks_[i >> chunk_bits].load(std::memory_order_acquire);
        return chunk ? &chunk[i & (chunk_size - 1)] : nullptr;
    }
    void run() noexcept override;
    void dispatch(const void* events, int n) noexcept;

    std::size_t index_;
    int epoll_ = -1;
    int wake_ = -1;
    std::atomic<int> running_fd_{-1};  // the loop thread writes it before each fd callback
    std::atomic<slot*> chunks_[max_chunks] = {};  // published once each; [0][0] is the eventfd's
    std::mutex slots_lock_;                       // taking and freeing slots
    std::uint32_t next_slot_ = 1;                 // under slots_lock_
    std::vector<std::uint32_t> free_;             // under slots_lock_
    std::atomic<std::int64_t> fds_{0};
    // Written by the loop thread only (a load and a store), read by stats() on any thread.
    std::atomic<std::uint64_t> callbacks_{0}, cycles_{0}, busy_ns_{0}, max_cycle_ns_{0};
};

/// The event_loop_pool kind's internal factory, for tests that run it without an environment.
MAILROOM_EXPORT std::shared_ptr<dispatcher_impl> make_event_loop_pool(std::string name,
                                                                      const event_loop_pool::params& p);

}  // namespace mailroom::internal
