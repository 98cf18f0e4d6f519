// Cooperations (with children) registered and deregistered from several threads while other
// threads send to their agents and publish to MPMC mboxes; then the environment is destroyed.
// Every agent made must be destroyed, every started agent finished, and no handler may run
// before on_start, after on_finish, or at the same time as another of the same agent.

#include <mailroom/mailroom.hpp>
#include "all_stats.hpp"

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

struct work {
    int n = 0;
};
struct news {
    int n = 0;
};
struct quit final : mailroom::signal {};

struct totals {
    std::atomic<long> constructed{0}, destroyed{0}, started{0}, finished{0}, handled{0};
    std::atomic<long> violations{0};
    std::atomic<long> coops_gone{0}, rejected{0}, rolled_back{0};
};

class churn_agent final : public agent {
public:
    static constexpr std::uint32_t alive_magic = 0xA11CE;

    churn_agent(totals& t, std::vector<mbox> topics, bool fail) : t_(t), topics_(std::move(topics)), fail_(fail) {
        ++t_.constructed;
    }
    ~churn_agent() override {
        if (magic_ != alive_magic) ++t_.violations;
        magic_ = 0;
        ++t_.destroyed;
    }

protected:
    void configure() override {
        if (fail_) throw std::runtime_error("configure refused");
        subscribe(direct_mbox(), &churn_agent::on_work);
        subscribe<quit>(direct_mbox(), [this] {
            enter();
            deregister_coop();
            leave();
        });
        for (auto& t : topics_) subscribe(t, &churn_agent::on_news);
    }
    void on_start() override {
        if (state_ != 0) ++t_.violations;
        state_ = 1;
        ++t_.started;
    }
    void on_finish() override {
        if (state_ != 1 || in_flight_.load() != 0) ++t_.violations;
        state_ = 2;
        ++t_.finished;
    }

private:
    void enter() {
        if (magic_ != alive_magic || state_ != 1) ++t_.violations;
        if (in_flight_.fetch_add(1) != 0) ++t_.violations;
    }
    void leave() {
        in_flight_.fetch_sub(1);
        ++t_.handled;
    }
    void on_work(const work&) {
        enter();
        leave();
    }
    void on_news(const news&) {
        enter();
        leave();
    }

    totals& t_;
    std::vector<mbox> topics_;
    bool fail_;
    std::uint32_t magic_ = alive_magic;
    int state_ = 0;  // 0 made, 1 started, 2 finished
    std::atomic<int> in_flight_{0};
};

