// W10 peer: the work of W10 with standalone Asio: 1,000 connected local stream socket pairs
// (asio::local::connect_pair), one io_context run by 2 threads, each pair bouncing a 64-byte
// message with async_read / async_write, 1M round trips in all. Each socket's operations are
// chained (one outstanding at a time), so no strand is needed. Figure: round trips per second.

#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <asio/io_context.hpp>
#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {

constexpr const char* workload = "W10";
constexpr std::size_t message_size = 64;
using socket_t = asio::local::stream_protocol::socket;

struct pair_state {
    explicit pair_state(asio::io_context& io) : a(io), b(io) {}
    socket_t a, b;
    std::uint64_t left = 0;
    std::array<char, message_size> out{}, in_a{}, in_b{};
    std::atomic<std::uint64_t>* done = nullptr;
    std::atomic<std::uint64_t>* bad = nullptr;

    void start() {
        asio::async_write(a, asio::buffer(out), [this](std::error_code ec, std::size_t) {
            if (ec) ++*bad;
        });
        read_a();
    }
    void read_a() {
        asio::async_read(a, asio::buffer(in_a), [this](std::error_code ec, std::size_t) {
            if (ec) return void(++*bad);
            if (in_a != out) ++*bad;
            if (--left == 0) return void(done->fetch_add(1, std::memory_order_release));
            asio::async_write(a, asio::buffer(out), [this](std::error_code ec2, std::size_t) {
                if (ec2) ++*bad;
            });
            read_a();
        });
    }
    void echo_b() {
        asio::async_read(b, asio::buffer(in_b), [this](std::error_code ec, std::size_t) {
            if (ec) return;  // closed at the end
            asio::async_write(b, asio::buffer(in_b), [this](std::error_code ec2, std::size_t) {
                if (ec2) return;
                echo_b();
            });
        });
    }
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"pairs", "N"}, {"threads", "N"}});
    const std::uint64_t total = o.scaled(1'000'000, 1000);
    const auto pairs = static_cast<std::size_t>(o.get_long("pairs", 1000));
    const auto threads = static_cast<std::size_t>(o.get_long("threads", 2));
    std::printf("W10 Asio: %zu local socket pairs, one io_context on %zu threads, %llu round trips\n", pairs, threads,
                static_cast<unsigned long long>(total));

    auto s = bench::repeat(o, "round trips/s", [&] {
        std::atomic<std::uint64_t> done{0}, bad{0};
        asio::io_context io(static_cast<int>(threads));
        std::vector<std::unique_ptr<pair_state>> ps(pairs);
        for (std::size_t i = 0; i < pairs; ++i) {
            auto& p = ps[i];
            p = std::make_unique<pair_state>(io);
            asio::local::connect_pair(p->a, p->b);
            p->left = total / pairs + (i < total % pairs ? 1 : 0);
            p->out.fill(static_cast<char>('a' + i % 26));
            p->done = &done;
            p->bad = &bad;
        }
        const std::int64_t t0 = bench::now_ns();
        for (auto& p : ps) {
            p->echo_b();
            p->start();
        }
        std::vector<std::thread> ts;
        for (std::size_t t = 0; t < threads; ++t)
            ts.emplace_back([&] {
                while (done.load(std::memory_order_acquire) < pairs) io.run_one_for(std::chrono::milliseconds(10));
            });
        for (auto& t : ts) t.join();
        const std::int64_t t1 = bench::now_ns();
        for (auto& p : ps) {
            std::error_code ec;
            p->a.close(ec);
            p->b.close(ec);
        }
        io.restart();
        io.run();  // lets the cancelled echoes finish
        bench::check(bad.load() == 0, workload, std::to_string(bad.load()) + " messages came back wrong");
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9);
    });
    bench::report(workload, std::to_string(total) + " round trips", s, "round_trips_per_s", {}, "asio");
    return 0;
}
