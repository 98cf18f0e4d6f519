// W8 for SObjectizer 5.8: request/reply to a named object across two threads, 1M round trips
// (+10k warm-up) at scale 1, ns per round trip.
//
// Set-up and why it is the fair comparison: mailroom's W8 has a client session on one
// one_thread dispatcher send a request to the named object "server", served by a session on a
// second one_thread dispatcher, and send the next only when the reply came back, so every
// request and every reply crosses between two threads; the request is addressed by name (a
// lookup per request) and the reply is handled on the client's own serial context. SObjectizer's
// named object is a named mbox (environment_t::create_mbox("server"), found by name in the
// environment's mbox dictionary), and SObjectizer 5.8 has no request/reply of its own (the
// request_value/request_future helpers moved out of the core, to so5extra): its idiom is a
// request message that carries the reply-to mbox, answered with so_5::send. So: a server agent
// on a one_thread dispatcher subscribed to the named mbox answers request{id, reply_to} with
// reply{id + 1} sent to reply_to; a client agent on a second one_thread dispatcher looks the
// name up for each request (`--lookup once` resolves it once and keeps the mbox) and sends the
// next request from its reply handler, which checks every reply (value and order). Queue
// lock: SObjectizer's default, the combined one, for the reason W1 gives (two busy threads, a
// peer that answers within the spin, no wake-up per message; `--lock simple` for the other).
// No timers are used. Nothing else differs from SObjectizer's defaults. SObjectizer tracks no
// request state (no rejected or abandoned request): what this measures is the messaging a
// request/reply needs in SObjectizer, a little less work than mailroom's tracked requests.

#include "../alloc_counter.hpp"
#include "so5_common.hpp"

namespace {

constexpr const char* workload = "W8";
constexpr const char* server_name = "server";

struct request {
    std::uint64_t id;
    so_5::mbox_t reply_to;
};
struct reply {
    std::uint64_t value;
};

struct run_result {
    std::int64_t t0 = 0, t1 = 0;
    bench::account a0, a1;
    std::uint64_t replies = 0;
};

class server final : public so_5::agent_t {
public:
    explicit server(context_t ctx) : so_5::agent_t(std::move(ctx)) {}

    void so_define_agent() override {
        so_subscribe(so_environment().create_mbox(server_name)).event([](so_5::mhood_t<request> rq) {
            so_5::send<reply>(rq->reply_to, rq->id + 1);
        });
    }
};

class client final : public so_5::agent_t {
public:
    client(context_t ctx, std::uint64_t warmup, std::uint64_t rounds, bool lookup_each, run_result* r)
        : so_5::agent_t(std::move(ctx)), warmup_(warmup), rounds_(rounds), lookup_each_(lookup_each), r_(r) {}

    void so_define_agent() override {
        so_subscribe_self().event([this](so_5::mhood_t<reply> rp) {
            const std::uint64_t id = r_->replies;
            if (rp->value != id + 1)
                bench::fail(workload, "request #" + std::to_string(id) + " got reply " + std::to_string(rp->value) +
                                          ", expected " + std::to_string(id + 1));
            ++r_->replies;
            if (r_->replies == warmup_) {
                r_->a0 = bench::account::now();
                r_->t0 = bench::now_ns();
            }
            if (r_->replies == warmup_ + rounds_) {
                r_->t1 = bench::now_ns();
                r_->a1 = bench::account::now();
                so_environment().stop();
                return;
            }
            send_request(id + 1);
        });
    }
    void so_evt_start() override {
        cached_ = so_environment().create_mbox(server_name);
        send_request(0);
    }

private:
    void send_request(std::uint64_t id) {
        const so_5::mbox_t dest = lookup_each_ ? so_environment().create_mbox(server_name) : cached_;
        so_5::send<request>(dest, id, so_direct_mbox());
    }

    std::uint64_t warmup_, rounds_;
    bool lookup_each_;
    run_result* r_;
    so_5::mbox_t cached_;
};

}  // namespace

int main(int argc, char** argv) {
    using namespace bench::so5_peer;
    const std::map<std::string, std::string> extras{lock_flag, {"lookup", "each|once"}};
    auto o = bench::parse(argc, argv, extras);
    const std::uint64_t rounds = o.scaled(1'000'000, 1000);
    const std::uint64_t warmup = 10'000;
    const lock_kind lock = lock_from(o, lock_kind::combined, argv[0], extras);
    const std::string lookup = o.get("lookup", "each");
    if (lookup != "each" && lookup != "once") bench::usage(argv[0], extras);
    std::printf("W8 SObjectizer request/reply to a named mbox across two threads: %llu round trips (+%llu warm-up), "
                "server and client agents on two one_thread dispatchers, name looked up %s, %s lock\n",
                static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(warmup),
                lookup == "each" ? "for each request" : "once", to_string(lock));

    bench::account_log accounts;
    auto s = bench::repeat(o, "ns/round trip", [&] {
        run_result r;
        {
            so_5::wrapped_env_t env{
                so_5::wrapped_env_t::wait_init_completion,
                [&](so_5::environment_t& e) {
                    // The server first, in a cooperation of its own: it is subscribed to the name
                    // before the client's first request.
                    e.introduce_coop(so_5::disp::one_thread::make_dispatcher(e).binder(),
                                     [](so_5::coop_t& c) { c.make_agent<server>(); });
                    e.introduce_coop(so_5::disp::one_thread::make_dispatcher(e).binder(), [&](so_5::coop_t& c) {
                        c.make_agent<client>(warmup, rounds, lookup == "each", &r);
                    });
                },
                [&](so_5::environment_params_t& params) { use_lock(params, lock); }};
            env.join();  // the client stops the environment after the last reply
        }
        bench::check(r.replies == rounds + warmup, workload,
                     "counted " + std::to_string(r.replies) + " replies, expected " + std::to_string(rounds + warmup));
        accounts.add(r.a1 - r.a0, 2 * rounds);
        return static_cast<double>(r.t1 - r.t0) / static_cast<double>(rounds);
    });
    bench::report(workload,
                  "SObjectizer request/reply to a named mbox across two threads (lookup " + lookup + ", " +
                      to_string(lock) + " lock)",
                  s, "ns_per_round_trip", accounts.fields(), "sobjectizer");
    return 0;
}
