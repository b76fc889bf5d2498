//
// src/small_mutex.cpp: the contended paths of detail::small_mutex.
//

#include <serq/detail/small_mutex.hpp>

#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SERQ_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SERQ_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define SERQ_CPU_RELAX() ((void)0)
#endif

SERQ_NAMESPACE_BEGIN
namespace detail {

namespace {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "small_mutex sleeps on the address of its state word");

// Sleeps while *state == value (or returns at once if it no longer is).
void sleep_while(std::atomic<std::uint32_t>& state, std::uint32_t value) noexcept {
#if defined(__linux__)
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state), FUTEX_WAIT_PRIVATE, value,
            nullptr, nullptr, 0);
#else
  (void)state;
  (void)value;
  std::this_thread::yield();
#endif
}

void wake(std::atomic<std::uint32_t>& state) noexcept {
#if defined(__linux__)
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state), FUTEX_WAKE_PRIVATE, 1, nullptr,
            nullptr, 0);
#else
  (void)state;
#endif
}

// How often a waiter looks again before it sleeps: the holder only updates
// a few fields, so a short spin usually sees the lock free.
constexpr int spin_limit = 100;

}  // namespace

void small_mutex::lock_slow() noexcept {
  for (int i = 0; i < spin_limit; ++i) {
    SERQ_CPU_RELAX();
    std::uint32_t expected = 0;
    if (state_.load(std::memory_order_relaxed) == 0 &&
        state_.compare_exchange_weak(expected, 1, std::memory_order_acquire,
                                     std::memory_order_relaxed))
      return;
  }
  // Mark the lock as having sleepers (2) and sleep until it is free. Taking
  // it with 2 makes its unlock wake the next sleeper, if there is one.
  while (state_.exchange(2, std::memory_order_acquire) != 0)
    sleep_while(state_, 2);
}

void small_mutex::wake_one() noexcept {
  wake(state_);
}

}  // namespace detail
SERQ_NAMESPACE_END
