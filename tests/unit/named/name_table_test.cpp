// The name table: lookups without a lock, removed entries released only after every reader
// has left, each exactly once, on liburcu's call_rcu thread.

#include <mailroom/named/name_table.hpp>

#include <mailroom/core/error.hpp>

#include "test_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using mailroom::internal::name_entry;
using mailroom::internal::name_table;
using namespace std::chrono_literals;

constexpr std::uint64_t alive = 0xA11CEA11CEA11CEAull;
constexpr std::uint64_t dead = 0xDEADDEADDEADDEADull;

// Owned by the test: counts its releases and remembers the thread that ran the last one.
class counted_entry final : public name_entry {
public:
    explicit counted_entry(std::string name) : name_entry(std::move(name)) {}
    ~counted_entry() override { sentinel = dead; }

    std::atomic<int> releases{0};
    std::thread::id released_on;
    std::uint64_t sentinel = alive;

protected:
    void table_released() noexcept override {
        sentinel = dead;  // a reader still inside would see this
        released_on = std::this_thread::get_id();
        releases.fetch_add(1);
    }
};

// Owned by the table once inserted: deletes itself when released.
class self_deleting_entry final : public name_entry {
public:
    self_deleting_entry(std::string name, std::atomic<long>& released_count, std::uint64_t payload = 0)
        : name_entry(std::move(name)), released_count_(released_count), payload(payload) {}
    ~self_deleting_entry() override { sentinel = dead; }

protected:
    void table_released() noexcept override {
        released_count_.fetch_add(1);
        delete this;
    }

private:
    std::atomic<long>& released_count_;

public:
    std::uint64_t payload;
    std::uint64_t sentinel = alive;
};

name_entry* lookup(const name_table& t, std::string_view name) {
    return t.read(name, [](name_entry* e) { return e; });
}

TEST(NameTable, InsertLookupRemove) {
    counted_entry a("quotes"), b("trades");  // outlive the table
    name_table t;
    EXPECT_EQ(t.size(), 0u);
    EXPECT_EQ(lookup(t, "quotes"), nullptr);
    ASSERT_TRUE(t.insert(&a));
    ASSERT_TRUE(t.insert(&b));
    EXPECT_EQ(t.size(), 2u);
    EXPECT_EQ(lookup(t, "quotes"), &a);
    EXPECT_EQ(lookup(t, "trades"), &b);
    EXPECT_EQ(lookup(t, "quote"), nullptr);
    EXPECT_EQ(lookup(t, ""), nullptr);
    // read() returns what the function returns, by value or by reference.
    EXPECT_EQ(t.read("trades", [](name_entry* e) { return e ? e->name().size() : 0; }), 6u);

    EXPECT_EQ(t.remove("quotes"), &a);
    EXPECT_EQ(t.remove("quotes"), nullptr);
    EXPECT_EQ(t.remove("nothing"), nullptr);
    EXPECT_EQ(lookup(t, "quotes"), nullptr);
    EXPECT_EQ(lookup(t, "trades"), &b);
    EXPECT_EQ(t.size(), 1u);
    t.wait_for_releases();
    EXPECT_EQ(a.releases.load(), 1);
    EXPECT_EQ(b.releases.load(), 0);
    EXPECT_TRUE(t.remove(&b));
    t.wait_for_releases();
    EXPECT_EQ(b.releases.load(), 1);
    EXPECT_EQ(t.size(), 0u);
}

// The named layer skips the look-up of a `node/object` name while no entry has a '/'.
TEST(NameTable, HasSlashedCountsTheEntriesListedWithASlash) {
    counted_entry plain("quotes"), slashed("desk/quotes"), other("a/b/c"), twin("desk/quotes");
    name_table t;
    EXPECT_FALSE(t.has_slashed());
    ASSERT_TRUE(t.insert(&plain));
    EXPECT_FALSE(t.has_slashed());
    ASSERT_TRUE(t.insert(&slashed));
    EXPECT_TRUE(t.has_slashed());
    EXPECT_FALSE(t.insert(&twin));  // refused: not counted
    ASSERT_TRUE(t.insert(&other));
    EXPECT_TRUE(t.remove(&slashed));
    EXPECT_TRUE(t.has_slashed());  // "a/b/c" is still listed
    EXPECT_EQ(t.remove("a/b/c"), &other);
    EXPECT_FALSE(t.has_slashed());
    EXPECT_TRUE(t.remove(&plain));
    EXPECT_FALSE(t.has_slashed());
    t.wait_for_releases();
}

