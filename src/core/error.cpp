#include <mailroom/core/error.hpp>

#include <cstdio>
#include <cstdlib>

namespace mailroom {

error::~error() = default;

namespace internal {
void fatal(const char* what) noexcept {
    std::fprintf(stderr, "mailroom: fatal: %s\n", what);
    std::fflush(stderr);
    std::abort();
}
}  // namespace internal

}  // namespace mailroom
