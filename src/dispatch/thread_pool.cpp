// thread_pool: N workers share a run queue of ready strands. A strand is the FIFO queue of one
// cooperation or one agent; it is in the run queue at most once, so at most one worker runs it
// at a time, which is what makes a bound context serial.

#include <mailroom/core/handle_access.hpp>
#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/thread_pool_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <pthread.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mailroom::internal {
namespace {

using thread_pool::fifo;

class thread_pool_dispatcher;

class strand final : public event_queue {
public:
    explicit strand(thread_pool_dispatcher* pool) noexcept : pool_(pool) {}

    void push(demand* d) noexcept override;

    mpsc_queue queue;
    // Demands pushed and not yet finished. The pusher that moves it from 0 schedules the strand;
    // the worker holding it subtracts what it ran and re-schedules if anything is left.
    std::atomic<std::int64_t> pending{0};
    strand* ready_next = nullptr;  // run-queue link, guarded by the pool's lock
    std::atomic<std::size_t> users{0};  // bindings sharing it (fifo::cooperation); from 0 only under binding_lock

private:
    thread_pool_dispatcher* pool_;
};

class thread_pool_dispatcher final : public dispatcher_impl {
public:
    thread_pool_dispatcher(std::string name, const thread_pool::params& p)
        : dispatcher_impl(std::move(name), std::string(thread_pool::handle::kind_name)), params_(p) {
        set_watchdog(p.watchdog);
        if (params_.threads == 0) params_.threads = std::max(1u, std::thread::hardware_concurrency());
        if (params_.max_demands_at_once == 0) params_.max_demands_at_once = 1;
        beats_ = std::make_unique<heartbeat[]>(params_.threads);
        threads_.reserve(params_.threads);
        try {
            for (std::size_t i = 0; i < params_.threads; ++i) {
                threads_.emplace_back([this, i] { run(i); });
                std::string n = (this->name() + "#" + std::to_string(i)).substr(0, 15);
                ::pthread_setname_np(threads_.back().native_handle(), n.c_str());
            }
        } catch (...) {
            join();
            throw;
        }
    }

    ~thread_pool_dispatcher() override {
        join();
        discard_queued();  // what stale senders pushed after the join
    }

    std::shared_ptr<binder_impl> make_binder() override { return make_fifo_binder(params_.order); }

    std::shared_ptr<binder_impl> make_fifo_binder(fifo order) {
        return std::make_shared<pool_binder>(std::static_pointer_cast<thread_pool_dispatcher>(shared_from_this()),
                                             order);
    }

    void schedule(strand* s) noexcept {
        {
            std::lock_guard g(run_lock_);
            s->ready_next = nullptr;
            if (tail_)
                tail_->ready_next = s;
            else
                head_ = s;
            tail_ = s;
            ready_.fetch_add(1, std::memory_order_seq_cst);
        }
        // Pairs with a worker's increment of sleepers_ before its last look at ready_.
        if (sleepers_.load(std::memory_order_seq_cst) > 0) {
            epoch_.fetch_add(1, std::memory_order_seq_cst);
            futex_wake(epoch_, 1);
        }
    }

    void join() noexcept override {
        std::lock_guard g(join_lock_);
        if (joined_) return;
        joined_ = true;
        shutdown();
        stop_.store(true, std::memory_order_seq_cst);
        epoch_.fetch_add(1, std::memory_order_seq_cst);
        futex_wake(epoch_, static_cast<int>(params_.threads));
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        discard_queued();
    }

    // With no worker left: whatever stale senders left behind is discarded on this thread.
    void discard_queued() noexcept override {
        std::lock_guard g(binding_lock_);
        for (auto& s : strands_) {
            spin_backoff backoff;
            while (s->queue.maybe_nonempty()) {
                mpsc_node* n = s->queue.pop();
                if (!n) {
                    backoff.pause();
                    continue;
                }
                auto* d = static_cast<demand*>(n);
                d->execute(d, demand_mode::discard);
            }
        }
    }

