#include <mailroom/core/error.hpp>

#include <mailroom/mbox/limit_table.hpp>
#include <mailroom/mbox/mbox_impl.hpp>

#include <mutex>

namespace mailroom::internal {

namespace {

MAILROOM_FAST_TLS thread_local bool tls_timer_send = false;
// Redirects and transforms nested on this thread (each one is a send inside a send).
MAILROOM_FAST_TLS thread_local int tls_depth = 0;

struct depth_scope {
    depth_scope() noexcept { ++tls_depth; }
    ~depth_scope() { --tls_depth; }
};

void count_drop(limit_slot& s, thread_counters& c) noexcept {
    s.dropped.fetch_add(1, std::memory_order_relaxed);
    thread_counters::bump(c.sent);  // every counted outcome was first counted sent
    thread_counters::bump(c.dropped);
}

std::string over_text(const limit_table& t, const limit_slot& s, std::uint64_t w, message_type type) {
    std::string text = t.owner() + ": message limit reached for " + readable_name(type) + " (";
    text += std::to_string(limit_slot::messages_of(w)) + " messages";
    const std::uint64_t b = s.max_bytes.load(std::memory_order_relaxed);
    if (b != ~std::uint64_t{0}) text += ", " + std::to_string(b) + " bytes";
    return text + ")";
}

[[gnu::cold]] accept_result over_limit(const limit_table& t, limit_slot& s, std::uint64_t w, envelope* e,
                                       thread_counters& c) noexcept {
    const limit_reaction reaction = limit_slot::reaction_of(w);
    if (tls_timer_send) {
        // The timer thread serves every timer of the environment: it never aborts the process,
        // nor runs a redirect's sends or a transform's user code.
        count_drop(s, c);
        if (reaction == limit_reaction::abort && !s.timer_abort_logged.exchange(true, std::memory_order_relaxed)) {
            try {
                t.env->log(over_text(t, s, w, e->type()) +
                           ": a timer's message was dropped instead of aborting (reported once)");
            } catch (...) {
            }
        }
        return accept_result::diverted;
    }
    switch (reaction) {
        case limit_reaction::drop: count_drop(s, c); return accept_result::diverted;
        case limit_reaction::abort: {
            s.aborted.fetch_add(1, std::memory_order_relaxed);
            thread_counters::bump(c.limit_aborts);
            std::string text;
            try {
                text = over_text(t, s, w, e->type()) + ": aborting (limit_abort)";
                if (auto spec = t.spec_of(s); spec && spec->log) spec->log(e);
            } catch (...) {
                if (text.empty()) text = "a message limit was reached: aborting (limit_abort)";
            }
            t.env->log(text);
            fatal(text.c_str());
        }
        case limit_reaction::redirect:
        case limit_reaction::transform: break;
    }
    if (tls_depth >= max_limit_depth) {
        // A chain of redirects (two receivers over their limits redirecting to each other)
        // ends here, counted.
        count_drop(s, c);
        return accept_result::diverted;
    }
    std::shared_ptr<const limit_spec> spec;
    try {
        spec = t.spec_of(s);
    } catch (...) {
    }
    if (!spec || spec->reaction != reaction) {  // changed meanwhile: the new limit has no such reaction
        count_drop(s, c);
        return accept_result::diverted;
    }
    depth_scope nested;
    try {
        if (reaction == limit_reaction::redirect) {
            e->add_refs(1);  // the redirect's; the caller keeps (and releases) its own
            deliver(spec->to, e);
            s.redirected.fetch_add(1, std::memory_order_relaxed);
            thread_counters::bump(c.redirected);
        } else {
            transformed out = spec->transform(e);
            if (!out) {
                count_drop(s, c);
                return accept_result::diverted;
            }
            mbox to = out.to();
            deliver(to, out.release());
            s.transformed.fetch_add(1, std::memory_order_relaxed);
            thread_counters::bump(c.transformed);
        }
    } catch (const std::exception& ex) {
        // The target's environment stopped, or the transform threw: counted and logged, the
        // sender carries on (its send did happen; what became of it is in the books).
        count_drop(s, c);
        try {
            t.env->log(over_text(t, s, w, e->type()) + ": the " +
                       (reaction == limit_reaction::redirect ? "redirect" : "transform") + " failed (" + ex.what() +
                       "): the message was dropped");
        } catch (...) {
        }
    } catch (...) {
        count_drop(s, c);
    }
    return accept_result::diverted;
}

}  // namespace

timer_send_scope::timer_send_scope() noexcept { tls_timer_send = true; }
timer_send_scope::~timer_send_scope() { tls_timer_send = false; }

namespace {

// The execute function of a demand counted by a limit: gives back its count, then runs it as
// any other (the receiver's run_message), so that the execute path of a demand without a limit
// pays nothing for limits. Run once on every path, so the count never leaks: its handling
// begins, or it is discarded, refused or finds its receiver gone.
void execute_limited(demand* base, demand_mode mode) noexcept {
    auto* d = static_cast<message_demand*>(base);
    limit_release(*d);
    d->target->run_message(base, mode);
}

}  // namespace

accept_result accept_limited(limit_table& t, const route& r, envelope* e, timer_entry* timer, thread_counters& c) {
    std::uint8_t index = 0;
    limit_slot* sp = nullptr;
    std::uint64_t w = limit_slot::none;
    if (t.active.load(std::memory_order_acquire)) [[likely]] {
        sp = &t.find(e->type(), r.key, index);
        w = sp->word.load(std::memory_order_acquire);
    }
    if (w == limit_slot::none) {
        message_demand* d = message_demand::make(r.to, r.gen, r.key, e, timer, r.kind);
        d->limit_slot = 0;
        thread_counters::bump(c.sent);
        r.to->push(d);
        return accept_result::queued;
    }
    limit_slot& s = *sp;
    const std::uint32_t bytes = e->bytes();
    // The counts go up only while they stay within the limit, so that `queued` never shows
    // more than the limit to a reader, even for the instant a refused send would otherwise
    // add itself and take itself out again.
    const std::uint64_t max_n = limit_slot::messages_of(w);
    std::uint64_t n = s.queued.load(std::memory_order_relaxed);
    do {
        if (n >= max_n) return over_limit(t, s, w, e, c);
    } while (!s.queued.compare_exchange_weak(n, n + 1, std::memory_order_relaxed, std::memory_order_relaxed));
    const std::uint64_t max_b = s.max_bytes.load(std::memory_order_relaxed);
    bool fits = true;
    if (max_b == ~std::uint64_t{0}) {
        s.queued_bytes.fetch_add(bytes, std::memory_order_relaxed);
    } else {
        std::uint64_t b = s.queued_bytes.load(std::memory_order_relaxed);
        do {
            if (b > max_b || bytes > max_b - b) {
                fits = false;
                break;
            }
        } while (!s.queued_bytes.compare_exchange_weak(b, b + bytes, std::memory_order_relaxed,
                                                        std::memory_order_relaxed));
    }
    if (fits) [[likely]] {
        message_demand* d;
        try {
            d = message_demand::make(r.to, r.gen, r.key, e, timer, r.kind);
        } catch (...) {
            s.queued.fetch_sub(1, std::memory_order_relaxed);
            s.queued_bytes.fetch_sub(bytes, std::memory_order_relaxed);
            throw;
        }
        d->limit_slot = static_cast<std::uint8_t>(index + 1);
        d->execute = &execute_limited;
        thread_counters::bump(c.sent);
        r.to->push(d);
        return accept_result::queued;
    }
    s.queued.fetch_sub(1, std::memory_order_relaxed);
    return over_limit(t, s, w, e, c);
}

void limit_release(const message_demand& d) noexcept {
    limit_slot& s = d.target->limits.load(std::memory_order_relaxed)->at(static_cast<std::uint8_t>(d.limit_slot - 1));
    s.queued.fetch_sub(1, std::memory_order_relaxed);
    s.queued_bytes.fetch_sub(d.msg->bytes(), std::memory_order_relaxed);
}

// ---- the table ----

limit_table::limit_table(env_core* e) : env(e) { slots_[0].store(new limit_slot, std::memory_order_relaxed); }

limit_table::~limit_table() {
    for (auto& s : slots_) delete s.load(std::memory_order_relaxed);
}

std::shared_ptr<const limit_spec> limit_table::set(message_type t, std::uint64_t key,
                                                   std::shared_ptr<const limit_spec> spec, const std::string& owner) {
    std::lock_guard g(lock_);
    if (owner_ != owner) owner_ = owner;
    limit_slot* s = nullptr;
    if (t == message_type_of<any_other_message>()) {
        s = slots_[0].load(std::memory_order_relaxed);
    } else {
        const std::uint32_t n = used_.load(std::memory_order_relaxed);
        limit_slot* spare = nullptr;
        for (std::uint32_t i = 1; i < n && !s; ++i) {
            limit_slot* x = slots_[i].load(std::memory_order_relaxed);
            const std::type_info* ty = x->type.load(std::memory_order_relaxed);
            if (ty && message_type(*ty) == t && x->key.load(std::memory_order_relaxed) == key)
                s = x;
            else if (!spare && x->word.load(std::memory_order_relaxed) == limit_slot::none &&
                     x->queued.load(std::memory_order_relaxed) == 0)
                spare = x;
        }
        if (!s && !spec) return nullptr;  // nothing to remove
        if (!s && spare) {
            // A sender scanning meanwhile may still match the old type: what it counts there,
            // its demand gives back to the same slot.
            s = spare;
            s->type.store(t.info(), std::memory_order_relaxed);
            s->key.store(key, std::memory_order_relaxed);
        }
        if (!s) {
            if (n == capacity)
                throw usage_error(owner + ": limiting " + readable_name(t) + ": at most " +
                                  std::to_string(capacity - 1) +
                                  " message types have limits of their own (use any_other_message for the rest)");
            s = new limit_slot;
            s->type.store(t.info(), std::memory_order_relaxed);
            s->key.store(key, std::memory_order_relaxed);
            slots_[n].store(s, std::memory_order_relaxed);
            used_.store(n + 1, std::memory_order_release);
        }
    }
    if (!spec) {
        s->word.store(limit_slot::none, std::memory_order_release);
        return std::move(s->spec);
    }
    // The byte bound first: a send that sees the new word sees it too (release/acquire).
    s->max_bytes.store(spec->bounds.bytes, std::memory_order_relaxed);
    const std::uint64_t w = limit_slot::pack(spec->bounds.messages, spec->reaction);
    std::shared_ptr<const limit_spec> old = std::exchange(s->spec, std::move(spec));
    s->word.store(w, std::memory_order_release);
    return old;
}

std::shared_ptr<const limit_spec> limit_table::spec_of(limit_slot& s) const {
    std::lock_guard g(lock_);
    return s.spec;
}

std::string limit_table::owner() const {
    std::lock_guard g(lock_);
    return owner_;
}

std::vector<limit_stats> limit_table::stats() const {
    std::vector<limit_stats> out;
    const std::uint32_t n = used_.load(std::memory_order_acquire);
    for (std::uint32_t i = 0; i < n; ++i) {
        const limit_slot& s = *slots_[i].load(std::memory_order_relaxed);
        const std::uint64_t w = s.word.load(std::memory_order_acquire);
        if (w == limit_slot::none) continue;
        limit_stats x;
        const std::type_info* ty = s.type.load(std::memory_order_relaxed);
        x.type = ty ? message_type(*ty) : message_type_of<any_other_message>();
        x.inbox = s.key.load(std::memory_order_relaxed) != 0;
        x.bounds = {limit_slot::messages_of(w), s.max_bytes.load(std::memory_order_relaxed)};
        x.reaction = limit_slot::reaction_of(w);
        x.queued = s.queued.load(std::memory_order_relaxed);
        x.queued_bytes = s.queued_bytes.load(std::memory_order_relaxed);
        x.dropped = s.dropped.load(std::memory_order_relaxed);
        x.redirected = s.redirected.load(std::memory_order_relaxed);
        x.transformed = s.transformed.load(std::memory_order_relaxed);
        x.aborted = s.aborted.load(std::memory_order_relaxed);
        out.push_back(x);
    }
    return out;
}

void limit_table::reset(std::vector<std::shared_ptr<const limit_spec>>& old) noexcept {
    std::lock_guard g(lock_);
    const std::uint32_t n = used_.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n; ++i) {
        limit_slot& s = *slots_[i].load(std::memory_order_relaxed);
        s.word.store(limit_slot::none, std::memory_order_release);
        s.max_bytes.store(~std::uint64_t{0}, std::memory_order_relaxed);
        s.dropped.store(0, std::memory_order_relaxed);
        s.redirected.store(0, std::memory_order_relaxed);
        s.transformed.store(0, std::memory_order_relaxed);
        s.aborted.store(0, std::memory_order_relaxed);
        s.timer_abort_logged.store(false, std::memory_order_relaxed);
        if (old.capacity() > old.size()) old.push_back(std::move(s.spec));
        else s.spec.reset();  // no room reserved (out of memory): freed here
    }
}

