#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/one_thread_impl.hpp>
#include <mailroom/dispatch/stack_capture.hpp>
#include <mailroom/env/env_core.hpp>

#include "busy_sampler.hpp"
#include "report_text.hpp"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>

namespace mailroom {
namespace internal {

namespace {
std::atomic<std::uint64_t> next_env_id{1};


// entry_scope's slots: a list that only grows, each slot owned by one live thread at a time.
std::atomic<entry_slot*> entry_slots{nullptr};

enum class entry_state : unsigned char { unregistered, live, dead };
struct entry_tls {
    entry_slot* slot;
    entry_state state;
};
MAILROOM_FAST_TLS constinit thread_local entry_tls tls_entry{nullptr, entry_state::unregistered};

// Hands the slot back at thread exit. Lives in a separate thread_local touched only when the
// slot is first taken, so that the hot path reads plain data.
struct entry_releaser {
    ~entry_releaser() {
        if (tls_entry.slot) tls_entry.slot->taken.store(false, std::memory_order_release);
        tls_entry = {nullptr, entry_state::dead};
    }
};
thread_local entry_releaser entry_release;

entry_slot* take_entry_slot() noexcept {
    for (entry_slot* s = entry_slots.load(std::memory_order_acquire); s; s = s->next) {
        bool free = false;
        if (!s->taken.load(std::memory_order_relaxed) &&
            s->taken.compare_exchange_strong(free, true, std::memory_order_acquire))
            return s;
    }
    entry_slot* s;
    try {
        s = new entry_slot;  // never freed: reachable from entry_slots
    } catch (...) {
        fatal("out of memory allocating a thread's entry slot");
    }
    s->next = entry_slots.load(std::memory_order_relaxed);
    while (!entry_slots.compare_exchange_weak(s->next, s, std::memory_order_release, std::memory_order_relaxed)) {
    }
    return s;
}
}  // namespace

entry_slot& this_thread_entry_slot() noexcept {
    if (entry_slot* s = tls_entry.slot) [[likely]]
        return *s;
    // A thread exiting (its releaser already ran) keeps the slot it takes now for good.
    const bool exiting = tls_entry.state == entry_state::dead;
    entry_slot* s = take_entry_slot();
    if (!exiting) static_cast<void>(&entry_release);  // constructs it: the slot goes back at exit
    tls_entry = {s, exiting ? entry_state::dead : entry_state::live};
    return *s;
}

env_extension::~env_extension() = default;

std::string env_extension::describe(std::string_view, std::uint64_t) const { return {}; }

MAILROOM_FAST_TLS constinit thread_local counters_cache tls_counters;
MAILROOM_FAST_TLS constinit thread_local env_core* tls_current_env = nullptr;

env_core*& current_env() noexcept { return tls_current_env; }

env_core::env_core(environment_options options)
    : options_(std::move(options)), id_(next_env_id.fetch_add(1, std::memory_order_relaxed)),
      timers_(options_.timer_tick) {
    // Before any mbox of this environment exists, so every send_scope and join() of it see
    // the gate's mode final (send_scope's handshake uses the same one).
    event_gate_init();
    default_ = make_one_thread("default", options_.default_dispatcher);
    default_->set_owner(this, options_.name);
    dispatchers_.push_back(default_);
    stall_watch_ = std::jthread([this](std::stop_token st) {
        env_scope scope(this);  // a join() from on_stall would wait for this thread
        watch_stalls(st);
    });
    ::pthread_setname_np(stall_watch_.native_handle(), "mailroom-watch");
}

env_core::~env_core() {
    // A destroy-from-inside handed the teardown to reaper_; it has joined everything and let go
    // of the core. On the reaper itself (it held the last reference) the thread cannot join
    // itself: it only returns from here and ends.
    if (reaper_.joinable()) {
        if (reaper_.get_id() == std::this_thread::get_id())
            reaper_.detach();
        else
            reaper_.join();
    }
    // The environment object joined everything; what is left are queues holding demands that
    // stale senders pushed late. Dispatchers discard them as they are destroyed, here.
    // Dispatchers first: discarding a demand may look at the agent layer's records.
    dispatchers_.clear();
    default_.reset();
    for (auto& s : found_) s.key.store(nullptr, std::memory_order_relaxed);
    extensions_.clear();
}

void env_core::check_open(const char* what, std::string_view object) const {
    if (!open())
        throw environment_stopped_error(std::string(what) + " '" + std::string(object) + "': environment '" +
                                        name() + "' is stopped");
}

void env_core::check_not_stopping(const char* what, std::string_view object) const {
    if (stopping())
        throw environment_stopped_error(std::string(what) + " '" + std::string(object) + "': environment '" +
                                        name() + "' is stopping");
}

thread_counters& env_core::counters_slow() noexcept {
    std::lock_guard g(lock_);
    auto me = std::this_thread::get_id();
    thread_counters* block = nullptr;
    for (auto& [id, c] : counters_)
        if (id == me) block = c.get();
    if (!block) {
        try {
            counters_.emplace_back(me, std::make_unique<thread_counters>());
        } catch (...) {
            fatal("out of memory allocating thread counters");
        }
        block = counters_.back().second.get();
    }
    tls_counters = {id_, block};
    return *block;
}

void env_core::log(std::string_view text) const noexcept {
    try {
        if (options_.log) {
            options_.log(text);
            return;
        }
    } catch (...) {
    }
    std::fprintf(stderr, "mailroom[%s]: %.*s\n", options_.name.c_str(), static_cast<int>(text.size()), text.data());
}

std::shared_ptr<dispatcher_impl> env_core::add_dispatcher(std::shared_ptr<dispatcher_impl> d) {
    check_not_stopping("adding dispatcher", d->name());
    d->set_owner(this, options_.name);
    std::unique_lock g(lock_);
    // stop() may have come since the check: once join() has taken its list of dispatchers to
    // join, a new one would never be joined (its threads would outlive join()).
    if (dispatchers_closed_) {
        g.unlock();
        d->shutdown();
        d->join();
        throw environment_stopped_error("adding dispatcher '" + d->name() + "': environment '" + name() +
                                        "' is stopping");
    }
    for (auto& x : dispatchers_)
        if (x->name() == d->name()) {
            d->shutdown();
            d->join();
            throw duplicate_name_error("dispatcher '" + d->name() + "' already exists in environment '" +
                                       name() + "'");
        }
    dispatchers_.push_back(d);
    g.unlock();
    {
        std::lock_guard w(watch_lock_);
        ++watch_epoch_;
    }
    watch_cv_.notify_all();
    return d;
}

std::shared_ptr<dispatcher_impl> env_core::find_dispatcher(std::string_view n) const {
    std::lock_guard g(lock_);
    for (auto& x : dispatchers_)
        if (x->name() == n) return x;
    return {};
}

std::vector<std::shared_ptr<dispatcher_impl>> env_core::dispatchers() const {
    std::lock_guard g(lock_);
    return dispatchers_;
}

void env_core::stop() noexcept {
    if (stopping_.exchange(true, std::memory_order_acq_rel)) return;
    stopping_.notify_all();  // join() waits for this
    std::vector<env_extension*> exts;
    {
        std::lock_guard g(lock_);
        for (auto& [k, e] : extensions_) exts.push_back(e.get());
    }
    for (auto* e : exts) e->begin_stop();
}

// ---- the teardown watch ----
//
// While join() waits (for cooperations to finish, sessions to retire, workers to exit), a
// thread of its own looks at every worker's heartbeat as the teardown begins and then a few
// times per deadline. A worker busy with the same demand (its `handled` count has not moved) for
// longer than the deadline is reported: which dispatcher and worker, which agent or session (the
// upper layer published its id), which message type, and for how long. It times a demand as the
// watchdog does, with the same sampler (busy_sampler.hpp): from when it first saw it busy, so a
// late look never reports a handler under the deadline, nor as having run longer than it has.
// Nothing on the hot path changes: the heartbeat's relaxed stores are all it reads. It sees the
// workers the watchdog sees (the listing of attach_worker), under the same indices and in the
// same words; a demand whose stall the run-time watchdog has reported already is said once, as
// that stall, and left to the watchdog's own reports after that: one stream of reports per stall.

void env_core::watch_teardown(std::stop_token stop) {
    const std::int64_t deadline = options_.teardown_deadline.count();
    const std::chrono::nanoseconds tick(std::clamp<std::int64_t>(deadline / 4, 1'000'000, 100'000'000));
    struct overrun_watch {
        std::int64_t next_report = 0;  // first_seen + deadline, then 2x, 4x, ...
        bool as_stall = false;         // said once as the watchdog's stall: not repeated
    };
    struct due {
        std::string dispatcher;
        std::size_t index;
        int thread_id;
        bool job;
        std::string context, type;
        std::int64_t ns;
        bool stall_reported;
    };
    busy_sampler<overrun_watch> busy;
    const auto nothing = [](const busy_sampler<overrun_watch>::entry&) {};
    std::mutex m;
    std::condition_variable_any cv;
    // The first look at once: a handler running as the teardown begins is timed from then.
    for (bool first = true; !stop.stop_requested(); first = false) {
        if (!first) {
            std::unique_lock g(m);
            cv.wait_for(g, stop, tick, [] { return false; });
            if (stop.stop_requested()) break;
        }
        const std::int64_t now = now_ns();
        std::vector<due> out;
        try {
            busy.begin_sample();
            for (auto& d : dispatchers()) {
                d->visit_workers([&](dispatcher_impl::watched_worker& ww) {
                    auto* w = busy.look(ww, now, nothing);
                    if (!w) return;
                    if (w->fresh) w->next_report = w->first_seen + deadline;
                    if (now < w->next_report || w->as_stall) return;
                    w->next_report = w->first_seen + 2 * (w->next_report - w->first_seen);
                    due o{d->name(), ww.index, ww.thread_id, false, {}, {}, now - w->first_seen,
                          stall_reported(ww.beat, w->handled)};
                    w->as_stall = o.stall_reported;
                    o.job = describe_worker(*d, *ww.beat, o.context, o.type);
                    out.push_back(std::move(o));
                });
            }
            busy.end_sample(nothing);
        } catch (...) {
            log("teardown watch: a check ran out of memory; the watch carries on");
        }
        // Outside the listings' locks: on_overrun is the user's.
        for (auto& o : out)
            report_overrun({o.dispatcher, o.index, o.thread_id, o.job, o.context, o.type}, o.ns, o.stall_reported);
    }
}

void env_core::report_overrun(const running_facts& f, std::int64_t ns, bool stall_reported) {
    handler_overrun o;
    std::string text;
    try {
        o.dispatcher = f.dispatcher;
        o.worker = f.worker;
        o.running_for = std::chrono::nanoseconds(ns);
        o.context = f.context;
        o.message_type = f.type;
        o.stall_reported = stall_reported;
        text = overrun_text(f, ns, stall_reported, options_.on_teardown_overrun);
        o.text = text;
    } catch (...) {
        text = "teardown has waited past its deadline for a handler (the report ran out of memory)";
    }
    overruns_.fetch_add(1, std::memory_order_relaxed);
    try {
        if (options_.on_overrun) options_.on_overrun(o);
    } catch (...) {
    }
    log(text);
    if (options_.on_teardown_overrun == overrun_policy::abort) fatal(text.c_str());
    try {
        std::lock_guard g(report_lock_);
        report_.overruns.push_back(std::move(o));
    } catch (...) {
    }
}

void env_core::describe_running(const worker_stats& w, std::string& context, std::string& type) const {
    // Through the extensions: the layers above register their kinds of context and name them
    // (the dispatch layer knows only the kind's number and an id).
    if (!w.running_kind.empty()) {
        std::vector<env_extension*> exts;
        {
            std::lock_guard g(lock_);
            for (auto& [k, e] : extensions_) exts.push_back(e.get());
        }
        for (auto* e : exts)
            if (context.empty()) context = e->describe(w.running_kind, w.running_id);
        if (context.empty()) context = std::string(w.running_kind) + " #" + std::to_string(w.running_id) + " (gone)";
    } else {
        context = "unknown (a demand of no context)";
    }
    if (const std::type_info* t = w.running_type.info()) {
        if (*t == typeid(timer_callback_tag)) type = "timer callback";
        else if (*t == typeid(posted_call_tag)) type = "posted call";
        else if (*t == typeid(fd_callback_tag)) type = "fd callback";
        else type = readable_name(w.running_type);
    }
}

bool env_core::describe_worker(const dispatcher_impl& d, const heartbeat& beat, std::string& context,
                               std::string& type) const {
    const dispatcher_impl::running_detail detail = d.describe_worker(beat);
    if (detail.job) {
        // A job: what the queue knows (its label, its poster) rather than the heartbeat's id.
        std::string poster, ignored;
        if (detail.poster) {
            worker_stats p;
            p.running_kind = running_kind_name(static_cast<running_kind>(detail.poster >> running_kind_shift));
            p.running_id = detail.poster & running_id_mask;
            describe_running(p, poster, ignored);
        }
        if (detail.job_id == 0) {
            context = "a job that ended meanwhile";
            return true;
        }
        context = "job #" + std::to_string(detail.job_id) +
                  (poster.empty() ? " posted from a thread that runs no session or agent" : " posted by " + poster);
        type = detail.what;
        return true;
    }
    describe_running(read_heartbeat(beat), context, type);
    if (!detail.what.empty()) type = detail.what;
    return false;
}

bool env_core::stall_reported(const heartbeat* beat, std::uint64_t handled) const {
    std::lock_guard g(stalled_lock_);
    return std::find(stalled_.begin(), stalled_.end(), std::make_pair(beat, handled)) != stalled_.end();
}

// ---- the run-time watchdog ----
//
// One thread per environment samples the heartbeats of every worker of its dispatchers, a few
// times per the shortest timeout (a quarter of it, between 1 ms and 100 ms). A worker seen busy
// with the same demand (`handled` has not moved) past its dispatcher's timeout is reported while
// it still runs, again at 2x, 4x, ... the timeout, and once more when it moves on. It times a
// demand from the moment it first saw it busy (busy_sampler.hpp, shared with the teardown watch):
// a lower bound of how long it has run, so a late sample (the watcher starved of the CPU, or held
// in an on_stall callback or a stack wait) never reports a handler under its timeout. A handler's
// extend_deadline() moves `extended`; the timeout then counts from the moment the watcher saw it
// move, likewise. A report thus comes at most one sample (plus the watcher's own delay) after the
// timeout, and never before it. The stack is asked of the stalled thread by a signal
// (stack_capture.hpp) while the worker is held listed, so it cannot end meanwhile.

namespace {
running_facts facts_of(const stall_report& r) {
    return {r.dispatcher, r.worker, r.thread_id, r.job, r.context, r.message_type};
}
}  // namespace

void env_core::watch_stalls(std::stop_token stop) {
    struct stall_watch {
        std::shared_ptr<dispatcher_impl> d;
        std::size_t index = 0;
        std::int64_t next_report = 0;  // extended_at + timeout (or a job's deadline), then 2x, 4x, ...
        bool reported = false;
        bool job = false;              // named at the first report, with context and type
        bool past_deadline = false;    // the (first) report is a job's deadline's, not the timeout's
        std::string context, type;
    };
    using watched = busy_sampler<stall_watch>::entry;
    struct pending {
        std::shared_ptr<dispatcher_impl> d;
        stall_report r;
    };
    // The longest stall, for the environment and for the stalled one's dispatcher (this thread
    // is their only writer).
    auto note_longest = [this](const dispatcher_impl& d, std::int64_t ran) {
        if (ran > longest_stall_ns_.load(std::memory_order_relaxed))
            longest_stall_ns_.store(ran, std::memory_order_relaxed);
        if (ran > d.longest_stall_ns.load(std::memory_order_relaxed))
            d.longest_stall_ns.store(ran, std::memory_order_relaxed);
    };
    busy_sampler<stall_watch> busy;
    while (!stop.stop_requested()) {
        auto ds = dispatchers();
        std::int64_t tick = 100'000'000;
        for (auto& d : ds)
            if (std::int64_t t = d->watchdog().timeout.count(); t > 0) tick = std::min(tick, t / 4);
        tick = std::max<std::int64_t>(tick, 1'000'000);
        {
            std::unique_lock g(watch_lock_);
            const std::uint64_t seen = watch_epoch_;
            watch_cv_.wait_for(g, stop, std::chrono::nanoseconds(tick), [&] { return watch_epoch_ != seen; });
        }
        if (stop.stop_requested()) break;
        ds = dispatchers();  // one added during the wait is sampled now
        const std::int64_t now = now_ns();
        std::vector<pending> out;
        try {
            auto resumed = [&](const watched& w) {
                stall_report r;
                r.environment = options_.name;
                r.dispatcher = w.d->name();
                r.worker = w.index;
                r.thread_id = w.thread_id;
                r.context = w.context;
                r.message_type = w.type;
                r.job = w.job;
                r.past_deadline = w.past_deadline;
                r.running_for = std::chrono::nanoseconds(now - w.first_seen);
                r.timeout = w.d->watchdog().timeout;
                r.resumed = true;
                r.text = resumed_text(r.environment, facts_of(r), now - w.first_seen, r.timeout.count());
                stalled_now_.fetch_sub(1, std::memory_order_relaxed);
                w.d->stalled_now.fetch_sub(1, std::memory_order_relaxed);
                note_longest(*w.d, now - w.first_seen);
                out.push_back({w.d, std::move(r)});
            };
            auto ended = [&](const watched& w) {
                if (w.reported) resumed(w);
            };
            busy.begin_sample();
            for (auto& d : ds) {
                const std::int64_t timeout = d->watchdog().timeout.count();
                if (timeout <= 0) continue;
                d->visit_workers([&](dispatcher_impl::watched_worker& ww) {
                    heartbeat& b = *ww.beat;
                    watched* it = busy.look(ww, now, ended);
                    if (!it) return;
                    if (it->fresh) {
                        it->d = d;
                        it->index = ww.index;
                        it->next_report = it->first_seen + timeout;
                    }
                    if (it->extended_now) {
                        it->next_report = it->extended_at + timeout;
                        if (!it->reported) it->past_deadline = false;
                    }
                    // A job's own deadline comes first when it is nearer than the timeout
                    // (extend_deadline() moves the timeout, not the deadline the queue set);
                    // past_deadline says, until the first report, that the report due is the
                    // deadline's.
                    const std::int64_t job_deadline = b.deadline_ns.load(std::memory_order_relaxed);
                    if (!it->reported && job_deadline > 0 && job_deadline < it->next_report) {
                        it->next_report = std::max(job_deadline, it->extended_at + tick);
                        it->past_deadline = true;
                    }
                    if (now < it->next_report) return;
                    const std::int64_t ran = now - it->first_seen;
                    if (!it->reported) {
                        it->job = describe_worker(*d, b, it->context, it->type);
                        it->reported = true;
                        stalls_reported_.fetch_add(1, std::memory_order_relaxed);
                        stalled_now_.fetch_add(1, std::memory_order_relaxed);
                        d->stalls_reported.fetch_add(1, std::memory_order_relaxed);
                        d->stalled_now.fetch_add(1, std::memory_order_relaxed);
                    }
                    note_longest(*d, ran);
                    it->next_report = it->extended_at + 2 * (it->next_report - it->extended_at);
                    stall_report r;
                    r.environment = options_.name;
                    r.dispatcher = d->name();
                    r.worker = ww.index;
                    r.thread_id = ww.thread_id;
                    r.context = it->context;
                    r.message_type = it->type;
                    r.job = it->job;
                    r.past_deadline = it->past_deadline;
                    r.running_for = std::chrono::nanoseconds(ran);
                    r.timeout = std::chrono::nanoseconds(timeout);
                    const auto wait = std::chrono::nanoseconds(std::clamp<std::int64_t>(timeout, 20'000'000, 200'000'000));
                    captured_stack st = capture_stack(b, ww.thread_id, options_.watchdog_signal, wait);
                    r.stack = std::move(st.frames);
                    r.stack_note = std::move(st.note);
                    r.text = stall_text(r.environment, facts_of(r), ran, timeout, r.past_deadline, r.stack,
                                        r.stack_note);
                    out.push_back({d, std::move(r)});
                });
            }
            // A worker that ended (its thread joined) while reported: it went on, then away.
            busy.end_sample(ended);
            // What the teardown watch asks (stall_reported): the demands reported and running.
            std::lock_guard g(stalled_lock_);
            stalled_.clear();
            for (auto& w : busy.entries())
                if (w.reported) stalled_.emplace_back(w.beat, w.handled);
        } catch (...) {
            log("watchdog: a sample ran out of memory; the watchdog carries on");
        }
        for (auto& p : out) {
            const watchdog_params& wp = p.d->watchdog();
            switch (wp.action) {
            case stall_action::callback:
                if (wp.on_stall) {
                    try {
                        wp.on_stall(p.r);
                    } catch (const std::exception& ex) {
                        log(std::string("watchdog: on_stall threw: ") + ex.what());
                    } catch (...) {
                        log("watchdog: on_stall threw");
                    }
                    break;
                }
                log(p.r.text);
                break;
            case stall_action::abort:
                log(p.r.text);
                if (!p.r.resumed) fatal(("watchdog: dispatcher '" + p.r.dispatcher + "': stall action is abort").c_str());
                break;
            case stall_action::report:
                log(p.r.text);
                break;
            }
        }
    }
}

bool env_core::own_thread() const noexcept {
    if (current_env() == this) return true;
    const dispatcher_impl* d = current_dispatcher();
    return d && d->owner() == this;
}

void env_core::hand_off_teardown(std::shared_ptr<env_core> self) noexcept {
    stop();
    // Not one of the environment's threads, so it may join them all; it holds the core until
    // the teardown completed, and is joined by whoever frees the core (see ~env_core).
    try {
        reaper_ = std::thread([self = std::move(self)]() mutable {
            try {
                self->join();
            } catch (const std::exception& ex) {
                self->log(std::string("teardown thread: join failed: ") + ex.what());
            } catch (...) {
                self->log("teardown thread: join failed");
            }
            self.reset();
        });
    } catch (...) {
        fatal("an environment destroyed from one of its own threads could not start its teardown thread");
    }
}

teardown_report env_core::join() {
    if (own_thread())
        throw usage_error("environment '" + name() +
                          "': join() called from one of its own threads or callbacks (it would wait for itself)");
    stopping_.wait(false, std::memory_order_acquire);
    return join_once();
}

teardown_report env_core::join_once() {
    std::unique_lock jg(join_lock_);
    if (joined_) return report_;
    const std::int64_t started = now_ns();
    std::jthread watcher;
    if (options_.teardown_deadline.count() > 0)
        watcher = std::jthread([this](std::stop_token st) {
            env_scope scope(this);  // a join() from on_overrun would wait for this thread
            watch_teardown(st);
        });
    std::vector<env_extension*> exts;
    {
        std::lock_guard g(lock_);
        for (auto& [k, e] : extensions_) exts.push_back(e.get());
    }
    // 1. cooperations, children first (the extension's own order)
    for (auto* e : exts) e->wait_stopped();
    // 2. intake: from here a send raises environment_stopped_error; a send that passed its
    //    check before is waited for, so its message is in a queue before the dispatchers stop
    //    (and is run or discarded there) or counted where it was refused
    closed_.store(true, std::memory_order_seq_cst);
    wait_for_senders();
    // 3. dispatchers: threads joined, queues discarded. No dispatcher is added after this list.
    {
        std::lock_guard g(lock_);
        dispatchers_closed_ = true;
    }
    for (auto& d : dispatchers()) {
        d->shutdown();
        d->join();
    }
    // 4. the timer service, then a last sweep of the queues: a timer that fired while the
    //    dispatchers were being joined may have pushed a message that holds the timer, whose
    //    mbox holds this core (a cycle that would never be freed).
    timers_.stop();
    for (auto& d : dispatchers()) d->discard_queued();
    if (stall_watch_.joinable()) {
        stall_watch_.request_stop();
        stall_watch_.join();
    }
    if (watcher.joinable()) {
        watcher.request_stop();
        watcher.join();
    }
    joined_ = true;
    // The report: what was still queued when the dispatchers stopped was discarded (and each
    // discard counted where it happened); said once, here, when there was any.
    environment_stats s = stats();
    const std::uint64_t callbacks_discarded = callback_totals().discarded;
    std::unique_lock g(report_lock_);
    report_.took = std::chrono::nanoseconds(now_ns() - started);
    report_.messages_discarded = s.messages_discarded;
    report_.callbacks_discarded = callbacks_discarded;
    if (s.messages_discarded || callbacks_discarded || !report_.overruns.empty()) {
        try {
            char took[32];
            std::snprintf(took, sizeof took, "%.1f ms", static_cast<double>(report_.took.count()) / 1e6);
            log("stopped in " + std::string(took) + ": " + std::to_string(s.messages_discarded) + " messages and " +
                std::to_string(callbacks_discarded) + " callbacks were still queued and were discarded; " +
                std::to_string(report_.overruns.size()) + " handler overrun report(s)");
        } catch (...) {
        }
    }
    teardown_report out = report_;
    g.unlock();
    jg.unlock();  // on_stopped may call join() (it returns the report at once)
    if (options_.on_stopped) {
        try {
            options_.on_stopped(out);
        } catch (...) {
            log("on_stopped threw");
        }
    }
    return out;
}

void env_core::wait_for_senders() noexcept {
    context_gate::barrier();  // the far side of send_scope's handshake, after closed_ was set
    // The far side of entry_scope's, after every context of this environment closed: a thread
    // that found one open has opened its send_scope once its entry ends, so the loop below sees
    // it. Its own slot is skipped for the same reason as below.
    const entry_slot* mine = tls_entry.slot;
    for (entry_slot* e = entry_slots.load(std::memory_order_acquire); e; e = e->next)
        if (e != mine)
            while (e->depth.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    // By index, without holding the lock while waiting: a send in flight never takes it (its
    // counters were found before it began), but what it runs may (a payload's destructor).
    // Blocks are only appended, and live until this core is freed.
    // The joining thread's own block is skipped: a send of its own in flight (join() called
    // from a payload's destructor) ends only after join() returns.
    const auto me = std::this_thread::get_id();
    for (std::size_t i = 0;; ++i) {
        thread_counters* c;
        {
            std::lock_guard g(lock_);
            if (i >= counters_.size()) break;
            if (counters_[i].first == me) continue;
            c = counters_[i].second.get();
        }
        while (c->sending.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
    }
}

environment_stats env_core::stats() const {
    environment_stats s;
    {
        std::lock_guard g(lock_);
        // Outcomes first, each with acquire, then the sends: an outcome seen here was counted
        // after its send was (see thread_counters::bump), so that send is seen too, and no
        // snapshot shows more outcomes than sends. Under the lock no block appears between the
        // two passes.
        for (auto& [id, c] : counters_) {
            s.messages_delivered += c->delivered.load(std::memory_order_acquire);
            s.messages_lost += c->lost.load(std::memory_order_acquire);
            s.messages_ignored += c->ignored.load(std::memory_order_acquire);
            s.messages_discarded += c->discarded.load(std::memory_order_acquire);
            s.messages_cancelled += c->cancelled.load(std::memory_order_acquire);
            s.messages_filtered += c->filtered.load(std::memory_order_acquire);
            s.delivery_filter_exceptions += c->filter_exceptions.load(std::memory_order_acquire);
            s.messages_dropped += c->dropped.load(std::memory_order_acquire);
        }
        for (auto& [id, c] : counters_) {
            s.messages_sent += c->sent.load(std::memory_order_relaxed);
            s.handler_exceptions += c->exceptions.load(std::memory_order_relaxed);
            s.messages_redirected += c->redirected.load(std::memory_order_relaxed);
            s.messages_transformed += c->transformed.load(std::memory_order_relaxed);
            s.limit_aborts += c->limit_aborts.load(std::memory_order_relaxed);
        }
    }
    auto t = timers_.stats();
    s.timers_armed = t.armed;
    s.timers_fired = t.fired;
    s.timers_cancelled = t.cancelled;
    s.timers_pending = t.pending;
    s.timers_skipped = t.skipped;
    s.teardown_overruns = overruns_.load(std::memory_order_relaxed);
    s.stalls_reported = stalls_reported_.load(std::memory_order_relaxed);
    s.stalled_now = stalled_now_.load(std::memory_order_relaxed);
    s.longest_stall = std::chrono::nanoseconds(longest_stall_ns_.load(std::memory_order_relaxed));
    for (auto& d : dispatchers()) {
        dispatcher_figures f;
        static_cast<dispatcher_stats&>(f) = d->snapshot();
        s.queue_depth += f.queue_depth;
        // The kinds' own figures through their public handles: what their threads publish
        // anyway (a loop's counters, a job queue's books), nothing added on their hot paths.
        if (f.kind == event_loop_pool::handle::kind_name)
            f.loops = dispatcher_cast<event_loop_pool::handle>(dispatcher(d)).loops();
        else if (f.kind == job_queue::handle::kind_name)
            f.jobs = dispatcher_cast<job_queue::handle>(dispatcher(d)).job_stats();
        s.dispatchers.push_back(std::move(f));
    }
    return s;
}

env_core::callback_counts env_core::callback_totals() const noexcept {
    callback_counts out;
    std::lock_guard g(lock_);
    for (auto& [id, c] : counters_) {
        out.run += c->callbacks_run.load(std::memory_order_relaxed);
        out.refused += c->callbacks_refused.load(std::memory_order_relaxed);
        out.discarded += c->callbacks_discarded.load(std::memory_order_relaxed);
    }
    return out;
}

}  // namespace internal

environment::environment(environment_options options)
    : core_(std::make_shared<internal::env_core>(std::move(options))) {
    core_->owner = this;
}

environment::~environment() {
    if (core_->own_thread()) {
        // Joining here would wait for this very thread: the teardown goes on without it.
        core_->hand_off_teardown(core_);
        return;
    }
    core_->stop();
    core_->join();
}

const std::string& environment::name() const noexcept { return core_->name(); }

void environment::stop() noexcept { core_->stop(); }

teardown_report environment::join() { return core_->join(); }

bool environment::stopping() const noexcept { return core_->stopping(); }

one_thread::handle environment::default_dispatcher() const {
    return dispatcher_cast<one_thread::handle>(dispatcher(core_->default_dispatcher()));
}

std::shared_ptr<internal::dispatcher_impl> environment::host_dispatcher(std::string_view name,
                                                                        const internal::dispatcher_builder& build) {
    // Checked before the kind starts any thread; add_dispatcher checks again under its lock.
    core_->check_not_stopping("adding dispatcher", name);
    return core_->add_dispatcher(build());
}

dispatcher environment::find_dispatcher(std::string_view name) const {
    return dispatcher(core_->find_dispatcher(name));
}

environment_stats environment::stats() const { return core_->stats(); }

std::vector<dispatcher_stats> environment::dispatcher_stats_all() const {
    std::vector<dispatcher_stats> out;
    for (auto& d : core_->dispatchers()) out.push_back(d->snapshot());
    return out;
}

}  // namespace mailroom
