// Agents with hierarchical states and time limits of a millisecond or two, registered and
// deregistered while other threads send to them and publish to a topic they react to by state.
// Time limits fire, are cancelled by changes of state and by the agents' end, all at once. No
// handler may run in a state that does not take its message, no callback after on_finish, and
// the books must balance.

#include <mailroom/mailroom.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
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

struct totals {
    std::atomic<long> constructed{0}, destroyed{0}, started{0}, finished{0};
    std::atomic<long> handled{0}, entries{0}, violations{0};
};

/// run { a (initial), b } and rest. `work` is handled in run (so in a and b) but suppressed in
/// b, and transferred from rest to run; `news` switches rest back to run. a -> b -> rest -> run
/// by time limits of 0 to 2 ms.
class cycler final : public agent {
public:
    cycler(totals& t, mbox topic, unsigned seed) : t_(t), topic_(std::move(topic)) {
        ++t_.constructed;
        std::mt19937 rng(seed);
        a_.time_limit(std::chrono::microseconds(rng() % 2000), b_);
        b_.time_limit(std::chrono::microseconds(rng() % 2000), rest_);
        rest_.time_limit(std::chrono::microseconds(rng() % 2000), run_);
        for (state* s : {&run_, &a_, &b_, &rest_})
            s->on_enter([this]() noexcept { ++t_.entries; });
    }
    ~cycler() override {
        if (phase_ != 2 && phase_ != 0) ++t_.violations;
        ++t_.destroyed;
    }

protected:
    void configure() override {
        const mbox& me = direct_mbox();
        run_.event(me, [this](const work&) { check(is_in(run_) && !is_in(b_)); });
        b_.suppress<work>(me);
        rest_.transfer_to_state<work>(me, run_);
        run_.event(topic_, [this](const news&) { check(is_in(run_)); });
        rest_.just_switch_to<news>(topic_, run_);
    }
    void on_start() override {
        if (phase_ != 0) ++t_.violations;
        phase_ = 1;
        ++t_.started;
        change_state(run_);
    }
    void on_finish() override {
        if (phase_ != 1) ++t_.violations;
        phase_ = 2;
        ++t_.finished;
    }

private:
    void check(bool in_a_state_that_takes_it) {
        if (phase_ != 1 || !in_a_state_that_takes_it) ++t_.violations;
        ++t_.handled;
    }

    totals& t_;
    mbox topic_;
    int phase_ = 0;  // 0 made, 1 started, 2 finished
    state run_{*this, "run"};
    state a_{run_, "a", {.initial = true}};
    state b_{run_, "b"};
    state rest_{*this, "rest"};
};

TEST(state_churn, time_limits_fire_and_are_cancelled_while_agents_come_and_go_and_messages_fly) {
    totals t;
    const auto budget = test::sanitized ? 1000ms : 1500ms;
    environment_stats books{};
    {
        environment env({.name = "states"});
        std::vector<binder> binders = {
            env.default_dispatcher().bind(),
            thread_pool::make_dispatcher(env, "pool", {.threads = 2}).bind_fifo(thread_pool::fifo::agent),
        };
        mbox topic = make_mpmc_mbox(env);
        std::mutex lock;
        std::vector<coop_handle> live;
        std::vector<mbox> targets(64);
        std::size_t next_target = 0;
        std::atomic<bool> done{false};
        const auto end = std::chrono::steady_clock::now() + budget;

        std::thread registrar([&] {
            std::mt19937 rng(7);
            for (unsigned i = 0; i < 20000 && std::chrono::steady_clock::now() < end; ++i) {
                coop c(env, {.bind = binders[rng() % binders.size()]});
                std::vector<mbox> made;
                const int n = 1 + static_cast<int>(rng() % 3);
                for (int k = 0; k < n; ++k) made.push_back(c.make_agent<cycler>(t, topic, rng()).direct_mbox());
                coop_handle h = register_coop(std::move(c));
                std::lock_guard g(lock);
                live.push_back(h);
                for (auto& m : made) targets[next_target++ % targets.size()] = m;
                while (live.size() > 16 || (!live.empty() && rng() % 3 == 0)) {
                    const std::size_t k = rng() % live.size();
                    live[k].deregister();
                    live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
                }
                std::this_thread::sleep_for(200us);  // let time limits fire between the changes
            }
        });
        std::thread sender([&] {
            std::mt19937 rng(11);
            while (!done.load()) {
                mbox m;
                {
                    std::lock_guard g(lock);
                    m = targets[rng() % targets.size()];
                }
                if (m)
                    for (int i = 0; i < 8; ++i) send<work>(m, i);
                send<news>(topic, 1);
                std::this_thread::sleep_for(20us);
            }
        });
        registrar.join();
        done = true;
        sender.join();
        env.stop();
        ASSERT_TRUE(test::join_within(env, 60s));
        books = env.stats();
    }
    EXPECT_EQ(t.violations.load(), 0);
    EXPECT_EQ(t.constructed.load(), t.destroyed.load());
    EXPECT_EQ(t.started.load(), t.finished.load());
    EXPECT_GT(t.handled.load(), 0);
    EXPECT_GT(t.entries.load(), t.started.load() * 2) << "time limits should have moved the agents on";
    EXPECT_GT(books.messages_ignored, 0u) << "suppressed in b";
    EXPECT_EQ(books.messages_sent, books.messages_delivered + books.messages_lost + books.messages_ignored +
                                       books.messages_discarded + books.messages_cancelled + books.messages_dropped);
    std::printf("state churn: %ld agents, %ld handled, %ld states entered, %llu ignored\n", t.constructed.load(),
                t.handled.load(), t.entries.load(), static_cast<unsigned long long>(books.messages_ignored));
}

}  // namespace
