// W8 for CAF 0.17: request/reply to a named object across two threads, 100k round trips (+10k
// warm-up) at scale 1, ns per round trip.
//
// Set-up and why it is the fair comparison: mailroom's W8 has a client on one thread send a
// request to a named object served on another thread and wait for the reply before sending the
// next, so every request and every reply crosses between two threads. CAF's named object is an
// actor registered in the actor registry under an atom (`registry().put(atom("server"), ...)`),
// and its request/reply is `request(server, infinite, id).then(...)`: CAF tags the request with
// a response id, the server's handler answers by returning a value, and CAF routes it back to
// the `then` handler. Both actors are `detached` (a thread each), for the reason W1 gives: CAF's
// work-stealing scheduler keeps a scheduled request/reply on one worker (the woken actor goes to
// the sender's own queue). Measured on these 2-core machines with two scheduled actors and 2
// workers, 5 of 20,000 replies were handled on another thread than the server's, which makes
// it a one-thread figure (about 0.8 us against 50 us detached). `--spawn scheduled` runs that
// variant for reference; the default, `detached`, is the one compared.
//
// A mailroom request is addressed by name, so by default the client looks the name up in CAF's
// registry for every request (a shared spinlock, a hash map and a reference count; the
// difference from `--lookup once`, which resolves it once and keeps the handle, is within the
// noise of the wake-ups). The request carries a uint64_t id and the reply returns id + 1; every
// reply is checked (value and order). scheduler.max-threads=2 as in all CAF peers (its workers
// stay idle with detached actors); nothing else differs from CAF's defaults.
//
// One difference in size, as in CAF's W1: 100k round trips at scale 1, not 1M. Each detached
// round trip costs two thread wake-ups (tens of microseconds each on these VMs), so 1M would take
// about a minute per repetition; 100k already averages over several seconds, and the figure is
// per round trip. `--rounds N` overrides it (e.g. --rounds 1000000 for the full count).

#include "../alloc_counter.hpp"
#include "caf_common.hpp"

namespace {

constexpr const char* workload = "W8";
constexpr caf::atom_value server_name = caf::atom("server");

struct run_result {
    std::int64_t t0 = 0, t1 = 0;
    bench::account a0, a1;
    std::uint64_t replies = 0;
    std::promise<void> done;
};

struct client_setup {
    std::uint64_t warmup = 0, rounds = 0;
    bool lookup_each = true;
    run_result* r = nullptr;
};

caf::behavior server(caf::event_based_actor*) {
    return {[](std::uint64_t id) { return id + 1; }};
}

// Sends request `id` and, on its reply, the next one; the last reply stops both actors.
void request_next(caf::event_based_actor* self, caf::actor cached, const client_setup& c, std::uint64_t id) {
    caf::actor dest = c.lookup_each ? self->home_system().registry().get<caf::actor>(server_name) : cached;
    if (!dest) bench::fail(workload, "the name 'server' is not registered");
    self->request(dest, caf::infinite, id)
        .then(
            [=](std::uint64_t reply) {
                run_result* r = c.r;
                if (reply != id + 1 || id != r->replies)
                    bench::fail(workload, "request #" + std::to_string(id) + " (replies so far " +
                                              std::to_string(r->replies) + ") got reply " + std::to_string(reply) +
                                              ", expected " + std::to_string(id + 1));
                ++r->replies;
                if (r->replies == c.warmup) {
                    r->a0 = bench::account::now();
                    r->t0 = bench::now_ns();
                }
                if (r->replies == c.warmup + c.rounds) {
                    r->t1 = bench::now_ns();
                    r->a1 = bench::account::now();
                    self->send_exit(dest, caf::exit_reason::user_shutdown);
                    self->quit();
                    r->done.set_value();
                    return;
                }
                request_next(self, cached, c, id + 1);
            },
            [=](caf::error& e) {
                bench::fail(workload, "request #" + std::to_string(id) + " failed: " + self->system().render(e));
            });
}

caf::behavior client(caf::event_based_actor* self, client_setup c) {
    caf::actor cached = self->home_system().registry().get<caf::actor>(server_name);
    request_next(self, cached, c, 0);
    // Replies arrive through the `then` handlers; the behavior only keeps the actor alive.
    return {[](caf::atom_constant<caf::atom("unused")>) {}};
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::string> extras{
        {"spawn", "detached|scheduled"}, {"lookup", "each|once"}, {"rounds", "N"}};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t rounds = o.extra.count("rounds") ? static_cast<std::uint64_t>(std::max(1000L, o.get_long("rounds", 0)))
                                                         : o.scaled(100'000, 1000);
    const std::uint64_t warmup = 10'000;
    const std::string spawn = o.get("spawn", "detached");
    const std::string lookup = o.get("lookup", "each");
    if (spawn != "detached" && spawn != "scheduled") bench::usage(argv[0], extras);
    if (lookup != "each" && lookup != "once") bench::usage(argv[0], extras);
    std::printf("W8 CAF request/reply to a named actor across two threads: %llu round trips (+%llu warm-up), %s "
                "actors, name looked up %s, 2 scheduler workers\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup), spawn.c_str(),
                lookup == "each" ? "for each request" : "once");

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        run_result r;
        {
            caf::actor_system_config cfg;
            bench::caf_peer::configure(cfg, 2);
            caf::actor_system sys{cfg};
            const client_setup c{warmup, rounds, lookup == "each", &r};
            auto srv = spawn == "detached" ? sys.spawn<caf::detached>(server) : sys.spawn(server);
            sys.registry().put(server_name, srv);
            if (spawn == "detached") sys.spawn<caf::detached>(client, c);
            else sys.spawn(client, c);
            r.done.get_future().wait();
            sys.registry().erase(server_name);
        }  // the actor_system's destructor waits for both actors to finish
        bench::check(r.replies == rounds + warmup, workload,
                     "counted " + std::to_string(r.replies) + " replies, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload, "CAF request/reply to a named actor across two threads (" + spawn + ", lookup " + lookup + ")",
                  s, "ns_per_round_trip", accounts.fields(), "caf");
    return 0;
}
