#include <mailroom/dispatch/dispatcher.hpp>

#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/active_group_impl.hpp>
#include <mailroom/dispatch/active_obj_impl.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/one_thread_impl.hpp>
#include <mailroom/dispatch/thread_pool_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <gtest/gtest.h>

#include "test_support.hpp"

#include <dirent.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace mailroom;
using namespace mailroom::internal;
using namespace std::chrono_literals;
using mailroom::test::eventually;

// ---------------------------------------------------------------------------------------------
// Test demands and probes

/// A demand running a function; counts itself when discarded.
struct fn_demand final : demand {
    std::function<void()> body;
    std::atomic<int>* discarded = nullptr;

    static void exec(demand* d, demand_mode mode) noexcept {
        auto* self = static_cast<fn_demand*>(d);
        if (mode == demand_mode::run)
            self->body();
        else if (self->discarded)
            self->discarded->fetch_add(1);
        delete self;
    }
};

void post(event_queue* q, std::function<void()> f, std::atomic<int>* discarded = nullptr) {
    auto* d = new fn_demand;
    d->execute = &fn_demand::exec;
    d->body = std::move(f);
    d->discarded = discarded;
    q->push(d);
}

void busy_for(int pauses) {
    for (int i = 0; i < pauses; ++i) cpu_relax();
}

constexpr int max_producers = 4;

/// One bound context: detects overlapping demands and out-of-order delivery per sender.
struct context_probe {
    std::atomic<int> in_flight{0};
    std::atomic<bool> overlapped{false};
    std::atomic<bool> out_of_order{false};
    std::atomic<long> ran{0};
    std::array<std::atomic<long>, max_producers> next_seq{};
    std::mutex lock;
    std::set<std::thread::id> threads;

    void run(int producer, long seq, int work) {
        if (in_flight.fetch_add(1, std::memory_order_acq_rel) != 0) overlapped.store(true);
        {
            std::lock_guard g(lock);
            threads.insert(std::this_thread::get_id());
        }
        if (producer >= 0) {
            if (next_seq[producer].load(std::memory_order_relaxed) != seq) out_of_order.store(true);
            next_seq[producer].store(seq + 1, std::memory_order_relaxed);
        }
        busy_for(work);
        ran.fetch_add(1, std::memory_order_release);
        in_flight.fetch_sub(1, std::memory_order_acq_rel);
    }
    std::set<std::thread::id> thread_set() {
        std::lock_guard g(lock);
        return threads;
    }
};

/// A demand that blocks its worker until opened (bounded, so that a test never hangs).
struct gate {
    std::atomic<bool> open{false};
    std::atomic<bool> entered{false};
    void pass() {
        entered.store(true);
        const auto end = std::chrono::steady_clock::now() + 20s;
        while (!open.load() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(100us);
    }
};

std::size_t thread_count() {
    // A sanitizer starts a helper thread of its own with the first thread the program creates:
    // make sure that happened before anything is counted.
    static const bool primed = [] {
        std::thread([] {}).join();
        return true;
    }();
    (void)primed;
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}

// ---------------------------------------------------------------------------------------------
// Every kind of dispatcher, driven through the internal API

struct kind_case {
    std::string label;
    std::function<std::shared_ptr<dispatcher_impl>(const std::string&)> make;
    /// Binder for context `i`; for active_group, contexts go to groups by i % 2.
    std::function<std::shared_ptr<binder_impl>(dispatcher_impl&, int)> binder_for;
};

std::vector<kind_case> all_kinds() {
    auto plain = [](dispatcher_impl& d, int) { return d.make_binder(); };
    return {
        {"one_thread", [](const std::string& n) { return make_one_thread(n, {}); }, plain},
        {"active_obj", [](const std::string& n) { return make_active_obj(n, {}); }, plain},
        {"active_group", [](const std::string& n) { return make_active_group(n, {}); },
         [](dispatcher_impl& d, int i) { return bind_group(d, i % 2 ? "odd" : "even"); }},
        {"thread_pool_agent",
         [](const std::string& n) {
             thread_pool::params p;
             p.threads = 2;
             p.order = thread_pool::fifo::agent;
             p.max_demands_at_once = 4;
             return make_thread_pool(n, p);
         },
         plain},
        {"thread_pool_cooperation",
         [](const std::string& n) {
             thread_pool::params p;
             p.threads = 2;
             p.order = thread_pool::fifo::cooperation;
             return make_thread_pool(n, p);
         },
         plain},
    };
}

class every_kind : public ::testing::TestWithParam<kind_case> {};

/// Contexts bound to one dispatcher, each with its own cooperation key.
struct bound_contexts {
    std::shared_ptr<dispatcher_impl> disp;
    std::vector<std::shared_ptr<binder_impl>> binders;
    std::vector<binding> bindings;
    std::vector<std::unique_ptr<context_probe>> probes;

