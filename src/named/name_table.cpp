#include <mailroom/named/name_table.hpp>

#include <mailroom/core/error.hpp>

// The bulletproof flavour: readers are arbitrary threads that never register (the first
// read_lock of a thread registers it). Without _LGPL_SOURCE the read lock is a call into
// liburcu-bp (liburcu 0.13 inlines it only for LGPL code).
#include <urcu/urcu-bp.h>
// After the flavour header, as liburcu requires.
#include <urcu/rculfhash.h>

#include <cstddef>
#include <functional>
#include <new>
#include <type_traits>

#if defined(__SANITIZE_THREAD__)
#define MAILROOM_NAMED_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MAILROOM_NAMED_TSAN 1
#endif
#endif
#ifdef MAILROOM_NAMED_TSAN
#include <sanitizer/tsan_interface.h>

// liburcu allocates, locks and frees its own structures (call_rcu and rcu_barrier completions,
// the resize worker's work items) across its own threads, ordered by futexes ThreadSanitizer
// does not see: each such hand-over is reported as a race inside liburcu. This option makes
// ThreadSanitizer skip what uninstrumented libraries do through its interceptors (malloc, free,
// pthread mutexes), as it does by default on macOS; mailroom's own ordering through liburcu is
// described to it below. Weak: a program's own __tsan_default_options wins (it then needs this
// option too), and TSAN_OPTIONS still overrides it.
extern "C" __attribute__((weak, visibility("default"))) const char* __tsan_default_options() {
    return "ignore_noninstrumented_modules=1";
}
#endif

namespace mailroom::internal {

// ThreadSanitizer cannot see liburcu's ordering (the library is not instrumented, and its
// grace periods rest on membarrier and futexes), so the three hand-overs of an entry are
// described to it with one synchronisation object per entry, its links:
//
//   writer builds the entry   --release--> reader finds it (match() acquires)
//   reader used it            --release--> call_rcu thread, before table_released() (acquires)
//   writer unlinked it        --release--> call_rcu thread, the same acquire
//
// A release joins the thread's clock into the object's, so the acquire before table_released()
// sees every reader that touched the entry: each of them released before leaving its read-side
// critical section, and the grace period ends only after all of them left. Outside TSan these
// compile to nothing.
namespace {
inline void tsan_release([[maybe_unused]] void* sync) noexcept {
#ifdef MAILROOM_NAMED_TSAN
    __tsan_release(sync);
#endif
}
inline void tsan_acquire([[maybe_unused]] void* sync) noexcept {
#ifdef MAILROOM_NAMED_TSAN
    __tsan_acquire(sync);
#endif
}

// Every table_released() happens before the return of a later wait_for_releases() (or table
// destructor), which liburcu's rcu_barrier ensures but ThreadSanitizer cannot see either.
char releases_done;
}  // namespace

struct name_table_access {
    // What name_entry::links_storage holds.
    struct links {
        cds_lfht_node node;  // first, so a cds_lfht_node* is a links*
        rcu_head rcu;
        name_entry* owner;
    };
    static_assert(std::is_standard_layout_v<links>);
    static_assert(sizeof(links) <= sizeof(name_entry::links_storage), "name_entry::links_storage too small");
    static_assert(alignof(links) <= alignof(name_entry::links_storage), "name_entry::links_storage misaligned");

    static links* of(name_entry* e) noexcept { return std::launder(reinterpret_cast<links*>(&e->links_)); }
    static links* of(cds_lfht_node* n) noexcept { return reinterpret_cast<links*>(n); }

    static void init(name_entry* e) noexcept {
        auto* l = new (&e->links_) links{};
        cds_lfht_node_init(&l->node);
        l->owner = e;
    }

    static unsigned long hash(std::string_view name) noexcept {
        return static_cast<unsigned long>(std::hash<std::string_view>{}(name));
    }

    // Called by liburcu for a node whose hash equals the key's, in readers and in writers.
    static int match(cds_lfht_node* node, const void* key) noexcept {
        links* l = of(node);
        tsan_acquire(l);
        const bool same = l->owner->name_ == *static_cast<const std::string_view*>(key);
        tsan_release(l);
        return same;
    }

    // On the call_rcu thread, a grace period after the entry was unlinked.
    static void released(rcu_head* head) noexcept {
        auto* l = reinterpret_cast<links*>(reinterpret_cast<char*>(head) - offsetof(links, rcu));
        tsan_acquire(l);
        l->owner->table_released();
        tsan_release(&releases_done);
    }

