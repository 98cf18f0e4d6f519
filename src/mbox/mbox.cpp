#include <mailroom/core/error.hpp>

#include <mailroom/mbox/mbox_impl.hpp>
#include <mailroom/core/handle_access.hpp>

#include <algorithm>

namespace mailroom {
namespace internal {

namespace {
std::atomic<std::uint64_t> next_mbox_id{1};
}  // namespace

std::uint64_t new_delivery_key() noexcept { return next_mbox_id.fetch_add(1, std::memory_order_relaxed); }

mbox_impl::mbox_impl(std::shared_ptr<env_core> env, mbox_kind kind)
    : env_(std::move(env)), id_(new_delivery_key()), kind_(kind) {}

mbox_impl::~mbox_impl() = default;

direct_mbox::direct_mbox(std::shared_ptr<env_core> env, route to, const char* what, std::uint64_t what_id)
    : mbox_impl(std::move(env), mbox_kind::direct), to_(to), what_(what), what_id_(what_id) {
    to_.key = id_;
}

direct_mbox::direct_mbox(std::shared_ptr<env_core> env, route to, object_link link, std::string describe)
    : mbox_impl(std::move(env), mbox_kind::direct), to_(to),
      extras_(true),
      object_(std::make_unique<const object_part>(object_part{std::move(link), std::move(describe)})) {}

direct_mbox::~direct_mbox() {
    if (filter_slot* f = filters_.load(std::memory_order_relaxed)) f->release();
}

filter_slot& direct_mbox::filters(const std::string& owner) {
    if (filter_slot* f = filters_.load(std::memory_order_acquire)) return *f;
    auto* made = new filter_slot(owner);
    std::lock_guard g(filters_lock_);
    if (filter_slot* f = filters_.load(std::memory_order_relaxed)) {
        made->release();
        return *f;
    }
    filters_.store(made, std::memory_order_release);
    extras_.store(true, std::memory_order_release);  // after: a send that sees it finds the filters
    return *made;
}

void direct_mbox::adopt_filters(filter_ref s) noexcept {
    filter_slot* f = s.get();
    if (!f) return;
    f->add_ref();  // the mbox's own; `s` drops the one it brought
    filters_.store(f, std::memory_order_release);
    extras_.store(true, std::memory_order_release);
}

void direct_mbox::close_filters() noexcept {
    if (filter_slot* f = filters_.load(std::memory_order_acquire)) f->close();
}

std::string direct_mbox::name() const {
    if (object_) return "direct mbox of " + object_->describe;
    return std::string("direct mbox of ") + what_ + " #" + std::to_string(what_id_);
}

void direct_mbox::deliver(envelope* e, timer_entry* timer) {
    envelope_ref ref(e);  // released after the send ended: the payload's destructor is user code
    env_core& env = *env_;
    thread_counters& counters = env.counters();
    send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
    if (!env.open()) env.check_open("sending through", name());  // the name is built only to raise
    // The one test a send through a plain direct mbox pays for filters and event objects.
    const object_link* link = nullptr;
    if (extras_.load(std::memory_order_acquire)) [[unlikely]] {
        if (filter_slot* f = filters_.load(std::memory_order_acquire)) {
            if (!f->accepts(e, *this, counters)) {
                // Refused before anything was queued: counted sent, then ignored and filtered
                // (the receiver did not want it: not a loss).
                thread_counters::bump(counters.sent);
                thread_counters::bump(counters.ignored);
                thread_counters::bump(counters.filtered);
                return;
            }
        }
        if (object_) link = &object_->link;
    }
    const accept_result r = accept(to_, link, e, timer, counters);
    if (r == accept_result::queued) [[likely]] {
        ref.release();
        return;
    }
    if (r == accept_result::diverted) return;  // a message limit counted what it did
    thread_counters::bump(counters.sent);  // every counted outcome was first counted sent
    thread_counters::bump(r == accept_result::gone ? counters.lost : counters.ignored);
}

mpmc_mbox::mpmc_mbox(std::shared_ptr<env_core> env, std::string name)
    : mbox_impl(std::move(env), mbox_kind::mpmc), name_(std::move(name)),
      table_(std::make_shared<const table>()) {}

std::string mpmc_mbox::name() const {
    return name_.empty() ? "mbox #" + std::to_string(id_) : "mbox '" + name_ + "'";
}

void mpmc_mbox::deliver(envelope* e, timer_entry* timer) {
    envelope_ref ref(e);  // released after the send ended: the payload's destructor is user code
    std::uint32_t gone = 0;  // deliveries whose receiver left: their references are ours to drop
    std::uint32_t diverted = 0;  // deliveries a message limit took care of (and counted): the same
    {
        env_core& env = *env_;
        thread_counters& counters = env.counters();
        send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
        if (!env.open()) env.check_open("sending through", name());  // the name is built only to raise
        std::shared_ptr<const table> snap;
        {
            std::lock_guard g(lock_);
            snap = table_;
        }
        const std::vector<listing>* subs = nullptr;
        for (auto& [type, list] : snap->by_type)
            if (type == e->type()) subs = &list;
        if (!subs || subs->empty()) return;  // nobody listens: not a loss
        const auto n = static_cast<std::uint32_t>(subs->size());
        // One atomic add for the whole fan-out instead of one per receiver.
        if (n > 1) e->add_refs(n - 1);
        ref.release();
        // Each accepted delivery is counted sent before it is queued; one that finds its
        // receiver gone (it left after this snapshot was taken) is counted sent, then ignored
        // (the receiver left the topic: not a loss).
        std::uint32_t i = 0;
        std::uint32_t filtered = 0;  // refused by a delivery filter (among `gone`)
        try {
            for (; i < n; ++i) {
                const listing& l = (*subs)[i];
                // A listing without a filter pays one null test.
                if (l.filter && !l.filter->accepts(e, *this, counters)) [[unlikely]] {
                    ++gone;
                    ++filtered;
                    continue;
                }
                const accept_result r = accept(l.to, l.link.closed ? &l.link : nullptr, e, timer, counters);
                if (r != accept_result::queued) [[unlikely]]
                    ++(r == accept_result::diverted ? diverted : gone);
            }
        } catch (...) {
            // Out of memory: the deliveries not made were never sent (the caller gets the error).
            thread_counters::bump(counters.sent, gone);
            thread_counters::bump(counters.ignored, gone);
            thread_counters::bump(counters.filtered, filtered);
            for (std::uint32_t j = 0; j < gone + diverted + (n - i); ++j) e->release();
            throw;
        }
        if (gone) {
            thread_counters::bump(counters.sent, gone);
            thread_counters::bump(counters.ignored, gone);
            if (filtered) thread_counters::bump(counters.filtered, filtered);
        }
    }
    for (std::uint32_t j = 0; j < gone + diverted; ++j) e->release();
}

void mpmc_mbox::add_subscriber(route sub, message_type type, object_link link, filter_ref filter) {
    std::lock_guard g(lock_);
    auto next = std::make_shared<table>(*table_);
    auto it = std::find_if(next->by_type.begin(), next->by_type.end(), [&](auto& p) { return p.first == type; });
    if (it == next->by_type.end()) {
        next->by_type.emplace_back(type, std::vector<listing>{});
        it = next->by_type.end() - 1;
    }
    it->second.push_back(listing{sub, std::move(link), std::move(filter)});
    table_ = std::move(next);
}

filter_ref mpmc_mbox::filters_of(const route& sub, message_type type, const std::string& owner, bool make) {
    auto find = [&](auto& t) -> decltype(&t.by_type[0].second[0]) {
        for (auto& [ty, list] : t.by_type) {
            if (!(ty == type)) continue;
            for (auto& l : list)
                if (l.to.same(sub)) return &l;
        }
        return nullptr;
    };
    filter_ref made;  // made outside the lock; dropped outside it when not used
    for (;;) {
        {
            std::lock_guard g(lock_);
            const listing* l = find(*table_);
            if (!l) return {};
            if (l->filter || !make) return l->filter;
            if (made) {
                // The listing gets its filters by copy on write: a publisher holding the old
                // table delivers without them, as it would have a moment earlier.
                auto next = std::make_shared<table>(*table_);
                find(*next)->filter = made;
                std::shared_ptr<const table> old = std::exchange(table_, std::move(next));
                (void)old;  // freed under the lock: it holds no filter of its own to close
                return made;
            }
        }
        made = filter_ref(new filter_slot(owner));
    }
}

void mpmc_mbox::remove_subscriber(const route& sub, message_type type) noexcept {
    std::shared_ptr<const table> old;   // released outside the lock: it may drop the last reference
    std::shared_ptr<const table> seen;  // the table that listed it: its filters are closed below
    {
        std::lock_guard g(lock_);
        seen = table_;
        try {
            auto next = std::make_shared<table>(*table_);
            for (auto it = next->by_type.begin(); it != next->by_type.end(); ++it) {
                if (!(it->first == type)) continue;
                auto& v = it->second;
                v.erase(std::remove_if(v.begin(), v.end(), [&](const listing& x) { return x.to.same(sub); }),
                        v.end());
                if (v.empty()) next->by_type.erase(it);
                break;
            }
            old = std::exchange(table_, std::move(next));
        } catch (...) {
            // Out of memory copying the table: the stale entry stays, and its deliveries are
            // dropped at the receiver by the generation check (counted ignored).
        }
    }
    // Outside the lock: closing waits for a predicate running on a sender's thread, which may
    // itself publish to this mbox. A publisher holding an older snapshot finds the filters
    // closed (they pass everything) and its delivery is dropped at the receiver as before.
    for (auto& [ty, list] : seen->by_type) {
        if (!(ty == type)) continue;
        for (auto& l : list)
            if (l.filter && l.to.same(sub)) l.filter->close();
    }
}

// ---- named mboxes ----

namespace {
const char registry_key = 0;
}  // namespace

mbox_registry& mbox_registry::of(env_core& env) {
    return env.extension<mbox_registry>(&registry_key, [&] { return std::make_unique<mbox_registry>(&env); });
}

void mbox_registry::wait_stopped() noexcept {
    std::map<std::string, std::shared_ptr<mbox_impl>, std::less<>> named;
    std::lock_guard g(lock_);
    named.swap(named_);  // breaks the cycle mbox -> environment core -> registry -> mbox
    closed_ = true;      // a name made after this would rebuild the cycle
}

mbox mbox_registry::make(std::string name, bool may_exist) {
    env_->check_open("creating named mbox", name);
    std::lock_guard g(lock_);
    if (closed_)
        throw environment_stopped_error("creating named mbox '" + name + "': environment '" + env_->name() +
                                        "' is stopped");
    auto it = named_.find(name);
    if (it != named_.end()) {
        if (may_exist) return mbox(it->second);
        throw duplicate_name_error("named mbox '" + name + "' already exists in environment '" + env_->name() + "'");
    }
    auto m = std::make_shared<mpmc_mbox>(env_->shared_from_this(), name);
    named_.emplace(std::move(name), m);
    return mbox(std::move(m));
}

void mbox_registry::add(const std::string& name, std::shared_ptr<mbox_impl> m) {
    env_->check_open("naming", m->name());
    std::lock_guard g(lock_);
    if (closed_)
        throw environment_stopped_error("naming " + m->name() + ": environment '" + env_->name() + "' is stopped");
    if (named_.count(name))
        throw duplicate_name_error("named mbox '" + name + "' already exists in environment '" + env_->name() + "'");
    named_.emplace(name, std::move(m));
}

mbox mbox_registry::find(std::string_view name) {
    std::lock_guard g(lock_);
    auto it = named_.find(name);
    return it == named_.end() ? mbox() : mbox(it->second);
}

void deliver(const mbox& to, envelope* e) {
    if (!to) {
        e->release();
        throw usage_error("sending through an empty mbox handle");
    }
    internal::impl_of(to)->deliver(e, nullptr);
}

}  // namespace internal

mbox::mbox(std::shared_ptr<internal::mbox_impl> impl) noexcept : impl_(std::move(impl)) {}

std::uint64_t mbox::id() const noexcept { return impl_ ? impl_->id() : 0; }

mbox_kind mbox::kind() const noexcept { return impl_ ? impl_->kind() : mbox_kind::mpmc; }

std::string mbox::name() const { return impl_ ? impl_->name() : std::string("<empty mbox>"); }

mbox make_mpmc_mbox(environment& env) {
    auto& core = *internal::core_of(env);
    core.check_open("creating", "mpmc mbox");
    return mbox(std::make_shared<internal::mpmc_mbox>(internal::core_of(env), std::string()));
}

mbox make_named_mbox(environment& env, std::string name) {
    return internal::mbox_registry::of(*internal::core_of(env)).make(std::move(name), false);
}

mbox named_mbox(environment& env, std::string name) {
    return internal::mbox_registry::of(*internal::core_of(env)).make(std::move(name), true);
}

mbox find_named_mbox(environment& env, std::string_view name) {
    return internal::mbox_registry::of(*internal::core_of(env)).find(name);
}

}  // namespace mailroom
