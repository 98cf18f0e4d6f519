#pragma once
/// How the environment's watchers follow what each worker runs: the run-time watchdog and the
/// teardown watch both sample the heartbeats the workers publish, and both time a demand with
/// this one sampler, from the moment it first saw the demand busy.
///
/// The hot path publishes no time, only the relaxed stores it always made (`handled`, `busy`,
/// `extended`), so a watcher can only bound from below how long a demand has run: from a clock
/// read after the heartbeat that showed it busy. Never from the sample before: that sample may
/// be long past when this one comes late (the watcher starved of the CPU, or held in a user's
/// callback or a stack wait), and a handler that started just now would be reported as having
/// run that long. A report thus comes at most one sample (plus the watcher's own delay) after
/// its limit, and never before it.

#include <mailroom/core/clock.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/heartbeat.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace mailroom::internal {

/// One worker's current demand as a watcher follows it, with the watcher's own `Extra`.
template <class Extra>
struct sighting : Extra {
    const heartbeat* beat = nullptr;
    int thread_id = 0;
    std::uint64_t handled = 0;     // the heartbeat's count while it runs: the demand's identity
    std::uint64_t extended = 0;    // extend_deadline()'s count, as last seen
    std::int64_t first_seen = 0;   // a clock read after the heartbeat first showed it busy
    std::int64_t extended_at = 0;  // first_seen, or when the watcher saw extend_deadline() move
    bool fresh = false;            // first seen in this sample
    bool extended_now = false;     // extend_deadline() seen to move in this sample
    bool seen = false;             // looked at in this sample
};

/// The demands a watcher follows, from sample to sample. One watcher thread only.
template <class Extra>
class busy_sampler {
public:
    using entry = sighting<Extra>;

    /// Before a sample's first look().
    void begin_sample() noexcept {
        for (auto& e : list_) e.seen = false;
    }

    /// Looks at worker `w` in the sample taken at `now` (read before any heartbeat of it). An
    /// entry whose demand ended (the worker went idle or on to another demand) goes to `ended`
    /// and is dropped. Returns the entry of the demand the worker runs now, valid until the
    /// next look(), or null when it is idle. Inside the dispatcher's visit_workers (the worker
    /// is held listed). May throw std::bad_alloc.
    template <class Ended>
    entry* look(const dispatcher_impl::watched_worker& w, std::int64_t now, Ended&& ended) {
        const heartbeat& b = *w.beat;
        const bool busy = b.busy.load(std::memory_order_relaxed) != 0;
        const std::uint64_t handled = b.handled.load(std::memory_order_relaxed);
        // By heartbeat and thread: a job queue's thread record may be freed and its address
        // reused by a later thread between two samples.
        auto it = std::find_if(list_.begin(), list_.end(),
                               [&](const entry& e) { return e.beat == &b && e.thread_id == w.thread_id; });
        if (it != list_.end() && (it->handled != handled || !busy)) {
            ended(static_cast<const entry&>(*it));
            list_.erase(it);
            it = list_.end();
        }
        if (!busy) return nullptr;
        const std::uint64_t ext = b.extended.load(std::memory_order_relaxed);
        // The clock read after the heartbeat's (the fence keeps the loads above before it): the
        // demand, or its extension, was under way by then. `now`, read before them, is what a
        // limit is compared with: both bound the time it has run from below.
        std::atomic_thread_fence(std::memory_order_acquire);
        const bool fresh = it == list_.end();
        const std::int64_t at = fresh || it->extended != ext ? now_ns() : now;
        if (fresh) {
            entry e{};
            e.beat = &b;
            e.thread_id = w.thread_id;
            e.handled = handled;
            e.extended = ext;
            e.first_seen = at;
            e.extended_at = at;
            list_.push_back(std::move(e));
            it = list_.end() - 1;
        }
        it->fresh = fresh;
        it->extended_now = !fresh && it->extended != ext;
        if (it->extended_now) {
            it->extended = ext;
            it->extended_at = at;
        }
        it->seen = true;
        return &*it;
    }

    /// After a sample's last look(): the entries of workers that were not looked at (they
    /// ended, or their dispatcher is no longer watched) go to `ended` and are dropped.
    template <class Ended>
    void end_sample(Ended&& ended) {
        for (auto& e : list_)
            if (!e.seen) ended(static_cast<const entry&>(e));
        std::erase_if(list_, [](const entry& e) { return !e.seen; });
    }

    /// The demands followed now (for what a watcher publishes of them).
    const std::vector<entry>& entries() const noexcept { return list_; }

private:
    std::vector<entry> list_;
};

}  // namespace mailroom::internal
