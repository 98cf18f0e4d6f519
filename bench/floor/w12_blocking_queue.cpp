// W12 floor: a bounded blocking queue alone. 2 producer threads x 5M items into one
// moodycamel::BlockingConcurrentQueue (Debian's libconcurrentqueue-dev) bounded at 1,024 items by
// a semaphore of free slots (moodycamel's LightweightSemaphore, which spins briefly before it
// blocks): a producer takes a slot before it enqueues and waits when none is left, the consumer
// takes up to 256 items at once, blocking when the queue is empty, gives their slots back and
// checks each producer's order. Figure: M messages per second from the start signal to the
// moment the consumer took the last item.
//
// This is what an mchain with the same bound cannot do better than: the same 16-byte item as
// mailroom's W12, producers with their own producer token (the queue's fastest path), both
// sides blocking rather than spinning for ever. No envelope, no message type, no handler, no
// close or select: a channel adds exactly those on top.

#include "../alloc_counter.hpp"
#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <concurrentqueue/blockingconcurrentqueue.h>

#include <atomic>
#include <thread>

namespace {

constexpr const char* workload = "W12";

struct item {
    std::uint32_t producer;
    std::uint64_t seq;
};

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv, {{"producers", "N"}, {"capacity", "N"}});
    const auto producers = static_cast<std::uint32_t>(o.get_long("producers", 2));
    const auto capacity = static_cast<int>(o.get_long("capacity", 1024));
    const std::uint64_t per_producer = o.scaled(5'000'000, 1000);
    const std::uint64_t total = per_producer * producers;
    std::printf("W12 floor: %u producer threads x %llu items into one moodycamel::BlockingConcurrentQueue bounded at "
                "%d by a semaphore, one blocking consumer\n",
                producers, static_cast<unsigned long long>(per_producer), capacity);

    bench::account_log accounts;
    auto s = bench::repeat(o, "M msg/s", [&] {
        moodycamel::BlockingConcurrentQueue<item> q;
        moodycamel::LightweightSemaphore slots(capacity);
        std::atomic<bool> go{false};
        std::vector<std::uint64_t> next(producers, 0);
        std::uint64_t count = 0;
        std::int64_t t1 = 0;
        bench::account a1;
        std::thread consumer([&] {
            moodycamel::ConsumerToken token(q);
            item buf[256];
            while (count < total) {
                const std::size_t n = q.wait_dequeue_bulk(token, buf, 256);
                slots.signal(static_cast<int>(n));
                for (std::size_t i = 0; i < n; ++i) {
                    const item& m = buf[i];
                    if (m.seq != next[m.producer])
                        bench::fail(workload, "producer " + std::to_string(m.producer) + ": got #" +
                                                  std::to_string(m.seq) + ", expected #" +
                                                  std::to_string(next[m.producer]));
                    ++next[m.producer];
                }
                count += n;
            }
            t1 = bench::now_ns();
            a1 = bench::account::now();
        });
        std::vector<std::thread> threads;
        for (std::uint32_t p = 0; p < producers; ++p)
            threads.emplace_back([&, p] {
                moodycamel::ProducerToken token(q);
                while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                for (std::uint64_t i = 0; i < per_producer; ++i) {
                    slots.wait();
                    if (!q.enqueue(token, item{p, i})) bench::fail(workload, "enqueue failed");
                }
            });
        const bench::account a0 = bench::account::now();
        const std::int64_t t0 = bench::now_ns();
        go.store(true, std::memory_order_release);
        for (auto& t : threads) t.join();
        consumer.join();
        bench::check(count == total, workload,
                     "took " + std::to_string(count) + " items, expected " + std::to_string(total));
        accounts.add(a1 - a0, total);
        return static_cast<double>(total) / (static_cast<double>(t1 - t0) / 1e9) / 1e6;
    });
    bench::report(workload, "bounded blocking queue alone (capacity " + std::to_string(capacity) + "), " +
                                std::to_string(producers) + " producers",
                  s, "M_msgs_per_s", accounts.fields(), "floor");
    return 0;
}
