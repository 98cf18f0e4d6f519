#pragma once
// The mbox layer's records: what an mbox handle refers to, and what a message goes to.
//
// Lifetime without a reference count per message: a receiver is a message_sink, which the layer
// above keeps type-stable (its memory is recycled, never freed while the process runs) and
// gives a generation per life. An mbox names its receiver as (sink, generation); a sink whose
// generation moved on counts what reaches it as lost. A sender therefore needs no atomic
// read-modify-write on the receiver to send.

#include <mailroom/dispatch/timer_service.hpp>
#include <mailroom/env/env_core.hpp>
#include <mailroom/mbox/mbox.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::internal {

/// How a delivery was sent, which decides how it counts when it finds no handler or no receiver:
/// to an agent's direct mbox (no handler: ignored; receiver gone: lost), to a session's inbox
/// (either: lost), or published through an MPMC mbox (either: ignored, the receiver left the
/// topic).
enum class delivery_kind : std::uint8_t { direct, inbox, fanout };

/// What a sink did with a delivery.
enum class accept_result : std::uint8_t {
    queued,    ///< taken and queued (counted sent)
    gone,      ///< the receiver's life is over: counted lost (direct) or ignored (published)
    unwanted,  ///< not a type the receiver takes (an inbox of another type): counted ignored
};

/// What a message is delivered to: a serial context of the layer above, or one of its event
/// objects (an inbox, a topic subscription). A context is type-stable (see the file comment): a
/// sender may call it with a stale generation at any time; an object is kept alive by whoever
/// lists it (sink_ref::keep).
class message_sink {
public:
    /// Any thread, inside the sender's send_scope. Queues `e` for the life `gen` of this sink,
    /// under the key `key` (the mbox's id, or the event object's): takes over one reference to
    /// `e` (and adds one to `timer` when set), and counts the send in `c` before the delivery is
    /// queued (so that no snapshot of the counters shows its outcome first). Otherwise takes
    /// and counts nothing (an early answer: the receiving side checks again). May throw (out of
    /// memory) before it took anything.
    virtual accept_result accept(std::uint32_t gen, std::uint64_t key, envelope* e, timer_entry* timer,
                                 delivery_kind kind, thread_counters& c) = 0;

protected:
    ~message_sink() = default;
};

/// A receiver as an mbox names it, and what keeps it alive (empty for a type-stable context).
struct sink_ref {
    message_sink* sink = nullptr;
    std::uint32_t gen = 0;
    std::shared_ptr<void> keep{};
    /// The same receiver (whatever keeps it).
    bool same(const sink_ref& o) const noexcept { return sink == o.sink && gen == o.gen; }
};

/// A fresh key for what a context's table maps to a handler: mbox ids and event objects' keys
/// come from one counter, so that they never collide. Any thread.
std::uint64_t new_delivery_key() noexcept;

class mbox_impl {
public:
    mbox_impl(std::shared_ptr<env_core> env, mbox_kind kind);
    virtual ~mbox_impl();

    /// Takes ownership of `e` (and of a reference to `timer` per delivery it creates).
    /// Raises environment_stopped_error when the environment is closed.
    virtual void deliver(envelope* e, timer_entry* timer) = 0;
    virtual std::string name() const = 0;

    std::uint64_t id() const noexcept { return id_; }
    mbox_kind kind() const noexcept { return kind_; }
    env_core& env() const noexcept { return *env_; }
    const std::shared_ptr<env_core>& env_ptr() const noexcept { return env_; }

protected:
    std::shared_ptr<env_core> env_;
    std::uint64_t id_;
    mbox_kind kind_;
};

/// An MPSC mbox: every message goes to one receiver. `describe` names the receiver for errors
/// ("agent #12", "inbox #3 of session 'x'"); `kind` is direct or inbox.
class direct_mbox final : public mbox_impl {
public:
    direct_mbox(std::shared_ptr<env_core> env, sink_ref to, delivery_kind kind, std::string describe);
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    sink_ref target() const noexcept { return to_; }
    delivery_kind delivery() const noexcept { return delivery_; }

private:
    sink_ref to_;
    delivery_kind delivery_;
    std::string describe_;
};

/// A publish-subscribe mbox: each message goes to every subscriber of its type.
class mpmc_mbox final : public mbox_impl {
public:
    mpmc_mbox(std::shared_ptr<env_core> env, std::string name);
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    /// Any thread. A subscriber is listed once per type; adding it twice lists it twice.
    void add_subscriber(sink_ref s, message_type type);
    void remove_subscriber(const sink_ref& s, message_type type) noexcept;

private:
    struct table {
        std::vector<std::pair<message_type, std::vector<sink_ref>>> by_type;
    };

    std::string name_;
    mutable std::mutex lock_;
    // Copy on write: a publisher takes a snapshot under the lock and delivers outside it, so
    // subscribing and unsubscribing are safe while deliveries run on other threads.
    std::shared_ptr<const table> table_;
};

/// The environment's named mboxes (an extension of the environment, made on first use).
class mbox_registry final : public env_extension {
public:
    explicit mbox_registry(env_core* env) : env_(env) {}

    static mbox_registry& of(env_core& env);

    /// After the contexts (which may still make and find names as they finish), before the
    /// environment closes: emptying the registry breaks the cycle mbox -> core -> registry.
    static constexpr int phase = 300;
    int teardown_phase() const noexcept override { return phase; }
    void begin_stop() noexcept override {}
    void wait_stopped() noexcept override;

    mbox make(std::string name, bool may_exist);
    mbox find(std::string_view name);

private:
    env_core* env_;
    std::mutex lock_;
    std::map<std::string, std::shared_ptr<mbox_impl>, std::less<>> named_;
    bool closed_ = false;
};

}  // namespace mailroom::internal
