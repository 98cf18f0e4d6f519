#include <mailroom/agent/agent.hpp>

#include <mailroom/mailroom.hpp>

#include "probe.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::probe;

struct ping {
    int n = 0;
};
struct from {
    int sender = 0;
    int seq = 0;
};
struct go final : mailroom::signal {};
struct done final : mailroom::signal {};

/// Counts copies and moves of itself.
struct copy_counter {
    static inline std::atomic<int> copies{0};
    static inline std::atomic<int> moves{0};
    int value = 0;
    explicit copy_counter(int v) : value(v) {}
    copy_counter(const copy_counter& o) : value(o.value) { ++copies; }
    copy_counter(copy_counter&& o) noexcept : value(o.value) { ++moves; }
    copy_counter& operator=(const copy_counter&) = delete;
    copy_counter& operator=(copy_counter&&) = delete;
};

// ---- lifecycle ----

class lifecycle final : public agent {
public:
    struct log {
        std::mutex m;
        std::vector<std::pair<std::string, std::thread::id>> events;
        void note(std::string what) {
            std::lock_guard g(m);
            events.emplace_back(std::move(what), std::this_thread::get_id());
        }
    };
    explicit lifecycle(log& l) : log_(l) { log_.note("construct"); }
    ~lifecycle() override { log_.note("destroy"); }

protected:
    void configure() override {
        log_.note("configure");
        subscribe(direct_mbox(), &lifecycle::on_ping);
        subscribe<done>(direct_mbox(), [this] { deregister_coop(); });
    }
    void on_start() override { log_.note("start"); }
    void on_finish() override { log_.note("finish"); }

private:
    void on_ping(const ping& p) { log_.note("ping " + std::to_string(p.n)); }
    log& log_;
};

TEST(agent, hooks_run_in_order_and_on_the_agents_own_thread) {
    lifecycle::log log;
    std::atomic<bool> gone{false};
    {
        environment env;
        coop_options o;
        o.on_deregistered = [&](std::string_view, dereg_reason) { gone = true; };
        coop c(env, std::move(o));
        auto& a = c.make_agent<lifecycle>(log);
        mbox m = a.direct_mbox();
        send<ping>(m, 1);  // before registration: held until the agent started
        register_coop(std::move(c));
        send<ping>(m, 2);
        send<done>(m);
        ASSERT_TRUE(test::wait_set(gone));
    }
    std::lock_guard g(log.m);
    std::vector<std::string> order;
    for (auto& [what, id] : log.events) order.push_back(what);
    EXPECT_EQ(order, (std::vector<std::string>{"construct", "configure", "start", "ping 1", "ping 2", "finish", "destroy"}));
    ASSERT_EQ(log.events.size(), 7u);
    const auto me = std::this_thread::get_id();
    EXPECT_EQ(log.events[0].second, me);  // constructed by make_agent
    EXPECT_EQ(log.events[1].second, me);  // configured by register_coop
    const auto own = log.events[2].second;
    EXPECT_NE(own, me);
    for (std::size_t i = 2; i < 7; ++i) EXPECT_EQ(log.events[i].second, own) << log.events[i].first;
}

TEST(agent, constructing_an_agent_outside_a_cooperation_raises_usage_error) {
    EXPECT_THROW(probe p, usage_error);
}

// ---- serial execution and ordering (guarantee 1) ----

struct dispatcher_case {
    const char* name;
    std::function<binder(environment&)> bind;
};

class agent_serial : public testing::TestWithParam<dispatcher_case> {};