TEST(NameTable, DuplicateNameIsRefusedAndNotOwned) {
    counted_entry first("orders"), second("orders");
    name_table t;
    ASSERT_TRUE(t.insert(&first));
    EXPECT_FALSE(t.insert(&second));
    EXPECT_EQ(t.size(), 1u);
    EXPECT_EQ(lookup(t, "orders"), &first);
    // Refused means not owned: never released, not removable, free to try again later.
    EXPECT_FALSE(t.remove(&second));
    t.wait_for_releases();
    EXPECT_EQ(second.releases.load(), 0);
    ASSERT_TRUE(t.remove(&first));
    ASSERT_TRUE(t.insert(&second));
    EXPECT_EQ(lookup(t, "orders"), &second);
    t.wait_for_releases();
    EXPECT_EQ(first.releases.load(), 1);
    EXPECT_EQ(second.releases.load(), 0);
    EXPECT_TRUE(t.remove(&second));
}

TEST(NameTable, RemoveByEntryOnlyWhileItIsTheOneListed) {
    counted_entry old_one("feed"), new_one("feed"), elsewhere("feed");
    name_table t, other;
    ASSERT_TRUE(t.insert(&old_one));
    ASSERT_TRUE(other.insert(&elsewhere));
    EXPECT_FALSE(t.remove(&elsewhere));  // same name, other table
    EXPECT_FALSE(t.remove(nullptr));
    EXPECT_TRUE(t.remove(&old_one));
    EXPECT_FALSE(t.remove(&old_one));  // no longer listed
    ASSERT_TRUE(t.insert(&new_one));
    EXPECT_FALSE(t.remove(&old_one));  // the name is listed again, by another entry
    EXPECT_EQ(lookup(t, "feed"), &new_one);
    EXPECT_EQ(lookup(other, "feed"), &elsewhere);
    t.wait_for_releases();
    EXPECT_EQ(old_one.releases.load(), 1);
    EXPECT_EQ(new_one.releases.load(), 0);
    EXPECT_TRUE(t.remove(&new_one));
    EXPECT_TRUE(other.remove(&elsewhere));
}

TEST(NameTable, RemoveByNameAndIdentityNeverTouchesTheEntry) {
    std::atomic<long> released{0};
    counted_entry other("svc");
    name_table t;
    auto* e = new self_deleting_entry("svc", released);
    ASSERT_TRUE(t.insert(e));
    EXPECT_FALSE(t.remove("svc", &other));  // listed, but not this one
    EXPECT_FALSE(t.remove("svc", nullptr));
    EXPECT_FALSE(t.remove("elsewhere", e));
    EXPECT_EQ(lookup(t, "svc"), e);
    // Someone else removes it, and it is released (deleted): an owner that still has the
    // pointer may ask again without touching freed memory (AddressSanitizer would see it).
    ASSERT_EQ(t.remove("svc"), e);
    t.wait_for_releases();
    ASSERT_EQ(released.load(), 1);
    EXPECT_FALSE(t.remove("svc", e));
    ASSERT_TRUE(t.insert(&other));
    EXPECT_TRUE(t.remove("svc", &other));
    t.wait_for_releases();
    EXPECT_EQ(other.releases.load(), 1);
}

TEST(NameTable, AnEntryIsInsertedAtMostOnce) {
    counted_entry a("once");
    name_table t, other;
    EXPECT_THROW(t.insert(nullptr), mailroom::usage_error);
    ASSERT_TRUE(t.insert(&a));
    EXPECT_THROW(t.insert(&a), mailroom::usage_error);
    EXPECT_THROW(other.insert(&a), mailroom::usage_error);
    ASSERT_TRUE(t.remove(&a));
    // Its links may still carry the pending release: never again.
    EXPECT_THROW(t.insert(&a), mailroom::usage_error);
    t.wait_for_releases();
    EXPECT_EQ(a.releases.load(), 1);
}

