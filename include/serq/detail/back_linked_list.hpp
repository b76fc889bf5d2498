//
// serq/detail/back_linked_list.hpp
//
// The FIFO behind a queue's waiting entries and a writer's requests.
//

#ifndef SERQ_DETAIL_BACK_LINKED_LIST_HPP
#define SERQ_DETAIL_BACK_LINKED_LIST_HPP

#include <serq/config.hpp>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// A FIFO of nodes linked through their next_ pointer only, so a node costs
// one pointer of links. The back link that unlinking from the middle needs is
// kept in the node's canceller (Node::canceller_->prev_): only a node whose
// handler has a cancellation slot is taken out of the middle at random; any
// other is unlinked by a caller that knows its predecessor, or found by a
// walk. Owns nothing. Node and its canceller befriend this template.
template <class Node>
class back_linked_list {
 public:
  back_linked_list() = default;
  back_linked_list(back_linked_list&& o) noexcept
      : front_(std::exchange(o.front_, nullptr)), back_(std::exchange(o.back_, nullptr)) {}
  // Swaps: the nodes this list held leave with o.
  back_linked_list& operator=(back_linked_list&& o) noexcept {
    std::swap(front_, o.front_);
    std::swap(back_, o.back_);
    return *this;
  }

  bool empty() const noexcept { return front_ == nullptr; }
  Node* front() const noexcept { return front_; }

  void push_back(Node* n) noexcept {
    n->next_ = nullptr;
    set_prev(n, back_);
    if (back_)
      back_->next_ = n;
    else
      front_ = n;
    back_ = n;
  }

  void push_front(Node* n) noexcept {
    n->next_ = front_;
    set_prev(n, nullptr);
    if (front_)
      set_prev(front_, n);
    else
      back_ = n;
    front_ = n;
  }

  Node* pop_front() noexcept {
    Node* n = front_;
    if (n)
      unlink(n, nullptr);
    return n;
  }

  // Unlinks n, whose predecessor in this list is prev (null: n is the front).
  void unlink(Node* n, Node* prev) noexcept {
    Node* next = n->next_;
    if (prev)
      prev->next_ = next;
    else
      front_ = next;
    if (next)
      set_prev(next, prev);
    else
      back_ = prev;
    n->next_ = nullptr;
    set_prev(n, nullptr);
  }

  // Unlinks n: through its canceller's back link, else by a walk.
  void unlink(Node* n) noexcept {
    Node* prev = nullptr;
    if (n->canceller_) {
      prev = n->canceller_->prev_;
    } else {
      for (Node* m = front_; m != n; m = m->next_)
        prev = m;
    }
    unlink(n, prev);
  }

  // Moves every node out, leaving this list empty.
  back_linked_list take() noexcept { return back_linked_list(std::move(*this)); }

 private:
  static void set_prev(Node* n, Node* prev) noexcept {
    if (n->canceller_)
      n->canceller_->prev_ = prev;
  }

  Node* front_ = nullptr;
  Node* back_ = nullptr;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_BACK_LINKED_LIST_HPP