bool declare_limit(receiver& r, std::uint32_t gen, message_type t, std::uint64_t key,
                   std::shared_ptr<const limit_spec> spec, const std::string& owner) {
    const bool adding = static_cast<bool>(spec);
    std::shared_ptr<const limit_spec> old;  // freed outside the locks: it may hold the last mbox handle
    {
        // Under pending_lock, as end_limits() is: a declaration racing the end of the life
        // either lands in it (and is reset with it) or finds it over.
        std::lock_guard g(r.pending_lock);
        if (r.gen.load(std::memory_order_acquire) != gen) return false;
        limit_table* table = r.limits.load(std::memory_order_relaxed);
        if (!table) {
            if (!adding) return true;
            table = new limit_table(r.env);
            r.limits.store(table, std::memory_order_release);  // inactive until set() succeeded
            // After the table: a send that finds the bit finds the table (accept_slow).
            r.start.fetch_or(receiver::start_limited, std::memory_order_release);
        }
        old = table->set(t, key, std::move(spec), owner);
        // Counting starts with the first limit of the life; a removal leaves it on (the slots
        // of removed limits count nothing).
        if (adding) table->active.store(true, std::memory_order_release);
    }
    return true;
}

std::vector<limit_stats> limit_stats_of(const receiver& r) {
    const limit_table* t = r.limits.load(std::memory_order_acquire);
    return t && t->active.load(std::memory_order_acquire) ? t->stats() : std::vector<limit_stats>{};
}

void receiver::end_limits() noexcept {
    std::vector<std::shared_ptr<const limit_spec>> old;  // freed outside the locks
    try {
        old.reserve(limit_table::capacity);
    } catch (...) {
    }
    {
        std::lock_guard g(pending_lock);
        if (limit_table* t = limits.load(std::memory_order_relaxed)) {
            t->active.store(false, std::memory_order_release);
            t->reset(old);
        }
    }
}

receiver::~receiver() { delete limits.load(std::memory_order_relaxed); }

}  // namespace mailroom::internal
