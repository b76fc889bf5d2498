//
// test/common/counting_allocator.hpp
//
// A std-conforming allocator that counts what goes through it in a counter
// shared by all its copies and rebinds, so a test can bind it to a handler
// (net::bind_allocator) and assert that the library actually used the
// handler's associated allocator and gave every byte back.
//

#ifndef SERQ_TEST_COMMON_COUNTING_ALLOCATOR_HPP
#define SERQ_TEST_COMMON_COUNTING_ALLOCATOR_HPP

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>

namespace serq_test {

/// Totals of one family of counting_allocator copies. Thread-safe.
struct allocation_counter {
  std::atomic<std::size_t> allocations{0};
  std::atomic<std::size_t> deallocations{0};
  std::atomic<std::size_t> bytes_allocated{0};
  std::atomic<std::size_t> bytes_deallocated{0};

  std::size_t outstanding() const noexcept { return allocations - deallocations; }
  std::size_t outstanding_bytes() const noexcept { return bytes_allocated - bytes_deallocated; }
};

/// Allocates with operator new and records every call in a shared counter.
/**
 * Copies and rebinds share the counter; two allocators compare equal when
 * they share it. The counter is held by shared_ptr so that copies stored in
 * handlers that outlive the test body stay valid.
 */
template <class T>
class counting_allocator {
 public:
  using value_type = T;

  explicit counting_allocator(std::shared_ptr<allocation_counter> counter) noexcept
      : counter_(std::move(counter)) {}

  template <class U>
  counting_allocator(const counting_allocator<U>& other) noexcept : counter_(other.counter()) {}

  T* allocate(std::size_t n) {
    T* p = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(alignof(T))));
    ++counter_->allocations;
    counter_->bytes_allocated += n * sizeof(T);
    return p;
  }

  void deallocate(T* p, std::size_t n) noexcept {
    ++counter_->deallocations;
    counter_->bytes_deallocated += n * sizeof(T);
    ::operator delete(
        p, std::align_val_t(alignof(T)));  // unsized: clang has no sized delete by default
  }

  const std::shared_ptr<allocation_counter>& counter() const noexcept { return counter_; }

  friend bool operator==(const counting_allocator& a, const counting_allocator& b) noexcept {
    return a.counter_ == b.counter_;
  }

 private:
  std::shared_ptr<allocation_counter> counter_;
};

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_COUNTING_ALLOCATOR_HPP
