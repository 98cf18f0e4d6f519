// Named objects: code reachable by a name, answering requests. A calculator registers "calc" on
// a session; a client session asks it questions from a coroutine (co_await on each request),
// and main() asks once more with then(). Every request ends in a state that says what became
// of it: replied, rejected (with the reason) or abandoned (here: it timed out). Nothing waits
// forever, and an answer that comes too late is counted, not lost silently.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct add {
    int a, b;
};
struct divide {
    int a, b;
};

example::checks check(52, "  ");  // used by the client's coroutine, then by main() once it has the result

void show(const char* question, const mailroom::outgoing<int>& r) {
    if (r.state() == mailroom::request_state::replied)
        std::printf("%-22s %-9s %d\n", question, to_string(r.state()), r.reply());
    else
        std::printf("%-22s %-9s %s\n", question, to_string(r.state()), r.reason().c_str());
}

// Runs on the client session. Each co_await suspends the coroutine without blocking the
// session's thread and resumes it on the same session once the request is final. Parameters by
// value (or pointing at what outlives the coroutine): it runs on after the posted call returns.
mailroom::task ask(mailroom::environment& env, std::promise<void>* done) {
    auto sum = co_await mailroom::request<int>(env, "calc", add{2, 3});
    show("calc: 2 + 3", sum);
    check(sum.state() == mailroom::request_state::replied && sum.reply() == 5, "replied 5");

    auto quotient = co_await mailroom::request<int>(env, "calc", divide{1, 0});
    show("calc: 1 / 0", quotient);
    check(quotient.state() == mailroom::request_state::rejected && quotient.reason() == "division by zero",
          "rejected by the handler, with its reason");

    auto nobody = co_await mailroom::request<int>(env, "nobody", add{1, 1});
    show("nobody: 1 + 1", nobody);
    check(nobody.state() == mailroom::request_state::rejected, "rejected: no object has that name");

    // The request first, then co_await it: g++ 12 frees the options' strings wrongly when a
    // braced `{.timeout = ...}` is written inside the co_await expression itself.
    auto asked = mailroom::request<int>(env, "slow", add{1, 1}, {.timeout = 20ms});
    auto late = co_await asked;
    show("slow: 1 + 1 (20 ms)", late);
    check(late.state() == mailroom::request_state::abandoned, "abandoned: it timed out");
    done->set_value();
}

}  // namespace

int main() {
    // What the callbacks report to main(); declared first, so they outlive the environment (and
    // with it every callback and coroutine that could still touch them).
    std::promise<void> coroutine_done, answered_late;
    std::promise<int> then_result;
    std::vector<mailroom::incoming> parked;  // requests "slow" keeps to answer later; on its session

    mailroom::environment env;
    mailroom::session calculator(env, {.name = "calculator"});
    mailroom::session slow_server(env, {.name = "slow-server"});
    mailroom::session client(env, {.name = "client"});

    // The handler runs on its session, one message at a time; it answers with reply() or
    // reject(). The header says who asked.
    auto calc = mailroom::register_named(calculator, "calc", [](mailroom::incoming& in) {
        const std::string& from = in.header().source;  // the asking session or agent; "" for a plain thread
        std::printf("%-22s from %s\n", "calc: a request", from.empty() ? "a plain thread" : from.c_str());
        if (in.is<add>()) {
            in.reply<int>(in.as<add>().a + in.as<add>().b);
        } else if (in.is<divide>()) {
            const auto& d = in.as<divide>();
            if (d.b == 0)
                in.reject("division by zero");
            else
                in.reply<int>(d.a / d.b);
        } else {
            in.reject("unknown operation");
        }
    });
    // An object that keeps its requests to answer later: an incoming may be moved out of the
    // handler (an incoming destroyed unanswered abandons its request, so nobody waits forever).
    auto slow = mailroom::register_named(slow_server, "slow",
                                         [&parked](mailroom::incoming& in) { parked.push_back(std::move(in)); });

    std::printf("from a coroutine on the client session:\n");
    client.post([&] { ask(env, &coroutine_done); });
    auto done = coroutine_done.get_future();
    if (done.wait_for(2s) != std::future_status::ready) {
        std::printf("the coroutine did not finish\n");
        return 1;
    }

    // then(): a callback on a session once the request is final (from any thread).
    std::printf("with then(), from main:\n");
    auto answer = mailroom::request<int>(env, "calc", add{40, 2});
    answer.then(client, [&](const mailroom::outgoing<int>& r) {
        show("calc: 40 + 2", r);
        then_result.set_value(r.state() == mailroom::request_state::replied ? r.reply() : -1);
    });
    auto got = then_result.get_future();
    check(got.wait_for(2s) == std::future_status::ready && got.get() == 42, "then() ran on the client with 42");

    // "slow" answers now, after the requester gave up: the reply is counted orphaned.
    slow_server.post([&] {
        for (auto& in : parked) in.reply<int>(2);
        parked.clear();
        answered_late.set_value();
    });
    check(answered_late.get_future().wait_for(2s) == std::future_status::ready, "slow answered late");

    // shutdown(): from here on the name is free and the handler is not running, nor will it.
    calc.shutdown();
    auto after = mailroom::request<int>(env, "calc", add{1, 1});
    after.wait_for(2s);  // a plain thread may block; in callbacks use then() or co_await
    show("calc after shutdown", after);
    check(after.state() == mailroom::request_state::rejected, "rejected: the name is gone");

    env.stop();
    env.join();
    const auto s_named = mailroom::named_stats_of(env);
    std::printf("requests posted %llu = replied %llu + rejected %llu + abandoned %llu; replies orphaned %llu\n",
                static_cast<unsigned long long>(s_named.requests_posted), static_cast<unsigned long long>(s_named.requests_replied),
                static_cast<unsigned long long>(s_named.requests_rejected),
                static_cast<unsigned long long>(s_named.requests_abandoned),
                static_cast<unsigned long long>(s_named.replies_orphaned));
    check(s_named.requests_posted == 6 && s_named.requests_replied == 2 && s_named.requests_rejected == 3 && s_named.requests_abandoned == 1,
          "six requests, each in a final state");
    check(s_named.replies_orphaned == 1, "the late answer was counted orphaned");
    return check.exit_code();
}
