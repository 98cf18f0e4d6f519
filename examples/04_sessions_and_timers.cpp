// Callbacks without an agent: a session is a serial context on a dispatcher thread. It runs a
// posted call, a one-shot timer, a periodic timer and an inbox, one callback at a time. The
// periodic timer is shut down from the main thread: once shutdown() returns there, its callback
// is not running and never runs again. Then the session is destroyed with what it still owns.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct reading {
    int number;
};
}  // namespace

int main() {
    example::checks check(58);

    mailroom::environment env;
    {
        mailroom::session s(env, {.name = "worker"});  // on the default dispatcher

        // Posted calls, timer callbacks and inbox messages all run on the session, never two at
        // once; atomics only because main() reads the counts while they change.
        std::atomic<int> posted{0}, one_shot{0}, ticks{0}, readings{0};
        std::atomic<bool> in_tick{false};

        s.post([&] { posted.fetch_add(1); });
        auto once = s.add_timer(5ms, 0ms, [&] { one_shot.fetch_add(1); });  // period 0: one-shot
        auto tick = s.add_timer(1ms, 1ms, [&] {                             // every millisecond
            in_tick = true;
            ticks.fetch_add(1);
            in_tick = false;
        });
        auto inbox = s.add_inbox<reading>([&](reading r) { readings.fetch_add(r.number > 0 ? 1 : 0); });

        // Anyone may send to an inbox's address, from any thread.
        for (int i = 1; i <= 10; ++i) mailroom::send<reading>(inbox.address(), i);

        check(example::eventually([&] { return posted == 1 && one_shot == 1 && readings == 10 && ticks >= 5; }),
              "posted call, one-shot, 10 readings and 5 ticks arrived");

        // main() is not the session's thread, so shutdown() waits for a tick that is running
        // now, and a tick already queued is refused: from here on no tick runs.
        tick.shutdown();
        const int ticks_at_shutdown = ticks.load();
        check(!in_tick.load(), "no tick running once shutdown() returned");
        std::this_thread::sleep_for(20ms);  // twenty periods
        check(ticks.load() == ticks_at_shutdown, "no tick ran after shutdown() returned");
        check(!tick, "the shut-down handle says so (operator bool is false)");
        check(one_shot.load() == 1, "the one-shot timer fired once");

        // destroy() shuts down and destroys every object the session still owns (the one-shot
        // timer and the inbox); the handles become no-ops.
        s.destroy();
        check(!s.post([] {}), "post() to a destroyed session returns false");
        check(!inbox, "the inbox went with its session");
        std::printf("posted %d, one-shot %d, ticks %d, readings %d\n", posted.load(), one_shot.load(),
                    ticks.load(), readings.load());
    }

    env.stop();
    const auto report = env.join();
    const auto st = env.stats();
    const auto st_session = mailroom::session_stats_of(env);
    std::printf("sessions created %llu destroyed %llu; event objects created %llu destroyed %llu\n",
                static_cast<unsigned long long>(st_session.sessions_created),
                static_cast<unsigned long long>(st_session.sessions_destroyed),
                static_cast<unsigned long long>(st_session.event_objects_created),
                static_cast<unsigned long long>(st_session.event_objects_destroyed));
    std::printf("callbacks run %llu refused %llu discarded %llu; timer periods skipped %llu\n",
                static_cast<unsigned long long>(st_session.callbacks_run),
                static_cast<unsigned long long>(st_session.callbacks_refused),
                static_cast<unsigned long long>(report.callbacks_discarded),
                static_cast<unsigned long long>(st.timers_skipped));
    check(st_session.sessions_created == 1 && st_session.sessions_destroyed == 1, "one session, destroyed");
    check(st_session.event_objects_created == 3 && st_session.event_objects_destroyed == 3, "three event objects, all destroyed");
    return check.exit_code();
}
