// The name table as the registry will use it: entries are reference counted, the table holds
// one reference until table_released(), readers take their own inside read() and use the entry
// after leaving. Two writers insert and remove a shared set of names, readers look them up (and
// sometimes remove what they found from inside read()), a walker iterates. Every entry must be
// whole whenever someone holds it, and every entry created is destroyed exactly once.

#include <mailroom/named/name_table.hpp>

#include "test_support.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using mailroom::internal::name_entry;
using mailroom::internal::name_table;
using namespace std::chrono_literals;

constexpr std::uint64_t alive = 0x5AFE5AFE5AFE5AFEull;
constexpr std::uint64_t dead = 0xDEADDEADDEADDEADull;

struct totals {
    std::atomic<long> created{0}, destroyed{0}, released{0}, broken{0}, found{0}, walked{0};
};

class counted_object final : public name_entry {
public:
    counted_object(std::string name, totals& t)
        : name_entry(std::move(name)), t_(t), fingerprint_(std::hash<std::string>{}(this->name())) {
        t_.created.fetch_add(1);
    }
    ~counted_object() override {
        sentinel_ = dead;
        t_.destroyed.fetch_add(1);
    }

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    bool whole() const noexcept {
        return sentinel_ == alive && fingerprint_ == std::hash<std::string>{}(name()) &&
               refs_.load(std::memory_order_relaxed) > 0;
    }

protected:
    void table_released() noexcept override {
        t_.released.fetch_add(1);
        release();  // the table's reference
    }

private:
    totals& t_;
    std::atomic<int> refs_{1};
    const std::uint64_t fingerprint_;
    std::uint64_t sentinel_ = alive;
};

TEST(NameTableStress, ReferenceCountedEntriesUnderChurn) {
    constexpr int names = 32;
    const long writer_rounds = mailroom::test::rounds(2'000'000);
    const auto time_limit = 1500ms;

    std::vector<std::string> keys;
    for (int i = 0; i < names; ++i) keys.push_back("node-a/object-" + std::to_string(i));
    totals t;
    {
        name_table table;
        std::atomic<int> writers_left{2};
        std::vector<std::thread> threads;
        const auto deadline = std::chrono::steady_clock::now() + time_limit;

        for (int w = 0; w < 2; ++w) {
            threads.emplace_back([&, w] {
                std::minstd_rand rng(static_cast<unsigned>(100 + w));
                for (long i = 0; i < writer_rounds && std::chrono::steady_clock::now() < deadline; ++i) {
                    const std::string& key = keys[rng() % names];
                    if (rng() % 2) {
                        auto* e = new counted_object(key, t);
                        if (!table.insert(e)) e->release();  // refused: never the table's
                    } else if (rng() % 2) {
                        table.remove(key);
                    } else {
                        // By entry, as an owner unregistering its own object would.
                        auto* e = table.read(key, [](name_entry* found) {
                            auto* c = static_cast<counted_object*>(found);
                            if (c) c->add_ref();
                            return c;
                        });
                        if (e) {
                            table.remove(e);  // false when someone else got there first
                            e->release();
                        }
                    }
                }
                writers_left.fetch_sub(1);
            });
        }
        for (int r = 0; r < 2; ++r) {
            threads.emplace_back([&, r] {
                std::minstd_rand rng(static_cast<unsigned>(r + 1));
                while (writers_left.load() > 0) {
                    const std::string& key = keys[rng() % names];
                    const bool remove_inside = rng() % 64 == 0;
                    counted_object* held = table.read(key, [&](name_entry* found) {
                        auto* c = static_cast<counted_object*>(found);
                        if (!c) return c;
                        if (!c->whole()) t.broken.fetch_add(1);
                        c->add_ref();
                        if (remove_inside) table.remove(c);
                        return c;
                    });
                    if (!held) continue;
                    t.found.fetch_add(1, std::memory_order_relaxed);
                    // Outside the read-side critical section: only our reference keeps it.
                    std::this_thread::yield();
                    if (!held->whole() || held->name() != key) t.broken.fetch_add(1);
                    held->release();
                }
            });
        }
        threads.emplace_back([&] {
            while (writers_left.load() > 0) {
                table.for_each([&](name_entry& e) {
                    if (!static_cast<counted_object&>(e).whole()) t.broken.fetch_add(1);
                    t.walked.fetch_add(1, std::memory_order_relaxed);
                });
                std::this_thread::sleep_for(1ms);
            }
        });
        for (auto& th : threads) th.join();
        EXPECT_LE(table.size(), static_cast<std::size_t>(names));
    }
    std::printf("created %ld, released by the table %ld, found by readers %ld, walked %ld\n", t.created.load(),
                t.released.load(), t.found.load(), t.walked.load());
    // The table's destructor released what was still listed and waited for every release.
    EXPECT_EQ(t.broken.load(), 0);
    EXPECT_GT(t.found.load(), 0);
    EXPECT_GT(t.walked.load(), 0);
    EXPECT_EQ(t.destroyed.load(), t.created.load());
    EXPECT_LE(t.released.load(), t.created.load());
}

}  // namespace
