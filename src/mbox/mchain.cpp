#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/mbox/mchain.hpp>

#include <mailroom/core/handle_access.hpp>
#include <mailroom/mbox/mchain_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <algorithm>
#include <limits>

namespace mailroom {
namespace internal {

namespace {

// An overflow reaction that threw a message away (drop newest, remove oldest, a timer's message
// over a full chain): an outcome of the books, like a message limit's drop, first counted sent.
void count_dropped(thread_counters& c) noexcept {
    thread_counters::bump(c.sent);
    thread_counters::bump(c.dropped);
}

}  // namespace

// ---- the wait lists ----

void mchain_impl::wait_list::push(mchain_wait_node& n) noexcept {
    n.prev = tail;
    n.next = nullptr;
    if (tail)
        tail->next = &n;
    else
        head = &n;
    tail = &n;
    n.linked = true;
}

void mchain_impl::wait_list::remove(mchain_wait_node& n) noexcept {
    if (n.prev)
        n.prev->next = n.next;
    else
        head = n.next;
    if (n.next)
        n.next->prev = n.prev;
    else
        tail = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
}

void mchain_impl::wait_list::wake_one(std::uint64_t& woken) noexcept {
    mchain_wait_node* n = head;
    if (!n) return;
    remove(*n);
    ++woken;
    // Under the chain's lock: the woken thread unlinks under it before its word goes away.
    n->word->store(1, std::memory_order_release);
    futex_wake(*n->word);
}

void mchain_impl::wait_list::wake_all(std::uint64_t& woken) noexcept {
    while (head) wake_one(woken);
}

// ---- the chain ----

mchain_impl::mchain_impl(std::shared_ptr<env_core> env, mchain_options options)
    : mbox_impl(std::move(env), mbox_kind::mchain), options_(std::move(options)),
      sender_wake_at_(options_.capacity ? options_.capacity - std::max<std::size_t>(1, options_.capacity / 4) : 0) {
    if (options_.memory == mchain_memory::preallocated) {
        buf_ = std::make_unique<envelope*[]>(options_.capacity);
        alloc_ = options_.capacity;
    }
}

mchain_impl::~mchain_impl() {
    // The last handle, mbox or subscription went: what is left is discarded, and counted.
    std::size_t n = 0;
    while (count_) {
        pop_front()->release();
        ++n;
    }
    if (n) {
        thread_counters& c = env_->counters();
        thread_counters::bump(c.sent, n);  // the books see a chain's message at its outcome
        thread_counters::bump(c.discarded, n);
    }
}

std::string mchain_impl::name() const {
    return options_.name.empty() ? "mchain #" + std::to_string(id_) : "mchain '" + options_.name + "'";
}

void mchain_impl::push_back(envelope* e) {
    if (count_ == alloc_) {
        // Dynamic storage only (preallocated never fills past its capacity): double, in order.
        std::size_t next = alloc_ ? alloc_ * 2 : 16;
        if (options_.capacity && next > options_.capacity) next = options_.capacity;
        auto grown = std::make_unique<envelope*[]>(next);
        for (std::size_t i = 0; i < count_; ++i) {
            std::size_t at = head_ + i;
            if (at >= alloc_) at -= alloc_;
            grown[i] = buf_[at];
        }
        buf_ = std::move(grown);
        alloc_ = next;
        head_ = 0;
    }
    std::size_t at = head_ + count_;
    if (at >= alloc_) at -= alloc_;
    buf_[at] = e;
    ++count_;
    size_.store(count_, std::memory_order_relaxed);
    if (count_ > stats_.high_water) stats_.high_water = count_;
}

envelope* mchain_impl::pop_front() noexcept {
    envelope* e = buf_[head_];
    if (++head_ == alloc_) head_ = 0;
    --count_;
    size_.store(count_, std::memory_order_relaxed);
    // Dynamic storage is given back when a burst has drained.
    if (count_ == 0 && options_.memory == mchain_memory::dynamic && alloc_ > 1024) {
        buf_.reset();
        alloc_ = 0;
        head_ = 0;
    }
    return e;
}

void mchain_impl::after_put() noexcept {
    ++stats_.stored;
    if (receivers_.head) [[unlikely]]
        receivers_.wake_one(stats_.wakeups);
    for (mchain_listener* l : listeners_) l->on_message_put();
}

std::string mchain_impl::overflow_text(envelope* e) const {
    return name() + " is full (capacity " + std::to_string(options_.capacity) + "): a message of type " +
           readable_name(e->type()) + " was refused";
}

void mchain_impl::overflow_abort(envelope* e) const noexcept {
    std::string text;
    try {
        text = overflow_text(e) + " and its overflow reaction is abort";
    } catch (...) {
        text = "an mchain is full and its overflow reaction is abort";
    }
    fatal(text.c_str());
}

void mchain_impl::deliver(envelope* e, timer_entry*) {
    // A send_delayed's timer is done once its message is in the chain: the chain is where it
    // was delivered (cancelling the timer afterwards does not take it back out).
    envelope_ref ref(e);      // released after the send ended: the payload's destructor is user code
    envelope_ref evicted;     // remove_oldest's victim, likewise
    env_core& env = *env_;
    thread_counters& counters = env.counters();
    // A timer thread never waits nor throws: a full chain drops what it fires.
    const bool timer_thread = on_timer_thread();
    const bool may_wait = options_.wait_for_space.count() > 0 && !timer_thread;
    std::int64_t deadline = 0;
    bool waited = false;
    for (;;) {
        {
            send_scope sending(counters);  // from before the check: join() waits for it (env_core.hpp)
            if (!env.open()) env.check_open("sending through", name());
            std::unique_lock g(lock_);
            if (closed_flag_.load(std::memory_order_relaxed)) [[unlikely]] {
                if (by_env_) {
                    g.unlock();
                    throw environment_stopped_error("sending through " + name() + ": environment '" + env.name() +
                                                    "' is stopping (its teardown closed the chain)");
                }
                ++stats_.refused_closed;
                thread_counters::bump(counters.sent);  // every counted outcome was first counted sent
                thread_counters::bump(counters.lost);
                return;
            }
            if (!full()) [[likely]] {
                push_back(ref.get());
                ref.release();
                after_put();
                return;
            }
            if (!may_wait || waited) {
                switch (options_.on_overflow) {
                    case mchain_overflow::drop_newest:
                        ++stats_.dropped_newest;
                        count_dropped(counters);
                        return;
                    case mchain_overflow::remove_oldest: {
                        evicted = envelope_ref(pop_front());
                        ++stats_.removed_oldest;
                        count_dropped(counters);
                        push_back(ref.get());  // room was just made: no allocation
                        ref.release();
                        after_put();
                        return;
                    }
                    case mchain_overflow::throw_error:
                        if (timer_thread) {
                            ++stats_.dropped_newest;
                            count_dropped(counters);
                            return;
                        }
                        ++stats_.refused_full;
                        g.unlock();
                        throw mchain_overflow_error(overflow_text(ref.get()));
                    case mchain_overflow::abort: overflow_abort(ref.get());
                }
            }
        }
        // Full, and this sender may wait for room: outside the send scope (join() must not wait
        // for a blocked sender; the teardown closes the chain, which wakes it).
        if (!deadline) deadline = now_ns() + options_.wait_for_space.count();
        std::atomic<std::uint32_t> word{0};
        mchain_wait_node node;
        node.word = &word;
        node.sender = true;
        if (!link_sender(node)) {
            for (std::int64_t now = now_ns(); word.load(std::memory_order_acquire) == 0 && now < deadline;
                 now = now_ns())
                futex_wait(word, 0, deadline - now);
            unlink(node);
        }
        if (now_ns() >= deadline) waited = true;
    }
}

mchain_impl::take_result mchain_impl::try_take(envelope*& out, matcher match, void* ctx, int& index) noexcept {
    std::lock_guard g(lock_);
    if (count_) [[likely]] {
        out = pop_front();
        ++stats_.extracted;
        index = match(ctx, out);
        ++(index >= 0 ? stats_.handled : stats_.ignored);
        // Senders waiting for room are woken once a quarter of the chain is free, not at each
        // take: a producer woken for every slot would cost a wake-up (tens of microseconds) per
        // message. A sender whose wait runs out looks again before its reaction applies, and a
        // receiver that stops taking passes the wake on (pass_on), so the room is never lost.
        if (senders_.head && count_ <= sender_wake_at_) [[unlikely]]
            senders_.wake_one(stats_.wakeups);
        return take_result::got;
    }
    return closed_flag_.load(std::memory_order_relaxed) ? take_result::closed : take_result::empty;
}

bool mchain_impl::has_messages() const noexcept {
    std::lock_guard g(lock_);
    return count_ != 0;
}

mchain_impl::put_result mchain_impl::try_put(envelope* e, thread_counters& c) {
    std::lock_guard g(lock_);
    if (closed_flag_.load(std::memory_order_relaxed)) {
        if (!by_env_) {
            // Counted as any send to a closed chain; the caller releases the message.
            ++stats_.refused_closed;
            thread_counters::bump(c.sent);
            thread_counters::bump(c.lost);
        }
        return put_result::closed;
    }
    if (full()) return put_result::full;
    push_back(e);
    after_put();
    return put_result::put;
}

void mchain_impl::close(mchain_close how, bool by_env) noexcept {
    std::size_t n = 0, head = 0;
    {
        std::lock_guard g(lock_);
        if (!closed_flag_.load(std::memory_order_relaxed)) {
            closed_flag_.store(true, std::memory_order_release);
            by_env_ = by_env;
        }
        if (how == mchain_close::drop_content) {
            // Emptied here, released below outside the lock (a payload's destructor is user
            // code): a closed chain never stores again, so the ring's slots stay as they are.
            n = count_;
            head = head_;
            count_ = 0;
            size_.store(0, std::memory_order_relaxed);
            stats_.discarded += n;
        }
        receivers_.wake_all(stats_.wakeups);
        senders_.wake_all(stats_.wakeups);
    }
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t at = head + i;
        if (at >= alloc_) at -= alloc_;
        buf_[at]->release();
    }
    if (n) {
        thread_counters& c = env_->counters();
        thread_counters::bump(c.sent, n);
        thread_counters::bump(c.discarded, n);
    }
}

bool mchain_impl::closed_by_env() const noexcept {
    std::lock_guard g(lock_);
    return by_env_;
}

bool mchain_impl::link_receiver(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (count_ || closed_flag_.load(std::memory_order_relaxed)) return true;
    receivers_.push(n);
    return false;
}

bool mchain_impl::link_sender(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (!full() || closed_flag_.load(std::memory_order_relaxed)) return true;
    senders_.push(n);
    return false;
}

bool mchain_impl::unlink(mchain_wait_node& n) noexcept {
    std::lock_guard g(lock_);
    if (!n.linked) return true;
    (n.sender ? senders_ : receivers_).remove(n);
    return false;
}

void mchain_impl::pass_on() noexcept {
    std::lock_guard g(lock_);
    if (count_ && receivers_.head) receivers_.wake_one(stats_.wakeups);
    if (!full() && senders_.head) senders_.wake_one(stats_.wakeups);
}

void mchain_impl::add_listener(mchain_listener* l) {
    std::lock_guard g(lock_);
    listeners_.push_back(l);
    // What is in the chain already is for it too.
    if (count_) l->on_message_put();
}

void mchain_impl::remove_listener(mchain_listener* l) noexcept {
    std::lock_guard g(lock_);
    listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), l), listeners_.end());
    // A receiver that stops taking passes the wake on (see try_take).
    if (!full() && senders_.head) senders_.wake_one(stats_.wakeups);
}

