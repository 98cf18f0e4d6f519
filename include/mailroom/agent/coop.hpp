#pragma once
/// Cooperations: agents registered and deregistered together, transactionally.

#include <mailroom/agent/agent.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace mailroom {

namespace internal {
class coop_impl;
struct handle_access;
}  // namespace internal

/// A handle to a registered cooperation. Any thread; cheap to copy.
class MAILROOM_EXPORT coop_handle {
public:
    coop_handle() noexcept = default;
    explicit coop_handle(std::shared_ptr<internal::coop_impl> impl) noexcept;

    /// True while the cooperation is registered and not yet fully deregistered.
    explicit operator bool() const noexcept;

    std::string name() const;

    /// Begins deregistration: children first, then this cooperation's agents run their
    /// on_finish (after the messages already queued for them) and are destroyed on their own
    /// contexts. Any thread, including handlers; returns at once; a second call does nothing.
    /// Once the environment is gone it does nothing (the handle keeps its core alive).
    void deregister(dereg_reason reason = dereg_reason::normal) noexcept;

private:
    friend struct internal::handle_access;
    std::shared_ptr<internal::coop_impl> impl_;
};

struct coop_options {
    /// Unique within the environment when given; anonymous cooperations get "coop#<id>".
    std::string name;
    /// Where its agents run; the environment's default dispatcher when empty.
    binder bind{};
    /// The parent cooperation: this one is deregistered before the parent's agents finish.
    coop_handle parent{};
    /// For agents that say `inherit`.
    exception_policy on_exception = exception_policy::inherit;
    /// Called once registration has committed, on the registering thread, before any of the
    /// cooperation's agents starts. It returns before on_deregistered starts: a deregistration
    /// that comes meanwhile (another thread, the environment stopping) waits for it.
    std::function<void(const coop_handle&)> on_registered{};
    /// Called once every agent is destroyed, on the thread that finished last (for an empty
    /// cooperation: the one that deregistered it, or the registering thread), with the reason.
    std::function<void(std::string_view name, dereg_reason)> on_deregistered{};
};

/// A cooperation being assembled. Agents made here are constructed at once but configured,
/// bound and started only by register_coop; if it is destroyed unregistered they are destroyed.
class MAILROOM_EXPORT coop {
public:
    explicit coop(environment& env, coop_options options = {});
    ~coop();
    coop(coop&&) noexcept;
    coop& operator=(coop&&) noexcept;

    /// Constructs an agent of type A (derived from mailroom::agent) in this cooperation.
    template <class A, class... Args>
    A& make_agent(Args&&... args) {
        return make_agent_with_binder<A>(binder{}, std::forward<Args>(args)...);
    }

    /// Same, bound by `b` instead of the cooperation's binder.
    template <class A, class... Args>
    A& make_agent_with_binder(binder b, Args&&... args) {
        static_assert(std::is_base_of_v<agent, A>, "agents derive from mailroom::agent");
        void* slot = prepare_agent(std::move(b));
        A* a = nullptr;
        try {
            a = new A(std::forward<Args>(args)...);
        } catch (...) {
            abandon_agent(slot);
            throw;
        }
        adopt_agent(slot, a);
        return *a;
    }

    environment& env() const noexcept { return *env_; }
    std::size_t size() const noexcept;

private:
    friend struct internal::handle_access;
    friend MAILROOM_EXPORT coop_handle register_coop(coop&& c);
    void* prepare_agent(binder b);
    void abandon_agent(void* slot) noexcept;
    void adopt_agent(void* slot, agent* a) noexcept;

    environment* env_;
    std::shared_ptr<internal::coop_impl> impl_;
};

/// Registers the cooperation, all or nothing (guarantee 5): each agent is bound and configured;
/// if any of that throws, everything done so far is undone, no agent has started, no message
/// reached any of them, and the exception reaches the caller. Raises duplicate_name_error for a
/// name in use and environment_stopped_error when the environment is stopping. Whatever fails,
/// the cooperation's agents are destroyed before the exception reaches the caller.
MAILROOM_EXPORT coop_handle register_coop(coop&& c);

/// The one-agent shortcut: registers an anonymous cooperation holding one agent of type A built
/// from `args` (bound to the environment's default dispatcher) and returns the agent's direct
/// mbox, which is what a sender needs. The cooperation is deregistered when the environment
/// stops, or by the agent itself (deregister_coop()). Raises what register_coop raises.
template <class A, class... Args>
mbox register_agent(environment& env, Args&&... args) {
    coop c(env);
    mbox to = c.make_agent<A>(std::forward<Args>(args)...).direct_mbox();
    register_coop(std::move(c));
    return to;
}

/// Convenience: builds a cooperation with `fill` and registers it.
template <class Fill>
coop_handle introduce_coop(environment& env, coop_options options, Fill&& fill) {
    coop c(env, std::move(options));
    std::forward<Fill>(fill)(c);
    return register_coop(std::move(c));
}

/// Counters of the agents and cooperations of an environment: what the agent layer adds to
/// environment_stats.
struct agent_stats {
    std::uint64_t agents_created = 0;
    std::uint64_t agents_destroyed = 0;
    std::uint64_t coops_registered = 0;
    std::uint64_t coops_deregistered = 0;
};

/// A snapshot of `env`'s agent counters; any thread, also after the environment stopped (all
/// zero when no cooperation was ever made in it).
MAILROOM_EXPORT agent_stats agent_stats_of(const environment& env);

}  // namespace mailroom
