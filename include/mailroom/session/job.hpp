#pragma once
/// Jobs: blocking work posted to a job queue (<mailroom/dispatch/job_queue.hpp>) from a session
/// or an agent, whose completion comes back on the posting context, serially with its other
/// callbacks. A job's handle is an event object's cousin: cancel() before it started
/// guarantees it never runs and its completion says cancelled. See docs/job-queues.md.

#include <mailroom/core/error.hpp>
#include <mailroom/core/pool.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/session.hpp>
#include <mailroom/export.hpp>

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace mailroom {

/// A job never ran: it was cancelled, expired or discarded (from job::get()).
class MAILROOM_EXPORT job_failed_error final : public error {
public:
    job_failed_error(job_state state, const std::string& what) : error(what), state_(state) {}
    job_state state() const noexcept { return state_; }

private:
    job_state state_;
};

/// The job queue named `name` in `env`: an empty handle when there is none,
/// dispatcher_kind_error when the dispatcher of that name is of another kind. Any thread.
inline job_queue::handle find_job_queue(const environment& env, std::string_view name) {
    return dispatcher_cast<job_queue::handle>(env.find_dispatcher(name));
}

namespace internal {

/// What the completion path needs of a job, whatever its result: the context that posted it,
/// and the completion (then, co_await) with where it runs, kept in the job itself so that
/// setting it allocates nothing beyond the posted call.
struct job_home : job_core {
    context_ref home;   // empty when posted from a thread that runs no session or agent
    context_ref other;  // where the completion runs when that is not `home` (then(session, f))
    posted_call* completion = nullptr;
};

template <class R>
struct job_with : job_home {
    std::optional<R> result;
};
template <>
struct job_with<void> : job_home {};

/// The work takes a std::stop_token, or nothing.
template <class F>
using job_result_t = typename std::conditional_t<std::is_invocable_v<F&, std::stop_token>,
                                                 std::invoke_result<F&, std::stop_token>, std::invoke_result<F&>>::type;

template <class R, class F>
class job_of final : public job_with<R> {
public:
    explicit job_of(F&& f) : fn_(std::move(f)) {
        if constexpr (std::is_invocable_v<F&, std::stop_token>) this->make_stoppable();
    }

    /// A job in a block of the recycling pool (one per post, reused in steady state).
    static job_of* make(F&& f) {
        void* block = pool_allocate_for<job_of>();
        try {
            return new (block) job_of(std::move(f));
        } catch (...) {
            pool_free_for<job_of>(block);
            throw;
        }
    }

private:
    ~job_of() override = default;
    void destroy() noexcept override {
        this->~job_of();
        pool_free_for<job_of>(this);
    }
    job_state run(std::stop_token st) noexcept override {
        try {
            if constexpr (std::is_void_v<R>) {
                call(st);
            } else {
                this->result.emplace(call(st));
            }
            return job_state::succeeded;
        } catch (...) {
            this->fail(std::current_exception());
            return job_state::failed;
        }
    }
    decltype(auto) call(std::stop_token& st) {
        if constexpr (std::is_invocable_v<F&, std::stop_token>)
            return std::invoke(fn_, st);
        else
            return std::invoke(fn_);
    }
    F fn_;
};

/// Runs `p` on `where` once the job is final (takes `p` over; drops it when that context is
/// gone by then). usage_error when the job has a completion already or `where` is empty; `p`
/// is then still the caller's.
MAILROOM_EXPORT void job_then(job_home* j, const context_ref& where, posted_call* p);
/// Resumes `h` on the session or agent whose callback runs now (usage_error outside one) once
/// the job is final; destroys it without resuming when that context is gone by then.
MAILROOM_EXPORT void job_resume_here(job_home* j, std::coroutine_handle<> h);
/// Raises usage_error naming the job when waiting would block a dispatcher's (or a job
/// queue's) thread.
MAILROOM_EXPORT void job_check_wait(const job_core* j);
/// Posts `j` to `q` from this thread: its home is the session or agent whose callback runs
/// now (none on other threads), which also keys its fair sub-queue and names it to the
/// watchdog, with `name` and `work_type` (label()). One look at the running context for all
/// of it. Returns false, or raises, as submit_job().
MAILROOM_EXPORT bool job_post_here(const job_queue::handle& q, job_home* j, std::string&& name,
                                   const std::type_info* work_type, bool try_only);
/// Raises job_failed_error or rethrows the job's exception; usage_error when not final.
[[noreturn]] MAILROOM_EXPORT void job_throw(const job_core* j);

}  // namespace internal

/// A job posted to a job queue. Copyable (shares the job); any thread.
template <class R>
class job {
public:
    job() noexcept = default;
    explicit job(internal::job_with<R>* j) noexcept : j_(j) {}  // takes a reference
    job(const job& o) noexcept : j_(o.j_) {
        if (j_) j_->add_ref();
    }
    job(job&& o) noexcept : j_(std::exchange(o.j_, nullptr)) {}
    job& operator=(job o) noexcept {
        std::swap(j_, o.j_);
        return *this;
    }
    ~job() {
        if (j_) j_->release();
    }

    /// False for an empty job (try_post_job() found the backlog full).
    explicit operator bool() const noexcept { return j_ != nullptr; }
    job_state state() const noexcept { return j_ ? j_->state() : job_state::discarded; }
    bool done() const noexcept { return state() >= job_state::succeeded; }
    std::uint64_t id() const noexcept { return j_ ? j_->id() : 0; }

    /// Not started yet: it never runs, its completion says cancelled, true. Running: requests
    /// stop on its std::stop_token (it is never unwound otherwise), false. Final: false.
    bool cancel() noexcept { return j_ && j_->cancel(); }

    /// Blocks until final or `timeout` passed; true when final. Raises usage_error instead of
    /// blocking on a dispatcher's or a job queue's thread (there use then() or co_await); a
    /// final job or a zero timeout never raises.
    bool wait_for(std::chrono::nanoseconds timeout) const {
        if (!j_ || j_->is_final() || timeout.count() == 0) return j_ && j_->is_final();
        internal::job_check_wait(j_);
        return j_->wait_for(timeout);
    }

    /// The result (void for a job returning nothing): rethrows what the job threw, raises
    /// job_failed_error (with the state) when it never ran, usage_error when not final.
    std::add_lvalue_reference_t<std::add_const_t<R>> get() const
        requires(!std::is_void_v<R>)
    {
        if (j_ && j_->state() == job_state::succeeded) return *j_->result;
        internal::job_throw(j_);
    }
    void get() const
        requires std::is_void_v<R>
    {
        if (j_ && j_->state() == job_state::succeeded) return;
        internal::job_throw(j_);
    }

    /// Calls `f(const job<R>&)` on the session or agent that posted the job once it is final
    /// (succeeded, failed, cancelled, expired or discarded), serially with that context's other
    /// callbacks. Raises usage_error when the job was posted from no session or agent (use the
    /// overload with a session), or has a completion already. `f` does not run (and is
    /// destroyed) when that context is destroyed first.
    template <class F>
    void then(F&& f) {
        check();
        then_on(j_->home, std::forward<F>(f));
    }
    /// The same on session `s`.
    template <class F>
    void then(session& s, F&& f) {
        check();
        if (!internal::ref_of(s)) throw session_destroyed_error("job then: the session handle is empty");
        then_on(internal::ref_of(s), std::forward<F>(f));
    }

    /// `co_await j` inside a session's callback or an agent's handler: resumes there once the
    /// job is final and yields the job (call get()). If that context is destroyed first, the
    /// coroutine is destroyed without resuming.
    auto operator co_await() const noexcept {
        struct awaiter {
            job self;
            bool await_ready() const noexcept { return self.done(); }
            void await_suspend(std::coroutine_handle<> h) { internal::job_resume_here(self.j_, h); }
            job await_resume() noexcept { return std::move(self); }
        };
        return awaiter{*this};
    }

private:
    void check() const {
        if (!j_) throw usage_error("job: the handle is empty");
    }
    template <class F>
    void then_on(const internal::context_ref& where, F&& f) {
        internal::posted_call* p =
            internal::make_posted_call([self = *this, fn = std::decay_t<F>(std::forward<F>(f))]() mutable {
                fn(std::as_const(self));
            });
        try {
            internal::job_then(j_, where, p);
        } catch (...) {
            p->drop(p);
            throw;
        }
    }

    internal::job_with<R>* j_ = nullptr;
};

/// How a job is posted: post_job()'s optional argument before the work.
struct job_options {
    /// What the watchdog's reports call the job while it runs past the queue's timeout or its
    /// deadline ("job 'resize'"). Empty: the callable's type, readable (a lambda shows where it
    /// was written). Costs nothing when empty; a name beyond the small-string size allocates.
    std::string name{};
};

namespace internal {
template <class F, class R = job_result_t<std::decay_t<F>>>
job<R> make_job(const job_queue::handle& q, F&& work, bool try_only, job_options&& opts = {}) {
    auto* j = job_of<R, std::decay_t<F>>::make(std::decay_t<F>(std::forward<F>(work)));
    job<R> h(j);
    if (!job_post_here(q, j, std::move(opts.name), &typeid(std::decay_t<F>), try_only)) return {};
    return h;
}
}  // namespace internal

/// Posts `work` to the job queue `q`: it runs on one of the queue's threads; `work` takes a
/// std::stop_token (cancel() requests stop) or nothing, and its result or exception goes to the
/// job's completion. Posted from a session's callback or an agent's handler, then() and
/// co_await come back there. Any thread. Raises job_queue_full_error naming the queue when its
/// backlog is full, environment_stopped_error when it is shut down, usage_error on an empty
/// handle.
template <class F>
auto post_job(const job_queue::handle& q, F&& work) {
    return internal::make_job(q, std::forward<F>(work), false);
}

/// post_job() with options: `post_job(q, {.name = "resize"}, work)` names the job in the
/// watchdog's reports.
template <class F>
auto post_job(const job_queue::handle& q, job_options opts, F&& work) {
    return internal::make_job(q, std::forward<F>(work), false, std::move(opts));
}

/// post_job() that returns an empty job instead of raising when the backlog is full (counted
/// refused).
template <class F>
auto try_post_job(const job_queue::handle& q, F&& work) {
    return internal::make_job(q, std::forward<F>(work), true);
}

/// try_post_job() with options (see post_job).
template <class F>
auto try_post_job(const job_queue::handle& q, job_options opts, F&& work) {
    return internal::make_job(q, std::forward<F>(work), true, std::move(opts));
}

}  // namespace mailroom
