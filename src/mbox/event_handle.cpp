#include <mailroom/mbox/event_handle.hpp>

#include <mailroom/mbox/handle_target.hpp>

namespace mailroom {

event_handle& event_handle::operator=(event_handle&& o) noexcept {
    if (this != &o) {
        destroy();
        target_ = std::exchange(o.target_, nullptr);
    }
    return *this;
}

event_handle::operator bool() const noexcept { return target_ && target_->handle_live(); }

bool event_handle::shutdown() noexcept { return target_ && target_->handle_shutdown(); }

void event_handle::destroy() noexcept {
    if (target_) std::exchange(target_, nullptr)->handle_destroy();
}

void event_handle::detach() noexcept {
    if (target_) std::exchange(target_, nullptr)->handle_detach();
}

}  // namespace mailroom
