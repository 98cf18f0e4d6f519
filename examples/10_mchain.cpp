// mchains: CSP channels. A foreign thread (not an agent, not a session) feeds a bounded chain
// and waits when it is full; the main thread takes from it with receive(). A second chain feeds
// a session, with no thread polling it. Then a select() over both chains answers whichever has
// something first, and a closer closes them on the way out.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct reading {
    int sensor;
    double value;
};
struct shutdown_request final : mailroom::signal {};
}  // namespace

int main() {
    example::checks check(62);

    mailroom::environment env;

    // 1. A bounded chain between a plain thread and the main thread. The producer waits (up
    //    to a second) while the chain is full, so it can never run ahead by more than 16.
    mailroom::mchain readings = mailroom::make_mchain(
        env, {.name = "readings", .capacity = 16, .on_overflow = mailroom::mchain_overflow::throw_error,
              .wait_for_space = 1s});
    std::thread sensor([&] {
        for (int i = 0; i < 1000; ++i) mailroom::send<reading>(readings, i % 4, i * 0.5);
        mailroom::send<shutdown_request>(readings);
    });
    int count = 0;
    bool in_order = true;
    bool asked_to_stop = false;
    mailroom::receive_result r = mailroom::receive(
        mailroom::from(readings).total_time(2s).stop_on([&] { return asked_to_stop; }),
        [&](const reading& m) {
            in_order = in_order && m.value == count * 0.5;
            ++count;
        },
        [&](shutdown_request) { asked_to_stop = true; });
    sensor.join();
    check(count == 1000 && in_order && r.status == mailroom::receive_status::stopped, "main thread received 1000 readings in order");
    check(readings.stats().high_water <= 16, "the chain never held more than its capacity");

    // 2. A chain feeding a session: the chain queues a turn on the session when a message comes.
    mailroom::mchain jobs = mailroom::make_mchain(env, {.name = "jobs"});
    mailroom::session worker(env, {.name = "worker"});
    std::atomic<int> done{0};
    mailroom::event_handle sub = worker.subscribe(jobs, [&](const std::string& job) {
        if (!job.empty()) done.fetch_add(1);
    });
    std::thread client([&] {
        for (int i = 0; i < 100; ++i) mailroom::send<std::string>(jobs, "job " + std::to_string(i));
    });
    client.join();
    check(example::eventually([&] { return done.load() == 100; }), "the session handled 100 jobs from the chain");
    sub.shutdown();  // from here no handler of it runs; what it did not take stays in the chain

    // 3. select() over both chains, with a closer that closes them however this scope is left.
    {
        auto closer = mailroom::close_on_exit(mailroom::mchain_close::drop_content, readings, jobs);
        std::thread late([&] {
            std::this_thread::sleep_for(5ms);
            mailroom::send<std::string>(jobs, "late job");
        });
        std::string got;
        mailroom::receive_result s = mailroom::select(
            mailroom::from_all().handle_n(1).empty_timeout(2s),
            mailroom::receive_case(readings, [&](const reading&) { got = "reading"; }),
            mailroom::receive_case(jobs, [&](std::string job) { got = std::move(job); }));
        late.join();
        check(s.status == mailroom::receive_status::handled_n && got == "late job",
              "select() woke for the chain that had something");
    }
    check(readings.closed() && jobs.closed(), "the closer closed both chains");

    const mailroom::environment_stats st = env.stats();
    check(st.messages_sent == st.messages_delivered + st.messages_lost + st.messages_ignored +
                                  st.messages_discarded + st.messages_cancelled,
          "the books balance: every message has an outcome");
    return check.exit_code();
}
