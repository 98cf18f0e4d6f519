#include <mailroom/agent/timer.hpp>
#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>

#include "runtime.hpp"

namespace mailroom {
namespace internal {
namespace {

// A scheduled message. A one-shot hands its envelope to the delivery (so a direct receiver may
// move the payload out); a periodic one keeps it and shares it with every delivery.
class mbox_timer final : public timer_entry {
public:
    mbox_timer(mbox to, envelope* e) noexcept : target_(std::move(to)), msg_(e) {}

private:
    ~mbox_timer() override {
        if (msg_) msg_->release();
    }

    void fire() noexcept override {
        envelope* e = msg_;
        if (period_ns == 0)
            msg_ = nullptr;
        else
            e->add_refs(1);
        try {
            // A timer nobody can cancel any more needs no cancellation check at the receiver.
            target_.impl()->deliver(e, cancellable() ? this : nullptr);
        } catch (...) {
            // The environment closed (its teardown discards what is still scheduled), or memory
            // ran out: counted sent and discarded, never dropped unseen.
            thread_counters& c = target_.impl()->env().counters();
            thread_counters::bump(c.sent);
            thread_counters::bump(c.discarded);
        }
    }

    // From the recycling pool, like envelopes: arming a million timers must not be a million
    // mallocs freed on other threads.
    void destroy() noexcept override {
        this->~mbox_timer();
        pool_free(this, sizeof(mbox_timer));
    }

    mbox target_;
    envelope* msg_;
};

}  // namespace

timer_entry* schedule(const mbox& to, envelope* e, std::chrono::nanoseconds delay, std::chrono::nanoseconds period) {
    envelope_ref ref(e);
    if (!to) throw usage_error("scheduling a timer on an empty mbox handle");
    env_core& env = to.impl()->env();
    if (!env.open()) env.check_open("scheduling a timer on", to.name());  // the name only to raise
    if (period.count() < 0) throw usage_error("scheduling a timer on " + to.name() + ": the period is negative");
    auto* t = new (pool_allocate(sizeof(mbox_timer))) mbox_timer(to, ref.release());
    t->deadline_ns = now_ns() + std::max<std::int64_t>(delay.count(), 0);
    t->period_ns = period.count();
    t->add_ref();  // the handle's
    env.timers().arm(t);
    return t;
}

}  // namespace internal

timer_handle& timer_handle::operator=(timer_handle&& o) noexcept {
    if (this != &o) {
        if (entry_) {
            entry_->cancel();
            entry_->release();
        }
        entry_ = std::exchange(o.entry_, nullptr);
    }
    return *this;
}

timer_handle::~timer_handle() {
    if (entry_) {
        entry_->cancel();
        entry_->release();
    }
}

timer_handle::operator bool() const noexcept { return entry_ && !entry_->cancelled(); }

bool timer_handle::cancel() noexcept { return entry_ && entry_->cancel(); }

void timer_handle::detach() noexcept {
    if (!entry_) return;
    entry_->mark_uncancellable();
    std::exchange(entry_, nullptr)->release();
}

}  // namespace mailroom
