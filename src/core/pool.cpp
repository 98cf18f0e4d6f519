#include <mailroom/core/pool.hpp>

#include <mailroom/core/clock.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <pthread.h>
#include <signal.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace mailroom::internal {
namespace {

/// Gives a block back to operator delete, with its size where the compiler has sized
/// deallocation (g++; clang before 19 only with -fsized-deallocation).
inline void delete_block(void* block, [[maybe_unused]] std::size_t size) noexcept {
#if defined(__cpp_sized_deallocation)
    ::operator delete(block, size);
#else
    ::operator delete(block);
#endif
}

// Size classes 32, 64, 128, 256, 512. Each class keeps a thread-local free list; when a thread's
// list grows past two batches (the consumer side of a producer/consumer pair), one batch moves to
// a shared depot, from which an empty thread-local list refills a whole batch under one lock.
// The lock is taken once per batch, never per block.
//
// Giving memory back, lazily. The depot keeps what it is given; what sits in it above the mark
// (pool_cache_limit()) goes back to operator delete once it has stayed unused for
// pool_decay_period, and the C heap is then asked (malloc_trim) to hand its free pages to the
// system, since glibc keeps small freed chunks otherwise. So a burst that follows another
// within the period reuses its blocks instead of paying operator new again for each (W6 arms a
// million timers back to back), while a process that goes quiet after a burst still gets its
// resident memory back.
//
// - "Unused" is measured per size class as the depot's low-water: the fewest batches it held
//   at any moment of each quarter period. Batches are taken from and given to the top of each
//   class's stack, so the bottom `low` batches were not touched during that quarter, and as
//   many as the lowest of the last four quarters' low-waters have sat unused for a whole
//   period: that many of the class may go (blocks are interchangeable; unstack says which go),
//   until the depot is back within the mark.
// - What drives it is a small thread of the pool's own, started the first time the depot goes
//   past the mark. While the depot is within the mark it sleeps on a condition variable with
//   no timeout (no work, no wake-up, when there is no excess); the put that takes the depot
//   past the mark wakes it, once, and it then looks every quarter period until the excess is
//   gone. Neither the dispatcher workers nor the timer thread can do it: a burst often ends
//   with its environment (W6 destroys one per repetition), and the core layer names no upper
//   one. pool_allocate and pool_free gain nothing: the depot's slow path (once per batch)
//   updates a low-water count under the lock it already holds, and signals only when the
//   trimmer is asleep.
// - Memory stays bounded when bursts come faster than the decay, by the bursts themselves: a
//   block of a class is taken from operator new only when the calling thread's list and the
//   depot's list of that class are both empty, so at that moment the pool owns no more of
//   that class than is in use plus the other threads' lists (at most two batches each). The
//   pool thus never holds more blocks of a class than were once in use at the same time, plus
//   the per-thread lists: a second burst reuses the first one's blocks and adds none.
// - Static teardown and thread exit: the depot is never destroyed, and the trimmer touches
//   nothing else, so threads may still free blocks (and the trimmer may still run) while
//   statics are destroyed; an exiting thread's lists go to the depot like any spill.
// - If the trimmer cannot be started (no threads left), the depot falls back to giving back
//   at once what would take it past the mark, as it freed it, with a trim every trim_every.
constexpr std::size_t class_count = 5;
constexpr std::size_t batch_size = 256;
constexpr std::size_t trim_every = std::size_t{16} << 20;
constexpr std::size_t decay_quarters = 4;
constexpr auto decay_tick = pool_decay_period / decay_quarters;

std::atomic<std::size_t> cache_limit{pool_default_cache_limit};

// Blocks taken from operator new by threads that have exited or flushed their count.
std::atomic<std::size_t> heap_blocks{0};

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
    using batch_list = std::vector<std::pair<batch, std::size_t>>;  // batches and their classes
    enum class trimmer_state : unsigned char { absent, running, unavailable };

    // A batch in the depot, numbered in the order the depot was given it.
    struct held {
        batch b;
        std::uint64_t serial;
    };

    std::mutex lock;
    std::array<std::vector<held>, class_count> batches;  // a stack per class: the top is back()
    std::uint64_t serial = 0;
    std::size_t blocks = 0;
    std::size_t bytes = 0;
    std::size_t leaving = 0;  // bytes taken off the depot, on their way back to the system
    std::size_t released_since_trim = 0;  // only without a trimmer

    // The decay's bookkeeping, all under `lock`: per class, the fewest batches held during the
    // current quarter, and during each of the last decay_quarters ones (0 until measured).
    std::array<std::size_t, class_count> low{};
    std::array<std::array<std::size_t, decay_quarters>, class_count> lows{};
    std::size_t quarter = 0;
    trimmer_state trimmer = trimmer_state::absent;
    bool trimmer_asleep = false;           // waiting with no timeout for an excess
    std::condition_variable excess;        // a put took the depot past the mark

