//
// serq/detail/handler_alloc.hpp
//
// Intermediate storage for an operation comes from its handler's associated
// allocator; when that is std::allocator, from Asio's per-thread recycling
// allocator instead, so a steady stream of operations does not hit malloc,
// or, for a few kinds of node, from a block of serq's own kept per thread
// (own_block).
//

#ifndef SERQ_DETAIL_HANDLER_ALLOC_HPP
#define SERQ_DETAIL_HANDLER_ALLOC_HPP

#include <cstddef>
#include <memory>
#include <serq/config.hpp>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// Blocks serq keeps apart from Asio's recycling allocator, whose per-thread
// cache of two blocks the user's handlers, Asio's operations and a strand's
// own operations compete for: a writer's pump entry in its queue (and what
// the queue posts for it), the stream operation of a writer's write_some
// (the allocator its handler is associated with), and a queue entry whose
// handler has the default allocator (node_storage_of). Each kind has a slot
// of one block per thread: an allocation takes its block when it is of the
// very size asked, else one from Asio's recycling allocator, as every
// handler's is; a block given back takes the slot when it is empty or holds
// another size (which goes back to the recycling allocator: the last size
// given back is the one the thread uses now), else goes back to the
// recycling allocator. A writer that goes idle between messages took three
// allocations a message when the four blocks shared that cache, a queue on
// a strand two an operation. What a slot holds is freed when its thread
// ends (src/writer_core.cpp).
enum class own_block : unsigned char { pump_entry = 0, stream_op = 1, queue_entry = 2 };
inline constexpr std::size_t own_block_kinds = 3;

void* allocate_own_block(own_block kind, std::size_t size);
void deallocate_own_block(own_block kind, void* p, std::size_t size) noexcept;

template <class T, own_block Kind>
class own_block_allocator {
 public:
  using value_type = T;
  template <class U>
  struct rebind {
    using other = own_block_allocator<U, Kind>;
  };

  own_block_allocator() noexcept = default;
  template <class U>
  own_block_allocator(const own_block_allocator<U, Kind>&) noexcept {}

  // A slot's block has the alignment of operator new (Asio's recycling
  // allocator aligns no block less); a T that needs more bypasses the slot.
  T* allocate(std::size_t n) {
    if constexpr (alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__)
      return recycling().allocate(n);
    else
      return static_cast<T*>(allocate_own_block(Kind, n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if constexpr (alignof(T) > __STDCPP_DEFAULT_NEW_ALIGNMENT__)
      recycling().deallocate(p, n);
    else
      deallocate_own_block(Kind, p, n * sizeof(T));
  }

  // Every one of a Kind uses the same slots: all compare equal, rebound or not.
  template <class U>
  friend bool operator==(const own_block_allocator&, const own_block_allocator<U, Kind>&) noexcept {
    return true;
  }
  template <class U>
  friend bool operator!=(const own_block_allocator&, const own_block_allocator<U, Kind>&) noexcept {
    return false;
  }

 private:
  static net::detail::recycling_allocator<T, net::detail::thread_info_base::default_tag>
  recycling() noexcept {
    return {};
  }
};

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

// The storage of a Node for handler h: node_allocator(h), unless Node names
// its own (storage_type and a static storage_of(h), as a queue entry does).
// Nodes are allocated and freed with it.
template <class Node, class = void>
struct node_storage_of {
  template <class Handler>
  static node_allocator_t<Handler> get(const Handler& h) noexcept {
    return node_allocator(h);
  }
};
template <class Node>
struct node_storage_of<Node, std::void_t<typename Node::storage_type>> {
  template <class Handler>
  static typename Node::storage_type get(const Handler& h) noexcept {
    return Node::storage_of(h);
  }
};

// Allocates and constructs a Node with its storage for h (node_storage_of).
// h is read before any of args is consumed, so it may be passed again (as
// an rvalue) in args.
template <class Node, class Handler, class... Args>
Node* allocate_node(const Handler& h, Args&&... args) {
  const auto storage = node_storage_of<Node>::get(h);
  using traits =
      typename std::allocator_traits<std::decay_t<decltype(storage)>>::template rebind_traits<Node>;
  typename traits::allocator_type alloc(storage);
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
