// A bounded random-frame fuzz test of the frame decoder and the payload codecs: valid frames of
// every kind, mutated (bit flips, truncations, length fields set to huge values, bytes inserted
// and removed, frames spliced, batches nested), and plain random bytes, fed to a decoder for a
// few seconds. Nothing may crash (the asan build adds ASan, UBSan and LSan), and every message
// is either accepted or rejected under a reason, with the decoder's counts matching.
//   MAILROOM_FUZZ_SECONDS  how long to run (default 3)
//   MAILROOM_FUZZ_SEED     the random seed (default fixed, so that CI runs are repeatable)

#include <mailroom/net/frame.hpp>

#include "fuzz_types.hpp"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace mailroom;
using namespace mailroom::internal;

namespace {

using quote = test::fuzz_quote;
using blob = test::fuzz_blob;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

class fuzzer {
public:
    explicit fuzzer(std::uint64_t seed) : rng_(seed) {
        quote_id_ = net::register_type<quote>(registry_, "fuzz.quote");
        blob_id_ = net::register_type<blob>(registry_, "fuzz.blob");
        build_seeds();
    }

    // One round: an input, decoded; its payloads decoded when it was accepted.
    void round() {
        const net::byte_buffer in = make_input();
        const frame_error e = decoder_.decode(in);
        ++tally_[static_cast<std::size_t>(e)];
        ++messages_;
        if (e != frame_error::none) {
            // Every rejection names its reason for the log line.
            if (decoder_.detail().find(to_string(e)) != 0) {
                ADD_FAILURE() << "rejection without its reason: " << decoder_.detail();
            }
            return;
        }
        for (const frame& f : decoder_.frames()) {
            if (f.kind != frame_kind::request && f.kind != frame_kind::send && f.kind != frame_kind::reply) continue;
            envelope_ref out;
            const net::decode_result r = decoder_.decode_payload(registry_, f, limits_, out);
            ++payloads_;
            if (r) {
                if (!out.get()) ADD_FAILURE() << "a payload decoded into nothing";
            } else {
                ++payload_failures_;
                if (out.get()) ADD_FAILURE() << "a failed payload left a message behind";
            }
        }
    }

    void check() const {
        std::uint64_t sum = 0;
        for (std::size_t i = 0; i < frame_error_count; ++i) {
            if (i == static_cast<std::size_t>(frame_error::undecodable_payload)) continue;
            EXPECT_EQ(decoder_.count(static_cast<frame_error>(i)), tally_[i]) << to_string(static_cast<frame_error>(i));
            sum += tally_[i];
        }
        EXPECT_EQ(sum, messages_) << "every message is accepted or rejected under one reason";
        EXPECT_EQ(decoder_.count(frame_error::undecodable_payload), payload_failures_);
        // The mutations reach every reason the decoder has (a fixed seed makes this repeatable).
        for (frame_error e : {frame_error::none, frame_error::truncated, frame_error::oversized,
                              frame_error::unknown_kind, frame_error::unknown_version, frame_error::bad_magic,
                              frame_error::trailing_bytes, frame_error::malformed}) {
            EXPECT_GT(tally_[static_cast<std::size_t>(e)], 0u) << "never saw " << to_string(e);
        }
        EXPECT_GT(payload_failures_, 0u);
        EXPECT_GT(payloads_, payload_failures_);
    }

    void report() const {
        std::printf("frame fuzz: %llu messages, %llu payloads (%llu undecodable)\n",
                    static_cast<unsigned long long>(messages_), static_cast<unsigned long long>(payloads_),
                    static_cast<unsigned long long>(payload_failures_));
        for (std::size_t i = 0; i < frame_error_count; ++i)
            std::printf("  %-20s %llu\n", to_string(static_cast<frame_error>(i)),
                        static_cast<unsigned long long>(decoder_.count(static_cast<frame_error>(i))));
    }

private:
    std::uint64_t pick(std::uint64_t n) { return n ? std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng_) : 0; }
    std::byte random_byte() { return static_cast<std::byte>(pick(256)); }

