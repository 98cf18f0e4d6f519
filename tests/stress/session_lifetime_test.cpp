// Sessions and event objects created, fired, shut down and destroyed at random from many
// threads, from inside their own callbacks and from other sessions' callbacks. Every callback
// checks a sentinel that the test sets right after a shutdown()/destroy() returned: seeing it
// set means a callback ran after shutdown (guarantee 2). Every callback also writes memory that
// its callback owns (freed when the object is retired), so AddressSanitizer proves guarantee 3.
// The objects are timers, inboxes and subscriptions to a few shared MPMC mboxes, which the
// threads publish to while the subscriptions come and go.

#include <mailroom/session/session.hpp>
#include "all_stats.hpp"

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct note {
    int n = 0;
};

struct object_rec {
    std::atomic<bool> shut{false};  // the sentinel
    std::mutex m;
    mailroom::event_handle handle;  // moved out under `m`, used outside it
    mailroom::mbox address;         // inboxes only

    mailroom::event_handle take() {
        std::lock_guard g(m);
        return std::move(handle);
    }
    // Under `m`: a callback may already run (a publication arriving before subscribe() returned).
    void set(mailroom::event_handle h) {
        std::lock_guard g(m);
        handle = std::move(h);
    }
};

struct session_rec {
    std::mutex m;
    mailroom::session s;
    std::vector<std::shared_ptr<object_rec>> objects;
};

struct world {
    mailroom::environment env;
    std::vector<mailroom::binder> binders;
    static constexpr int slots = 6;
    std::vector<std::shared_ptr<session_rec>> sessions;  // one per slot, replaced at random
    std::mutex sessions_m;
    std::mutex inboxes_m;
    std::vector<std::weak_ptr<object_rec>> inboxes;
    std::vector<mailroom::mbox> topics;  // shared MPMC mboxes (anonymous and named)
    std::atomic<long> violations{0}, callbacks{0}, ops{0}, self_destroyed{0}, cross_destroyed{0};
    std::atomic<long> subscriptions{0}, publications{0};
    mailroom::session killer;

    world() {
        auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(env, "own");
        binders = {mailroom::binder(), pool.bind(), pool.bind_fifo(mailroom::thread_pool::fifo::agent), own.bind()};
        killer = mailroom::session(env, {.name = "killer", .bind = pool.bind()});
        for (int i = 0; i < slots; ++i) sessions.push_back(std::make_shared<session_rec>());
        topics = {mailroom::make_mpmc_mbox(env), mailroom::make_mpmc_mbox(env), mailroom::make_named_mbox(env, "topic")};
    }

    std::shared_ptr<session_rec> slot(std::size_t i) {
        std::lock_guard g(sessions_m);
        return sessions[i % slots];
    }

    // Destroys a session (from wherever this runs) and then marks all its objects shut.
    static void destroy_session(const std::shared_ptr<session_rec>& r) {
        mailroom::session dead;
        std::vector<std::shared_ptr<object_rec>> objs;
        {
            std::lock_guard g(r->m);
            dead = std::move(r->s);
            objs.swap(r->objects);
        }
        dead.destroy();
        for (auto& o : objs) o->shut.store(true);
    }

    static void destroy_object(const std::shared_ptr<object_rec>& o, bool shutdown_first) {
        mailroom::event_handle h = o->take();
        if (!h) return;
        if (shutdown_first) {
            h.shutdown();
            o->shut.store(true);
        }
        h.destroy();
        o->shut.store(true);
    }

    // The callback body shared by timers and inboxes.
    void on_callback(object_rec& rec, int* owned, std::mt19937& rng) {
        if (rec.shut.load()) violations.fetch_add(1);
        owned[rng() % 16] += 1;  // memory freed with the callback: ASan sees a late callback
        callbacks.fetch_add(1);
        if (rng() % 64 == 0) {  // destroy itself from inside its own callback
            mailroom::event_handle h = rec.take();
            if (h) {
                h.destroy();
                rec.shut.store(true);
                self_destroyed.fetch_add(1);
            }
        }
    }

