#pragma once
/// Everything a user of mailroom includes.

#include <mailroom/agent/agent.hpp>
#include <mailroom/agent/coop.hpp>
#include <mailroom/agent/state.hpp>
#include <mailroom/mbox/event_handle.hpp>
#include <mailroom/mbox/limits.hpp>
#include <mailroom/mbox/mbox.hpp>
#include <mailroom/mbox/mchain.hpp>
#include <mailroom/session/session.hpp>
#include <mailroom/session/job.hpp>
#include <mailroom/mbox/timer.hpp>
#include <mailroom/core/clock.hpp>
#include <mailroom/core/error.hpp>
#include <mailroom/core/message.hpp>
#include <mailroom/dispatch/active_group.hpp>
#include <mailroom/dispatch/active_obj.hpp>
#include <mailroom/dispatch/dispatcher.hpp>
#include <mailroom/dispatch/job_queue.hpp>
#include <mailroom/dispatch/one_thread.hpp>
#include <mailroom/dispatch/thread_pool.hpp>
#include <mailroom/dispatch/event_loop_pool.hpp>
#include <mailroom/env/environment.hpp>
#include <mailroom/named/named.hpp>
