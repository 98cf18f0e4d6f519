// event_loop_pool: N loop threads, each an epoll loop over its contexts' demands and fds.

#include <mailroom/dispatch/event_loop_impl.hpp>

#include <mailroom/core/clock.hpp>
#include <mailroom/core/handle_access.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/queue/futex.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <typeinfo>

namespace mailroom::internal {

namespace {
MAILROOM_FAST_TLS constinit thread_local event_loop* tls_loop = nullptr;
constexpr int max_events = 64;
// How often an idle loop that spins on its queue looks at its fds (epoll_wait without waiting):
// a system call per look, a fifth of the default spin, so that readiness that comes during a
// spin waits no longer than this for its callback.
constexpr std::int64_t fd_poll_ns = 4'000;

std::uint64_t key_of(std::uint32_t index, std::uint32_t gen) noexcept { return std::uint64_t{gen} << 32 | index; }

// The loop's counters have one writer, the loop thread: a load and a store, no locked
// instruction (readers on other threads take relaxed loads).
void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
}  // namespace

event_loop::event_loop(std::chrono::nanoseconds spin, std::size_t index) : worker_thread(spin), index_(index) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) throw error(std::string("event loop: epoll_create1 failed: ") + std::strerror(errno));
    wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_ < 0) {
        ::close(epoll_);
        throw error(std::string("event loop: eventfd failed: ") + std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;  // slot 0: the eventfd
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev) != 0) {
        ::close(wake_);
        ::close(epoll_);
        throw error(std::string("event loop: epoll_ctl failed: ") + std::strerror(errno));
    }
    chunks_[0].store(new slot[chunk_size], std::memory_order_relaxed);
    mailbox_.use_wake_fd(wake_);
}

event_loop::~event_loop() {
    if (joinable()) fatal("event loop destroyed with its thread still running");
    discard_all();
    ::close(wake_);
    ::close(epoll_);
    for (auto& c : chunks_) delete[] c.load(std::memory_order_relaxed);
}

event_loop* event_loop::current() noexcept { return tls_loop; }

std::uint64_t event_loop::add_source(fd_source* src) {
    std::lock_guard g(slots_lock_);
    std::uint32_t i;
    if (!free_.empty()) {
        i = free_.back();
        free_.pop_back();
    } else {
        i = next_slot_;
        const std::size_t c = i >> chunk_bits;
        if (c >= max_chunks) throw error("event loop: too many watched fds (" + std::to_string(i) + ")");
        if (!chunks_[c].load(std::memory_order_relaxed)) chunks_[c].store(new slot[chunk_size], std::memory_order_release);
        free_.reserve(i);  // room for every slot taken: remove_source() never allocates
        ++next_slot_;
    }
    slot* s = find_slot(i);
    s->src.store(src, std::memory_order_release);
    return key_of(i, s->gen.load(std::memory_order_relaxed));
}

void event_loop::remove_source(std::uint64_t key) noexcept {
    const auto i = static_cast<std::uint32_t>(key);
    std::lock_guard g(slots_lock_);
    slot* s = i ? find_slot(i) : nullptr;
    if (!s || s->gen.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(key >> 32)) return;
    s->src.store(nullptr, std::memory_order_relaxed);
    std::uint32_t gen = s->gen.load(std::memory_order_relaxed) + 1;
    s->gen.store(gen ? gen : 1, std::memory_order_release);
    free_.push_back(i);  // capacity reserved by add_source()
}

void event_loop::dispatch(const void* raw, int n) noexcept {
    const auto* events = static_cast<const epoll_event*>(raw);
    std::uint64_t called = 0;
    for (int k = 0; k < n; ++k) {
        const std::uint64_t key = events[k].data.u64;
        if (key == 0) {
            std::uint64_t count;
            [[maybe_unused]] auto r = ::read(wake_, &count, sizeof count);
            continue;
        }
        // A source removed since the registration that raised this event has another
        // generation now: its event is dropped.
        const slot* s = find_slot(static_cast<std::uint32_t>(key));
        if (!s || s->gen.load(std::memory_order_acquire) != static_cast<std::uint32_t>(key >> 32)) continue;
        fd_source* src = s->src.load(std::memory_order_acquire);
        if (!src) continue;
        // The fd is published for the watchdog's report ("fd 7 callback"): one relaxed store,
        // read only while the heartbeat's type says an fd callback runs.
        running_fd_.store(src->watched_fd, std::memory_order_relaxed);
        heartbeat_.begin();
        src->on_ready(events[k].events);
        heartbeat_.end();
        ++called;
    }
    add(callbacks_, called);  // once per batch
}

