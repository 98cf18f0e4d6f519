// W5: skynet. A root agent creates a child cooperation of 10 agents when it starts; each of
// them does the same, down to 6 levels below the root (1,111,111 agents, 111,111
// cooperations). Each leaf replies with its ordinal (0 .. 999,999), each parent sums its 10
// children's replies, replies with the sum and deregisters its child cooperation. Figure: ms
// from registering the root to the root's sum. The sum must be n*(n-1)/2 with n = 10^6.
//
// --scale picks the depth: 6 + round(log10(scale)) levels (0.1 -> 5 levels, 111,111 agents).

#include "harness.hpp"

#include <cmath>

namespace {

constexpr const char* workload = "W5";

struct result {
    std::uint64_t value;
};

struct context {
    mailroom::binder bind;
    unsigned depth = 6;
    std::int64_t t1 = 0;
    std::uint64_t sum = 0;
    bool done = false;
};

class node final : public mailroom::agent {
public:
    node(context* ctx, unsigned level, std::uint64_t ordinal, mailroom::mbox parent)
        : ctx_(ctx), level_(level), ordinal_(ordinal), parent_(std::move(parent)) {}

protected:
    void configure() override {
        if (level_ == ctx_->depth) return;  // a leaf only replies
        subscribe(direct_mbox(), [this](const result& r) {
            sum_ += r.value;
            if (++replies_ < 10) return;
            children_.deregister();
            if (level_ == 0) {
                ctx_->t1 = bench::now_ns();
                ctx_->sum = sum_;
                ctx_->done = true;
                stop_environment();
            } else {
                mailroom::send<result>(parent_, sum_);
            }
        });
    }

    void on_start() override {
        if (level_ == ctx_->depth) {
            mailroom::send<result>(parent_, ordinal_);
            return;
        }
        mailroom::coop_options opts;
        opts.bind = ctx_->bind;
        mailroom::coop c(env(), std::move(opts));
        for (std::uint64_t i = 0; i < 10; ++i) c.make_agent<node>(ctx_, level_ + 1, ordinal_ * 10 + i, direct_mbox());
        children_ = mailroom::register_coop(std::move(c));
    }

private:
    context* ctx_;
    unsigned level_;
    std::uint64_t ordinal_;
    mailroom::mbox parent_;
    std::uint64_t sum_ = 0;
    unsigned replies_ = 0;
    mailroom::coop_handle children_;
};

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{{"threads", "N"}, {"fifo", "cooperation|agent"}};
    auto o = bench::parse(argc, argv, extras);
    const auto depth = static_cast<unsigned>(std::max(1L, std::lround(6 + std::log10(o.scale))));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::string fifo = o.get("fifo", "cooperation");
    if (fifo != "cooperation" && fifo != "agent") bench::usage(argv[0], extras);
    std::uint64_t leaves = 1, agents = 0, coops = 0;
    for (unsigned l = 0; l <= depth; ++l) {
        agents += leaves;
        if (l < depth) coops += leaves;
        if (l < depth) leaves *= 10;
    }
    ++coops;  // the root's own
    const std::uint64_t expected = leaves * (leaves - 1) / 2;
    std::printf("W5 skynet: %u levels below the root, %llu agents, %llu cooperations, %zu-thread thread_pool (fifo::%s)\n",
                depth, static_cast<unsigned long long>(agents), static_cast<unsigned long long>(coops), threads,
                fifo.c_str());

    auto s = bench::repeat(o, "ms", [&] {
        context ctx;
        ctx.depth = depth;
        std::int64_t t0 = 0, t_end = 0;
        {
            mailroom::environment env;
            mailroom::thread_pool::params p;
            p.threads = threads;
            p.order = fifo == "agent" ? mailroom::thread_pool::fifo::agent : mailroom::thread_pool::fifo::cooperation;
            ctx.bind = mailroom::thread_pool::make_dispatcher(env, "pool", p).bind();
            mailroom::coop_options opts;
            opts.bind = ctx.bind;
            t0 = bench::now_ns();
            mailroom::coop root(env, std::move(opts));
            root.make_agent<node>(&ctx, 0u, std::uint64_t{0}, mailroom::mbox());
            mailroom::register_coop(std::move(root));
            env.join();
            t_end = bench::now_ns();
            auto st = env.stats();
            auto as = mailroom::agent_stats_of(env);
            bench::check_stats(workload, st, agents - 1);
            bench::check(as.agents_created == agents && as.coops_registered == coops, workload,
                         "created " + std::to_string(as.agents_created) + " agents in " +
                             std::to_string(as.coops_registered) + " cooperations, expected " + std::to_string(agents) +
                             " in " + std::to_string(coops));
            bench::check(as.agents_destroyed == agents, workload,
                         std::to_string(as.agents_destroyed) + " of " + std::to_string(agents) + " agents destroyed");
        }
        bench::check(ctx.done, workload, "the root never got its sum");
        bench::check(ctx.sum == expected, workload,
                     "sum " + std::to_string(ctx.sum) + ", expected " + std::to_string(expected));
        std::printf("  (sum %llu correct; shutdown took another %.1f ms)\n", static_cast<unsigned long long>(ctx.sum),
                    static_cast<double>(t_end - ctx.t1) / 1e6);
        return static_cast<double>(ctx.t1 - t0) / 1e6;
    });
    bench::report(workload, "skynet, " + std::to_string(agents) + " agents", s, "ms");
    return 0;
}