TEST(NameTable, ReleasedOnceOnTheCallRcuThread) {
    counted_entry a("worker");
    name_table t;
    ASSERT_TRUE(t.insert(&a));
    ASSERT_EQ(t.remove("worker"), &a);
    t.wait_for_releases();
    t.wait_for_releases();
    EXPECT_EQ(a.releases.load(), 1);
    EXPECT_NE(a.released_on, std::this_thread::get_id());
    EXPECT_NE(a.released_on, std::thread::id());
}

// The guarantee: table_released() does not run while a reader that found the entry is still
// inside read(). With a release at remove() time (no grace period) the reader would see the
// sentinel overwritten and the window below would see releases == 1.
TEST(NameTable, ReleaseWaitsForTheReaderInside) {
    counted_entry a("held");
    name_table t;
    ASSERT_TRUE(t.insert(&a));

    std::atomic<bool> inside{false}, removed{false}, leave{false};
    std::atomic<bool> reader_saw_it_intact{false};
    // Lets the reader out and joins it even when an assertion below returns early.
    struct joiner {
        std::atomic<bool>& leave;
        std::thread t;
        ~joiner() {
            leave.store(true);
            if (t.joinable()) t.join();
        }
    } reader{leave, {}};
    reader.t = std::thread([&] {
        t.read("held", [&](name_entry* e) {
            if (e != &a) return;
            inside.store(true);
            mailroom::test::eventually([&] { return leave.load(); });
            // Removed from the table meanwhile, but not released: still whole.
            auto* c = static_cast<counted_entry*>(e);
            reader_saw_it_intact.store(removed.load() && c->sentinel == alive && c->releases.load() == 0 &&
                                       c->name() == "held");
        });
    });

    ASSERT_TRUE(mailroom::test::eventually([&] { return inside.load(); }));
    ASSERT_EQ(t.remove("held"), &a);
    removed.store(true);
    EXPECT_EQ(lookup(t, "held"), nullptr);  // gone for new readers at once
    EXPECT_EQ(t.size(), 0u);
    // A grace period takes microseconds when no reader is inside: give the call_rcu thread
    // ample time to (wrongly) release the entry under the reader's feet. Time is the only
    // witness of something not happening.
    EXPECT_FALSE(mailroom::test::eventually([&] { return a.releases.load() != 0; }, 200ms));

    leave.store(true);
    reader.t.join();
    EXPECT_TRUE(reader_saw_it_intact.load());
    EXPECT_TRUE(mailroom::test::eventually([&] { return a.releases.load() == 1; }));
    t.wait_for_releases();
    EXPECT_EQ(a.releases.load(), 1);
    EXPECT_EQ(a.sentinel, dead);
}

TEST(NameTable, DestructorReleasesEverything) {
    std::atomic<long> released{0};
    counted_entry removed_before("removed"), kept("kept");
    {
        name_table t;
        for (int i = 0; i < 10; ++i)
            ASSERT_TRUE(t.insert(new self_deleting_entry("owned-" + std::to_string(i), released)));
        ASSERT_TRUE(t.insert(&removed_before));
        ASSERT_TRUE(t.insert(&kept));
        ASSERT_TRUE(t.remove(&removed_before));
        EXPECT_EQ(t.size(), 11u);
    }
    // The destructor waited for every release, including the one already pending.
    EXPECT_EQ(released.load(), 10);
    EXPECT_EQ(removed_before.releases.load(), 1);
    EXPECT_EQ(kept.releases.load(), 1);
}

TEST(NameTable, ForEachVisitsEveryEntryOnce) {
    std::atomic<long> released{0};
    name_table t;
    std::set<std::string> expected;
    for (int i = 0; i < 300; ++i) {
        std::string name = "svc/" + std::to_string(i);
        expected.insert(name);
        ASSERT_TRUE(t.insert(new self_deleting_entry(name, released)));
    }
    std::multiset<std::string> seen;
    t.for_each([&](name_entry& e) { seen.insert(e.name()); });
    EXPECT_EQ(seen.size(), expected.size());
    EXPECT_TRUE(std::equal(seen.begin(), seen.end(), expected.begin(), expected.end()));
    // Removing from inside the walk is allowed.
    t.for_each([&](name_entry& e) {
        if (e.name().back() == '7') {
            EXPECT_TRUE(t.remove(&e));
        }
    });
    EXPECT_EQ(t.size(), 300u - 30u);
    t.wait_for_releases();
    EXPECT_EQ(released.load(), 30);
}

