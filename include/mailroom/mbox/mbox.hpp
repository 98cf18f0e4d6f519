#pragma once
/// Mboxes: where messages are sent. An agent's direct mbox (MPSC: many senders, one receiver,
/// the cheapest), publish-subscribe mboxes (MPMC: 0..N subscribers per message type), and
/// named mboxes found by name in the environment.

#include <mailroom/core/message.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/export.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace mailroom {

namespace internal {
class mbox_impl;
class timer_entry;
struct handle_access;
}  // namespace internal

/// direct: one receiver (an agent's or an inbox's); mpmc: publish-subscribe; mchain: an
/// mchain's mbox face (mchain.hpp), from which contexts take with subscribe(chain, ...).
enum class mbox_kind : std::uint8_t { direct, mpmc, mchain };

/// A handle to an mbox; cheap to copy, usable from any thread. Keeps the environment's core
/// alive, so sending through it after the environment stopped raises environment_stopped_error
/// rather than touching freed memory.
class MAILROOM_EXPORT mbox {
public:
    mbox() noexcept = default;
    explicit mbox(std::shared_ptr<internal::mbox_impl> impl) noexcept;

    /// True when it refers to an mbox (which may belong to a stopped environment).
    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

    std::uint64_t id() const noexcept;
    mbox_kind kind() const noexcept;
    /// "quotes" for a named mbox, "agent 'feed'" for a direct one, "mbox #12" otherwise.
    std::string name() const;

    friend bool operator==(const mbox& a, const mbox& b) noexcept { return a.impl_ == b.impl_; }

private:
    friend struct internal::handle_access;
    std::shared_ptr<internal::mbox_impl> impl_;
};

/// A new anonymous publish-subscribe mbox.
MAILROOM_EXPORT mbox make_mpmc_mbox(environment& env);

/// A new named publish-subscribe mbox; raises duplicate_name_error if the name is taken.
MAILROOM_EXPORT mbox make_named_mbox(environment& env, std::string name);

/// The named mbox, or an empty handle.
MAILROOM_EXPORT mbox find_named_mbox(environment& env, std::string_view name);

/// The named mbox, made if it does not exist yet.
MAILROOM_EXPORT mbox named_mbox(environment& env, std::string name);

namespace internal {
/// Takes ownership of `e`. Raises environment_stopped_error (and frees `e`) when closed.
MAILROOM_EXPORT void deliver(const mbox& to, envelope* e);
}  // namespace internal

/// Sends a `T` built from `args` (a signal when T derives from mailroom::signal). Any thread.
/// To a direct mbox: the receiver may move it out. To an MPMC mbox: every subscriber of T gets
/// the same immutable instance. Allocates nothing in steady state.
template <class T, class... Args>
void send(const mbox& to, Args&&... args) {
    internal::deliver(to, internal::make_envelope<T>(std::forward<Args>(args)...));
}

/// Sends `value` (moved or copied in).
template <class T>
void send(const mbox& to, T&& value)
    requires(!std::is_same_v<std::decay_t<T>, mbox>)
{
    internal::deliver(to, internal::make_envelope<std::decay_t<T>>(std::forward<T>(value)));
}

}  // namespace mailroom