TEST(agent_churn, register_deregister_send_and_publish_from_many_threads) {
    totals t;
    const auto budget = test::sanitized ? 1200ms : 2500ms;
    const long max_iterations = test::sanitized ? 3000 : 30000;
    test::all_stats final_stats{};
    {
        environment env({.name = "churn"});
        std::vector<binder> binders = {
            env.default_dispatcher().bind(),
            thread_pool::make_dispatcher(env, "pool", {.threads = 2}).bind_fifo(thread_pool::fifo::agent),
            dispatcher_cast<thread_pool::handle>(env.find_dispatcher("pool")).bind_fifo(thread_pool::fifo::cooperation),
            active_obj::make_dispatcher(env, "objs").bind(),
            active_group::make_dispatcher(env, "groups").bind_group("g"),
        };
        std::vector<mbox> topics = {make_mpmc_mbox(env), make_named_mbox(env, "news")};

        std::mutex live_lock;
        std::vector<coop_handle> live;           // registered cooperations, roughly
        std::vector<mbox> targets(256);          // recent agents' direct mboxes
        std::size_t next_target = 0;
        std::atomic<bool> done{false};
        const auto end = std::chrono::steady_clock::now() + budget;

        auto registrar = [&](unsigned seed) {
            std::mt19937 rng(seed);
            for (long i = 0; i < max_iterations && std::chrono::steady_clock::now() < end; ++i) {
                coop_options o;
                o.bind = binders[rng() % binders.size()];
                o.on_deregistered = [&](std::string_view, dereg_reason) { ++t.coops_gone; };
                {
                    std::lock_guard g(live_lock);
                    if (!live.empty() && rng() % 2) o.parent = live[rng() % live.size()];
                }
                const bool fail = rng() % 16 == 0;
                std::vector<mbox> made;
                try {
                    coop c(env, std::move(o));
                    const int n = 1 + static_cast<int>(rng() % 3);
                    for (int a = 0; a < n; ++a) {
                        std::vector<mbox> subs;
                        for (auto& tp : topics)
                            if (rng() % 2) subs.push_back(tp);
                        auto& ag = c.make_agent<churn_agent>(t, std::move(subs), fail && a == n - 1);
                        made.push_back(ag.direct_mbox());
                        send<work>(made.back(), a);  // queued before registration
                    }
                    coop_handle h = register_coop(std::move(c));
                    std::lock_guard g(live_lock);
                    live.push_back(h);
                    for (auto& m : made) targets[next_target++ % targets.size()] = m;
                } catch (const usage_error&) {
                    ++t.rejected;  // the parent was being deregistered meanwhile
                } catch (const std::runtime_error& e) {
                    if (std::string(e.what()) != "configure refused") throw;
                    ++t.rolled_back;
                }
                // Deregister someone: directly, or by asking one of its agents.
                std::lock_guard g(live_lock);
                while (live.size() > 24 || (!live.empty() && rng() % 3 == 0)) {
                    std::size_t k = rng() % live.size();
                    if (rng() % 2) {
                        live[k].deregister();
                    } else {
                        mbox m = targets[rng() % targets.size()];
                        if (m) send<quit>(m);
                    }
                    live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
                }
            }
        };
        auto sender = [&](unsigned seed) {
            std::mt19937 rng(seed);
            while (!done.load()) {
                mbox m;
                {
                    std::lock_guard g(live_lock);
                    m = targets[rng() % targets.size()];
                }
                if (m)
                    for (int i = 0; i < 16; ++i) send<work>(m, i);
                std::this_thread::sleep_for(20us);  // bounded queues: the agents keep up
            }
        };
        auto publisher = [&] {
            int n = 0;
            while (!done.load()) {
                for (auto& tp : topics) send<news>(tp, ++n);
                std::this_thread::sleep_for(20us);
            }
        };

        std::vector<std::thread> workers;
        workers.emplace_back(registrar, 1u);
        workers.emplace_back(registrar, 2u);
        std::thread s1(sender, 3u), s2(sender, 4u), p1(publisher);
        for (auto& w : workers) w.join();
        done = true;
        s1.join();
        s2.join();
        p1.join();
        // The environment stops with whatever is still registered.
        env.stop();
        ASSERT_TRUE(test::join_within(env, 60s));
        final_stats = test::all_stats_of(env);
        EXPECT_GT(final_stats.coops_registered, 10u);
    }
    EXPECT_EQ(t.violations.load(), 0);
    EXPECT_EQ(t.constructed.load(), t.destroyed.load());
    EXPECT_EQ(t.started.load(), t.finished.load());
    EXPECT_GT(t.handled.load(), 0);
    EXPECT_GT(t.rolled_back.load(), 0);
    EXPECT_EQ(final_stats.agents_created, final_stats.agents_destroyed);
    EXPECT_EQ(final_stats.agents_created, static_cast<std::uint64_t>(t.constructed.load()));
    EXPECT_EQ(final_stats.coops_registered, final_stats.coops_deregistered);
    EXPECT_EQ(t.coops_gone.load(), static_cast<long>(final_stats.coops_registered));
    std::printf("churn: %lld coops, %ld agents, %ld handled, %ld rolled back, %ld rejected children\n",
                static_cast<long long>(final_stats.coops_registered), t.constructed.load(), t.handled.load(),
                t.rolled_back.load(), t.rejected.load());
}

}  // namespace