    static void release(batch& b, std::size_t c) noexcept {
        while (b.head) {
            free_block* n = b.head->next;
            delete_block(b.head, class_bytes(c));
            b.head = n;
        }
        b.count = 0;
    }

    // Keeps `b`; the trimmer gives it back later if it stays unused. May throw (out of memory
    // growing the list) only while `b` is still the caller's.
    void put(batch b, std::size_t c) {
        const std::size_t add = b.count * class_bytes(c);
        bool wake = false;
        bool start = false;
        bool give_back = false;
        bool trim = false;
        {
            std::lock_guard g(lock);
            const std::size_t limit = cache_limit.load(std::memory_order_relaxed);
            if (trimmer != trimmer_state::unavailable || bytes + add <= limit) {
                batches[c].push_back({b, ++serial});
                blocks += b.count;
                bytes += add;
                if (bytes <= limit || trimmer == trimmer_state::unavailable) return;
                if (trimmer == trimmer_state::absent) {
                    trimmer = trimmer_state::running;
                    start = true;
                } else if (trimmer_asleep) {
                    trimmer_asleep = false;
                    wake = true;
                }
            } else {
                give_back = true;
                released_since_trim += add;
                if (released_since_trim >= trim_every) {
                    released_since_trim = 0;
                    trim = true;
                }
            }
        }
        if (wake) excess.notify_one();
        if (start) start_trimmer();
        if (give_back) {  // no trimmer: above the mark, back at once
            release(b, c);
            if (trim) trim_heap();
        }
    }

    batch take(std::size_t c) noexcept {
        std::lock_guard g(lock);
        if (batches[c].empty()) return {};
        batch b = batches[c].back().b;
        batches[c].pop_back();
        blocks -= b.count;
        bytes -= b.count * class_bytes(c);
        low[c] = std::min(low[c], batches[c].size());
        return b;
    }

    // Takes batches off the depot into `out` while it holds more than `limit` bytes, at most
    // most[c] of class c: the newest first, across classes, so that what stays is what the
    // depot has held longest. After a drain those are the blocks the backlog took first, which
    // sit together at the start of the C heap's region, so the pages of all the rest can go
    // back to the system; keeping the same bytes of one class spread through the region (the
    // smallest class, interleaved with the others) would pin nearly all its pages. Under
    // `lock`. Stops early, keeping the rest, if `out` cannot grow.
    void unstack(std::size_t limit, std::array<std::size_t, class_count> most, batch_list& out) noexcept {
        while (bytes > limit) {
            std::size_t pick = class_count;
            for (std::size_t c = 0; c < class_count; ++c)
                if (most[c] && !batches[c].empty() &&
                    (pick == class_count || batches[c].back().serial > batches[pick].back().serial))
                    pick = c;
            if (pick == class_count) break;
            const batch b = batches[pick].back().b;
            try {
                out.emplace_back(b, pick);
            } catch (...) {
                break;  // out of memory: what is left stays cached
            }
            batches[pick].pop_back();
            --most[pick];
            blocks -= b.count;
            bytes -= b.count * class_bytes(pick);
            leaving += b.count * class_bytes(pick);
        }
        // Fewer batches are left below each low-water: those left were as untouched as before.
        for (std::size_t c = 0; c < class_count; ++c) {
            low[c] = std::min(low[c], batches[c].size());
            for (auto& l : lows[c]) l = std::min(l, batches[c].size());
        }
    }

    // Frees the batches of `out` and trims the C heap, outside the lock (operator delete and
    // malloc_trim take their time), then counts them gone.
    void give_back(batch_list& out) noexcept {
        if (out.empty()) return;
        std::size_t gone = 0;
        for (auto& [b, c] : out) {
            gone += b.count * class_bytes(c);
            release(b, c);
        }
        out.clear();
        trim_heap();
        std::lock_guard g(lock);
        leaving -= gone;
    }

    // Frees batches until the depot holds at most `limit` bytes, now (pool_set_cache_limit).
    void shrink_to(std::size_t limit) noexcept {
        batch_list out;
        {
            std::lock_guard g(lock);
            std::array<std::size_t, class_count> all;
            all.fill(SIZE_MAX);
            unstack(limit, all, out);
        }
        give_back(out);
    }

    void start_trimmer() noexcept;
    [[noreturn]] void run_trimmer() noexcept;
};

depot& the_depot() {
    static depot* d = new depot;  // never destroyed: threads may free blocks during static teardown
    return *d;
}

