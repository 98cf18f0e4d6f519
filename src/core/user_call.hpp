#pragma once
// Running user code where an exception must not escape (a handler, a delivery filter): what
// it threw comes back as text, for the caller to log and count.

#include <exception>
#include <string>
#include <utility>

namespace mailroom::internal {

/// Calls `f()`; returns null when it returned, else a description of what it threw, which
/// lives in `text` (or is static). Never throws.
template <class F>
const char* call_catching(F&& f, std::string& text) noexcept {
    try {
        std::forward<F>(f)();
        return nullptr;
    } catch (const std::exception& ex) {
        try {
            text = ex.what();
            return text.c_str();
        } catch (...) {
            return "an exception (its message could not be copied)";
        }
    } catch (...) {
        return "an exception not derived from std::exception";
    }
}

}  // namespace mailroom::internal
