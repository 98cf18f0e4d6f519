// W7 for SObjectizer 5.8: bytes per idle agent. 100k agents, each with one subscription (to
// its own direct mbox), registered in one cooperation on the environment's default dispatcher.
// Figure: growth of the resident set size (/proc/self/statm) from before the cooperation was
// built to after every agent started, divided by the number of agents. Each repetition runs in
// a fresh child process so that memory freed by an earlier one does not hide the growth.
// Afterwards every agent gets one message, which must arrive.
//
// Set-up and why it is the fair comparison: mailroom's W7 builds 100k agents with one
// subscription each to their direct mbox, in one cooperation on the default dispatcher, after
// warming the runtime up with one agent. Here the same: the environment is warmed up with one
// agent registered and deregistered, then one cooperation of 100k agents on SObjectizer's
// default dispatcher (one_thread), each subscribed to its direct mbox with one handler, the
// cheapest agent SObjectizer has with a subscription. Its default subscription storage (the
// adaptive one, a small vector for a few subscriptions) and default queue lock are kept:
// nothing differs from SObjectizer's defaults.

#include "so5_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W7";

struct poke {
    std::uint32_t n;
};

struct shared_state {
    std::atomic<std::uint64_t> started{0};
    std::atomic<std::uint64_t> poked{0};
};

class idle final : public so_5::agent_t {
public:
    idle(context_t ctx, shared_state* s) : so_5::agent_t(std::move(ctx)), s_(s) {}

    void so_define_agent() override {
        so_subscribe_self().event([this](so_5::mhood_t<poke>) { s_->poked.fetch_add(1, std::memory_order_relaxed); });
    }
    void so_evt_start() override { s_->started.fetch_add(1, std::memory_order_release); }

private:
    shared_state* s_;
};

// In the child process: returns bytes per agent, or fails.
double measure(std::uint64_t agents) {
    shared_state st;
    std::vector<so_5::mbox_t> all(agents);  // touched now, before the first reading
    double per_agent = 0;
    {
        so_5::wrapped_env_t env;
        so_5::environment_t& e = env.environment();
        // Warm up the agent runtime and the default dispatcher with one agent.
        {
            shared_state warm;
            auto c = e.make_coop();
            c->make_agent<idle>(&warm);
            auto h = e.register_coop(std::move(c));
            while (warm.started.load() < 1) std::this_thread::yield();
            e.deregister_coop(h, so_5::dereg_reason::normal);
        }
        const std::size_t before = bench::rss_bytes();
        e.introduce_coop([&](so_5::coop_t& c) {
            for (std::uint64_t i = 0; i < agents; ++i) all[i] = c.make_agent<idle>(&st)->so_direct_mbox();
        });
        while (st.started.load(std::memory_order_acquire) < agents) std::this_thread::yield();
        const std::size_t after = bench::rss_bytes();
        per_agent = (static_cast<double>(after) - static_cast<double>(before)) / static_cast<double>(agents);

        // Every agent is alive and subscribed: one message each must arrive.
        for (auto& m : all) so_5::send<poke>(m, 0u);
        for (int i = 0; i < 200'000 && st.poked.load() < agents; ++i)
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        bench::check(st.poked.load() == agents, workload,
                     std::to_string(st.poked.load()) + " of " + std::to_string(agents) + " agents got their message");
        all.clear();
        env.stop_then_join();
    }
    return per_agent;
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t agents = o.scaled(100'000, 100);
    std::printf("W7 SObjectizer idle agents: %llu agents in one cooperation on the default dispatcher, one "
                "subscription each to their direct mbox\n",
                static_cast<unsigned long long>(agents));

    auto s = bench::repeat(o, "bytes/agent", [&] {
        return bench::in_child_process(workload, [&] { return measure(agents); });
    });
    bench::report(workload, "SObjectizer idle agents, one subscription each", s, "bytes_per_agent", {}, "sobjectizer");
    return 0;
}
