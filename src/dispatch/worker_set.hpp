#pragma once
// Workers started and stopped as contexts come and go (active_obj, active_group). A worker is
// stopped from its own thread (the last context's final demand runs there), so it cannot be
// joined at once: it is retired, joined later by whoever binds next or by the final join, and
// then reused. Worker objects are never freed before the dispatcher: a stale sender may still
// push into one (see event_queue).

#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>

#include <mailroom/dispatch/worker.hpp>

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

namespace mailroom::internal {

class worker_set {
public:
    worker_set(std::chrono::nanoseconds spin, const dispatcher_impl* owner) noexcept : spin_(spin), owner_(owner) {}

    /// A started worker. Caller holds `lock`.
    worker* acquire(const std::string& thread_name) {
        reap_finished();
        worker* w = nullptr;
        if (!idle_.empty()) {
            w = idle_.back();
            idle_.pop_back();
        } else {
            all_.push_back(std::make_unique<worker>(spin_));
            w = all_.back().get();
        }
        try {
            w->start(thread_name, owner_);
        } catch (...) {
            idle_.push_back(w);
            throw;
        }
        ++running_;
        return w;
    }

    /// Queues the stop; the worker is joined later. Caller holds `lock`. Any thread.
    void retire(worker* w) noexcept {
        w->request_stop();
        try {
            retired_.push_back(w);
        } catch (...) {
            fatal("out of memory retiring a worker");
        }
        --running_;
    }

    /// Joins every worker; with no context left, nothing is running but retired ones.
    void join_all() noexcept {
        for (worker* w : retired_) w->join();
        for (worker* w : retired_) idle_.push_back(w);
        retired_.clear();
        for (auto& w : all_) w->discard_all();
    }

    /// With every worker joined: discards what was pushed since. Caller holds `lock`.
    void discard_all() noexcept {
        for (auto& w : all_) w->discard_all();
    }

    void collect(std::vector<worker_stats>& out) const {
        for (auto& w : all_) out.push_back(w->stats());
    }

    std::size_t running() const noexcept { return running_; }

    std::mutex lock;

private:
    void reap_finished() noexcept {
        for (std::size_t i = 0; i < retired_.size();) {
            if (retired_[i]->finished()) {
                retired_[i]->join();
                idle_.push_back(retired_[i]);
                retired_[i] = retired_.back();
                retired_.pop_back();
            } else {
                ++i;
            }
        }
    }

    std::chrono::nanoseconds spin_;
    const dispatcher_impl* owner_;
    std::vector<std::unique_ptr<worker>> all_;
    std::vector<worker*> idle_;
    std::vector<worker*> retired_;
    std::size_t running_ = 0;
};

/// What active_obj and active_group share: a worker_set, joined once, and its statistics.
class worker_set_dispatcher : public dispatcher_impl {
public:
    worker_set_dispatcher(std::string name, std::string kind, std::chrono::nanoseconds spin)
        : dispatcher_impl(std::move(name), std::move(kind)), workers_(spin, this) {}

    void join() noexcept final {
        std::lock_guard g(workers_.lock);
        if (joined_) return;
        joined_ = true;
        shutdown();
        workers_.join_all();
    }

    void discard_queued() noexcept final {
        std::lock_guard g(workers_.lock);
        workers_.discard_all();
    }

    dispatcher_stats stats() const final {
        dispatcher_stats s;
        s.name = name();
        s.kind = kind();
        std::lock_guard g(workers_.lock);
        s.threads = workers_.running();
        s.bound_contexts = bound_contexts();
        workers_.collect(s.workers);
        return s;
    }

protected:
    /// Contexts bound now; called with workers_.lock held.
    virtual std::size_t bound_contexts() const noexcept = 0;

    mutable worker_set workers_;

private:
    bool joined_ = false;
};

}  // namespace mailroom::internal
