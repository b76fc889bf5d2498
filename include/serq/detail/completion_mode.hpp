//
// serq/detail/completion_mode.hpp
//

#ifndef SERQ_DETAIL_COMPLETION_MODE_HPP
#define SERQ_DETAIL_COMPLETION_MODE_HPP

#include <serq/config.hpp>

SERQ_NAMESPACE_BEGIN
namespace detail {

// How a completion reaches its handler.
enum class completion_mode : unsigned char {
  // The result of an operation: invoked here when already on the handler's
  // executor, dispatched to it otherwise.
  dispatch,
  // From a call that must not run the handler (cancel(), a destructor, a
  // cancellation signal): posted to the I/O object's executor, and from
  // there dispatched to the handler's if it has its own.
  post,
  // From inside the initiating function, which completes at once: through
  // the handler's associated immediate executor (Asio 1.28 and later; by
  // default the I/O object's executor, never blocking), else posted.
  immediate,
  // The result of an operation, from a thread known to run the handler's
  // executor (the queue's, already checked): invoked here.
  invoke,
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_COMPLETION_MODE_HPP
