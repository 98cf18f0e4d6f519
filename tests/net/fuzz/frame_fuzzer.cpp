// libFuzzer target for the frame decoder and the payload codecs (clang only; CI runs the
// bounded CTest fuzz test, frame_fuzz_test.cpp, instead). Build with
//   CXX=clang++ cmake -S . -B build/fuzz -DMAILROOM_BUILD_FUZZERS=ON -DMAILROOM_SANITIZE=address
//   cmake --build build/fuzz --target fuzz_frame && build/fuzz/tests/fuzz_frame -max_total_time=60
// Every input is decoded; accepted frames have their payloads decoded. A crash, a sanitizer
// report or a message that is neither accepted nor rejected under a reason is a finding.

#include <mailroom/net/frame.hpp>

#include "../fuzz_types.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace {

using mailroom::test::fuzz_blob;
using mailroom::test::fuzz_quote;

struct state {
    mailroom::net::type_registry registry;
    mailroom::internal::frame_decoder decoder;
    state() {
        mailroom::net::register_type<fuzz_quote>(registry, "fuzz.quote");
        mailroom::net::register_type<fuzz_blob>(registry, "fuzz.blob");
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace mailroom::internal;
    static state s;
    const std::uint64_t before = s.decoder.count(frame_error::none) + s.decoder.rejected() -
                                 s.decoder.count(frame_error::undecodable_payload);
    const frame_error e = s.decoder.decode(std::span(reinterpret_cast<const std::byte*>(data), size));
    const std::uint64_t after = s.decoder.count(frame_error::none) + s.decoder.rejected() -
                                s.decoder.count(frame_error::undecodable_payload);
    if (after != before + 1) std::abort();  // every message counted under exactly one outcome
    if (e != frame_error::none) {
        if (s.decoder.detail().find(to_string(e)) != 0) std::abort();
        return 0;
    }
    for (const frame& f : s.decoder.frames()) {
        if (f.kind != frame_kind::request && f.kind != frame_kind::send && f.kind != frame_kind::reply) continue;
        envelope_ref out;
        const mailroom::net::decode_result r = s.decoder.decode_payload(s.registry, f, {}, out);
        if (static_cast<bool>(r) != (out.get() != nullptr)) std::abort();
    }
    return 0;
}
