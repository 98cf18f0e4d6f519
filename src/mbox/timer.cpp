#include <mailroom/mbox/timer.hpp>
#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>

#include <mailroom/mbox/handle_target.hpp>
#include <mailroom/mbox/limit_table.hpp>
#include <mailroom/mbox/mbox_impl.hpp>
#include <mailroom/core/handle_access.hpp>

#include <atomic>
#include <string>

namespace mailroom {
namespace internal {
namespace {

// A scheduled message. A one-shot hands its envelope to the delivery (so a direct receiver may
// move the payload out); a periodic one keeps it and shares it with every delivery. The first
// cancel() takes the envelope out on the cancelling thread (release_payload), so a cancelled
// timer holds no message while it waits to leave the wheel; the pointer is exchanged, never
// read plainly, because fire() may be running on the timer thread at that moment.
//
// Its handle is the one event_handle: shutdown() is timer_entry::cancel() (which waits for a
// delivery running on another thread, not for one running on this one), live means not
// cancelled, and detach() declares the timer uncancellable.
class mbox_timer final : public timer_entry, public handle_target {
public:
    mbox_timer(mbox to, envelope* e) noexcept : target_(std::move(to)), msg_(e) {}

    bool handle_live() const noexcept override { return !cancelled(); }
    bool handle_shutdown() noexcept override { return cancel(); }
    void handle_destroy() noexcept override {
        cancel();
        release();
    }
    void handle_detach() noexcept override {
        mark_uncancellable();
        release();
    }

private:
    ~mbox_timer() override {
        if (envelope* e = msg_.load(std::memory_order_relaxed)) e->release();
    }

    fire_result fire() noexcept override {
        // Taken out while it is handed on: a cancel() meanwhile finds nothing to release.
        envelope* e = msg_.exchange(nullptr, std::memory_order_seq_cst);
        if (!e) return fire_result::none;  // cancelled: release_payload() took it
        const bool periodic = period_ns != 0;
        if (periodic) e->add_refs(1);
        deliver(e);
        if (periodic) {
            // Put back for the next period, unless a cancel() came meanwhile: it either sees
            // the envelope back (and takes it) or is seen here (both sides seq_cst).
            msg_.store(e, std::memory_order_seq_cst);
            if (cancelled())
                if (envelope* back = msg_.exchange(nullptr, std::memory_order_seq_cst)) back->release();
        }
        // Periodic messages are not skipped while one is queued, as session timers are: each is
        // a message of its own, possibly to many subscribers, and message limits bound them.
        return fire_result::queued;
    }

    void deliver(envelope* e) noexcept {
        // Over a message limit, a timer's message is dropped and counted whatever the reaction
        // (limit_table.hpp): this thread serves every timer of the environment.
        timer_send_scope from_timer;
        try {
            // A timer nobody can cancel any more needs no cancellation check at the receiver.
            internal::impl_of(target_)->deliver(e, cancellable() ? this : nullptr);
        } catch (...) {
            // The environment closed (its teardown discards what is still scheduled), or memory
            // ran out: counted sent and discarded, never dropped unseen.
            thread_counters& c = internal::impl_of(target_)->env().counters();
            thread_counters::bump(c.sent);
            thread_counters::bump(c.discarded);
        }
    }

    void release_payload() noexcept override {
        if (envelope* e = msg_.exchange(nullptr, std::memory_order_seq_cst)) e->release();
    }

    // From the recycling pool, like envelopes: arming a million timers must not be a million
    // mallocs freed on other threads.
    void destroy() noexcept override {
        this->~mbox_timer();
        pool_free(this, sizeof(mbox_timer));
    }

    mbox target_;
    std::atomic<envelope*> msg_;
};

// Its handle's interface costs one pointer; a million timers stay in the pool's 128-byte class.
static_assert(sizeof(mbox_timer) <= 128);

}  // namespace

handle_target* schedule(const mbox& to, envelope* e, std::chrono::nanoseconds delay, std::chrono::nanoseconds period) {
    envelope_ref ref(e);
    if (!to) throw usage_error("scheduling a timer on an empty mbox handle");
    env_core& env = internal::impl_of(to)->env();
    if (!env.open()) env.check_open("scheduling a timer on", to.name());  // the name only to raise
    if (delay.count() < 0)
        throw usage_error("scheduling a timer on " + to.name() + ": the delay is negative (" +
                          std::to_string(delay.count()) + " ns)");
    if (period.count() < 0)
        throw usage_error("scheduling a timer on " + to.name() + ": the period is negative (" +
                          std::to_string(period.count()) + " ns)");
    auto* t = new (pool_allocate(sizeof(mbox_timer))) mbox_timer(to, ref.release());
    t->deadline_ns = now_ns() + delay.count();
    t->period_ns = period.count();
    t->add_ref();  // the handle's
    env.timers().arm(t);
    return t;
}

}  // namespace internal

}  // namespace mailroom
