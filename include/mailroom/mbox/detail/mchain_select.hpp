#pragma once
// Template bodies of mchain.hpp: receive() and select() turn their handlers and cases into an
// array of type-erased cases on the caller's stack, and one out-of-line loop (run_select in
// src/mbox/mchain.cpp) does the waiting, the counting and the conditions. Included at the end
// of mchain.hpp.

#include <mailroom/mbox/mchain.hpp>
#include <mailroom/core/detail/callable.hpp>

#include <atomic>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace mailroom::internal {

/// One case's place in a chain's list of blocked threads (under the chain's lock).
struct mchain_wait_node {
    std::atomic<std::uint32_t>* word = nullptr;  // the blocked thread's futex word
    mchain_wait_node* prev = nullptr;
    mchain_wait_node* next = nullptr;
    bool linked = false;
    bool sender = false;  // on the list of senders waiting for room (else of receivers)
};

/// A case of select() (or the one case of receive()), as run_select() sees it.
struct select_case {
    const mchain* chain = nullptr;
    // A receive case: the index of the handler that takes `e`'s type, or -1; then runs it.
    int (*match)(void* ctx, envelope* e) noexcept = nullptr;
    void (*invoke)(void* ctx, int index, envelope* e) = nullptr;
    // A send case: its message (run_select owns it from the call on) and what runs once sent.
    envelope* to_send = nullptr;
    void (*on_sent)(void* ctx) = nullptr;
    void* ctx = nullptr;
    // run_select's own.
    bool done = false;
    mchain_wait_node node;
};

/// The loop of receive() and select(). Takes over the cases' messages.
MAILROOM_EXPORT receive_result run_select(const receive_params& params, select_case* cases, std::size_t n,
                                          bool is_select);

template <class F>
using handler_message_t = typename callable_signature<std::decay_t<F>>::message;

template <class F>
bool handler_takes(envelope* e) noexcept {
    using sig = callable_signature<std::decay_t<F>>;
    static_assert(sig::has_arg, "a receive handler takes its message: [](const Msg&) {...}");
    return e->type() == message_type_of<typename sig::message>();
}

template <class F>
void call_handler_with(F& f, envelope* e) {
    using sig = callable_signature<std::decay_t<F>>;
    call_with_payload<typename sig::message, typename sig::arg>(f, e);
}

/// The handlers of one receive case (references for receive(), copies for receive_case()).
template <class... F>
struct handler_set {
    std::tuple<F...> fs;

    static int match(void* self, envelope* e) noexcept {
        auto& s = *static_cast<handler_set*>(self);
        int found = -1;
        int i = 0;
        std::apply([&](auto&... f) { ((found < 0 && handler_takes<decltype(f)>(e) ? found = i : 0, ++i), ...); },
                   s.fs);
        return found;
    }
    static void invoke(void* self, int index, envelope* e) {
        auto& s = *static_cast<handler_set*>(self);
        int i = 0;
        std::apply([&](auto&... f) { ((i++ == index ? (call_handler_with(f, e), 0) : 0), ...); }, s.fs);
    }
    void fill(select_case& c, const mchain* chain) noexcept {
        c.chain = chain;
        c.match = &handler_set::match;
        c.invoke = &handler_set::invoke;
        c.ctx = this;
    }
};

template <class... F>
class receive_case_of {
public:
    receive_case_of(const mchain& chain, F... fs) : chain_(chain), set_{std::tuple<F...>(std::move(fs)...)} {}
    void fill(select_case& c) noexcept { set_.fill(c, &chain_); }

private:
    mchain chain_;
    handler_set<F...> set_;
};

template <class OnSent>
class send_case_of {
public:
    send_case_of(const mchain& chain, envelope* e, OnSent f) : chain_(chain), msg_(e), on_sent_(std::move(f)) {}
    void fill(select_case& c) noexcept {
        c.chain = &chain_;
        c.to_send = msg_.release();
        c.on_sent = [](void* self) { static_cast<send_case_of*>(self)->on_sent_(); };
        c.ctx = this;
    }

private:
    mchain chain_;
    envelope_ref msg_;
    OnSent on_sent_;
};

}  // namespace mailroom::internal

namespace mailroom {

template <class... Handlers>
receive_result receive(const receive_params& params, Handlers&&... handlers) {
    internal::handler_set<Handlers&...> set{std::tuple<Handlers&...>(handlers...)};
    internal::select_case c;
    set.fill(c, &params.chain());
    return internal::run_select(params, &c, 1, false);
}

template <class... Handlers>
receive_result receive(const mchain& chain, std::chrono::nanoseconds timeout, Handlers&&... handlers) {
    return receive(from(chain).extract_n(1).empty_timeout(timeout), std::forward<Handlers>(handlers)...);
}

template <class... Handlers>
auto receive_case(const mchain& chain, Handlers&&... handlers) {
    return internal::receive_case_of<std::decay_t<Handlers>...>(chain, std::forward<Handlers>(handlers)...);
}

template <class Msg, class OnSent>
auto send_case(const mchain& chain, Msg&& msg, OnSent&& on_sent) {
    using M = std::decay_t<Msg>;
    internal::envelope* e;
    if constexpr (is_signal_v<M>)
        e = internal::make_envelope<M>();
    else
        e = internal::make_envelope<M>(std::forward<Msg>(msg));
    return internal::send_case_of<std::decay_t<OnSent>>(chain, e, std::forward<OnSent>(on_sent));
}

template <class... Cases>
receive_result select(const receive_params& params, Cases&&... cases) {
    static_assert(sizeof...(Cases) > 0, "select() needs at least one receive_case or send_case");
    internal::select_case cs[sizeof...(Cases)];
    std::size_t i = 0;
    (cases.fill(cs[i++]), ...);
    return internal::run_select(params, cs, sizeof...(Cases), true);
}

}  // namespace mailroom
