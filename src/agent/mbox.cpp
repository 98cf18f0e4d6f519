#include <mailroom/core/error.hpp>

#include <mailroom/agent/runtime.hpp>

#include <algorithm>

namespace mailroom {
namespace internal {

namespace {
std::atomic<std::uint64_t> next_mbox_id{1};

void execute_message(demand* base, demand_mode mode) noexcept;
}  // namespace

message_demand* message_demand::make(agent_core* target, std::uint32_t gen, std::uint64_t mbox_id, envelope* msg,
                                     timer_entry* timer, bool fanout) {
    void* block = pool_allocate(sizeof(message_demand));
    auto* d = new (block) message_demand;
    d->execute = &execute_message;
    d->target = target;
    d->gen = gen;
    d->mbox_id = mbox_id;
    d->msg = msg;
    d->timer = timer;
    d->fanout = fanout;
    if (timer) timer->add_ref();
    return d;
}

void message_demand::free() noexcept {
    if (msg) msg->release();
    if (timer) timer->release();
    this->~message_demand();
    pool_free(this, sizeof(message_demand));
}

namespace {

struct handler_call {
    const subscription* sub;
    envelope* msg;
};

void execute_message(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<message_demand*>(base);
    agent_core* core = d->target;
    env_core& env = *core->rt->env;
    thread_counters& counters = env.counters();
    if (mode == demand_mode::discard) {
        thread_counters::bump(counters.discarded);
        d->free();
        return;
    }
    // The agent's own context: gen only changes here, so a plain check suffices.
    if (core->gen.load(std::memory_order_acquire) != d->gen) {
        thread_counters::bump(d->fanout ? counters.ignored : counters.lost);
        d->free();
        return;
    }
    const subscription* sub = core->find(d->mbox_id, d->msg->type());
    if (!sub) {
        thread_counters::bump(counters.ignored);
        d->free();
        return;
    }
    if (d->timer && !d->timer->begin_delivery()) {
        thread_counters::bump(counters.cancelled);
        d->free();
        return;
    }
    handler_call call{sub, d->msg};
    core->dispatching = true;
    run_guarded(
        *core, "handler", d->msg->type(),
        [](void* p) {
            auto* c = static_cast<handler_call*>(p);
            const_cast<handler&>(c->sub->fn)(c->msg);
        },
        &call);
    core->dispatching = false;
    if (core->has_dead || !core->added.empty()) core->settle_subscriptions();
    if (d->timer) d->timer->end_delivery();
    thread_counters::bump(counters.delivered);
    d->free();
}

}  // namespace

mbox_impl::mbox_impl(std::shared_ptr<env_core> env, agent_runtime* rt, mbox_kind kind)
    : env_(std::move(env)), rt_(rt), id_(next_mbox_id.fetch_add(1, std::memory_order_relaxed)), kind_(kind) {}

mbox_impl::~mbox_impl() = default;

direct_mbox::direct_mbox(std::shared_ptr<env_core> env, agent_runtime* rt, agent_core* core, std::uint32_t gen,
                         std::uint64_t agent_id)
    : mbox_impl(std::move(env), rt, mbox_kind::direct), core_(core), gen_(gen), agent_id_(agent_id) {}

std::string direct_mbox::name() const { return "direct mbox of agent #" + std::to_string(agent_id_); }

void direct_mbox::deliver(envelope* e, timer_entry* timer) {
    envelope_ref ref(e);  // released after the send ended: the payload's destructor is user code
    env_core& env = *env_;
    thread_counters& counters = env.counters();
    send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
    if (!env.open()) env.check_open("sending through", name());  // the name is built only to raise
    // A cheap early answer for a receiver that is gone; the receiving side checks again.
    if (core_->gen.load(std::memory_order_acquire) != gen_) {
        thread_counters::bump(counters.sent);  // every counted loss was first counted sent
        thread_counters::bump(counters.lost);
        return;
    }
    message_demand* d = message_demand::make(core_, gen_, id_, e, timer, false);
    ref.release();
    thread_counters::bump(counters.sent);
    core_->push(d);
}

mpmc_mbox::mpmc_mbox(std::shared_ptr<env_core> env, agent_runtime* rt, std::string name)
    : mbox_impl(std::move(env), rt, mbox_kind::mpmc), name_(std::move(name)),
      table_(std::make_shared<const table>()) {}

std::string mpmc_mbox::name() const {
    return name_.empty() ? "mbox #" + std::to_string(id_) : "mbox '" + name_ + "'";
}

void mpmc_mbox::deliver(envelope* e, timer_entry* timer) {
    envelope_ref ref(e);  // released after the send ended: the payload's destructor is user code
    env_core& env = *env_;
    thread_counters& counters = env.counters();
    send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
    if (!env.open()) env.check_open("sending through", name());  // the name is built only to raise
    std::shared_ptr<const table> snap;
    {
        std::lock_guard g(lock_);
        snap = table_;
    }
    const std::vector<subscriber>* subs = nullptr;
    for (auto& [type, list] : snap->by_type)
        if (type == e->type()) subs = &list;
    if (!subs || subs->empty()) return;  // nobody listens: not a loss
    const auto n = static_cast<std::uint32_t>(subs->size());
    // One atomic add for the whole fan-out instead of one per receiver.
    if (n > 1) e->add_refs(n - 1);
    ref.release();
    // Counted sent before the first delivery is queued: a receiver may count its outcome at
    // once, and no snapshot may show an outcome before its send.
    thread_counters::bump(counters.sent, n);
    std::uint32_t i = 0, ignored = 0;
    try {
        for (; i < n; ++i) {
            const subscriber& s = (*subs)[i];
            if (s.core) [[likely]]
                s.core->push(message_demand::make(s.core, s.gen, id_, e, timer, true));
            else if (!s.other->publish(e, timer))
                ++ignored;  // a session's subscription shut down after this snapshot was taken
        }
    } catch (...) {
        // Out of memory: the deliveries not made were never sent (the caller gets the error).
        // Taking them back leaves sent too high for a moment, never too low.
        counters.sent.store(counters.sent.load(std::memory_order_relaxed) - (n - i), std::memory_order_release);
        if (ignored) thread_counters::bump(counters.ignored, ignored);
        for (std::uint32_t j = i; j < n; ++j) e->release();
        throw;
    }
    if (ignored) thread_counters::bump(counters.ignored, ignored);
}

void mpmc_mbox::add_entry(subscriber entry, message_type type) {
    std::lock_guard g(lock_);
    auto next = std::make_shared<table>(*table_);
    auto it = std::find_if(next->by_type.begin(), next->by_type.end(), [&](auto& p) { return p.first == type; });
    if (it == next->by_type.end()) {
        next->by_type.emplace_back(type, std::vector<subscriber>{});
        it = next->by_type.end() - 1;
    }
    it->second.push_back(std::move(entry));
    table_ = std::move(next);
}

template <class Match>
void mpmc_mbox::remove_entries(message_type type, Match&& match) noexcept {
    std::shared_ptr<const table> old;  // released outside the lock: it may drop the last reference
    std::lock_guard g(lock_);
    try {
        auto next = std::make_shared<table>(*table_);
        for (auto it = next->by_type.begin(); it != next->by_type.end(); ++it) {
            if (!(it->first == type)) continue;
            auto& v = it->second;
            v.erase(std::remove_if(v.begin(), v.end(), match), v.end());
            if (v.empty()) next->by_type.erase(it);
            break;
        }
        old = std::exchange(table_, std::move(next));
    } catch (...) {
        // Out of memory copying the table: the stale entry stays. An agent's deliveries are
        // then dropped by the generation check at the receiver, a session subscription's by its
        // shut flag (the entry keeps it alive until the mbox is freed).
    }
}

void mpmc_mbox::add_subscriber(agent_core* core, std::uint32_t gen, message_type type) {
    add_entry(subscriber(core, gen), type);
}

void mpmc_mbox::add_subscriber(topic_subscriber* sub, message_type type) { add_entry(subscriber(sub), type); }

void mpmc_mbox::remove_subscriber(topic_subscriber* sub, message_type type) noexcept {
    remove_entries(type, [&](const subscriber& s) { return s.other == sub; });
}

void mpmc_mbox::remove_subscriber(agent_core* core, std::uint32_t gen, message_type type) noexcept {
    remove_entries(type, [&](const subscriber& s) { return s.core == core && s.gen == gen; });
}

void deliver(const mbox& to, envelope* e) {
    if (!to) {
        e->release();
        throw usage_error("sending through an empty mbox handle");
    }
    to.impl()->deliver(e, nullptr);
}

}  // namespace internal

mbox::mbox(std::shared_ptr<internal::mbox_impl> impl) noexcept : impl_(std::move(impl)) {}

std::uint64_t mbox::id() const noexcept { return impl_ ? impl_->id() : 0; }

mbox_kind mbox::kind() const noexcept { return impl_ ? impl_->kind() : mbox_kind::mpmc; }

std::string mbox::name() const { return impl_ ? impl_->name() : std::string("<empty mbox>"); }

mbox make_mpmc_mbox(environment& env) {
    auto& core = *env.core();
    core.check_open("creating", "mpmc mbox");
    auto& rt = internal::agent_runtime::of(core);
    return mbox(std::make_shared<internal::mpmc_mbox>(env.core(), &rt, std::string()));
}

mbox make_named_mbox(environment& env, std::string name) {
    return internal::agent_runtime::of(*env.core()).make_named(std::move(name), false);
}

mbox named_mbox(environment& env, std::string name) {
    return internal::agent_runtime::of(*env.core()).make_named(std::move(name), true);
}

mbox find_named_mbox(environment& env, std::string_view name) {
    return internal::agent_runtime::of(*env.core()).find_named(name);
}

}  // namespace mailroom