    dispatcher_stats stats() const override {
        dispatcher_stats s;
        s.name = name();
        s.kind = kind();
        s.threads = params_.threads;
        {
            std::lock_guard g(binding_lock_);
            s.bound_contexts = bound_.load(std::memory_order_relaxed);
            for (auto& st : strands_) {
                auto p = st->pending.load(std::memory_order_relaxed);
                if (p > 0) s.queue_depth += static_cast<std::size_t>(p);
            }
        }
        for (std::size_t i = 0; i < params_.threads; ++i) {
            s.workers.push_back(read_heartbeat(beats_[i]));
        }
        return s;
    }

private:
    struct pool_binder final : binder_impl {
        pool_binder(std::shared_ptr<thread_pool_dispatcher> d, fifo o)
            : binder_impl(d.get()), disp(std::move(d)), order(o) {}

        binding prepare(const void* coop_key) override {
            auto& p = *disp;
            std::lock_guard g(p.binding_lock_);
            p.check_accepting();
            strand* s = nullptr;
            if (order == fifo::cooperation) {
                auto it = p.by_coop_.find(coop_key);
                if (it != p.by_coop_.end()) s = it->second;
            }
            if (!s) {
                s = p.take_strand();
                if (order == fifo::cooperation) {
                    try {
                        p.by_coop_.emplace(coop_key, s);
                    } catch (...) {
                        p.free_.push_back(s);
                        throw;
                    }
                }
            }
            s->users.fetch_add(1, std::memory_order_relaxed);
            p.bound_.fetch_add(1, std::memory_order_relaxed);
            return {s, s};
        }

        binding prepare_again(const binding& first, const void* coop_key) override {
            if (order != fifo::cooperation) return prepare(coop_key);
            // The strand is the cooperation's and `first` holds it: one more user, no lock.
            auto& p = *disp;
            p.check_accepting();
            static_cast<strand*>(first.token)->users.fetch_add(1, std::memory_order_relaxed);
            p.bound_.fetch_add(1, std::memory_order_relaxed);
            return first;
        }

        void release(const binding& b, const void* coop_key) noexcept override {
            auto& p = *disp;
            auto* s = static_cast<strand*>(b.token);
            p.bound_.fetch_sub(1, std::memory_order_relaxed);
            if (s->users.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
            std::lock_guard g(p.binding_lock_);
            // A prepare() may have found the strand in by_coop_ (under the lock) and taken it
            // again; and of two releases that each saw the count reach zero, only the one that
            // still finds it listed for this cooperation frees it.
            if (s->users.load(std::memory_order_relaxed) != 0) return;
            if (order == fifo::cooperation) {
                auto it = p.by_coop_.find(coop_key);
                if (it == p.by_coop_.end() || it->second != s) return;
                p.by_coop_.erase(it);
            }
            p.free_.push_back(s);  // reserved in take_strand: cannot throw
        }

        std::shared_ptr<thread_pool_dispatcher> disp;
        fifo order;
    };

    // Caller holds binding_lock_. Strands are recycled, never freed before the dispatcher.
    strand* take_strand() {
        if (!free_.empty()) {
            strand* s = free_.back();
            free_.pop_back();
            return s;
        }
        strands_.push_back(std::make_unique<strand>(this));
        try {
            free_.reserve(strands_.size());
        } catch (...) {
            strands_.pop_back();
            throw;
        }
        return strands_.back().get();
    }

    strand* take_ready() noexcept {
        std::lock_guard g(run_lock_);
        strand* s = head_;
        if (s) {
            head_ = s->ready_next;
            if (!head_) tail_ = nullptr;
            ready_.fetch_sub(1, std::memory_order_relaxed);
        }
        return s;
    }