    net::byte_buffer random_payload() {
        net::byte_buffer p;
        switch (pick(4)) {
            case 0: {
                quote q{std::string(pick(40), 'q'), 1.5, {}, {}};
                for (std::uint64_t i = pick(20); i > 0; --i) q.sizes.push_back(static_cast<std::int64_t>(rng_()));
                for (std::uint64_t i = pick(5); i > 0; --i) q.tags.emplace(std::to_string(i), "v");
                registry_.encode(q, p);
                break;
            }
            case 1: {
                blob b;
                b.bytes.resize(pick(64));
                registry_.encode(b, p);
                break;
            }
            case 2:  // msgpack headers that announce a lot (msgpack-c #1013)
                for (std::uint64_t i = 1 + pick(8); i > 0; --i) {
                    const std::uint8_t heads[] = {0xdc, 0xdd, 0xde, 0xdf, 0xda, 0xdb, 0xc5, 0xc6, 0xc9, 0x91, 0x81};
                    p.push_back(std::byte{heads[pick(sizeof heads)]});
                    for (std::uint64_t k = pick(5); k > 0; --k) p.push_back(std::byte{0xff});
                }
                break;
            default:
                p.resize(pick(48));
                for (auto& b : p) b = random_byte();
        }
        return p;
    }

    frame random_frame(net::byte_buffer& payload, std::vector<hello_type>& types) {
        static const char* const names[] = {"", "a", "calc", "pricing.tick", "node-7", "x/y"};
        frame f;
        static const frame_kind kinds[] = {frame_kind::hello, frame_kind::heartbeat, frame_kind::request,
                                           frame_kind::send,  frame_kind::reply,     frame_kind::reject,
                                           frame_kind::bye};
        f.kind = kinds[pick(7)];  // every kind but BATCH (built below)
        f.request_id = rng_();
        f.sequence = rng_();
        f.type = pick(3) == 0 ? rng_() : (pick(2) ? quote_id_ : blob_id_);
        f.timeout_ms = static_cast<std::uint32_t>(rng_());
        f.protocol_version = 1;
        f.reason = static_cast<reject_reason>(1 + pick(4));
        f.node = names[pick(6)];
        f.source = names[pick(6)];
        f.target = names[pick(6)];
        f.reply_to = names[pick(6)];
        f.text = names[pick(6)];
        payload = random_payload();
        f.payload = payload;
        types.clear();
        for (std::uint64_t i = pick(6); i > 0; --i) types.push_back({rng_(), names[pick(6)]});
        f.types = types;
        return f;
    }

    void build_seeds() {
        for (int i = 0; i < 64; ++i) {
            net::byte_buffer buf, payload;
            std::vector<hello_type> types;
            frame_writer w(buf);
            if (i % 4 == 3) {
                w.begin_batch();
                for (std::uint64_t k = 1 + pick(6); k > 0; --k) {
                    frame f = random_frame(payload, types);
                    if (f.kind == frame_kind::hello) f.kind = frame_kind::heartbeat;
                    w.write(f);
                }
                w.end_batch();
            } else {
                w.write(random_frame(payload, types));
            }
            seeds_.push_back(std::move(buf));
        }
    }

    void set_u32(net::byte_buffer& b, std::size_t at, std::uint32_t v) {
        for (std::size_t i = 0; i < 4 && at + i < b.size(); ++i) b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    }

    // Wraps `inner` as the one item of a BATCH (a batch inside a batch when inner is one).
    net::byte_buffer wrap_in_batch(const net::byte_buffer& inner) {
        net::byte_buffer b;
        frame_writer w(b);
        w.begin_batch();
        w.write({.kind = frame_kind::heartbeat});
        w.end_batch();
        b.resize(frame_header_bytes + 4);
        const std::size_t len_at = b.size();
        b.resize(b.size() + 4);
        set_u32(b, len_at, static_cast<std::uint32_t>(inner.size()));
        b.insert(b.end(), inner.begin(), inner.end());
        set_u32(b, 8, static_cast<std::uint32_t>(b.size() - frame_header_bytes));
        return b;
    }

