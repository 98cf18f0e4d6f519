// A state machine agent: a door. It is `closed` (with sub-states `unlocked`, where it starts,
// and `locked`) or `open`. A locked door ignores "open" (suppress: counted ignored); an open
// door closes itself after 100 ms (a time limit); `closed` has shallow history, so the door
// closes back into the sub-state it was in. Enter and exit handlers print each change.

#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct open_door final : mailroom::signal {};
struct lock_door final : mailroom::signal {};
struct unlock_door final : mailroom::signal {};
struct knock final : mailroom::signal {};

class door final : public mailroom::agent {
public:
    std::atomic<int> closings{0};  // read by main()
    std::atomic<int> knocks{0};

private:
    // States are members: declared with the agent, in the order of their nesting.
    mailroom::state closed_{*this, "closed", {.history = mailroom::state_history::shallow}};
    mailroom::state unlocked_{closed_, "unlocked", {.initial = true}};
    mailroom::state locked_{closed_, "locked"};
    mailroom::state open_{*this, "open"};

    void configure() override {
        const mailroom::mbox& me = direct_mbox();
        // Handled in `closed`, so in both of its sub-states, unless one says otherwise.
        closed_.event(me, [this](const open_door&) { change_state(open_); });
        closed_.event(me, [this](const knock&) { knocks.fetch_add(1); });
        locked_.suppress<open_door>(me);
        unlocked_.just_switch_to<lock_door>(me, locked_);
        locked_.just_switch_to<unlock_door>(me, unlocked_);
        open_.time_limit(100ms, closed_);
        open_.on_enter([] { std::printf("  the door opens\n"); });
        open_.on_exit([this] {
            std::printf("  the door closes\n");
            closings.fetch_add(1);
        });
        locked_.on_enter([] { std::printf("  locked\n"); });
        locked_.on_exit([] { std::printf("  unlocked\n"); });
    }
    void on_start() override { change_state(closed_); }
};
}  // namespace

int main() {
    example::checks check(58);

    mailroom::environment env;
    mailroom::coop c(env);
    door& d = c.make_agent<door>();
    const mailroom::mbox to = d.direct_mbox();
    mailroom::register_coop(std::move(c));

    check(example::eventually([&] { return d.current_state_path() == "closed.unlocked"; }), "starts closed and unlocked");
    mailroom::send<lock_door>(to);
    mailroom::send<open_door>(to);  // locked: ignored
    mailroom::send<knock>(to);      // handled by `closed` in its sub-state `locked`
    check(example::eventually([&] { return d.knocks.load() == 1; }), "a knock is heard in closed.locked");
    check(d.current_state_path() == "closed.locked", "an open request leaves a locked door locked");
    mailroom::send<unlock_door>(to);
    mailroom::send<open_door>(to);
    check(example::eventually([&] { return d.closings.load() == 1; }), "the open door closes itself after its time limit");
    check(d.current_state_path() == "closed.unlocked", "and closes back into the sub-state it left (history)");

    env.stop();
    env.join();
    const mailroom::environment_stats s = env.stats();
    check(s.messages_ignored == 1, "the ignored open request is counted");
    check(s.messages_sent == s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
                                 s.messages_cancelled,
          "the books balance");
    return check.exit_code();
}
