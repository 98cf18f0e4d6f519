#pragma once
// The wire types of `mailroom node`'s built-in services (docs/nodes.md, "Running a node from
// the command line"), shared by the runner and by `mailroom demo --nodes`, which asks a
// `mailroom node --serve pricing` process for quotes. A program that talks to such a node
// registers the same structs under the same names. Needs the net layer.

#include <mailroom/net/codec.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace mailroom::tool {

struct text_message {
    std::string text;
    MSGPACK_DEFINE(text)
};
struct quote_request {
    std::string symbol;
    MSGPACK_DEFINE(symbol)
};
struct quote_reply {
    std::string symbol;
    double price = 0;
    MSGPACK_DEFINE(symbol, price)
};

/// mailroom.text, mailroom.quote_request and mailroom.quote.
inline std::shared_ptr<const net::type_registry> node_types() {
    auto r = std::make_shared<net::type_registry>();
    net::register_type<text_message>(*r, "mailroom.text");
    net::register_type<quote_request>(*r, "mailroom.quote_request");
    net::register_type<quote_reply>(*r, "mailroom.quote");
    return r;
}

/// The pricing service's made-up but stable price: the same symbol always gets the same quote.
inline double price_of(const std::string& symbol) {
    std::uint32_t h = 2166136261u;
    for (unsigned char c : symbol) h = (h ^ c) * 16777619u;
    return 10.0 + static_cast<double>(h % 99000) / 100.0;
}

}  // namespace mailroom::tool