    net::byte_buffer make_input() {
        net::byte_buffer b = seeds_[pick(seeds_.size())];
        // Sometimes a fresh valid frame, so that accepted messages keep coming.
        if (pick(8) == 0) return b;
        for (std::uint64_t n = 1 + pick(3); n > 0; --n) {
            switch (pick(10)) {
                case 0:  // bit flips
                    for (std::uint64_t k = 1 + pick(4); k > 0 && !b.empty(); --k)
                        b[pick(b.size())] ^= static_cast<std::byte>(1u << pick(8));
                    break;
                case 1:  // truncation
                    b.resize(pick(b.size() + 1));
                    break;
                case 2:  // a length field set huge: the body length or any 4 bytes
                    set_u32(b, pick(3) == 0 ? 8 : pick(b.size() + 1),
                            pick(2) ? 0xffffffffu : static_cast<std::uint32_t>(rng_()));
                    break;
                case 3:  // a u16 string length set huge
                    if (b.size() > 2) {
                        const std::size_t at = pick(b.size() - 1);
                        b[at] = std::byte{0xff};
                        b[at + 1] = random_byte();
                    }
                    break;
                case 4:  // bytes inserted
                    b.insert(b.begin() + static_cast<std::ptrdiff_t>(pick(b.size() + 1)), 1 + pick(8), random_byte());
                    break;
                case 5:  // bytes removed
                    if (!b.empty()) {
                        const std::size_t at = pick(b.size());
                        b.erase(b.begin() + static_cast<std::ptrdiff_t>(at),
                                b.begin() + static_cast<std::ptrdiff_t>(std::min(b.size(), at + 1 + pick(8))));
                    }
                    break;
                case 6: {  // spliced with another seed
                    const net::byte_buffer& o = seeds_[pick(seeds_.size())];
                    b.resize(pick(b.size() + 1));
                    b.insert(b.end(), o.begin() + static_cast<std::ptrdiff_t>(pick(o.size())), o.end());
                    break;
                }
                case 7:  // nested in a batch, once or several times
                    for (std::uint64_t k = 1 + pick(3); k > 0; --k) b = wrap_in_batch(b);
                    break;
                case 8:  // a header field: version, kind, flags
                    if (b.size() > 5) b[2 + pick(4)] = random_byte();
                    break;
                default:  // random bytes, sometimes behind a valid magic
                    b.resize(pick(64));
                    for (auto& x : b) x = random_byte();
                    if (pick(2) && b.size() >= 2) b[0] = std::byte{'m'}, b[1] = std::byte{'r'};
                    if (pick(2) && b.size() >= 3) b[2] = std::byte{1};
            }
        }
        return b;
    }

    std::mt19937_64 rng_;
    net::type_registry registry_;
    net::wire_id quote_id_ = 0, blob_id_ = 0;
    net::decode_limits limits_{.max_bytes = 1u << 20};
    frame_decoder decoder_;
    std::vector<net::byte_buffer> seeds_;
    std::array<std::uint64_t, frame_error_count> tally_{};
    std::uint64_t messages_ = 0, payloads_ = 0, payload_failures_ = 0;
};

}  // namespace

TEST(frame_fuzz, random_and_mutated_frames_are_rejected_under_a_reason_and_never_crash) {
    const std::uint64_t seconds = env_or("MAILROOM_FUZZ_SECONDS", 3);
    const std::uint64_t seed = env_or("MAILROOM_FUZZ_SEED", 20261130);
    std::printf("frame fuzz: seed %llu, %llu s (MAILROOM_FUZZ_SEED, MAILROOM_FUZZ_SECONDS)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seconds));
    fuzzer f(seed);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    // Checked against the clock every 256 rounds; at least 20,000 rounds so that every reason
    // is reached even on a slow sanitizer build.
    for (std::uint64_t i = 0;; ++i) {
        f.round();
        if (i % 256 == 255 && i >= 20'000 && std::chrono::steady_clock::now() >= end) break;
        if (::testing::Test::HasFailure()) break;
    }
    f.report();
    f.check();
}
