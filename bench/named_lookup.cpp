// N1: what a lookup by name costs in the name table (liburcu-bp read-side critical section +
// rculfhash, no lock), against the usual alternative: a std::shared_mutex taken shared around a
// std::unordered_map<std::string, object*> (heterogeneous lookup, no allocation either).
//
//   names    10 or 100,000 listed names, looked up in a shuffled order
//   churn    another thread registers and unregisters other names continuously (insert a
//            new object, remove one listed 2,048 steps earlier), as fast as it can
//   2 readers  a second thread looks up the same names at the same time (the figure is the
//            timed thread's): where a shared lock's one cache line starts to bounce
//   empty    a lookup of an absent name in an empty table: the fixed cost (read lock, hash,
//            one bucket, unlock); `urcu_bp lock+unlock` is liburcu's read-side pair alone
//
// Each measurement runs for a fixed time on the main thread; the two systems alternate so that
// a noisy moment hits both. Prints ns per lookup (median of the runs, min and max) and the
// ratio, then `RESULT workload=N1 system=<rcu_table|shared_mutex_map> variant=<...> value=<ns>
// unit=ns_per_lookup` lines. Checks that every lookup of a listed name found its own object.
// Usage: bench_named_lookup [--quick]   (about 15 s; --quick about 2 s)

#include <mailroom/named/name_table.hpp>

#include <urcu/urcu-bp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
using mailroom::internal::name_entry;
using mailroom::internal::name_table;

[[noreturn]] void fail(const std::string& what) {
    std::fflush(stdout);
    std::fprintf(stderr, "\n*** N1 CHECK FAILED: %s ***\n\n", what.c_str());
    std::exit(1);
}

struct object {
    std::uint64_t value;
};

class table_object final : public name_entry {
public:
    table_object(std::string name, std::uint64_t value) : name_entry(std::move(name)), obj{value} {}
    object obj;

protected:
    void table_released() noexcept override { delete this; }
};

struct sv_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// The comparison: a reader-writer lock around a hash map of owned objects.
class locked_map {
public:
    ~locked_map() {
        for (auto& [k, v] : map_) delete v;
    }
    bool insert(const std::string& name, std::uint64_t value) {
        auto* o = new object{value};
        std::unique_lock lock(mutex_);
        if (map_.emplace(name, o).second) return true;
        lock.unlock();
        delete o;
        return false;
    }
    void remove(std::string_view name) {
        object* o = nullptr;
        {
            std::unique_lock lock(mutex_);
            auto it = map_.find(name);
            if (it == map_.end()) return;
            o = it->second;
            map_.erase(it);
        }
        delete o;  // no reader can hold it: they hold the shared lock while they use it
    }
    void settle() {}
    std::uint64_t value_of(std::string_view name) const {
        std::shared_lock lock(mutex_);
        auto it = map_.find(name);
        return it == map_.end() ? 0 : it->second->value;
    }

private:
    mutable std::shared_mutex mutex_;
    std::unordered_map<std::string, object*, sv_hash, std::equal_to<>> map_;
};

