// A sensor publishes readings on a named topic every millisecond (a periodic timer); a few
// displays on a two-thread pool each receive every reading, in order. After the last reading
// the sensor stops the environment: each display's finish is queued behind the readings it was
// sent, so it still sees them all.

#include <mailroom/mailroom.hpp>

#include <chrono>
#include <cstdio>
#include <vector>

using namespace std::chrono_literals;

struct reading {
    int number;
    double celsius;
};
struct tick final : mailroom::signal {};

constexpr int readings = 200;
constexpr int displays = 4;

class sensor final : public mailroom::agent {
public:
    explicit sensor(mailroom::mbox topic) : topic_(std::move(topic)) {}

protected:
    void configure() override { subscribe(direct_mbox(), [this](const tick&) { publish(); }); }
    void on_start() override { timer_ = mailroom::send_periodic<tick>(direct_mbox(), 1ms, 1ms); }
    // Cancel before the agent goes, so no tick fires at a receiver that is gone.
    void on_finish() override { timer_.cancel(); }

private:
    void publish() {
        ++published_;
        mailroom::send(topic_, reading{published_, 20.0 + 0.5 * (published_ % 7)});
        if (published_ < readings) return;
        timer_.cancel();
        stop_environment();
    }

    mailroom::mbox topic_;
    mailroom::timer_handle timer_;
    int published_ = 0;
};

class display final : public mailroom::agent {
public:
    // `result` is this display's slot: the readings it got in order, or -1 on a gap.
    display(mailroom::mbox topic, int& result) : topic_(std::move(topic)), result_(result) {}

protected:
    void configure() override {
        subscribe(topic_, [this](const reading& r) {
            in_order_ = in_order_ && r.number == received_ + 1;
            ++received_;
        });
    }
    void on_finish() override { result_ = in_order_ ? received_ : -1; }

private:
    mailroom::mbox topic_;
    int& result_;
    int received_ = 0;
    bool in_order_ = true;
};

int main() {
    std::vector<int> results(displays, 0);  // written by the displays, read after join()
    mailroom::environment env;
    auto pool = mailroom::thread_pool::make_dispatcher(env, "pool",
                                                       {.threads = 2, .order = mailroom::thread_pool::fifo::agent});
    auto topic = mailroom::make_named_mbox(env, "readings");

    // The displays first: they subscribe as they register, so they miss no reading.
    mailroom::coop_options on_pool;
    on_pool.name = "displays";
    on_pool.bind = pool.bind();
    mailroom::introduce_coop(env, std::move(on_pool), [&](mailroom::coop& c) {
        for (int& slot : results) c.make_agent<display>(topic, slot);
    });
    mailroom::coop c(env);  // on the default dispatcher
    c.make_agent<sensor>(topic);
    mailroom::register_coop(std::move(c));
    env.join();

    bool ok = true;
    for (int i = 0; i < displays; ++i) {
        const char* verdict = results[i] == readings ? "every reading, in order"
                              : results[i] < 0       ? "readings out of order"
                                                     : "readings missing";
        std::printf("display %d: %s\n", i, verdict);
        ok = ok && results[i] == readings;
    }
    const auto s = env.stats();
    const auto a = mailroom::agent_stats_of(env);
    std::printf("sent %llu delivered %llu lost %llu, agents created %llu destroyed %llu\n",
                static_cast<unsigned long long>(s.messages_sent), static_cast<unsigned long long>(s.messages_delivered),
                static_cast<unsigned long long>(s.messages_lost), static_cast<unsigned long long>(a.agents_created),
                static_cast<unsigned long long>(a.agents_destroyed));
    ok = ok && s.messages_lost == 0 && a.agents_created == a.agents_destroyed;
    return ok ? 0 : 1;
}
