#include "demo_report.hpp"

#include "demo_flow.hpp"

#include <mailroom/core/clock.hpp>

#include <unistd.h>

#include <cstdarg>

namespace mailroom::tool {

namespace {

std::string printf_string(const char* format, ...) __attribute__((format(printf, 1, 2)));

std::string printf_string(const char* format, ...) {
    char buffer[128];
    va_list args;
    va_start(args, format);
    std::vsnprintf(buffer, sizeof buffer, format, args);
    va_end(args);
    return buffer;
}

// Columns count characters, not bytes: "µs" is two bytes in UTF-8 and one column on screen.
std::size_t display_width(const std::string& s) {
    std::size_t width = 0;
    for (unsigned char c : s) width += (c & 0xC0) != 0x80;
    return width;
}

std::string right(const std::string& s, std::size_t width) {
    const std::size_t w = display_width(s);
    return w >= width ? s : std::string(width - w, ' ') + s;
}

std::string left(const std::string& s, std::size_t width) {
    const std::size_t w = display_width(s);
    return w >= width ? s : s + std::string(width - w, ' ');
}

std::string format_latency(const latency_snapshot& l, double q) {
    return l.count() == 0 ? std::string("-") : format_duration_ns(l.percentile(q));
}

}  // namespace

std::string format_count(std::uint64_t n) {
    std::string digits = std::to_string(n);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string format_rate(double per_second) {
    if (per_second >= 1e9) return printf_string("%.2f G/s", per_second / 1e9);
    if (per_second >= 1e6) return printf_string("%.2f M/s", per_second / 1e6);
    if (per_second >= 1e3) return printf_string("%.1f k/s", per_second / 1e3);
    return printf_string("%.0f /s", per_second);
}

std::string format_duration_ns(std::uint64_t ns) {
    const auto v = static_cast<double>(ns);
    if (ns < 1'000) return printf_string("%llu ns", static_cast<unsigned long long>(ns));
    if (ns < 1'000'000) return printf_string(v < 1e4 ? "%.2f µs" : v < 1e5 ? "%.1f µs" : "%.0f µs", v / 1e3);
    if (ns < 1'000'000'000) return printf_string(v < 1e7 ? "%.2f ms" : v < 1e8 ? "%.1f ms" : "%.0f ms", v / 1e6);
    return printf_string("%.2f s", v / 1e9);
}

demo_stats snapshot_stats(const environment& env) {
    return {env.stats(), agent_stats_of(env), session_stats_of(env), named_stats_of(env)};
}

// ---- progress_printer ----

progress_printer::progress_printer(const demo_metrics& metrics, bool quiet)
    : metrics_(metrics), quiet_(quiet), terminal_(::isatty(STDOUT_FILENO) != 0) {}

progress_printer::sample progress_printer::take(const demo_stats& now) const {
    sample s;
    s.at_ns = now_ns();
    s.env = now;
    s.published = metrics_.quotes_published.load(std::memory_order_relaxed);
    s.latency = metrics_.latency.snapshot();
    return s;
}

void progress_printer::start(const demo_stats& now) {
    last_ = take(now);
    started_ns_ = last_.at_ns;
}

void progress_printer::print(const demo_stats& stats) {
    const sample now = take(stats);
    const double dt = static_cast<double>(now.at_ns - last_.at_ns) / 1e9;
    const latency_snapshot latency = now.latency - last_.latency;
    const std::uint64_t coops = now.env.coops_registered - now.env.coops_deregistered;
    const std::uint64_t agents = now.env.agents_created - now.env.agents_destroyed;
    std::string line =
        printf_string("%5.1f s", static_cast<double>(now.at_ns - started_ns_) / 1e9) +
        "  quotes " + right(format_rate(static_cast<double>(now.published - last_.published) / dt), 10) +
        "  deliveries " + right(format_rate(static_cast<double>(now.env.messages_delivered -
                                                                last_.env.messages_delivered) / dt), 10) +
        "  requests " + right(format_rate(static_cast<double>(now.env.requests_posted -
                                                              last_.env.requests_posted) / dt), 9) +
        "  queue " + right(format_count(now.env.queue_depth), 7) +
        "  latency p50 " + right(format_latency(latency, 0.50), 8) +
        "  p99 " + right(format_latency(latency, 0.99), 8) +
        "  coops " + right(std::to_string(coops), 3) +
        "  agents " + right(std::to_string(agents), 4);
    last_ = now;
    if (quiet_) return;
    if (terminal_) {
        // Back to the start of the line, write, clear whatever the previous line left behind.
        std::printf("\r%s\x1b[K", line.c_str());
        line_open_ = true;
    } else {
        std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
}

void progress_printer::finish() {
    if (!line_open_) return;
    std::printf("\n");
    std::fflush(stdout);
    line_open_ = false;
}

// ---- the shutdown report ----

std::vector<check> evaluate(const run_summary& run, const demo_stats& s, const demo_metrics& m) {
    const std::uint64_t accounted = s.messages_delivered + s.messages_lost + s.messages_ignored +
                                    s.messages_discarded + s.messages_cancelled + s.messages_dropped;
    const std::uint64_t quotes = m.quotes_final.load();
    const auto steady = static_cast<std::uint64_t>(run.steady_subscribers);
    const std::uint64_t reminders_settled =
        m.reminders_delivered.load() + m.reminders_cancelled.load() + m.reminders_cancelled_at_end.load();
    const std::uint64_t requests_final = s.requests_replied + s.requests_rejected + s.requests_abandoned;
    const std::uint64_t issued = m.requests_issued.load();
    // What the demo saw matches the environment's books, state by state, and nothing went unseen.
    const bool requests_seen = m.requests_drained.load() && m.requests_unseen.load() == 0 &&
                               issued == s.requests_posted && m.requests_seen_replied.load() == s.requests_replied &&
                               m.requests_seen_rejected.load() == s.requests_rejected &&
                               m.requests_seen_abandoned.load() == s.requests_abandoned;
    const io_report& io = run.io;
    const job_queue::stats& jq = io.jobs;
    const std::uint64_t jobs_seen = io.jobs_seen_succeeded + io.jobs_seen_cancelled + io.jobs_seen_other;
    std::vector<check> io_checks{
        {"every line the watchers read came from the writer, in order per socketpair, published and handled "
         "at most once (" +
             format_count(io.lines_read) + " read by " + format_count(io.fd_callbacks) + " fd callbacks)",
         io.lines_read > 0 && io.fd_callbacks > 0 && io.lines_out_of_order == 0 && io.lines_read <= io.lines_written &&
             io.lines_handled <= io.lines_read},
        {"jobs posted = completed + cancelled + expired + discarded (" + format_count(jq.posted) + "), none failed",
         jq.posted == jq.completed + jq.cancelled + jq.expired + jq.discarded && jq.failed == 0 && jq.running == 0},
        {"the archiver's posts and refusals match the queue's, each completion came back to it once or was "
         "counted dropped",
         io.jobs_posted_seen == jq.posted && io.jobs_refused_seen == jq.refused && io.jobs_seen_other == 0 &&
             jobs_seen + jq.completions_dropped <= jq.posted && io.jobs_seen_cancelled <= jq.cancelled},
        {"the knobs moved while jobs ran (desired changed " + format_count(io.desired_changes) +
             " times), a full backlog refused (" + format_count(jq.refused) + "), queued jobs were cancelled (" +
             format_count(jq.cancelled) + ")",
         io.desired_changes > 0 && jq.refused > 0 && jq.cancelled > 0 && jq.cancelled <= io.jobs_cancel_asked},
        {"the watchdog reported the slow handler while it ran, naming " + std::string(io.stall_context.empty() ? "it" : io.stall_context) +
             ", with its stack (" + std::to_string(io.stall_frames) + " frames)",
         io.slow_handler_ran && io.stalls_reported > 0 && io.stall_context.find("slow-desk") != std::string::npos &&
             io.stall_frames > 0},
    };
    std::vector<check> checks{
        {"every agent created was destroyed (" + format_count(s.agents_created) + ")",
         s.agents_created == s.agents_destroyed},
        {"every cooperation registered was deregistered (" + format_count(s.coops_registered) + ")",
         s.coops_registered == s.coops_deregistered},
        // Every message queued for a handler ends exactly one way. (A direct send to an agent
        // already gone is counted lost without having been sent, so `accounted` could exceed
        // `sent`; the demo cancels its timers before its agents go, so it never does that.)
        {"sent = delivered + lost + ignored + discarded + cancelled + dropped (" + format_count(s.messages_sent) +
             ")",
         accounted == s.messages_sent},
        {"every drop has its source: the tape's limit and the full chain (" + format_count(s.messages_dropped) + ")",
         s.messages_dropped == m.tape_dropped.load() + run.ticks.dropped_newest},
        {"no more than " + std::to_string(tape_limit) + " quotes ever waited for the tape (its limit)",
         m.tape_most_waiting.load() <= tape_limit},
        {"every trip of the breaker ended by the time limit of its open state (" +
             format_count(m.breaker_trips.load()) + ")",
         m.breaker_time_limits.load() + (m.breaker_open_at_end.load() ? 1 : 0) == m.breaker_trips.load()},
        {"ticks sent = read + dropped when the chain was full + discarded at stop (" +
             format_count(m.ticks_sent.load()) + "), read in order",
         m.ticks_sent.load() == m.ticks_read.load() + run.ticks.dropped_newest + run.ticks.discarded &&
             m.ticks_read.load() == run.ticks.handled && m.ticks_out_of_order.load() == 0},
        {"no quote out of order", m.order_violations.load() == 0},
        {"every steady subscriber got all " + format_count(quotes) + " quotes",
         m.feed_stopped.load() && m.steady_subscribers_complete.load() == steady},
        {"no reminder delivered after its timer was cancelled", m.reminders_after_cancel.load() == 0},
        {"every reminder fired or was cancelled (" + format_count(m.reminders_armed.load()) + ")",
         reminders_settled == m.reminders_armed.load()},
        {"every session and event object created was destroyed (" + format_count(s.sessions_created) +
             " sessions, " + format_count(s.event_objects_created) + " objects)",
         s.sessions_created == s.sessions_destroyed && s.event_objects_created == s.event_objects_destroyed},
        {"no session callback ran after its shutdown() or destroy() returned",
         m.session_callbacks_after_shutdown.load() == 0},
        {"every named object registered was unregistered (" + format_count(s.named_registered) + ")",
         s.named_registered == s.named_unregistered},
        {"requests posted = replied + rejected + abandoned, none left waiting (" + format_count(s.requests_posted) +
             ")",
         requests_final == s.requests_posted},
        {"every request the demo issued was seen final by its then(), co_await or waiting thread (" +
             format_count(issued) + ")",
         requests_seen},
        {"every reply answered what was asked", m.bad_replies.load() == 0},
        {"no named handler ran after its unregister returned", m.named_handler_after_unregister.load() == 0},
        {"no handler threw", s.handler_exceptions == 0},
        {"no timer left pending", s.timers_pending == 0},
    };
    checks.insert(checks.end(), io_checks.begin(), io_checks.end());
    if (const nodes_report& n = run.nodes; n.enabled) {
        const std::uint64_t asked = m.remote_issued.load(), replied = m.remote_replied.load(),
                            rejected = m.remote_rejected.load(), abandoned = m.remote_abandoned.load();
        // Both sides count the same requests; one abandoned here (timed out) may still have been
        // served there, so with abandonments the other side may count more, never fewer.
        const bool same = abandoned == 0 ? n.child_served == asked && n.child_replied == replied &&
                                               n.child_rejected == rejected && n.child_abandoned == 0
                                         : n.child_served <= asked && n.child_replied >= replied &&
                                               n.child_rejected >= rejected;
        checks.push_back({"every request to " + n.target + " (a second process) was seen final here (" +
                              format_count(asked) + "), some replied and some rejected there ('no symbol')",
                          asked > 0 && replied + rejected + abandoned == asked && replied > 0 && rejected > 0});
        checks.push_back({"the pricing node stopped on SIGTERM, exited 0 and printed balanced books, its requests "
                          "posted = replied + rejected + abandoned (" +
                              format_count(n.child_posted) + ")",
                          n.child_exited_ok && n.child_parsed && n.child_books_balanced &&
                              n.child_posted == n.child_replied + n.child_rejected + n.child_abandoned});
        checks.push_back({"both sides counted the same requests: served there " + format_count(n.child_served) +
                              ", asked here " + format_count(asked) + ", replied and rejected alike; no frame "
                              "rejected, the peer never down",
                          n.child_parsed && same && n.frames_rejected == 0 && n.peers_down == 0});
    }
    return checks;
}

namespace {

void row(const char* section, const char* label, const std::string& value, const char* note = "") {
    std::printf("  %s %s %s%s%s\n", left(section, 13).c_str(), left(label, 26).c_str(), right(value, 14).c_str(),
                *note ? "  " : "", note);
}

void print_objects(const demo_stats& s, const demo_metrics& m) {
    row("agents", "created", format_count(s.agents_created));
    row("", "destroyed", format_count(s.agents_destroyed));
    row("", "transient (churn) started", format_count(m.churn_agents_started.load()));
    row("cooperations", "registered", format_count(s.coops_registered));
    row("", "deregistered", format_count(s.coops_deregistered));
    row("", "churned from main thread",
        format_count(m.churn_coops_registered.load()) + " / " + format_count(m.churn_coops_deregistered.load()),
        "registered / deregistered");
}

void print_messages(const demo_stats& s) {
    row("messages", "sent", format_count(s.messages_sent), "queued for a handler, one per receiver");
    row("", "delivered", format_count(s.messages_delivered), "a handler ran");
    row("", "lost", format_count(s.messages_lost), "the receiver was gone by then");
    row("", "ignored", format_count(s.messages_ignored), "the receiver had unsubscribed");
    row("", "discarded", format_count(s.messages_discarded), "still queued at shutdown");
    row("", "cancelled", format_count(s.messages_cancelled), "queued, but its timer was cancelled");
    row("", "dropped", format_count(s.messages_dropped), "over a message limit, or a full chain's");
    row("", "handler exceptions", format_count(s.handler_exceptions));
}

void print_flow(const run_summary& run, const demo_metrics& m) {
    row("flow", "tape recorded", format_count(m.tape_recorded.load()), "a slow handler behind a drop limit");
    row("", "tape dropped", format_count(m.tape_dropped.load()), "the feed outran it: dropped at the send");
    row("", "tape most waiting", format_count(m.tape_most_waiting.load()),
        ("its limit: " + std::to_string(tape_limit)).c_str());
    row("", "breaker trips", format_count(m.breaker_trips.load()), "closed -> open");
    row("", "breaker time limits", format_count(m.breaker_time_limits.load()), "open -> half_open, by time");
    row("", "breaker closings", format_count(m.breaker_closings.load()), "half_open -> closed on a quote");
    row("", "ticks sent", format_count(m.ticks_sent.load()), "a plain thread into an mchain of 64");
    row("", "ticks read", format_count(m.ticks_read.load()), "by a subscribed session, no polling");
    row("", "ticks dropped (full)", format_count(run.ticks.dropped_newest));
    row("", "ticks discarded at stop", format_count(run.ticks.discarded));
}

void print_io(const run_summary& run) {
    const io_report& io = run.io;
    const job_queue::stats& jq = io.jobs;
    row("event loops", "loops / fds watched", std::to_string(io.loops) + " / " + std::to_string(io.fds_watched),
        "socketpairs written by a plain thread");
    row("", "fd callbacks", format_count(io.fd_callbacks), "readiness callbacks on the loops");
    row("", "longest loop cycle", format_duration_ns(io.max_cycle_ns));
    row("", "lines written", format_count(io.lines_written), "a line per pair each millisecond");
    row("", "lines read", format_count(io.lines_read), "each published on the topic \"lines\"");
    row("", "lines handled", format_count(io.lines_handled), "by an agent checking their order");
    row("", "lines out of order", format_count(io.lines_out_of_order), "must be 0");
    row("job queue", "posted", format_count(jq.posted), "blocking work (2 ms) from the archiver agent");
    row("", "run", format_count(jq.completed), (format_count(jq.failed) + " failed").c_str());
    row("", "refused", format_count(jq.refused), "its backlog of 16 was full");
    row("", "cancelled", format_count(jq.cancelled),
        (format_count(io.jobs_cancel_asked) + " asked; the others had started").c_str());
    row("", "discarded at stop", format_count(jq.discarded));
    row("", "completions back", format_count(io.jobs_seen_succeeded + io.jobs_seen_cancelled + io.jobs_seen_other),
        (format_count(jq.completions_dropped) + " dropped: the archiver had gone").c_str());
    row("", "desired", std::to_string(io.desired_low) + ".." + std::to_string(io.desired_high),
        ("changed " + format_count(io.desired_changes) + " times while jobs ran; max " + std::to_string(jq.max)).c_str());
    row("", "threads started / exited", format_count(jq.threads_started) + " / " + format_count(jq.threads_exited),
        "above the floor of 1 they exit after 200 ms idle");
    row("", "wait max / run max", format_duration_ns(static_cast<std::uint64_t>(jq.wait_max.count())) + " / " +
                                        format_duration_ns(static_cast<std::uint64_t>(jq.run_max.count())));
    row("", "wake-ups / spin takes", format_count(jq.wakeups) + " / " + format_count(jq.spin_takes),
        "a post a spinning thread takes needs no wake-up");
    row("watchdog", "stalls reported", format_count(io.stalls_reported),
        ("slow-desk: a " + std::to_string(slow_handler_time.count()) + " ms handler, timeout " +
         std::to_string(slow_desk_timeout.count()) + " ms; " + format_count(io.stalls_resumed) + " resumed")
            .c_str());
    if (!io.first_stall.empty()) {
        // The first report as the watchdog wrote it, its stack cut short.
        std::size_t start = 0, lines = 0;
        while (start < io.first_stall.size() && lines < 8) {
            const std::size_t nl = std::min(io.first_stall.find('\n', start), io.first_stall.size());
            std::printf("      | %s\n", io.first_stall.substr(start, nl - start).c_str());
            start = nl + 1;
            ++lines;
        }
        if (start < io.first_stall.size()) std::printf("      | ...\n");
    } else if (!io.stall_stack_note.empty()) {
        std::printf("      | (no stack: %s)\n", io.stall_stack_note.c_str());
    }
}

void print_timers(const demo_stats& s, const demo_metrics& m) {
    row("timers", "armed", format_count(s.timers_armed));
    row("", "fired", format_count(s.timers_fired), "a periodic timer fires many times");
    row("", "cancelled", format_count(s.timers_cancelled), "left the wheel cancelled");
    row("", "pending", format_count(s.timers_pending));
    row("reminders", "armed", format_count(m.reminders_armed.load()), "delayed messages, 10..300 ms");
    row("", "delivered", format_count(m.reminders_delivered.load()));
    row("", "cancelled before firing", format_count(m.reminders_cancelled.load()), "pending after 150 ms");
    row("", "cancelled at shutdown", format_count(m.reminders_cancelled_at_end.load()));
}

void print_sessions(const demo_stats& s, const demo_metrics& m) {
    row("sessions", "created", format_count(s.sessions_created), "made and destroyed from a foreign thread");
    row("", "destroyed", format_count(s.sessions_destroyed));
    row("", "event objects created", format_count(s.event_objects_created), "timers, inboxes, subscriptions");
    row("", "event objects destroyed", format_count(s.event_objects_destroyed));
    row("", "stopped by others", format_count(m.session_objects_stopped_by_others.load()),
        "other thread or session");
    row("", "stopped by themselves", format_count(m.session_objects_stopped_by_themselves.load()),
        "from their own callback");
    row("", "callbacks run", format_count(s.callbacks_run));
    row("", "callbacks refused", format_count(s.callbacks_refused), "queued, then shut down: expected");
    row("", "callbacks discarded", format_count(s.callbacks_discarded), "still queued at shutdown");
    row("", "after shutdown returned", format_count(m.session_callbacks_after_shutdown.load()), "must be 0");
}

void print_named(const run_summary& run, const demo_stats& s, const demo_metrics& m) {
    row("named objects", "registered", format_count(s.named_registered),
        ("pricer once, risk " + format_count(m.risk_registrations.load()) + " times").c_str());
    row("", "unregistered", format_count(s.named_unregistered));
    row("", "risk shut down by thread", format_count(m.risk_shut_down_by_thread.load()),
        "shutdown() from the registering thread");
    row("", "risk destroyed by handler", format_count(m.risk_destroyed_by_handler.load()),
        "destroy() inside its own handler");
    row("", "after unregister returned", format_count(m.named_handler_after_unregister.load()), "must be 0");
    row("requests", "posted", format_count(s.requests_posted),
        format_rate(static_cast<double>(s.requests_posted) / run.seconds).c_str());
    row("", "replied", format_count(s.requests_replied));
    row("", "rejected", format_count(s.requests_rejected),
        (format_count(m.requests_seen_no_object.load()) + " found no object, the rest by a handler").c_str());
    row("", "abandoned", format_count(s.requests_abandoned),
        (format_count(m.requests_seen_timed_out.load()) + " timed out, " +
         format_count(m.requests_seen_went_away.load()) + " queued when risk went away")
            .c_str());
    row("", "replies orphaned", format_count(s.replies_orphaned), "answered after the requester gave up");
    row("", "seen by the demo", format_count(m.requests_seen_replied.load() + m.requests_seen_rejected.load() +
                                            m.requests_seen_abandoned.load()),
        (format_count(m.requests_issued.load()) + " issued").c_str());
    row("", "seen by then()", format_count(m.requests_seen_by_then.load()));
    row("", "seen by co_await", format_count(m.requests_seen_by_co_await.load()), "in mailroom::task coroutines");
    row("", "seen by future(), wait()", format_count(m.requests_seen_by_blocking.load()), "from a foreign thread");
    row("", "unseen", format_count(m.requests_unseen.load()), "callback or coroutine dropped: must be 0");
    row("", "requester ticks skipped", format_count(m.request_ticks_skipped.load()),
        "too many in flight: that tick asked nothing");
}

void print_nodes(const run_summary& run, const demo_metrics& m) {
    const nodes_report& n = run.nodes;
    if (!n.enabled) return;
    auto both = [](std::uint64_t here, std::uint64_t there) { return format_count(here) + " / " + format_count(there); };
    row("nodes", "asked / served", both(m.remote_issued.load(), n.child_served),
        ("here / in the second process, " + n.target).c_str());
    row("", "replied", both(m.remote_replied.load(), n.child_replied));
    row("", "rejected", both(m.remote_rejected.load(), n.child_rejected), "no symbol: one ask in 16");
    row("", "abandoned", both(m.remote_abandoned.load(), n.child_abandoned), "timed out (2 s) or the peer lost");
    row("", "this node's requests out", format_count(n.requests_out),
        (format_count(n.requests_replied) + " replied, " + format_count(n.requests_rejected) + " rejected, " +
         format_count(n.requests_abandoned) + " abandoned")
            .c_str());
    for (const std::string* line : {&n.child_node_line, &n.child_named_line, &n.child_books_line})
        std::printf("  %s %s\n", left("", 13).c_str(), line->empty() ? "(a line of its report is missing)" : line->c_str());
}

void print_quotes(const run_summary& run, const demo_metrics& m) {
    const latency_snapshot latency = m.latency.snapshot();
    const std::uint64_t published = m.quotes_final.load();
    row("quotes", "published", format_count(published),
        format_rate(static_cast<double>(published) / run.seconds).c_str());
    row("", "received", format_count(latency.count()),
        format_rate(static_cast<double>(latency.count()) / run.seconds).c_str());
    row("", "order violations", format_count(m.order_violations.load()));
    row("", "steady subscribers complete",
        format_count(m.steady_subscribers_complete.load()) + " / " + std::to_string(run.steady_subscribers));
    row("latency", "p50", format_duration_ns(latency.percentile(0.50)), "publish to handler");
    row("", "p90", format_duration_ns(latency.percentile(0.90)));
    row("", "p99", format_duration_ns(latency.percentile(0.99)));
    row("", "p99.9", format_duration_ns(latency.percentile(0.999)));
    row("", "max", format_duration_ns(latency.percentile(1.0)));
}

}  // namespace

bool print_report(const run_summary& run, const demo_stats& s, const demo_metrics& m,
                  const std::vector<check>& checks) {
    std::printf("\nmailroom demo: %.1f s, %d steady subscribers on a pool of %zu threads, churn every 100 ms, "
                "risk re-registered every 50..110 ms\n\n",
                run.seconds, run.steady_subscribers, run.pool_threads);
    print_objects(s, m);
    print_messages(s);
    print_timers(s, m);
    print_sessions(s, m);
    print_named(run, s, m);
    print_nodes(run, m);
    print_quotes(run, m);
    print_flow(run, m);
    print_io(run);
    row("shutdown", "stop() to joined", format_duration_ns(static_cast<std::uint64_t>(run.shutdown_ns)),
        "cooperations deregistered, threads joined");
    std::printf("\n");
    bool all = true;
    for (const check& c : checks) {
        std::printf("  [%s] %s\n", c.passed ? " ok " : "FAIL", c.what.c_str());
        all = all && c.passed;
    }
    std::printf("\nverdict: %s\n",
                all ? "PASS - nothing leaked, nothing lost unseen, every quote in order, every request final"
                    : "FAIL - see the checks above");
    return all;
}

}  // namespace mailroom::tool
