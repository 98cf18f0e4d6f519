#pragma once
// Workers started and stopped as contexts come and go (active_obj, active_group). A worker is
// stopped from its own thread (the last context's final demand runs there), so it cannot be
// joined at once: it is retired, joined later by whoever binds next or by the final join, and
// then reused. Worker objects are never freed before the dispatcher: a stale sender may still
// push into one (see event_queue).

#include <mailroom/core/error.hpp>

#include "worker.hpp"

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

namespace mailroom::internal {

class worker_set {
public:
    explicit worker_set(std::chrono::nanoseconds spin) noexcept : spin_(spin) {}

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
            w->start(thread_name);
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
    std::vector<std::unique_ptr<worker>> all_;
    std::vector<worker*> idle_;
    std::vector<worker*> retired_;
    std::size_t running_ = 0;
};

}  // namespace mailroom::internal
