#pragma once
/// How the library reaches what is behind a public handle, without the handle offering it to
/// users: every handle (mbox, binder, dispatcher, coop, coop_handle) and the environment name
/// handle_access as their friend, and only this internal header defines it. Tests reach it
/// through the mailroom::internal target; it is never installed.

namespace mailroom::internal {

struct handle_access {
    /// The shared implementation a handle refers to (empty for an empty handle).
    template <class Handle>
    static const auto& impl(const Handle& h) noexcept {
        return h.impl_;
    }
    /// The environment's shared core.
    template <class Environment>
    static const auto& core(const Environment& e) noexcept {
        return e.core_;
    }
};

/// `h`'s implementation: `impl_of(to)->deliver(...)`. Any thread that holds the handle.
template <class Handle>
const auto& impl_of(const Handle& h) noexcept {
    return handle_access::impl(h);
}

/// The environment's core, for the layers above env. Any thread.
template <class Environment>
const auto& core_of(const Environment& e) noexcept {
    return handle_access::core(e);
}

}  // namespace mailroom::internal
