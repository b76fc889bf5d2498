//
// test/common/tracking_executor.hpp
//
// An executor that wraps another (by default an io_context's) and records
// what goes through it, so a test can assert that a handler ran on its
// associated executor, and how many functions the library submitted there.
//
//   auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
//   q.async_enqueue(op, net::bind_executor(tracked, [&](auto...) {
//     BOOST_TEST(tracked.running_in_this_thread());
//   }));
//
// It follows the standard executor model (execute, query, require; prefer
// falls back to require) and forwards every query and requirement the inner
// executor supports, so it converts to any_io_executor and works with
// executor_work_guard, post, dispatch and strands. Copies and every executor
// obtained from it with require/prefer share one tracking state.
//

#ifndef SERQ_TEST_COMMON_TRACKING_EXECUTOR_HPP
#define SERQ_TEST_COMMON_TRACKING_EXECUTOR_HPP

#include "common/net.hpp"

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace serq_test {

/// What a family of tracking_executor copies has seen. Thread-safe.
struct executor_tracking_state {
  /// Functions submitted with execute() (post, dispatch, defer, work done).
  std::atomic<std::size_t> executions{0};
  /// Functions that have finished running.
  std::atomic<std::size_t> completed{0};
  /// The next this many execute() calls throw std::bad_alloc instead (an
  /// executor that cannot allocate the function's operation).
  std::atomic<std::size_t> fail_next{0};
  /// Once armed, the next execute() call runs before_execute first (on the
  /// calling thread, before the function reaches the inner executor): a
  /// test's way into the moment between a decision and its post.
  std::function<void()> before_execute;
  std::atomic<bool> before_execute_armed{false};
  /// Executors made with require(outstanding_work.tracked): one per unit of
  /// outstanding work counted afresh (moving a tracked executor makes none).
  std::atomic<std::size_t> work_started{0};
};

namespace detail {

// The chain of tracking states whose functions the current thread is inside
// of, innermost first.
struct tracking_frame {
  const executor_tracking_state* state;
  const tracking_frame* outer;
};

inline thread_local const tracking_frame* tracking_top = nullptr;

// Runs f with the current thread marked as inside state's executor.
template <class Function>
class marked_function {
 public:
  template <class F>
  marked_function(F&& f, std::shared_ptr<executor_tracking_state> s)
      : f_(std::forward<F>(f)), state_(std::move(s)) {}

  void operator()() {
    tracking_frame frame{state_.get(), tracking_top};
    tracking_top = &frame;
    struct pop {
      const tracking_frame* outer;
      executor_tracking_state* state;
      ~pop() {
        tracking_top = outer;
        ++state->completed;
      }
    } popper{frame.outer, state_.get()};
    std::move(f_)();
  }

 private:
  Function f_;
  std::shared_ptr<executor_tracking_state> state_;
};

}  // namespace detail

/// An executor that counts and marks the functions it runs.
template <class Inner = net::io_context::executor_type>
class tracking_executor {
 public:
  using inner_executor_type = Inner;

  tracking_executor(const Inner& inner, std::shared_ptr<executor_tracking_state> state) noexcept
      : inner_(inner), state_(std::move(state)) {}

  /// The wrapped executor.
  const Inner& inner() const noexcept { return inner_; }
  /// The shared tracking state.
  const std::shared_ptr<executor_tracking_state>& state() const noexcept { return state_; }

  /// Number of functions submitted through this family of executors.
  std::size_t executions() const noexcept { return state_->executions; }

  /// True while the calling thread runs a function submitted through this
  /// family of executors (directly or nested).
  bool running_in_this_thread() const noexcept {
    for (auto* f = detail::tracking_top; f; f = f->outer)
      if (f->state == state_.get())
        return true;
    return false;
  }

  template <class Function>
  void execute(Function&& f) const {
    for (std::size_t n = state_->fail_next.load(); n != 0;)
      if (state_->fail_next.compare_exchange_weak(n, n - 1))
        throw std::bad_alloc();
    if (state_->before_execute_armed.exchange(false))
      state_->before_execute();
    ++state_->executions;
    inner_.execute(
        detail::marked_function<std::decay_t<Function>>(std::forward<Function>(f), state_));
  }

  template <class Property>
  requires net::can_query<const Inner&, const Property&>::value decltype(auto) query(
      const Property& p) const
      noexcept(net::is_nothrow_query<const Inner&, const Property&>::value) {
    return net::query(inner_, p);
  }

  template <class Property>
  requires net::can_require<const Inner&, const Property&>::value auto require(
      const Property& p) const {
    using other = std::decay_t<decltype(net::require(inner_, p))>;
    if constexpr (std::is_same_v<Property, net::execution::outstanding_work_t::tracked_t>)
      ++state_->work_started;
    return tracking_executor<other>(net::require(inner_, p), state_);
  }

  friend bool operator==(const tracking_executor& a, const tracking_executor& b) noexcept {
    return a.inner_ == b.inner_ && a.state_ == b.state_;
  }
  friend bool operator!=(const tracking_executor& a, const tracking_executor& b) noexcept {
    return !(a == b);
  }

 private:
  Inner inner_;
  std::shared_ptr<executor_tracking_state> state_;
};

/// Wraps ex in a tracking_executor with a fresh tracking state.
template <class Inner>
tracking_executor<Inner> make_tracking_executor(const Inner& ex) {
  return tracking_executor<Inner>(ex, std::make_shared<executor_tracking_state>());
}

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_TRACKING_EXECUTOR_HPP
