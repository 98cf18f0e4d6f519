#pragma once
/// Typed errors raised on misuse of the API.

#include <mailroom/export.hpp>

#include <stdexcept>
#include <string>

namespace mailroom {

/// Base of every exception mailroom raises; `what()` names the object and what was wrong.
class MAILROOM_EXPORT error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
    ~error() override;
};

/// A message was sent through an mbox, or an object was created, in an environment that is stopping or stopped.
class MAILROOM_EXPORT environment_stopped_error final : public error {
public:
    using error::error;
};

/// A name (cooperation, named mbox, dispatcher) was registered twice.
class MAILROOM_EXPORT duplicate_name_error final : public error {
public:
    using error::error;
};

/// A subscription was made twice, from the wrong thread, or outside the agent's configuration.
class MAILROOM_EXPORT subscription_error final : public error {
public:
    using error::error;
};

/// A binder refers to a dispatcher that was shut down or belongs to an environment that is gone.
class MAILROOM_EXPORT binding_error final : public error {
public:
    using error::error;
};

/// A dispatcher was taken for a kind it is not (dispatcher_cast of a found dispatcher).
class MAILROOM_EXPORT dispatcher_kind_error final : public error {
public:
    using error::error;
};

/// Any other misuse: an empty handle, an agent constructed outside a cooperation, a bad option.
class MAILROOM_EXPORT usage_error final : public error {
public:
    using error::error;
};

namespace internal {
/// Aborts the process with a message: a broken internal invariant is never swallowed.
[[noreturn]] MAILROOM_EXPORT void fatal(const char* what) noexcept;
}  // namespace internal

}  // namespace mailroom