struct rcu_table {
    name_table t;
    bool insert(const std::string& name, std::uint64_t value) {
        auto* o = new table_object(name, value);
        if (t.insert(o)) return true;
        delete o;
        return false;
    }
    void remove(std::string_view name) { t.remove(name); }
    // Lets the call_rcu thread finish the releases (and liburcu's worker a resize) that an
    // earlier churn left, so that they do not compete with the next measurement for the CPUs.
    void settle() {
        t.wait_for_releases();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::uint64_t value_of(std::string_view name) const {
        return t.read(name, [](name_entry* e) { return e ? static_cast<table_object*>(e)->obj.value : 0; });
    }
};

std::string listed_name(std::size_t i) { return "service/object-" + std::to_string(i); }

// Registers and unregisters names of its own until stopped.
template <class Table>
class churner {
public:
    explicit churner(Table& table) : table_(table) {
        for (int i = 0; i < ring; ++i) names_.push_back("churn/object-" + std::to_string(i));
        for (int i = 0; i < ring / 2; ++i) table_.insert(names_[static_cast<std::size_t>(i)], 1);
        thread_ = std::thread([this] {
            std::size_t i = ring / 2;
            while (!stop_.load(std::memory_order_relaxed)) {
                table_.insert(names_[i % ring], 1);
                table_.remove(names_[(i + ring / 2) % ring]);
                ++i;
                ops_.fetch_add(2, std::memory_order_relaxed);
            }
        });
        while (ops_.load() < 1000) std::this_thread::yield();  // running before timing starts
    }
    ~churner() {
        stop_.store(true);
        thread_.join();
        for (auto& n : names_) table_.remove(n);
    }
    long ops() const { return ops_.load(); }

private:
    static constexpr int ring = 4096;
    Table& table_;
    std::vector<std::string> names_;
    std::atomic<bool> stop_{false};
    std::atomic<long> ops_{0};
    std::thread thread_;
};

struct run_result {
    double ns;           // per lookup, on the timed reader
    double churn_per_s;  // writer operations per second meanwhile
};

// Looks up names[order[i]] for i = first, first + 1, ... until `stop`, adding up the values found.
template <class Table>
long lookup_loop(const Table& table, const std::vector<std::string>& keys, const std::vector<std::uint32_t>& order,
                 std::size_t first, const std::function<bool(long)>& stop, std::uint64_t& sum) {
    const std::size_t mask = order.size() - 1;
    long done = 0;
    do {
        for (int j = 0; j < 1024; ++j, ++done)
            sum += table.value_of(keys[order[(first + static_cast<std::size_t>(done)) & mask]]);
    } while (!stop(done));
    return done;
}

std::uint64_t expected_sum(const std::vector<std::uint32_t>& order, std::size_t first, long done) {
    const std::size_t mask = order.size() - 1;
    std::uint64_t sum = 0;
    for (long i = 0; i < done; ++i) sum += order[(first + static_cast<std::size_t>(i)) & mask] + 1u;
    return sum;
}

// Lookups of the listed names in a shuffled order for `seconds` on this thread (and, with
// readers > 1, as many others at once on other threads); every one must find its object.
template <class Table>
run_result measure(Table& table, const std::vector<std::string>& keys, const std::vector<std::uint32_t>& order,
                   double seconds, bool churn, int readers) {
    table.settle();
    std::unique_ptr<churner<Table>> ch;
    if (churn) ch = std::make_unique<churner<Table>>(table);
    std::atomic<bool> stop_others{false};
    struct other {
        std::thread t;
        std::uint64_t sum = 0;
        long done = 0;
        std::size_t first = 0;
    };
    std::vector<other> others(static_cast<std::size_t>(readers - 1));
    std::atomic<int> started{0};
    for (std::size_t r = 0; r < others.size(); ++r) {
        auto& o = others[r];
        o.first = (r + 1) * order.size() / static_cast<std::size_t>(readers);
        o.t = std::thread([&] {
            started.fetch_add(1);
            auto stop = [&](long) { return stop_others.load(std::memory_order_relaxed); };
            o.done = lookup_loop(table, keys, order, o.first, stop, o.sum);
        });
    }
    while (started.load() < readers - 1) std::this_thread::yield();

    const long churn0 = ch ? ch->ops() : 0;
    const auto t0 = clk::now();
    const auto until = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(seconds));
    std::uint64_t sum = 0;
    auto stop = [&](long n) { return n % 16384 == 0 && clk::now() >= until; };
    const long done = lookup_loop(table, keys, order, 0, stop, sum);
    const auto t1 = clk::now();
    const long churned = ch ? ch->ops() - churn0 : 0;
    stop_others.store(true);
    for (auto& o : others) o.t.join();

    if (sum != expected_sum(order, 0, done)) fail("lookups found the wrong objects");
    for (auto& o : others)
        if (o.sum != expected_sum(order, o.first, o.done)) fail("another reader found the wrong objects");
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    return {secs * 1e9 / static_cast<double>(done), static_cast<double>(churned) / secs};
}

template <class Table>
double measure_empty(Table& table, long lookups) {
    const std::string absent = "service/nobody";
    std::uint64_t sum = 0;
    const auto t0 = clk::now();
    for (long i = 0; i < lookups; ++i) sum += table.value_of(absent);
    const auto t1 = clk::now();
    if (sum != 0) fail("an empty table found something");
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(lookups);
}

double measure_read_lock(long n) {
    const auto t0 = clk::now();
    for (long i = 0; i < n; ++i) {
        urcu_bp_read_lock();
        std::atomic_signal_fence(std::memory_order_seq_cst);
        urcu_bp_read_unlock();
    }
    const auto t1 = clk::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n);
}

struct stats {
    double median, min, max;
};

