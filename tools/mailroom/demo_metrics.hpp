#pragma once
// What the demo measures itself, next to the environment's own statistics: a latency histogram
// that handlers on several threads fill without contending, and the counters its checks need.

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace mailroom::tool {

/// Counts of a latency histogram at one moment; subtract two to get an interval.
class latency_snapshot {
public:
    // Values below 16 ns get a bucket each; above, every power of two is split in 8 buckets,
    // so a percentile is exact to within 12.5 %, up to 2^40 ns (about 18 minutes).
    static constexpr std::size_t linear = 16;
    static constexpr std::size_t sub_buckets = 8;
    static constexpr std::size_t buckets = linear + (40 - 4) * sub_buckets;

    static std::size_t bucket_of(std::uint64_t ns) noexcept {
        if (ns < linear) return static_cast<std::size_t>(ns);
        const unsigned exponent = static_cast<unsigned>(std::bit_width(ns)) - 1;  // >= 4
        if (exponent >= 40) return buckets - 1;
        const auto sub = static_cast<std::size_t>((ns >> (exponent - 3)) & (sub_buckets - 1));
        return linear + (exponent - 4) * sub_buckets + sub;
    }

    /// The upper edge of a bucket: a percentile is reported as "at most this".
    static std::uint64_t upper_bound_of(std::size_t bucket) noexcept {
        if (bucket < linear) return bucket;
        const std::size_t exponent = (bucket - linear) / sub_buckets + 4;
        const std::size_t sub = (bucket - linear) % sub_buckets;
        const std::uint64_t step = std::uint64_t{1} << (exponent - 3);
        return (std::uint64_t{1} << exponent) + (sub + 1) * step - 1;
    }

    std::uint64_t count() const noexcept {
        std::uint64_t n = 0;
        for (auto c : counts) n += c;
        return n;
    }

    /// The value below which a fraction `q` (0..1) of the samples lie; 0 without samples.
    std::uint64_t percentile(double q) const noexcept {
        const std::uint64_t total = count();
        if (total == 0) return 0;
        const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t b = 0; b < buckets; ++b) {
            seen += counts[b];
            if (seen >= rank) return upper_bound_of(b);
        }
        return upper_bound_of(buckets - 1);
    }

    latency_snapshot operator-(const latency_snapshot& earlier) const noexcept {
        latency_snapshot d;
        for (std::size_t b = 0; b < buckets; ++b) d.counts[b] = counts[b] - earlier.counts[b];
        return d;
    }

    std::array<std::uint64_t, buckets> counts{};
};

/// A latency histogram written by many threads and read by one. Each writing thread gets its
/// own shard, so the two workers of the pool never bounce a cache line between them on the
/// hot path; the reader sums the shards (a slightly torn read is fine for a progress line).
class latency_histogram {
public:
    void record(std::uint64_t ns) noexcept {
        my_shard().counts[latency_snapshot::bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    }

    latency_snapshot snapshot() const noexcept {
        latency_snapshot s;
        for (const auto& shard : shards_)
            for (std::size_t b = 0; b < latency_snapshot::buckets; ++b)
                s.counts[b] += shard.counts[b].load(std::memory_order_relaxed);
        return s;
    }

private:
    static constexpr std::size_t shard_count = 8;

    struct alignas(64) shard {
        std::array<std::atomic<std::uint64_t>, latency_snapshot::buckets> counts{};
    };

    shard& my_shard() noexcept {
        // Threads beyond shard_count share shards; that only costs some contention.
        thread_local const std::size_t index = next_shard_.fetch_add(1, std::memory_order_relaxed) % shard_count;
        return shards_[index];
    }

    std::array<shard, shard_count> shards_{};
    std::atomic<std::size_t> next_shard_{0};
};

/// The demo's own counters. Agents on any thread update them; the stats agent and the final
/// report read them.
struct demo_metrics {
    std::atomic<std::uint64_t> quotes_published{0};
    /// Set by the feed when it has stopped for good: what every steady subscriber must receive.
    std::atomic<std::uint64_t> quotes_final{0};
    std::atomic<bool> feed_stopped{false};
    /// now_ns() when the reporter asked the environment to stop.
    std::atomic<std::int64_t> stop_requested_ns{0};

    std::atomic<std::uint64_t> order_violations{0};
    /// Steady subscribers that finished having received every quote published.
    std::atomic<std::uint64_t> steady_subscribers_complete{0};

    std::atomic<std::uint64_t> churn_coops_registered{0};
    std::atomic<std::uint64_t> churn_coops_deregistered{0};
    std::atomic<std::uint64_t> churn_agents_started{0};

