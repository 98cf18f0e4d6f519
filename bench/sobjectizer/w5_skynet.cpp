// W5 for SObjectizer 5.8: skynet. A root agent registers a child cooperation of 10 agents when
// it starts; each of them does the same, down to 6 levels below the root (1,111,111 agents,
// 111,111 cooperations). Each leaf replies with its ordinal (0 .. 999,999), each parent sums its
// 10 children's replies, replies with the sum and deregisters its child cooperation. Figure: ms
// from registering the root to the root's sum. The sum must be n*(n-1)/2 with n = 10^6, and the
// count of agents (carried up with the sums) must be 1,111,111.
//
// Set-up and why it is the fair comparison: mailroom runs skynet on a 2-thread thread_pool with
// a child cooperation per parent (fifo::cooperation by default). SObjectizer has the same
// pieces: a thread_pool dispatcher with thread_count(2), one binder with fifo_t::cooperation
// (SObjectizer's default: the agents of one cooperation share a queue) used by every
// cooperation, so_5::create_child_coop + register_coop for the children (a parent's
// deregistration would take its children with it, as in mailroom), deregister_coop once the
// sums are in. Replies go to the parent's direct mbox. Queue lock: the combined one,
// SObjectizer's default: the two pool threads are the only busy ones, and a spin that finds
// the next demand saves a wake-up (`--lock simple` for the other). `--fifo individual` gives
// each agent its own queue, as mailroom's `--fifo agent`. Nothing else differs from
// SObjectizer's defaults.
//
// --scale picks the depth: 6 + round(log10(scale)) levels (0.1 -> 5 levels, 111,111 agents).

#include "so5_common.hpp"

#include <cmath>

namespace {

constexpr const char* workload = "W5";

struct result {
    std::uint64_t sum;
    std::uint64_t agents;  // in the subtree of the agent replying, itself included
};

struct context {
    so_5::disp_binder_shptr_t bind;
    unsigned depth = 6;
    std::int64_t t1 = 0;
    std::uint64_t sum = 0, agents = 0;
    bool done = false;
};

class node final : public so_5::agent_t {
public:
    node(context_t c, context* ctx, unsigned level, std::uint64_t ordinal, so_5::mbox_t parent)
        : so_5::agent_t(std::move(c)), ctx_(ctx), level_(level), ordinal_(ordinal), parent_(std::move(parent)) {}

    void so_define_agent() override {
        if (level_ == ctx_->depth) return;  // a leaf only replies
        so_subscribe_self().event([this](so_5::mhood_t<result> r) {
            sum_ += r->sum;
            agents_ += r->agents;
            if (++replies_ < 10) return;
            so_environment().deregister_coop(children_, so_5::dereg_reason::normal);
            if (level_ == 0) {
                ctx_->t1 = bench::now_ns();
                ctx_->sum = sum_;
                ctx_->agents = agents_;
                ctx_->done = true;
                so_environment().stop();
            } else {
                so_5::send<result>(parent_, sum_, agents_);
            }
        });
    }

    void so_evt_start() override {
        if (level_ == ctx_->depth) {
            so_5::send<result>(parent_, ordinal_, std::uint64_t{1});
            return;
        }
        auto c = so_5::create_child_coop(*this, ctx_->bind);
        for (std::uint64_t i = 0; i < 10; ++i)
            c->make_agent<node>(ctx_, level_ + 1, ordinal_ * 10 + i, so_direct_mbox());
        children_ = so_environment().register_coop(std::move(c));
    }

private:
    context* ctx_;
    unsigned level_;
    std::uint64_t ordinal_;
    so_5::mbox_t parent_;
    std::uint64_t sum_ = 0, agents_ = 1;
    unsigned replies_ = 0;
    so_5::coop_handle_t children_;
};

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag, {"threads", "N"}, {"fifo", "cooperation|individual"}};
    auto o = bench::parse(argc, argv, extras);
    const auto depth = static_cast<unsigned>(std::max(1L, std::lround(6 + std::log10(o.scale))));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    const std::string fifo = o.get("fifo", "cooperation");
    if (fifo != "cooperation" && fifo != "individual") bench::usage(argv[0], extras);
    const lock_kind lock = lock_from(o, lock_kind::combined, argv[0], extras);
    std::uint64_t leaves = 1, agents = 0, coops = 0;
    for (unsigned l = 0; l <= depth; ++l) {
        agents += leaves;
        if (l < depth) coops += leaves;
        if (l < depth) leaves *= 10;
    }
    ++coops;  // the root's own
    const std::uint64_t expected = leaves * (leaves - 1) / 2;
    std::printf("W5 SObjectizer skynet: %u levels below the root, %llu agents, %llu cooperations, %zu-thread "
                "thread_pool (fifo %s), %s lock\n",
                depth, static_cast<unsigned long long>(agents), static_cast<unsigned long long>(coops), threads,
                fifo.c_str(), to_string(lock));

    auto s = bench::repeat(o, "ms", [&] {
        context ctx;
        ctx.depth = depth;
        std::int64_t t0 = 0, t_end = 0;
        {
            namespace tp = so_5::disp::thread_pool;
            so_5::wrapped_env_t env{[](so_5::environment_t&) {},
                                    [&](so_5::environment_params_t& params) { use_lock(params, lock); }};
            so_5::environment_t& e = env.environment();
            ctx.bind = tp::make_dispatcher(e, threads)
                           .binder(tp::bind_params_t{}.fifo(fifo == "cooperation" ? tp::fifo_t::cooperation
                                                                                  : tp::fifo_t::individual));
            t0 = bench::now_ns();
            e.introduce_coop(ctx.bind, [&](so_5::coop_t& c) {
                c.make_agent<node>(&ctx, 0u, std::uint64_t{0}, so_5::mbox_t{});
            });
            env.join();  // the root stops the environment when it has its sum
            t_end = bench::now_ns();
            ctx.bind.reset();
        }
        bench::check(ctx.done, workload, "the root never got its sum");
        bench::check(ctx.sum == expected, workload,
                     "sum " + std::to_string(ctx.sum) + ", expected " + std::to_string(expected));
        bench::check(ctx.agents == agents, workload,
                     std::to_string(ctx.agents) + " agents reported, expected " + std::to_string(agents));
        std::printf("  (sum %llu correct; shutdown took another %.1f ms)\n", static_cast<unsigned long long>(ctx.sum),
                    static_cast<double>(t_end - ctx.t1) / 1e6);
        return static_cast<double>(ctx.t1 - t0) / 1e6;
    });
    bench::report(workload, "SObjectizer skynet, " + std::to_string(agents) + " agents", s, "ms", {}, "sobjectizer");
    return 0;
}
