#include "demo_io.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <stop_token>
#include <system_error>

namespace mailroom::tool {

using namespace std::chrono_literals;

// Not in an unnamed namespace: the watchdog's stack names only exported symbols.
[[gnu::noinline]] void demo_slow_handler(std::chrono::milliseconds how_long) {
    std::this_thread::sleep_for(how_long);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps this frame on the stack
}

namespace {

/// One line of a socketpair, as a message.
struct feed_line {
    std::uint32_t pair;
    std::uint64_t sequence;
};

struct archive_tick final : signal {};

/// Checks that every pair's lines arrive in order, one sender to one receiver.
class line_book final : public agent {
public:
    line_book(mbox lines, std::shared_ptr<std::atomic<std::uint64_t>> handled,
              std::shared_ptr<std::atomic<std::uint64_t>> out_of_order)
        : lines_(std::move(lines)), handled_(std::move(handled)), out_of_order_(std::move(out_of_order)) {}

private:
    void configure() override {
        set_name("line-book");
        subscribe(lines_, [this](const feed_line& l) {
            if (l.pair >= next_.size() || l.sequence != next_[l.pair])
                out_of_order_->fetch_add(1, std::memory_order_relaxed);
            if (l.pair < next_.size()) next_[l.pair] = l.sequence + 1;
            handled_->fetch_add(1, std::memory_order_relaxed);
        });
    }

    mbox lines_;
    std::shared_ptr<std::atomic<std::uint64_t>> handled_, out_of_order_;
    std::array<std::uint64_t, feed_pairs> next_{};
};

/// Posts blocking work to the job queue every few milliseconds, a burst now and then that
/// overruns its backlog, a job it cancels at once; turns `desired` up and down as it goes;
/// every completion comes back here.
class archiver final : public agent {
public:
    archiver(job_queue::handle q, std::shared_ptr<job_counts> counts) : q_(std::move(q)), c_(std::move(counts)) {
        c_->desired_low = c_->desired_high = q_.job_stats().desired;
    }

private:
    static constexpr std::array<std::size_t, 4> desired_steps{6, 1, 4, 2};

    void configure() override {
        set_name("archiver");
        subscribe(direct_mbox(), [this](const archive_tick&) { on_tick(); });
    }
    void on_start() override { tick_ = send_periodic<archive_tick>(direct_mbox(), 5ms, 5ms); }
    void on_finish() override { tick_.cancel(); }

    void on_tick() {
        ++ticks_;
        const int n = ticks_ % 40 == 0 ? 24 : 1;  // the burst overruns the backlog of 16
        for (int i = 0; i < n; ++i) post_one(false);
        if (ticks_ % 10 == 0) post_one(true);
        if (ticks_ % 50 == 0) {
            const std::size_t d = desired_steps[(ticks_ / 50) % desired_steps.size()];
            q_.set_desired(d);
            c_->desired_changes.fetch_add(1, std::memory_order_relaxed);
            c_->desired_low = std::min(c_->desired_low.load(), d);
            c_->desired_high = std::max(c_->desired_high.load(), d);
        }
    }

    void post_one(bool cancel_at_once) {
        // "Blocking" work: a disk write that takes a couple of milliseconds, cut short when
        // the job is cancelled or the queue shuts down.
        auto j = try_post_job(q_, [](std::stop_token st) {
            for (int i = 0; i < 4 && !st.stop_requested(); ++i) std::this_thread::sleep_for(500us);
        });
        if (!j) {
            c_->refused.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        c_->posted.fetch_add(1, std::memory_order_relaxed);
        j.then([c = c_](const job<void>& done) {
            switch (done.state()) {
            case job_state::succeeded: c->seen_succeeded.fetch_add(1, std::memory_order_relaxed); break;
            case job_state::cancelled: c->seen_cancelled.fetch_add(1, std::memory_order_relaxed); break;
            default: c->seen_other.fetch_add(1, std::memory_order_relaxed); break;
            }
        });
        if (cancel_at_once) {
            c_->cancel_asked.fetch_add(1, std::memory_order_relaxed);
            j.cancel();
        }
    }

    job_queue::handle q_;
    std::shared_ptr<job_counts> c_;
    timer_handle tick_;
    std::uint64_t ticks_ = 0;
};

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        throw std::system_error(errno, std::generic_category(), "mailroom demo: fcntl");
}

}  // namespace

io_demo::io_demo(environment& env, const dispatcher& pool)
    : env_(env),
      loops_(event_loop_pool::make_dispatcher(env, "io", {.threads = feed_loops})),
      jobs_(job_queue::make_job_queue(env, "disk", {.min = 0, .floor = 1, .desired = 2, .max = 8,
                                                     .idle_time = 200ms, .backlog = 16})),
      lines_(make_named_mbox(env, "lines")),
      lines_handled_(std::make_shared<std::atomic<std::uint64_t>>(0)),
      lines_out_of_order_(std::make_shared<std::atomic<std::uint64_t>>(0)),
      job_counts_(std::make_shared<job_counts>()),
      stalls_(std::make_shared<stalls>()) {
    coop_options o;
    o.name = "io";
    o.bind = pool.bind();
    introduce_coop(env, std::move(o), [&](coop& c) {
        c.make_agent<line_book>(lines_, lines_handled_, lines_out_of_order_);
        c.make_agent<archiver>(jobs_, job_counts_);
    });

    for (std::size_t i = 0; i < pairs_.size(); ++i) {
        pair_state& p = pairs_[i];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p.fds) != 0)
            throw std::system_error(errno, std::generic_category(), "mailroom demo: socketpair");
        set_nonblocking(p.fds[0]);
        set_nonblocking(p.fds[1]);
        p.reader = session(env, {.name = "feed-reader-" + std::to_string(i + 1), .bind = loops_.bind()});
        p.watch = p.reader.watch(p.fds[0], fd_events::read, [this, &p, i](fd_events) {
            on_readable(p, i);
            return fd_events::read;
        });
    }

    // The watchdog reports on its own thread; the demo only keeps the first report and counts.
    one_thread::params slow;
    slow.watchdog.timeout = slow_desk_timeout;
    slow.watchdog.action = stall_action::callback;
    slow.watchdog.on_stall = [s = stalls_](const stall_report& r) {
        std::lock_guard g(s->m);
        if (r.resumed) {
            ++s->resumed;
            return;
        }
        ++s->reported;
        if (!s->have_first) {
            s->first = r;
            s->have_first = true;
        }
    };
    slow_desk_ = session(env, {.name = "slow-desk", .bind = one_thread::make_dispatcher(env, "slow-desk", slow).bind()});

    thread_ = std::thread([this] { write_lines(); });
}