mchain_stats mchain_impl::stats() const {
    std::lock_guard g(lock_);
    mchain_stats s = stats_;
    s.size = count_;
    for (const mchain_wait_node* n = receivers_.head; n; n = n->next) ++s.receivers_waiting;
    for (const mchain_wait_node* n = senders_.head; n; n = n->next) ++s.senders_waiting;
    return s;
}

// ---- the registry ----

namespace {
const char registry_key = 0;
}  // namespace

mchain_registry& mchain_registry::of(env_core& env) {
    return env.extension<mchain_registry>(&registry_key, [&] { return std::make_unique<mchain_registry>(&env); });
}

void mchain_registry::begin_stop() noexcept {
    std::vector<std::shared_ptr<mchain_impl>> open;
    {
        std::lock_guard g(lock_);
        closed_ = true;
        for (auto& w : chains_)
            if (auto c = w.lock()) {
                try {
                    open.push_back(std::move(c));
                } catch (...) {
                    c->close(mchain_close::drop_content, true);  // under the lock: out of memory only
                }
            }
        chains_.clear();
    }
    for (auto& c : open) c->close(mchain_close::drop_content, true);
}

void mchain_registry::add(const std::shared_ptr<mchain_impl>& c) {
    std::lock_guard g(lock_);
    if (closed_)
        throw environment_stopped_error("creating " + c->name() + ": environment '" + env_->name() +
                                        "' is stopping");
    if (chains_.size() >= prune_at_) {
        chains_.erase(std::remove_if(chains_.begin(), chains_.end(), [](auto& w) { return w.expired(); }),
                      chains_.end());
        prune_at_ = std::max<std::size_t>(16, chains_.size() * 2);
    }
    chains_.push_back(c);
}