TEST(NameTable, HundredThousandNames) {
    constexpr int n = 100'000;
    std::atomic<long> released{0};
    std::vector<self_deleting_entry*> entries;
    entries.reserve(n);
    {
        name_table t;
        for (int i = 0; i < n; ++i) {
            auto* e = new self_deleting_entry("object-" + std::to_string(i), released, static_cast<std::uint64_t>(i));
            ASSERT_TRUE(t.insert(e));
            entries.push_back(e);
        }
        EXPECT_EQ(t.size(), static_cast<std::size_t>(n));
        for (int i = 0; i < n; ++i) {
            const std::string name = "object-" + std::to_string(i);
            ASSERT_EQ(lookup(t, name), entries[static_cast<std::size_t>(i)]) << name;
        }
        EXPECT_EQ(lookup(t, "object-" + std::to_string(n)), nullptr);
        EXPECT_EQ(lookup(t, "object-"), nullptr);
        for (int i = 0; i < n; i += 2) ASSERT_NE(t.remove("object-" + std::to_string(i)), nullptr);
        EXPECT_EQ(t.size(), static_cast<std::size_t>(n / 2));
        for (int i = 0; i < n; ++i) {
            const std::string name = "object-" + std::to_string(i);
            name_entry* e = lookup(t, name);
            if (i % 2 == 0) {
                ASSERT_EQ(e, nullptr) << name;
            } else {
                ASSERT_EQ(e, entries[static_cast<std::size_t>(i)]) << name;
            }
        }
        t.wait_for_releases();
        EXPECT_EQ(released.load(), n / 2);
    }
    EXPECT_EQ(released.load(), n);
}

// Readers look names up while a writer inserts and removes them; every entry a reader finds is
// whole (sentinel, name, payload) for as long as it is inside read(), even though the writer
// may have removed it and its memory is freed as soon as it is released.
TEST(NameTable, ReadersWhileAWriterChurns) {
    constexpr int names = 64;
    constexpr int readers = 3;
    const long writer_rounds = mailroom::test::rounds(200'000);
    const auto time_limit = 2s;

    std::atomic<long> released{0};
    long created = 0;
    std::vector<std::string> keys;
    for (int i = 0; i < names; ++i) keys.push_back("topic/" + std::to_string(i));

    std::atomic<bool> stop{false};
    std::atomic<long> found{0}, missed{0}, broken{0};
    {
        name_table t;
        std::vector<std::thread> threads;
        for (int r = 0; r < readers; ++r) {
            threads.emplace_back([&, r] {
                std::minstd_rand rng(static_cast<unsigned>(r + 1));
                long f = 0, m = 0;
                while (!stop.load(std::memory_order_relaxed)) {
                    const std::string& key = keys[rng() % names];
                    t.read(key, [&](name_entry* e) {
                        if (!e) {
                            ++m;
                            return;
                        }
                        auto* s = static_cast<self_deleting_entry*>(e);
                        const bool ok = s->sentinel == alive && e->name() == key &&
                                        s->payload == std::hash<std::string>{}(key);
                        if (!ok) broken.fetch_add(1);
                        ++f;
                    });
                }
                found.fetch_add(f);
                missed.fetch_add(m);
            });
        }

        std::minstd_rand rng(99);
        const auto deadline = std::chrono::steady_clock::now() + time_limit;
        for (long i = 0; i < writer_rounds && std::chrono::steady_clock::now() < deadline; ++i) {
            const std::string& key = keys[rng() % names];
            if (rng() % 2) {
                auto* e = new self_deleting_entry(key, released, std::hash<std::string>{}(key));
                if (t.insert(e)) {
                    ++created;
                } else {
                    delete e;
                }
            } else {
                t.remove(key);
            }
        }
        stop.store(true);
        for (auto& th : threads) th.join();
        EXPECT_LE(t.size(), static_cast<std::size_t>(names));
    }
    EXPECT_EQ(broken.load(), 0);
    EXPECT_GT(found.load(), 0);
    EXPECT_GT(missed.load(), 0);
    EXPECT_EQ(released.load(), created);  // the destructor released the rest
}

}  // namespace
