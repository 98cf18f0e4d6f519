// Named objects registered and unregistered at random while requests and one-way messages fly
// at them. Three threads register objects on a few sessions under a small set of names (so
// they collide: a taken name raises duplicate_name_error, which is counted) and unregister
// them every way there is: shutdown() then destroy() or destroy() alone from a foreign thread,
// the handle going out of scope, from another session's callback, from inside the handler
// itself, and by destroying the session (from a foreign thread or from inside one of its
// handlers). Two requester threads send requests at those names and at names never registered,
// and wait for them with a bound, with then() on a session of their own, with a future, or
// cancel them; they also send one-way messages.
//
// What must hold:
// - No handler runs after its object was shut down: each object has a heap record whose
//   `shut` flag is set right after shutdown()/destroy() returned on a foreign thread (or, on
//   the object's own session, right after the call inside a handler); a handler that starts
//   and sees it set is a violation. Each handler also writes memory its callback owns (freed
//   with the callback), so AddressSanitizer proves none runs once destroyed.
// - No then-callback runs after cancel() returned, or twice; every one not cancelled runs.
// - Every request becomes final: each is checked with wait_for(10 s) (and its future, if it has
//   one, must be ready and agree), and the environment's counters balance: posted == replied +
//   rejected + abandoned.

#include <mailroom/named/named.hpp>

#include "../unit/agent/probe.hpp"
#include "test_support.hpp"
#include "all_stats.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr std::array<const char*, 6> names = {"svc0", "svc1", "svc2", "svc3", "svc4", "*"};
constexpr std::array<const char*, 2> ghosts = {"ghost0", "ghost1"};  // never registered

struct object_rec {
    std::atomic<bool> shut{false};  // the sentinel
    std::mutex m;
    mailroom::named_handle handle;  // moved out under `m`, used outside it
    long calls = 0;                 // written by the handler only: serial on its session (TSan checks)

    mailroom::named_handle take() {
        std::lock_guard g(m);
        return std::move(handle);
    }
};

struct session_rec {
    std::mutex m;
    mailroom::session s;
    std::vector<std::shared_ptr<object_rec>> objects;
};

// A then-callback's record: what the requester decided and did, and how often it ran.
struct then_rec {
    bool will_cancel = false;
    std::atomic<bool> cancel_returned{false};
    std::atomic<int> runs{0};
};

struct pending {
    mailroom::outgoing<int> out;
    int value = 0;
    std::optional<std::future<int>> fut;
    std::shared_ptr<then_rec> then;
};

struct world {
    mailroom::environment env;
    std::vector<mailroom::binder> binders;
    static constexpr int slots = 4;
    std::array<session_rec, slots> sessions;
    mailroom::session killer;  // destroys other sessions' objects from its callbacks; nothing waits on it
    std::array<mailroom::session, 2> requesters;

    std::mutex parked_m;
    std::deque<mailroom::incoming> parked;  // requests a handler kept, answered later elsewhere

    std::mutex graveyard_m;
    std::deque<std::shared_ptr<object_rec>> graveyard;  // shut records, kept a while for the sentinel

    std::atomic<bool> over{false};
    std::atomic<long> ops{0}, violations{0}, registered{0}, duplicates{0}, handler_calls{0};
    std::atomic<long> by_foreign{0}, by_drop{0}, by_killer{0}, by_self{0}, sessions_destroyed{0},
        sessions_self_destroyed{0};
    std::atomic<long> requests{0}, replied{0}, rejected{0}, abandoned{0}, cancels{0}, timeouts_set{0},
        slow_waits{0}, futures{0}, thens{0}, then_expected{0}, then_ran{0}, not_final{0};
    std::atomic<long> one_way{0}, one_way_missing{0}, parked_total{0};