    void add_object(const std::shared_ptr<session_rec>& r, std::mt19937& rng) {
        auto rec = std::make_shared<object_rec>();
        auto owned = std::make_unique<int[]>(16);
        std::lock_guard g(r->m);
        if (!r->s || r->objects.size() >= 8) return;
        std::weak_ptr<object_rec> weak = rec;
        try {
            const auto kind = rng() % 3;
            if (kind == 0) {
                auto delay = std::chrono::microseconds(rng() % 2000);
                auto period = rng() % 3 ? std::chrono::microseconds(500 + rng() % 2000) : 0us;
                rec->set(r->s.add_timer(delay, period,
                                             [this, weak, owned = std::move(owned), rng = std::mt19937(rng())]() mutable {
                                                 // The record outlives the object: the test holds it.
                                                 if (auto rp = weak.lock()) on_callback(*rp, owned.get(), rng);
                                             }));
            } else if (kind == 1) {
                rec->set(r->s.subscribe<note>(
                    topics[rng() % topics.size()],
                    [this, weak, owned = std::move(owned), rng = std::mt19937(rng())](const note&) mutable {
                        if (auto rp = weak.lock()) on_callback(*rp, owned.get(), rng);
                    }));
                subscriptions.fetch_add(1);
            } else {
                auto h = r->s.add_inbox<note>(
                    [this, weak, owned = std::move(owned), rng = std::mt19937(rng())](const note&) mutable {
                        if (auto rp = weak.lock()) on_callback(*rp, owned.get(), rng);
                    });
                rec->address = h.address();
                rec->set(std::move(h).to_event_handle());
                std::lock_guard gi(inboxes_m);
                if (inboxes.size() > 64) inboxes.erase(inboxes.begin());
                inboxes.push_back(rec);
            }
        } catch (const mailroom::session_destroyed_error&) {
            return;  // destroyed meanwhile from inside one of its callbacks
        }
        r->objects.push_back(std::move(rec));
    }

    std::shared_ptr<object_rec> pick_object(const std::shared_ptr<session_rec>& r, std::mt19937& rng, bool remove) {
        std::lock_guard g(r->m);
        if (r->objects.empty()) return nullptr;
        std::size_t i = rng() % r->objects.size();
        auto o = r->objects[i];
        if (remove) r->objects.erase(r->objects.begin() + static_cast<long>(i));
        return o;
    }

    void send_some(std::mt19937& rng) {
        std::vector<mailroom::mbox> to;
        {
            std::lock_guard g(inboxes_m);
            for (int k = 0; k < 4 && !inboxes.empty(); ++k)
                if (auto o = inboxes[rng() % inboxes.size()].lock()) to.push_back(o->address);
        }
        for (auto& m : to)
            for (int k = 0; k < 3; ++k) mailroom::send<note>(m, note{k});
        for (int k = 0; k < 2; ++k) mailroom::send<note>(topics[rng() % topics.size()], note{k});
        publications.fetch_add(2);
    }

