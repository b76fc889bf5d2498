//
// serq/detail/core_ref.hpp
//
// An owning reference to a queue's core. The core counts its references
// itself, in four bytes beside its lock, instead of in a shared_ptr's control
// block (16 bytes) plus enable_shared_from_this (16 bytes more): a queue's
// idle cost is its core.
//

#ifndef SERQ_DETAIL_CORE_REF_HPP
#define SERQ_DETAIL_CORE_REF_HPP

#include <serq/config.hpp>

#include <cstddef>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

class queue_core;

// Defined in libserq; the last release destroys the core.
void core_add_ref(queue_core* c) noexcept;
void core_release(queue_core* c) noexcept;

class core_ref {
 public:
  core_ref() noexcept = default;
  core_ref(std::nullptr_t) noexcept {}
  // Adds a reference to c (a fresh core starts with none).
  explicit core_ref(queue_core* c) noexcept : c_(c) {
    if (c_)
      core_add_ref(c_);
  }
  core_ref(const core_ref& o) noexcept : core_ref(o.c_) {}
  core_ref(core_ref&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  core_ref& operator=(core_ref o) noexcept {
    std::swap(c_, o.c_);
    return *this;
  }
  ~core_ref() {
    if (c_)
      core_release(c_);
  }

  // Takes over a reference the caller holds (see detach).
  static core_ref adopt(queue_core* c) noexcept {
    core_ref r;
    r.c_ = c;
    return r;
  }
  // Gives the reference up without releasing it: the caller holds it now.
  queue_core* detach() noexcept { return std::exchange(c_, nullptr); }

  void reset() noexcept { core_ref().swap(*this); }
  void swap(core_ref& o) noexcept { std::swap(c_, o.c_); }

  queue_core* get() const noexcept { return c_; }
  queue_core& operator*() const noexcept { return *c_; }
  queue_core* operator->() const noexcept { return c_; }
  explicit operator bool() const noexcept { return c_ != nullptr; }
  friend bool operator==(const core_ref& r, std::nullptr_t) noexcept { return r.c_ == nullptr; }
  friend bool operator!=(const core_ref& r, std::nullptr_t) noexcept { return r.c_ != nullptr; }

 private:
  queue_core* c_ = nullptr;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_CORE_REF_HPP
