#include "demo_named.hpp"

#if MAILROOM_TOOL_WITH_NET
#include "node_types.hpp"
#endif

#include <mailroom/core/clock.hpp>

#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <string_view>
#include <utility>

namespace mailroom::tool {

namespace {

using namespace std::chrono_literals;

constexpr auto request_period = 2ms;
constexpr int price_requests_per_tick = 3;
/// One requester tick in this many also sends a risk check down the slow path.
constexpr std::uint64_t slow_every = 250;
constexpr auto slow_path = 10ms;
constexpr auto slow_timeout = 2ms;
constexpr std::int64_t per_order_limit = 900;
constexpr auto drain_limit = 10s;
/// Requests issued and not yet seen final beyond which a requester skips its tick: the
/// requesters ask at a fixed rate, and a machine slower than that (a sanitizer build) would
/// otherwise queue requests without bound.
constexpr std::uint64_t max_in_flight = 256;
/// A request to the other process's pricing object gives up after this (its node is on
/// loopback: a reply takes well under a millisecond).
constexpr auto remote_timeout = 2s;

// ---- messages ----

/// To "pricer": the last price of a symbol, by its ticker.
struct price_request {
    std::string symbol;
};
struct price {
    symbol_id symbol;
    double bid;
    double ask;
    std::uint64_t sequence;
};

/// To "risk": may this order go? On the slow path the desk takes longer than the requester waits.
struct risk_check {
    symbol_id symbol;
    std::int64_t quantity;
    bool slow;
};
struct risk_ok {
    std::int64_t exposure;  ///< the symbol's exposure with this order
};

// Tickers nobody quotes: the pricer rejects them.
constexpr std::array<std::string_view, 2> unknown_symbols = {"ZZZZ", "BRK.B"};

std::uint64_t next_random(std::uint64_t& s) noexcept {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

bool starts_with(const std::string& s, std::string_view prefix) { return s.rfind(prefix, 0) == 0; }

std::uint64_t in_flight(const demo_metrics& m) noexcept {
    const std::uint64_t ended = m.requests_seen_replied.load(std::memory_order_relaxed) +
                                m.requests_seen_rejected.load(std::memory_order_relaxed) +
                                m.requests_seen_abandoned.load(std::memory_order_relaxed) +
                                m.requests_unseen.load(std::memory_order_relaxed);
    const std::uint64_t issued = m.requests_issued.load(std::memory_order_relaxed);
    return issued > ended ? issued - ended : 0;
}

enum class seen_by : std::uint8_t { then, coroutine, blocking };

/// One request the demo issued, from before it is sent until its final state is seen. Moves
/// with the callback or lives in the coroutine frame that will see it; destroyed unseen (a
/// then-callback dropped, a coroutine destroyed without resuming) it counts a request that
/// ended where the demo could not see it.
class tracked_request {
public:
    tracked_request(demo_metrics& m, seen_by how) noexcept : m_(&m), how_(how) {
        m.requests_issued.fetch_add(1, std::memory_order_relaxed);
    }
    tracked_request(tracked_request&& o) noexcept : m_(std::exchange(o.m_, nullptr)), how_(o.how_) {}
    tracked_request& operator=(tracked_request&&) = delete;
    ~tracked_request() {
        if (m_) m_->requests_unseen.fetch_add(1, std::memory_order_relaxed);
    }

    template <class R>
    void settle(const outgoing<R>& r) {
        const request_state s = r.state();
        settle(s, s == request_state::replied ? std::string() : r.reason());
    }

    void settle(request_state s, const std::string& reason) {
        demo_metrics& m = *std::exchange(m_, nullptr);
        switch (s) {
            case request_state::replied: m.requests_seen_replied.fetch_add(1, std::memory_order_relaxed); break;
            case request_state::rejected:
                m.requests_seen_rejected.fetch_add(1, std::memory_order_relaxed);
                if (starts_with(reason, "no object named"))
                    m.requests_seen_no_object.fetch_add(1, std::memory_order_relaxed);
                break;
            case request_state::abandoned:
                m.requests_seen_abandoned.fetch_add(1, std::memory_order_relaxed);
                if (starts_with(reason, "timed out"))
                    m.requests_seen_timed_out.fetch_add(1, std::memory_order_relaxed);
                else if (reason.find("went away") != std::string::npos)
                    m.requests_seen_went_away.fetch_add(1, std::memory_order_relaxed);
                break;
            default:  // a continuation ran before the request was final
                m.requests_unseen.fetch_add(1, std::memory_order_relaxed);
                return;
        }
        auto& by = how_ == seen_by::then       ? m.requests_seen_by_then
                   : how_ == seen_by::coroutine ? m.requests_seen_by_co_await
                                               : m.requests_seen_by_blocking;
        by.fetch_add(1, std::memory_order_relaxed);
    }

private:
    demo_metrics* m_;
    seen_by how_;
};

/// Lives in a coroutine frame: the drain waits until every task that started has ended.
class task_scope {
public:
    explicit task_scope(demo_metrics& m) noexcept : m_(m) { m.request_tasks_started.fetch_add(1); }
    task_scope(const task_scope&) = delete;
    task_scope& operator=(const task_scope&) = delete;
    ~task_scope() { m_.request_tasks_finished.fetch_add(1); }

private:
    demo_metrics& m_;
};

void check_price(const outgoing<price>& r, symbol_id asked, demo_metrics& m) {
    if (r.state() != request_state::replied) return;
    const price& p = r.reply();
    if (p.symbol != asked || !(p.bid < p.ask) || p.sequence == 0) m.bad_replies.fetch_add(1);
}

/// Asks the pricer and sees the answer in a callback on session `s`.
void ask_price(environment& env, session& s, demo_metrics& m, std::size_t pick) {
    const bool known = pick < symbols.size();
    const std::string_view ticker = known ? symbols[pick] : unknown_symbols[pick % unknown_symbols.size()];
    tracked_request seen(m, seen_by::then);
    auto r = request<price>(env, "pricer", price_request{std::string(ticker)}, send_options{});
    r.then(s, [seen = std::move(seen), &m, known, asked = static_cast<symbol_id>(pick)](
                  const outgoing<price>& done) mutable {
        seen.settle(done);
        if (known) check_price(done, asked, m);
    });
}

/// Asks the risk desk and sees the answer in a callback on session `s`.
void ask_risk(environment& env, session& s, demo_metrics& m, symbol_id symbol, std::int64_t quantity) {
    tracked_request seen(m, seen_by::then);
    auto r = request<risk_ok>(env, "risk", risk_check{symbol, quantity, false}, send_options{});
    r.then(s, [seen = std::move(seen)](const outgoing<risk_ok>& done) mutable { seen.settle(done); });
}

/// Checks an order with the risk desk, then (if it may go) asks its price: two requests in a
/// row, awaited on the requester's session. Parameters by value: the frame outlives the call.
task check_then_price(environment& env, demo_metrics& m, symbol_id symbol, std::int64_t quantity, bool slow) {
    task_scope scope(m);
    send_options risk_options;
    if (slow) risk_options.timeout = slow_timeout;
    // Each request is made before its co_await, not inside it: nothing temporary spans the
    // suspension.
    tracked_request risk_seen(m, seen_by::coroutine);
    auto check = request<risk_ok>(env, "risk", risk_check{symbol, quantity, slow}, std::move(risk_options));
    const outgoing<risk_ok> checked = co_await check;
    risk_seen.settle(checked);
    if (checked.state() != request_state::replied) co_return;

    tracked_request price_seen(m, seen_by::coroutine);
    auto ask = request<price>(env, "pricer", price_request{std::string(symbols[symbol])}, send_options{});
    const outgoing<price> priced = co_await ask;
    price_seen.settle(priced);
    check_price(priced, symbol, m);
}

#if MAILROOM_TOOL_WITH_NET
/// Asks the pricing object of the node in the second process (`demo --nodes`) and sees the
/// answer in a callback on session `s`: a known symbol must come back with its price, an
/// empty one is rejected there ("no symbol").
void ask_remote_quote(environment& env, session& s, demo_metrics& m, const std::string& target, std::uint64_t pick) {
    const std::string symbol = pick % 16 == 0 ? std::string() : std::string(symbols[pick % symbols.size()]);
    tracked_request seen(m, seen_by::then);
    m.remote_issued.fetch_add(1, std::memory_order_relaxed);
    auto r = request<quote_reply>(env, target, quote_request{symbol}, send_options{.timeout = remote_timeout});
    r.then(s, [seen = std::move(seen), &m, symbol](const outgoing<quote_reply>& done) mutable {
        seen.settle(done);
        switch (done.state()) {
            case request_state::replied:
                m.remote_replied.fetch_add(1, std::memory_order_relaxed);
                if (symbol.empty() || done.reply().symbol != symbol || done.reply().price != price_of(symbol))
                    m.bad_replies.fetch_add(1);
                break;
            case request_state::rejected: m.remote_rejected.fetch_add(1, std::memory_order_relaxed); break;
            case request_state::abandoned: m.remote_abandoned.fetch_add(1, std::memory_order_relaxed); break;
            default: break;  // counted unseen by settle()
        }
    });
}
#endif

}  // namespace

/// One registration of "risk": its handle, which its own handler and the thread both reach
/// (hence the lock), and its sentinel, set once an unregister returned.
struct risk_incarnation {
    std::mutex lock;
    named_handle handle;
    std::shared_ptr<std::atomic<bool>> unregistered = std::make_shared<std::atomic<bool>>(false);
    std::atomic<bool> destroy_on_next{false};

