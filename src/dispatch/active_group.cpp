// active_group: one worker thread per named group, alive while the group has contexts.

#include <mailroom/core/handle_access.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/dispatch/active_group_impl.hpp>

#include <mailroom/dispatch/worker_set.hpp>

#include <map>

namespace mailroom::internal {
namespace {

class active_group_dispatcher final : public worker_set_dispatcher {
public:
    active_group_dispatcher(std::string name, const active_group::params& p)
        : worker_set_dispatcher(std::move(name), std::string(active_group::handle::kind_name), p.spin) {
        set_watchdog(p.watchdog);
    }

    ~active_group_dispatcher() override { join(); }

    // A context needs a group; the generic handle's bind() names none.
    std::shared_ptr<binder_impl> make_binder() override {
        throw binding_error("dispatcher '" + name() + "' is active_group: a context is bound to one of its groups " +
                            "(active_group::handle::bind_group), there is no default binding");
    }

    std::shared_ptr<binder_impl> make_group_binder(std::string group) {
        if (group.empty())
            throw binding_error("dispatcher '" + name() + "' (active_group): the group name is empty");
        return std::make_shared<group_binder>(
            std::static_pointer_cast<active_group_dispatcher>(shared_from_this()), std::move(group));
    }

private:
    struct group {
        worker* w = nullptr;
        std::size_t members = 0;
    };

    struct group_binder final : binder_impl {
        group_binder(std::shared_ptr<active_group_dispatcher> d, std::string g)
            : binder_impl(d.get()), disp(std::move(d)), name(std::move(g)) {}
        binding prepare(const void*) override {
            std::lock_guard g(disp->workers_.lock);
            disp->check_accepting();
            auto it = disp->groups_.find(name);
            if (it == disp->groups_.end()) {
                worker* w = disp->workers_.acquire(disp->name() + ":" + name);
                it = disp->groups_.emplace(name, group{w, 0}).first;
            }
            ++it->second.members;
            return {it->second.w, &*it};
        }
        void release(const binding& b, const void*) noexcept override {
            std::lock_guard g(disp->workers_.lock);
            auto* entry = static_cast<std::pair<const std::string, group>*>(b.token);
            if (--entry->second.members == 0) {
                disp->workers_.retire(entry->second.w);
                disp->groups_.erase(disp->groups_.find(entry->first));
            }
        }
        std::shared_ptr<active_group_dispatcher> disp;
        std::string name;
    };

    std::size_t bound_contexts() const noexcept override {
        std::size_t n = 0;
        for (auto& [name, grp] : groups_) n += grp.members;
        return n;
    }

    std::map<std::string, group> groups_;
};

}  // namespace

std::shared_ptr<dispatcher_impl> make_active_group(std::string name, const active_group::params& p) {
    return std::make_shared<active_group_dispatcher>(std::move(name), p);
}

std::shared_ptr<binder_impl> bind_group(dispatcher_impl& d, std::string group) {
    // Only an active_group dispatcher gets here: its handle was checked when it was made.
    if (d.kind() != active_group::handle::kind_name) fatal("bind_group on a dispatcher that is not active_group");
    return static_cast<active_group_dispatcher&>(d).make_group_binder(std::move(group));
}

}  // namespace mailroom::internal

namespace mailroom::active_group {

binder handle::bind_group(std::string group) const {
    return binder(internal::bind_group(internal::checked(internal::impl_of(*this)), std::move(group)));
}

handle make_dispatcher(dispatcher_host& host, std::string name, const params& p) {
    return dispatcher_cast<handle>(
        internal::add_to_host(host, name, [&] { return internal::make_active_group(name, p); }));
}

}  // namespace mailroom::active_group
