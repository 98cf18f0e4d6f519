#include <mailroom/core/message.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace {

using namespace mailroom;
using namespace mailroom::internal;

struct tick final : signal {};

struct counted {
    static inline int alive = 0;
    std::string text;
    explicit counted(std::string t) : text(std::move(t)) { ++alive; }
    counted(const counted& o) : text(o.text) { ++alive; }
    counted(counted&& o) noexcept : text(std::move(o.text)) { ++alive; }
    ~counted() { --alive; }
};

TEST(message, signal_envelope_is_shared_and_immortal) {
    envelope* a = make_envelope<tick>();
    envelope* b = make_envelope<tick>();
    EXPECT_EQ(a, b);
    EXPECT_TRUE(a->type() == message_type_of<tick>());
    a->release();  // immortal: releasing does nothing
    b->release();
    EXPECT_TRUE(make_envelope<tick>()->type() == message_type_of<tick>());
}

TEST(message, last_reference_destroys_the_payload) {
    counted::alive = 0;
    envelope* e = make_envelope<counted>("hello");
    EXPECT_EQ(counted::alive, 1);
    EXPECT_TRUE(e->exclusive());
    e->add_refs(2);
    EXPECT_FALSE(e->exclusive());
    e->release();
    e->release();
    EXPECT_EQ(counted::alive, 1);
    EXPECT_TRUE(e->exclusive());
    EXPECT_EQ(payload_of<counted>(e).text, "hello");
    e->release();
    EXPECT_EQ(counted::alive, 0);
}

TEST(message, envelope_ref_releases_on_scope_exit) {
    counted::alive = 0;
    {
        envelope_ref r(make_envelope<counted>("x"));
        EXPECT_EQ(counted::alive, 1);
        envelope_ref moved(std::move(r));
        EXPECT_EQ(r.get(), nullptr);
    }
    EXPECT_EQ(counted::alive, 0);
}

TEST(message, move_only_payloads_are_accepted) {
    envelope* e = make_envelope<std::unique_ptr<int>>(std::make_unique<int>(7));
    EXPECT_EQ(*payload_of<std::unique_ptr<int>>(e), 7);
    e->release();
}

TEST(message, readable_name_demangles) {
    EXPECT_EQ(readable_name(message_type_of<counted>()), "(anonymous namespace)::counted");
    EXPECT_EQ(readable_name(message_type()), "<none>");
}

}  // namespace