TEST_P(agent_serial, handlers_never_overlap_and_per_sender_order_holds) {
    environment env;
    binder b = GetParam().bind(env);
    constexpr int senders = 4;
    const int per_sender = static_cast<int>(test::rounds(20000));
    std::atomic<int> in_flight{0};
    std::atomic<int> overlaps{0};
    std::atomic<int> out_of_order{0};
    std::atomic<int> handled{0};
    std::vector<int> next(senders, 0);  // touched only by the agent's handlers
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const from& f) {
            if (in_flight.fetch_add(1) != 0) ++overlaps;
            if (f.seq != next[f.sender]) ++out_of_order;
            next[f.sender] = f.seq + 1;
            for (int i = 0; i < 20; ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
            in_flight.fetch_sub(1);
            ++handled;
        });
    },
                             {.bind = b});
    std::vector<std::thread> threads;
    for (int s = 0; s < senders; ++s)
        threads.emplace_back([&, s] {
            for (int i = 0; i < per_sender; ++i) send<from>(m, s, i);
        });
    for (auto& t : threads) t.join();
    ASSERT_TRUE(test::eventually([&] { return handled.load() == senders * per_sender; }, 60s));
    EXPECT_EQ(overlaps.load(), 0);
    EXPECT_EQ(out_of_order.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    dispatchers, agent_serial,
    testing::Values(dispatcher_case{"default", [](environment& e) { return e.default_dispatcher().bind(); }},
                    dispatcher_case{"active_obj",
                                    [](environment& e) { return active_obj::make_dispatcher(e, "ao").bind(); }},
                    dispatcher_case{"thread_pool_agent",
                                    [](environment& e) {
                                        return thread_pool::make_dispatcher(e, "tp", {.threads = 3})
                                            .bind_fifo(thread_pool::fifo::agent);
                                    }},
                    dispatcher_case{"thread_pool_coop",
                                    [](environment& e) {
                                        return thread_pool::make_dispatcher(e, "tp", {.threads = 3})
                                            .bind_fifo(thread_pool::fifo::cooperation);
                                    }}),
    [](const testing::TestParamInfo<dispatcher_case>& i) { return std::string(i.param.name); });

// ---- subscriptions ----

class subscriber final : public agent {
public:
    std::atomic<int> member_const_ref{0}, member_value{0}, lambda{0}, signal_member{0}, signal_lambda{0};
    std::atomic<int> sum{0};

protected:
    void configure() override {
        subscribe(direct_mbox(), &subscriber::on_ping);
        subscribe(direct_mbox(), &subscriber::on_copy);
        subscribe(direct_mbox(), &subscriber::on_go);
        subscribe<done>(direct_mbox(), [this] { ++signal_lambda; });
        subscribe(direct_mbox(), [this](const std::string& s) {
            ++lambda;
            sum += static_cast<int>(s.size());
        });
    }

private:
    void on_ping(const ping& p) {
        ++member_const_ref;
        sum += p.n;
    }
    void on_copy(copy_counter c) {
        ++member_value;
        sum += c.value;
    }
    void on_go(const go&) { ++signal_member; }
};

TEST(agent, subscriptions_to_member_functions_lambdas_and_signals) {
    environment env;
    coop c(env);
    auto& a = c.make_agent<subscriber>();
    mbox m = a.direct_mbox();
    register_coop(std::move(c));
    send<ping>(m, 10);
    send<copy_counter>(m, 100);
    send<go>(m);
    send<go>(m);
    send<done>(m);
    send<std::string>(m, "abc");
    ASSERT_TRUE(test::eventually([&] { return a.lambda.load() == 1; }));
    EXPECT_EQ(a.member_const_ref.load(), 1);
    EXPECT_EQ(a.member_value.load(), 1);
    EXPECT_EQ(a.signal_member.load(), 2);
    EXPECT_EQ(a.signal_lambda.load(), 1);
    EXPECT_EQ(a.sum.load(), 113);
}

TEST(agent, a_single_receiver_gets_the_message_moved_not_copied) {
    environment env;
    std::atomic<int> by_value{0}, by_rvalue{0};
    std::atomic<int> ptr_sum{0};
    std::atomic<int> received{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](copy_counter c) {
            by_value += c.value;
            ++received;
        });
        p.subscribe(p.direct_mbox(), [&](std::unique_ptr<int>&& v) {
            std::unique_ptr<int> mine = std::move(v);  // a move-only message taken over
            ptr_sum += *mine;
            ++received;
        });
    });
    mbox topic = make_mpmc_mbox(env);
    test::add_probe(env, [&](probe& p) {
        p.subscribe(topic, [&](copy_counter&& c) {
            copy_counter mine(std::move(c));
            by_rvalue += mine.value;
            ++received;
        });
    });
    copy_counter::copies = 0;
    send<copy_counter>(m, 5);
    send(m, copy_counter(6));                   // moved in by send, moved out by the handler
    send(m, std::make_unique<int>(7));
    send<copy_counter>(topic, 8);               // one subscriber: exclusive, moved too
    ASSERT_TRUE(test::eventually([&] { return received.load() == 4; }));
    EXPECT_EQ(by_value.load(), 11);
    EXPECT_EQ(by_rvalue.load(), 8);
    EXPECT_EQ(ptr_sum.load(), 7);
    EXPECT_EQ(copy_counter::copies.load(), 0);
    EXPECT_GT(copy_counter::moves.load(), 0);
}

