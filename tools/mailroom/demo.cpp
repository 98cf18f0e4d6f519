// `mailroom demo`: a feed publishes quotes on a named topic to many subscribers on a thread pool,
// while cooperations come and go from the main thread, sessions with timers, inboxes and
// subscriptions come and go from another thread, delayed messages are armed and cancelled,
// requesters ask the named objects "pricer" and "risk" while a third thread registers and
// unregisters "risk", a slow tape records quotes behind a drop limit, a circuit breaker (a state
// machine with a time limit) trips and recovers, a plain thread feeds an mchain that a session
// drains, a plain thread writes lines into socketpairs that fd watchers on an event loop pool
// read and publish, an agent keeps a job queue busy with blocking work while turning its knobs,
// one deliberately slow handler is reported by the watchdog with its stack, and a reporter
// prints a live progress line. At the end the environment's
// own statistics must show that nothing leaked, every message is accounted for and every
// request reached a final state.

#include "demo.hpp"

#include "demo_agents.hpp"
#include "demo_flow.hpp"
#include "demo_io.hpp"
#include "demo_metrics.hpp"
#include "demo_named.hpp"
#include "demo_nodes.hpp"
#include "demo_report.hpp"
#include "demo_sessions.hpp"

#include <mailroom/core/clock.hpp>
#include <mailroom/mailroom.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <variant>

namespace mailroom::tool {

namespace {

using namespace std::chrono_literals;

struct demo_options {
    int seconds = 10;
    int subscribers = 64;
    bool quiet = false;
    bool nodes = false;  // the pricing object in a second process
};

constexpr std::size_t pool_threads = 2;
constexpr int subscribers_per_coop = 16;
constexpr int churn_agents_per_coop = 4;
constexpr std::size_t churn_coops_alive = 5;
constexpr auto churn_period = 100ms;

void print_usage(std::FILE* to) {
    std::fprintf(to,
                 "usage: mailroom demo [--seconds N] [--subscribers N] [--quiet] [--nodes]\n"
                 "\n"
                 "Runs a quote feed through the whole library and checks the books at the end.\n"
                 "\n"
                 "  --seconds N       how long to run (default 10)\n"
                 "  --subscribers N   steady subscribers of the quote topic (default 64)\n"
                 "  --quiet           no progress line, only the final report\n"
                 "  --nodes           also ask a pricing object in a second process: the demo starts\n"
                 "                    'mailroom node --serve pricing' itself and reaches it over tcp\n"
                 "                    loopback; the report counts those requests on both sides\n"
                 "  --help            this text\n"
                 "\n"
                 "Exit code 0 when every check of the final report passed, 1 otherwise, 2 on bad usage.\n");
}

std::optional<int> parse_positive(const char* text) {
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || v <= 0 || v > 1'000'000) return std::nullopt;
    return static_cast<int>(v);
}

// Returns the options, or the exit code when the program should stop here.
std::variant<demo_options, int> parse_options(int argc, char** argv) {
    demo_options o;
    for (int i = 0; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            print_usage(stdout);
            return 0;
        }
        if (arg == "--quiet" || arg == "-q") {
            o.quiet = true;
            continue;
        }
        if (arg == "--nodes") {
            o.nodes = true;
            continue;
        }
        int* target = arg == "--seconds" ? &o.seconds : arg == "--subscribers" ? &o.subscribers : nullptr;
        std::optional<int> value = target && i + 1 < argc ? parse_positive(argv[i + 1]) : std::nullopt;
        if (!value) {
            std::fprintf(stderr, "mailroom demo: %s '%s'\n\n", target ? "bad value for" : "unknown option",
                         arg.c_str());
            print_usage(stderr);
            return 2;
        }
        *target = *value;
        ++i;
    }
    return o;
}

// The steady subscribers, in cooperations of 16 on the pool.
void register_subscribers(environment& env, const dispatcher& pool, const mbox& quotes, int count,
                          demo_metrics& metrics) {
    for (int first = 0, desk = 1; first < count; first += subscribers_per_coop, ++desk) {
        coop_options o;
        o.name = "desk-" + std::to_string(desk);
        o.bind = pool.bind();
        introduce_coop(env, std::move(o), [&](coop& c) {
            for (int i = first; i < std::min(count, first + subscribers_per_coop); ++i)
                c.make_agent<subscriber>(quotes, subscriber::kind::steady, metrics);
        });
    }
}

/// Cooperations of short-lived subscribers, made and dropped from a thread that is not one of
/// the environment's: every `churn_period` one more child of the "churn" cooperation, and the
/// oldest one goes once more than `churn_coops_alive` are up.
class churn {
public:
    churn(environment& env, coop_handle parent, dispatcher pool, mbox quotes, demo_metrics& metrics)
        : env_(env), parent_(std::move(parent)), pool_(std::move(pool)), quotes_(std::move(quotes)),
          metrics_(metrics) {}

    /// Runs until the environment stops.
    void run() {
        while (!env_.stopping() && step()) std::this_thread::sleep_for(churn_period);
    }

private:
    // False once the environment began to stop under our feet.
    bool step() {
        try {
            alive_.push_back(introduce_coop(env_, options(), [&](coop& c) {
                for (int i = 0; i < churn_agents_per_coop; ++i)
                    c.make_agent<subscriber>(quotes_, subscriber::kind::transient, metrics_);
            }));
        } catch (const environment_stopped_error&) {
            return false;
        } catch (const usage_error&) {
            // The parent is being deregistered: the environment is stopping.
            if (env_.stopping()) return false;
            throw;
        }
        metrics_.churn_coops_registered.fetch_add(1, std::memory_order_relaxed);
        if (alive_.size() > churn_coops_alive) {
            alive_.front().deregister();
            alive_.pop_front();
        }
        return true;
    }

