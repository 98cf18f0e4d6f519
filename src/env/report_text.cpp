#include "report_text.hpp"

#include <cstdio>

namespace mailroom::internal {

namespace {

// "dispatcher 'd' worker 1 (thread 4711)", "job queue 'q' thread 0 (thread 4712)".
std::string where_text(const running_facts& f) {
    std::string out = (f.job ? "job queue '" : "dispatcher '") + std::string(f.dispatcher) +
                      (f.job ? "' thread " : "' worker ") + std::to_string(f.worker);
    if (f.thread_id != 0) out += " (thread " + std::to_string(f.thread_id) + ")";
    return out;
}

// A handler is named by its context, then what it handles: "session 's' on posted call". A job
// by what it is, then who posted it: "job 'resize' (job #3 posted by session 'p')".
std::string what_text(const running_facts& f) {
    if (f.job) return std::string(f.type) + " (" + std::string(f.context) + ")";
    return std::string(f.context) + (f.type.empty() ? "" : " on " + std::string(f.type));
}

}  // namespace

std::string seconds_text(std::int64_t ns) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f s", static_cast<double>(ns) / 1e9);
    return buf;
}

std::string stall_text(std::string_view environment, const running_facts& f, std::int64_t running_ns,
                       std::int64_t timeout_ns, bool past_deadline, const std::vector<std::string>& stack,
                       std::string_view stack_note) {
    std::string text = "watchdog: environment '" + std::string(environment) + "', " + where_text(f) + ": " +
                       what_text(f) + " has been running for " + seconds_text(running_ns);
    if (f.job)
        text += (past_deadline ? ", past its deadline (job_queue::params::deadline)"
                               : ", past the job queue's timeout of " + seconds_text(timeout_ns)) +
                ". It runs on a job queue, where blocking work belongs; a job that runs long on purpose calls "
                "mailroom::extend_deadline() as it makes progress.";
    else
        text += ", past the dispatcher's timeout of " + seconds_text(timeout_ns) +
                ". Work that must block belongs in a job queue; a handler that runs long on purpose calls "
                "mailroom::extend_deadline() as it makes progress.";
    if (stack.empty()) {
        text += "\n  " + std::string(stack_note);
    } else {
        text += "\n  stack of the stalled thread:";
        for (std::size_t i = 0; i < stack.size(); ++i) text += "\n    #" + std::to_string(i) + " " + stack[i];
    }
    return text;
}

std::string resumed_text(std::string_view environment, const running_facts& f, std::int64_t running_ns,
                         std::int64_t timeout_ns) {
    return "watchdog: environment '" + std::string(environment) + "', " + where_text(f) + " resumed: " +
           what_text(f) + " ran for about " + seconds_text(running_ns) + " in all (timeout " +
           seconds_text(timeout_ns) + ")";
}

std::string overrun_text(const running_facts& f, std::int64_t waited_ns, bool stall_reported, overrun_policy policy) {
    std::string text = "teardown has waited " + seconds_text(waited_ns);
    if (stall_reported)
        text += " for " + where_text(f) + ", held by the stall the watchdog reported (" + what_text(f) +
                "); its further reports are the watchdog's";
    else
        text += std::string(" for ") + (f.job ? "a job" : "a handler") + " that has not returned: " + where_text(f) +
                " is running " + what_text(f);
    text += policy == overrun_policy::abort ? " (policy: abort)" : " (policy: report_and_wait)";
    return text;
}

}  // namespace mailroom::internal
