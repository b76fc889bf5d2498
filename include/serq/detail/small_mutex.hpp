//
// serq/detail/small_mutex.hpp
//
// The lock of a queue's and a writer's shared state: four bytes instead of
// std::mutex's forty, and an uncontended lock and unlock of one atomic
// instruction each, inline, instead of two calls into libc. serq holds it
// mostly for a few list and counter updates (the exceptions: a queue entry's
// launch holds its canceller's; a writer holds its own while it starts a
// stream write or emits cancellation to a stream operation), so contention
// is short: a waiter spins briefly, then sleeps on a futex. The
// three-state protocol is the one of Drepper's "Futexes Are Tricky" (mutex
// 3): 0 free, 1 held, 2 held with sleepers. Where there is no futex (not
// Linux), it is std::mutex.
//

#ifndef SERQ_DETAIL_SMALL_MUTEX_HPP
#define SERQ_DETAIL_SMALL_MUTEX_HPP

#include <serq/config.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>

SERQ_NAMESPACE_BEGIN
namespace detail {

#if defined(__linux__)

class small_mutex {
 public:
  small_mutex() noexcept = default;
  small_mutex(const small_mutex&) = delete;
  small_mutex& operator=(const small_mutex&) = delete;

  void lock() noexcept {
    std::uint32_t expected = 0;
    if (!state_.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                        std::memory_order_relaxed))
      lock_slow(state_);
  }

  bool try_lock() noexcept {
    std::uint32_t expected = 0;
    return state_.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() noexcept {
    // The address is taken first: once the state is 0 another thread may
    // take the lock and destroy this object, and the wake-up needs only the
    // address (a stray wake-up is harmless).
    std::atomic<std::uint32_t>* state = &state_;
    if (state->exchange(0, std::memory_order_release) == 2)
      wake_one(state);
  }

 private:
  // src/small_mutex.cpp
  static void lock_slow(std::atomic<std::uint32_t>& state) noexcept;
  static void wake_one(std::atomic<std::uint32_t>* state) noexcept;

  std::atomic<std::uint32_t> state_{0};
};

#else

class small_mutex {
 public:
  void lock() { m_.lock(); }
  bool try_lock() { return m_.try_lock(); }
  void unlock() noexcept { m_.unlock(); }

 private:
  std::mutex m_;
};

#endif

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_SMALL_MUTEX_HPP