    // rcu_barrier(): every callback queued before it has run.
    static void wait_for_releases() noexcept {
        urcu_bp_barrier();
        tsan_acquire(&releases_done);
    }
};

using links = name_table_access::links;

name_entry::name_entry(std::string name) : name_(std::move(name)) { name_table_access::init(this); }

name_entry::~name_entry() {
    // A reader could still find it: the derived class freed what the table holds.
    if (listed_) fatal("name_entry destroyed while still listed in a name_table");
}

// With accounting, liburcu grows a table past 2,048 buckets only when it holds 8 entries per
// bucket (then to one per bucket), and shrinks it as entries go: chains of up to ~8 nodes in
// large tables, each a cache miss (see bench/named_lookup.cpp at 100,000 names).
name_table::name_table()
    : ht_(cds_lfht_new_flavor(64, 64, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, &urcu_bp_flavor, nullptr)) {
    if (!ht_) throw std::bad_alloc();
}

name_table::~name_table() {
    {
        std::lock_guard lock(mutex_);
        urcu_bp_read_lock();
        cds_lfht_iter it;
        cds_lfht_node* n;
        // Deleting the node the iterator stands on is allowed.
        cds_lfht_for_each(ht_, &it, n) {
            links* l = name_table_access::of(n);
            tsan_acquire(l);
            unlink_locked(l->owner);
        }
        urcu_bp_read_unlock();
    }
    name_table_access::wait_for_releases();
    if (cds_lfht_destroy(ht_, nullptr) != 0) fatal("name_table: liburcu refused to destroy an emptied table");
}

bool name_table::insert(name_entry* e) {
    if (!e) throw usage_error("name table: insert of a null entry");
    const name_table* none = nullptr;
    if (!e->table_.compare_exchange_strong(none, this, std::memory_order_acq_rel))
        throw usage_error("name table: entry '" + e->name_ + "' was already inserted in a table");
    links* l = name_table_access::of(e);
    const std::string_view key = e->name_;
    std::lock_guard lock(mutex_);
    // Everything the entry's constructor wrote happens before a reader's match() on it.
    tsan_release(l);
    urcu_bp_read_lock();
    cds_lfht_node* got = cds_lfht_add_unique(ht_, name_table_access::hash(key), &name_table_access::match, &key,
                                             &l->node);
    urcu_bp_read_unlock();
    if (got != &l->node) {
        // Never published: the caller keeps it and may insert it again.
        e->table_.store(nullptr, std::memory_order_release);
        return false;
    }
    e->listed_ = true;
    size_.fetch_add(1, std::memory_order_relaxed);
    if (key.find('/') != std::string_view::npos) slashed_.fetch_add(1, std::memory_order_relaxed);
    return true;
}

name_entry* name_table::remove(std::string_view name) noexcept {
    std::lock_guard lock(mutex_);
    urcu_bp_read_lock();
    name_entry* e = find(name);
    if (e) unlink_locked(e);
    urcu_bp_read_unlock();
    return e;
}

bool name_table::remove(name_entry* e) noexcept {
    // table_ is set once, before the entry is listed; listed_ belongs to that table's mutex.
    if (!e || e->table_.load(std::memory_order_acquire) != this) return false;
    std::lock_guard lock(mutex_);
    if (!e->listed_) return false;
    urcu_bp_read_lock();
    unlink_locked(e);
    urcu_bp_read_unlock();
    return true;
}

bool name_table::remove(std::string_view name, const name_entry* e) noexcept {
    if (!e) return false;
    std::lock_guard lock(mutex_);
    urcu_bp_read_lock();
    name_entry* listed = find(name);
    const bool same = listed == e;
    if (same) unlink_locked(listed);
    urcu_bp_read_unlock();
    return same;
}

void name_table::unlink_locked(name_entry* e) noexcept {
    links* l = name_table_access::of(e);
    // Writers are serialised, so no one else can have deleted it.
    if (cds_lfht_del(ht_, &l->node) != 0) fatal("name_table: a listed entry was missing from the hash table");
    e->listed_ = false;
    size_.fetch_sub(1, std::memory_order_relaxed);
    if (e->name_.find('/') != std::string::npos) slashed_.fetch_sub(1, std::memory_order_relaxed);
    // Everything this writer did to the entry happens before table_released().
    tsan_release(l);
    // Readers already inside may still hold it: table_released() waits for them to leave.
    urcu_bp_call_rcu(&l->rcu, &name_table_access::released);
}

void name_table::wait_for_releases() noexcept { name_table_access::wait_for_releases(); }

name_table::lookup::lookup(const name_table& table, std::string_view name) noexcept {
    urcu_bp_read_lock();
    entry = table.find(name);
}

name_table::lookup::~lookup() {
    // Whatever the caller's function did to the entry happens before its table_released().
    if (entry) tsan_release(name_table_access::of(entry));
    urcu_bp_read_unlock();
}

name_entry* name_table::find(std::string_view name) const noexcept {
    cds_lfht_iter it;
    cds_lfht_lookup(ht_, name_table_access::hash(name), &name_table_access::match, &name, &it);
    cds_lfht_node* n = cds_lfht_iter_get_node(&it);
    // match() acquired the entry on this thread already.
    return n ? name_table_access::of(n)->owner : nullptr;
}

void name_table::visit(void (*fn)(void*, name_entry&), void* ctx) const {
    urcu_bp_read_lock();
    // Unlocked even when fn throws.
    struct unlock_on_exit {
        ~unlock_on_exit() { urcu_bp_read_unlock(); }
    } unlock;
    cds_lfht_iter it;
    cds_lfht_node* n;
    cds_lfht_for_each(ht_, &it, n) {
        links* l = name_table_access::of(n);
        tsan_acquire(l);
        // Released even when fn throws.
        struct release_on_exit {
            links* l;
            ~release_on_exit() { tsan_release(l); }
        } guard{l};
        fn(ctx, *l->owner);
    }
}

}  // namespace mailroom::internal
