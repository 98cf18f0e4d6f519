#pragma once
// The message types both fuzzers decode payloads into: msgpack with strings, arrays and a map,
// and raw bytes.

#include <mailroom/net/codec.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mailroom::test {

struct fuzz_quote {
    std::string symbol;
    double price = 0;
    std::vector<std::int64_t> sizes;
    std::map<std::string, std::string> tags;
    MSGPACK_DEFINE(symbol, price, sizes, tags)
};

struct fuzz_blob final : net::raw_bytes {};

}  // namespace mailroom::test
