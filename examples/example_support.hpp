#pragma once
// What the examples share, and nothing of mailroom's: each prints what it checks with a verdict
// and exits non-zero when a check failed (CTest runs them), and none ever hangs (every wait is
// bounded).

#include <chrono>
#include <cstdio>
#include <thread>

namespace example {

/// Waits up to `limit` for `done()` and returns its last value: an example must never hang.
template <class Pred>
bool eventually(Pred done, std::chrono::milliseconds limit = std::chrono::seconds(2)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return done();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

/// Prints each check as "<what>  yes|NO", `what` padded to `width` after `indent`, and remembers
/// whether every one held: main() ends with `return check.exit_code();`.
class checks {
public:
    explicit checks(int width, const char* indent = "") : width_(width), indent_(indent) {}

    void operator()(bool good, const char* what) {
        std::printf("%s%-*s %s\n", indent_, width_, what, good ? "yes" : "NO");
        ok_ = ok_ && good;
    }
    bool ok() const { return ok_; }
    int exit_code() const { return ok_ ? 0 : 1; }

private:
    int width_;
    const char* indent_;
    bool ok_ = true;
};

}  // namespace example
