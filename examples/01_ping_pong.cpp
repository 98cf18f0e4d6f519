// Two agents on different threads bounce a counter back and forth, then stop the environment.

#include <mailroom/mailroom.hpp>

#include <cstdio>

struct ping {
    int n;
};
struct pong {
    int n;
};

class pinger final : public mailroom::agent {
public:
    explicit pinger(int rounds) : rounds_(rounds) {}
    void set_peer(mailroom::mbox peer) { peer_ = std::move(peer); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const pong& p) {
            if (p.n == rounds_) {
                std::printf("pinger: %d round trips done\n", p.n);
                stop_environment();
                return;
            }
            mailroom::send<ping>(peer_, p.n + 1);
        });
    }
    void on_start() override { mailroom::send<ping>(peer_, 1); }

private:
    int rounds_;
    mailroom::mbox peer_;
};

class ponger final : public mailroom::agent {
public:
    void set_peer(mailroom::mbox peer) { peer_ = std::move(peer); }

protected:
    void configure() override {
        subscribe(direct_mbox(), [this](const ping& p) { mailroom::send<pong>(peer_, p.n); });
    }

private:
    mailroom::mbox peer_;
};

int main() {
    mailroom::environment env;
    auto threads = mailroom::active_obj::make_dispatcher(env, "actors");
    mailroom::coop_options opts;
    opts.name = "ping-pong";
    opts.bind = threads.bind();
    mailroom::coop c(env, std::move(opts));
    auto& a = c.make_agent<pinger>(20000);
    auto& b = c.make_agent<ponger>();
    a.set_peer(b.direct_mbox());
    b.set_peer(a.direct_mbox());
    mailroom::register_coop(std::move(c));
    env.join();
    auto s = env.stats();
    std::printf("sent %llu delivered %llu lost %llu\n", static_cast<unsigned long long>(s.messages_sent),
                static_cast<unsigned long long>(s.messages_delivered), static_cast<unsigned long long>(s.messages_lost));
    return s.messages_sent == s.messages_delivered ? 0 : 1;
}
