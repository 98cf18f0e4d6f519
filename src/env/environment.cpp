#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/env/env_core.hpp>

#include <cstdio>

namespace mailroom {
namespace internal {

namespace {
std::atomic<std::uint64_t> next_env_id{1};

struct counters_cache {
    std::uint64_t env_id = 0;
    thread_counters* block = nullptr;
};
MAILROOM_FAST_TLS thread_local counters_cache tls_counters;
}  // namespace

env_extension::~env_extension() = default;

env_core*& current_env() noexcept {
    MAILROOM_FAST_TLS thread_local env_core* env = nullptr;
    return env;
}

env_core::env_core(environment_options options)
    : options_(std::move(options)), id_(next_env_id.fetch_add(1, std::memory_order_relaxed)),
      timers_(options_.timer_tick) {
    default_ = make_one_thread("default", options_.default_dispatcher);
    dispatchers_.push_back(default_);
}

env_core::~env_core() {
    // The environment object joined everything; what is left are queues holding demands that
    // stale senders pushed late. Dispatchers discard them as they are destroyed, here.
    // Dispatchers first: discarding a demand may look at the agent layer's records.
    dispatchers_.clear();
    default_.reset();
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

thread_counters& env_core::counters() noexcept {
    if (tls_counters.env_id == id_) return *tls_counters.block;
    return counters_slow();
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
    std::lock_guard g(lock_);
    for (auto& x : dispatchers_)
        if (x->name() == d->name()) {
            d->shutdown();
            d->join();
            throw duplicate_name_error("dispatcher '" + d->name() + "' already exists in environment '" +
                                       name() + "'");
        }
    dispatchers_.push_back(d);
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

void env_core::join() {
    if (current_env() == this)
        throw usage_error("environment '" + name() + "': join() called from one of its own threads");
    stopping_.wait(false, std::memory_order_acquire);
    std::lock_guard jg(join_lock_);
    if (joined_) return;
    std::vector<env_extension*> exts;
    {
        std::lock_guard g(lock_);
        for (auto& [k, e] : extensions_) exts.push_back(e.get());
    }
    // 1. cooperations, children first (the extension's own order)
    for (auto* e : exts) e->wait_stopped();
    // 2. intake: from here a send raises environment_stopped_error
    closed_.store(true, std::memory_order_release);
    // 3. dispatchers: threads joined, queues discarded
    for (auto& d : dispatchers()) {
        d->shutdown();
        d->join();
    }
    // 4. the timer service, then a last sweep of the queues: a timer that fired while the
    //    dispatchers were being joined may have pushed a message that holds the timer, whose
    //    mbox holds this core (a cycle that would never be freed).
    timers_.stop();
    for (auto& d : dispatchers()) d->discard_queued();
    joined_ = true;
}

environment_stats env_core::stats() const {
    environment_stats s;
    {
        std::lock_guard g(lock_);
        for (auto& [id, c] : counters_) {
            s.messages_sent += c->sent.load(std::memory_order_relaxed);
            s.messages_delivered += c->delivered.load(std::memory_order_relaxed);
            s.messages_lost += c->lost.load(std::memory_order_relaxed);
            s.messages_ignored += c->ignored.load(std::memory_order_relaxed);
            s.messages_discarded += c->discarded.load(std::memory_order_relaxed);
            s.messages_cancelled += c->cancelled.load(std::memory_order_relaxed);
            s.handler_exceptions += c->exceptions.load(std::memory_order_relaxed);
            s.callbacks_run += c->callbacks_run.load(std::memory_order_relaxed);
            s.callbacks_refused += c->callbacks_refused.load(std::memory_order_relaxed);
            s.callbacks_discarded += c->callbacks_discarded.load(std::memory_order_relaxed);
        }
        for (auto& [k, e] : extensions_) e->add_stats(s);
    }
    auto t = timers_.stats();
    s.timers_armed = t.armed;
    s.timers_fired = t.fired;
    s.timers_cancelled = t.cancelled;
    s.timers_pending = t.pending;
    for (auto& d : dispatchers()) s.queue_depth += d->stats().queue_depth;
    return s;
}

}  // namespace internal

environment::environment(environment_options options)
    : core_(std::make_shared<internal::env_core>(std::move(options))) {
    core_->owner = this;
}

environment::~environment() {
    if (internal::current_env() == core_.get())
        internal::fatal("an environment was destroyed from one of its own threads");
    core_->stop();
    core_->join();
}

const std::string& environment::name() const noexcept { return core_->name(); }

void environment::stop() noexcept { core_->stop(); }

void environment::join() { core_->join(); }

bool environment::stopping() const noexcept { return core_->stopping(); }

dispatcher environment::default_dispatcher() const { return dispatcher(core_->default_dispatcher()); }

dispatcher environment::add_dispatcher(std::string name, const one_thread_params& p) {
    core_->check_not_stopping("adding dispatcher", name);
    return dispatcher(core_->add_dispatcher(internal::make_one_thread(std::move(name), p)));
}

dispatcher environment::add_dispatcher(std::string name, const active_obj_params& p) {
    core_->check_not_stopping("adding dispatcher", name);
    return dispatcher(core_->add_dispatcher(internal::make_active_obj(std::move(name), p)));
}

dispatcher environment::add_dispatcher(std::string name, const active_group_params& p) {
    core_->check_not_stopping("adding dispatcher", name);
    return dispatcher(core_->add_dispatcher(internal::make_active_group(std::move(name), p)));
}

dispatcher environment::add_dispatcher(std::string name, const thread_pool_params& p) {
    core_->check_not_stopping("adding dispatcher", name);
    return dispatcher(core_->add_dispatcher(internal::make_thread_pool(std::move(name), p)));
}

dispatcher environment::find_dispatcher(std::string_view name) const {
    return dispatcher(core_->find_dispatcher(name));
}

environment_stats environment::stats() const { return core_->stats(); }

std::vector<dispatcher_stats> environment::dispatcher_stats_all() const {
    std::vector<dispatcher_stats> out;
    for (auto& d : core_->dispatchers()) out.push_back(d->stats());
    return out;
}

}  // namespace mailroom