TEST(agent, a_fanned_out_message_is_one_shared_instance) {
    environment env;
    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = 2});
    mbox topic = make_mpmc_mbox(env);
    std::mutex mu;
    std::vector<const void*> seen;
    std::vector<int> copies_seen;
    constexpr int n = 5;
    for (int i = 0; i < n; ++i)
        test::add_probe(env, [&](probe& p) {
            p.subscribe(topic, [&](const copy_counter& c) {
                std::lock_guard g(mu);
                seen.push_back(&c);
            });
        },
                        {.bind = pool.bind_fifo(thread_pool::fifo::agent)});
    copy_counter::copies = 0;
    send<copy_counter>(topic, 1);
    ASSERT_TRUE(test::eventually([&] {
        std::lock_guard g(mu);
        return seen.size() == n;
    }));
    std::lock_guard g(mu);
    for (auto* p : seen) EXPECT_EQ(p, seen.front());
    EXPECT_EQ(copy_counter::copies.load(), 0);
}

TEST(agent, by_value_handlers_of_a_fanned_out_message_each_get_the_value) {
    environment env;
    mbox topic = make_mpmc_mbox(env);
    std::atomic<int> sum{0};
    std::atomic<int> got{0};
    for (int i = 0; i < 3; ++i)
        test::add_probe(env, [&](probe& p) {
            p.subscribe(topic, [&](copy_counter c) {
                sum += c.value;
                ++got;
            });
        });
    send<copy_counter>(topic, 7);
    ASSERT_TRUE(test::eventually([&] { return got.load() == 3; }));
    EXPECT_EQ(sum.load(), 21);  // nobody saw a moved-from value
}

TEST(agent, signals_carry_no_payload_and_are_one_instance) {
    static_assert(std::is_empty_v<go>);
    environment env;
    std::mutex mu;
    std::vector<const void*> seen;
    std::atomic<int> plain{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const go& s) {
            std::lock_guard g(mu);
            seen.push_back(&s);
        });
        p.subscribe<done>(p.direct_mbox(), [&] { ++plain; });
    });
    const auto before = env.stats();
    for (int i = 0; i < 3; ++i) {
        send<go>(m);
        send<done>(m);
    }
    ASSERT_TRUE(test::eventually([&] { return plain.load() == 3; }));
    std::lock_guard g(mu);
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[0], seen[1]);
    EXPECT_EQ(seen[1], seen[2]);
    // A delivery is counted once its handler returned: the last one may not be yet.
    EXPECT_TRUE(test::eventually([&] { return env.stats().messages_delivered - before.messages_delivered >= 6; }));
    EXPECT_EQ(env.stats().messages_delivered - before.messages_delivered, 6u);
}

TEST(agent, unsubscribe_inside_a_handler_stops_later_deliveries) {
    environment env;
    std::atomic<bool> release{false};
    std::atomic<bool> started{false};
    std::atomic<int> pings{0};
    std::atomic<bool> finished_batch{false};
    std::atomic<bool> second_result{true};
    mbox m = test::add_probe(
        env,
        [&](probe& p) {
            p.subscribe(p.direct_mbox(), [&, &p = p](const ping&) {
                ++pings;
                EXPECT_TRUE(p.unsubscribe<ping>(p.direct_mbox()));
                second_result = p.unsubscribe<ping>(p.direct_mbox());
            });
            p.subscribe<done>(p.direct_mbox(), [&] { finished_batch = true; });
        },
        {},
        [&](probe&) {
            started = true;
            test::wait_set(release);  // hold the agent so that every ping is queued first
        });
    ASSERT_TRUE(test::wait_set(started));
    for (int i = 0; i < 10; ++i) send<ping>(m, i);
    send<done>(m);
    release = true;
    ASSERT_TRUE(test::wait_set(finished_batch));
    EXPECT_EQ(pings.load(), 1);
    EXPECT_FALSE(second_result.load());
    EXPECT_EQ(env.stats().messages_ignored, 9u);
}

