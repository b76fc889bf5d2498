//
// serq/detail/intrusive_list.hpp
//

#ifndef SERQ_DETAIL_INTRUSIVE_LIST_HPP
#define SERQ_DETAIL_INTRUSIVE_LIST_HPP

#include <serq/config.hpp>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// Intrusive doubly linked FIFO over nodes that carry next_/prev_ pointers
// (and befriend this template): O(1) push, pop, and unlink from the
// middle (per-operation cancellation). Owns nothing: what a list of nodes
// does with nodes left in it is up to the code using it.
template <class Node>
class intrusive_list {
 public:
  intrusive_list() = default;
  intrusive_list(intrusive_list&& o) noexcept
      : front_(std::exchange(o.front_, nullptr)), back_(std::exchange(o.back_, nullptr)) {}
  // Swaps: the old nodes leave with o.
  intrusive_list& operator=(intrusive_list&& o) noexcept {
    std::swap(front_, o.front_);
    std::swap(back_, o.back_);
    return *this;
  }

  bool empty() const noexcept { return front_ == nullptr; }
  Node* front() const noexcept { return front_; }

  void push_back(Node* n) noexcept {
    n->next_ = nullptr;
    n->prev_ = back_;
    if (back_)
      back_->next_ = n;
    else
      front_ = n;
    back_ = n;
  }

  Node* pop_front() noexcept {
    Node* n = front_;
    if (n)
      unlink(n);
    return n;
  }

  void unlink(Node* n) noexcept {
    if (n->prev_)
      n->prev_->next_ = n->next_;
    else
      front_ = n->next_;
    if (n->next_)
      n->next_->prev_ = n->prev_;
    else
      back_ = n->prev_;
    n->next_ = n->prev_ = nullptr;
  }

  // Moves every node out, leaving this list empty.
  intrusive_list take() noexcept { return intrusive_list(std::move(*this)); }

 private:
  Node* front_ = nullptr;
  Node* back_ = nullptr;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_INTRUSIVE_LIST_HPP
