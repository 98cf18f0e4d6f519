#include <mailroom/core/pool.hpp>

#include <mailroom/core/clock.hpp>

#include <array>
#include <bit>
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

[[maybe_unused]] std::size_t class_of(std::size_t size) noexcept {
    return size <= 32 ? 0 : static_cast<std::size_t>(std::bit_width(size - 1)) - 5;
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

// The per-thread lists are plain data, constant-initialised: reaching them on the hot path is
// one TLS-relative load, with no guard call. Flushing them at thread exit needs a destructor,
// which lives in a separate thread_local touched only on the slow path (its first touch
// registers it).
enum cache_state : unsigned char { unregistered, live, dead };

struct thread_cache {
    std::array<batch, class_count> lists;
    cache_state state;
};

MAILROOM_FAST_TLS constinit thread_local thread_cache cache{};

struct cache_flusher {
    ~cache_flusher() {
        cache.state = dead;
        for (std::size_t c = 0; c < class_count; ++c)
            if (cache.lists[c].count) {
                try {
                    the_depot().put(cache.lists[c], c);
                } catch (...) {
                    depot::release(cache.lists[c], c);
                }
                cache.lists[c] = {};
            }
    }
};

thread_local cache_flusher flusher;

// False once the thread is exiting: its blocks then go straight to operator delete.
[[maybe_unused]] bool cache_usable() noexcept {
    if (cache.state == live) return true;
    if (cache.state == dead) return false;
    static_cast<void>(&flusher);  // constructs it, registering the flush at thread exit
    cache.state = live;
    return true;
}

}  // namespace

#ifndef MAILROOM_NO_POOL
namespace {
// The slow paths stay out of line so that the fast ones need no saved registers.
[[gnu::noinline]] void* allocate_slow(std::size_t c) {
    batch& list = cache.lists[c];
    if (cache_usable()) list = the_depot().take(c);
    if (!list.head) return ::operator new(class_bytes(c));
    free_block* b = list.head;
    list.head = b->next;
    --list.count;
    return b;
}

[[gnu::noinline]] void free_slow(free_block* b, std::size_t c) noexcept {
    if (!cache_usable()) {
        ::operator delete(b, class_bytes(c));
        return;
    }
    batch& list = cache.lists[c];
    b->next = list.head;
    list.head = b;
    ++list.count;
}

// Splits one batch off a list that grew to two (the consumer side of a producer/consumer
// pair) and hands it to the depot; the rest stays warm here.
[[gnu::noinline]] void spill(std::size_t c) noexcept {
    batch& list = cache.lists[c];
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
}
}  // namespace
#endif

void* pool_allocate(std::size_t size) {
#ifdef MAILROOM_NO_POOL
    return ::operator new(size);
#else
    if (size > pool_max_block) [[unlikely]]
        return ::operator new(size);
    const std::size_t c = class_of(size);
    batch& list = cache.lists[c];
    free_block* b = list.head;
    if (!b) [[unlikely]]
        return allocate_slow(c);
    list.head = b->next;
    --list.count;
    // Blocks that came back from another thread are cold here: fetch the next one's line now,
    // so that the next allocation does not stall on it (fan-in, timers armed on one thread).
    if (list.head) __builtin_prefetch(list.head, 1);
    return b;
#endif
}

void pool_free(void* block, std::size_t size) noexcept {
#ifdef MAILROOM_NO_POOL
    ::operator delete(block, size);
#else
    if (size > pool_max_block) [[unlikely]] {
        ::operator delete(block, size);
        return;
    }
    const std::size_t c = class_of(size);
    auto* b = static_cast<free_block*>(block);
    if (cache.state != live) [[unlikely]] {
        free_slow(b, c);
        return;
    }
    batch& list = cache.lists[c];
    b->next = list.head;
    list.head = b;
    if (++list.count >= 2 * batch_size) [[unlikely]]
        spill(c);
#endif
}

std::size_t pool_cached_blocks() noexcept {
    std::size_t n = 0;
    for (auto& l : cache.lists) n += l.count;
    std::lock_guard g(the_depot().lock);
    return n + the_depot().blocks;
}

}  // namespace mailroom::internal
