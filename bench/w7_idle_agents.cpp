// W7: bytes per idle agent. 100k agents, one subscription each (to their direct mbox, or with
// --mbox mpmc to one shared MPMC mbox), registered in one cooperation on the default
// dispatcher. Figure: growth of the resident set size (/proc/self/statm) from before the
// cooperation was built to after every agent started, divided by the number of agents.
// Each repetition runs in a fresh child process so that memory freed by an earlier one does
// not hide the growth. Afterwards every agent gets one message, which must arrive.

#include "harness.hpp"

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

class idle final : public mailroom::agent {
public:
    idle(mailroom::mbox topic, shared_state* s) : topic_(std::move(topic)), s_(s) {}

protected:
    void configure() override {
        subscribe(topic_ ? topic_ : direct_mbox(),
                  [this](const poke&) { s_->poked.fetch_add(1, std::memory_order_relaxed); });
    }
    void on_start() override { s_->started.fetch_add(1, std::memory_order_release); }

private:
    mailroom::mbox topic_;  // empty: the agent's own direct mbox
    shared_state* s_;
};

// In the child process: returns bytes per agent, or fails.
double measure(std::uint64_t agents, std::uint64_t coops, bool mpmc) {
    shared_state st;
    std::vector<idle*> all(agents, nullptr);  // touched now, before the first reading
    double per_agent = 0;
    {
        mailroom::environment env;
        mailroom::mbox topic = mpmc ? mailroom::make_mpmc_mbox(env) : mailroom::mbox();
        // Warm up the agent runtime and the default dispatcher with one agent.
        {
            shared_state warm;
            mailroom::coop c(env, {});
            c.make_agent<idle>(mailroom::mbox(), &warm);
            mailroom::register_coop(std::move(c)).deregister();
            while (warm.started.load() < 1) std::this_thread::yield();
        }
        const std::size_t before = bench::rss_bytes();
        std::uint64_t made = 0;
        for (std::uint64_t k = 0; k < coops; ++k) {
            mailroom::coop c(env, {});
            const std::uint64_t n = agents / coops + (k < agents % coops ? 1 : 0);
            for (std::uint64_t i = 0; i < n; ++i) all[made++] = &c.make_agent<idle>(topic, &st);
            mailroom::register_coop(std::move(c));
        }
        while (st.started.load(std::memory_order_acquire) < agents) std::this_thread::yield();
        const std::size_t after = bench::rss_bytes();
        per_agent = (static_cast<double>(after) - static_cast<double>(before)) / static_cast<double>(agents);

        // Every agent is alive and subscribed: one message each must arrive.
        if (mpmc)
            mailroom::send<poke>(topic, 0u);
        else
            for (idle* a : all) mailroom::send<poke>(a->direct_mbox(), 0u);
        for (int i = 0; i < 200'000 && st.poked.load() < agents; ++i) std::this_thread::sleep_for(std::chrono::microseconds(50));
        bench::check(st.poked.load() == agents, workload,
                     std::to_string(st.poked.load()) + " of " + std::to_string(agents) + " agents got their message");
        env.stop();
        env.join();
        auto es = env.stats();
        auto as = mailroom::agent_stats_of(env);
        bench::check_stats(workload, es, agents);
        bench::check(as.agents_created == agents + 1 && as.agents_destroyed == agents + 1, workload,
                     "created " + std::to_string(as.agents_created) + ", destroyed " +
                         std::to_string(as.agents_destroyed) + ", expected " + std::to_string(agents + 1));
    }
    return per_agent;
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"mbox", "direct|mpmc"}, {"coops", "N"}};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t agents = o.scaled(100'000, 100);
    const auto coops = static_cast<std::uint64_t>(std::max(1L, o.get_long("coops", 1)));
    const std::string kind = o.get("mbox", "direct");
    if (kind != "direct" && kind != "mpmc") bench::usage(argv[0], extras);
    std::printf("W7 idle agents: %llu agents in %llu cooperation(s), one subscription each to %s\n",
                static_cast<unsigned long long>(agents), static_cast<unsigned long long>(coops),
                kind == "direct" ? "their direct mbox" : "one shared MPMC mbox");

    auto s = bench::repeat(o, "bytes/agent", [&] {
        return bench::in_child_process(workload, [&] { return measure(agents, coops, kind == "mpmc"); });
    });
    bench::report(workload, "idle agents, one subscription each (" + kind + ")", s, "bytes_per_agent");
    return 0;
}
