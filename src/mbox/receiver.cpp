#include <mailroom/mbox/receiver.hpp>

#include <utility>

namespace mailroom::internal {

bool receiver::push_unless_finished(demand* d) noexcept {
    if (start_state() == start_open) [[likely]] {
        queue.load(std::memory_order_acquire)->push(d);
        return true;
    }
    std::uint8_t s;
    {
        std::lock_guard g(pending_lock);
        s = start_state();
        if (s == start_closed) {
            d->next.store(nullptr, std::memory_order_relaxed);
            if (pending_tail)
                pending_tail->next.store(d, std::memory_order_relaxed);
            else
                pending_head = d;
            pending_tail = d;
            return true;
        }
    }
    if (s == start_finished) return false;
    queue.load(std::memory_order_acquire)->push(d);  // opened while we waited; the waiting list went first
    return true;
}

void receiver::push_slow(demand* d) noexcept {
    if (!push_unless_finished(d)) d->execute(d, demand_mode::run);  // finds a newer generation: counted lost
}

void receiver::open(demand* first) noexcept {
    std::lock_guard g(pending_lock);
    event_queue* q = queue.load(std::memory_order_relaxed);
    if (first) q->push(first);
    for (demand* d = pending_head; d;) {
        auto* next = static_cast<demand*>(d->next.load(std::memory_order_relaxed));
        q->push(d);
        d = next;
    }
    pending_head = pending_tail = nullptr;
    start.store(start_open | (start.load(std::memory_order_relaxed) & start_limited), std::memory_order_release);
}

void receiver::finish_life() noexcept {
    gen.store(gen.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    demand* list = nullptr;
    {
        std::lock_guard g(pending_lock);
        start.store(start_finished | (start.load(std::memory_order_relaxed) & start_limited),
                    std::memory_order_release);
        list = std::exchange(pending_head, nullptr);
        pending_tail = nullptr;
    }
    while (list) {
        auto* next = static_cast<demand*>(list->next.load(std::memory_order_relaxed));
        list->execute(list, demand_mode::run);  // the generation moved on before: counted lost
        list = next;
    }
}

accept_result accept_slow(const route& r, envelope* e, timer_entry* timer, thread_counters& c) {
    receiver& to = *r.to;
    if (limit_table* t = to.limits.load(std::memory_order_acquire)) return accept_limited(*t, r, e, timer, c);
    message_demand* d = message_demand::make(&to, r.gen, r.key, e, timer, r.kind);
    thread_counters::bump(c.sent);
    to.push_slow(d);
    return accept_result::queued;
}

}  // namespace mailroom::internal
