#pragma once
// A string-keyed table whose lookups take no lock: the foundation of the named-object registry.
//
// Readers run inside an RCU read-side critical section (liburcu's bulletproof flavour, so any
// thread may read without registering first) and walk liburcu's lock-free resizable hash table
// (rculfhash). Writers are serialised by a mutex. An entry that is removed is unlinked at once
// but reclaimed only after a grace period: liburcu's call_rcu thread calls its table_released()
// once every reader that could have seen it has left its read-side critical section.
//
// liburcu stays out of this header: the entry's links are opaque storage that name_table.cpp
// checks against liburcu's layout.

#include <mailroom/export.hpp>

#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

struct cds_lfht;

namespace mailroom::internal {

class name_table;
struct name_table_access;

/// What a name_table stores; the caller derives from it and decides what "released" means.
class MAILROOM_EXPORT name_entry {
public:
    /// An entry not yet in any table.
    explicit name_entry(std::string name);
    virtual ~name_entry();
    name_entry(const name_entry&) = delete;
    name_entry& operator=(const name_entry&) = delete;

    /// The key; fixed for the entry's life, so readers may use it without further synchronisation.
    const std::string& name() const noexcept { return name_; }

protected:
    /// Called once, on liburcu's call_rcu thread, after a grace period that followed remove():
    /// no reader can still see this entry. The derived class drops the table's reference here
    /// (and may delete itself). It must not block, must not wait for a grace period, and must
    /// not destroy a name_table or call name_table::wait_for_releases().
    virtual void table_released() noexcept = 0;

private:
    friend class name_table;
    friend struct name_table_access;

    // liburcu's cds_lfht_node and rcu_head plus a pointer back here (name_table.cpp).
    struct alignas(8) links_storage {
        std::byte bytes[40];
    };

    links_storage links_;
    std::string name_;
    // The table this entry was inserted in, set once (reset only when the insert failed):
    // an entry is listed at most once in its life, because its links carry the pending release.
    std::atomic<const name_table*> table_{nullptr};
    // Under that table's mutex.
    bool listed_ = false;
};

/// A set of name_entry keyed by name. Lookups (read, for_each) take no lock and allocate
/// nothing; insert and remove take a mutex. Removed entries are handed back through
/// name_entry::table_released() after every reader has left.
///
/// Any thread may call any member, without registering with liburcu. The table does not own
/// an entry until insert() succeeds; from then on it holds it until table_released().
class MAILROOM_EXPORT name_table {
public:
    name_table();
    /// Removes every entry and waits until each one's table_released() has run. No other call
    /// may be in progress on this table. Not from a read() or for_each() callback, nor from
    /// table_released().
    ~name_table();
    name_table(const name_table&) = delete;
    name_table& operator=(const name_table&) = delete;

    /// Lists `e` under its name; false (and the table does not own `e`) when the name is taken.
    /// Everything `e`'s constructor wrote is visible to the readers that find it. Throws
    /// usage_error when `e` is null or was already inserted (an entry is listed at most once).
    bool insert(name_entry* e);

    /// Unlinks the entry listed as `name`; its table_released() follows after a grace period.
    /// Returns it, or nullptr when no entry has that name. The pointer identifies the entry; it
    /// stays dereferenceable only while the caller holds a reference of its own.
    name_entry* remove(std::string_view name) noexcept;

    /// The same, by entry: false unless `e` is still listed in this table. `e` must not have
    /// been released yet (the caller holds a reference of its own); otherwise use the next one.
    bool remove(name_entry* e) noexcept;

    /// The same, by name and identity: unlinks the entry listed as `name` only if it is `e`.
    /// Never dereferences `e`, so an owner may call it when `e` may already have been removed
    /// (by someone else) and released; the caller must only rule out that a new entry was
    /// meanwhile inserted under `name` at the same address.
    bool remove(std::string_view name, const name_entry* e) noexcept;

    /// Calls `f(name_entry*)` with the entry listed as `name`, or with nullptr, inside one
    /// read-side critical section, and returns what `f` returns. Takes no lock, allocates
    /// nothing. The entry cannot be released while `f` runs; to keep it beyond, `f` takes a
    /// reference of its own (which table_released() will not wait for). `f` should be short:
    /// a reader that stays inside holds back every release in the process. `f` may call
    /// insert() and remove(), but not wait_for_releases() or the destructor (deadlock).
    template <class F>
    decltype(auto) read(std::string_view name, F&& f) const {
        const lookup found(*this, name);
        return std::forward<F>(f)(found.entry);
    }

    /// Number of entries listed (exact once writers are quiet).
    std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }

    /// Whether an entry listed has a '/' in its name: while none has, a name with one cannot be
    /// found here (the named layer then hands `node/object` names to a node without a lookup).
    /// A listing that happened before the call is seen.
    bool has_slashed() const noexcept { return slashed_.load(std::memory_order_relaxed) != 0; }

    /// Calls `f(name_entry&)` for each entry, under one read-side critical section: every
    /// entry listed throughout the walk is visited once; one inserted or removed meanwhile may
    /// or may not be. For statistics and teardown; the same rules as read() apply to `f`.
    template <class F>
    void for_each(F&& f) const {
        visit([](void* ctx, name_entry& e) { (*static_cast<std::remove_reference_t<F>*>(ctx))(e); },
              const_cast<void*>(static_cast<const void*>(&f)));
    }

    /// Blocks until table_released() has run for every entry removed (from any table) before
    /// the call. Not from a read() or for_each() callback, nor from table_released().
    void wait_for_releases() noexcept;

private:
    // One read-side critical section around one lookup: two calls per read(), no allocation.
    struct MAILROOM_EXPORT lookup {
        lookup(const name_table& table, std::string_view name) noexcept;  // read lock, then find
        ~lookup();                                                         // read unlock
        lookup(const lookup&) = delete;
        lookup& operator=(const lookup&) = delete;
        name_entry* entry;
    };

    // Inside a read-side critical section.
    name_entry* find(std::string_view name) const noexcept;
    void visit(void (*fn)(void*, name_entry&), void* ctx) const;
    // With mutex_ held, inside a read-side critical section.
    void unlink_locked(name_entry* e) noexcept;

    cds_lfht* ht_;
    std::mutex mutex_;
    std::atomic<std::size_t> size_{0};
    std::atomic<std::size_t> slashed_{0};  // entries listed whose name has a slash
};

}  // namespace mailroom::internal
