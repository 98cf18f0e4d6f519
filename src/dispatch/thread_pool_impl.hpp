#pragma once
/// The thread_pool kind's internal factory and FIFO binder, for its handle and for tests that
/// run it without an environment.

#include <mailroom/dispatch/dispatcher_impl.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/export.hpp>

#include <memory>
#include <string>

namespace mailroom::internal {

/// A thread_pool dispatcher owned by nobody yet, its threads started.
MAILROOM_EXPORT std::shared_ptr<dispatcher_impl> make_thread_pool(std::string name, const thread_pool::params& p);

/// A binder to `d`, which must be a thread_pool dispatcher, with its own FIFO order.
MAILROOM_EXPORT std::shared_ptr<binder_impl> bind_fifo(dispatcher_impl& d, thread_pool::fifo order);

}  // namespace mailroom::internal
