// The shortest program: one agent, one message. register_agent registers a cooperation of one
// agent and returns its direct mbox; the agent stops the environment once greeted, and join()
// returns when everything in it is gone.
#include <mailroom/mailroom.hpp>

#include <atomic>
#include <cstdio>
#include <string>

namespace {

struct greeting {
    std::string text;
};

std::atomic<int> greeted{0};

class listener final : public mailroom::agent {
protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const greeting& g) {
            std::printf("%s\n", g.text.c_str());
            greeted.fetch_add(1);
            stop_environment();
        });
    }
};

}  // namespace

int main() {
    mailroom::environment env;
    mailroom::send<greeting>(mailroom::register_agent<listener>(env), "hello");
    env.join();
    return greeted.load() == 1 ? 0 : 1;
}
