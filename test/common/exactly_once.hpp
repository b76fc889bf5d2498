//
// test/common/exactly_once.hpp
//
// Checks the first async rule: every completion handler is invoked exactly
// once, or destroyed without ever being invoked (when its context is
// destroyed), never both, never twice, never forgotten.
//
//   serq_test::handler_tracker tr;            // declare before the io_context
//   q.async_enqueue(op, tr.wrap([&](error_code ec) { ... }));
//   ioc.run();
//   BOOST_TEST(tr.invoked() == 1);
//   // at the end of tr's scope: every wrapped handler must be accounted for
//
// A wrapped handler forwards every associator of the inner handler (associated
// executor, allocator, cancellation slot, immediate executor where present)
// through net::associator, so wrapping does not change where or how the
// library runs it.
//
// Counters are atomic: handlers may be invoked and destroyed on any thread.
// Boost.Test is not thread-safe, so violations seen on other threads (a
// second invocation) are recorded and reported by check_all_accounted(), which
// must be called, like the destructor, on the test's main thread.
//

#ifndef SERQ_TEST_COMMON_EXACTLY_ONCE_HPP
#define SERQ_TEST_COMMON_EXACTLY_ONCE_HPP

#include "common/net.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

namespace serq_test {

namespace detail {

struct tracker_state {
  std::atomic<std::size_t> wrapped{0};
  std::atomic<std::size_t> invoked{0};
  std::atomic<std::size_t> destroyed_uninvoked{0};
  std::atomic<std::size_t> invoked_twice{0};
};

// Invocations of a moved-from wrapper (which owns no record): process-wide,
// checked by every tracker.
inline std::atomic<std::size_t> moved_from_invocations{0};

// The per-handler record, shared by a handler and its moves' bookkeeping.
struct handler_record {
  std::shared_ptr<tracker_state> state;
  std::atomic<int> calls{0};
};

}  // namespace detail

/// A completion handler wrapper that reports to a handler_tracker.
template <class Handler>
class tracked_handler {
 public:
  template <class H>
  tracked_handler(H&& h, std::shared_ptr<detail::handler_record> rec)
      : inner_(std::forward<H>(h)), rec_(std::move(rec)) {}

  tracked_handler(tracked_handler&& other) noexcept(std::is_nothrow_move_constructible_v<Handler>)
      : inner_(std::move(other.inner_)), rec_(std::move(other.rec_)) {}

  tracked_handler& operator=(tracked_handler&&) = delete;
  tracked_handler(const tracked_handler&) = delete;
  tracked_handler& operator=(const tracked_handler&) = delete;

  ~tracked_handler() {
    // Only the object that still owns the record (not a moved-from shell)
    // decides whether the handler was lost.
    if (rec_ && rec_->calls.load() == 0)
      ++rec_->state->destroyed_uninvoked;
  }

  template <class... Args>
  void operator()(Args&&... args) {
    if (!rec_) {
      ++detail::moved_from_invocations;
      return;
    }
    if (rec_->calls.fetch_add(1) == 0)
      ++rec_->state->invoked;
    else
      ++rec_->state->invoked_twice;
    std::move(inner_)(std::forward<Args>(args)...);
  }

  const Handler& inner() const noexcept { return inner_; }

 private:
  Handler inner_;
  std::shared_ptr<detail::handler_record> rec_;
};

/// Hands out tracked handlers and checks, at the end of its scope, that each
/// was invoked exactly once or destroyed without being invoked.
/**
 * Declare the tracker before the io_context (so it is destroyed after it):
 * handlers still queued in a context are only destroyed with the context.
 */
class handler_tracker {
 public:
  handler_tracker() : state_(std::make_shared<detail::tracker_state>()) {}
  handler_tracker(const handler_tracker&) = delete;
  handler_tracker& operator=(const handler_tracker&) = delete;

  ~handler_tracker() { check_all_accounted(); }

  /// Wraps h; the wrapper must be invoked at most once.
  template <class Handler>
  tracked_handler<std::decay_t<Handler>> wrap(Handler&& h) {
    auto rec = std::make_shared<detail::handler_record>();
    rec->state = state_;
    ++state_->wrapped;
    return tracked_handler<std::decay_t<Handler>>(std::forward<Handler>(h), std::move(rec));
  }

  /// Handlers handed out by wrap().
  std::size_t wrapped() const noexcept { return state_->wrapped; }
  /// Handlers invoked (each counted once, however often it was invoked).
  std::size_t invoked() const noexcept { return state_->invoked; }
  /// Handlers destroyed without ever being invoked.
  std::size_t destroyed_uninvoked() const noexcept { return state_->destroyed_uninvoked; }
  /// Second and later invocations of a handler: always a bug.
  std::size_t invoked_twice() const noexcept { return state_->invoked_twice; }
  /// Handlers neither invoked nor destroyed yet.
  std::size_t pending() const noexcept {
    return state_->wrapped - state_->invoked - state_->destroyed_uninvoked;
  }

  /// Fails the current test unless every wrapped handler was invoked exactly
  /// once or destroyed uninvoked, and none was invoked twice.
  void check_all_accounted() const {
    BOOST_TEST(state_->invoked_twice.load() == 0u, "a handler was invoked more than once");
    BOOST_TEST(pending() == 0u, "handlers neither invoked nor destroyed");
    BOOST_TEST(detail::moved_from_invocations.load() == 0u, "a moved-from handler was invoked");
  }

 private:
  std::shared_ptr<detail::tracker_state> state_;
};

}  // namespace serq_test

// Every associator (executor, allocator, cancellation slot, ...) of a tracked
// handler is that of the handler it wraps.
template <template <class, class> class Associator, class Handler, class DefaultCandidate>
struct net::associator<Associator, serq_test::tracked_handler<Handler>, DefaultCandidate> {
  using type = typename Associator<Handler, DefaultCandidate>::type;

  static type get(const serq_test::tracked_handler<Handler>& h) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.inner());
  }

  static auto get(const serq_test::tracked_handler<Handler>& h, const DefaultCandidate& c) noexcept
      -> decltype(Associator<Handler, DefaultCandidate>::get(h.inner(), c)) {
    return Associator<Handler, DefaultCandidate>::get(h.inner(), c);
  }
};

#endif  // SERQ_TEST_COMMON_EXACTLY_ONCE_HPP
