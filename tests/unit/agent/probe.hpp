#pragma once
// Helpers for the env, agent and stress tests: a configurable agent whose hooks are given as
// functions (with subscribe & co made public), a bounded join, and /proc thread counting.

#include <mailroom/mailroom.hpp>

#include <test_support.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mailroom::test {

/// An agent whose hooks are functions set after make_agent (before register_coop).
class probe final : public agent {
public:
    using hook = std::function<void(probe&)>;

    probe() = default;
    explicit probe(std::atomic<int>* destroyed) : destroyed_(destroyed) {}
    ~probe() override {
        if (destroyed_) destroyed_->fetch_add(1);
    }

    using agent::cooperation;
    using agent::deregister_coop;
    using agent::env;
    using agent::set_exception_policy;
    using agent::set_name;
    using agent::stop_environment;
    using agent::subscribe;
    using agent::unsubscribe;
    using agent::set_delivery_filter;
    using agent::drop_delivery_filter;

    hook on_configure, on_start_fn, on_finish_fn;

protected:
    void configure() override {
        if (on_configure) on_configure(*this);
    }
    void on_start() override {
        if (on_start_fn) on_start_fn(*this);
    }
    void on_finish() override {
        if (on_finish_fn) on_finish_fn(*this);
    }

private:
    std::atomic<int>* destroyed_ = nullptr;
};

/// Registers a cooperation of one probe configured by `configure`; returns the probe's mbox.
inline mbox add_probe(environment& env, probe::hook configure, coop_options opts = {},
                      probe::hook start = {}, probe::hook finish = {}) {
    coop c(env, std::move(opts));
    auto& p = c.make_agent<probe>();
    p.on_configure = std::move(configure);
    p.on_start_fn = std::move(start);
    p.on_finish_fn = std::move(finish);
    mbox m = p.direct_mbox();
    register_coop(std::move(c));
    return m;
}

/// Joins `env`, but stops it after `limit` so that a broken test fails instead of hanging.
/// Returns false when it had to stop it.
inline bool join_within(environment& env, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    bool forced = false;
    std::thread guard([&] {
        std::unique_lock g(m);
        if (!cv.wait_for(g, limit, [&] { return done; })) {
            forced = true;
            env.stop();
        }
    });
    env.join();
    {
        std::lock_guard g(m);
        done = true;
    }
    cv.notify_all();
    guard.join();
    return !forced;
}

/// Threads of this process (entries of /proc/self/task).
inline int thread_count() {
    int n = 0;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}

/// The names (comm) of this process's threads.
inline std::vector<std::string> thread_names() {
    std::vector<std::string> out;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d)) {
            if (e->d_name[0] == '.') continue;
            std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/comm");
            std::string comm;
            std::getline(f, comm);
            out.push_back(std::move(comm));
        }
        ::closedir(d);
    }
    return out;
}

/// Threads of this process whose name (comm) is `name`.
inline int threads_named(const std::string& name) {
    int n = 0;
    for (const auto& comm : thread_names()) n += comm == name;
    return n;
}

/// Waits (bounded) until `flag` is set; false when it never was.
inline bool wait_set(const std::atomic<bool>& flag, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    return eventually([&] { return flag.load(); }, limit);
}

}  // namespace mailroom::test