TEST(agent, resubscribing_inside_a_handler_takes_effect_after_it_returns) {
    environment env;
    std::atomic<int> old_handler{0}, new_handler{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&, &p = p](const ping&) {
            ++old_handler;
            p.unsubscribe<ping>(p.direct_mbox());
            p.subscribe(p.direct_mbox(), [&](const ping&) { ++new_handler; });
        });
    });
    send<ping>(m, 1);
    send<ping>(m, 2);
    send<ping>(m, 3);
    ASSERT_TRUE(test::eventually([&] { return new_handler.load() == 2; }));
    EXPECT_EQ(old_handler.load(), 1);
}

TEST(agent, subscribing_twice_raises_subscription_error_naming_agent_and_mbox) {
    environment env;
    std::string in_configure, in_handler;
    std::atomic<bool> handled{false};
    mbox topic = make_named_mbox(env, "quotes");
    mbox m = test::add_probe(env, [&](probe& p) {
        p.set_name("alice");
        p.subscribe(topic, [](const ping&) {});
        try {
            p.subscribe(topic, [](const ping&) {});
        } catch (const subscription_error& e) {
            in_configure = e.what();
        }
        p.subscribe<go>(p.direct_mbox(), [&, &p = p] {
            p.subscribe<done>(p.direct_mbox(), [] {});  // waits in the added list
            try {
                p.subscribe<done>(p.direct_mbox(), [] {});
            } catch (const subscription_error& e) {
                in_handler = e.what();
            }
            handled = true;
        });
    });
    send<go>(m);
    ASSERT_TRUE(test::wait_set(handled));
    EXPECT_NE(in_configure.find("alice"), std::string::npos) << in_configure;
    EXPECT_NE(in_configure.find("quotes"), std::string::npos) << in_configure;
    EXPECT_NE(in_handler.find("alice"), std::string::npos) << in_handler;
    EXPECT_NE(in_handler.find(m.name()), std::string::npos) << in_handler;
}

TEST(agent, subscribing_outside_configure_and_handlers_raises_subscription_error) {
    environment env;
    mbox topic = make_mpmc_mbox(env);
    std::atomic<bool> checked{false};
    std::string from_other_agent;
    coop c(env);
    auto& target = c.make_agent<probe>();
    target.set_name("target");
    EXPECT_THROW(target.subscribe(topic, [](const ping&) {}), subscription_error);  // before configure
    auto& other = c.make_agent<probe>();
    other.on_configure = [&](probe& self) {
        self.subscribe<go>(self.direct_mbox(), [&] {
            try {
                target.subscribe(topic, [](const ping&) {});  // another agent's handler
            } catch (const subscription_error& e) {
                from_other_agent = e.what();
            }
            checked = true;
        });
    };
    mbox om = other.direct_mbox();
    register_coop(std::move(c));
    try {
        target.subscribe(topic, [](const ping&) {});  // a foreign thread after registration
        ADD_FAILURE() << "subscribed from a foreign thread";
    } catch (const subscription_error& e) {
        EXPECT_NE(std::string(e.what()).find("target"), std::string::npos) << e.what();
    }
    EXPECT_THROW(target.unsubscribe<ping>(topic), subscription_error);
    send<go>(om);
    ASSERT_TRUE(test::wait_set(checked));
    EXPECT_NE(from_other_agent.find("target"), std::string::npos) << from_other_agent;
}

TEST(agent, subscribing_to_another_agents_direct_mbox_raises) {
    environment env;
    coop c(env);
    auto& a = c.make_agent<probe>();
    auto& b = c.make_agent<probe>();
    std::string error;
    bool own_ok = false;
    b.on_configure = [&](probe& self) {
        try {
            self.subscribe(a.direct_mbox(), [](const ping&) {});
        } catch (const subscription_error& e) {
            error = e.what();
        }
        self.subscribe(self.direct_mbox(), [](const ping&) {});
        own_ok = true;
    };
    register_coop(std::move(c));
    EXPECT_TRUE(own_ok);
    EXPECT_NE(error.find(a.direct_mbox().name()), std::string::npos) << error;
}