    bound_contexts(const kind_case& k, const std::string& name, int n) : disp(k.make(name)) {
        for (int i = 0; i < n; ++i) {
            probes.push_back(std::make_unique<context_probe>());
            binders.push_back(k.binder_for(*disp, i));
            bindings.push_back(binders.back()->prepare(probes.back().get()));
        }
    }
    void release_all() {
        for (std::size_t i = 0; i < bindings.size(); ++i) binders[i]->release(bindings[i], probes[i].get());
        bindings.clear();
    }
    ~bound_contexts() {
        if (!bindings.empty()) release_all();
        disp->join();
    }
    event_queue* queue(int i) const { return bindings[i].queue; }
};

TEST_P(every_kind, runs_each_context_serially_and_each_sender_in_order) {
    constexpr int contexts = 4;
    constexpr int producers = 3;
    const long per_producer = mailroom::test::rounds(3000);
    bound_contexts b(GetParam(), "serial", contexts);
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            for (long seq = 0; seq < per_producer; ++seq)
                for (int c = 0; c < contexts; ++c) {
                    context_probe* probe = b.probes[c].get();
                    post(b.queue(c), [probe, p, seq] { probe->run(p, seq, 200); });
                }
        });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& pr : b.probes)
                if (pr->ran.load() != producers * per_producer) return false;
            return true;
        },
        60s));
    for (int c = 0; c < contexts; ++c) {
        EXPECT_FALSE(b.probes[c]->overlapped.load()) << "two demands of context " << c << " overlapped";
        EXPECT_FALSE(b.probes[c]->out_of_order.load()) << "a sender's demands to context " << c << " were reordered";
        for (int p = 0; p < producers; ++p) EXPECT_EQ(b.probes[c]->next_seq[p].load(), per_producer);
    }
}

TEST_P(every_kind, heartbeat_counts_handled_and_shows_busy) {
    bound_contexts b(GetParam(), "beat", 1);
    auto handled = [&] {
        std::uint64_t h = 0;
        for (auto& w : b.disp->stats().workers) h += w.handled;
        return h;
    };
    auto any_busy = [&] {
        for (auto& w : b.disp->stats().workers)
            if (w.busy) return true;
        return false;
    };
    ASSERT_TRUE(eventually([&] { return !any_busy(); }, 10s));
    const std::uint64_t before = handled();
    gate g;
    post(b.queue(0), [&] { g.pass(); });
    ASSERT_TRUE(eventually([&] { return g.entered.load(); }, 10s));
    EXPECT_TRUE(any_busy()) << "no worker shows busy while a handler runs";
    EXPECT_EQ(handled(), before) << "a running demand already counted as handled";
    g.open.store(true);
    constexpr int more = 10;
    std::atomic<int> ran{0};
    for (int i = 0; i < more; ++i) post(b.queue(0), [&] { ran.fetch_add(1); });
    ASSERT_TRUE(eventually([&] { return ran.load() == more; }, 10s));
    EXPECT_TRUE(eventually([&] { return handled() >= before + 1 + more; }, 10s))
        << "handled went from " << before << " to " << handled();
    EXPECT_TRUE(eventually([&] { return !any_busy(); }, 10s)) << "busy stays set after the handlers returned";
}

TEST_P(every_kind, binding_after_shutdown_raises_an_error_naming_the_dispatcher) {
    auto disp = GetParam().make("shut-" + GetParam().label);
    auto bdr = GetParam().binder_for(*disp, 0);
    dispatcher handle(disp);
    EXPECT_TRUE(static_cast<bool>(handle));
    handle.shutdown();
    EXPECT_FALSE(static_cast<bool>(handle));
    int key = 0;
    try {
        bdr->prepare(&key);
        ADD_FAILURE() << "prepare() after shutdown() did not throw";
    } catch (const binding_error& e) {
        EXPECT_NE(std::string(e.what()).find("shut-" + GetParam().label), std::string::npos) << e.what();
    }
    // A binder made after shutdown fails the same way.
    EXPECT_THROW(GetParam().binder_for(*disp, 1)->prepare(&key), binding_error);
    disp->join();
}