    // Spins for the configured time, then parks until a strand is scheduled or the pool stops.
    void wait_for_work(heartbeat& beat) noexcept {
        const std::int64_t spin_end = now_ns() + params_.spin.count();
        for (unsigned i = 1;; ++i) {
            if (ready_.load(std::memory_order_acquire) > 0 || stop_.load(std::memory_order_acquire)) return;
            cpu_relax();
            if ((i & 15) == 0 && now_ns() >= spin_end) break;
        }
        std::uint32_t e = epoch_.load(std::memory_order_seq_cst);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (ready_.load(std::memory_order_seq_cst) == 0 && !stop_.load(std::memory_order_seq_cst)) {
            beat.parks.store(beat.parks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
            futex_wait(epoch_, e);
        }
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }

    void run(std::size_t index) noexcept {
        heartbeat& beat = beats_[index];
        tls_heartbeat = &beat;
        set_current_dispatcher(this);
        attach_worker(beat, index);
        struct detach_at_end {
            const dispatcher_impl* d;
            heartbeat* b;
            ~detach_at_end() { d->detach_worker(*b); }
        } detach{this, &beat};
        const std::size_t cap = params_.max_demands_at_once;
        while (!stop_.load(std::memory_order_acquire)) {
            strand* s = take_ready();
            if (!s) {
                wait_for_work(beat);
                continue;
            }
            for (;;) {
                std::int64_t done = 0;
                while (static_cast<std::size_t>(done) < cap) {
                    mpsc_node* n = s->queue.pop();
                    if (!n) break;  // empty, or a push is mid-way: `pending` still counts it
                    auto* d = static_cast<demand*>(n);
                    beat.begin();
                    d->execute(d, demand_mode::run);
                    beat.end();
                    ++done;
                }
                std::int64_t left = s->pending.fetch_sub(done, std::memory_order_acq_rel) - done;
                if (left <= 0) break;
                // Stopping: leave the rest to join()'s discard. Without this check a strand that
                // keeps feeding itself (an agent sending to itself) would hold its worker, and
                // join(), forever.
                if (stop_.load(std::memory_order_acquire)) break;
                // Fairness: after `cap` demands the strand goes to the back of the run queue,
                // unless nobody else is waiting, in which case it simply continues here.
                if (ready_.load(std::memory_order_acquire) > 0) {
                    schedule(s);
                    break;
                }
                if (done == 0) cpu_relax();
            }
        }
    }

    thread_pool::params params_;
    std::unique_ptr<heartbeat[]> beats_;
    std::vector<std::thread> threads_;

    std::mutex run_lock_;
    strand* head_ = nullptr;
    strand* tail_ = nullptr;
    alignas(cache_line) std::atomic<std::size_t> ready_{0};
    alignas(cache_line) std::atomic<std::uint32_t> sleepers_{0};
    std::atomic<std::uint32_t> epoch_{0};
    std::atomic<bool> stop_{false};

    mutable std::mutex binding_lock_;
    std::vector<std::unique_ptr<strand>> strands_;
    std::vector<strand*> free_;
    std::map<const void*, strand*> by_coop_;
    std::atomic<std::size_t> bound_{0};

    std::mutex join_lock_;
    bool joined_ = false;
};

void strand::push(demand* d) noexcept {
    // Count first, then link: `pending` never undercounts what a worker can pop, so a worker that
    // finds the count above what it ran knows more is coming and keeps the strand scheduled.
    std::int64_t before = pending.fetch_add(1, std::memory_order_acq_rel);
    queue.push(d);
    if (before == 0) pool_->schedule(this);
}

}  // namespace

std::shared_ptr<dispatcher_impl> make_thread_pool(std::string name, const thread_pool::params& p) {
    return std::make_shared<thread_pool_dispatcher>(std::move(name), p);
}

std::shared_ptr<binder_impl> bind_fifo(dispatcher_impl& d, fifo order) {
    // Only a thread_pool dispatcher gets here: its handle was checked when it was made.
    if (d.kind() != thread_pool::handle::kind_name) fatal("bind_fifo on a dispatcher that is not thread_pool");
    return static_cast<thread_pool_dispatcher&>(d).make_fifo_binder(order);
}

}  // namespace mailroom::internal

namespace mailroom::thread_pool {

binder handle::bind_fifo(fifo order) const { return binder(internal::bind_fifo(internal::checked(internal::impl_of(*this)), order)); }

handle make_dispatcher(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(
        internal::add_to_host(host, name, [&] { return internal::make_thread_pool(name, p); }));
}

}  // namespace mailroom::thread_pool