    world() {
        auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});
        auto own = mailroom::active_obj::make_dispatcher(env, "own");
        binders = {mailroom::binder(), pool.bind(), own.bind()};
        killer = mailroom::session(env, {.name = "killer", .bind = pool.bind()});
        requesters[0] = mailroom::session(env, {.name = "requester0", .bind = pool.bind()});
        requesters[1] = mailroom::session(env, {.name = "requester1", .bind = own.bind()});
        for (int i = 0; i < slots; ++i)
            sessions[i].s = mailroom::session(env, {.name = "slot" + std::to_string(i), .bind = binders[i % 3]});
    }

    void violation(const char* what) {
        if (violations.fetch_add(1) < 5) std::fprintf(stderr, "VIOLATION: %s\n", what);
    }

    void bury(std::shared_ptr<object_rec> o) {
        std::lock_guard g(graveyard_m);
        graveyard.push_back(std::move(o));
        if (graveyard.size() > 20'000) graveyard.pop_front();  // long shut: a late handler is ASan's to find
    }

    // Shuts the object down from a thread other than its session's, then marks it.
    void unregister_foreign(const std::shared_ptr<object_rec>& o, unsigned how) {
        mailroom::named_handle h = o->take();
        if (h) {
            switch (how % 3) {
            case 0:
                h.destroy();
                o->shut.store(true);
                break;
            case 1:
                h.shutdown();
                o->shut.store(true);
                h.destroy();
                break;
            default:
                h.shutdown();
                o->shut.store(true);
                break;  // the handle going out of scope destroys it
            }
        }
        bury(o);
    }

    // Destroys the session of `r` (from wherever this runs) and marks all its objects shut.
    void destroy_session(session_rec& r) {
        mailroom::session dead;
        std::vector<std::shared_ptr<object_rec>> objs;
        {
            std::lock_guard g(r.m);
            dead = std::move(r.s);
            objs.swap(r.objects);
        }
        dead.destroy();
        for (auto& o : objs) {
            o->shut.store(true);
            bury(o);
        }
    }

    void on_message(object_rec& rec, session_rec& home, int* owned, std::mt19937& rng, mailroom::incoming& in) {
        if (rec.shut.load()) violation("a handler ran after its object was shut down");
        owned[rng() % 16] += 1;  // freed with the callback: a late handler is a use after free
        ++rec.calls;
        handler_calls.fetch_add(1);
        if (in.header().request) {
            const auto k = rng() % 16;
            if (k < 10) {
                in.reply<int>(in.as<int>() + 1);
            } else if (k < 12) {
                in.reject("refused by the test");
            } else if (k < 13) {
                // dropped unanswered: abandoned when `in` goes
            } else {
                std::lock_guard g(parked_m);
                if (parked.size() < 64) {
                    parked.push_back(std::move(in));
                    parked_total.fetch_add(1);
                } else {
                    in.reply<int>(in.as<int>() + 1);
                }
            }
        }
        const auto s = rng() % 128;
        if (s < 2) {  // unregister itself from inside its own handler
            mailroom::named_handle h = rec.take();
            if (h) {
                if (s == 0) {
                    h.shutdown();
                    rec.shut.store(true);
                } else {
                    h.destroy();
                    rec.shut.store(true);
                }
                by_self.fetch_add(1);
            }  // otherwise it is being shut down elsewhere, or its handle is not set yet
        } else if (s == 2 && rng() % 4 == 0) {  // destroy its own session from inside
            destroy_session(home);
            sessions_self_destroyed.fetch_add(1);
            owned[rng() % 16] += 1;  // still ours until we return
        }
    }

    void add_object(session_rec& r, std::mt19937& rng) {
        auto rec = std::make_shared<object_rec>();
        // Shared only because std::function wants a copyable callable: the callback is its one owner.
        std::shared_ptr<int[]> owned(new int[16]());
        const char* name = rng() % 8 == 0 ? names[5] : names[rng() % 5];
        std::lock_guard g(r.m);
        if (!r.s) r.s = mailroom::session(env, {.bind = binders[rng() % binders.size()]});
        std::erase_if(r.objects, [](const std::shared_ptr<object_rec>& o) { return o->shut.load(); });
        if (r.objects.size() >= 6) return;
        try {
            auto h = mailroom::register_named(
                r.s, name,
                [this, rec = rec.get(), home = &r, owned = std::move(owned), rng = std::mt19937(rng())](
                    mailroom::incoming& in) mutable { on_message(*rec, *home, owned.get(), rng, in); });
            {
                std::lock_guard go(rec->m);  // its handler may already run
                rec->handle = std::move(h);
            }
            registered.fetch_add(1);
        } catch (const mailroom::duplicate_name_error&) {
            duplicates.fetch_add(1);
            return;  // never reachable: the record can go
        }
        r.objects.push_back(std::move(rec));
    }

    std::shared_ptr<object_rec> pick_object(session_rec& r, std::mt19937& rng) {
        std::lock_guard g(r.m);
        if (r.objects.empty()) return nullptr;
        const std::size_t i = rng() % r.objects.size();
        auto o = std::move(r.objects[i]);
        r.objects.erase(r.objects.begin() + static_cast<long>(i));
        return o;
    }

    void answer_parked(std::mt19937& rng) {
        std::deque<mailroom::incoming> taken;
        {
            std::lock_guard g(parked_m);
            taken.swap(parked);
        }
        for (auto& in : taken) {
            const auto k = rng() % 4;
            if (k < 2) in.reply<int>(in.as<int>() + 1);  // after its object (or session) may be gone
            else if (k == 2) in.reject("refused later");
            // else dropped: abandoned
        }
    }

    // One step of a registering thread.
    void churn(std::mt19937& rng) {
        session_rec& r = sessions[rng() % slots];
        const auto k = rng() % 100;
        if (k < 45) {
            add_object(r, rng);
        } else if (k < 60) {
            if (auto o = pick_object(r, rng)) {
                const unsigned how = rng();
                unregister_foreign(o, how);
                (how % 3 == 2 ? by_drop : by_foreign).fetch_add(1);
            }
        } else if (k < 65) {
            if (auto o = pick_object(r, rng)) {
                const unsigned how = rng();
                if (!killer.post([this, o, how] {
                        unregister_foreign(o, how);
                        by_killer.fetch_add(1);
                    }))
                    unregister_foreign(o, how);
            }
        } else if (k < 66) {
            destroy_session(r);
            sessions_destroyed.fetch_add(1);
        } else if (k < 85) {
            answer_parked(rng);
        } else {
            std::this_thread::yield();
        }
        ops.fetch_add(1);
    }

    // Waits until `p` is final and records how it ended.
    void settle(pending& p) {
        const bool final = not_final.load() == 0 ? p.out.wait_for(10s) : p.out.wait_for(10ms);
        if (!final) {
            if (not_final.fetch_add(1) < 5)
                std::fprintf(stderr, "NOT FINAL after 10 s: request #%llu state %s\n",
                             static_cast<unsigned long long>(p.out.id()), mailroom::to_string(p.out.state()));
            return;
        }
        const auto st = p.out.state();
        if (st == mailroom::request_state::replied) {
            replied.fetch_add(1);
            if (p.out.reply() != p.value + 1) violation("a reply carries the wrong value");
        } else if (st == mailroom::request_state::rejected) {
            rejected.fetch_add(1);
        } else {
            abandoned.fetch_add(1);
        }
        if (p.fut) {
            if (p.fut->wait_for(10s) != std::future_status::ready) {
                violation("a future of a final request is not ready");
            } else {
                try {
                    const int v = p.fut->get();
                    if (st != mailroom::request_state::replied || v != p.value + 1)
                        violation("a future got a value its request does not have");
                } catch (const mailroom::request_failed_error& e) {
                    if (e.state() != st) violation("a future failed with another state than its request");
                }
            }
        }
        if (p.then && !p.then->will_cancel) then_expected.fetch_add(1);
    }

    void requester(int idx, std::mt19937 rng) {
        mailroom::session& home = requesters[static_cast<std::size_t>(idx)];
        std::deque<pending> ring;
        int value = idx * 1'000'000'000;
        while (!over.load()) {
            ops.fetch_add(1);
            const char* name = rng() % 10 < 8 ? names[rng() % 5] : ghosts[rng() % 2];
            const auto k = rng() % 100;
            if (k < 15) {
                try {
                    mailroom::send_to(env, name, ++value);
                    one_way.fetch_add(1);
                } catch (const mailroom::no_such_object_error&) {
                    one_way_missing.fetch_add(1);
                }
                continue;
            }
            mailroom::send_options opt;
            if (rng() % 16 == 0) {
                opt.timeout = std::chrono::microseconds(100 + rng() % 3000);
                timeouts_set.fetch_add(1);
            }
            pending p{mailroom::request<int>(env, name, ++value, std::move(opt)), value, std::nullopt, nullptr};
            requests.fetch_add(1);
            if (k < 40) {
                if (!p.out.wait_for(std::chrono::milliseconds(50))) slow_waits.fetch_add(1);
            } else if (k < 65) {
                auto tr = std::make_shared<then_rec>();
                tr->will_cancel = rng() % 4 == 0;
                p.then = tr;
                thens.fetch_add(1);
                p.out.then(home, [this, tr](const mailroom::outgoing<int>& done) {
                    if (tr->cancel_returned.load()) violation("a then-callback ran after cancel() returned");
                    if (tr->runs.fetch_add(1) != 0) violation("a then-callback ran twice");
                    if (!done.done()) violation("a then-callback saw a request not final");
                    if (!tr->will_cancel) then_ran.fetch_add(1);
                });
                if (tr->will_cancel) {
                    if (rng() % 2) std::this_thread::yield();
                    p.out.cancel();
                    tr->cancel_returned.store(true);
                    cancels.fetch_add(1);
                }
            } else if (k < 85) {
                p.fut = p.out.future();
                futures.fetch_add(1);
                if (rng() % 8 == 0) {
                    p.out.cancel();
                    cancels.fetch_add(1);
                }
            } else {
                if (rng() % 2) std::this_thread::yield();
                p.out.cancel();
                cancels.fetch_add(1);
            }
            ring.push_back(std::move(p));
            if (ring.size() > 256) {
                settle(ring.front());
                ring.pop_front();
            }
        }
        for (auto& p : ring) settle(p);
    }
};

