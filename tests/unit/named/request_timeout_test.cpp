// The timeout of a request: what it holds once the request is answered.

#include <mailroom/named/named.hpp>

#include <mailroom/mailroom.hpp>

#include <test_support.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

using namespace mailroom;
// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;

namespace {

struct blob {
    std::shared_ptr<int> token;
    std::vector<char> ballast = std::vector<char>(1024);
};

TEST(request_timeout, an_answered_request_lets_go_of_its_timeout_and_reply_at_once) {
    environment env;
    session server(env, {.name = "server"});
    std::mutex mu;
    std::vector<std::weak_ptr<int>> replies;
    auto h = register_named(server, "big", [&](incoming& in) {
        auto token = std::make_shared<int>(0);
        {
            std::lock_guard g(mu);
            replies.push_back(token);
        }
        in.reply<blob>(blob{std::move(token)});
    });
    constexpr int n = 200;
    for (int i = 0; i < n; ++i) {
        auto r = request<blob>(env, "big", i, {.timeout = 1h});
        ASSERT_EQ(r.wait(), request_state::replied);
    }  // each handle dropped: nothing refers to the request but its timeout
    {
        std::lock_guard g(mu);
        ASSERT_EQ(replies.size(), static_cast<std::size_t>(n));
    }
    // The server's handler may still be returning from the last one (its incoming holds the
    // request until then); after that nothing may hold a reply.
    const auto alive = [&] {
        std::lock_guard g(mu);
        int n = 0;
        for (auto& w : replies) n += !w.expired();
        return n;
    };
    EXPECT_TRUE(test::eventually([&] { return alive() == 0; }, 5s))
        << alive() << " replies of answered, dropped requests are still held";
    EXPECT_TRUE(test::eventually([&] { return env.stats().timers_pending == 0; }, 10s))
        << env.stats().timers_pending << " timeouts of answered requests still in the wheel";
    EXPECT_EQ(env.stats().timers_fired, 0u);
}

}  // namespace