stats summarize(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {v[v.size() / 2], v.front(), v.back()};
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else {
            std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
            return 2;
        }
    }
    const double seconds = quick ? 0.05 : 0.25;  // per measurement
    const long fixed_lookups = quick ? 500'000 : 2'000'000;
    const int runs = quick ? 1 : 3;
    const std::size_t sizes[] = {10, 100'000};
    std::printf("# N1: %.2f s of lookups per measurement, %d runs, %u hardware threads\n", seconds, runs,
                std::thread::hardware_concurrency());

    struct row {
        std::string label, variant;
        std::vector<double> rcu, map;
        double rcu_churn = 0, map_churn = 0;
    };
    std::vector<row> rows;

    std::vector<double> lock_pair;
    row empty{"empty table, absent name", "empty", {}, {}};
    for (int r = 0; r < runs; ++r) {
        rcu_table rt;
        locked_map lm;
        lock_pair.push_back(measure_read_lock(fixed_lookups));
        empty.rcu.push_back(measure_empty(rt, fixed_lookups));
        empty.map.push_back(measure_empty(lm, fixed_lookups));
    }
    rows.push_back(empty);

    std::mt19937 rng(42);
    for (std::size_t n : sizes) {
        std::vector<std::string> keys;
        for (std::size_t i = 0; i < n; ++i) keys.push_back(listed_name(i));
        // A shuffled sequence of 64k (or more) indexes, a power of two in length.
        std::size_t len = 1;
        while (len < std::max<std::size_t>(n, 65'536)) len <<= 1;
        std::vector<std::uint32_t> order(len);
        for (std::size_t i = 0; i < len; ++i) order[i] = static_cast<std::uint32_t>(i % n);
        std::shuffle(order.begin(), order.end(), rng);

        rcu_table rt;
        locked_map lm;
        for (std::size_t i = 0; i < n; ++i) {
            if (!rt.insert(keys[i], i + 1) || !lm.insert(keys[i], i + 1)) fail("duplicate name " + keys[i]);
        }
        rt.t.wait_for_releases();
        struct variant {
            bool churn;
            int readers;
        };
        std::vector<variant> variants = {{false, 1}, {true, 1}};
        if (n == 10) variants.push_back({false, 2});
        for (auto [churn, readers] : variants) {
            const std::string what = churn ? ", churning writer" : readers > 1 ? ", 2 readers" : "";
            row rw{std::to_string(n) + " names" + what,
                   std::to_string(n) + (churn ? "_churn" : readers > 1 ? "_2readers" : ""),
                   {},
                   {}};
            for (int r = 0; r < runs; ++r) {  // alternated, so that a noisy moment hits both
                auto a = measure(rt, keys, order, seconds, churn, readers);
                auto b = measure(lm, keys, order, seconds, churn, readers);
                rw.rcu.push_back(a.ns);
                rw.map.push_back(b.ns);
                rw.rcu_churn += a.churn_per_s / runs;
                rw.map_churn += b.churn_per_s / runs;
            }
            rows.push_back(rw);
        }
    }

    const stats lp = summarize(lock_pair);
    std::printf("\nurcu_bp read lock+unlock pair alone: %.2f ns (min %.2f, max %.2f)\n\n", lp.median, lp.min, lp.max);
    std::printf("%-34s %22s %22s %10s\n", "ns per lookup (median [min-max])", "rcu name table", "shared_mutex+map",
                "map / rcu");
    for (auto& rw : rows) {
        const stats a = summarize(rw.rcu), b = summarize(rw.map);
        char ca[64], cb[64];
        std::snprintf(ca, sizeof ca, "%.1f [%.1f-%.1f]", a.median, a.min, a.max);
        std::snprintf(cb, sizeof cb, "%.1f [%.1f-%.1f]", b.median, b.min, b.max);
        std::printf("%-34s %22s %22s %9.2fx\n", rw.label.c_str(), ca, cb, b.median / a.median);
        if (rw.rcu_churn > 0)
            std::printf("%-34s %22.2g %22.2g\n", "  writer ops/s meanwhile", rw.rcu_churn, rw.map_churn);
    }
    std::printf("\n");
    std::printf("RESULT workload=N1 system=rcu_table variant=read_lock_pair value=%.3f unit=ns_per_pair\n", lp.median);
    for (auto& rw : rows) {
        std::printf("RESULT workload=N1 system=rcu_table variant=%s value=%.3f unit=ns_per_lookup\n",
                    rw.variant.c_str(), summarize(rw.rcu).median);
        std::printf("RESULT workload=N1 system=shared_mutex_map variant=%s value=%.3f unit=ns_per_lookup\n",
                    rw.variant.c_str(), summarize(rw.map).median);
    }
    return 0;
}