TEST_P(every_kind, join_joins_every_thread_and_consumes_every_demand_once) {
    const std::size_t threads_before = thread_count();
    std::atomic<int> ran{0};
    std::atomic<int> discarded{0};
    constexpr int queued = 20;
    constexpr int stale = 7;
    {
        bound_contexts b(GetParam(), "join", 2);
        gate g;
        post(b.queue(0), [&] { g.pass(); });
        ASSERT_TRUE(eventually([&] { return g.entered.load(); }, 10s));
        EXPECT_GT(thread_count(), threads_before);
        for (int i = 0; i < queued; ++i) {
            post(b.queue(0), [&] { ran.fetch_add(1); }, &discarded);
            post(b.queue(1), [&] { ran.fetch_add(1); }, &discarded);
        }
        event_queue* q0 = b.queue(0);
        b.release_all();
        // join() with the worker still busy: it must wait for it, then leave nothing queued.
        std::thread joiner([&] { b.disp->join(); });
        ASSERT_TRUE(eventually([&] { return !b.disp->accepting(); }, 10s));
        std::this_thread::sleep_for(20ms);
        g.open.store(true);
        joiner.join();
        EXPECT_EQ(ran.load() + discarded.load(), 2 * queued) << "a demand queued before join() was lost";
        if (GetParam().label.starts_with("thread_pool")) {
            // The pool stops once its busy worker has finished its turn on the strand (at most
            // max_demands_at_once demands, the gate included): the rest is discarded by join()
            // rather than run. Thread-per-context kinds queue their stop behind what was pushed
            // before, so there everything queued before ran.
            const auto cap = static_cast<int>(GetParam().label == "thread_pool_agent" ? 4 : 16);
            EXPECT_GE(discarded.load(), queued - cap) << "join() ran what was still queued instead of discarding it";
        }
        EXPECT_TRUE(eventually([&] { return thread_count() == threads_before; }, 5s))
            << thread_count() << " threads after join(), " << threads_before << " before";
        // A stale sender pushing after join(): never run, discarded by the dispatcher at the latest
        // when it is destroyed.
        const int ran_after_join = ran.load();
        for (int i = 0; i < stale; ++i) post(q0, [&] { ran.fetch_add(1); }, &discarded);
        std::this_thread::sleep_for(10ms);
        EXPECT_EQ(ran.load(), ran_after_join) << "a demand pushed after join() ran";
    }
    EXPECT_EQ(ran.load() + discarded.load(), 2 * queued + stale);
    EXPECT_EQ(thread_count(), threads_before);
}

TEST_P(every_kind, join_returns_while_a_context_keeps_posting_to_itself) {
    // An agent that sends to itself forever must not hold join() hostage.
    auto b = std::make_unique<bound_contexts>(GetParam(), "loop", 1);
    event_queue* q = b->queue(0);
    std::atomic<long> ran{0};
    std::atomic<int> discarded{0};
    const auto give_up = std::chrono::steady_clock::now() + 30s;  // so that a broken join ends
    std::function<void()> again = [&] {
        ran.fetch_add(1);
        if (std::chrono::steady_clock::now() < give_up) post(q, again, &discarded);
    };
    post(q, again, &discarded);
    ASSERT_TRUE(eventually([&] { return ran.load() > 100; }, 10s));
    b->release_all();
    std::atomic<bool> joined{false};
    std::thread joiner([&] {
        b->disp->join();
        joined.store(true);
    });
    EXPECT_TRUE(eventually([&] { return joined.load(); }, 10s)) << "join() never returned";
    joiner.join();
    const long ran_at_join = ran.load();
    b.reset();  // what the last demand posted is discarded, never run
    EXPECT_EQ(ran.load(), ran_at_join);
    EXPECT_EQ(discarded.load(), 1);
}

INSTANTIATE_TEST_SUITE_P(kinds, every_kind, ::testing::ValuesIn(all_kinds()),
                         [](const ::testing::TestParamInfo<kind_case>& i) { return i.param.label; });

// ---------------------------------------------------------------------------------------------
// Thread placement per kind

/// Posts one demand to each context and returns the thread each ran on.
std::vector<std::thread::id> threads_of(const bound_contexts& b) {
    const int n = static_cast<int>(b.probes.size());
    for (int i = 0; i < n; ++i) {
        context_probe* pr = b.probes[i].get();
        for (int k = 0; k < 5; ++k) post(b.queue(i), [pr] { pr->run(-1, 0, 0); });
    }
    EXPECT_TRUE(eventually([&] {
        for (auto& pr : b.probes)
            if (pr->ran.load() != 5) return false;
        return true;
    }));
    std::vector<std::thread::id> out;
    for (auto& pr : b.probes) {
        auto s = pr->thread_set();
        EXPECT_EQ(s.size(), 1u) << "a context's demands ran on several threads";
        out.push_back(s.empty() ? std::thread::id() : *s.begin());
    }
    return out;
}

