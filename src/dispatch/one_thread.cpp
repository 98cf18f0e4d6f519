// one_thread: every context bound here shares one worker thread and its mailbox.

#include <mailroom/dispatch/one_thread_impl.hpp>

#include <mailroom/dispatch/worker.hpp>

namespace mailroom::internal {
namespace {

class one_thread_dispatcher final : public dispatcher_impl {
public:
    one_thread_dispatcher(std::string name, const one_thread::params& p)
        : dispatcher_impl(std::move(name), std::string(one_thread::handle::kind_name)), worker_(p.spin) {
        set_watchdog(p.watchdog);
        worker_.start(this->name(), this);
    }

    ~one_thread_dispatcher() override { join(); }

    std::shared_ptr<binder_impl> make_binder() override {
        return std::make_shared<one_binder>(std::static_pointer_cast<one_thread_dispatcher>(shared_from_this()));
    }

    void join() noexcept override {
        if (joined_.exchange(true, std::memory_order_relaxed)) return;
        shutdown();
        worker_.request_stop();
        worker_.join();
        worker_.discard_all();
    }

    void discard_queued() noexcept override { worker_.discard_all(); }

    dispatcher_stats stats() const override {
        dispatcher_stats s;
        s.name = name();
        s.kind = kind();
        s.threads = joined_.load(std::memory_order_relaxed) ? 0 : 1;
        s.bound_contexts = bound_.load(std::memory_order_relaxed);
        s.workers.push_back(worker_.stats());
        return s;
    }

private:
    struct one_binder final : binder_impl {
        explicit one_binder(std::shared_ptr<one_thread_dispatcher> d) : binder_impl(d.get()), disp(std::move(d)) {}
        binding prepare(const void*) override {
            disp->check_accepting();
            disp->bound_.fetch_add(1, std::memory_order_relaxed);
            return {&disp->worker_, nullptr};
        }
        void release(const binding&, const void*) noexcept override {
            disp->bound_.fetch_sub(1, std::memory_order_relaxed);
        }
        std::shared_ptr<one_thread_dispatcher> disp;
    };

    worker worker_;
    std::atomic<std::size_t> bound_{0};
    std::atomic<bool> joined_{false};  // stats() reads it from any thread
};

}  // namespace

std::shared_ptr<dispatcher_impl> make_one_thread(std::string name, const one_thread::params& p) {
    return std::make_shared<one_thread_dispatcher>(std::move(name), p);
}

}  // namespace mailroom::internal

namespace mailroom::one_thread {

handle make_dispatcher(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(
        internal::add_to_host(host, name, [&] { return internal::make_one_thread(name, p); }));
}

}  // namespace mailroom::one_thread