void event_loop::run() noexcept {
    tls_loop = this;
    epoll_event events[max_events];
    const std::int64_t spin_ns = mailbox_.spin().count();
    for (;;) {
        const std::int64_t start = now_ns();
        if (!drain()) break;
        // Ready fds, without sleeping: a busy loop alternates between its queue and its fds.
        int n = ::epoll_wait(epoll_, events, max_events, 0);
        if (n > 0) dispatch(events, n);
        const std::int64_t took = now_ns() - start;
        add(cycles_, 1);
        add(busy_ns_, static_cast<std::uint64_t>(took));
        if (static_cast<std::uint64_t>(took) > max_cycle_ns_.load(std::memory_order_relaxed))
            max_cycle_ns_.store(static_cast<std::uint64_t>(took), std::memory_order_relaxed);
        if (!running()) break;
        if (n > 0 || mailbox_.maybe_nonempty()) continue;
        // Idle: spin on the queue for about what a wake-up costs, then sleep in epoll_wait with
        // `parked` announced, so that a writer signals the eventfd only then. A loop that
        // watches fds also looks at them every fd_poll_ns while it spins: readiness that comes
        // meanwhile is called back at once, not when the spin ends (a long spin would hold it).
        const std::int64_t spin_start = now_ns();
        const std::int64_t spin_end = spin_start + spin_ns;
        std::int64_t next_poll = fds_.load(std::memory_order_relaxed) > 0 ? spin_start + fd_poll_ns : spin_end;
        bool work = false;
        for (unsigned i = 1; spin_ns > 0; ++i) {
            if (mailbox_.maybe_nonempty()) {
                work = true;
                break;
            }
            cpu_relax();
            if ((i & 15) != 0) continue;
            const std::int64_t t = now_ns();
            if (t >= spin_end) break;
            if (t >= next_poll) {
                n = ::epoll_wait(epoll_, events, max_events, 0);
                if (n > 0) {
                    dispatch(events, n);
                    work = true;
                    break;
                }
                next_poll = t + fd_poll_ns;
            }
        }
        if (work) continue;
        if (!mailbox_.begin_park()) continue;
        heartbeat_.parks.store(heartbeat_.parks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        do {
            n = ::epoll_wait(epoll_, events, max_events, -1);
        } while (n < 0 && errno == EINTR);
        mailbox_.end_park();
        if (n > 0) dispatch(events, n);
    }
}

event_loop_pool::loop_stats event_loop::loop_stats() const noexcept {
    event_loop_pool::loop_stats s;
    s.contexts = contexts.load(std::memory_order_relaxed);
    const auto f = fds_.load(std::memory_order_acquire);  // after count_fd's release
    s.fds_watched = f > 0 ? static_cast<std::size_t>(f) : 0;
    s.fd_callbacks = callbacks_.load(std::memory_order_relaxed);
    s.cycles = cycles_.load(std::memory_order_relaxed);
    s.busy_ns = busy_ns_.load(std::memory_order_relaxed);
    s.max_cycle_ns = max_cycle_ns_.load(std::memory_order_relaxed);
    return s;
}

class event_loop_pool_dispatcher final : public dispatcher_impl {
public:
    event_loop_pool_dispatcher(std::string name, const event_loop_pool::params& p)
        : dispatcher_impl(std::move(name), std::string(event_loop_pool::handle::kind_name)) {
        set_watchdog(p.watchdog);
        std::size_t n = p.threads ? p.threads : std::max(1u, std::thread::hardware_concurrency());
        for (std::size_t i = 0; i < n; ++i) loops_.push_back(std::make_unique<event_loop>(p.spin, i));
        for (std::size_t i = 0; i < n; ++i) {
            try {
                loops_[i]->start(this->name() + "/" + std::to_string(i), this, i);
            } catch (...) {
                for (std::size_t k = 0; k < i; ++k) {
                    loops_[k]->request_stop();
                    loops_[k]->join();
                }
                throw;
            }
        }
    }

    ~event_loop_pool_dispatcher() override { join(); }

    std::shared_ptr<binder_impl> make_binder() override { return make_binder_at(any); }

    std::shared_ptr<binder_impl> make_binder_at(std::size_t index) {
        if (index != any && index >= loops_.size())
            throw binding_error("dispatcher '" + name() + "' (event_loop_pool) has " + std::to_string(loops_.size()) +
                                " loops: there is no loop " + std::to_string(index));
        return std::make_shared<loop_binder>(
            std::static_pointer_cast<event_loop_pool_dispatcher>(shared_from_this()), index);
    }

    void join() noexcept override {
        if (joined_.exchange(true, std::memory_order_relaxed)) return;
        shutdown();
        for (auto& l : loops_) l->request_stop();
        for (auto& l : loops_) l->join();
        for (auto& l : loops_) l->discard_all();
    }

    void discard_queued() noexcept override {
        for (auto& l : loops_) l->discard_all();
    }

    dispatcher_stats stats() const override {
        dispatcher_stats s;
        s.name = name();
        s.kind = kind();
        s.threads = joined_.load(std::memory_order_relaxed) ? 0 : loops_.size();
        for (auto& l : loops_) {
            s.bound_contexts += l->contexts.load(std::memory_order_relaxed);
            s.workers.push_back(l->stats());
        }
        return s;
    }

    // An fd callback is named by its fd: the heartbeat's type says only "fd callback".
    running_detail describe_worker(const heartbeat& beat) const override {
        running_detail out;
        for (auto& l : loops_)
            if (&l->beat() == &beat) {
                const int fd = l->running_fd();
                const std::type_info* t = beat.type.load(std::memory_order_relaxed);
                if (fd >= 0 && t && *t == typeid(fd_callback_tag))
                    out.what = "fd " + std::to_string(fd) + " callback";
            }
        return out;
    }

    std::vector<event_loop_pool::loop_stats> loops() const {
        std::vector<event_loop_pool::loop_stats> out;
        for (auto& l : loops_) out.push_back(l->loop_stats());
        return out;
    }

private:
    static constexpr std::size_t any = static_cast<std::size_t>(-1);

    struct loop_binder final : binder_impl {
        loop_binder(std::shared_ptr<event_loop_pool_dispatcher> d, std::size_t i)
            : binder_impl(d.get()), disp(std::move(d)), index(i) {}
        binding prepare(const void*) override {
            disp->check_accepting();
            event_loop* l = index == any ? disp->least_loaded() : disp->loops_[index].get();
            l->contexts.fetch_add(1, std::memory_order_relaxed);
            return {l, l};
        }
        void release(const binding& b, const void*) noexcept override {
            static_cast<event_loop*>(b.token)->contexts.fetch_sub(1, std::memory_order_relaxed);
        }
        std::shared_ptr<event_loop_pool_dispatcher> disp;
        std::size_t index;
    };

    // The loop with the fewest contexts, the lowest index among equals. Two bindings racing
    // may pick the same loop: the balance is approximate, never wrong.
    event_loop* least_loaded() const noexcept {
        event_loop* best = loops_.front().get();
        std::size_t least = best->contexts.load(std::memory_order_relaxed);
        for (auto& l : loops_) {
            const std::size_t c = l->contexts.load(std::memory_order_relaxed);
            if (c < least) {
                least = c;
                best = l.get();
            }
        }
        return best;
    }

    std::vector<std::unique_ptr<event_loop>> loops_;
    std::atomic<bool> joined_{false};
};

std::shared_ptr<dispatcher_impl> make_event_loop_pool(std::string name, const event_loop_pool::params& p) {
    return std::make_shared<event_loop_pool_dispatcher>(std::move(name), p);
}

}  // namespace mailroom::internal

namespace mailroom::event_loop_pool {

namespace {
internal::event_loop_pool_dispatcher& pool_of(const handle& h) {
    return static_cast<internal::event_loop_pool_dispatcher&>(internal::checked(internal::impl_of(h)));
}
}  // namespace

binder handle::bind_loop(std::size_t index) const { return binder(pool_of(*this).make_binder_at(index)); }

std::vector<loop_stats> handle::loops() const { return pool_of(*this).loops(); }

handle make_dispatcher(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(
        internal::add_to_host(host, name, [&] { return internal::make_event_loop_pool(name, p); }));
}

}  // namespace mailroom::event_loop_pool
