//
// src/small_mutex.cpp: the contended paths of detail::small_mutex (Linux).
//

#include <serq/detail/small_mutex.hpp>

#if defined(__linux__)

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(SYS_futex)
#define SERQ_SYS_FUTEX SYS_futex
#elif defined(SYS_futex_time64)
#define SERQ_SYS_FUTEX SYS_futex_time64  // 32-bit targets with only 64-bit time
#else
#error "serq: no futex system call on this Linux target"
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

std::uint32_t* futex_word(std::atomic<std::uint32_t>* state) noexcept {
  return reinterpret_cast<std::uint32_t*>(state);
}

// How often a waiter looks again before it sleeps: the holder only updates
// a few fields, so a short spin usually sees the lock free.
constexpr int spin_limit = 100;

}  // namespace

void small_mutex::lock_slow(std::atomic<std::uint32_t>& state) noexcept {
  for (int i = 0; i < spin_limit; ++i) {
    SERQ_CPU_RELAX();
    std::uint32_t expected = 0;
    if (state.load(std::memory_order_relaxed) == 0 &&
        state.compare_exchange_weak(expected, 1, std::memory_order_acquire,
                                    std::memory_order_relaxed))
      return;
  }
  // Mark the lock as having sleepers (2) and sleep until it is free. Taking
  // it with 2 makes its unlock wake the next sleeper, if there is one. The
  // futex returns at once if the word is no longer 2, and on a signal.
  while (state.exchange(2, std::memory_order_acquire) != 0)
    ::syscall(SERQ_SYS_FUTEX, futex_word(&state), FUTEX_WAIT_PRIVATE, 2u, nullptr, nullptr, 0);
}

void small_mutex::wake_one(std::atomic<std::uint32_t>* state) noexcept {
  ::syscall(SERQ_SYS_FUTEX, futex_word(state), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // __linux__
