#pragma once
// The named layer's extension point for the layer above it (net): a per-environment remote
// router that request() and send_to() consult when a name matches no local object, before the
// local `*`. The named layer knows nothing of nodes or peers: it hands the router the name, the
// message and the request, and the router says whether it took them. Also the few operations
// on a request that a router needs (finish it with a remote answer, mark it handed to the wire),
// and a delivery to local objects only, for what arrives from elsewhere.

#include <mailroom/named/named.hpp>
#include <mailroom/env/env_core.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mailroom::internal {

/// Takes sends and requests to names that no local object has. Installed per environment.
class MAILROOM_EXPORT remote_router {
public:
    virtual ~remote_router();
    /// `name` matched no local object (called on the sender's thread, any thread, never under a
    /// lock of the named layer); `header` carries its source and reply-to (the destination is
    /// `name`, not repeated there). Returns false when the name is not the router's: `body` and
    /// `r` stay the caller's, which goes on to the local `*` or says no such object. Returns
    /// true when it took both (`body`'s reference and the caller's reference to `r`, which it
    /// finishes). For a one-way message (`r` null) it may raise an error for the sender (the
    /// message is then dropped, counted by the router).
    virtual bool route(std::string_view name, envelope_ref& body, request_core* r, const message_header& header,
                       bool wait_for_peer) = 0;
};

/// Installs `router` as `env`'s remote router; usage_error naming the environment when it has
/// one. Any thread.
MAILROOM_EXPORT void set_remote_router(env_core& env, std::shared_ptr<remote_router> router);
/// Removes `router` if it is the one installed. A send inside its route() at that moment holds
/// it (shared) until it returns: the router must answer such a late call itself (its node is
/// stopped).
MAILROOM_EXPORT void clear_remote_router(env_core& env, const remote_router* router) noexcept;

/// Finishes `r` (replied with `body`, taken over; rejected or abandoned with `why`). False when
/// it was final already (`body` is released). Any thread.
MAILROOM_EXPORT bool request_finish(request_core* r, request_state final, envelope* body, std::string why) noexcept;
/// posted -> transmitted (no effect once it moved on).
MAILROOM_EXPORT void request_mark_transmitted(request_core* r) noexcept;
/// The reply type its requester expects (empty for a request made by a router: any type).
MAILROOM_EXPORT message_type request_reply_type(const request_core* r) noexcept;
/// Its timeout as given (zero: none).
MAILROOM_EXPORT std::chrono::nanoseconds request_timeout(const request_core* r) noexcept;
/// Counts an answer that came for `r` after it was final (named_stats::replies_orphaned).
MAILROOM_EXPORT void request_count_orphan(request_core* r) noexcept;

/// A one-way message from another node, still encoded (never a request's: a router decodes
/// those itself, to answer a failure to the requester). A router delivers it as the body of a
/// local send; the named object's handler wrapper decodes it on the object's own thread, just
/// before the handler runs, so that what decoding allocates (a string, a vector) is allocated
/// and freed by one thread, and the router's I/O thread does not decode at all. The handler
/// sees only the decoded message; one that does not decode is reported by `decode` and never
/// reaches it. Dropped undelivered (no such object, a stopped environment), it is destroyed
/// without being decoded.
struct deferred_body {
    /// Payloads up to this size are kept in the envelope itself: one pool block, no heap.
    static constexpr std::size_t inline_capacity = 160;
    /// Decodes `bytes`, a payload of the router's type `type`, into a new envelope (a
    /// reference); on failure reports why (the router counts and logs it, naming `h.source` and
    /// `h.destination`) and returns nullptr. Never throws. Called on a worker thread of the
    /// environment, while it runs.
    using decode_fn = envelope* (*)(const void* type, void* context, std::span<const std::byte> bytes,
                                    const message_header& h) noexcept;

