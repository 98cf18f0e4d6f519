#pragma once
// Heap allocations and CPU time of a benchmark program, for the W1-W3 and W8 programs of every system.
//
// Including this header replaces the program's global operator new and delete (every form:
// sized, array, nothrow, aligned) with ones that count each allocation in a relaxed atomic and
// then call malloc. The replacement is program-wide: it also counts what shared libraries such
// as libcaf_core allocate. Include it in exactly one translation unit of a program (each
// benchmark is a single file, so: include it in that file, and nowhere else).
//
// `bench::account::now()` takes a reading (allocations so far, process CPU time from
// getrusage(RUSAGE_SELF) user+sys, wall clock); the difference of two readings taken around the
// timed window gives allocations per message and CPU seconds against wall seconds. Readings may
// be taken on any thread. `bench::account_log` keeps one difference per repetition and prints
// the medians as the extra fields of the RESULT line:
//   allocs_per_msg=0.00 cpu_s=1.93 wall_s=1.01

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace bench {

namespace alloc_detail {
inline std::atomic<std::uint64_t> allocations{0};

inline void* allocate(std::size_t n) noexcept {
    allocations.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(n ? n : 1);
}
inline void* allocate_aligned(std::size_t n, std::size_t align) noexcept {
    allocations.fetch_add(1, std::memory_order_relaxed);
    if (align < sizeof(void*)) align = sizeof(void*);
    const std::size_t rounded = (std::max<std::size_t>(n, 1) + align - 1) / align * align;  // aligned_alloc wants a multiple
    return std::aligned_alloc(align, rounded);
}
}  // namespace alloc_detail

/// Heap allocations (operator new calls) of the whole program so far.
inline std::uint64_t allocations() noexcept { return alloc_detail::allocations.load(std::memory_order_relaxed); }

/// One reading: allocations so far, process CPU seconds (user + system) and wall seconds.
struct account {
    std::uint64_t allocs = 0;
    double cpu_s = 0;
    double wall_s = 0;

    static account now() noexcept {
        account a;
        a.allocs = allocations();
        rusage ru{};
        ::getrusage(RUSAGE_SELF, &ru);
        a.cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                  static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        a.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
        return a;
    }
    friend account operator-(const account& a, const account& b) noexcept {
        return {a.allocs - b.allocs, a.cpu_s - b.cpu_s, a.wall_s - b.wall_s};
    }
};

/// The accounting of every repetition; `fields()` gives the medians as RESULT-line fields.
class account_log {
public:
    /// Records one repetition: the difference of two readings and the messages sent in between.
    void add(const account& window, std::uint64_t messages) {
        per_msg_.push_back(static_cast<double>(window.allocs) / static_cast<double>(std::max<std::uint64_t>(messages, 1)));
        cpu_.push_back(window.cpu_s);
        wall_.push_back(window.wall_s);
        std::printf("  (heap allocations %.3f per message; CPU %.3f s in %.3f s wall)\n", per_msg_.back(), cpu_.back(),
                    wall_.back());
    }
    std::string fields() const {
        char buf[160];
        std::snprintf(buf, sizeof buf, "allocs_per_msg=%.3f cpu_s=%.3f wall_s=%.3f", median(per_msg_), median(cpu_),
                      median(wall_));
        return buf;
    }

private:
    static double median(std::vector<double> v) {
        if (v.empty()) return 0;
        std::sort(v.begin(), v.end());
        return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    }
    std::vector<double> per_msg_, cpu_, wall_;
};

}  // namespace bench

// The replacements: not inline (the standard forbids it), hence one translation unit only. The
// functions are kept out of line so that GCC does not see an inlined malloc() reach operator
// delete, or new next to a bare free(), and warn of a mismatch (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (void* p = bench::alloc_detail::allocate(n)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
    if (void* p = bench::alloc_detail::allocate(n)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return bench::alloc_detail::allocate(n); }
[[gnu::noinline]] void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return bench::alloc_detail::allocate(n); }
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t a) {
    if (void* p = bench::alloc_detail::allocate_aligned(n, static_cast<std::size_t>(a))) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n, std::align_val_t a) {
    if (void* p = bench::alloc_detail::allocate_aligned(n, static_cast<std::size_t>(a))) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return bench::alloc_detail::allocate_aligned(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return bench::alloc_detail::allocate_aligned(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
