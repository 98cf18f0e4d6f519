// The lock-free ring of a preallocated chain under many threads: producers waiting for room in
// a small chain, several receivers taking at once, closes in the middle of the flow, selects
// over two chains with a subscribed session taking too. Every message is received exactly once
// or counted (refused by the closed chain, or discarded by the close); nothing hangs. Bounded in
// rounds and time; run under TSan and ASan.

#include <mailroom/mbox/mchain.hpp>
#include <mailroom/session/session.hpp>

#include <gtest/gtest.h>

#include "mchain_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

using namespace mailroom;
using namespace std::chrono_literals;
using mailroom::test::expect_balanced;
using mailroom::test::get_bounded;

namespace {

struct item {
    std::uint32_t producer;
    std::uint32_t seq;
};

// Which messages arrived, and how often: each must arrive at most once.
class ledger {
public:
    ledger(std::uint32_t producers, std::uint32_t each) : each_(each), seen_(std::size_t{producers} * each) {}
    void receive(const item& m) {
        if (seen_[std::size_t{m.producer} * each_ + m.seq].fetch_add(1, std::memory_order_relaxed) != 0)
            twice_.fetch_add(1, std::memory_order_relaxed);
        got_.fetch_add(1, std::memory_order_relaxed);
    }
    std::uint64_t got() const { return got_.load(); }
    std::uint64_t twice() const { return twice_.load(); }

private:
    std::uint32_t each_;
    std::vector<std::atomic<std::uint8_t>> seen_;
    std::atomic<std::uint64_t> got_{0};
    std::atomic<std::uint64_t> twice_{0};
};

}  // namespace

TEST(mchain_ring_stress, producers_and_receivers_through_a_small_ring_with_closes_lose_nothing) {
    constexpr std::uint32_t producers = 3, receivers = 2, each = 3000;
    const auto deadline = std::chrono::steady_clock::now() + 4s;
    std::mt19937 rng(12);
    int rounds = 0;
    for (; rounds < 30 && std::chrono::steady_clock::now() < deadline; ++rounds) {
        environment env;
        const std::size_t capacity = 2 + rounds % 7;  // 2..8: powers of two and not
        mchain ch = make_mchain(env, {.capacity = capacity, .memory = mchain_memory::preallocated,
                                      .on_overflow = mchain_overflow::throw_error, .wait_for_space = 30s});
        // Round kinds: 0 no close until the end, 1 a drop_content close in the middle, 2 a
        // retain_content close in the middle.
        const int kind = rounds % 3;
        ledger book(producers, each);
        std::vector<std::future<receive_result>> rx;
        for (std::uint32_t r = 0; r < receivers; ++r)
            rx.push_back(std::async(std::launch::async, [&] {
                return receive(from(ch), [&](const item& m) { book.receive(m); });
            }));
        std::vector<std::future<void>> tx;
        for (std::uint32_t p = 0; p < producers; ++p)
            tx.push_back(std::async(std::launch::async, [&, p] {
                for (std::uint32_t i = 0; i < each; ++i) send<item>(ch, item{p, i});
            }));
        if (kind != 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
            ch.close(kind == 1 ? mchain_close::drop_content : mchain_close::retain_content);
        }
        for (auto& f : tx) get_bounded(f);
        ch.close(mchain_close::retain_content);  // the end of the flow (a second close changes nothing)
        for (auto& f : rx) EXPECT_EQ(get_bounded(f).status, receive_status::closed) << "round " << rounds;

        const mchain_stats s = ch.stats();
        const std::uint64_t total = std::uint64_t{producers} * each;
        EXPECT_EQ(book.twice(), 0u) << "round " << rounds;
        EXPECT_EQ(book.got() + s.refused_closed + s.discarded, total) << "round " << rounds;
        EXPECT_EQ(s.stored, book.got() + s.discarded) << "round " << rounds;
        EXPECT_EQ(s.handled, book.got()) << "round " << rounds;
        EXPECT_EQ(s.size, 0u) << "round " << rounds;
        EXPECT_EQ(s.refused_full, 0u) << "round " << rounds;
        EXPECT_LE(s.high_water, capacity) << "round " << rounds;
        if (kind == 0) {
            EXPECT_EQ(book.got(), total) << "round " << rounds;
        }
        if (kind != 1) {
            EXPECT_EQ(s.discarded, 0u) << "round " << rounds;
        }
        expect_balanced(env);
        if (testing::Test::HasFailure()) break;
    }
    EXPECT_GT(rounds, 0);
}

TEST(mchain_ring_stress, selects_over_two_rings_and_a_subscribed_session_take_each_message_once) {
    constexpr std::uint32_t producers = 4, selectors = 2, each = 4000;
    const auto deadline = std::chrono::steady_clock::now() + 4s;
    int rounds = 0;
    for (; rounds < 10 && std::chrono::steady_clock::now() < deadline; ++rounds) {
        environment env;
        mchain a = make_mchain(env, {.name = "a", .capacity = 4, .memory = mchain_memory::preallocated,
                                     .on_overflow = mchain_overflow::throw_error, .wait_for_space = 30s});
        mchain b = make_mchain(env, {.name = "b", .capacity = 5, .memory = mchain_memory::preallocated,
                                     .on_overflow = mchain_overflow::throw_error, .wait_for_space = 30s});
        ledger book(producers, each);
        // A session takes from b too (in odd rounds): whichever taker comes first gets a message.
        std::atomic<std::uint64_t> by_session{0};
        session s(env);
        event_handle sub;
        if (rounds % 2)
            sub = s.subscribe(b, [&](const item& m) {
                book.receive(m);
                ++by_session;
            });
        std::vector<std::future<receive_result>> rx;
        for (std::uint32_t r = 0; r < selectors; ++r)
            rx.push_back(std::async(std::launch::async, [&] {
                auto take = [&](const item& m) { book.receive(m); };
                return select(from_all(), receive_case(a, take), receive_case(b, take));
            }));
        // Half the producers feed a, half b; one of them also offers through a select's send_case.
        std::vector<std::future<void>> tx;
        for (std::uint32_t p = 0; p < producers; ++p)
            tx.push_back(std::async(std::launch::async, [&, p] {
                const mchain& to = p % 2 ? b : a;
                for (std::uint32_t i = 0; i < each; ++i) {
                    if (p == 0 && i % 10 == 0) {
                        const receive_result r = select(from_all().handle_n(1), send_case(to, item{p, i}, [] {}));
                        EXPECT_EQ(r.sent, 1u);
                    } else {
                        send<item>(to, item{p, i});
                    }
                }
            }));
        for (auto& f : tx) get_bounded(f);
        const std::uint64_t total = std::uint64_t{producers} * each;
        // The session may still be draining b: everything arrives before the close.
        const auto end = std::chrono::steady_clock::now() + 30s;
        while (book.got() != total && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
        a.close(mchain_close::retain_content);
        b.close(mchain_close::retain_content);
        for (auto& f : rx) EXPECT_EQ(get_bounded(f).status, receive_status::closed) << "round " << rounds;
        sub.shutdown();

        EXPECT_EQ(book.got(), total) << "round " << rounds;
        EXPECT_EQ(book.twice(), 0u) << "round " << rounds;
        EXPECT_EQ(a.stats().handled + b.stats().handled, total) << "round " << rounds;
        EXPECT_EQ(a.stats().stored + b.stats().stored, total) << "round " << rounds;
        expect_balanced(env);
        if (testing::Test::HasFailure()) break;
    }
    EXPECT_GT(rounds, 0);
}
