#pragma once
/// A unit of work queued for a worker: what the dispatch layer moves, without knowing what it is.

#include <mailroom/export.hpp>
#include <mailroom/queue/mpsc_queue.hpp>

#include <atomic>
#include <cstdint>

namespace mailroom::internal {

/// How a demand leaves its queue: run on its context, or discarded because its queue is being
/// torn down (it must then release what it holds and count itself as discarded).
enum class demand_mode : std::uint8_t { run, discard };

/// Upper layers derive from demand and give it an execute function. A demand is owned by the
/// queue it sits in; `execute` consumes it (runs it, then frees it).
struct demand : mpsc_node {
    using execute_fn = void (*)(demand*, demand_mode) noexcept;
    execute_fn execute = nullptr;
};

/// Where a bound context's demands go. push() is callable from any thread, never blocks and
/// never allocates. Queue objects are type-stable: they live until the environment's core is
/// freed, so a stale sender may still push into one safely (the demand then finds its target
/// gone and counts itself lost).
class event_loop;

class event_queue {
public:
    virtual void push(demand* d) noexcept = 0;
    /// The event loop this queue is, or null: how the session layer finds the loop a context
    /// was pinned to (for its fd watchers). Not on a hot path.
    virtual event_loop* loop() noexcept { return nullptr; }

protected:
    ~event_queue() = default;
};

}  // namespace mailroom::internal