TEST(one_thread, every_context_shares_one_worker_thread) {
    bound_contexts b(all_kinds()[0], "one", 3);
    auto ids = threads_of(b);
    EXPECT_EQ(ids[0], ids[1]);
    EXPECT_EQ(ids[1], ids[2]);
    EXPECT_NE(ids[0], std::this_thread::get_id());
    EXPECT_EQ(b.disp->stats().threads, 1u);
}

TEST(active_obj, every_context_gets_a_thread_of_its_own) {
    const std::size_t before = thread_count();
    bound_contexts b(all_kinds()[1], "obj", 3);
    auto ids = threads_of(b);
    EXPECT_EQ(std::set<std::thread::id>(ids.begin(), ids.end()).size(), 3u);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), std::this_thread::get_id()), 0);
    EXPECT_EQ(thread_count(), before + 3);
    EXPECT_EQ(b.disp->stats().threads, 3u);
}

TEST(active_group, one_thread_per_group_different_across_groups) {
    bound_contexts b(all_kinds()[2], "grp", 4);  // contexts 0, 2 in "even"; 1, 3 in "odd"
    auto ids = threads_of(b);
    EXPECT_EQ(ids[0], ids[2]);
    EXPECT_EQ(ids[1], ids[3]);
    EXPECT_NE(ids[0], ids[1]);
    EXPECT_EQ(b.disp->stats().threads, 2u);
    EXPECT_EQ(b.disp->stats().bound_contexts, 4u);
}

TEST(active_group, a_group_emptied_and_refilled_gets_a_working_thread) {
    auto disp = make_active_group("refill", {});
    auto bdr = bind_group(*disp, "g");
    for (int round = 0; round < 20; ++round) {
        int key = 0;
        binding bd = bdr->prepare(&key);
        std::atomic<int> ran{0};
        for (int i = 0; i < 3; ++i) post(bd.queue, [&] { ran.fetch_add(1); });
        ASSERT_TRUE(eventually([&] { return ran.load() == 3; }, 10s)) << "round " << round;
        bdr->release(bd, &key);
    }
    disp->join();
}

// ---------------------------------------------------------------------------------------------
// thread_pool: FIFO units and fairness

std::shared_ptr<dispatcher_impl> pool(std::size_t threads, thread_pool::fifo order, std::size_t cap = 16) {
    thread_pool::params p;
    p.threads = threads;
    p.order = order;
    p.max_demands_at_once = cap;
    return make_thread_pool("pool", p);
}

TEST(thread_pool, fifo_cooperation_never_runs_two_agents_of_one_coop_at_once) {
    auto disp = pool(2, thread_pool::fifo::agent);
    auto bdr = bind_fifo(*disp, thread_pool::fifo::cooperation);
    int coop = 0;
    binding a = bdr->prepare(&coop);
    binding b = bdr->prepare(&coop);
    context_probe shared;  // both agents report here: the cooperation is the serial unit
    const long per_producer = mailroom::test::rounds(3000);
    std::vector<std::thread> producers;
    for (int p = 0; p < 2; ++p)
        producers.emplace_back([&, p] {
            for (long i = 0; i < per_producer; ++i) {
                post(p == 0 ? a.queue : b.queue, [&] { shared.run(-1, 0, 300); });
            }
        });
    for (auto& t : producers) t.join();
    ASSERT_TRUE(eventually([&] { return shared.ran.load() == 2 * per_producer; }, 60s));
    EXPECT_FALSE(shared.overlapped.load()) << "two agents of one cooperation ran at once";
    bdr->release(a, &coop);
    bdr->release(b, &coop);
    disp->join();
}

TEST(thread_pool, fifo_agent_runs_agents_of_one_coop_in_parallel) {
    auto disp = pool(2, thread_pool::fifo::cooperation);
    auto bdr = bind_fifo(*disp, thread_pool::fifo::agent);
    int coop = 0;
    binding a = bdr->prepare(&coop);
    binding b = bdr->prepare(&coop);
    // Each demand waits (bounded) until the other is running too: only possible in parallel.
    std::atomic<int> arrived{0};
    std::atomic<int> met{0};
    auto rendezvous = [&] {
        arrived.fetch_add(1);
        if (eventually([&] { return arrived.load() >= 2; }, 10s)) met.fetch_add(1);
    };
    post(a.queue, rendezvous);
    post(b.queue, rendezvous);
    ASSERT_TRUE(eventually([&] { return arrived.load() == 2; }, 20s));
    EXPECT_TRUE(eventually([&] { return met.load() == 2; }, 20s)) << "the two agents never ran at the same time";
    bdr->release(a, &coop);
    bdr->release(b, &coop);
    disp->join();
}