TEST(agent, subscribing_to_a_session_inbox_address_raises_subscription_error_naming_inbox_and_agent) {
    // An inbox's address is a direct mbox that no agent owns: it delivers only to its
    // session's callback. Subscribing an agent to it is misuse, reported as such.
    environment env;
    session s(env, {.name = "replies"});
    auto in = s.add_inbox<ping>([](const ping&) {});
    const mbox address = in.address();
    std::string error;
    bool raised = false;
    test::add_probe(env, [&](probe& p) {
        p.set_name("bob");
        try {
            p.subscribe(address, [](const ping&) {});
        } catch (const subscription_error& e) {
            raised = true;
            error = e.what();
        }
    });
    EXPECT_TRUE(raised);
    EXPECT_NE(error.find("bob"), std::string::npos) << error;
    EXPECT_NE(error.find(address.name()), std::string::npos) << error;
    // The reason, not the misleading "another agent's direct mbox".
    EXPECT_NE(error.find("the address of an inbox"), std::string::npos) << error;
    EXPECT_EQ(error.find("another agent"), std::string::npos) << error;
}

TEST(agent, subscribing_to_an_mbox_of_another_environment_raises) {
    environment env, other;
    mbox foreign = make_mpmc_mbox(other);
    bool raised = false;
    test::add_probe(env, [&](probe& p) {
        try {
            p.subscribe(foreign, [](const ping&) {});
        } catch (const subscription_error&) {
            raised = true;
        }
    });
    EXPECT_TRUE(raised);
}

// ---- guarantee 6: a direct send to a gone agent is counted ----

TEST(agent, a_direct_send_to_an_agent_that_is_gone_is_counted_lost) {
    environment env;
    std::atomic<int> handled{0};
    std::atomic<bool> gone{false};
    coop_options o;
    o.on_deregistered = [&](std::string_view, dereg_reason) { gone = true; };
    coop c(env, std::move(o));
    auto& p = c.make_agent<probe>();
    p.on_configure = [&](probe& self) { self.subscribe(self.direct_mbox(), [&](const ping&) { ++handled; }); };
    mbox m = p.direct_mbox();
    auto h = register_coop(std::move(c));
    send<ping>(m, 1);
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 1; }));
    h.deregister();
    ASSERT_TRUE(test::wait_set(gone));
    EXPECT_FALSE(h);
    // The core may be recycled by a new agent: the old mbox must still not reach it.
    std::atomic<int> newcomer{0};
    test::add_probe(env, [&](probe& self) { self.subscribe(self.direct_mbox(), [&](const ping&) { ++newcomer; }); });
    for (int i = 0; i < 5; ++i) send<ping>(m, i);
    auto s = env.stats();
    EXPECT_EQ(s.messages_lost, 5u);
    // Every loss was first counted sent: the counters account for every message.
    EXPECT_EQ(s.messages_sent, s.messages_delivered + s.messages_lost + s.messages_ignored +
                                   s.messages_discarded + s.messages_cancelled + s.messages_dropped);
    EXPECT_EQ(handled.load(), 1);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(newcomer.load(), 0);
}

// ---- exception policies ----

struct policy_case {
    const char* name;
    exception_policy env_policy, coop_policy, agent_policy;
};

class agent_policy : public testing::TestWithParam<policy_case> {};

TEST_P(agent_policy, log_and_continue_logs_counts_and_goes_on) {
    const auto& pc = GetParam();
    std::mutex mu;
    std::vector<std::string> logged;
    environment_options eo;
    eo.on_exception = pc.env_policy;
    eo.log = [&](std::string_view s) {
        std::lock_guard g(mu);
        logged.emplace_back(s);
    };
    environment env(std::move(eo));
    std::atomic<int> handled{0};
    mbox m = test::add_probe(env, [&](probe& p) {
        p.set_name("thrower");
        if (pc.agent_policy != exception_policy::inherit) p.set_exception_policy(pc.agent_policy);
        p.subscribe(p.direct_mbox(), [&](const ping& x) {
            ++handled;
            if (x.n == 1) throw std::runtime_error("boom-one");
        });
    },
                             {.on_exception = pc.coop_policy});
    send<ping>(m, 1);
    send<ping>(m, 2);
    ASSERT_TRUE(test::eventually([&] { return handled.load() == 2; }));
    EXPECT_EQ(env.stats().handler_exceptions, 1u);
    std::lock_guard g(mu);
    ASSERT_EQ(logged.size(), 1u);
    EXPECT_NE(logged[0].find("boom-one"), std::string::npos) << logged[0];
    EXPECT_NE(logged[0].find("thrower"), std::string::npos) << logged[0];
}

