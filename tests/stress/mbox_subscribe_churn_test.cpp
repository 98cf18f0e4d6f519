// Agents subscribe to and unsubscribe from MPMC mboxes inside their handlers (including the
// handler being run) while other threads publish. No handler may run for a subscription its
// agent has dropped, every message sent must end up delivered or ignored, nothing is lost.

#include <mailroom/mailroom.hpp>

#include "../unit/agent/probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;

struct quote {
    int n = 0;
};
struct trade {
    int n = 0;
};
struct alert final : mailroom::signal {};
struct tick final : mailroom::signal {};

struct totals {
    std::atomic<long> late{0}, quotes{0}, trades{0}, alerts{0}, flips{0};
};

// Flips between listening to quotes and to trades on `topic`, dropping the subscription from
// inside the very handler it belongs to; toggles `alerts` on `other` from a tick loop.
class flipper final : public agent {
public:
    flipper(totals& t, mbox topic, mbox other, const std::atomic<bool>& stop)
        : t_(t), topic_(std::move(topic)), other_(std::move(other)), stop_(stop) {}

protected:
    void configure() override {
        listen_quotes();
        subscribe<tick>(direct_mbox(), [this] {
            if (alerts_on_) {
                unsubscribe<alert>(other_);
            } else {
                subscribe<alert>(other_, [this] {
                    if (!alerts_on_) ++t_.late;
                    ++t_.alerts;
                });
            }
            alerts_on_ = !alerts_on_;
            if (!stop_.load()) send<tick>(direct_mbox());
        });
    }
    void on_start() override { send<tick>(direct_mbox()); }

private:
    void listen_quotes() {
        on_quotes_ = true;
        subscribe(topic_, [this](const quote&) {
            if (!on_quotes_) ++t_.late;
            ++t_.quotes;
            if (++count_ % 7 == 0) {
                unsubscribe<quote>(topic_);  // this very handler's subscription
                on_quotes_ = false;
                listen_trades();
            }
        });
    }
    void listen_trades() {
        on_trades_ = true;
        subscribe(topic_, [this](const trade&) {
            if (!on_trades_) ++t_.late;
            ++t_.trades;
            if (++count_ % 5 == 0) {
                unsubscribe<trade>(topic_);
                on_trades_ = false;
                listen_quotes();
                ++t_.flips;
            }
        });
    }

    totals& t_;
    mbox topic_, other_;
    const std::atomic<bool>& stop_;
    bool on_quotes_ = false, on_trades_ = false, alerts_on_ = false;
    long count_ = 0;
};

TEST(mbox_subscribe_churn, subscribe_and_unsubscribe_in_handlers_while_publishing) {
    totals t;
    environment env({.name = "sub-churn"});
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mbox topic = make_named_mbox(env, "topic");
    mbox other = make_mpmc_mbox(env);
    std::atomic<bool> stop{false};
    constexpr int agents = 12;
    for (int i = 0; i < agents; ++i) {
        coop_options o;
        o.bind = i % 3 == 0 ? env.default_dispatcher().bind() : pool.bind_fifo(thread_pool::fifo::agent);
        coop c(env, std::move(o));
        c.make_agent<flipper>(t, topic, other, stop);
        register_coop(std::move(c));
    }
    const auto budget = test::sanitized ? 800ms : 2000ms;
    const long max_rounds = test::rounds(2'000'000);
    const auto end = std::chrono::steady_clock::now() + budget;
    auto publisher = [&](int kind) {
        for (long i = 0; i < max_rounds && std::chrono::steady_clock::now() < end; ++i) {
            if (kind == 0)
                send<quote>(topic, static_cast<int>(i));
            else
                send<trade>(topic, static_cast<int>(i));
            if (i % 4 == 0) send<alert>(other);
            if (i % 64 == 0) std::this_thread::sleep_for(50us);  // let the agents keep up
        }
    };
    std::thread a(publisher, 0), b(publisher, 1);
    a.join();
    b.join();
    stop = true;
    // Once quiet, every message queued was either handled or found no subscription.
    ASSERT_TRUE(test::eventually(
        [&] {
            auto s = env.stats();
            return s.messages_sent == s.messages_delivered + s.messages_ignored;
        },
        30s));
    auto s = env.stats();
    EXPECT_EQ(s.messages_lost, 0u);
    EXPECT_EQ(t.late.load(), 0);
    EXPECT_GT(t.flips.load(), agents);
    EXPECT_GT(t.alerts.load(), 0);
    EXPECT_GT(s.messages_ignored, 0u);  // the churn did drop queued messages
    std::printf("subscribe churn: %ld quotes, %ld trades, %ld alerts, %ld flips, %llu ignored\n", t.quotes.load(),
                t.trades.load(), t.alerts.load(), t.flips.load(),
                static_cast<unsigned long long>(s.messages_ignored));
    env.stop();
    ASSERT_TRUE(test::join_within(env, 30s));
}

}  // namespace