    coop_options options() {
        coop_options o;
        o.name = "churn-" + std::to_string(++made_);
        o.bind = pool_.bind();
        o.parent = parent_;
        o.on_deregistered = [&m = metrics_](std::string_view, dereg_reason) {
            m.churn_coops_deregistered.fetch_add(1, std::memory_order_relaxed);
        };
        return o;
    }

    environment& env_;
    coop_handle parent_;
    dispatcher pool_;
    mbox quotes_;
    demo_metrics& metrics_;
    std::deque<coop_handle> alive_;
    std::uint64_t made_ = 0;
};

environment_options environment_settings() {
    environment_options o;
    o.name = "demo";
    // A throwing handler is counted and reported by the verdict, not fatal.
    o.on_exception = exception_policy::log_and_continue;
    return o;
}

// The parent of the churned cooperations; its own agent is the timekeeper.
coop_handle register_churn_parent(environment& env, demo_metrics& metrics) {
    coop_options o;
    o.name = "churn";
    return introduce_coop(env, std::move(o), [&](coop& c) { c.make_agent<timekeeper>(metrics); });
}

// The feed gets a thread of its own (active_obj), so publishing never waits for a pool worker.
mbox register_feed(environment& env, const dispatcher& pool, const mbox& quotes, int subscribers,
                   demo_metrics& metrics) {
    feed_options settings;
    settings.quotes = quotes;
    settings.subscribers_pool = pool;
    settings.fan_out =
        static_cast<std::size_t>(subscribers) + churn_coops_alive * churn_agents_per_coop + flow_pool_subscribers;
    coop_options o;
    o.name = "feed";
    o.bind = active_obj::make_dispatcher(env, "feed").bind();
    mbox feed_mbox;
    introduce_coop(env, std::move(o),
                   [&](coop& c) { feed_mbox = c.make_agent<feed>(settings, metrics).direct_mbox(); });
    return feed_mbox;
}

// On the default dispatcher, with the timekeeper: neither has much to do.
void register_reporter(environment& env, const mbox& feed_mbox, const mbox& requests, int seconds,
                       progress_printer& printer, demo_metrics& metrics) {
    coop_options o;
    o.name = "reporter";
    introduce_coop(env, std::move(o), [&](coop& c) {
        c.make_agent<reporter>(reporter_options{feed_mbox, requests, seconds, &env}, printer, metrics);
    });
}

int run(const demo_options& options) {
    // Declared before the environment, so they outlive it: agents use them until destroyed.
    demo_metrics metrics;
    progress_printer printer(metrics, options.quiet);
    environment env(environment_settings());
    // --nodes: the second process and the node that reaches it, first: if they do not come up,
    // nothing else was started yet.
    std::unique_ptr<remote_pricing> remote;
    if (options.nodes) remote = std::make_unique<remote_pricing>(env, "/proc/self/exe");

    auto pool = thread_pool::make_dispatcher(env, "pool", {.threads = pool_threads, .order = thread_pool::fifo::agent});
    auto quotes = make_named_mbox(env, "quotes");
    // Subscribers before the feed, so that the steady ones see every quote from the first.
    register_subscribers(env, pool, quotes, options.subscribers, metrics);
    const coop_handle churn_parent = register_churn_parent(env, metrics);
    flow_demo flow(env, pool, quotes, metrics);  // its chain's thread on a thread of its own
    const mbox feed_mbox = register_feed(env, pool, quotes, options.subscribers, metrics);
    named_traffic requests(env, pool, quotes, metrics,
                           remote ? remote->target() : std::string());  // on a thread of its own
    io_demo io(env, pool);                               // its writer on a thread of its own
    register_reporter(env, feed_mbox, requests.control(), options.seconds, printer, metrics);

    const std::int64_t started = now_ns();
    session_churn sessions(env, pool, quotes, metrics);  // on a thread of its own
    churn(env, churn_parent, pool, quotes, metrics).run();
    env.join();  // the reporter stops the environment when the time is up
    const std::int64_t joined = now_ns();
    sessions.join();
    requests.join();
    flow.join();
    io.join();

    run_summary summary;
    summary.seconds = static_cast<double>(joined - started) / 1e9;
    summary.steady_subscribers = options.subscribers;
    summary.pool_threads = pool_threads;
    summary.ticks = flow.chain_stats();
    summary.io = io.report();
    const std::int64_t stop_requested = metrics.stop_requested_ns.load();
    summary.shutdown_ns = stop_requested > 0 ? joined - stop_requested : 0;
    if (remote) summary.nodes = remote->finish();
    const demo_stats final_stats = snapshot_stats(env);
    return print_report(summary, final_stats, metrics, evaluate(summary, final_stats, metrics)) ? 0 : 1;
}

}  // namespace

int run_demo(int argc, char** argv) {
    auto parsed = parse_options(argc, argv);
    if (const int* exit_code = std::get_if<int>(&parsed)) return *exit_code;
    try {
        return run(std::get<demo_options>(parsed));
    } catch (const mailroom::error& e) {
        std::fprintf(stderr, "mailroom demo: %s\n", e.what());
        return 1;
    }
}

}  // namespace mailroom::tool
