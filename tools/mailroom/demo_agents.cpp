#include "demo_agents.hpp"

#include "demo_report.hpp"

#include <mailroom/core/clock.hpp>

#include <algorithm>
#include <cstdio>

namespace mailroom::tool {

using namespace std::chrono_literals;

// ---- feed ----

feed::feed(feed_options options, demo_metrics& metrics) : options_(std::move(options)), metrics_(metrics) {
    set_name("feed");
    for (std::size_t s = 0; s < symbols.size(); ++s) mid_[s] = 100.0 + 10.0 * static_cast<double>(s);
}

void feed::configure() {
    subscribe(direct_mbox(), &feed::on_tick);
    subscribe(direct_mbox(), &feed::on_stop);
}

void feed::on_start() { tick_ = send_periodic<publish_tick>(direct_mbox(), options_.tick, options_.tick); }

// A timer still armed when the agent is destroyed would fire into a direct mbox whose
// receiver is gone (a lost message); cancelling here keeps the books exact.
void feed::on_finish() { tick_.cancel(); }

void feed::on_tick(const publish_tick&) {
    if (stopped_) return;
    for (std::size_t n = burst_size(); n > 0; --n) publish_one();
    metrics_.quotes_published.store(published_, std::memory_order_relaxed);
}

std::size_t feed::burst_size() const {
    const std::size_t backlog = options_.subscribers_pool.stats().queue_depth;
    if (backlog >= options_.backlog_limit) return 0;
    const std::size_t room = (options_.backlog_limit - backlog) / std::max<std::size_t>(options_.fan_out, 1);
    return std::min(room, options_.max_burst);
}

void feed::publish_one() {
    // xorshift64: a cheap random walk, the same on every run.
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    const auto s = static_cast<symbol_id>(rng_ % symbols.size());
    const double step = (static_cast<double>((rng_ >> 8) % 21) - 10.0) * 0.01;
    mid_[s] = std::max(1.0, mid_[s] + step);
    const double half_spread = 0.01 + 0.01 * static_cast<double>((rng_ >> 16) % 3);
    send<quote>(options_.quotes, quote{s, mid_[s] - half_spread, mid_[s] + half_spread, ++sequence_[s], now_ns()});
    ++published_;
}

void feed::on_stop(const stop_feed& request) {
    stopped_ = true;
    tick_.cancel();
    metrics_.quotes_published.store(published_, std::memory_order_relaxed);
    metrics_.quotes_final.store(published_, std::memory_order_relaxed);
    metrics_.feed_stopped.store(true, std::memory_order_release);
    send<feed_stopped>(request.reply_to, published_);
}

// ---- subscriber ----

subscriber::subscriber(mbox quotes, kind k, demo_metrics& metrics)
    : quotes_(std::move(quotes)), kind_(k), metrics_(metrics) {}

void subscriber::configure() { subscribe(quotes_, &subscriber::on_quote); }

void subscriber::on_start() {
    if (kind_ == kind::transient) metrics_.churn_agents_started.fetch_add(1, std::memory_order_relaxed);
}

void subscriber::on_quote(const quote& q) {
    const std::int64_t latency = now_ns() - q.sent_at_ns;
    metrics_.latency.record(latency > 0 ? static_cast<std::uint64_t>(latency) : 0);
    ++received_;
    symbol_state& s = book_[q.symbol];
    if (q.sequence <= s.last_sequence) report_violation(q, s.last_sequence);
    s.last_sequence = q.sequence;
    s.bid = q.bid;
    s.ask = q.ask;
}

void subscriber::report_violation(const quote& q, std::uint64_t last) const {
    // A few are enough to see what went wrong; the count says how many there were.
    if (metrics_.order_violations.fetch_add(1, std::memory_order_relaxed) < 5)
        std::fprintf(stderr, "\nmailroom demo: %s: %.*s quote #%llu arrived after #%llu\n", name().c_str(),
                     static_cast<int>(symbols[q.symbol].size()), symbols[q.symbol].data(),
                     static_cast<unsigned long long>(q.sequence), static_cast<unsigned long long>(last));
}

void subscriber::on_finish() {
    // The reporter stops the environment only after the feed has stopped, and this agent's
    // finish is queued behind every quote it was sent: by now it has seen them all.
    if (kind_ != kind::steady || !metrics_.feed_stopped.load(std::memory_order_acquire)) return;
    if (received_ == metrics_.quotes_final.load(std::memory_order_relaxed))
        metrics_.steady_subscribers_complete.fetch_add(1, std::memory_order_relaxed);
}

// ---- timekeeper ----

namespace {
constexpr auto timekeeper_period = 100ms;
// Reminders still pending this long after they were armed are cancelled. Delays are spread
// over 10..300 ms, so about half fire and half are cancelled, some of them in the very tick
// in which they fire.
constexpr std::int64_t cancel_after_ns = std::chrono::nanoseconds(150ms).count();
}  // namespace

timekeeper::timekeeper(demo_metrics& metrics) : metrics_(metrics) { set_name("timekeeper"); }

void timekeeper::configure() {
    subscribe(direct_mbox(), &timekeeper::on_tick);
    subscribe(direct_mbox(), &timekeeper::on_reminder);
}

void timekeeper::on_start() {
    tick_ = send_periodic<timekeeper_tick>(direct_mbox(), timekeeper_period, timekeeper_period);
}

void timekeeper::on_tick(const timekeeper_tick&) {
    cancel_overdue();
    arm_reminder();
    arm_reminder();
}

void timekeeper::arm_reminder() {
    const std::uint64_t id = next_id_++;
    const auto delay = std::chrono::milliseconds(10 + (id * 37) % 290);
    pending_.emplace(id, pending_reminder{send_delayed<reminder>(direct_mbox(), delay, id), now_ns()});
    metrics_.reminders_armed.fetch_add(1, std::memory_order_relaxed);
}

void timekeeper::cancel_overdue() {
    const std::int64_t now = now_ns();
    for (auto it = pending_.begin(); it != pending_.end();) {
        if (now - it->second.armed_at_ns < cancel_after_ns) {
            ++it;
            continue;
        }
        // Its message may already be queued here, behind this tick: cancel() still guarantees
        // it will not be delivered.
        if (it->second.timer.cancel()) metrics_.reminders_cancelled.fetch_add(1, std::memory_order_relaxed);
        cancelled_.insert(it->first);
        it = pending_.erase(it);
    }
}

void timekeeper::on_reminder(const reminder& r) {
    if (cancelled_.count(r.id)) {
        metrics_.reminders_after_cancel.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    pending_.erase(r.id);  // destroys the handle of a timer that has fired: nothing to cancel
    metrics_.reminders_delivered.fetch_add(1, std::memory_order_relaxed);
}

void timekeeper::on_finish() {
    tick_.cancel();
    for (auto& [id, p] : pending_)
        if (p.timer.cancel()) metrics_.reminders_cancelled_at_end.fetch_add(1, std::memory_order_relaxed);
    pending_.clear();
}

// ---- reporter ----

reporter::reporter(reporter_options options, progress_printer& printer, demo_metrics& metrics)
    : options_(std::move(options)), printer_(printer), metrics_(metrics) {
    set_name("reporter");
}

void reporter::configure() {
    subscribe(direct_mbox(), &reporter::on_tick);
    subscribe(direct_mbox(), &reporter::on_feed_stopped);
    subscribe(direct_mbox(), &reporter::on_requests_stopped);
}

void reporter::on_start() {
    printer_.start(snapshot_stats(*options_.env));
    tick_ = send_periodic<progress_tick>(direct_mbox(), 1s, 1s);
}

void reporter::on_tick(const progress_tick&) {
    ++elapsed_s_;
    printer_.print(snapshot_stats(*options_.env));
    if (elapsed_s_ < options_.seconds) return;
    tick_.cancel();
    send<stop_feed>(options_.feed, direct_mbox());
    if (options_.requests)
        send<stop_requests>(options_.requests, direct_mbox());
    else
        requests_stopped_ = true;
}

void reporter::on_feed_stopped(const feed_stopped&) {
    feed_stopped_ = true;
    stop_once_quiet();
}

void reporter::on_requests_stopped(const requests_stopped&) {
    requests_stopped_ = true;
    stop_once_quiet();
}

void reporter::stop_once_quiet() {
    if (!feed_stopped_ || !requests_stopped_) return;
    metrics_.stop_requested_ns.store(now_ns(), std::memory_order_relaxed);
    stop_environment();
}

void reporter::on_finish() {
    tick_.cancel();
    printer_.finish();
}

}  // namespace mailroom::tool
