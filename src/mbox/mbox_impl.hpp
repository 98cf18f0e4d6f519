#pragma once
// The mbox layer's records: what an mbox handle refers to, and what a message goes to.
//
// Lifetime without a reference count per message: see receiver.hpp.

#include <mailroom/mbox/receiver.hpp>
#include <mailroom/mbox/filter_slot.hpp>
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

/// An MPSC mbox: every message goes along one route.
class direct_mbox final : public mbox_impl {
public:
    /// A context's own (an agent's): `what` and `what_id` name it for errors ("agent", 12).
    /// The route's key is the mbox's id.
    direct_mbox(std::shared_ptr<env_core> env, route to, const char* what, std::uint64_t what_id);
    /// An event object's (an inbox's): its route carries the object's key; `describe` names it
    /// ("inbox #3 of session 'x'").
    direct_mbox(std::shared_ptr<env_core> env, route to, object_link link, std::string describe);
    ~direct_mbox() override;
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    const route& target() const noexcept { return to_; }

    /// The mbox's delivery filters (per type), made on first use (named after `owner`); may
    /// throw (out of memory). Any thread.
    filter_slot& filters(const std::string& owner);
    /// True once a filter was set on it. Any thread.
    bool has_filters() const noexcept { return filters_.load(std::memory_order_acquire) != nullptr; }
    /// An inbox's mbox: uses `s` (shared with the inbox, which closes it) from the start. Before
    /// the mbox is shared.
    void adopt_filters(filter_ref s) noexcept;
    /// Closes the filters if any were made: no predicate of them runs after this returns (the
    /// end of the owner's life). Any thread.
    void close_filters() noexcept;

private:
    struct object_part {
        object_link link;
        std::string describe;
    };

    route to_;
    // Set when the mbox leads to an event object (`object_`) or got delivery filters: the send
    // path of a plain direct mbox tests this one byte (next to the route it reads) for both.
    std::atomic<bool> extras_{false};
    const char* what_ = nullptr;
    std::uint64_t what_id_ = 0;
    std::unique_ptr<const object_part> object_;  // an event object's mbox only
    // Null until a filter is first set: the send path tests it once. Owned (one reference)
    // once set; made under filters_lock_.
    std::atomic<filter_slot*> filters_{nullptr};
    spin_mutex filters_lock_;
};

/// A publish-subscribe mbox: each message goes to every subscriber of its type.
class mpmc_mbox final : public mbox_impl {
public:
    mpmc_mbox(std::shared_ptr<env_core> env, std::string name);
    void deliver(envelope* e, timer_entry* timer) override;
    std::string name() const override;

    /// Any thread. A subscriber is listed once per type; adding it twice lists it twice. Its
    /// route's key is what its table maps to a handler (this mbox's id, or an object's).
    /// With `filter`, the listing is filtered from its first delivery on (a session's
    /// subscription made with a filter).
    void add_subscriber(route s, message_type type, object_link link = {}, filter_ref filter = {});
    /// Removes the listing and closes its filters: when it returns, no predicate of it runs.
    void remove_subscriber(const route& s, message_type type) noexcept;

    /// The filters of the listing (s, type), made on first use when `make` (named after
    /// `owner`); an empty reference when there is no such listing (or none made). Any thread;
    /// may throw (out of memory).
    filter_ref filters_of(const route& s, message_type type, const std::string& owner, bool make = true);

private:
    struct listing {
        route to;
        object_link link;  // `closed` set for an event object's listing
        filter_ref filter;  // null unless a delivery filter was set on the listing
    };
    struct table {
        std::vector<std::pair<message_type, std::vector<listing>>> by_type;
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
    /// Lists `m` (an mchain's mbox face) under `name`; raises duplicate_name_error if taken.
    void add(const std::string& name, std::shared_ptr<mbox_impl> m);
    mbox find(std::string_view name);

private:
    env_core* env_;
    std::mutex lock_;
    std::map<std::string, std::shared_ptr<mbox_impl>, std::less<>> named_;
    bool closed_ = false;
};

}  // namespace mailroom::internal