// A plain thread, not one of the environment's: a line to every pair each millisecond, until
// the environment is stopping. After 300 ms it also asks the slow desk for its slow handler.
void io_demo::write_lines() {
    const auto slow_at = std::chrono::steady_clock::now() + 300ms;
    bool slow_posted = false;
    while (!env_.stopping()) {
        for (std::size_t i = 0; i < pairs_.size(); ++i) {
            pair_state& p = pairs_[i];
            if (p.unsent.size() < 4096) {
                p.unsent += std::to_string(i) + ' ' + std::to_string(p.next++) + '\n';
                lines_written_.fetch_add(1, std::memory_order_relaxed);
            }
            const ssize_t n = ::write(p.fds[1], p.unsent.data(), p.unsent.size());
            if (n > 0) p.unsent.erase(0, static_cast<std::size_t>(n));
        }
        if (!slow_posted && std::chrono::steady_clock::now() >= slow_at) {
            slow_posted = true;
            slow_desk_.post([this] {
                demo_slow_handler(slow_handler_time);
                slow_ran_.store(true, std::memory_order_relaxed);
            });
        }
        std::this_thread::sleep_for(1ms);
    }
}

// On the pair's reader session (its loop's thread): what is there, line by line, each one
// published on the "lines" topic.
void io_demo::on_readable(pair_state& p, std::size_t index) {
    char buf[4096];
    const ssize_t n = ::read(p.fds[0], buf, sizeof buf);
    if (n <= 0) return;
    p.partial.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (std::size_t nl; (nl = p.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
        // "<pair> <sequence>"
        const std::size_t space = p.partial.find(' ', start);
        std::uint64_t seq = 0;
        if (space != std::string::npos && space < nl)
            std::from_chars(p.partial.data() + space + 1, p.partial.data() + nl, seq);
        lines_read_.fetch_add(1, std::memory_order_relaxed);
        try {
            send<feed_line>(lines_, feed_line{static_cast<std::uint32_t>(index), seq});
        } catch (const environment_stopped_error&) {
            // The environment is stopping: the line is read but goes nowhere.
        }
    }
    p.partial.erase(0, start);
}

void io_demo::join() {
    if (joined_) return;
    joined_ = true;
    if (thread_.joinable()) thread_.join();
    // The environment has stopped: every watcher is shut down, so the fds may be closed.
    for (pair_state& p : pairs_) {
        p.watch.shutdown();
        for (int& fd : p.fds)
            if (fd >= 0) ::close(std::exchange(fd, -1));
    }
}

io_report io_demo::report() const {
    io_report r;
    r.loops = feed_loops;
    r.fds_watched = pairs_.size();
    for (const auto& l : loops_.loops()) {
        r.fd_callbacks += l.fd_callbacks;
        r.loop_cycles += l.cycles;
        r.max_cycle_ns = std::max(r.max_cycle_ns, l.max_cycle_ns);
    }
    r.lines_written = lines_written_.load();
    r.lines_read = lines_read_.load();
    r.lines_handled = lines_handled_->load();
    r.lines_out_of_order = lines_out_of_order_->load();

    r.jobs = jobs_.job_stats();
    const job_counts& c = *job_counts_;
    r.jobs_posted_seen = c.posted.load();
    r.jobs_refused_seen = c.refused.load();
    r.jobs_cancel_asked = c.cancel_asked.load();
    r.jobs_seen_succeeded = c.seen_succeeded.load();
    r.jobs_seen_cancelled = c.seen_cancelled.load();
    r.jobs_seen_other = c.seen_other.load();
    r.desired_changes = c.desired_changes.load();
    r.desired_low = c.desired_low.load();
    r.desired_high = c.desired_high.load();

    r.slow_handler_ran = slow_ran_.load();
    std::lock_guard g(stalls_->m);
    r.stalls_reported = stalls_->reported;
    r.stalls_resumed = stalls_->resumed;
    if (stalls_->have_first) {
        r.first_stall = stalls_->first.text;
        r.stall_context = stalls_->first.context;
        r.stall_frames = stalls_->first.stack.size();
        r.stall_stack_note = stalls_->first.stack_note;
    }
    return r;
}

}  // namespace mailroom::tool
