#pragma once
/// The one_thread kind's internal factory: for the environment's default dispatcher and tests.

#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/export.hpp>

#include <memory>
#include <string>

namespace mailroom::internal {

/// A one_thread dispatcher owned by nobody yet, its thread started.
MAILROOM_EXPORT std::shared_ptr<dispatcher_impl> make_one_thread(std::string name, const one_thread::params& p);

}  // namespace mailroom::internal
