#pragma once
/// The active_obj kind's internal factory, for tests that run it without an environment.

#include <mailroom/dispatch/active_obj.hpp>
#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/export.hpp>

#include <memory>
#include <string>

namespace mailroom::internal {

/// An active_obj dispatcher owned by nobody yet.
MAILROOM_EXPORT std::shared_ptr<dispatcher_impl> make_active_obj(std::string name, const active_obj::params& p);

}  // namespace mailroom::internal
