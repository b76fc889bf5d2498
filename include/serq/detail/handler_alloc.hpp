//
// serq/detail/handler_alloc.hpp
//
// Intermediate storage for an operation comes from its handler's associated
// allocator; when that is std::allocator, from Asio's per-thread recycling
// allocator instead, so a steady stream of operations does not hit malloc.
//

#ifndef SERQ_DETAIL_HANDLER_ALLOC_HPP
#define SERQ_DETAIL_HANDLER_ALLOC_HPP

#include <memory>
#include <serq/config.hpp>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

template <class Handler>
using node_allocator_t =
    typename net::detail::get_recycling_allocator<net::associated_allocator_t<Handler>,
                                                  net::detail::thread_info_base::default_tag>::type;

template <class Handler>
node_allocator_t<Handler> node_allocator(const Handler& h) noexcept {
  return net::detail::get_recycling_allocator<
      net::associated_allocator_t<Handler>,
      net::detail::thread_info_base::default_tag>::get(net::get_associated_allocator(h));
}

// Allocates and constructs a Node with h's allocator. h is read before any
// of args is consumed, so it may be passed again (as an rvalue) in args.
template <class Node, class Handler, class... Args>
Node* allocate_node(const Handler& h, Args&&... args) {
  using traits =
      typename std::allocator_traits<node_allocator_t<Handler>>::template rebind_traits<Node>;
  typename traits::allocator_type alloc(node_allocator(h));
  Node* p = traits::allocate(alloc, 1);
  try {
    return ::new (static_cast<void*>(p)) Node(std::forward<Args>(args)...);
  } catch (...) {
    traits::deallocate(alloc, p, 1);
    throw;
  }
}

template <class Node, class Alloc>
void deallocate_node(Node* p, const Alloc& a) noexcept {
  using traits = typename std::allocator_traits<Alloc>::template rebind_traits<Node>;
  typename traits::allocator_type alloc(a);
  p->~Node();
  traits::deallocate(alloc, p, 1);
}

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_HANDLER_ALLOC_HPP