    deferred_body(decode_fn fn, const void* type, void* context, std::span<const std::byte> bytes)
        : decode(fn), type(type), context(context), size(bytes.size()) {
        std::byte* to = small;
        if (size > inline_capacity) {
            heap = std::make_unique<std::byte[]>(size);
            to = heap.get();
        }
        if (size) std::memcpy(to, bytes.data(), size);
    }
    std::span<const std::byte> bytes() const noexcept { return {heap ? heap.get() : small, size}; }

    decode_fn decode;
    const void* type;  ///< the router's: which type it is
    void* context;     ///< the router's: it must stay valid while the environment runs
    std::size_t size;
    std::unique_ptr<std::byte[]> heap;  ///< over inline_capacity
    std::byte small[inline_capacity];
};

/// A run of one-way messages from another node to one object, with one header (the same
/// source, destination and reply-to), still encoded: what a router delivers, as one delivery,
/// for the consecutive messages to one object that one network message (a BATCH) carried. The
/// named object's handler wrapper decodes them and hands them to the handler one by one, in
/// order, each as its own incoming (with its own id), on the object's thread, checking between
/// two that the object was not shut meanwhile. So a busy peer's messages cost its I/O thread
/// and the object's queue one operation per run rather than one per message. The environment's
/// counters still count each message: the delivery counts one (sent, then delivered or lost),
/// and the wrapper the others (sent, then delivered or lost); a run dropped whole counts them
/// sent and lost when it is freed, unless its router took it back (`taken`: no object had the
/// name, and the router counts them refused).
struct deferred_batch {
    struct item {
        const void* type;  ///< the router's: which type it is
        const std::byte* data;
        std::size_t size;
    };
    /// Lets go of what the payloads point into (the router's network message). Any thread.
    using release_fn = void (*)(void* owner) noexcept;

    /// Payloads point into `owner`'s memory, which `release(owner)` lets go of once the run is
    /// freed: the router does not copy them.
    deferred_batch(deferred_body::decode_fn fn, void* context, env_core* env, release_fn release, void* owner,
                   std::size_t messages)
        : decode(fn), context(context), env(env), release(release), owner(owner) {
        items.reserve(messages);
    }
    deferred_batch(const deferred_batch&) = delete;
    deferred_batch& operator=(const deferred_batch&) = delete;
    /// A run freed with messages nobody took (dropped with its delivery): counted sent and
    /// lost, all but the one its delivery's own outcome counts.
    ~deferred_batch() {
        if (!taken && items.size() > 1) {
            thread_counters& c = env->counters();
            thread_counters::bump(c.sent, items.size() - 1);
            thread_counters::bump(c.lost, items.size() - 1);
        }
        release(owner);
    }

    void add(const void* type, std::span<const std::byte> bytes) { items.push_back({type, bytes.data(), bytes.size()}); }
    std::size_t size() const noexcept { return items.size(); }
    std::span<const std::byte> bytes(std::size_t i) const noexcept { return {items[i].data, items[i].size}; }

    deferred_body::decode_fn decode;
    void* context;  ///< the router's: it must stay valid while the environment runs
    env_core* env;  ///< whose counters count the messages
    release_fn release;
    void* owner;
    std::vector<item> items;
    bool taken = false;  ///< the wrapper (or the router) took the messages over and counts them
};

/// What a delivery to local objects only did.
enum class local_send : std::uint8_t { delivered, no_such_object, stopped };

/// Delivers to the local object `name` (or the local `*`), never to the router: for what
/// arrives from another node. Takes `body` and the caller's reference to `r` (a request that
/// finds nothing is rejected, one to a stopped environment abandoned). Never throws for an
/// outcome; `name` must be valid.
/// `messages` is how many messages `body` carries (a deferred_batch's size; 1 otherwise): they
/// take that many ids and count as that many named messages.
MAILROOM_EXPORT local_send send_named_local(env_core& env, std::string_view name, envelope* body, request_core* r,
                                            std::string source, std::string reply_to, std::size_t messages = 1);

}  // namespace mailroom::internal
