#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/queue/futex.hpp>

#include <mailroom/dispatch/stack_capture.hpp>
#include <mailroom/dispatch/worker.hpp>

#include <pthread.h>

#include <mutex>

namespace mailroom {
namespace internal {

// The public default of the params structs is the one a worker's mailbox uses when not told.
static_assert(default_worker_spin == default_spin);

MAILROOM_FAST_TLS constinit thread_local heartbeat* tls_heartbeat = nullptr;

namespace {
MAILROOM_FAST_TLS constinit thread_local const dispatcher_impl* tls_dispatcher = nullptr;
}

const dispatcher_impl* current_dispatcher() noexcept { return tls_dispatcher; }
void set_current_dispatcher(const dispatcher_impl* d) noexcept { tls_dispatcher = d; }

namespace {
// The registered kinds by number (0 unused). Constant-initialized, so that a layer may register
// its kinds from a static initializer of any translation unit.
constinit std::atomic<const char*> running_kinds[256]{};
constinit std::mutex running_kinds_lock;
}  // namespace

running_kind register_running_kind(const char* name) noexcept {
    std::lock_guard g(running_kinds_lock);
    for (unsigned k = 1; k < 256; ++k) {
        const char* n = running_kinds[k].load(std::memory_order_relaxed);
        if (!n) {
            // Release: a reader that finds this number in a heartbeat finds the name.
            running_kinds[k].store(name, std::memory_order_release);
            return static_cast<running_kind>(k);
        }
        if (std::string_view(n) == name) return static_cast<running_kind>(k);
    }
    fatal("register_running_kind: more than 255 kinds of context");
}

std::string_view running_kind_name(running_kind kind) noexcept {
    const char* n = running_kinds[kind].load(std::memory_order_acquire);
    return n ? std::string_view(n) : std::string_view();
}

binder_impl::~binder_impl() = default;

worker_stats read_heartbeat(const heartbeat& beat) noexcept {
    worker_stats w;
    w.handled = beat.handled.load(std::memory_order_relaxed);
    w.busy = beat.busy.load(std::memory_order_relaxed) != 0;
    w.parks = beat.parks.load(std::memory_order_relaxed);
    if (w.busy) {
        std::uint64_t c = beat.context.load(std::memory_order_relaxed);
        w.running_kind = running_kind_name(static_cast<running_kind>(c >> running_kind_shift));
        if (!w.running_kind.empty()) {
            w.running_id = c & running_id_mask;
            if (const std::type_info* t = beat.type.load(std::memory_order_relaxed)) w.running_type = message_type(*t);
        }
    }
    return w;
}

dispatcher_impl::dispatcher_impl(std::string name, std::string kind)
    : name_(std::move(name)), kind_(std::move(kind)) {}

dispatcher_impl::~dispatcher_impl() = default;

void dispatcher_impl::attach_worker(heartbeat& beat, std::size_t index) const noexcept {
    prepare_stack_capture();
    std::lock_guard g(watched_lock_);
    if (index == static_cast<std::size_t>(-1)) index = next_worker_index_++;
    try {
        watched_.push_back({&beat, index, this_thread_kernel_id()});
    } catch (...) {
    }
}

void dispatcher_impl::detach_worker(heartbeat& beat) const noexcept {
    std::lock_guard g(watched_lock_);
    std::erase_if(watched_, [&](const watched_worker& w) { return w.beat == &beat; });
}

dispatcher_impl::running_detail dispatcher_impl::describe_worker(const heartbeat&) const { return {}; }

void dispatcher_impl::check_accepting() const {
    if (!accepting())
        throw binding_error("dispatcher '" + name_ + "' (" + kind_ +
                            ") is shut down: nothing can be bound to it any more");
}

worker_thread::worker_thread(std::chrono::nanoseconds spin) noexcept : mailbox_(spin) {
    stop_.owner = this;
    stop_.execute = &on_stop;
}

worker_thread::~worker_thread() {
    if (thread_.joinable()) fatal("worker destroyed with its thread still running");
    discard_all();
}

void worker_thread::start(const std::string& thread_name, const dispatcher_impl* owner, std::size_t index) {
    finished_.store(false, std::memory_order_relaxed);
    running_ = true;
    thread_ = std::thread([this, owner, index] {
        set_current_dispatcher(owner);
        tls_heartbeat = &heartbeat_;
        // Listed before the first demand runs, so that the watchdog sees every one of them.
        if (owner) owner->attach_worker(heartbeat_, index);
        run();
        finished_.store(true, std::memory_order_release);
        if (owner) owner->detach_worker(heartbeat_);
    });
    // Thread names are at most 15 characters; they help in gdb, top and the watchdog's reports.
    std::string n = thread_name.substr(0, 15);
    ::pthread_setname_np(thread_.native_handle(), n.c_str());
}

void worker_thread::on_stop(demand* d, demand_mode) noexcept {
    static_cast<stop_demand*>(d)->owner->running_ = false;
}

void worker_thread::request_stop() noexcept { mailbox_.push(&stop_); }

void worker_thread::join() noexcept {
    if (thread_.joinable()) thread_.join();
}

bool worker_thread::drain() noexcept {
    spin_backoff backoff;
    while (mailbox_.maybe_nonempty()) {
        mpsc_node* n = mailbox_.pop();
        if (!n) {
            // A push is mid-way: its link appears within a few instructions, unless the
            // producer was preempted between its exchange and its link; then the core is
            // better given to it than spun on.
            backoff.pause();
            continue;
        }
        backoff.reset();
        auto* d = static_cast<demand*>(n);
        heartbeat_.begin();
        d->execute(d, demand_mode::run);
        heartbeat_.end();
        if (!running_) return false;
    }
    return running_;
}

void worker_thread::discard_all() noexcept {
    spin_backoff backoff;
    while (mailbox_.maybe_nonempty()) {
        mpsc_node* n = mailbox_.pop();
        if (!n) {
            backoff.pause();
            continue;
        }
        auto* d = static_cast<demand*>(n);
        if (d != &stop_) d->execute(d, demand_mode::discard);
    }
}

worker_stats worker_thread::stats() const noexcept {
    worker_stats s = read_heartbeat(heartbeat_);
    s.parks = mailbox_.parks();
    return s;
}

dispatcher add_to_host(dispatcher_host& host, std::string_view name, const dispatcher_builder& build) {
    return dispatcher(host.host_dispatcher(name, build));
}

dispatcher_impl& checked(const std::shared_ptr<dispatcher_impl>& impl) {
    if (!impl) throw usage_error("empty dispatcher handle");
    return *impl;
}

}  // namespace internal

void extend_deadline() noexcept {
    if (internal::heartbeat* b = internal::tls_heartbeat)
        b->extended.store(b->extended.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

binder::binder(std::shared_ptr<internal::binder_impl> impl) noexcept : impl_(std::move(impl)) {}

dispatcher::dispatcher(std::shared_ptr<internal::dispatcher_impl> impl) noexcept : impl_(std::move(impl)) {}

dispatcher::dispatcher(const dispatcher& d, std::string_view kind) : impl_(d.impl_) {
    if (impl_ && impl_->kind() != kind)
        throw dispatcher_kind_error("dispatcher '" + impl_->name() + "'" +
                                    (impl_->owner() ? " of environment '" + impl_->owner_name() + "'" : std::string()) +
                                    " is " + impl_->kind() + ", not " + std::string(kind));
}

dispatcher::operator bool() const noexcept { return impl_ && impl_->accepting(); }

std::string_view dispatcher::name() const noexcept { return impl_ ? std::string_view(impl_->name()) : std::string_view(); }

std::string_view dispatcher::kind() const noexcept {
    return impl_ ? std::string_view(impl_->kind()) : std::string_view();
}

binder dispatcher::bind() const { return binder(internal::checked(impl_).make_binder()); }

void dispatcher::shutdown() noexcept {
    if (impl_) impl_->shutdown();
}

dispatcher_stats dispatcher::stats() const { return internal::checked(impl_).snapshot(); }

}  // namespace mailroom
