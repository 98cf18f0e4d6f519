// Sends one message to one agent and checks it arrived.
#include <mailroom/mailroom.hpp>

#include <cstdio>

struct hello {
    int n;
};

class receiver final : public mailroom::agent {
protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const hello& h) {
            got = h.n;
            stop_environment();
        });
    }

public:
    static inline int got = 0;
};

int main() {
    mailroom::environment env;
    mailroom::coop c(env);
    auto to = c.make_agent<receiver>().direct_mbox();
    mailroom::register_coop(std::move(c));
    mailroom::send<hello>(to, 42);
    env.join();
    std::printf("consumer: received %d\n", receiver::got);
    return receiver::got == 42 ? 0 : 1;
}
