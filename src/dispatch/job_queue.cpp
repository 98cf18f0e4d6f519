// job_queue: threads of its own for blocking work, started on demand between the knobs, with
// fair sub-queues per poster, a bounded backlog, deadlines and a counted teardown.
//
// Threads: one mutex (m_) guards the backlog, the knobs, the thread records and the counters.
// A job has no lock: its state moves by compare-and-swap on one word that also carries the
// hand-over of its continuation and its waiters' flag (job_queue.hpp), and a move made under
// m_ is told (waiters woken, continuation run) after m_ is released. Job threads sleep on one
// condition variable (never a sleep loop). Per job, a post allocates nothing here (the
// sub-queues are intrusive lists) and, with an unbounded backlog and every thread it may need
// awake, takes no lock: it pushes the job on the intake, which a thread moves to the
// sub-queues under m_ when it looks for work (refresh_path_locked() says when a post must take
// m_ instead). A thread takes m_ once per job, to account the job it finished and pick the
// next. What shows most is a wake-up (tens of microseconds here): a thread that ran out of
// jobs spins a little first (one at a time), and a post that a spinner will see wakes nobody.

#include <mailroom/dispatch/job_queue.hpp>

#include <mailroom/core/handle_access.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <pthread.h>

#include <algorithm>
#include <climits>
#include <list>
#include <thread>
#include <unordered_map>
#include <vector>

namespace mailroom {

const char* to_string(job_state s) noexcept {
    switch (s) {
    case job_state::queued: return "queued";
    case job_state::running: return "running";
    case job_state::succeeded: return "succeeded";
    case job_state::failed: return "failed";
    case job_state::cancelled: return "cancelled";
    case job_state::expired: return "expired";
    case job_state::discarded: return "discarded";
    }
    return "?";
}

namespace internal {

namespace {
std::atomic<std::uint64_t> next_job_id{1};
/// What a job thread's heartbeat shows as the running "message type".
struct job_tag {};
const running_kind job_kind = register_running_kind("job");
}  // namespace

std::string job_core::name() const {
    if (!name_.empty()) return name_;
    return work_type_ ? readable_name(message_type(*work_type_)) : std::string();
}

bool job_core::move(job_state from, job_state to) noexcept {
    std::uint32_t w = word_.load(std::memory_order_relaxed);
    do {
        if ((w & state_mask) != static_cast<std::uint32_t>(from)) return false;
        // acq_rel: the move to a final state publishes the result (release) and, when the
        // continuation was ready, reads what continue_with() wrote (acquire).
    } while (!word_.compare_exchange_weak(w, (w & ~state_mask) | static_cast<std::uint32_t>(to),
                                          std::memory_order_acq_rel, std::memory_order_relaxed));
    if (to >= job_state::succeeded) run_cont_ = (w & cont_ready) != 0;
    return true;
}

void job_core::complete() noexcept {
    // Waiters set their flag before they sleep and look at the state after: one that set it
    // before the move to final is woken here; one after sees the final state and never sleeps.
    if (word_.load(std::memory_order_relaxed) & has_waiters) futex_wake(word_, INT32_MAX);
    if (std::exchange(run_cont_, false)) cont_(this, cont_arg_);
}

bool job_core::wait_for(std::chrono::nanoseconds timeout) const noexcept {
    const auto until = clock::now() + timeout;
    auto& w = const_cast<std::atomic<std::uint32_t>&>(word_);
    for (;;) {
        std::uint32_t seen = w.load(std::memory_order_acquire);
        if ((seen & state_mask) >= static_cast<std::uint32_t>(job_state::succeeded)) return true;
        if (!(seen & has_waiters)) {
            if (!w.compare_exchange_weak(seen, seen | has_waiters, std::memory_order_acquire,
                                         std::memory_order_relaxed))
                continue;
            seen |= has_waiters;
        }
        const auto left = until - clock::now();
        if (left.count() <= 0) return false;
        futex_wait(w, seen, std::chrono::duration_cast<std::chrono::nanoseconds>(left).count());
    }
}

void job_core::claim_continuation() {
    if (word_.fetch_or(cont_claimed, std::memory_order_relaxed) & cont_claimed)
        throw usage_error("job #" + std::to_string(id_) + " of job queue '" + queue_name() +
                          "': it already has a completion (then or co_await: one of them, once)");
}

void job_core::continue_with(void (*fn)(job_core*, void*) noexcept, void* arg) noexcept {
    cont_ = fn;
    cont_arg_ = arg;
    // Whichever comes second runs the continuation: this thread, when the job was final before
    // the continuation was ready; the thread that moves it to final otherwise (move() saw
    // cont_ready and reads cont_ after the acquire of its exchange).
    const std::uint32_t w = word_.fetch_or(cont_ready, std::memory_order_acq_rel);
    if ((w & state_mask) >= static_cast<std::uint32_t>(job_state::succeeded)) fn(this, arg);
}

class job_queue_impl final : public dispatcher_impl {
public:
    job_queue_impl(std::string name, const job_queue::params& p)
        : dispatcher_impl(std::move(name), std::string(job_queue::handle::kind_name)), p_(p) {
        check_knobs(p.min, p.floor, p.desired, p.max);
        set_watchdog(p.watchdog);
    }

