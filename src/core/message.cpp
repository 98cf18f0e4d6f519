#include <mailroom/core/message.hpp>

#include <cxxabi.h>

#include <cstdlib>
#include <memory>

namespace mailroom {

std::string readable_name(message_type t) {
    if (!t.info()) return "<none>";
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(t.info()->name(), nullptr, nullptr, &status),
                                             std::free);
    return status == 0 && d ? std::string(d.get()) : std::string(t.info()->name());
}

}  // namespace mailroom
