// W7 for CAF 0.17: bytes per idle actor. 100k scheduled actors, each with a behavior of one
// handler (CAF's equivalent of one subscription to its own mailbox), on CAF's default
// scheduler with 2 workers. Figure: growth of the resident set size (/proc/self/statm) from
// before the first of them was spawned to after every one ran its initialisation, divided by
// the number of actors. Each repetition runs in a fresh child process so that memory freed by
// an earlier one does not hide the growth. Afterwards every actor gets one message, which must
// arrive (it then quits, so the actor system can shut down).
//
// Set-up and why it is the fair comparison: mailroom's W7 builds 100k agents with one
// subscription each to their direct mbox, after warming the runtime up with one agent; here
// the actor system is warmed up with one actor the same way, and the actors are the cheapest
// kind CAF has (event-based, scheduled), holding the same one handler.

#include "caf_common.hpp"

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W7";

struct shared_state {
    std::atomic<std::uint64_t> started{0};
    std::atomic<std::uint64_t> poked{0};
};

caf::behavior idle(caf::event_based_actor* self, shared_state* s) {
    s->started.fetch_add(1, std::memory_order_release);
    return {[=](std::uint32_t) {
        s->poked.fetch_add(1, std::memory_order_relaxed);
        self->quit();
    }};
}

// In the child process: returns bytes per actor, or fails.
double measure(std::uint64_t agents) {
    shared_state st;
    std::vector<caf::actor> all;
    all.reserve(agents);  // touched below, before the first reading
    for (std::uint64_t i = 0; i < agents; ++i) all.emplace_back();
    all.clear();
    double per_agent = 0;
    {
        caf::actor_system_config cfg;
        bench::caf_peer::configure(cfg, 2);
        caf::actor_system sys{cfg};
        {
            shared_state warm;
            auto a = sys.spawn(idle, &warm);
            while (warm.started.load() < 1) std::this_thread::yield();
            caf::anon_send(a, 0u);
            while (warm.poked.load() < 1) std::this_thread::yield();
        }
        const std::size_t before = bench::rss_bytes();
        for (std::uint64_t i = 0; i < agents; ++i) all.push_back(sys.spawn(idle, &st));
        while (st.started.load(std::memory_order_acquire) < agents) std::this_thread::yield();
        const std::size_t after = bench::rss_bytes();
        per_agent = (static_cast<double>(after) - static_cast<double>(before)) / static_cast<double>(agents);

        for (auto& a : all) caf::anon_send(a, 0u);
        for (int i = 0; i < 200'000 && st.poked.load() < agents; ++i)
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        bench::check(st.poked.load() == agents, workload,
                     std::to_string(st.poked.load()) + " of " + std::to_string(agents) + " actors got their message");
        all.clear();
    }
    return per_agent;
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t agents = o.scaled(100'000, 100);
    std::printf("W7 CAF idle actors: %llu event-based actors with one handler each, scheduler.max-threads=2\n",
                static_cast<unsigned long long>(agents));

    auto s = bench::repeat(o, "bytes/agent", [&] {
        return bench::in_child_process(workload, [&] { return measure(agents); });
    });
    bench::report(workload, "CAF idle actors, one handler each", s, "bytes_per_agent", {}, "caf");
    return 0;
}
