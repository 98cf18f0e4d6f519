#include <mailroom/core/pool.hpp>

#include <mailroom/core/clock.hpp>

#include <array>
#include <atomic>
#include <bit>
#include <mutex>
#include <new>
#include <vector>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace mailroom::internal {
namespace {

// Size classes 32, 64, 128, 256, 512. Each class keeps a thread-local free list; when a thread's
// list grows past two batches (the consumer side of a producer/consumer pair), one batch moves to
// a shared depot, from which an empty thread-local list refills a whole batch under one lock.
// The lock is taken once per batch, never per block.
//
// Giving memory back: the depot keeps at most pool_cache_limit() bytes. A batch that would
// take it past that mark (a consumer draining the backlog of a burst) goes back to operator
// delete at once, outside the lock; and since glibc keeps small freed chunks in its own lists,
// every trim_every bytes so returned the pool asks it to hand free pages back to the system.
// All of this happens on the slow path, once per batch; allocating and freeing a block stay a
// pop and a push on a thread-local list.
constexpr std::size_t class_count = 5;
constexpr std::size_t batch_size = 256;
constexpr std::size_t trim_every = std::size_t{16} << 20;

std::atomic<std::size_t> cache_limit{pool_default_cache_limit};

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

// Returns free pages of the C heap to the system (glibc keeps them otherwise).
void trim_heap() noexcept {
#ifdef __GLIBC__
    ::malloc_trim(0);
#endif
}

struct depot {
    std::mutex lock;
    std::array<std::vector<batch>, class_count> batches;
    std::size_t blocks = 0;
    std::size_t bytes = 0;
    std::size_t released_since_trim = 0;

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

    // Keeps `b` if the depot stays under the mark, else frees it. May throw (out of memory
    // growing the list) only while `b` is still the caller's.
    void put(batch b, std::size_t c) {
        const std::size_t add = b.count * class_bytes(c);
        bool trim = false;
        {
            std::lock_guard g(lock);
            if (bytes + add <= cache_limit.load(std::memory_order_relaxed)) {
                batches[c].push_back(b);
                blocks += b.count;
                bytes += add;
                return;
            }
            released_since_trim += add;
            if (released_since_trim >= trim_every) {
                released_since_trim = 0;
                trim = true;
            }
        }
        release(b, c);
        if (trim) trim_heap();
    }

    batch take(std::size_t c) noexcept {
        std::lock_guard g(lock);
        if (batches[c].empty()) return {};
        batch b = batches[c].back();
        batches[c].pop_back();
        blocks -= b.count;
        bytes -= b.count * class_bytes(c);
        return b;
    }

    // Frees batches (the largest classes first) until the depot holds at most `limit` bytes.
    void shrink_to(std::size_t limit) noexcept {
        std::vector<std::pair<batch, std::size_t>> out;  // freed outside the lock
        std::size_t freed = 0;
        {
            std::lock_guard g(lock);
            for (std::size_t c = class_count; c-- > 0 && bytes > limit;)
                while (!batches[c].empty() && bytes > limit) {
                    batch b = batches[c].back();
                    try {
                        out.emplace_back(b, c);
                    } catch (...) {
                        return;  // out of memory: what is left stays cached
                    }
                    batches[c].pop_back();
                    blocks -= b.count;
                    bytes -= b.count * class_bytes(c);
                    freed += b.count * class_bytes(c);
                }
        }
        for (auto& [b, c] : out) release(b, c);
        if (freed) trim_heap();
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

std::size_t pool_cached_bytes() noexcept {
    std::size_t n = 0;
    for (std::size_t c = 0; c < class_count; ++c) n += cache.lists[c].count * class_bytes(c);
    std::lock_guard g(the_depot().lock);
    return n + the_depot().bytes;
}

std::size_t pool_depot_bytes() noexcept {
    std::lock_guard g(the_depot().lock);
    return the_depot().bytes;
}

std::size_t pool_cache_limit() noexcept { return cache_limit.load(std::memory_order_relaxed); }

void pool_set_cache_limit(std::size_t bytes) noexcept {
    cache_limit.store(bytes, std::memory_order_relaxed);
    the_depot().shrink_to(bytes);
}

}  // namespace mailroom::internal