// The trimmer: asleep while the depot is within the mark; while it is not, every quarter period
// it records each class's low-water and frees what stayed below it for a whole period.
void depot::run_trimmer() noexcept {
    batch_list out;
    std::unique_lock g(lock);
    for (;;) {
        while (bytes <= cache_limit.load(std::memory_order_relaxed)) {
            trimmer_asleep = true;
            excess.wait(g, [this] { return !trimmer_asleep; });
        }
        // An excess: measure a fresh period from now.
        for (std::size_t c = 0; c < class_count; ++c) {
            low[c] = batches[c].size();
            lows[c].fill(0);
        }
        while (bytes > cache_limit.load(std::memory_order_relaxed)) {
            // From now, not from the last tick: a late tick must not shorten the next quarter.
            const auto next = std::chrono::steady_clock::now() + decay_tick;
            // Only a sleeping trimmer is notified: this is a sleep that lets go of the lock.
            while (std::chrono::steady_clock::now() < next) excess.wait_until(g, next);
            std::array<std::size_t, class_count> idle;
            for (std::size_t c = 0; c < class_count; ++c) {
                lows[c][quarter] = low[c];
                low[c] = batches[c].size();
                idle[c] = *std::min_element(lows[c].begin(), lows[c].end());
            }
            quarter = (quarter + 1) % decay_quarters;
            unstack(cache_limit.load(std::memory_order_relaxed), idle, out);
            if (out.empty()) continue;
            g.unlock();
            give_back(out);
            g.lock();
        }
    }
}

void depot::start_trimmer() noexcept {
    try {
        // The trimmer takes no signal meant for the program's threads: it inherits a full mask.
        sigset_t all, old;
        ::sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &old);
        std::thread t;
        try {
            t = std::thread([this] { run_trimmer(); });
        } catch (...) {
            ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
        ::pthread_setname_np(t.native_handle(), "mailroom-pool");
        t.detach();  // it lives as long as the process, like the depot
    } catch (...) {
        // No thread to give the excess back later: give it back now, and from now on at once.
        {
            std::lock_guard g(lock);
            trimmer = trimmer_state::unavailable;
        }
        shrink_to(cache_limit.load(std::memory_order_relaxed));
    }
}

// The per-thread lists are plain data, constant-initialised: reaching them on the hot path is
// one TLS-relative load, with no guard call. Flushing them at thread exit needs a destructor,
// which lives in a separate thread_local touched only on the slow path (its first touch
// registers it).
enum cache_state : unsigned char { unregistered, live, dead };

struct thread_cache {
    std::array<batch, class_count> lists;
    cache_state state;
    std::size_t fresh;  // blocks taken from operator new, not yet added to heap_blocks
};

MAILROOM_FAST_TLS constinit thread_local thread_cache cache{};

struct cache_flusher {
    ~cache_flusher() {
        cache.state = dead;
        heap_blocks.fetch_add(cache.fresh, std::memory_order_relaxed);
        cache.fresh = 0;
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
    const bool usable = cache_usable();
    if (usable) list = the_depot().take(c);
    if (!list.head) {
        void* fresh = ::operator new(class_bytes(c));
        // Counted here and published once per batch: no shared cache line per block.
        if (!usable)
            heap_blocks.fetch_add(1, std::memory_order_relaxed);
        else if (++cache.fresh == batch_size) {
            heap_blocks.fetch_add(batch_size, std::memory_order_relaxed);
            cache.fresh = 0;
        }
        return fresh;
    }
    free_block* b = list.head;
    list.head = b->next;
    --list.count;
    return b;
}

[[gnu::noinline]] void free_slow(free_block* b, std::size_t c) noexcept {
    if (!cache_usable()) {
        delete_block(b, class_bytes(c));
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
    // Blocks that came back from another thread are cold here: fetch the next one's lines now,
    // for writing, so that the next allocation, and the writes that fill its block, do not
    // stall on them (fan-in, timers armed on one thread, a node's send queue).
    if (list.head) {
        const auto* next = reinterpret_cast<const char*>(list.head);
        const std::size_t lines = std::min<std::size_t>(class_bytes(c), 256);  // what a message header and a small payload fill
        for (std::size_t o = 0; o < lines; o += 64) __builtin_prefetch(next + o, 1);
    }
    return b;
#endif
}

void pool_free(void* block, std::size_t size) noexcept {
#ifdef MAILROOM_NO_POOL
    delete_block(block, size);
#else
    if (size > pool_max_block) [[unlikely]] {
        delete_block(block, size);
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

std::size_t pool_heap_blocks() noexcept {
    return heap_blocks.load(std::memory_order_relaxed) + cache.fresh;
}

std::size_t pool_depot_bytes() noexcept {
    std::lock_guard g(the_depot().lock);
    return the_depot().bytes + the_depot().leaving;
}

std::size_t pool_cache_limit() noexcept { return cache_limit.load(std::memory_order_relaxed); }

void pool_set_cache_limit(std::size_t bytes) noexcept {
    cache_limit.store(bytes, std::memory_order_relaxed);
    the_depot().shrink_to(bytes);
}

}  // namespace mailroom::internal