// ---- receive and select ----

namespace {

mchain_impl& chain_of(const select_case& c) noexcept {
    return static_cast<mchain_impl&>(*impl_of(*c.chain));
}

bool case_ready(const select_case& c) noexcept {
    const mchain_impl& ch = chain_of(c);
    if (ch.closed()) return true;
    return c.to_send ? ch.room_hint() : ch.size_hint() != 0;
}

}  // namespace

receive_result run_select(const receive_params& p, select_case* cs, std::size_t n, bool is_select) {
    // The send cases' messages are this call's until they are sent; whatever path leaves it.
    struct owned {
        select_case* cs;
        std::size_t n;
        ~owned() {
            for (std::size_t i = 0; i < n; ++i)
                if (cs[i].to_send) std::exchange(cs[i].to_send, nullptr)->release();
        }
    } own{cs, n};
    if (is_select && p.chain())
        throw usage_error("select: its conditions come from from_all(), not from(" + p.chain().name() +
                          "): the chains are given by its cases");
    for (std::size_t i = 0; i < n; ++i)
        if (!cs[i].chain || !*cs[i].chain)
            throw usage_error(is_select ? "select: case #" + std::to_string(i + 1) + " has an empty mchain handle"
                                        : std::string("receive: from() was given an empty mchain handle"));

    std::atomic<std::uint32_t> word{0};
    for (std::size_t i = 0; i < n; ++i) {
        cs[i].node.word = &word;
        cs[i].node.sender = cs[i].to_send != nullptr;
    }
    // On the way out, a chain that woke this thread and was not used wakes another one.
    struct passer {
        select_case* cs;
        std::size_t n;
        ~passer() {
            for (std::size_t i = 0; i < n; ++i)
                if (!cs[i].done) chain_of(cs[i]).pass_on();
        }
    } pass{cs, n};

    constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
    const auto deadline_after = [](std::int64_t from, std::chrono::nanoseconds d) {
        return d == std::chrono::nanoseconds::max() || d.count() > never - from ? never : from + d.count();
    };
    const std::int64_t start = now_ns();
    const std::int64_t total_deadline = deadline_after(start, p.total_time_value());
    std::int64_t empty_deadline = deadline_after(start, p.empty_timeout_value());
    const std::size_t handle_limit = p.handle_limit();
    const std::size_t extract_limit = p.extract_limit();

    receive_result r;
    bool env_closed = false;
    bool any_closed = false;
    std::size_t next = 0;  // the case tried first: round robin, so that no chain starves the others
    const auto case_closed = [&](select_case& c) {
        c.done = true;
        any_closed = true;
        if (chain_of(c).closed_by_env()) env_closed = true;
        if (c.to_send) std::exchange(c.to_send, nullptr)->release();
        if (p.close_handler()) p.close_handler()(*c.chain);
    };

    for (;;) {
        if (p.stop_predicate() && p.stop_predicate()()) {
            r.status = receive_status::stopped;
            return r;
        }
        bool progress = false;
        bool all_done = true;
        for (std::size_t k = 0; k < n && !progress; ++k) {
            const std::size_t i = (next + k) % n;
            select_case& c = cs[i];
            if (c.done) continue;
            mchain_impl& ch = chain_of(c);
            env_core& env = ch.env();
            thread_counters& counters = env.counters();
            if (c.to_send) {
                mchain_impl::put_result pr;
                {
                    send_scope sending(counters);
                    pr = env.open() ? ch.try_put(c.to_send, counters) : mchain_impl::put_result::closed;
                }
                if (pr == mchain_impl::put_result::closed) {
                    if (!env.open()) env_closed = true;
                    case_closed(c);
                    continue;
                }
                if (pr == mchain_impl::put_result::full) {
                    all_done = false;
                    continue;
                }
                c.to_send = nullptr;
                c.done = true;
                ++r.sent;
                progress = true;
                next = i + 1;
                c.on_sent(c.ctx);
                continue;
            }
            envelope* e = nullptr;
            int index = -1;
            switch (ch.try_take(e, c.match, c.ctx, index)) {
                case mchain_impl::take_result::closed: case_closed(c); continue;
                case mchain_impl::take_result::empty: all_done = false; continue;
                case mchain_impl::take_result::got: break;
            }
            envelope_ref ref(e);
            ++r.extracted;
            progress = true;
            next = i + 1;
            thread_counters::bump(counters.sent);  // the books see a chain's message at its outcome
            if (index < 0) {
                thread_counters::bump(counters.ignored);
                continue;
            }
            // Counted before it runs: a handler that throws was delivered to all the same.
            thread_counters::bump(counters.delivered);
            ++r.handled;
            c.invoke(c.ctx, index, e);
        }
        if (progress) {
            if (handle_limit && r.handled + r.sent >= handle_limit) {
                r.status = receive_status::handled_n;
                return r;
            }
            if (extract_limit && r.extracted >= extract_limit) {
                r.status = receive_status::extracted_n;
                return r;
            }
            empty_deadline = deadline_after(now_ns(), p.empty_timeout_value());
            continue;
        }
        if (all_done) {
            r.status = env_closed ? receive_status::environment_stopped
                       : any_closed ? receive_status::closed
                                    : receive_status::completed;
            return r;
        }
        // Nothing ready: spin briefly (a wake-up costs tens of microseconds), then park.
        std::int64_t now = now_ns();
        const std::int64_t deadline = std::min(empty_deadline, total_deadline);
        if (now >= deadline) {
            r.status = empty_deadline <= total_deadline ? receive_status::empty_timeout : receive_status::total_time;
            return r;
        }
        bool ready = false;
        for (int spin = 0; spin < 256 && !ready; ++spin) {
            cpu_relax();
            for (std::size_t i = 0; i < n && !ready; ++i) ready = !cs[i].done && case_ready(cs[i]);
        }
        if (ready) continue;
        word.store(0, std::memory_order_relaxed);
        std::size_t linked = 0;
        for (; linked < n && !ready; ++linked) {
            select_case& c = cs[linked];
            if (c.done) continue;
            mchain_impl& ch = chain_of(c);
            ready = c.to_send ? ch.link_sender(c.node) : ch.link_receiver(c.node);
        }
        if (!ready)
            for (now = now_ns(); word.load(std::memory_order_acquire) == 0 && now < deadline; now = now_ns())
                futex_wait(word, 0, deadline - now);
        for (std::size_t i = 0; i < linked; ++i)
            if (!cs[i].done) chain_of(cs[i]).unlink(cs[i].node);
    }
}

}  // namespace internal

