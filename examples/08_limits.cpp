// A slow consumer behind a drop limit: a producer thread sends quotes far faster than the
// consumer handles them; at most 100 wait in its queue, the rest are dropped, and every drop is
// in the books (sent = delivered + lost + ignored + discarded + cancelled + dropped) and in the
// consumer's limit statistics. See docs/limits-and-filters.md.
#include <mailroom/mailroom.hpp>

#include "example_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

namespace {

using namespace std::chrono_literals;

struct quote {
    int price = 0;
};

std::atomic<int> handled{0};

class slow_consumer final : public mailroom::agent {
public:
    slow_consumer() {
        // At most 100 quotes waiting: what comes while the queue is full is dropped (counted).
        limit<quote>(100, mailroom::limit_drop);
    }

protected:
    void configure() override {
        subscribe(direct_mbox(), [](const quote&) {
            std::this_thread::sleep_for(100us);  // a slow handler: about 10,000 quotes a second at most
            handled.fetch_add(1, std::memory_order_relaxed);
        });
    }
};

}  // namespace

int main() {
    mailroom::environment env({.name = "limits"});
    mailroom::coop c(env);
    auto& consumer = c.make_agent<slow_consumer>();
    mailroom::mbox to = consumer.direct_mbox();
    mailroom::register_coop(std::move(c));

    // The producer: 300 ms of quotes, as fast as one thread sends them.
    long sent = 0;
    std::thread producer([&] {
        const auto end = std::chrono::steady_clock::now() + 300ms;
        while (std::chrono::steady_clock::now() < end)
            for (int i = 0; i < 100; ++i) mailroom::send<quote>(to, static_cast<int>(sent++));
    });
    producer.join();

    std::uint64_t waiting = 0;
    for (const mailroom::limit_stats& s : mailroom::limit_stats_of(consumer)) {
        waiting = s.queued;
        std::printf("limit of %s: %llu waiting (of %llu at most), %llu dropped\n",
                    mailroom::readable_name(s.type).c_str(), static_cast<unsigned long long>(s.queued),
                    static_cast<unsigned long long>(s.bounds.messages), static_cast<unsigned long long>(s.dropped));
    }

    env.stop();
    env.join();
    const mailroom::environment_stats s = env.stats();
    auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    std::printf("producer sent %ld quotes; the consumer handled %d\n", sent, handled.load());
    std::printf("sent %llu = delivered %llu + lost %llu + ignored %llu + discarded %llu + cancelled %llu + dropped %llu\n",
                u(s.messages_sent), u(s.messages_delivered), u(s.messages_lost), u(s.messages_ignored),
                u(s.messages_discarded), u(s.messages_cancelled), u(s.messages_dropped));

    example::checks check(68);
    check(s.messages_dropped > 0, "the producer outran the consumer, and the limit dropped the excess");
    check(s.messages_sent == static_cast<std::uint64_t>(sent), "every quote was counted sent");
    check(s.messages_sent == s.messages_delivered + s.messages_lost + s.messages_ignored + s.messages_discarded +
              s.messages_cancelled + s.messages_dropped,
          "the books balance");
    check(waiting <= 100, "no more than the limit's worth waited in the consumer's queue");
    return check.exit_code();
}