// Aborts the test, saying so, if it is still running after `limit`.
class watchdog {
public:
    explicit watchdog(std::chrono::seconds limit)
        : thread_([this, limit] {
              std::unique_lock g(m_);
              if (!cv_.wait_for(g, limit, [&] { return finished_; })) {
                  std::fprintf(stderr, "named_unregister: HANG, still running after %lld s\n",
                               static_cast<long long>(limit.count()));
                  std::abort();
              }
          }) {}
    ~watchdog() {
        {
            std::lock_guard g(m_);
            finished_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool finished_ = false;
    std::thread thread_;
};

TEST(named_unregister, objects_come_and_go_under_requests_and_none_runs_after_shutdown) {
    const auto limit = mailroom::test::sanitized ? 1500ms : 3000ms;
    const long max_ops = mailroom::test::sanitized ? 400'000 : 4'000'000;

    const watchdog guard(240s);  // a hang is a failure to report, not a test that never ends
    mailroom::test::all_stats st;
    auto w = std::make_unique<world>();
    {
        // The time window is a minimum, not a promise of progress: on a loaded machine the churn
        // goes on past it (up to four windows) until it has done what the checks below count
        // on, so that a slow scheduler cannot fail the test.
        const auto start = std::chrono::steady_clock::now();
        const auto end = start + limit, hard_end = start + 4 * limit;
        const auto enough = [&w] {
            return w->registered.load() > 100 && w->duplicates.load() > 10 && w->handler_calls.load() > 1000 &&
                   w->replied.load() > 100;
        };
        std::vector<std::thread> threads;
        for (int t = 0; t < 3; ++t)
            threads.emplace_back([&w, end, hard_end, max_ops, t, &enough] {
                std::mt19937 rng(1234 + t);
                for (;;) {
                    const auto now = std::chrono::steady_clock::now();
                    if (now >= hard_end || w->ops.load() >= max_ops || (now >= end && enough())) break;
                    w->churn(rng);
                }
            });
        std::vector<std::thread> requesters;
        for (int t = 0; t < 2; ++t)
            requesters.emplace_back([&w, t] { w->requester(t, std::mt19937(99 + t)); });
        for (auto& t : threads) t.join();
        w->over.store(true);
        // The requesters settle what they sent; a request a handler parks meanwhile must be
        // answered for that, so keep answering until they are done.
        std::atomic<bool> requesters_done{false};
        std::thread answerer([&] {
            std::mt19937 rng(7);
            while (!requesters_done.load()) {
                w->answer_parked(rng);
                std::this_thread::sleep_for(1ms);
            }
        });
        for (auto& t : requesters) t.join();
        requesters_done.store(true);
        answerer.join();

        // Every object goes with its session; then nothing parks any more.
        for (auto& r : w->sessions) w->destroy_session(r);
        std::mt19937 rng(8);
        w->answer_parked(rng);
        EXPECT_TRUE(mailroom::test::eventually([&] { return w->then_ran.load() == w->then_expected.load(); }))
            << w->then_ran.load() << " then-callbacks ran of " << w->then_expected.load() << " not cancelled";
        st = mailroom::test::all_stats_of(w->env);
        EXPECT_EQ(st.requests_posted, st.requests_replied + st.requests_rejected + st.requests_abandoned);
        EXPECT_EQ(st.requests_posted, static_cast<std::uint64_t>(w->requests.load()));
        EXPECT_EQ(st.requests_replied, static_cast<std::uint64_t>(w->replied.load()));
        EXPECT_EQ(st.requests_rejected, static_cast<std::uint64_t>(w->rejected.load()));
        EXPECT_EQ(st.requests_abandoned, static_cast<std::uint64_t>(w->abandoned.load()));
        w->killer.destroy();
        for (auto& s : w->requesters) s.destroy();
        w->env.stop();
        ASSERT_TRUE(mailroom::test::join_within(w->env, 60s));
        st = mailroom::test::all_stats_of(w->env);
    }
    const long violations = w->violations.load(), not_final = w->not_final.load();
    std::printf(
        "named_unregister: %ld operations; %ld registrations (%ld duplicate names); unregistered: %ld foreign "
        "shutdown/destroy, %ld handle dropped, %ld from another session, %ld from the handler, %ld sessions "
        "destroyed (%ld from inside); %ld handler calls, %ld parked; %ld requests: %ld replied, %ld rejected, %ld "
        "abandoned, %ld not final (%ld then, %ld future, %ld cancel, %ld with a timeout, %ld waits over 50 ms); "
        "%ld one-way sent, %ld to no object; %ld then-callbacks ran; stats: posted %llu replied %llu rejected "
        "%llu abandoned %llu orphaned %llu, registered %llu unregistered %llu; %ld violations\n",
        w->ops.load(), w->registered.load(), w->duplicates.load(), w->by_foreign.load(), w->by_drop.load(),
        w->by_killer.load(), w->by_self.load(), w->sessions_destroyed.load(), w->sessions_self_destroyed.load(),
        w->handler_calls.load(), w->parked_total.load(), w->requests.load(), w->replied.load(), w->rejected.load(),
        w->abandoned.load(), not_final, w->thens.load(), w->futures.load(), w->cancels.load(),
        w->timeouts_set.load(), w->slow_waits.load(), w->one_way.load(), w->one_way_missing.load(),
        w->then_ran.load(), static_cast<unsigned long long>(st.requests_posted),
        static_cast<unsigned long long>(st.requests_replied), static_cast<unsigned long long>(st.requests_rejected),
        static_cast<unsigned long long>(st.requests_abandoned), static_cast<unsigned long long>(st.replies_orphaned),
        static_cast<unsigned long long>(st.named_registered), static_cast<unsigned long long>(st.named_unregistered),
        violations);
    EXPECT_EQ(violations, 0);
    EXPECT_EQ(not_final, 0);
    EXPECT_EQ(st.requests_posted, st.requests_replied + st.requests_rejected + st.requests_abandoned);
    EXPECT_EQ(st.named_registered, st.named_unregistered);
    EXPECT_EQ(st.named_registered, static_cast<std::uint64_t>(w->registered.load()));
    EXPECT_EQ(st.sessions_created, st.sessions_destroyed);
    EXPECT_EQ(st.event_objects_created, st.event_objects_destroyed);
    EXPECT_GT(w->registered.load(), 100);
    EXPECT_GT(w->duplicates.load(), 10);
    EXPECT_GT(w->handler_calls.load(), 1000);
    EXPECT_GT(w->replied.load(), 100);
}

}  // namespace