    void step(std::mt19937& rng) {
        auto r = slot(rng());
        switch (rng() % 10) {
        case 0: {  // (re)create the session of a slot; the old one is destroyed here
            auto fresh = std::make_shared<session_rec>();
            fresh->s = mailroom::session(env, {.bind = binders[rng() % binders.size()]});
            std::shared_ptr<session_rec> old;
            {
                std::lock_guard g(sessions_m);
                old = std::exchange(sessions[rng() % slots], fresh);
            }
            destroy_session(old);
            break;
        }
        case 1:
        case 2:
            add_object(r, rng);
            break;
        case 3:
            send_some(rng);
            break;
        case 4:
            if (auto o = pick_object(r, rng, true)) destroy_object(o, rng() % 2);
            break;
        case 5:
            if (auto o = pick_object(r, rng, false)) {
                mailroom::event_handle h = o->take();
                // An empty handle: another thread (or the object's own callback) took it and
                // may not have shut the object down yet; its shutdown() sets the sentinel.
                if (!h) break;
                h.shutdown();
                o->shut.store(true);
            }
            break;
        case 6: {  // from another session's callback: destroy an object of `victim`
            auto victim = slot(rng());
            auto o = pick_object(victim, rng, true);
            if (!o) break;
            std::lock_guard g(r->m);
            if (!r->s ||
                !r->s.post([this, o, shut_first = rng() % 2 == 0] {
                    destroy_object(o, shut_first);
                    cross_destroyed.fetch_add(1);
                }))
                destroy_object(o, false);
            break;
        }
        case 7: {  // from a callback: a session destroys itself, or the killer destroys one
            if (rng() % 4) break;
            if (rng() % 2) {
                std::lock_guard g(r->m);
                if (r->s) r->s.post([r] { destroy_session(r); });
            } else {
                // Only the killer waits on other sessions from a callback, and nothing waits on
                // it: two sessions destroying each other from their callbacks would deadlock,
                // as any two serial contexts waiting for each other do.
                killer.post([victim = slot(rng())] { destroy_session(victim); });
            }
            break;
        }
        case 8:
            if (rng() % 8 == 0) destroy_session(r);
            break;
        default: {  // posted calls check their session's liveness as well
            std::lock_guard g(r->m);
            if (r->s) r->s.post([this] { callbacks.fetch_add(1); });
            break;
        }
        }
        ops.fetch_add(1);
    }
};

TEST(session_lifetime, random_create_fire_shutdown_destroy_from_many_threads) {
    const auto limit = mailroom::test::sanitized ? 1500ms : 3000ms;
    const long max_ops = mailroom::test::sanitized ? 200'000 : 2'000'000;
    mailroom::test::all_stats st;
    long ops = 0, callbacks = 0, violations = 0, self_destroyed = 0, cross = 0, subscriptions = 0, publications = 0;
    {
        world w;
        const auto end = std::chrono::steady_clock::now() + limit;
        std::vector<std::thread> threads;
        for (int t = 0; t < 3; ++t)
            threads.emplace_back([&w, &end, max_ops, t] {
                std::mt19937 rng(1234 + t);
                while (std::chrono::steady_clock::now() < end && w.ops.load() < max_ops) w.step(rng);
            });
        for (auto& t : threads) t.join();
        // Sessions still alive go with the environment (a few destroyed here, the rest by it).
        for (int i = 0; i < world::slots; i += 2) world::destroy_session(w.slot(i));
        w.env.stop();
        ASSERT_TRUE(mailroom::test::join_within(w.env, std::chrono::seconds(60)));
        st = mailroom::test::all_stats_of(w.env);
        ops = w.ops.load();
        callbacks = w.callbacks.load();
        violations = w.violations.load();
        self_destroyed = w.self_destroyed.load();
        cross = w.cross_destroyed.load();
        subscriptions = w.subscriptions.load();
        publications = w.publications.load();
    }
    std::printf("session_lifetime: %ld operations, %ld callbacks, %ld self-destroyed, %ld destroyed from other "
                "sessions; %ld subscriptions, %ld publications; sessions %llu, objects %llu, refused %llu, "
                "discarded %llu\n",
                ops, callbacks, self_destroyed, cross, subscriptions, publications, static_cast<unsigned long long>(st.sessions_created),
                static_cast<unsigned long long>(st.event_objects_created),
                static_cast<unsigned long long>(st.callbacks_refused),
                static_cast<unsigned long long>(st.callbacks_discarded));
    EXPECT_EQ(violations, 0);
    EXPECT_GT(ops, 1000);
    EXPECT_GT(callbacks, 100);
    EXPECT_GT(subscriptions, 10);
    EXPECT_GT(publications, 10);
    EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_EQ(st.messages_sent, st.messages_delivered + st.messages_lost + st.messages_ignored +
                                    st.messages_discarded + st.messages_cancelled + st.messages_dropped);
}

}  // namespace
