// The completion path of jobs: a job's continuation posts to the session or agent that posted
// it (the one post path, post_to), so that completions run serially with its other callbacks.

#include <mailroom/session/job.hpp>

#include <mailroom/dispatch/dispatcher_impl.hpp>

#include <mailroom/session/context.hpp>
#include <mailroom/session/event_object.hpp>

namespace mailroom::internal {

namespace {

/// Resumes a coroutine on its context; destroys it unresumed when dropped (the context went).
struct job_resumer {
    std::coroutine_handle<> h;
    explicit job_resumer(std::coroutine_handle<> c) noexcept : h(c) {}
    job_resumer(job_resumer&& o) noexcept : h(std::exchange(o.h, {})) {}
    ~job_resumer() {
        if (h) h.destroy();
    }
    void operator()() { std::exchange(h, {}).resume(); }
};

std::string describe(const job_core* j) {
    return "job #" + std::to_string(j->id()) + " of job queue '" + j->queue_name() + "'";
}

}  // namespace

void job_then(job_home* j, const context_ref& where, posted_call* p) {
    if (!where)
        throw usage_error(describe(j) +
                          ": then() without a session needs a job posted from a session's callback or an agent's "
                          "handler; this one was posted from another thread");
    j->claim_continuation();
    // The completion is kept in the job (no record of its own): written after the claim and
    // before continue_with() publishes it. A completion on the posting context (the usual case)
    // takes no second reference to its arena.
    if (where.core != j->home.core || where.gen != j->home.gen) j->other = where;
    j->completion = p;
    j->continue_with(
        [](job_core* done, void*) noexcept {
            auto* j = static_cast<job_home*>(done);
            const context_ref& to = j->other ? j->other : j->home;
            // A completion refused later (its context destroyed with it queued) is counted
            // refused by the session layer; one that finds the context gone now, here.
            if (!post_to(to.core, to.gen, std::exchange(j->completion, nullptr))) job_completion_dropped(done);
        },
        nullptr);
}

void job_resume_here(job_home* j, std::coroutine_handle<> h) {
    context_ref here = current_context_ref();
    if (!here)
        throw usage_error(describe(j) + ": co_await is for coroutines running in a session's callback or an agent's "
                                        "handler");
    auto* p = static_cast<posted_call_of<job_resumer>*>(make_posted_call(job_resumer(h)));
    try {
        job_then(j, here, p);
    } catch (...) {
        // The coroutine gets the exception where it awaited: it is not ours to destroy.
        p->fn.h = {};
        p->drop(p);
        throw;
    }
}

void job_check_wait(const job_core* j) {
    if (current_dispatcher())
        throw usage_error(describe(j) +
                          ": waiting would block a dispatcher's or a job queue's thread; use then() or co_await there");
}

bool job_post_here(const job_queue::handle& q, job_home* j, std::string&& name, const std::type_info* work_type,
                   bool try_only) {
    j->home = current_context_ref();
    const context_core* c = j->home.core;
    const std::uint64_t poster_context =
        c ? std::uint64_t{running_kind_of(*c)} << running_kind_shift | (c->id & running_id_mask) : 0;
    j->label(std::move(name), work_type, poster_context);
    return submit_job(q, j, reinterpret_cast<std::uintptr_t>(c), try_only);
}

void job_throw(const job_core* j) {
    if (!j) throw usage_error("job: the handle is empty");
    const job_state s = j->state();
    if (s == job_state::failed) std::rethrow_exception(j->exception());
    if (s < job_state::succeeded)
        throw usage_error(describe(j) + ": get() before it finished (state " + to_string(s) + ")");
    throw job_failed_error(s, describe(j) + " " + to_string(s) + ": it never ran");
}

}  // namespace mailroom::internal