    std::atomic<std::uint64_t> reminders_armed{0};
    std::atomic<std::uint64_t> reminders_delivered{0};
    std::atomic<std::uint64_t> reminders_cancelled{0};         ///< cancelled on purpose before they fired
    std::atomic<std::uint64_t> reminders_cancelled_at_end{0};  ///< still pending when the timekeeper finished
    std::atomic<std::uint64_t> reminders_after_cancel{0};      ///< delivered although cancelled: a bug

    /// Callbacks of the churned sessions' event objects (timers, inboxes, subscriptions).
    std::atomic<std::uint64_t> session_callbacks{0};
    /// Callbacks that found their sentinel set: they ran after shutdown()/destroy() had
    /// returned on another thread. A bug.
    std::atomic<std::uint64_t> session_callbacks_after_shutdown{0};
    std::atomic<std::uint64_t> session_objects_stopped_by_themselves{0};  ///< from their own callbacks
    std::atomic<std::uint64_t> session_objects_stopped_by_others{0};      ///< from another thread or session

    /// Requests to the named objects, as the demo saw them end: each is counted issued before
    /// it is sent, then once in a final state by the callback, coroutine or thread that waited.
    std::atomic<std::uint64_t> requests_issued{0};
    std::atomic<std::uint64_t> requests_seen_replied{0};
    std::atomic<std::uint64_t> requests_seen_rejected{0};
    std::atomic<std::uint64_t> requests_seen_abandoned{0};
    std::atomic<std::uint64_t> requests_seen_no_object{0};  ///< rejected: no object had the name
    std::atomic<std::uint64_t> requests_seen_timed_out{0};  ///< abandoned: the timeout passed
    std::atomic<std::uint64_t> requests_seen_went_away{0};  ///< abandoned: queued when its object went away
    std::atomic<std::uint64_t> requests_seen_by_then{0};
    std::atomic<std::uint64_t> requests_seen_by_co_await{0};
    std::atomic<std::uint64_t> requests_seen_by_blocking{0};  ///< future() and wait() on a foreign thread
    /// Requests whose then-callback or coroutine went without seeing them final. A bug.
    std::atomic<std::uint64_t> requests_unseen{0};
    std::atomic<std::uint64_t> request_tasks_started{0};
    std::atomic<std::uint64_t> request_tasks_finished{0};
    /// Requester ticks that asked nothing because too many requests were still in flight.
    std::atomic<std::uint64_t> request_ticks_skipped{0};
    /// Replies that did not answer what was asked (another symbol, bid not below ask). A bug.
    std::atomic<std::uint64_t> bad_replies{0};
    /// Set once every request issued was seen final, before the environment was asked to stop.
    std::atomic<bool> requests_drained{false};
    /// `demo --nodes`: of the requests above, those to the pricing object of the second process
    /// (a node's `pricing/quote`), by the final state the requester saw.
    std::atomic<std::uint64_t> remote_issued{0};
    std::atomic<std::uint64_t> remote_replied{0};
    std::atomic<std::uint64_t> remote_rejected{0};
    std::atomic<std::uint64_t> remote_abandoned{0};
    std::atomic<std::uint64_t> risk_registrations{0};
    std::atomic<std::uint64_t> risk_shut_down_by_thread{0};   ///< shutdown() from the registering thread
    std::atomic<std::uint64_t> risk_destroyed_by_handler{0};  ///< destroy() inside its own handler
    /// Handlers that found their sentinel set: they ran after an unregister had returned. A bug.
    std::atomic<std::uint64_t> named_handler_after_unregister{0};

    /// Flow control (demo_flow.hpp): the tape behind its drop limit, the breaker's states, the
    /// chain fed by a plain thread.
    std::atomic<std::uint64_t> tape_recorded{0};
    std::atomic<std::uint64_t> tape_dropped{0};       ///< by its limit (read when it finished)
    std::atomic<std::uint64_t> tape_most_waiting{0};  ///< the most quotes seen waiting for it
    std::atomic<std::uint64_t> breaker_trips{0};        ///< entries into `open`
    std::atomic<std::uint64_t> breaker_time_limits{0};  ///< entries into `half_open`: open's time limit ran out
    std::atomic<std::uint64_t> breaker_closings{0};     ///< entries into `closed`
    std::atomic<bool> breaker_open_at_end{false};
    std::atomic<std::uint64_t> ticks_sent{0};
    std::atomic<std::uint64_t> ticks_read{0};
    std::atomic<std::uint64_t> ticks_out_of_order{0};  ///< a bug
    std::atomic<std::uint64_t> ticks_refused_at_stop{0};

    latency_histogram latency;
};

}  // namespace mailroom::tool