    named_handle take() {
        std::lock_guard g(lock);
        return std::move(handle);
    }
    bool live() {
        std::lock_guard g(lock);
        return static_cast<bool>(handle);
    }
};

named_traffic::named_traffic(environment& env, const dispatcher& pool, const mbox& quotes, demo_metrics& metrics,
                             std::string remote_quotes)
    : env_(env), metrics_(metrics), pricer_(env, {.name = "pricer", .bind = pool.bind()}),
      // The slow path blocks its thread: a thread of its own, not a pool worker.
      risk_desk_(env, {.name = "risk", .bind = one_thread::make_dispatcher(env, "risk").bind()}),
      control_(env, {.name = "requests-control", .bind = pool.bind()}) {
    pricer_quotes_ = pricer_.subscribe<quote>(quotes, [this](const quote& q) { last_quote_[q.symbol] = q; });
    pricer_name_ = register_named(pricer_, "pricer", [this](incoming& in) {
        const std::string& ticker = in.as<price_request>().symbol;
        const auto known = std::find(symbols.begin(), symbols.end(), ticker);
        if (known == symbols.end()) return in.reject("unknown symbol '" + ticker + "'");
        const quote& q = last_quote_[static_cast<std::size_t>(known - symbols.begin())];
        if (q.sequence == 0) return in.reject("no quote for " + ticker + " yet");
        in.reply<price>(price{q.symbol, q.bid, q.ask, q.sequence});
    });

    control_inbox_ = control_.add_inbox<stop_requests>([this](const stop_requests& r) {
        {
            std::lock_guard g(reply_lock_);
            reply_to_ = r.reply_to;
        }
        stop_.store(true, std::memory_order_release);
    });

    register_risk();
    for (std::size_t i = 0; i < requesters; ++i) {
        requester_[i] = session(env, {.name = "requester-" + std::to_string(i + 1), .bind = pool.bind()});
        // Spread over the period, so that the requesters do not all ask at once.
        const auto step = std::chrono::nanoseconds(request_period) / static_cast<long>(requesters);
        const std::chrono::nanoseconds first = request_period + step * static_cast<long>(i);
        requester_timer_[i] = requester_[i].add_timer(
            first, request_period,
            [&env, &m = metrics_, &self = requester_[i], rng = std::uint64_t{0x2545f4914f6cdd1d} * (i + 1),
             ticks = std::uint64_t{0}, remote = remote_quotes]() mutable {
                if (in_flight(m) > max_in_flight) {
                    m.request_ticks_skipped.fetch_add(1, std::memory_order_relaxed);
                    return;
                }
                ++ticks;
                for (int n = 0; n < price_requests_per_tick; ++n)
                    ask_price(env, self, m, next_random(rng) % (symbols.size() + 1));
                const auto symbol = static_cast<symbol_id>(next_random(rng) % symbols.size());
                // 1..1000 against a limit of 900: a tenth are rejected.
                const auto quantity = static_cast<std::int64_t>(next_random(rng) % 1000) + 1;
                ask_risk(env, self, m, symbol, quantity);
                if (ticks % 2 == 0) check_then_price(env, m, symbol, quantity, false);
                if (ticks % slow_every == 0) check_then_price(env, m, symbol, quantity, true);
#if MAILROOM_TOOL_WITH_NET
                if (!remote.empty()) ask_remote_quote(env, self, m, remote, next_random(rng));
#else
                (void)remote;  // --nodes is refused without the net layer
#endif
            });
    }
    thread_ = std::thread([this] { run(); });
}

void named_traffic::register_risk() {
    auto incarnation = std::make_shared<risk_incarnation>();
    demo_metrics& m = metrics_;
    incarnation->handle = register_named(
        risk_desk_, "risk",
        [this, &m, self = std::weak_ptr(incarnation), unregistered = incarnation->unregistered](incoming& in) {
            if (unregistered->load(std::memory_order_acquire))
                m.named_handler_after_unregister.fetch_add(1, std::memory_order_relaxed);
            const risk_check& c = in.as<risk_check>();
            if (c.slow) std::this_thread::sleep_for(slow_path);  // the requester gave up by now
            if (c.quantity > per_order_limit) {
                in.reject("order of " + std::to_string(c.quantity) + " over the limit of " +
                          std::to_string(per_order_limit));
            } else {
                exposure_[c.symbol] += c.quantity;
                in.reply<risk_ok>(risk_ok{exposure_[c.symbol]});
            }
            // Asked to go: destroy() from inside its own handler does not wait, so holding
            // the lock meanwhile is fine.
            auto i = self.lock();
            if (!i || !i->destroy_on_next.load(std::memory_order_acquire)) return;
            std::lock_guard g(i->lock);
            if (!i->handle) return;
            i->handle.destroy();
            unregistered->store(true, std::memory_order_release);
            m.risk_destroyed_by_handler.fetch_add(1, std::memory_order_relaxed);
        });
    risk_ = std::move(incarnation);
    m.risk_registrations.fetch_add(1, std::memory_order_relaxed);
}

void named_traffic::unregister_risk(bool from_own_handler) {
    if (!risk_) return;
    if (from_own_handler) {
        risk_->destroy_on_next.store(true, std::memory_order_release);
        // Requests keep coming, so its handler runs within a few milliseconds.
        for (int i = 0; i < 50 && risk_->live(); ++i) std::this_thread::sleep_for(1ms);
    }
    if (named_handle h = risk_->take()) {
        // Shut down from this thread: when it returns, no handler of it runs, nor will.
        h.shutdown();
        risk_->unregistered->store(true, std::memory_order_release);
        metrics_.risk_shut_down_by_thread.fetch_add(1, std::memory_order_relaxed);
    }
    risk_.reset();
}

void named_traffic::ask_and_wait() {
    const auto pick = static_cast<symbol_id>(rng_() % symbols.size());
    {
        tracked_request seen(metrics_, seen_by::blocking);
        auto r = request<price>(env_, "pricer", price_request{std::string(symbols[pick])},
                                send_options{.source = "risk-keeper", .timeout = 1s});
        std::future<price> f = r.future();
        if (f.wait_for(5s) == std::future_status::ready) {
            try {
                const price p = f.get();
                if (p.symbol != pick || !(p.bid < p.ask)) metrics_.bad_replies.fetch_add(1);
            } catch (const request_failed_error&) {
                // no quote for it yet, or timed out on a slow machine: seen all the same
            }
            seen.settle(r);
        }
    }
    tracked_request seen(metrics_, seen_by::blocking);
    auto r = request<risk_ok>(env_, "risk", risk_check{pick, 100, false},
                              send_options{.source = "risk-keeper", .timeout = 1s});
    if (r.wait_for(5s)) seen.settle(r);
}

bool named_traffic::pause(std::chrono::nanoseconds d) {
    const std::int64_t until = now_ns() + d.count();
    while (now_ns() < until) {
        if (stop_requested() || env_.stopping()) return false;
        std::this_thread::sleep_for(2ms);
    }
    return !stop_requested() && !env_.stopping();
}

void named_traffic::run() {
    bool by_thread = true;
    while (pause(0ns)) {
        if (!risk_) {
            try {
                register_risk();
            } catch (const environment_stopped_error&) {
                break;
            } catch (const session_destroyed_error&) {
                break;  // the environment's teardown destroyed the desk
            }
        }
        // Up for 40..80 ms, counted from now: the blocking requests take part of it.
        const std::int64_t up_since = now_ns();
        const std::chrono::nanoseconds up = std::chrono::milliseconds(40 + rng_() % 41);
        ask_and_wait();
        if (!pause(up - std::chrono::nanoseconds(now_ns() - up_since))) break;
        // Alternately from this thread and from inside its own handler.
        unregister_risk(!by_thread);
        by_thread = !by_thread;
        pause(std::chrono::milliseconds(10 + rng_() % 21));
    }
    finish();
}

bool named_traffic::wait_drained(std::chrono::nanoseconds limit) {
    demo_metrics& m = metrics_;
    const std::int64_t until = now_ns() + limit.count();
    for (;;) {
        // Every task ended (so each of its requests was issued and seen), then every request
        // issued was seen or dropped.
        if (m.request_tasks_finished.load() == m.request_tasks_started.load() &&
            m.requests_issued.load() ==
                m.requests_seen_replied.load() + m.requests_seen_rejected.load() + m.requests_seen_abandoned.load() +
                    m.requests_unseen.load())
            return true;
        if (now_ns() >= until) return false;
        std::this_thread::sleep_for(1ms);
    }
}

void named_traffic::finish() {
    // No request is issued once these return (a tick running now is waited for), but requests
    // in flight still find "risk" if it is up, and their callbacks a live session.
    for (auto& t : requester_timer_) t.shutdown();
    const bool drained = wait_drained(drain_limit);
    unregister_risk(false);
    pricer_name_.destroy();
    pricer_quotes_.destroy();
    for (auto& s : requester_) s.destroy();
    pricer_.destroy();
    risk_desk_.destroy();
    control_.destroy();
    metrics_.requests_drained.store(drained, std::memory_order_release);

    mbox reply_to;
    {
        std::lock_guard g(reply_lock_);
        reply_to = reply_to_;
    }
    if (!reply_to) return;  // the environment is stopping without the reporter's word
    try {
        send<requests_stopped>(reply_to, requests_stopped{drained});
    } catch (const environment_stopped_error&) {
    }
}

}  // namespace mailroom::tool