// ---- the handle ----

mchain::mchain(std::shared_ptr<internal::mchain_impl> impl) noexcept : impl_(std::move(impl)) {}

mbox mchain::as_mbox() const { return impl_ ? mbox(impl_) : mbox(); }

std::string mchain::name() const { return impl_ ? impl_->name() : std::string("<empty mchain>"); }

std::size_t mchain::size() const noexcept { return impl_ ? impl_->size_hint() : 0; }

std::size_t mchain::capacity() const noexcept { return impl_ ? impl_->capacity() : 0; }

bool mchain::closed() const noexcept { return impl_ && impl_->closed(); }

void mchain::close(mchain_close how) const noexcept {
    if (impl_) impl_->close(how, false);
}

mchain_stats mchain::stats() const { return impl_ ? impl_->stats() : mchain_stats{}; }

mchain_closer::~mchain_closer() {
    for (const mchain& c : chains_) c.close(how_);
}

mchain make_mchain(environment& env, mchain_options options) {
    auto& core = internal::core_of(env);
    const std::string shown = options.name.empty() ? std::string("mchain") : "mchain '" + options.name + "'";
    if (options.memory == mchain_memory::preallocated && options.capacity == 0)
        throw usage_error("creating " + shown + ": preallocated memory needs a capacity");
    if (options.wait_for_space.count() < 0)
        throw usage_error("creating " + shown + ": wait_for_space is negative");
    if (options.named && options.name.empty()) throw usage_error("creating a named mchain: the name is empty");
    core->check_not_stopping("creating", shown);
    auto c = std::make_shared<internal::mchain_impl>(core, std::move(options));
    internal::mchain_registry::of(*core).add(c);
    if (c->options().named) internal::mbox_registry::of(*core).add(c->options().name, c);
    return mchain(std::move(c));
}

}  // namespace mailroom
