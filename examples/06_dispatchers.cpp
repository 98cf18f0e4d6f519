// Where things run. A dispatcher owns threads; a binder says which of them runs an agent or a
// session. Each kind has a header of its own, with its params, its handle and its factory,
// `<kind>::make_dispatcher(env, name, params)`:
//   one_thread    one thread for everything bound to it
//   active_obj    a thread of its own for each agent or session bound to it
//   active_group  a thread per named group, shared by the group's agents and sessions
//   thread_pool   N threads taking turns; FIFO per cooperation, or per agent (and session)
// The program binds agents and sessions to each, notes which thread each one runs on, and shows
// that everything on a one_thread dispatcher runs one callback at a time.

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/dispatch/active_group.hpp>
#include <mailroom/dispatch/active_obj.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/session/session.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Which thread ran whom: threads get small numbers in the order they are first seen.
class thread_book {
public:
    void record(const std::string& who) {
        std::lock_guard lock(mu_);
        auto [it, fresh] = numbers_.try_emplace(std::this_thread::get_id(), static_cast<int>(numbers_.size()));
        where_[who] = it->second;
    }
    int thread_of(const std::string& who) {
        std::lock_guard lock(mu_);
        auto it = where_.find(who);
        return it == where_.end() ? -1 : it->second;
    }
    std::size_t entries() {
        std::lock_guard lock(mu_);
        return where_.size();
    }

private:
    std::mutex mu_;
    std::map<std::thread::id, int> numbers_;
    std::map<std::string, int> where_;
};

class worker final : public mailroom::agent {
public:
    worker(thread_book& book, std::string name) : book_(book) { set_name(std::move(name)); }

protected:
    void on_start() override { book_.record(name()); }

private:
    thread_book& book_;
};

}  // namespace

int main() {
    example::checks check(60, "  ");
    thread_book book;
    book.record("main");

    mailroom::environment env;
    auto single = mailroom::one_thread::make_dispatcher(env, "single");
    auto actors = mailroom::active_obj::make_dispatcher(env, "actors");
    auto groups = mailroom::active_group::make_dispatcher(env, "groups");
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool", {.threads = 2});

    // Agents are bound through their cooperation's binder.
    mailroom::introduce_coop(env, {.name = "actors", .bind = actors.bind()}, [&](mailroom::coop& c) {
        c.make_agent<worker>(book, "actor-a");
        c.make_agent<worker>(book, "actor-b");
    });
    mailroom::introduce_coop(env, {.name = "pooled", .bind = pool.bind_fifo(mailroom::thread_pool::fifo::agent)},
                             [&](mailroom::coop& c) {
                                 for (const char* n : {"pooled-a", "pooled-b", "pooled-c"}) c.make_agent<worker>(book, n);
                             });

    // Sessions take a binder in their options.
    std::vector<mailroom::session> sessions;
    auto open = [&](const char* name, mailroom::binder b) {
        sessions.emplace_back(env, mailroom::session_options{.name = name, .bind = std::move(b)});
        sessions.back().post([&book, name] { book.record(name); });
    };
    open("io-1", groups.bind_group("io"));
    open("io-2", groups.bind_group("io"));
    open("ui", groups.bind_group("ui"));
    open("single-1", single.bind());
    open("single-2", single.bind());
    open("default", {});  // no binder: the environment's default dispatcher (a one_thread)

    if (!example::eventually([&] { return book.entries() == 12; })) {
        std::printf("not every agent and session ran\n");
        return 1;
    }
    std::printf("thread numbers (main is 0):\n");
    for (const char* who : {"actor-a", "actor-b", "pooled-a", "pooled-b", "pooled-c", "io-1", "io-2", "ui", "single-1",
                            "single-2", "default"})
        std::printf("  %-9s thread %d\n", who, book.thread_of(who));

    auto at = [&](const char* who) { return book.thread_of(who); };
    check(at("actor-a") != at("actor-b"), "active_obj: each agent has a thread of its own");
    check(at("io-1") == at("io-2") && at("io-1") != at("ui"), "active_group: a thread per group");
    check(at("single-1") == at("single-2"), "one_thread: both sessions on its one thread");
    check(at("default") != at("single-1"), "the default dispatcher is another one_thread");
    const std::set<int> pooled{at("pooled-a"), at("pooled-b"), at("pooled-c")};
    const std::set<int> others{at("main"), at("actor-a"), at("actor-b"), at("io-1"), at("ui"), at("single-1"),
                               at("default")};
    bool pool_threads_only = pooled.size() <= 2;
    for (int t : pooled) pool_threads_only = pool_threads_only && others.count(t) == 0;
    check(pool_threads_only, "thread_pool: its agents on its two threads");

    // A one_thread dispatcher serialises: two threads post to two sessions on it, and no two
    // callbacks ever overlap, so they may share a plain counter without a lock.
    constexpr int per_thread = 10000;
    std::atomic<int> inside{0}, overlaps{0}, done{0};
    long shared_total = 0;  // no atomic, no lock: only the "single" thread touches it
    auto work = [&] {
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        ++shared_total;
        inside.fetch_sub(1);
        done.fetch_add(1);
    };
    mailroom::session& s1 = sessions[3];
    mailroom::session& s2 = sessions[4];
    std::thread p1([&] {
        for (int i = 0; i < per_thread; ++i) (i % 2 ? s1 : s2).post(work);
    });
    std::thread p2([&] {
        for (int i = 0; i < per_thread; ++i) (i % 2 ? s2 : s1).post(work);
    });
    p1.join();
    p2.join();
    check(example::eventually([&] { return done.load() == 2 * per_thread; }), "every posted call ran");
    check(overlaps.load() == 0 && shared_total == 2 * per_thread, "one_thread: no two callbacks overlapped");

    // A dispatcher is found by name; dispatcher_cast gives back its typed handle.
    auto found = mailroom::dispatcher_cast<mailroom::thread_pool::handle>(env.find_dispatcher("pool"));
    check(found && found.name() == "pool", "find_dispatcher(\"pool\") is the pool");
    for (const auto& d : env.dispatcher_stats_all())
        std::printf("  dispatcher %-8s %-13s threads %zu, contexts bound %zu\n", d.name.c_str(), d.kind.c_str(),
                    d.threads, d.bound_contexts);

    env.stop();
    env.join();
    return check.exit_code();
}