    ~job_queue_impl() override { join(); }

    /// Starts the floor threads; after construction (the threads hold no reference back).
    void start() {
        std::lock_guard g(m_);
        while (threads_ < p_.floor) spawn_locked();
    }

    std::shared_ptr<binder_impl> make_binder() override {
        throw binding_error("dispatcher '" + name() +
                            "' (job_queue) runs jobs: no session or agent can be bound to it; post_job() to it");
    }

    void join() noexcept override {
        std::vector<job_core*> dropped;
        {
            std::lock_guard g(m_);
            if (!stopping_) {
                stopping_ = true;
                refresh_path_locked();
                // Posts that come after this find the intake closed and are refused; those
                // before it are discarded with the rest.
                take_intake_locked(intake_.exchange(intake_closed(), std::memory_order_acq_rel));
                dropped.swap(intake_dropped_);
                for (auto& [key, q] : subs_)
                    for (job_core* j = q.head; j;) {
                        job_core* next = std::exchange(j->next_, nullptr);
                        if (j->move(job_state::queued, job_state::discarded)) ++discarded_;
                        dropped.push_back(j);
                        j = next;
                    }
                subs_.clear();
                ring_head_ = ring_tail_ = nullptr;
                last_ = nullptr;
                pending_ = 0;
                drained_.notify_all();
                for (auto& r : recs_)
                    if (r.current) r.current->stop_.request_stop();
                wake_seq_.store(wake_seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
                cv_.notify_all();
            }
            // Out of recs_ (which posts and idle threads reap) into joining_, where the
            // teardown watch still finds a running job's name in describe_worker().
            joining_.splice(joining_.end(), recs_);
        }
        for (job_core* j : dropped) {
            if (j->state() == job_state::discarded) j->complete();
            j->release();
        }
        // Running jobs saw their stop_token; their threads leave once they return.
        for (auto& r : joining_)
            if (r.thread.joinable()) r.thread.join();
        std::lock_guard g(m_);
        joining_.clear();
    }

    void discard_queued() noexcept override {}

    dispatcher_stats stats() const override {
        dispatcher_stats s;
        s.name = name();
        s.kind = kind();
        std::lock_guard g(m_);
        s.threads = threads_;
        const_cast<job_queue_impl*>(this)->take_intake_locked();  // what was posted is queued
        s.queue_depth = pending_;
        for (const auto& r : recs_)
            if (!r.done) s.workers.push_back(read_heartbeat(r.beat));
        return s;
    }

    // A job is named by its label and its poster; the heartbeat shows only its id. The job a
    // thread runs is held (r.current, under m_) until the thread let go of it.
    running_detail describe_worker(const heartbeat& beat) const override {
        running_detail out;
        out.job = true;
        std::lock_guard g(m_);
        for (const auto* recs : {&recs_, &joining_})
            for (const auto& r : *recs)
                if (&r.beat == &beat && r.current) {
                    out.job_id = r.current->id_;
                    out.poster = r.current->poster_context_;
                    const std::string n = r.current->name();
                    out.what = n.empty() ? "job #" + std::to_string(out.job_id) : "job '" + n + "'";
                }
        return out;
    }

    job_queue::stats job_stats() const {
        std::lock_guard g(m_);
        const_cast<job_queue_impl*>(this)->take_intake_locked();  // what was posted is counted
        job_queue::stats s;
        s.name = name();
        s.min = p_.min;
        s.floor = p_.floor;
        s.desired = p_.desired;
        s.max = p_.max;
        s.threads = threads_;
        s.idle_threads = idle_;
        s.running = active_;
        s.backlog = pending_;
        s.posted = posted_;
        s.refused = refused_;
        s.completed = completed_;
        s.failed = failed_;
        s.cancelled = cancelled_;
        s.expired = expired_;
        s.overran = overran_;
        s.discarded = discarded_;
        s.completions_dropped = completions_dropped_.load(std::memory_order_relaxed);
        s.threads_started = threads_started_;
        s.threads_exited = threads_exited_;
        s.wakeups = wakeups_;
        s.spin_takes = spin_takes_;
        s.wait_total = wait_total_;
        s.wait_max = wait_max_;
        s.run_total = run_total_;
        s.run_max = run_max_;
        return s;
    }

    bool drain(std::chrono::nanoseconds timeout) {
        std::unique_lock l(m_);
        auto idle = [&] {
            take_intake_locked();
            return pending_ == 0 && active_ == 0;
        };
        if (idle() || timeout.count() <= 0) return idle();
        if (current_dispatcher())
            throw usage_error("job queue '" + name() +
                              "': drain() on a dispatcher's or a job queue's thread could wait for itself");
        return drained_.wait_for(l, timeout, idle);
    }

    void set_desired(std::size_t n) {
        std::lock_guard g(m_);
        check_knobs(p_.min, p_.floor, n, p_.max);
        p_.desired = n;
        grow_locked();
        refresh_path_locked();
        cv_.notify_all();
    }

    void set_floor(std::size_t n) {
        std::lock_guard g(m_);
        check_knobs(p_.min, n, p_.desired, p_.max);
        p_.floor = n;
        if (!stopping_)
            while (threads_ < p_.floor) spawn_locked();
        // Threads above a lowered floor exit after their next idle time.
        cv_.notify_all();
    }

    bool submit(job_core* j, std::uint64_t poster, bool try_only) {
        // What needs no lock is done before it: the threads wait for m_. (A refused job keeps
        // its queue, which names it in its errors.)
        const auto now = clock::now();
        j->queue_ = std::static_pointer_cast<job_queue_impl>(shared_from_this());
        j->queued_at_ = now;
        j->poster_ = poster;
        if (p_.deadline.count() > 0) j->deadline_ = now + p_.deadline;  // set once, at construction
        if (p_.backlog == 0) {  // set once, at construction
            // No bound to check: the job goes on the intake without m_. The first thread that
            // looks for work under m_ moves it to its poster's sub-queue.
            j->add_ref();  // the backlog's
            job_core* head = intake_.load(std::memory_order_relaxed);
            do {
                if (head == intake_closed()) {
                    j->release();
                    std::lock_guard g(m_);
                    refused_locked(j);
                }
                j->next_ = head;
            } while (!intake_.compare_exchange_weak(head, j, std::memory_order_seq_cst, std::memory_order_relaxed));
            // The other half of a sleeper's check (refresh_path_locked, then the intake): with
            // every thread awake and enough of them, one of them will find the job; otherwise
            // the post looks under m_ whom to wake (or whom to start).
            if (fast_.load(std::memory_order_seq_cst)) return true;
            std::lock_guard g(m_);
            if (!stopping_) {
                take_intake_locked();
                grow_locked();
                wake_locked();
            }
            return true;
        }
        std::lock_guard g(m_);
        if (stopping_) refused_locked(j);
        take_intake_locked();  // a poster's earlier jobs stay ahead of this one
        if (pending_ >= p_.backlog) {
            ++refused_;
            if (try_only) return false;
            throw job_queue_full_error("job queue '" + name() + "': backlog full (" + std::to_string(p_.backlog) +
                                       " jobs): job #" + std::to_string(j->id_) + " refused");
        }
        j->add_ref();  // the backlog's
        queue_locked(j);
        grow_locked();
        wake_locked();
        return true;
    }

    /// Takes what the intake holds (or `list`, taken from it already) into the sub-queues, in
    /// the order it was posted, `for_self` by a job thread looking for work. Under m_.
    void take_intake_locked(job_core* list = nullptr, bool for_self = false) noexcept {
        if (!list) {
            // seq_cst: a thread about to sleep loads it after its refresh_path_locked() store.
            if (stopping_ || !intake_.load(std::memory_order_seq_cst)) return;
            list = intake_.exchange(nullptr, std::memory_order_acquire);
        }
        // The intake is a stack: the newest first. Reversed, the oldest goes first.
        job_core* oldest = nullptr;
        while (list && list != intake_closed()) {
            job_core* next = list->next_;
            list->next_ = oldest;
            oldest = list;
            list = next;
        }
        const bool took = oldest != nullptr;
        while (oldest) {
            job_core* j = oldest;
            oldest = std::exchange(j->next_, nullptr);
            if (stopping_) {
                // Closed at the teardown: discarded with the rest (join tells it).
                ++posted_;
                if (j->move(job_state::queued, job_state::discarded)) ++discarded_;
                intake_dropped_.push_back(j);
                continue;
            }
            queue_locked(j);
        }
        // Whoever took them tells the threads as a post under m_ would: a spinner watches the
        // intake, which is empty now. A job thread that takes them for itself is counted idle
        // (it must not wake a sleeper for itself), and no sleeper can be owed: a post that left
        // its job on the intake saw every thread awake, and a thread that sleeps after it looks
        // at the intake first. It tells a spinner of the jobs beyond its own.
        if (!took || stopping_) return;
        if (!for_self)
            wake_locked();
        else if (spinners_ > 0 && pending_ > 1)
            wake_seq_.store(wake_seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    /// A queued job was cancelled (its state moved already, under m_).
    void cancelled_locked() noexcept {
        --pending_;
        ++cancelled_;
        if (pending_ == 0 && active_ == 0) drained_.notify_all();
    }

    std::mutex& lock() const noexcept { return m_; }

    std::atomic<std::uint64_t> completions_dropped_{0};  // any thread

private:
    /// One poster's queued jobs, linked through job_core::next_ (no allocation per post).
    struct poster_queue {
        std::uint64_t key = 0;
        job_core* head = nullptr;
        job_core* tail = nullptr;  // fifo only
        poster_queue* ring_next = nullptr;
    };

    struct thread_rec {
        heartbeat beat;
        std::thread thread;
        job_core* current = nullptr;  // under m_
        bool done = false;            // under m_: left its loop
    };

    void check_knobs(std::size_t min, std::size_t floor, std::size_t desired, std::size_t max) const {
        if (!(min <= floor && floor <= desired && desired <= max && max > 0))
            throw job_queue_limits_error("job queue '" + name() + "': the knobs must keep min <= floor <= desired <= max" +
                                         " and max > 0; asked for min " + std::to_string(min) + ", floor " +
                                         std::to_string(floor) + ", desired " + std::to_string(desired) + ", max " +
                                         std::to_string(max));
    }

    /// Starts threads until every job that may run now has one (at most `desired`), and joins
    /// threads that exited.
    void grow_locked() {
        if (stopping_) return;
        take_intake_locked();  // the jobs posted without m_ count too
        for (auto it = recs_.begin(); it != recs_.end();) {
            if (it->done) {
                // It left its loop and only returns now: the join is short.
                it->thread.join();
                it = recs_.erase(it);
            } else {
                ++it;
            }
        }
        const std::size_t want = std::min(p_.desired, active_ + pending_);
        while (threads_ < want) spawn_locked();
    }

    void spawn_locked() {
        thread_rec& r = recs_.emplace_back();
        try {
            r.thread = std::thread([this, &r] { loop(r); });
        } catch (...) {
            recs_.pop_back();
            throw;
        }
        ++threads_;
        ++threads_started_;
        refresh_path_locked();
        std::string n = name().substr(0, 11) + "#job";
        ::pthread_setname_np(r.thread.native_handle(), n.c_str());
    }

    static job_core* intake_closed() noexcept { return reinterpret_cast<job_core*>(std::uintptr_t{1}); }

    /// Raises environment_stopped_error for `j`, counted refused. Under m_.
    [[noreturn]] void refused_locked(const job_core* j) {
        ++refused_;
        throw environment_stopped_error("job queue '" + name() + "' is shut down: job #" + std::to_string(j->id_) +
                                        " refused");
    }

    /// Appends `j` (its backlog reference taken) to its poster's sub-queue. Under m_.
    void queue_locked(job_core* j) {
        poster_queue& q = sub_queue_locked(j->poster_);
        // An intrusive list: a post allocates nothing here. fifo takes from the head and
        // appends; lifo takes from the head and pushes there.
        if (!q.head) {
            q.head = q.tail = j;
            enter_ring_locked(q);
        } else if (p_.order == job_queue::order::fifo) {
            q.tail->next_ = j;
            q.tail = j;
        } else {
            j->next_ = q.head;
            q.head = j;
        }
        ++pending_;
        ++posted_;
    }

    /// After jobs were queued: wakes a sleeper for those that outnumber the threads awake.
    /// Under m_.
    void wake_locked() noexcept {
        // A thread that is neither running a job nor asleep (spinning, back from a job, just
        // started) looks at the backlog under m_ before it sleeps, and takes a job: a sleeper
        // is woken only for the jobs that outnumber those. A spinner watches wake_seq_ (and
        // the intake), so it comes back for the job at once rather than at the end of its spin.
        // A sleeper woken already and not yet back under m_ is about to look too: woken again
        // for each post meanwhile, it would cost every one of them a system call.
        if (spinners_ > 0) wake_seq_.store(wake_seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        const std::size_t sleepers = idle_ - spinners_ - waking_;
        const std::size_t seeking = threads_ - active_ - sleepers;
        if (sleepers > 0 && active_ < p_.desired && pending_ > seeking) {
            ++waking_;
            ++wakeups_;
            cv_.notify_one();
            refresh_path_locked();
        }
    }

    /// Whether a post may leave its job on the intake without m_: every thread that may be
    /// needed is alive and none sleeps unwoken, so one of them will look at the intake before
    /// it sleeps. Under m_, after any change of those counts; seq_cst, against the intake.
    void refresh_path_locked() noexcept {
        const bool fast = !stopping_ && threads_ >= p_.desired && idle_ == spinners_ + waking_;
        if (fast_.load(std::memory_order_relaxed) != fast) fast_.store(fast, std::memory_order_seq_cst);
    }

    /// The sub-queue of `poster`, made when it has none. The last one used is kept at hand, so
    /// that a poster posting in a row finds it without a lookup.
    poster_queue& sub_queue_locked(std::uint64_t poster) {
        if (last_ && last_->key == poster) return *last_;
        poster_queue* prev = last_;
        auto [it, fresh] = subs_.try_emplace(poster);
        it->second.key = poster;
        last_ = &it->second;
        // Only the kept one and those with jobs queued stay: an empty one that is no longer
        // kept goes (a map's nodes do not move, so last_ stays valid).
        if (prev && !prev->head) subs_.erase(prev->key);
        return *last_;
    }

    /// `q` got its first job: it joins the end of the turn.
    void enter_ring_locked(poster_queue& q) noexcept {
        q.ring_next = nullptr;
        if (ring_tail_)
            ring_tail_->ring_next = &q;
        else
            ring_head_ = &q;
        ring_tail_ = &q;
    }

    /// Whether this thread may start a job now (the intake taken first). Under m_.
    bool has_work_locked() noexcept {
        take_intake_locked(nullptr, true);
        return active_ < p_.desired && pending_ > 0;
    }

    /// The next job to run, moved to running (null when the backlog held only dead ones);
    /// jobs past their deadline (at `now`) go to `expired`.
    job_core* pick_locked(std::vector<job_core*>& expired, clock::time_point now) {
        while (poster_queue* q = ring_head_) {
            ring_head_ = q->ring_next;
            if (!ring_head_) ring_tail_ = nullptr;
            job_core* j = q->head;
            q->head = std::exchange(j->next_, nullptr);
            // Round-robin: a poster with more queued goes to the back of the turn; an empty
            // sub-queue goes, unless it is the one kept at hand.
            if (q->head)
                enter_ring_locked(*q);
            else if (q != last_)
                subs_.erase(q->key);
            if (j->deadline_ < now && j->move(job_state::queued, job_state::expired)) {
                --pending_;
                ++expired_;
                expired.push_back(j);
                continue;
            }
            if (j->move(job_state::queued, job_state::running)) {
                --pending_;
                return j;
            }
            // Cancelled while queued: counted by cancel(); only the backlog's reference is left.
            expired.push_back(j);
        }
        return nullptr;
    }

    /// Under m_ (held by `l`), with no job this thread may start: spins with m_ released until a
    /// post or the shutdown moves wake_seq_, or the spin time passes (never past `until`).
    /// Back under m_; true when there is a job to start or the queue stops.
    bool spin_locked(std::unique_lock<std::mutex>& l, clock::time_point until) {
        ++spinners_;
        const std::uint32_t seen = wake_seq_.load(std::memory_order_relaxed);
        const auto now = clock::now();
        const auto end = p_.spin < until - now ? now + p_.spin : until;
        l.unlock();
        for (unsigned i = 1;; ++i) {
            if (wake_seq_.load(std::memory_order_relaxed) != seen || intake_.load(std::memory_order_relaxed)) break;
            cpu_relax();
            if ((i & 15) == 0 && clock::now() >= end) break;  // the clock every few iterations only
        }
        l.lock();
        --spinners_;
        if (stopping_) return true;
        if (has_work_locked()) {
            ++spin_takes_;
            return true;
        }
        return false;
    }

    void loop(thread_rec& r) noexcept {
        tls_heartbeat = &r.beat;
        set_current_dispatcher(this);
        // Listed with the watchdog before the first job (never under m_: the watcher takes m_
        // inside the listing's lock, in describe_worker).
        attach_worker(r.beat);
        std::vector<job_core*> dead;
        // Spin only after a job: a thread that has been idle for a whole idle time (a floor
        // thread) sleeps at once.
        bool may_spin = false;
        // The job this thread finished last, told (its waiters, its continuation) once m_ is
        // released: its books and the pick of the next job share one hold of m_.
        job_core* done = nullptr;
        // The clock read that ended the last job also starts the next one (and judges the
        // deadlines of the jobs picked meanwhile): one read per job, outside m_.
        clock::time_point now = clock::now();
        std::unique_lock l(m_);
        for (;;) {
            job_core* j = nullptr;
            if (!stopping_ && has_work_locked()) {
                j = pick_locked(dead, now);
                if (j) {
                    ++active_;
                    r.current = j;
                } else if (pending_ == 0 && active_ == 0) {
                    drained_.notify_all();
                }
            }
            if (done || !dead.empty()) {
                l.unlock();
                if (done) {
                    done->complete();
                    std::exchange(done, nullptr)->release();
                }
                for (job_core* d : dead) {
                    if (d->state() == job_state::expired) d->complete();
                    d->release();
                }
                dead.clear();
                if (!j) {
                    // Look again: a post may have come meanwhile.
                    l.lock();
                    continue;
                }
            } else if (j) {
                l.unlock();
            }
            if (j) {
                // (A job posted after that read starts at its posting, not before.)
                const auto started = std::max(now, j->queued_at_);
                // A job past its deadline while it runs is reported by the watchdog.
                r.beat.deadline_ns.store(j->deadline_ == clock::time_point::max()
                                             ? 0
                                             : std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                   j->deadline_.time_since_epoch()).count(),
                                         std::memory_order_relaxed);
                r.beat.begin();
                note_running(job_kind, j->id_, &typeid(job_tag));
                const job_state outcome = j->run(j->stop_.get_token());
                r.beat.end();
                r.beat.deadline_ns.store(0, std::memory_order_relaxed);
                const auto finished = now = clock::now();
                l.lock();
                r.current = nullptr;
                --active_;
                ++completed_;
                if (outcome == job_state::failed) ++failed_;
                if (finished > j->deadline_) ++overran_;
                const auto ran = std::chrono::duration_cast<std::chrono::nanoseconds>(finished - started);
                const auto w = std::chrono::duration_cast<std::chrono::nanoseconds>(started - j->queued_at_);
                wait_total_ += w;
                wait_max_ = std::max(wait_max_, w);
                run_total_ += ran;
                run_max_ = std::max(run_max_, ran);
                j->move(job_state::running, outcome);
                if (pending_ == 0 && active_ == 0) drained_.notify_all();
                done = j;
                may_spin = true;
                continue;
            }
            if (stopping_) break;
            ++idle_;
            const auto until = clock::now() + p_.idle_time;
            // One spinner at a time is enough to take the next post; more would only take the
            // CPU the posters need.
            bool woken = may_spin && spinners_ == 0 && p_.spin.count() > 0 && active_ < p_.desired &&
                         spin_locked(l, until);
            if (!woken) {
                // About to sleep: posts must take m_ from now on (and wake it), and what they
                // left on the intake before they could see that is looked at first.
                refresh_path_locked();
                woken = stopping_ || has_work_locked();
            }
            while (!woken) {
                const bool timed_out = cv_.wait_until(l, until) == std::cv_status::timeout;
                // Back under m_, woken by a post (or by a broadcast, a time-out, spuriously): no
                // longer one that a post need not wake. A few too few leave a post waking one
                // more than it needs; never too many, so no post fails to wake a sleeper it needs.
                if (waking_ > 0) --waking_;
                // A sleeper again unless it finds work: posts must see that before it looks.
                refresh_path_locked();
                woken = stopping_ || has_work_locked();
                if (timed_out) break;
            }
            --idle_;
            refresh_path_locked();
            may_spin = woken;
            if (!woken && threads_ > p_.floor) break;
            now = clock::now();
        }
        --threads_;
        ++threads_exited_;
        refresh_path_locked();
        // Unlisted before the record may be joined and freed (grow_locked joins it once done),
        // outside m_ (see attach_worker above).
        l.unlock();
        detach_worker(r.beat);
        l.lock();
        r.done = true;
    }

    mutable std::mutex m_;
    std::condition_variable cv_;       // job threads wait for work
    std::condition_variable drained_;  // drain() waits for nothing queued or running
    job_queue::params p_;
    bool stopping_ = false;
    std::unordered_map<std::uint64_t, poster_queue> subs_;  // a poster's queued jobs
    poster_queue* ring_head_ = nullptr;  // posters with jobs queued, in turn (through ring_next)
    poster_queue* ring_tail_ = nullptr;
    poster_queue* last_ = nullptr;  // the sub-queue posted to last (kept even when empty)
    std::list<thread_rec> recs_;                                     // stable addresses: heartbeats
    std::list<thread_rec> joining_;  // under m_: recs_ as join() took them, until it joined them
    std::size_t pending_ = 0, threads_ = 0, idle_ = 0, active_ = 0;
    std::size_t spinners_ = 0;  // of the idle_, those spinning (at most one)
    std::size_t waking_ = 0;    // of the idle_ asleep, those a post woke that are not back yet
    std::vector<job_core*> intake_dropped_;  // taken from the closed intake: join() tells them
    // Moved (under m_) by a post while a thread spins and by the shutdown; the spinner reads it
    // without m_. Its own cache line: the spinner's reads do not contend with m_'s writes.
    alignas(64) std::atomic<std::uint32_t> wake_seq_{0};
    // Jobs posted without m_ (an unbounded backlog), newest first, linked through next_; closed
    // (intake_closed()) by the teardown. Its own cache line, with the flag that allows it: the
    // posters write them, the threads read them.
    alignas(64) std::atomic<job_core*> intake_{nullptr};
    std::atomic<bool> fast_{false};  // refresh_path_locked()
    std::uint64_t posted_ = 0, refused_ = 0, completed_ = 0, failed_ = 0, cancelled_ = 0, expired_ = 0,
                  overran_ = 0, discarded_ = 0, threads_started_ = 0, threads_exited_ = 0,
                  wakeups_ = 0, spin_takes_ = 0;
    std::chrono::nanoseconds wait_total_{0}, wait_max_{0}, run_total_{0}, run_max_{0};
};

const std::string& job_core::queue_name() const noexcept {
    static const std::string none;
    return queue_ ? queue_->name() : none;
}

bool job_core::cancel() noexcept {
    // queue_ is set before the job is handed to anyone, and never changes after.
    if (job_queue_impl* q = queue_.get()) {
        bool cancelled = false;
        {
            std::lock_guard g(q->lock());
            q->take_intake_locked();  // a job on the intake is counted queued once in its sub-queue
            if (move(job_state::queued, job_state::cancelled)) {
                q->cancelled_locked();
                cancelled = true;
            }
        }
        if (cancelled) {
            complete();
            return true;
        }
    }
    if (state() == job_state::running) stop_.request_stop();
    return false;
}

namespace {
job_queue_impl& queue_of(const job_queue::handle& h) {
    return static_cast<job_queue_impl&>(checked(handle_access::impl(static_cast<const dispatcher&>(h))));
}
}  // namespace

void job_completion_dropped(const job_core* j) noexcept {
    if (job_queue_impl* q = j->queue_.get()) q->completions_dropped_.fetch_add(1, std::memory_order_relaxed);
}

bool submit_job(const job_queue::handle& q, job_core* j, std::uint64_t poster, bool try_only) {
    job_queue_impl& impl = queue_of(q);
    j->id_ = next_job_id.fetch_add(1, std::memory_order_relaxed);
    return impl.submit(j, poster, try_only);
}

}  // namespace internal

namespace job_queue {

void handle::set_desired(std::size_t n) const { internal::queue_of(*this).set_desired(n); }
void handle::set_floor(std::size_t n) const { internal::queue_of(*this).set_floor(n); }
bool handle::drain(std::chrono::nanoseconds timeout) const { return internal::queue_of(*this).drain(timeout); }
job_queue::stats handle::job_stats() const { return internal::queue_of(*this).job_stats(); }

handle make_job_queue(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(internal::add_to_host(host, name, [&] {
        auto q = std::make_shared<internal::job_queue_impl>(name, p);
        q->start();
        return std::static_pointer_cast<internal::dispatcher_impl>(q);
    }));
}

}  // namespace job_queue

}  // namespace mailroom
