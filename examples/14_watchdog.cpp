// The run-time watchdog: a dispatcher whose handlers may run 50 ms at most, with a callback for
// its reports. An agent's handler that blocks for 200 ms is reported while it still blocks: the
// report names the agent, its cooperation and the message type, and comes on the watchdog's own
// thread, not on the stalled one. Then the same blocking work is done properly: posted to a job
// queue, its completion back on the agent, and nothing is reported. See docs/watchdog.md.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int kernel_thread_id() { return static_cast<int>(::syscall(SYS_gettid)); }

long long ms(std::chrono::nanoseconds d) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

struct load_file {
    std::string path;
};
struct load_file_in_background {
    std::string path;
};

// A synchronous read that takes its time (a slow disk, a network file system).
std::size_t slow_read(const std::string& path) {
    std::this_thread::sleep_for(200ms);
    return path.size() * 1000;
}

// What the watchdog's callback saw, written on the watchdog's thread, read by main().
struct stall_log {
    std::mutex m;
    std::vector<mailroom::stall_report> reports;
    std::vector<bool> handler_still_running;  // per report: was the handler still blocking?
    std::vector<int> reported_on;             // per report: the kernel thread id on_stall ran on
};

class loader final : public mailroom::agent {
public:
    loader(mailroom::job_queue::handle jobs) : jobs_(std::move(jobs)) { set_name("loader"); }

    std::atomic<bool> blocking{false};    // read by the watchdog's callback
    std::atomic<int> blocking_thread{0};  // the kernel thread id the blocking handler ran on
    std::atomic<std::size_t> loaded{0};   // read by main()
    std::atomic<int> loaded_in_background{0};
    std::atomic<std::chrono::nanoseconds> blocked_for{};  // how long the blocking handler blocked

protected:
    void configure() override {
        // Wrong: blocking on the dispatcher's thread holds every context bound there.
        subscribe(direct_mbox(), [this](const load_file& m) {
            blocking_thread = kernel_thread_id();
            blocking = true;
            const auto t0 = std::chrono::steady_clock::now();
            loaded += slow_read(m.path);
            blocked_for = std::chrono::steady_clock::now() - t0;
            blocking = false;
        });
        // Right: the blocking call runs on a job queue's thread; the result comes back here,
        // serially with this agent's handlers.
        subscribe(direct_mbox(), [this](const load_file_in_background& m) {
            auto j = mailroom::post_job(jobs_, [path = m.path] { return slow_read(path); });
            j.then([this](const mailroom::job<std::size_t>& r) {
                loaded += r.get();
                loaded_in_background.fetch_add(1);
            });
        });
    }

private:
    mailroom::job_queue::handle jobs_;
};

}  // namespace

int main() {
    example::checks check(70);

    stall_log log;
    std::atomic<loader*> the_loader{nullptr};  // the agent, while it lives; the callback reads it

    mailroom::environment env({.name = "watched"});
    auto feeds = mailroom::one_thread::make_dispatcher(
        env, "feeds",
        {.watchdog = {.timeout = 50ms,
                      .action = mailroom::stall_action::callback,
                      .on_stall = [&log, &the_loader](const mailroom::stall_report& r) {
                          std::lock_guard g(log.m);
                          log.reports.push_back(r);
                          const loader* l = the_loader.load();
                          log.handler_still_running.push_back(l && l->blocking.load());
                          log.reported_on.push_back(kernel_thread_id());
                      }}});
    auto jobs = mailroom::job_queue::make_job_queue(env, "disk", {.desired = 2});

    mailroom::coop c(env, {.name = "ingest", .bind = feeds.bind()});
    loader& l = c.make_agent<loader>(jobs);
    the_loader = &l;
    const mailroom::mbox to = l.direct_mbox();
    mailroom::register_coop(std::move(c));

    // 1. The blocking handler: reported at 50 ms, while it still blocks.
    mailroom::send<load_file>(to, "quotes.csv");
    check(example::eventually([&] { return l.loaded.load() > 0; }), "the blocking handler finished");
    // Its last report (resumed) comes within a sample of the worker moving on.
    check(example::eventually([&] {
              std::lock_guard g(log.m);
              return !log.reports.empty() && log.reports.back().resumed;
          }),
          "the watchdog saw the handler end");
    std::chrono::nanoseconds first_running_for{};
    {
        std::lock_guard g(log.m);
        const mailroom::stall_report& first = log.reports.front();
        first_running_for = first.running_for;
        std::printf("--- the first report:\n%s\n---\n", first.text.c_str());
        check(!first.resumed && log.handler_still_running.front(), "reported while the handler still blocked");
        check(first.context.find("loader") != std::string::npos && first.context.find("ingest") != std::string::npos,
              "the report names the agent and its cooperation");
        check(first.message_type.find("load_file") != std::string::npos, "and the message type it handled");
        check(first.dispatcher == "feeds" && first.thread_id == l.blocking_thread.load(),
              "and the dispatcher and the stalled thread");
        check(log.reported_on.front() != first.thread_id, "on_stall ran on another thread than the stalled one");
        // The watcher samples a few times per timeout: times are right to within a quarter of it.
        check(first.timeout == 50ms && first.running_for >= first.timeout - first.timeout / 4,
              "after the timeout had passed");
    }
    const mailroom::environment_stats during = env.stats();
    std::printf("the handler blocked %lld ms; stalls reported %llu, stalled now %llu, longest %lld ms\n",
                ms(l.blocked_for.load()), static_cast<unsigned long long>(during.stalls_reported),
                static_cast<unsigned long long>(during.stalled_now), ms(during.longest_stall));
    {
        std::lock_guard g(log.m);
        for (std::size_t i = 0; i < log.reports.size(); ++i)
            std::printf("  report: %s for %lld ms (the handler %s)\n",
                        log.reports[i].resumed ? "resumed, ran" : "still running", ms(log.reports[i].running_for),
                        log.handler_still_running[i] ? "was still blocking" : "had returned");
    }
    check(during.stalls_reported == 1 && during.stalled_now == 0, "one stall counted, none stalled now");
    check(during.longest_stall >= first_running_for, "the longest stall is at least what the first report said");

    // 2. The same work through the job queue: the agent's handler returns at once.
    std::size_t reports_before = 0;
    {
        std::lock_guard g(log.m);
        reports_before = log.reports.size();
    }
    mailroom::send<load_file_in_background>(to, "quotes.csv");
    mailroom::send<load_file_in_background>(to, "trades.csv");
    check(example::eventually([&] { return l.loaded_in_background.load() == 2; }), "both loads came back on the agent");
    {
        std::lock_guard g(log.m);
        check(log.reports.size() == reports_before, "no report for work done on the job queue");
    }
    check(env.stats().stalls_reported == 1, "the stall count did not move");

    the_loader = nullptr;  // the agent goes with the environment's teardown
    env.stop();
    env.join();
    return check.exit_code();
}
