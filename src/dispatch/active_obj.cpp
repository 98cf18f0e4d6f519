// active_obj: a worker thread of its own for every bound context.

#include <mailroom/dispatch/active_obj_impl.hpp>

#include <mailroom/dispatch/worker_set.hpp>

namespace mailroom::internal {
namespace {

class active_obj_dispatcher final : public worker_set_dispatcher {
public:
    active_obj_dispatcher(std::string name, const active_obj::params& p)
        : worker_set_dispatcher(std::move(name), std::string(active_obj::handle::kind_name), p.spin) {
        set_watchdog(p.watchdog);
    }

    ~active_obj_dispatcher() override { join(); }

    std::shared_ptr<binder_impl> make_binder() override {
        return std::make_shared<obj_binder>(std::static_pointer_cast<active_obj_dispatcher>(shared_from_this()));
    }

private:
    struct obj_binder final : binder_impl {
        explicit obj_binder(std::shared_ptr<active_obj_dispatcher> d) : binder_impl(d.get()), disp(std::move(d)) {}
        binding prepare(const void*) override {
            std::lock_guard g(disp->workers_.lock);
            disp->check_accepting();
            worker* w = disp->workers_.acquire(disp->name());
            return {w, w};
        }
        void release(const binding& b, const void*) noexcept override {
            std::lock_guard g(disp->workers_.lock);
            disp->workers_.retire(static_cast<worker*>(b.token));
        }
        std::shared_ptr<active_obj_dispatcher> disp;
    };

    std::size_t bound_contexts() const noexcept override { return workers_.running(); }
};

}  // namespace

std::shared_ptr<dispatcher_impl> make_active_obj(std::string name, const active_obj::params& p) {
    return std::make_shared<active_obj_dispatcher>(std::move(name), p);
}

}  // namespace mailroom::internal

namespace mailroom::active_obj {

handle make_dispatcher(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(
        internal::add_to_host(host, name, [&] { return internal::make_active_obj(name, p); }));
}

}  // namespace mailroom::active_obj