TEST(thread_pool, max_demands_at_once_bounds_a_strands_turn) {
    constexpr std::size_t cap = 3;
    constexpr int per_strand = 20;
    auto disp = pool(1, thread_pool::fifo::agent, cap);
    auto bdr = disp->make_binder();
    int k0 = 0, k1 = 1, k2 = 2;
    binding blocker = bdr->prepare(&k0);
    binding s1 = bdr->prepare(&k1);
    binding s2 = bdr->prepare(&k2);
    // Hold the only worker so that both strands fill up and are both ready when it comes back.
    gate g;
    post(blocker.queue, [&] { g.pass(); });
    ASSERT_TRUE(eventually([&] { return g.entered.load(); }, 10s));
    std::mutex lock;
    std::vector<int> order;
    std::atomic<int> ran{0};
    for (int i = 0; i < per_strand; ++i) {
        post(s1.queue, [&] { std::lock_guard l(lock); order.push_back(1); ran.fetch_add(1); });
        post(s2.queue, [&] { std::lock_guard l(lock); order.push_back(2); ran.fetch_add(1); });
    }
    g.open.store(true);
    ASSERT_TRUE(eventually([&] { return ran.load() == 2 * per_strand; }, 20s));
    std::lock_guard l(lock);
    std::size_t longest = 0, turns = 0;
    for (std::size_t i = 0; i < order.size();) {
        std::size_t j = i;
        while (j < order.size() && order[j] == order[i]) ++j;
        longest = std::max(longest, j - i);
        ++turns;
        i = j;
    }
    EXPECT_EQ(longest, cap) << "a strand ran more (or never as many) demands in a row than the cap";
    EXPECT_GE(turns, 2 * per_strand / cap) << "the strands did not take turns";
    bdr->release(blocker, &k0);
    bdr->release(s1, &k1);
    bdr->release(s2, &k2);
    disp->join();
}

TEST(thread_pool, a_released_strand_reused_by_another_context_stays_serial) {
    auto disp = pool(2, thread_pool::fifo::agent, 2);
    auto bdr = disp->make_binder();
    std::vector<std::unique_ptr<context_probe>> probes;
    std::atomic<long> posted{0};
    for (int round = 0; round < 50; ++round) {
        probes.push_back(std::make_unique<context_probe>());
        context_probe* pr = probes.back().get();
        binding bd = bdr->prepare(pr);
        for (long i = 0; i < 40; ++i) {
            post(bd.queue, [pr, i] { pr->run(0, i, 50); });
            posted.fetch_add(1);
        }
        bdr->release(bd, pr);  // its demands may still be queued when the next context takes it
    }
    ASSERT_TRUE(eventually([&] {
        long n = 0;
        for (auto& p : probes) n += p->ran.load();
        return n == posted.load();
    }, 30s));
    for (auto& p : probes) {
        EXPECT_FALSE(p->overlapped.load());
        EXPECT_FALSE(p->out_of_order.load());
    }
    disp->join();
}

TEST(thread_pool, stats_report_threads_bindings_and_queue_depth) {
    auto disp = pool(1, thread_pool::fifo::agent);
    auto bdr = disp->make_binder();
    int k0 = 0, k1 = 1;
    binding a = bdr->prepare(&k0);
    binding b = bdr->prepare(&k1);
    gate g;
    post(a.queue, [&] { g.pass(); });
    ASSERT_TRUE(eventually([&] { return g.entered.load(); }, 10s));
    std::atomic<int> ran{0};
    for (int i = 0; i < 5; ++i) post(b.queue, [&] { ran.fetch_add(1); });
    auto s = disp->stats();
    EXPECT_EQ(s.kind, "thread_pool");
    EXPECT_EQ(s.threads, 1u);
    EXPECT_EQ(s.bound_contexts, 2u);
    EXPECT_GE(s.queue_depth, 5u);
    g.open.store(true);
    ASSERT_TRUE(eventually([&] { return ran.load() == 5; }, 10s));
    EXPECT_TRUE(eventually([&] { return disp->stats().queue_depth == 0; }, 10s));
    bdr->release(a, &k0);
    bdr->release(b, &k1);
    EXPECT_EQ(disp->stats().bound_contexts, 0u);
    disp->join();
}

}  // namespace
