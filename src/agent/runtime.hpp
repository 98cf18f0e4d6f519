#pragma once
// The agent layer's records: cooperations, and the runtime (an environment extension) that owns
// them. An agent is a serial context (src/session/context.hpp) whose owner fields hold the
// agent object, its cooperation, its exception policy and its direct mbox, and whose table
// holds its subscriptions.

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/session/context.hpp>
#include <mailroom/session/event_object.hpp>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mailroom::internal {

class agent_runtime;

inline agent* user_of(const context_core& c) noexcept { return static_cast<agent*>(c.owner); }

/// The agent's protected hooks and its record, for the runtime.
struct agent_access {
    static void configure(agent& a) { a.configure(); }
    static void start(agent& a) { a.on_start(); }
    static void finish(agent& a) { a.on_finish(); }
    static context_core* core(const agent& a) noexcept { return a.core_; }
};

class coop_impl : public std::enable_shared_from_this<coop_impl> {
public:
    enum class state : std::uint8_t { building, registering, registered, deregistering, gone };

    coop_impl(agent_runtime* rt, environment& env, coop_options opts);
    ~coop_impl();

    void deregister(dereg_reason reason) noexcept;
    void start_finishing() noexcept;
    void agent_finished() noexcept;
    /// Destroys agents that never started (an unregistered or rolled-back cooperation).
    void destroy_unstarted() noexcept;

    agent_runtime* rt;
    environment* env;
    // Keeps the runtime (owned by the core) alive for as long as a coop object or handle may
    // reach it, even after the environment is gone. No cycle outlives the teardown: the
    // runtime's map lets go of a cooperation when it is finalized.
    std::shared_ptr<env_core> env_keep;
    std::uint64_t id;
    std::string name;
    bool named;
    coop_options opts;
    std::shared_ptr<binder_impl> default_binder;
    std::vector<context_core*> agents;
    std::shared_ptr<coop_impl> parent;

    // Guarded by the runtime's tree lock.
    state st = state::building;
    std::vector<coop_impl*> children;
    std::size_t live_children = 0;
    dereg_reason reason = dereg_reason::normal;
    // on_registered has returned (or there was none). Until then the cooperation does not
    // start finishing, so that on_deregistered never runs before or during on_registered.
    bool announced = false;
    // deregister() while it was being built or configured: applied once registration commits.
    bool dereg_requested = false;
    dereg_reason requested_reason = dereg_reason::normal;

    /// With the tree lock held: deregistering, no child left, and announced. Whoever makes
    /// this true (deregister, the last child, the end of registration) starts finishing.
    bool ready_to_finish() const noexcept {
        return st == state::deregistering && live_children == 0 && announced;
    }

    std::atomic<std::size_t> live_agents{0};
};

class agent_runtime final : public env_extension {
public:
    agent_runtime(env_core* env, session_runtime& contexts);
    ~agent_runtime() override;

    static agent_runtime& of(env_core& env);

    // env_extension. The first phase: the cooperations finish before the sessions are
    // destroyed and before anything the layers above keep about them.
    static constexpr int phase = 100;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override;
    void wait_stopped() noexcept override;
    agent_stats stats() const noexcept;
    /// The runtime of `env` if one was made, else null. Any thread.
    static const agent_runtime* find(const env_core& env) noexcept;

    /// A record for a new agent of `c` (its life begun, its direct mbox made). May throw.
    context_core* make_agent_context(coop_impl& c, std::shared_ptr<binder_impl> b);
    /// Gives back the record of an agent that was never constructed.
    void abandon_agent_context(context_core* core) noexcept;

    coop_handle register_coop(std::shared_ptr<coop_impl> c);
    void finalize(coop_impl& c) noexcept;

    env_core* env;
    session_runtime& contexts;
    std::shared_ptr<env_core> env_shared() const { return env->shared_from_this(); }

    std::atomic<std::uint64_t> agents_created{0}, agents_destroyed{0}, coops_registered{0}, coops_deregistered{0};

    mutable std::mutex tree_lock;

private:
    // Guarded by tree_lock.
    std::unordered_map<std::uint64_t, std::shared_ptr<coop_impl>> coops_;
    std::unordered_map<std::string, std::uint64_t> coop_names_;
    std::size_t busy_ = 0;  // registered cooperations plus registrations under way
    std::condition_variable idle_;
};

/// The agent whose configure() or handler this thread is running (null elsewhere).
inline context_core* current_agent() noexcept {
    context_core* c = current_context();
    return c && c->kind == context_kind::agent ? c : nullptr;
}

/// The agent's name for errors and logs: the one given with set_name, else its type and id.
std::string agent_display_name(const context_core& c);

/// Makes the agent's direct mbox, once (agent::direct_mbox() on its first call). Any thread.
void make_direct_mbox(context_core& c);

}  // namespace mailroom::internal
