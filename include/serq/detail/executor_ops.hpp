//
// serq/detail/executor_ops.hpp
//
// Running-in checks and posts on an executor, minus any_io_executor's type
// erasure when it wraps a plain io_context executor (the usual case).
//

#ifndef SERQ_DETAIL_EXECUTOR_OPS_HPP
#define SERQ_DETAIL_EXECUTOR_OPS_HPP

#include <serq/config.hpp>

#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

template <class T, class = void>
struct has_running_in_this_thread : std::false_type {};
template <class T>
struct has_running_in_this_thread<
    T, std::void_t<decltype(std::declval<const T&>().running_in_this_thread())>> : std::true_type {
};

// True when the calling thread may run ex's functions inline, which is what
// dispatch would find out, minus the type erasure and function wrapping it
// costs on any_io_executor. False when it cannot tell.
template <class Executor>
bool running_in(const Executor& ex) noexcept {
  if constexpr (has_running_in_this_thread<Executor>::value) {
    return ex.running_in_this_thread();
  } else if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    using io_executor = net::io_context::executor_type;
    if (const auto* e = ex.template target<io_executor>())
      return e->running_in_this_thread();
    if (const auto* s = ex.template target<net::strand<io_executor>>())
      return s->running_in_this_thread();
    if (const auto* s = ex.template target<net::strand<net::any_io_executor>>())
      return s->running_in_this_thread();  // make_strand of a socket's executor
    return false;
  } else {
    return false;
  }
}

// asio::post, minus any_io_executor's type-erased require/prefer chain when
// it wraps a plain io_context executor (the usual case): about a fifth of a
// one-step operation's cost in the queue benchmark.
template <class Executor, class Function>
void post_to(const Executor& ex, Function&& f) {
  if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    if (const auto* e = ex.template target<net::io_context::executor_type>()) {
      net::post(*e, std::forward<Function>(f));
      return;
    }
  }
  net::post(ex, std::forward<Function>(f));
}

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_EXECUTOR_OPS_HPP
