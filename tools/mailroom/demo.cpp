#include "demo.hpp"

#include <mailroom/mailroom.hpp>

#include <cstdio>

namespace mailroom::tool {

int run_demo(int, char**) {
    std::printf("mailroom demo: not written yet\n");
    return 0;
}

}  // namespace mailroom::tool
