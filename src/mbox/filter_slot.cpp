#include <mailroom/core/error.hpp>
#include <mailroom/core/user_call.hpp>

#include <mailroom/mbox/filter_slot.hpp>
#include <mailroom/mbox/mbox_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <algorithm>
#include <thread>

namespace mailroom::internal {

namespace {
// The slots whose predicates this thread is running, innermost first (a predicate may send,
// and so run others): a write to one of them from here would wait for itself.
struct running_frame {
    const filter_slot* slot;
    running_frame* outer;
};
MAILROOM_FAST_TLS thread_local running_frame* tls_running = nullptr;

bool running_here(const filter_slot* s) noexcept {
    for (running_frame* f = tls_running; f; f = f->outer)
        if (f->slot == s) return true;
    return false;
}

void wait_empty(const std::atomic<std::uint32_t>& n) noexcept {
    // A reader holds its count only while it runs a predicate (a few instructions to a few
    // microseconds): spin briefly, then give the CPU to it.
    for (int spins = 0; n.load(std::memory_order_seq_cst) != 0; ++spins) {
        if (spins < 64)
            cpu_relax();
        else
            std::this_thread::yield();
    }
}
}  // namespace

filter_slot::~filter_slot() { delete current_.load(std::memory_order_relaxed); }

bool filter_slot::in_predicate() noexcept { return tls_running != nullptr; }

bool filter_slot::accepts(envelope* e, const mbox_impl& where, thread_counters& c) noexcept {
    const std::uint32_t i = version_.load(std::memory_order_seq_cst) & 1;
    readers_[i].fetch_add(1, std::memory_order_seq_cst);
    bool pass = true;
    if (const set_of* s = current_.load(std::memory_order_seq_cst)) {
        for (const auto& p : s->by_type) {
            if (!(p->type() == e->type())) continue;
            std::string text;  // an exception's what(), which must outlive the catch
            running_frame frame{this, tls_running};
            tls_running = &frame;
            const char* failure = call_catching([&] { pass = p->test(e); }, text);
            tls_running = frame.outer;
            if (failure) [[unlikely]] {
                pass = false;
                report(where, e->type(), failure);
                thread_counters::bump(c.filter_exceptions);
            }
            break;
        }
    }
    readers_[i].fetch_sub(1, std::memory_order_seq_cst);
    return pass;
}

void filter_slot::report(const mbox_impl& where, message_type type, const char* failure) const noexcept {
    std::string text;
    try {
        text = "delivery filter of " + owner_ + " on " + where.name() + " for " + readable_name(type) +
               " threw: " + failure + " (the message is refused)";
    } catch (...) {
        text = "a delivery filter threw (and formatting the report ran out of memory)";
    }
    where.env().log(text);
}

void filter_slot::check_not_in_predicate(const char* what) const {
    if (running_here(this))
        throw usage_error(std::string(what) + " the delivery filter of " + owner_ +
                          " from inside one of its own predicates (it would wait for itself)");
}

void filter_slot::publish(const set_of* next) noexcept {
    const set_of* old = current_.exchange(next, std::memory_order_seq_cst);
    if (!old) return;  // nobody can hold a set that was never there
    const std::uint32_t v = version_.load(std::memory_order_seq_cst) & 1;
    wait_empty(readers_[v ^ 1]);
    version_.store(v ^ 1, std::memory_order_seq_cst);
    wait_empty(readers_[v]);
    delete old;  // destroys the predicates no newer set holds, here, on the writer's thread
}

bool filter_slot::set(std::shared_ptr<const filter_predicate> p) {
    check_not_in_predicate("setting");
    std::lock_guard g(lock_);
    if (closed_) return false;
    auto next = std::make_unique<set_of>();
    if (const set_of* cur = current_.load(std::memory_order_relaxed)) {
        next->by_type.reserve(cur->by_type.size() + 1);
        for (const auto& q : cur->by_type)
            if (!(q->type() == p->type())) next->by_type.push_back(q);
    }
    next->by_type.push_back(std::move(p));
    publish(next.release());
    return true;
}

bool filter_slot::drop(message_type type) {
    check_not_in_predicate("dropping");
    std::lock_guard g(lock_);
    const set_of* cur = current_.load(std::memory_order_relaxed);
    if (closed_ || !cur) return false;
    auto has = [&](const auto& q) { return q->type() == type; };
    if (std::none_of(cur->by_type.begin(), cur->by_type.end(), has)) return false;
    std::unique_ptr<set_of> next;
    if (cur->by_type.size() > 1) {
        next = std::make_unique<set_of>();
        for (const auto& q : cur->by_type)
            if (!has(q)) next->by_type.push_back(q);
    }
    publish(next.release());
    return true;
}

void filter_slot::close() noexcept {
    // From inside one of this slot's predicates this would wait for itself (a predicate that
    // destroys its own subscription): a broken contract, reported rather than hung.
    if (running_here(this)) fatal("a delivery filter's subscription was ended from inside that filter");
    std::lock_guard g(lock_);
    closed_ = true;
    publish(nullptr);
}

}  // namespace mailroom::internal
