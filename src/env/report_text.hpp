#pragma once
/// The words of the reports about a demand that runs long: the run-time watchdog's stall and
/// resumed reports and the teardown watch's overrun reports. One place, so that every report
/// names a worker, a job or a handler, and a time, the same way.

#include <mailroom/env/environment.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::internal {

/// What a report says of the demand it is about.
struct running_facts {
    std::string_view dispatcher;  ///< the dispatcher's or job queue's name
    std::size_t worker = 0;       ///< the worker's index (a job queue's thread: in start order)
    int thread_id = 0;            ///< the kernel's id of the thread; 0: not said
    bool job = false;             ///< a job on a job queue (where blocking work belongs)
    std::string_view context;     ///< "session 's'", "agent 'a' of cooperation 'c'", "job #3 posted by ..."
    std::string_view type;        ///< the message type, "posted call", "job 'resize'"; "" when unknown
};

/// "1.234 s".
std::string seconds_text(std::int64_t ns);

/// The watchdog's report of a stall still running: where, what, for how long, past which limit,
/// what to do about it, then the stack (or why there is none).
std::string stall_text(std::string_view environment, const running_facts& f, std::int64_t running_ns,
                       std::int64_t timeout_ns, bool past_deadline, const std::vector<std::string>& stack,
                       std::string_view stack_note);

/// The watchdog's last report of a stall: the worker went on.
std::string resumed_text(std::string_view environment, const running_facts& f, std::int64_t running_ns,
                         std::int64_t timeout_ns);

/// The teardown watch's report of a demand that has not returned past the teardown deadline;
/// `stall_reported`: the watchdog reported it already, and goes on reporting it.
std::string overrun_text(const running_facts& f, std::int64_t waited_ns, bool stall_reported, overrun_policy policy);

}  // namespace mailroom::internal
