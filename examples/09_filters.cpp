// A feed publishes quotes of three instruments on a named topic. Each desk wants one
// instrument: its delivery filter runs on the feed's thread and refuses the others before they
// are queued, so a desk's queue only ever holds its own quotes. Halfway, the EUR desk widens its
// filter to two instruments (from the feed's thread, while quotes fly: each quote sees the old
// filter or the new one). A session's inbox of fills filters out empty fills. At the end the
// books balance: every refused message is counted sent, ignored and filtered, none lost.

#include <mailroom/mailroom.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

struct quote {
    std::string symbol;
    double bid;
};
struct fill {
    int qty;
};
struct widen final : mailroom::signal {};

constexpr int rounds = 3000;
const char* const symbols[] = {"EURUSD", "USDJPY", "GBPUSD"};

class desk final : public mailroom::agent {
public:
    desk(mailroom::mbox quotes, std::string symbol, std::atomic<int>& got)
        : quotes_(std::move(quotes)), symbol_(std::move(symbol)), got_(got) {}

    // The feed asks the EUR desk to take cable too. Any thread may change a filter.
    void widen_to(std::string also) {
        set_delivery_filter(quotes_, [mine = symbol_, also = std::move(also)](const quote& q) {
            return q.symbol == mine || q.symbol == also;
        });
    }

protected:
    void configure() override {
        subscribe(quotes_, [this](const quote& q) {
            got_.fetch_add(1, std::memory_order_relaxed);
            if (q.symbol != symbol_ && q.symbol != "GBPUSD") wrong_ = true;
        });
        // Captures a copy of the symbol: a predicate runs on the sender's thread, not the desk's.
        set_delivery_filter(quotes_, [mine = symbol_](const quote& q) { return q.symbol == mine; });
    }
    void on_finish() override {
        if (wrong_) std::printf("desk %s got a quote it filtered out\n", symbol_.c_str());
    }

private:
    mailroom::mbox quotes_;
    std::string symbol_;
    std::atomic<int>& got_;
    bool wrong_ = false;
};

int main() {
    mailroom::environment env;
    auto quotes = mailroom::make_named_mbox(env, "quotes");
    std::atomic<int> eur{0}, jpy{0}, fills{0};
    desk* eur_desk = nullptr;
    {
        mailroom::coop c(env);
        eur_desk = &c.make_agent<desk>(quotes, "EURUSD", eur);
        c.make_agent<desk>(quotes, "USDJPY", jpy);
        mailroom::register_coop(std::move(c));
    }
    mailroom::session back_office(env, {.name = "back office"});
    auto fills_in = back_office.add_inbox<fill>([&](const fill&) { fills.fetch_add(1); },
                                                [](const fill& f) { return f.qty != 0; });

    for (int i = 0; i < rounds; ++i) {
        if (i == rounds / 2) eur_desk->widen_to("GBPUSD");
        mailroom::send(quotes, quote{symbols[i % 3], 1.0 + i * 1e-4});
        mailroom::send(fills_in.address(), fill{i % 2});
    }
    const int want_eur = rounds / 3 + rounds / 6;  // its own, then cable for the second half
    // The session's inbox is destroyed with the environment: what is still queued for it then
    // is refused. So wait (at most two seconds) for what was accepted to be handled.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while ((eur < want_eur || jpy < rounds / 3 || fills < rounds / 2) && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    env.stop();
    env.join();

    const auto s = env.stats();
    std::printf("EUR desk %d quotes (want %d), JPY desk %d (want %d), fills %d (want %d)\n", eur.load(), want_eur,
                jpy.load(), rounds / 3, fills.load(), rounds / 2);
    std::printf("sent %llu = delivered %llu + ignored %llu (filtered %llu) + lost %llu + discarded %llu\n",
                static_cast<unsigned long long>(s.messages_sent), static_cast<unsigned long long>(s.messages_delivered),
                static_cast<unsigned long long>(s.messages_ignored), static_cast<unsigned long long>(s.messages_filtered),
                static_cast<unsigned long long>(s.messages_lost), static_cast<unsigned long long>(s.messages_discarded));
    const bool balanced = s.messages_sent == s.messages_delivered + s.messages_lost + s.messages_ignored +
                                                 s.messages_discarded + s.messages_cancelled;
    const bool ok = eur == want_eur && jpy == rounds / 3 && fills == rounds / 2 && balanced &&
                    s.messages_lost == 0 && s.messages_filtered == s.messages_ignored;
    return ok ? 0 : 1;
}
