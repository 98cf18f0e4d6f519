// Registers a message type with mailroom::net and round-trips one value through its codec.
#include <mailroom/net/codec.hpp>

#include <cstdio>
#include <string>

struct quote {
    std::string symbol;
    double price = 0;
    MSGPACK_DEFINE(symbol, price)
};

int main() {
    mailroom::net::type_registry reg;
    const auto id = mailroom::net::register_type<quote>(reg, "consumer.quote");
    mailroom::net::byte_buffer buf;
    reg.encode(quote{"EURUSD", 1.25}, buf);
    quote out;
    const auto r = mailroom::net::decode(std::span<const std::byte>(buf), out);
    if (!r || out.symbol != "EURUSD" || reg.find(id) == nullptr) {
        std::printf("net_consumer: round trip failed: %s\n", r.reason.c_str());
        return 1;
    }
    std::printf("net_consumer: %s %.2f\n", out.symbol.c_str(), out.price);
    return 0;
}
