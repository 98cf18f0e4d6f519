// W2 floor: ping-pong of two "agents" on one thread through a queue, 10M round trips (+10k
// warm-up), ns per round trip.
//
// What a one-thread dispatcher must do at the least for each message: push it to a queue, pop
// it, and call the receiver's handler through a function pointer (the handler is not known at
// compile time in a real dispatcher, so it is not inlined here either). The queue is a
// fixed-size ring of {handler, receiver, payload} entries: no allocation, no lock, no atomics.
// The handlers do what mailroom's agents do: the ponger answers each ping with a pong, the
// pinger counts pongs, checks their order and sends the next ping.

#include "../alloc_counter.hpp"
#define MAILROOM_BENCH_WITHOUT_LIBRARY 1
#include "../harness.hpp"

#include <array>

namespace {

constexpr const char* workload = "W2";

struct entry;
using handler = void (*)(void* receiver, std::uint64_t payload);

struct entry {
    handler call;
    void* receiver;
    std::uint64_t payload;
};

class ring {
public:
    void push(handler h, void* r, std::uint64_t v) noexcept { slots_[tail_++ & mask] = {h, r, v}; }
    bool pop(entry& e) noexcept {
        if (head_ == tail_) return false;
        e = slots_[head_++ & mask];
        return true;
    }

private:
    static constexpr std::size_t size = 1024, mask = size - 1;
    std::array<entry, size> slots_{};
    std::size_t head_ = 0, tail_ = 0;
};

struct pinger;
struct ponger {
    ring* q;
    pinger* peer;
};
struct pinger {
    ring* q = nullptr;
    ponger* peer = nullptr;
    std::uint64_t warmup = 0, rounds = 0, pongs = 0;
    std::int64_t t0 = 0, t1 = 0;
    bench::account a0, a1;
    bool done = false;
};

void on_pong(void* self, std::uint64_t n);
__attribute__((noinline)) void on_ping(void* self, std::uint64_t n) {
    auto* p = static_cast<ponger*>(self);
    p->q->push(&on_pong, p->peer, n);
}
__attribute__((noinline)) void on_pong(void* self, std::uint64_t n) {
    auto* p = static_cast<pinger*>(self);
    ++p->pongs;
    if (n != p->pongs) bench::fail(workload, "pong out of order");
    if (n == p->warmup) {
        p->a0 = bench::account::now();
        p->t0 = bench::now_ns();
    }
    if (n == p->warmup + p->rounds) {
        p->t1 = bench::now_ns();
        p->a1 = bench::account::now();
        p->done = true;
        return;
    }
    p->q->push(&on_ping, p->peer, n + 1);
}

}  // namespace

int main(int argc, char** argv) {
    auto o = bench::parse(argc, argv);
    const std::uint64_t rounds = o.scaled(10'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    std::printf("W2 floor: push/pop/call through a ring queue on one thread, %llu round trips (+%llu warm-up)\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        ring q;
        pinger a;
        a.q = &q;
        a.warmup = warmup;
        a.rounds = rounds;
        ponger b{&q, &a};
        a.peer = &b;
        q.push(&on_ping, &b, 1);
        entry e{};
        while (q.pop(e)) e.call(e.receiver, e.payload);  // the "dispatcher" loop
        bench::check(a.done && a.pongs == rounds + warmup, workload,
                     "counted " + std::to_string(a.pongs) + " pongs, expected " + std::to_string(rounds + warmup));
        accounts.add(a.a1 - a.a0, 2 * rounds);
        return static_cast<double>(a.t1 - a.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "push/pop/call through a queue on one thread", s, "ns_per_round_trip", accounts.fields(),
                  "floor");
    return 0;
}
