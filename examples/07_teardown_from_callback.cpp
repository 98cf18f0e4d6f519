// Stopping from inside: a handler decides the work is done and stops the environment while a
// producer thread is still sending. Nothing in flight is lost silently: join() returns a
// teardown report, and the environment's counters say where every message went:
//
//     sent = delivered + lost + ignored + discarded + cancelled
//
// (delivered: a handler ran; lost: its receiver was gone; ignored: no handler for it any more;
// discarded: still queued when the dispatchers stopped; cancelled: a timer message whose timer
// was cancelled while it was queued.)

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct job {
    int number;
};
struct tick final : mailroom::signal {};
struct note {  // the consumer has no handler for it
    int number;
};

constexpr int enough = 2000;

struct outcome {
    std::atomic<bool> stopped_from_handler{false};
    std::atomic<int> handled{0};  // jobs the consumer handled, in the end
    std::atomic<int> ticks{0};
};

class consumer final : public mailroom::agent {
public:
    explicit consumer(outcome& out) : out_(out) { set_name("consumer"); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const job&) {
            if (++handled_ != enough) return;
            // Any thread may stop the environment, a handler included; it returns at once. (So
            // do env().stop() and a session's callback calling stop() on its environment.)
            out_.stopped_from_handler = true;
            stop_environment();
        });
        subscribe(direct_mbox(), [this](tick) { ++ticks_; });
    }
    void on_start() override { heartbeat_ = mailroom::send_periodic<tick>(direct_mbox(), 1ms, 1ms); }
    // Runs after the jobs that were queued before the agent was asked to finish: they are
    // delivered, not dropped. Jobs sent after this are counted lost.
    void on_finish() override {
        heartbeat_.cancel();  // a tick still queued is counted cancelled
        out_.handled = handled_;
        out_.ticks = ticks_;
    }

private:
    outcome& out_;
    int handled_ = 0;
    int ticks_ = 0;
    mailroom::timer_handle heartbeat_;
};

unsigned long long u(std::uint64_t v) { return static_cast<unsigned long long>(v); }

}  // namespace

int main() {
    outcome out;
    std::mutex log_mu;
    std::vector<std::string> log_lines;

    // The environment logs here what a teardown discarded and any handler that overran.
    mailroom::environment env({.name = "plant", .log = [&](std::string_view line) {
                                   std::lock_guard lock(log_mu);  // any thread, possibly at once
                                   log_lines.emplace_back(line);
                               }});
    const mailroom::mbox consumer_box = mailroom::register_agent<consumer>(env, out);

    // A session counting the same jobs through an inbox: the teardown destroys it after the
    // cooperations are gone.
    std::atomic<int> seen{0};
    mailroom::session monitor(env, {.name = "monitor"});
    auto inbox = monitor.add_inbox<job>([&](const job&) { seen.fetch_add(1); });

    // Two messages no handler will take; neither disappears, each is counted.
    mailroom::send<note>(consumer_box, 1);  // no handler for a note: ignored
    auto closed = monitor.add_inbox<job>([](const job&) {});
    const mailroom::mbox closed_address = closed.address();
    closed.destroy();
    mailroom::send<job>(closed_address, 1);  // its receiver is gone: lost

    // Sends until the environment refuses: once it has closed, a send raises
    // environment_stopped_error (and is not counted: it never entered the books). It paces
    // itself, a hundred jobs a millisecond: queues are unbounded, and a producer that outruns
    // its receivers builds a backlog that the teardown has to work through (delivered to the
    // agent before it finishes, refused by the session one by one).
    std::atomic<long> refused_sends{0};
    std::thread producer([&] {
        const auto deadline = std::chrono::steady_clock::now() + 2s;
        for (int i = 0;; ++i) {
            try {
                mailroom::send<job>(consumer_box, i);
                mailroom::send<job>(inbox.address(), i);
            } catch (const mailroom::environment_stopped_error&) {
                refused_sends.fetch_add(1);
                return;
            }
            if (i % 100 != 99) continue;
            if (std::chrono::steady_clock::now() > deadline) {
                env.stop();  // never hang: the consumer did not stop it in time
                return;
            }
            std::this_thread::sleep_for(1ms);
        }
    });

    const mailroom::teardown_report report = env.join();  // returns once the teardown completed
    producer.join();

    example::checks check(62, "  ");
    const auto s = env.stats();
    const auto s_agent = mailroom::agent_stats_of(env);
    const auto s_session = mailroom::session_stats_of(env);
    std::printf("consumer handled %d jobs (asked to stop at %d) and %d ticks; the monitor saw %d\n",
                out.handled.load(), enough, out.ticks.load(), seen.load());
    std::printf("teardown took %.3f ms: %llu messages and %llu session callbacks discarded, %zu overruns\n",
                std::chrono::duration<double, std::milli>(report.took).count(), u(report.messages_discarded),
                u(report.callbacks_discarded), report.overruns.size());
    std::printf("sent %llu = delivered %llu + lost %llu + ignored %llu + discarded %llu + cancelled %llu + dropped %llu\n",
                u(s.messages_sent), u(s.messages_delivered), u(s.messages_lost), u(s.messages_ignored),
                u(s.messages_discarded), u(s.messages_cancelled), u(s.messages_dropped));
    std::printf("agents created %llu destroyed %llu; sessions created %llu destroyed %llu\n", u(s_agent.agents_created),
                u(s_agent.agents_destroyed), u(s_session.sessions_created), u(s_session.sessions_destroyed));
    {
        std::lock_guard lock(log_mu);
        for (const auto& line : log_lines) std::printf("log: %s\n", line.c_str());
    }

    check(out.stopped_from_handler.load(), "the consumer stopped the environment from its handler");
    check(out.handled.load() >= enough, "it handled every job queued before it finished");
    check(refused_sends.load() == 1, "the producer's send was refused once the environment closed");
    check(s.messages_ignored >= 1 && s.messages_lost >= 1, "the note was counted ignored, the job to the gone inbox lost");
    check(s.messages_sent == s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                 s.messages_cancelled + s.messages_dropped,
          "the books balance");
    check(s.messages_discarded == report.messages_discarded, "the report and the counters agree");
    check(s_agent.agents_created == s_agent.agents_destroyed && s_session.sessions_created == s_session.sessions_destroyed &&
              s_session.event_objects_created == s_session.event_objects_destroyed,
          "every agent, session and event object is gone");
    check(!monitor, "the session handle says its session is gone");
    return check.exit_code();
}
