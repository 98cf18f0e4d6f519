#pragma once
/// The active_group kind's internal factory and group binder, for its handle and for tests that
/// run it without an environment.

#include <mailroom/dispatch/active_group.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/export.hpp>

#include <memory>
#include <string>

namespace mailroom::internal {

/// An active_group dispatcher owned by nobody yet.
MAILROOM_EXPORT std::shared_ptr<dispatcher_impl> make_active_group(std::string name, const active_group::params& p);

/// A binder to the group `group` of `d`, which must be an active_group dispatcher. Raises
/// binding_error naming the dispatcher when `group` is empty.
MAILROOM_EXPORT std::shared_ptr<binder_impl> bind_group(dispatcher_impl& d, std::string group);

}  // namespace mailroom::internal