INSTANTIATE_TEST_SUITE_P(
    levels, agent_policy,
    testing::Values(policy_case{"agent", exception_policy::abort, exception_policy::abort,
                                exception_policy::log_and_continue},
                    policy_case{"coop", exception_policy::abort, exception_policy::log_and_continue,
                                exception_policy::inherit},
                    policy_case{"env", exception_policy::log_and_continue, exception_policy::inherit,
                                exception_policy::inherit}),
    [](const testing::TestParamInfo<policy_case>& i) { return std::string(i.param.name); });

TEST(agent, deregister_coop_policy_deregisters_with_handler_exception) {
    environment_options eo;
    eo.log = [](std::string_view) {};
    environment env(std::move(eo));
    std::atomic<bool> gone{false};
    std::atomic<int> reason{-1};
    std::atomic<int> finished{0};
    std::atomic<int> handled{0};
    coop_options o;
    o.on_exception = exception_policy::deregister_coop;
    o.on_deregistered = [&](std::string_view, dereg_reason r) {
        reason = static_cast<int>(r);
        gone = true;
    };
    coop c(env, std::move(o));
    auto& a = c.make_agent<probe>();
    a.on_configure = [&](probe& p) {
        p.subscribe(p.direct_mbox(), [&](const ping&) {
            ++handled;
            throw std::logic_error("bad");
        });
    };
    a.on_finish_fn = [&](probe&) { ++finished; };
    auto& b = c.make_agent<probe>();
    b.on_finish_fn = [&](probe&) { ++finished; };
    mbox m = a.direct_mbox();
    auto h = register_coop(std::move(c));
    send<ping>(m, 1);
    ASSERT_TRUE(test::wait_set(gone));
    EXPECT_EQ(reason.load(), static_cast<int>(dereg_reason::handler_exception));
    EXPECT_EQ(finished.load(), 2);
    EXPECT_EQ(handled.load(), 1);
    EXPECT_FALSE(h);
    EXPECT_EQ(env.stats().handler_exceptions, 1u);
}

TEST(agent_death, abort_policy_aborts_the_process) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            environment env({.name = "doomed"});  // abort is the default
            mbox m = test::add_probe(env, [](probe& p) {
                p.set_name("kamikaze");
                p.subscribe(p.direct_mbox(), [](const ping&) { throw std::runtime_error("fatal-boom"); });
            });
            send<ping>(m, 1);
            std::this_thread::sleep_for(20s);
        },
        "kamikaze.*fatal-boom");
}

TEST(agent_death, abort_policy_set_on_the_agent_overrides_the_environment) {
    testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            environment env({.on_exception = exception_policy::log_and_continue});
            mbox m = test::add_probe(env, [](probe& p) {
                p.set_exception_policy(exception_policy::abort);
                p.subscribe(p.direct_mbox(), [](const ping&) { throw std::runtime_error("agent-level"); });
            });
            send<ping>(m, 1);
            std::this_thread::sleep_for(20s);
        },
        "agent-level");
}

// ---- what a worker reports ----

class blocker final : public agent {
public:
    blocker(std::atomic<bool>& started, std::atomic<bool>& release) : started_(started), release_(release) {}

protected:
    void configure() override {
        subscribe<go>(direct_mbox(), [this] {
            started_ = true;
            test::wait_set(release_);  // bounded: 10 s at most
        });
    }

private:
    std::atomic<bool>& started_;
    std::atomic<bool>& release_;
};

// The dispatch layer knows no agents: the agent layer names its kind of context, and a busy
// worker's stats carry that name, the context's id and the message type it handles.
TEST(agent, worker_stats_name_the_agent_a_busy_worker_runs_and_the_message_type) {
    environment env;
    std::atomic<bool> started{false}, release{false};
    mbox to = register_agent<blocker>(env, started, release);
    send<go>(to);
    ASSERT_TRUE(test::wait_set(started));
    const dispatcher_stats st = env.default_dispatcher().stats();
    ASSERT_EQ(st.workers.size(), 1u);
    const worker_stats& w = st.workers[0];
    EXPECT_TRUE(w.busy);
    EXPECT_EQ(w.running_kind, "agent");
    EXPECT_NE(w.running_id, 0u);
    EXPECT_TRUE(w.running_type == message_type_of<go>()) << readable_name(w.running_type);
    release = true;
    ASSERT_TRUE(test::eventually([&] { return !env.default_dispatcher().stats().workers[0].busy; }));
    EXPECT_EQ(env.default_dispatcher().stats().workers[0].running_kind, "");
}

}  // namespace
