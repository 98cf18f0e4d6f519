#include <mailroom/core/pool.hpp>

#include <array>
#include <mutex>
#include <new>
#include <vector>

namespace mailroom::internal {
namespace {

// Size classes 32, 64, 128, 256, 512. Each class keeps a thread-local free list; when a thread's
// list grows past two batches (the consumer side of a producer/consumer pair), one batch moves to
// a shared depot, from which an empty thread-local list refills a whole batch under one lock.
// The lock is taken once per batch, never per block.
constexpr std::size_t class_count = 5;
constexpr std::size_t batch_size = 256;

std::size_t class_of(std::size_t size) noexcept {
    if (size <= 32) return 0;
    if (size <= 64) return 1;
    if (size <= 128) return 2;
    if (size <= 256) return 3;
    return 4;
}

constexpr std::size_t class_bytes(std::size_t c) noexcept { return std::size_t{32} << c; }

struct free_block {
    free_block* next;
};

struct batch {
    free_block* head = nullptr;
    std::size_t count = 0;
};

struct depot {
    std::mutex lock;
    std::array<std::vector<batch>, class_count> batches;
    std::size_t blocks = 0;

    ~depot() {
        for (std::size_t c = 0; c < class_count; ++c)
            for (auto& b : batches[c]) release(b, c);
    }

    static void release(batch& b, std::size_t c) noexcept {
        while (b.head) {
            free_block* n = b.head->next;
            ::operator delete(b.head, class_bytes(c));
            b.head = n;
        }
        b.count = 0;
    }

    void put(batch b, std::size_t c) {
        std::lock_guard g(lock);
        blocks += b.count;
        batches[c].push_back(b);
    }

    batch take(std::size_t c) noexcept {
        std::lock_guard g(lock);
        if (batches[c].empty()) return {};
        batch b = batches[c].back();
        batches[c].pop_back();
        blocks -= b.count;
        return b;
    }
};

depot& the_depot() {
    static depot* d = new depot;  // never destroyed: threads may free blocks during static teardown
    return *d;
}

struct thread_cache {
    std::array<batch, class_count> lists{};
    bool alive = true;

    ~thread_cache() {
        alive = false;
        for (std::size_t c = 0; c < class_count; ++c)
            if (lists[c].count) {
                try {
                    the_depot().put(lists[c], c);
                } catch (...) {
                    depot::release(lists[c], c);
                }
                lists[c] = {};
            }
    }
};

thread_local thread_cache cache;

}  // namespace

void* pool_allocate(std::size_t size) {
#ifdef MAILROOM_NO_POOL
    return ::operator new(size);
#else
    if (size > pool_max_block) return ::operator new(size);
    std::size_t c = class_of(size);
    batch& list = cache.lists[c];
    if (!list.head) {
        if (cache.alive) list = the_depot().take(c);
        if (!list.head) return ::operator new(class_bytes(c));
    }
    free_block* b = list.head;
    list.head = b->next;
    --list.count;
    return b;
#endif
}

void pool_free(void* block, std::size_t size) noexcept {
#ifdef MAILROOM_NO_POOL
    ::operator delete(block, size);
#else
    if (size > pool_max_block) {
        ::operator delete(block, size);
        return;
    }
    std::size_t c = class_of(size);
    if (!cache.alive) {
        ::operator delete(block, class_bytes(c));
        return;
    }
    batch& list = cache.lists[c];
    auto* b = static_cast<free_block*>(block);
    b->next = list.head;
    list.head = b;
    if (++list.count < 2 * batch_size) return;
    // Split off one batch for the depot; keep the rest warm here.
    batch out;
    for (std::size_t i = 0; i < batch_size; ++i) {
        free_block* x = list.head;
        list.head = x->next;
        x->next = out.head;
        out.head = x;
    }
    out.count = batch_size;
    list.count -= batch_size;
    try {
        the_depot().put(out, c);
    } catch (...) {
        depot::release(out, c);
    }
#endif
}

std::size_t pool_cached_blocks() noexcept {
    std::size_t n = 0;
    for (auto& l : cache.lists) n += l.count;
    std::lock_guard g(the_depot().lock);
    return n + the_depot().blocks;
}

}  // namespace mailroom::internal
