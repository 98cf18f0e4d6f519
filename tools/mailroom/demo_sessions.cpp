#include "demo_sessions.hpp"

#include "demo_agents.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <mutex>

namespace mailroom::tool {

namespace {

using namespace std::chrono_literals;

constexpr std::size_t sessions_alive = 4;
constexpr auto session_period = 20ms;

/// What a session's timer sends to the inbox of the session made before it.
struct nudge {
    std::uint64_t n = 0;
};

/// One event object: its handle, which its own callbacks and the destroying thread both
/// reach (hence the lock), and its sentinel.
struct watched {
    std::mutex lock;
    event_handle handle;
    std::shared_ptr<std::atomic<bool>> stopped = std::make_shared<std::atomic<bool>>(false);

    event_handle take() {
        std::lock_guard g(lock);
        return std::move(handle);
    }
    /// On a foreign thread, after its shutdown() or destroy() returned.
    void mark_stopped() { stopped->store(true, std::memory_order_release); }
};

/// The guard every callback of a churned object starts with.
void count_callback(const std::atomic<bool>& stopped, demo_metrics& m) {
    if (stopped.load(std::memory_order_acquire)) m.session_callbacks_after_shutdown.fetch_add(1);
    m.session_callbacks.fetch_add(1, std::memory_order_relaxed);
}

/// From inside the object's own callback: shuts it down or destroys it. Does not wait (it is
/// the session's own context), so holding the lock meanwhile is fine.
void stop_from_own_callback(const std::weak_ptr<watched>& self, bool destroy, demo_metrics& m) {
    auto w = self.lock();
    if (!w) return;
    std::lock_guard g(w->lock);
    if (!w->handle) return;
    if (destroy)
        w->handle.destroy();
    else
        w->handle.shutdown();
    m.session_objects_stopped_by_themselves.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

struct churned_session {
    session s;
    std::array<std::shared_ptr<watched>, 3> objects{std::make_shared<watched>(), std::make_shared<watched>(),
                                                    std::make_shared<watched>()};
};

session_churn::session_churn(environment& env, dispatcher pool, mbox quotes, demo_metrics& metrics)
    : env_(env), pool_(std::move(pool)), quotes_(std::move(quotes)), metrics_(metrics),
      reaper_(env, {.name = "reaper"}) {
    thread_ = std::thread([this] { run(); });
}

void session_churn::run() {
    while (!env_.stopping() && step()) std::this_thread::sleep_for(session_period);
    // What is left goes now, or with the environment if it got there first.
    while (!alive_.empty()) {
        retire(std::move(alive_.front()));
        alive_.pop_front();
    }
    reaper_.destroy();
}

bool session_churn::step() {
    try {
        alive_.push_back(make_session());
    } catch (const environment_stopped_error&) {
        return false;
    } catch (const session_destroyed_error&) {
        return false;  // the environment's teardown destroyed it while we were adding to it
    }
    if (alive_.size() > sessions_alive) {
        retire(std::move(alive_.front()));
        alive_.pop_front();
    }
    return true;
}

std::shared_ptr<churned_session> session_churn::make_session() {
    auto c = std::make_shared<churned_session>();
    c->s = session(env_, {.name = "desk-session", .bind = pool_.bind()});
    demo_metrics& m = metrics_;
    auto& [timer, inbox, subscription] = c->objects;

    // The timer nudges the previous session's inbox: another session sending to it, possibly
    // after it was destroyed (then the nudge is counted lost).
    const auto self_stop_after = 20 + rng_() % 40;
    timer->handle = c->s.add_timer(
        1ms, 1ms + std::chrono::microseconds(rng_() % 2000),
        [stopped = timer->stopped, self = std::weak_ptr(timer), to = previous_inbox_, &m, self_stop_after,
         fired = std::uint64_t{0}]() mutable {
            count_callback(*stopped, m);
            if (to) {
                try {
                    send<nudge>(to, nudge{++fired});
                } catch (const environment_stopped_error&) {
                }
            }
            if (fired == self_stop_after) stop_from_own_callback(self, false, m);
        });

    auto in = c->s.add_inbox<nudge>([stopped = inbox->stopped, &m](const nudge&) { count_callback(*stopped, m); });
    previous_inbox_ = in.address();
    inbox->handle = std::move(in).to_event_handle();

    // The quotes arrive as the instance every subscriber shares.
    const auto quotes_before_self_stop = 200 + rng_() % 2000;
    const bool destroy_itself = rng_() % 2 == 0;
    subscription->handle = c->s.subscribe<quote>(
        quotes_, [stopped = subscription->stopped, self = std::weak_ptr(subscription), &m, destroy_itself,
                  left = quotes_before_self_stop](const quote&) mutable {
            count_callback(*stopped, m);
            if (--left == 0) stop_from_own_callback(self, destroy_itself, m);
        });
    return c;
}

void session_churn::retire(std::shared_ptr<churned_session> victim) {
    auto mark_all = [](churned_session& c) {
        for (auto& o : c.objects) o->mark_stopped();
    };
    switch (rng_() % 4) {
    case 0:  // shut each object down from this thread, then the session
        for (auto& o : victim->objects) {
            event_handle h = o->take();
            h.shutdown();
            o->mark_stopped();
        }
        victim->s.destroy();
        break;
    case 1:  // destroy each object from this thread, then the session
        for (auto& o : victim->objects) {
            o->take().destroy();
            o->mark_stopped();
        }
        victim->s.destroy();
        break;
    case 2:  // destroy the session from this thread: its objects go with it
        victim->s.destroy();
        mark_all(*victim);
        break;
    default:  // from another session's callback (a foreign thread for the victim)
        if (reaper_.post([victim, mark_all] {
                victim->s.destroy();
                mark_all(*victim);
            }))
            return;
        victim->s.destroy();
        mark_all(*victim);
        break;
    }
    metrics_.session_objects_stopped_by_others.fetch_add(victim->objects.size(), std::memory_order_relaxed);
}

}  // namespace mailroom::tool
