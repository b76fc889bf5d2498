//
// test/bench/serq_bench.cpp
//
// serq against its peers, every case in one process, interleaved: see README.md beside this file.
//
//   serq_bench [--smoke] [--rounds R] [--scale F] [--json FILE]
//

#include "common/net.hpp"
#include "harness.hpp"
#include "peers.hpp"
#include "redis_case.hpp"

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <latch>
#include <limits>
#include <new>
#include <optional>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// ---- allocation counting ---------------------------------------------------------------------
//
// Every heap allocation of the program is counted: the malloc family is interposed here (wrapping
// glibc's own allocator through its exported __libc_* entry points, so the heap is unchanged and
// mallinfo2() still describes it), and operator new/delete go through it. Asio's recycling
// allocator calls aligned_alloc and free directly, so counting operator new alone would miss
// every block Asio allocates for entries, handlers and posted operations.
//
// The count is per thread, so counting costs no shared cache line in the multi-threaded cases; the
// allocation cases run on one thread. The memory cases (7, 8) also switch on a count of live
// bytes: malloc_usable_size() of every block allocated minus that of every block freed while it is
// on (global, so frees on other threads count too). It is off during the timed cases.
//
// Outside glibc, and under sanitizers (which bring their own malloc), only operator new is counted
// and the memory cases report no mallinfo2 figure.

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define SERQ_BENCH_MALLOC_HOOKS 0
#endif
#endif
#endif
#if !defined(SERQ_BENCH_MALLOC_HOOKS) && defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define SERQ_BENCH_MALLOC_HOOKS 1
#endif
#if !defined(SERQ_BENCH_MALLOC_HOOKS)
#define SERQ_BENCH_MALLOC_HOOKS 0
#endif

namespace {
thread_local std::size_t thread_allocations = 0;
std::atomic<bool> track_live_bytes{false};
std::atomic<long long> live_bytes{0};

inline bool tracking() noexcept {
  return track_live_bytes.load(std::memory_order_relaxed);
}

inline long long usable_size(void* p) noexcept {
#if defined(__GLIBC__)
  return static_cast<long long>(::malloc_usable_size(p));
#else
  (void)p;
  return 0;
#endif
}

inline void* note_alloc(void* p) noexcept {
  if (p) {
    ++thread_allocations;
    if (tracking())
      live_bytes.fetch_add(usable_size(p), std::memory_order_relaxed);
  }
  return p;
}

inline void note_free(void* p) noexcept {
  if (p && tracking())
    live_bytes.fetch_sub(usable_size(p), std::memory_order_relaxed);
}
}  // namespace

#if SERQ_BENCH_MALLOC_HOOKS
extern "C" {
void* __libc_malloc(std::size_t n) noexcept;
void* __libc_calloc(std::size_t count, std::size_t n) noexcept;
void* __libc_realloc(void* p, std::size_t n) noexcept;
void* __libc_memalign(std::size_t align, std::size_t n) noexcept;
void __libc_free(void* p) noexcept;
}

extern "C" {
void* malloc(std::size_t n) noexcept {
  return note_alloc(__libc_malloc(n));
}
void* calloc(std::size_t count, std::size_t n) noexcept {
  return note_alloc(__libc_calloc(count, n));
}
void* realloc(void* p, std::size_t n) noexcept {
  const bool track = p && tracking();
  const std::size_t old = track ? ::malloc_usable_size(p) : 0;
  void* q = __libc_realloc(p, n);
  // On failure p stays allocated, unless n was 0 (glibc then frees it).
  if (track && (q || n == 0))
    live_bytes.fetch_sub(static_cast<long long>(old), std::memory_order_relaxed);
  return note_alloc(q);
}
void* aligned_alloc(std::size_t align, std::size_t n) noexcept {
  return note_alloc(__libc_memalign(align, n));
}
void* memalign(std::size_t align, std::size_t n) noexcept {
  return note_alloc(__libc_memalign(align, n));
}
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
  if (align < sizeof(void*) || (align & (align - 1)) != 0)
    return EINVAL;
  void* p = __libc_memalign(align, n);
  if (!p)
    return ENOMEM;
  *out = note_alloc(p);
  return 0;
}
void free(void* p) noexcept {
  note_free(p);
  __libc_free(p);
}
}
#endif  // SERQ_BENCH_MALLOC_HOOKS

namespace {
// With the hooks, malloc itself counts; without them, operator new does.
inline void* counted(void* p) noexcept {
  return SERQ_BENCH_MALLOC_HOOKS ? p : note_alloc(p);
}

void* counted_alloc(std::size_t n) {
  if (void* p = counted(std::malloc(n ? n : 1)))
    return p;
  throw std::bad_alloc();
}

void* counted_aligned_alloc(std::size_t n, std::align_val_t a) {
  const auto al = static_cast<std::size_t>(a);
  if (void* p = counted(std::aligned_alloc(al, (n + al - 1) / al * al)))
    return p;
  throw std::bad_alloc();
}

void counted_delete(void* p) noexcept {
  if (!SERQ_BENCH_MALLOC_HOOKS)
    note_free(p);
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) {
  return counted_alloc(n);
}
void* operator new[](std::size_t n) {
  return counted_alloc(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_aligned_alloc(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_aligned_alloc(n, a);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return counted(std::malloc(n ? n : 1));
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return counted(std::malloc(n ? n : 1));
}
void operator delete(void* p) noexcept {
  counted_delete(p);
}
void operator delete[](void* p) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::size_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  counted_delete(p);
}

namespace serq_bench {
namespace {

using stream_socket = net::local::stream_protocol::socket;

std::size_t allocations_so_far() noexcept {
  return thread_allocations;
}

// Rethrows a coroutine's exception out of io_context::run.
struct rethrow {
  void operator()(std::exception_ptr e) const {
    if (e)
      std::rethrow_exception(e);
  }
};

template <class Token>
auto async_one_step(const net::any_io_executor& ex, Token&& token) {
  return net::async_initiate<Token, void(error_code)>(lean_step_op{&ex}, token);
}

// ---- a window of callback operations (cases 1, 4 with callbacks, 5)
// ------------------------------
//
// Keeps `window` operations in flight: every completion submits the next until n were submitted.
// Optionally notes the allocation count when `mark_at` operations have completed and when the last
// has, so a run can measure its own steady state (Asio's recycling caches live as long as the
// run() call) without its teardown.

template <class Submit>
class op_window {
 public:
  op_window(Submit submit, std::size_t n, std::size_t window, std::size_t mark_at)
      : submit_(std::move(submit)), n_(n), window_(window), mark_at_(mark_at) {}

  struct done_handler {
    op_window* w;
    template <class... Args>
    void operator()(error_code ec, Args&&...) const {
      w->on_done(ec);
    }
  };

  void start() {
    while (issued_ < window_ && issued_ < n_)
      submit_one();
  }

  std::size_t completed() const noexcept { return done_; }
  std::size_t allocations_after_mark() const noexcept { return end_ - mark_; }

 private:
  void submit_one() {
    ++issued_;
    submit_(done_handler{this});
  }

  void on_done(error_code ec) {
    if (ec)
      throw serq::system_error(ec, "serq_bench: operation failed");
    if (++done_ == mark_at_)
      mark_ = allocations_so_far();
    if (done_ == n_)
      end_ = allocations_so_far();
    if (issued_ < n_)
      submit_one();
  }

  Submit submit_;
  std::size_t n_;
  std::size_t window_;
  std::size_t mark_at_;
  std::size_t issued_ = 0;
  std::size_t done_ = 0;
  std::size_t mark_ = 0;
  std::size_t end_ = 0;
};

template <class Submit>
double time_window(net::io_context& ioc, std::size_t n, std::size_t window, Submit submit) {
  op_window<Submit> w(std::move(submit), n, window, std::numeric_limits<std::size_t>::max());
  const auto t0 = bench_clock::now();
  w.start();
  ioc.run();
  const double s = seconds_since(t0);
  if (w.completed() != n)
    throw std::logic_error("serq_bench: lost operations");
  return s;
}

// Steady-state allocations per operation: n operations, counting only those after the first warm.
template <class Submit>
alloc_result count_window(net::io_context& ioc, std::size_t n, std::size_t warm, std::size_t window,
                          Submit submit) {
  op_window<Submit> w(std::move(submit), n, window, warm);
  w.start();
  ioc.run();
  if (w.completed() != n)
    throw std::logic_error("serq_bench: lost operations");
  alloc_result r;
  r.allocations = w.allocations_after_mark();
  r.ops = n - warm;
  r.per_op = static_cast<double>(r.allocations) / static_cast<double>(r.ops);
  return r;
}

// ---- case 1: queue throughput, one thread
// --------------------------------------------------------

// serq_fat: serq default with an operation that holds an any_io_executor by value (case 6a only).
// serq_strand, hand_strand: the queue on a strand of the io_context (case 5 only).
enum class queue_kind { serq_default, serq_inline, serq_fat, serq_strand, hand, hand_strand, bare };

// Each returns the seconds of n one-step operations with `window` in flight (or, with count, the
// steady-state allocations).
template <class Body>
auto with_queue(queue_kind kind, Body&& body) {
  net::io_context ioc(1);
  net::any_io_executor ex = ioc.get_executor();
  switch (kind) {
    case queue_kind::serq_default: {
      serq::serialized_queue q(ioc);
      return body(ioc, [&q, &ex](auto h) {
        q.async_enqueue<void(error_code)>(lean_step_op{&ex}, std::move(h));
      });
    }
    case queue_kind::serq_fat: {
      serq::serialized_queue q(ioc);
      return body(ioc, [&q, ex](auto h) {
        q.async_enqueue<void(error_code)>(one_step_op{ex}, std::move(h));
      });
    }
    case queue_kind::serq_inline: {
      serq::serialized_queue q(ioc);
      return body(ioc, [&q, &ex](auto h) {
        q.async_enqueue<void(error_code)>(serq::trigger_inline, lean_step_op{&ex}, std::move(h));
      });
    }
    case queue_kind::serq_strand: {
      serq::serialized_queue q(net::make_strand(ioc));
      return body(ioc, [&q, &ex](auto h) {
        q.async_enqueue<void(error_code)>(lean_step_op{&ex}, std::move(h));
      });
    }
    case queue_kind::hand: {
      hand_queue<std::function<void(error_code)>> q(ex);
      return body(ioc, [&q](auto h) { q.async_enqueue(std::move(h)); });
    }
    case queue_kind::hand_strand: {
      hand_queue<std::function<void(error_code)>> q(net::make_strand(ioc));
      return body(ioc, [&q](auto h) { q.async_enqueue(std::move(h)); });
    }
    case queue_kind::bare:
    default:
      return body(ioc, [&ex](auto h) { lean_step_op{&ex}(std::move(h)); });
  }
}

bench_case queue_case(const std::string& id, std::size_t n, std::size_t window) {
  bench_case c;
  c.id = id;
  c.title = "queue throughput, 1 thread, " + std::to_string(n) + " one-step ops, " +
            std::to_string(window) + " in flight";
  c.ops = static_cast<double>(n);
  c.reference = "serq default";
  auto timed = [n, window](queue_kind k) {
    return [n, window, k] {
      return with_queue(k, [&](net::io_context& ioc, auto submit) {
        return time_window(ioc, n, window, std::move(submit));
      });
    };
  };
  c.variants = {{"serq default", timed(queue_kind::serq_default), {}},
                {"serq trigger_inline", timed(queue_kind::serq_inline), {}},
                {"hand-rolled queue", timed(queue_kind::hand), {}},
                {"bare post", timed(queue_kind::bare), {}}};
  return c;
}

// ---- case 10: what observability costs
// -----------------------------------------------------------
//
// The case 1 window with the queue's trace hooks in their three states (none, a no-op hook of the
// queue's own, a no-op default hook of the context), and with stats() read every 64 completions.
// The counters behind stats() are always on, so "no hook" is also the cost of counting; the
// figures before the counters existed are in the README (measured in one run beside these).

enum class observed { none, own_hook, default_hook, stats };

// Where the stats variant leaves what it read, so the reads are not optimized away.
std::size_t stats_sink = 0;

double time_observed(observed how, std::size_t n, std::size_t window) {
  net::io_context ioc(1);
  net::any_io_executor ex = ioc.get_executor();
  serq::serialized_queue q(ioc);
  std::size_t hook_calls = 0;
  auto noop = [&hook_calls](serq::trace_point, serq::entry_info&) { ++hook_calls; };
  if (how == observed::own_hook)
    q.set_trace_hook(noop);
  else if (how == observed::default_hook)
    serq::set_default_trace_hook(ioc, noop);
  std::size_t submitted = 0;
  std::size_t read_depth = 0;
  const double s = time_window(ioc, n, window, [&](auto h) {
    if (how == observed::stats && ++submitted % 64 == 0)
      read_depth += q.stats().depth;
    q.async_enqueue<void(error_code)>(lean_step_op{&ex}, std::move(h));
  });
  if ((how == observed::own_hook || how == observed::default_hook) && hook_calls != 4 * n)
    throw std::logic_error("serq_bench: trace hook not called 4 times per entry");
  if (how == observed::stats && q.stats().completed != n)
    throw std::logic_error("serq_bench: stats lost entries");
  stats_sink = read_depth;
  return s;
}

bench_case observability_case(const std::string& id, std::size_t n, std::size_t window) {
  bench_case c;
  c.id = id;
  c.title = "observability cost, 1 thread, " + std::to_string(n) + " one-step ops, " +
            std::to_string(window) + " in flight";
  c.ops = static_cast<double>(n);
  c.reference = "serq no hook";
  auto timed = [n, window](observed how) {
    return [n, window, how] { return time_observed(how, n, window); };
  };
  c.variants = {{"serq no hook", timed(observed::none), {}},
                {"serq no-op hook", timed(observed::own_hook), {}},
                {"serq no-op default hook", timed(observed::default_hook), {}},
                {"serq stats() every 64", timed(observed::stats), {}},
                {"hand-rolled queue",
                 [n, window] {
                   return with_queue(queue_kind::hand, [&](net::io_context& ioc, auto submit) {
                     return time_window(ioc, n, window, std::move(submit));
                   });
                 },
                 {}}};
  return c;
}

// ---- case 2: queue under contention
// --------------------------------------------------------------

// Two producer threads submit n operations in all, each keeping at most 64 in flight (a semaphore,
// the usual backpressure); two threads run the io_context.
template <class Submit>
double time_contended(net::io_context& ioc, std::size_t n, Submit submit) {
  constexpr std::ptrdiff_t per_producer_window = 64;
  using slots_type = std::counting_semaphore<per_producer_window>;
  struct done_handler {
    slots_type* slots;
    std::latch* done;
    void operator()(error_code) const {
      slots->release();
      done->count_down();
    }
  };
  slots_type slots[2] = {slots_type(per_producer_window), slots_type(per_producer_window)};
  std::latch done(static_cast<std::ptrdiff_t>(n));
  std::latch go(1);
  auto work = net::make_work_guard(ioc);
  std::thread io[2] = {std::thread([&] { ioc.run(); }), std::thread([&] { ioc.run(); })};
  auto produce = [&](int p) {
    go.wait();
    for (std::size_t i = static_cast<std::size_t>(p); i < n; i += 2) {
      slots[p].acquire();
      submit(done_handler{&slots[p], &done});
    }
  };
  std::thread producers[2] = {std::thread(produce, 0), std::thread(produce, 1)};
  const auto t0 = bench_clock::now();
  go.count_down();
  done.wait();
  const double s = seconds_since(t0);
  for (auto& t : producers)
    t.join();
  work.reset();
  for (auto& t : io)
    t.join();
  return s;
}

bench_case contention_case(std::size_t n) {
  bench_case c;
  c.id = "2";
  c.title = "queue under contention, 2 producer threads (64 in flight each), 2 io threads, " +
            std::to_string(n) + " one-step ops";
  c.ops = static_cast<double>(n);
  c.reference = "serq default";
  auto serq_variant = [n](bool inl) {
    return [n, inl] {
      net::io_context ioc(2);
      net::any_io_executor ex = ioc.get_executor();
      serq::serialized_queue q(ioc);
      if (inl)
        return time_contended(ioc, n, [&q, &ex](auto h) {
          q.async_enqueue<void(error_code)>(serq::trigger_inline, lean_step_op{&ex}, std::move(h));
        });
      return time_contended(ioc, n, [&q, &ex](auto h) {
        q.async_enqueue<void(error_code)>(lean_step_op{&ex}, std::move(h));
      });
    };
  };
  c.variants = {{"serq default", serq_variant(false), {}},
                {"serq trigger_inline", serq_variant(true), {}},
                {"hand-rolled queue (strand)",
                 [n] {
                   net::io_context ioc(2);
                   hand_queue<std::function<void(error_code)>> q(net::make_strand(ioc));
                   return time_contended(ioc, n, [&q](auto h) { q.async_enqueue(std::move(h)); });
                 },
                 {}},
                {"bare post",
                 [n] {
                   net::io_context ioc(2);
                   net::any_io_executor ex = ioc.get_executor();
                   return time_contended(ioc, n,
                                         [&ex](auto h) { lean_step_op{&ex}(std::move(h)); });
                 },
                 {}}};
  return c;
}

// ---- case 3: acquire / turn throughput from coroutines
// --------------------------------------------

constexpr std::size_t coroutines = 8;

net::awaitable<void> acquire_worker(serq::serialized_queue& q, std::size_t steps) {
  auto ex = co_await net::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i) {
    serq::turn t = co_await q.async_acquire(net::use_awaitable);
    co_await async_one_step(ex, net::use_awaitable);
  }
}

net::awaitable<void> enqueue_worker(serq::serialized_queue& q, std::size_t steps) {
  auto ex = co_await net::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i)
    co_await q.async_enqueue<void(error_code)>(lean_step_op{&ex}, net::use_awaitable);
}

net::awaitable<void> hand_worker(hand_queue<net::any_completion_handler<void(error_code)>>& q,
                                 std::size_t steps) {
  for (std::size_t i = 0; i < steps; ++i)
    co_await q.async_enqueue(net::use_awaitable);
}

net::awaitable<void> bare_worker(std::size_t steps) {
  auto ex = co_await net::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i)
    co_await async_one_step(ex, net::use_awaitable);
}

template <class Spawn>
double time_coroutines(Spawn spawn) {
  net::io_context ioc(1);
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < coroutines; ++i)
    spawn(ioc);
  ioc.run();
  return seconds_since(t0);
}

bench_case coroutine_case(std::size_t n) {
  bench_case c;
  c.id = "3";
  c.title = "turns from coroutines, 1 thread, " + std::to_string(coroutines) + " coroutines, " +
            std::to_string(n) + " one-step ops in all";
  c.ops = static_cast<double>(n);
  c.reference = "serq acquire + step + release";
  const std::size_t per = n / coroutines;
  c.variants = {
      {"serq acquire + step + release",
       [per] {
         std::unique_ptr<serq::serialized_queue> q;
         return time_coroutines([&](net::io_context& ioc) {
           if (!q)
             q = std::make_unique<serq::serialized_queue>(ioc);
           net::co_spawn(ioc, acquire_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"serq async_enqueue(use_awaitable)",
       [per] {
         std::unique_ptr<serq::serialized_queue> q;
         return time_coroutines([&](net::io_context& ioc) {
           if (!q)
             q = std::make_unique<serq::serialized_queue>(ioc);
           net::co_spawn(ioc, enqueue_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"hand-rolled queue (use_awaitable)",
       [per] {
         std::unique_ptr<hand_queue<net::any_completion_handler<void(error_code)>>> q;
         return time_coroutines([&](net::io_context& ioc) {
           if (!q)
             q = std::make_unique<hand_queue<net::any_completion_handler<void(error_code)>>>(
                 ioc.get_executor());
           net::co_spawn(ioc, hand_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"bare co_await post (no queue)",
       [per] {
         return time_coroutines(
             [&](net::io_context& ioc) { net::co_spawn(ioc, bare_worker(per), rethrow{}); });
       },
       {}}};
  return c;
}

// ---- case 4: writer throughput
// ----------------------------------------------------------------------

constexpr std::size_t producers = 64;

// A connected socket pair whose far end a reader thread drains until `expect` bytes arrived.
class wire {
 public:
  // on_strand: the sending socket's executor is a strand of the context (as a beast::tcp_stream
  // on a strand has), not the context's own.
  explicit wire(std::size_t expect, bool on_strand = false)
      : tx_(on_strand ? net::any_io_executor(net::make_strand(ioc_))
                      : net::any_io_executor(ioc_.get_executor())),
        rx_(ioc_) {
    net::local::connect_pair(tx_, rx_);
    reader_ = std::thread([fd = rx_.native_handle(), expect] {
      std::vector<char> buf(256 * 1024);
      std::size_t got = 0;
      while (got < expect) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n <= 0) {
          std::fprintf(stderr, "serq_bench: reader: read returned %zd\n", n);
          std::abort();
        }
        got += static_cast<std::size_t>(n);
      }
    });
  }
  wire(const wire&) = delete;
  wire& operator=(const wire&) = delete;
  ~wire() {
    if (reader_.joinable())
      reader_.join();
  }

  net::io_context& ioc() noexcept { return ioc_; }
  stream_socket& tx() noexcept { return tx_; }
  void wait_drained() { reader_.join(); }

 private:
  net::io_context ioc_{1};
  stream_socket tx_;
  stream_socket rx_;
  std::thread reader_;
};

// The payload: one message buffer per producer; message i is producer (i % 64)'s. The contiguous
// limit writes the 64 messages laid back to back, count / 64 times: the same bytes from a working
// set of the same size, so neither side gains from cache residency (one buffer of count * size
// bytes would stream 128 MiB from DRAM in the 64 KiB case and make the "limit" slower than serq).
struct payload {
  std::size_t size;
  std::size_t count;
  std::vector<std::vector<char>> messages;
  std::vector<char> contiguous;  // the 64 messages, back to back

  payload(std::size_t sz, std::size_t n) : size(sz), count(n), messages(producers) {
    for (std::size_t p = 0; p < producers; ++p)
      messages[p].assign(sz, static_cast<char>('a' + p % 26));
    contiguous.reserve(sz * producers);
    for (const auto& m : messages)
      contiguous.insert(contiguous.end(), m.begin(), m.end());
  }
  std::size_t bytes() const noexcept { return size * count; }
};

template <class Writer>
net::awaitable<void> write_producer(Writer& w, net::const_buffer msg, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i)
    co_await w.async_write(msg, net::use_awaitable);
}

double time_serq_writer(const payload& p, bool gathering) {
  wire conn(p.bytes());
  serq::queued_writer<stream_socket&> w(conn.tx());
  w.set_gathering(gathering);
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < producers; ++i)
    net::co_spawn(conn.ioc(), write_producer(w, net::buffer(p.messages[i]), p.count / producers),
                  rethrow{});
  conn.ioc().run();
  conn.wait_drained();
  return seconds_since(t0);
}

double time_hand_writer(const payload& p) {
  wire conn(p.bytes());
  hand_writer<stream_socket> w(conn.tx());
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < producers; ++i)
    net::co_spawn(conn.ioc(), write_producer(w, net::buffer(p.messages[i]), p.count / producers),
                  rethrow{});
  conn.ioc().run();
  conn.wait_drained();
  return seconds_since(t0);
}

double time_contiguous_limit(const payload& p) {
  wire conn(p.bytes());
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < p.count / producers; ++i)
    blocking_write_all(conn.tx().native_handle(), p.contiguous.data(), p.contiguous.size());
  conn.wait_drained();
  return seconds_since(t0);
}

double time_writev_limit(const payload& p) {
  wire conn(p.bytes());
  std::vector<iovec> iov(p.count);
  for (std::size_t i = 0; i < p.count; ++i)
    iov[i] = iovec{const_cast<char*>(p.messages[i % producers].data()), p.size};
  const auto t0 = bench_clock::now();
  blocking_writev_all(conn.tx().native_handle(), std::move(iov), 64);
  conn.wait_drained();
  return seconds_since(t0);
}

std::string size_name(std::size_t size) {
  return size >= 1024 ? std::to_string(size / 1024) + " KiB" : std::to_string(size) + " B";
}

bench_case writer_case(const std::string& id, std::size_t size, std::size_t count) {
  auto p = std::make_shared<payload>(size, count);
  bench_case c;
  c.id = id;
  c.title = "writer throughput, " + size_name(size) + " messages, " + std::to_string(count) +
            " messages from " + std::to_string(producers) + " coroutines, socketpair";
  c.ops = static_cast<double>(count);
  c.bytes = static_cast<double>(p->bytes());
  c.reference = "serq gathering on";
  c.variants = {{"serq gathering on", [p] { return time_serq_writer(*p, true); }, {}},
                {"serq gathering off", [p] { return time_serq_writer(*p, false); }, {}},
                {"hand-rolled writer", [p] { return time_hand_writer(*p); }, {}},
                {"limit: contiguous write", [p] { return time_contiguous_limit(*p); }, {}},
                {"limit: writev x64", [p] { return time_writev_limit(*p); }, {}}};
  return c;
}

// ---- case 5: steady-state allocations
// ---------------------------------------------------------------

alloc_result queue_allocations(queue_kind kind, std::size_t n, std::size_t window) {
  return with_queue(kind, [&](net::io_context& ioc, auto submit) {
    return count_window(ioc, n, n / 2, window, std::move(submit));
  });
}

// use_awaitable: `coros` coroutines each awaiting its own operations; counts from the completion of
// half of them to the moment the first coroutine has done its last (a coroutine's end allocates, to
// deliver co_spawn's completion, and is not steady state).
alloc_result awaitable_allocations(std::size_t n, std::size_t coros) {
  net::io_context ioc(1);
  serq::serialized_queue q(ioc);
  std::size_t done = 0;
  std::size_t mark = 0;
  std::size_t end = 0;
  std::size_t done_at_end = 0;
  const std::size_t warm = n / 2;
  auto worker = [&](std::size_t steps) -> net::awaitable<void> {
    auto ex = co_await net::this_coro::executor;
    for (std::size_t i = 0; i < steps; ++i) {
      co_await q.async_enqueue<void(error_code)>(lean_step_op{&ex}, net::use_awaitable);
      if (++done == warm)
        mark = allocations_so_far();
    }
    if (done_at_end == 0) {
      end = allocations_so_far();
      done_at_end = done;
    }
  };
  for (std::size_t i = 0; i < coros; ++i)
    net::co_spawn(ioc, worker(n / coros), rethrow{});
  ioc.run();
  if (done != n || done_at_end <= warm)
    throw std::logic_error("serq_bench: lost operations");
  alloc_result r;
  r.allocations = end - mark;
  r.ops = done_at_end - warm;
  r.per_op = static_cast<double>(r.allocations) / static_cast<double>(r.ops);
  return r;
}

// How the next writer message is queued once one completes.
enum class writer_pace {
  from_handler,  // from the completion handler: one pump carries them all
  // from a function the handler posts to the socket's executor: the writer goes idle between
  // messages (a server answering each request as it is read)
  idle_between,
  idle_between_on_strand  // the same, the socket's executor a strand (not the context's own)
};

// Writer messages with a callback token: `window` messages in flight, each completion writing
// the next, until n; counts after half were done.
alloc_result writer_allocations(std::size_t n, std::size_t window, bool serq_writer,
                                writer_pace pace = writer_pace::from_handler) {
  std::vector<char> msg(64, 'x');
  wire conn(n * msg.size(), pace == writer_pace::idle_between_on_strand);
  auto count = [&](auto& w) {
    auto write = [&](auto h) { w.async_write(net::buffer(msg), std::move(h)); };
    if (pace == writer_pace::from_handler)
      return count_window(conn.ioc(), n, n / 2, window, write);
    return count_window(conn.ioc(), n, n / 2, window, [&](auto h) {
      net::post(conn.tx().get_executor(),
                [&write, h = std::move(h)]() mutable { write(std::move(h)); });
    });
  };
  alloc_result r;
  if (serq_writer) {
    serq::queued_writer<stream_socket&> w(conn.tx());
    r = count(w);
  } else {
    hand_writer<stream_socket> w(conn.tx());
    r = count(w);
  }
  conn.wait_drained();
  return r;
}

// Case 5: allocations per operation in a steady state, every variant, printed as they are
// counted. Deterministic, so one run each.
std::vector<alloc_result> steady_allocations(std::size_t na) {
  std::vector<alloc_result> allocs;
  auto add_alloc = [&](std::string id, std::string label, alloc_result r) {
    add_labelled(allocs, std::move(id), std::move(label), std::move(r));
  };
  add_alloc("5q1", "queue op, callback, serq default, 1 in flight",
            queue_allocations(queue_kind::serq_default, na, 1));
  add_alloc("5q64", "queue op, callback, serq default, 64 in flight",
            queue_allocations(queue_kind::serq_default, na, 64));
  add_alloc("5qi1", "queue op, callback, serq trigger_inline, 1 in flight",
            queue_allocations(queue_kind::serq_inline, na, 1));
  add_alloc("5h1", "queue op, callback, hand-rolled queue, 1 in flight",
            queue_allocations(queue_kind::hand, na, 1));
  add_alloc("5h64", "queue op, callback, hand-rolled queue, 64 in flight",
            queue_allocations(queue_kind::hand, na, 64));
  add_alloc("5qs1", "queue op, callback, serq on a strand, 1 in flight",
            queue_allocations(queue_kind::serq_strand, na, 1));
  add_alloc("5hs1", "queue op, callback, hand-rolled queue on a strand, 1 in flight",
            queue_allocations(queue_kind::hand_strand, na, 1));
  add_alloc("5b64", "queue op, callback, bare post, 64 in flight",
            queue_allocations(queue_kind::bare, na, 64));
  add_alloc("5a1", "queue op, use_awaitable, serq, 1 coroutine", awaitable_allocations(na, 1));
  add_alloc("5a8", "queue op, use_awaitable, serq, 8 coroutines", awaitable_allocations(na, 8));
  add_alloc("5w1", "writer message, async_write callback, serq, 1 in flight",
            writer_allocations(na, 1, true));
  add_alloc("5w64", "writer message, async_write callback, serq, 64 in flight",
            writer_allocations(na, 64, true));
  add_alloc("5wi1", "writer message, callback, serq, idle between messages",
            writer_allocations(na, 1, true, writer_pace::idle_between));
  add_alloc("5ws1", "writer message, callback, serq on a strand, idle between",
            writer_allocations(na, 1, true, writer_pace::idle_between_on_strand));
  add_alloc("5hw64", "writer message, callback, hand-rolled writer, 64 in flight",
            writer_allocations(na, 64, false));
  add_alloc("5hwi1", "writer message, callback, hand-rolled writer, idle between messages",
            writer_allocations(na, 1, false, writer_pace::idle_between));
  add_alloc("5hws1", "writer message, callback, hand-rolled writer on a strand, idle between",
            writer_allocations(na, 1, false, writer_pace::idle_between_on_strand));

  std::printf("\n5  heap allocations per operation, steady state (second half of %zu ops)\n", na);
  for (const auto& a : allocs)
    std::printf("  %-70s %8s  (%zu in %zu)\n", a.label.c_str(), fmt(a.per_op, 3).c_str(),
                a.allocations, a.ops);
  return allocs;
}

// ---- cases 6a, 6b: cost per operation against queue depth
// ----------------------------------------------------
//
// N one-step operations in all, with D entries kept waiting throughout: the serq queue and the
// hand-rolled queue side by side, every depth and variant interleaved round by round in one case,
// so that serq(deepest) / serq(1) is a ratio from the same rounds.

// Depths 1, 64, 1024, 16384, 262144, those up to n; n itself when it cuts the list short.
std::vector<std::size_t> depths_for(std::size_t n) {
  std::vector<std::size_t> d;
  for (std::size_t x : {std::size_t{1}, std::size_t{64}, std::size_t{1024}, std::size_t{16384},
                        std::size_t{262144}}) {
    if (x <= n)
      d.push_back(x);
    else {
      if (d.back() != n)
        d.push_back(n);
      break;
    }
  }
  return d;
}

// Case 6a's serq with the one_step_op that holds an any_io_executor, at the first and last depth.
constexpr const char* fat_op_variant = "serq fat op";

std::string depth_variant(const char* who, std::size_t d) {
  return std::string(who) + " D=" + std::to_string(d);
}

// 6a, callback: D operations submitted up front, then every completion submits one more until n
// were submitted (the case 1 window, D wide), so ~D - 1 entries wait behind the active one.
bench_case depth_callback_case(std::size_t n, const std::vector<std::size_t>& depths) {
  bench_case c;
  c.id = "6a";
  c.title = "cost vs queue depth, callback, 1 thread, " + std::to_string(n) +
            " one-step ops, D in flight (submit D, then one per completion)";
  c.ops = static_cast<double>(n);
  c.reference = depth_variant("serq", depths.front());
  auto timed = [n](queue_kind k, std::size_t d) {
    return [n, k, d] {
      return with_queue(k, [&](net::io_context& ioc, auto submit) {
        return time_window(ioc, n, d, std::move(submit));
      });
    };
  };
  for (std::size_t d : depths) {
    c.variants.push_back({depth_variant("serq", d), timed(queue_kind::serq_default, d), {}});
    c.variants.push_back({depth_variant("hand-rolled", d), timed(queue_kind::hand, d), {}});
  }
  // What an operation that holds an executor by value costs: 56 B more in every waiting entry.
  for (std::size_t d : {depths.front(), depths.back()})
    c.variants.push_back({depth_variant(fat_op_variant, d), timed(queue_kind::serq_fat, d), {}});
  return c;
}

// 6b, use_awaitable: D coroutines, each awaiting its operations one at a time (n / D of them).
// Every coroutine is in the queue once, so D - 1 entries wait behind the active one, each a
// suspended coroutine. The coroutines are created (co_spawn) before the clock starts; the clock
// stops when the n-th operation has completed, before the coroutines end. Each coroutine's start
// (co_spawn posts it) is inside the clock, in every variant alike: the floor variant, the same
// coroutines awaiting the bare operation without a queue, shows that part.
struct coro_clock {
  std::size_t target = 0;
  std::size_t done = 0;
  bench_clock::time_point end;
  void tick() {
    if (++done == target)
      end = bench_clock::now();
  }
};

net::awaitable<void> depth_serq_worker(serq::serialized_queue* q, std::size_t steps,
                                       coro_clock* clock) {
  auto ex = co_await net::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i) {
    co_await q->async_enqueue<void(error_code)>(lean_step_op{&ex}, net::use_awaitable);
    clock->tick();
  }
}

net::awaitable<void> depth_hand_worker(hand_queue<net::any_completion_handler<void(error_code)>>* q,
                                       std::size_t steps, coro_clock* clock) {
  for (std::size_t i = 0; i < steps; ++i) {
    co_await q->async_enqueue(net::use_awaitable);
    clock->tick();
  }
}

net::awaitable<void> depth_bare_worker(std::size_t steps, coro_clock* clock) {
  auto ex = co_await net::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i) {
    co_await async_one_step(ex, net::use_awaitable);
    clock->tick();
  }
}

// spawn(ioc, steps, clock) co_spawns one coroutine doing `steps` operations.
template <class Spawn>
double time_depth_coroutines(net::io_context& ioc, std::size_t n, std::size_t d, Spawn spawn) {
  coro_clock clock;
  clock.target = n;
  for (std::size_t i = 0; i < d; ++i)
    spawn(n / d + (i < n % d ? 1 : 0), &clock);
  const auto t0 = bench_clock::now();
  ioc.run();
  if (clock.done != n)
    throw std::logic_error("serq_bench: lost operations");
  return std::chrono::duration<double>(clock.end - t0).count();
}

bench_case depth_awaitable_case(std::size_t n, const std::vector<std::size_t>& depths) {
  bench_case c;
  c.id = "6b";
  c.title = "cost vs queue depth, use_awaitable, 1 thread, " + std::to_string(n) +
            " one-step ops, D coroutines each awaiting one at a time";
  c.ops = static_cast<double>(n);
  c.reference = depth_variant("serq", depths.front());
  for (std::size_t d : depths) {
    c.variants.push_back(
        {depth_variant("serq", d),
         [n, d] {
           net::io_context ioc(1);
           serq::serialized_queue q(ioc);
           return time_depth_coroutines(ioc, n, d, [&](std::size_t steps, coro_clock* clock) {
             net::co_spawn(ioc, depth_serq_worker(&q, steps, clock), rethrow{});
           });
         },
         {}});
    c.variants.push_back(
        {depth_variant("hand-rolled", d),
         [n, d] {
           net::io_context ioc(1);
           hand_queue<net::any_completion_handler<void(error_code)>> q(ioc.get_executor());
           return time_depth_coroutines(ioc, n, d, [&](std::size_t steps, coro_clock* clock) {
             net::co_spawn(ioc, depth_hand_worker(&q, steps, clock), rethrow{});
           });
         },
         {}});
    c.variants.push_back({depth_variant("floor (no queue)", d),
                          [n, d] {
                            net::io_context ioc(1);
                            return time_depth_coroutines(
                                ioc, n, d, [&](std::size_t steps, coro_clock* clock) {
                                  net::co_spawn(ioc, depth_bare_worker(steps, clock), rethrow{});
                                });
                          },
                          {}});
  }
  return c;
}

depth_table depth_rows(const bench_case& c, const std::string& token,
                       const std::vector<std::size_t>& depths) {
  depth_table t;
  t.id = c.id;
  t.token = token;
  const std::string floor_name = depth_variant("floor (no queue)", depths.front());
  const bool has_floor = std::any_of(c.variants.begin(), c.variants.end(),
                                     [&](const variant& v) { return v.name == floor_name; });
  for (std::size_t d : depths) {
    depth_row r;
    r.depth = d;
    r.serq_ns = c.find(depth_variant("serq", d)).median_s() * 1e9 / c.ops;
    r.hand_ns = c.find(depth_variant("hand-rolled", d)).median_s() * 1e9 / c.ops;
    if (has_floor)
      r.floor_ns = c.find(depth_variant("floor (no queue)", d)).median_s() * 1e9 / c.ops;
    t.rows.push_back(r);
  }
  return t;
}

void print_depth_table(std::FILE* out, const depth_table& t) {
  const bool has_floor = !t.rows.empty() && t.rows.front().floor_ns > 0;
  std::fprintf(out, "\n%s  depth table, %s (medians, ns per operation)\n", t.id.c_str(),
               t.token.c_str());
  std::fprintf(out, "  %9s | %10s | %17s | %16s%s\n", "depth D", "serq ns/op", "hand-rolled ns/op",
               "hand-rolled/serq", has_floor ? " | floor ns/op (no queue)" : "");
  for (const auto& r : t.rows) {
    std::fprintf(out, "  %9zu | %10s | %17s | %16s", r.depth, fmt(r.serq_ns, 1).c_str(),
                 fmt(r.hand_ns, 1).c_str(), fmt(r.ratio(), 2).c_str());
    if (has_floor)
      std::fprintf(out, " | %s", fmt(r.floor_ns, 1).c_str());
    std::fprintf(out, "\n");
  }
  std::fprintf(out, "  serq(D=%zu) / serq(D=%zu) = %s\n", t.rows.back().depth, t.rows.front().depth,
               fmt(t.growth(), 2).c_str());
}

// ---- cases 7, 8: heap bytes held per pending item, per idle object
// ---------------------------------------------
//
// Snapshots of the heap before and after creating `items` items that stay alive, divided by the
// count: glibc's mallinfo2() (uordblks + hblkhd: the chunks in use, headers and rounding included,
// as the issue measured), and this program's own counts (live usable bytes, allocations).
// Everything the measurement itself needs (vectors of objects, sockets, services) exists before the
// first snapshot. One thread; no timing.

struct heap_snapshot {
  double malloc_bytes = 0;
  double usable_bytes = 0;
  double allocations = 0;
};

heap_snapshot heap_now() {
  heap_snapshot s;
#if defined(__GLIBC__)
  const struct mallinfo2 mi = ::mallinfo2();
  s.malloc_bytes = static_cast<double>(mi.uordblks + mi.hblkhd);
#endif
  s.usable_bytes = static_cast<double>(live_bytes.load());
  s.allocations = static_cast<double>(allocations_so_far());
  return s;
}

memory_result per_item(const heap_snapshot& before, const heap_snapshot& after, std::size_t items) {
  memory_result m;
  const double n = static_cast<double>(items);
  m.items = items;
  m.malloc_bytes = (after.malloc_bytes - before.malloc_bytes) / n;
  m.usable_bytes = (after.usable_bytes - before.usable_bytes) / n;
  m.allocations = (after.allocations - before.allocations) / n;
  return m;
}

// Counts live bytes while it exists.
struct live_byte_tracking {
  live_byte_tracking() { track_live_bytes = true; }
  ~live_byte_tracking() { track_live_bytes = false; }
  live_byte_tracking(const live_byte_tracking&) = delete;
  live_byte_tracking& operator=(const live_byte_tracking&) = delete;
};

// The memory cases' callback: one pointer. Errors are not expected and not judged here.
struct count_handler {
  std::size_t* done;
  template <class... Args>
  void operator()(Args&&...) const {
    ++*done;
  }
};

// Runs handlers until none is ready (the io_context is kept from stopping by a work guard).
void poll_all(net::io_context& ioc) {
  while (ioc.poll() > 0) {
  }
}

void expect_done(std::size_t done, std::size_t n, const char* what) {
  if (done != n)
    throw std::logic_error(std::string("serq_bench: ") + what + ": " + std::to_string(done) +
                           " of " + std::to_string(n) + " completed");
}

// A local socket pair whose far end is read, when asked, by a thread that reads into its stack
// until end of file (so the reader allocates nothing). With `stall`, the sending side's buffer is
// made small and filled first, so a writer's first write_some blocks until the reader starts.
class local_pair {
 public:
  explicit local_pair(bool stall) : tx_(ioc_), rx_(ioc_) {
    net::local::connect_pair(tx_, rx_);
    if (!stall)
      return;
    tx_.set_option(net::socket_base::send_buffer_size(4096));
    const char junk[4096] = {};
    for (;;) {
      const ssize_t n = ::send(tx_.native_handle(), junk, sizeof junk, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0)
        continue;
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      throw std::system_error(errno, std::generic_category(), "send");
    }
  }
  local_pair(const local_pair&) = delete;
  local_pair& operator=(const local_pair&) = delete;
  ~local_pair() { finish(); }

  net::io_context& ioc() noexcept { return ioc_; }
  stream_socket& tx() noexcept { return tx_; }

  void start_reader() {
    reader_ = std::thread([fd = rx_.native_handle()] {
      char buf[64 * 1024];
      for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n > 0 || (n < 0 && errno == EINTR))
          continue;
        return;
      }
    });
  }

  // Ends the stream (after every write has completed) and joins the reader.
  void finish() {
    if (!reader_.joinable())
      return;
    error_code ignored;
    tx_.shutdown(net::socket_base::shutdown_send, ignored);
    reader_.join();
  }

 private:
  net::io_context ioc_{1};
  stream_socket tx_;
  stream_socket rx_;
  std::thread reader_;
};

// -- case 7: pending items

// Callback entries waiting behind a held turn: handler and operation each hold one pointer.
memory_result queue_entries_serq_callback(std::size_t n) {
  net::io_context ioc(1);
  auto guard = net::make_work_guard(ioc);
  const net::any_io_executor ex = ioc.get_executor();
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  poll_all(ioc);
  if (!held || !*held)
    throw std::logic_error("serq_bench: no turn");
  std::size_t done = 0;
  const heap_snapshot before = heap_now();
  for (std::size_t i = 0; i < n; ++i)
    q.async_enqueue<void(error_code)>(lean_step_op{&ex}, count_handler{&done});
  poll_all(ioc);
  const heap_snapshot after = heap_now();
  expect_done(done, 0, "entries ran while the turn was held");
  expect_done(q.size(), n + 1, "entries waiting behind the turn");
  held.reset();
  guard.reset();
  ioc.run();
  expect_done(done, n, "queue entries (callback)");
  return per_item(before, after, n);
}

// The hand-rolled queue held busy: the submissions' posts have run, the jobs wait in the deque.
memory_result queue_entries_hand_callback(std::size_t n) {
  net::io_context ioc(1);
  auto guard = net::make_work_guard(ioc);
  hand_queue<std::function<void(error_code)>> q(ioc.get_executor());
  q.hold();
  std::size_t done = 0;
  const heap_snapshot before = heap_now();
  for (std::size_t i = 0; i < n; ++i)
    q.async_enqueue(count_handler{&done});
  poll_all(ioc);
  const heap_snapshot after = heap_now();
  q.release();
  guard.reset();
  ioc.run();
  expect_done(done, n, "hand-rolled queue entries (callback)");
  return per_item(before, after, n);
}

// use_awaitable: one coroutine per item, spawned after the first snapshot (its frames count),
// suspended in the awaited operation when the second is taken. Every body has the same shape: one
// context pointer, one co_await, one increment.
template <class Queue>
struct await_ctx {
  Queue* q = nullptr;
  const net::any_io_executor* ex = nullptr;
  const std::vector<char>* msg = nullptr;
  std::size_t started = 0;
  std::size_t done = 0;
};

net::awaitable<void> await_serq_entry(await_ctx<serq::serialized_queue>* c) {
  ++c->started;
  co_await c->q->async_enqueue<void(error_code)>(lean_step_op{c->ex}, net::use_awaitable);
  ++c->done;
}

using awaitable_hand_queue = hand_queue<net::any_completion_handler<void(error_code)>>;

net::awaitable<void> await_hand_entry(await_ctx<awaitable_hand_queue>* c) {
  ++c->started;
  co_await c->q->async_enqueue(net::use_awaitable);
  ++c->done;
}

template <class... Extra>
net::awaitable<void> await_parked(await_ctx<parking_lot>* c) {
  ++c->started;
  co_await net::async_initiate<const net::use_awaitable_t<>&, void(error_code, Extra...)>(
      park_op<Extra...>{c->q}, net::use_awaitable);
  ++c->done;
}

template <class Writer>
net::awaitable<void> await_write(await_ctx<Writer>* c) {
  ++c->started;
  co_await c->q->async_write(net::buffer(*c->msg), net::use_awaitable);
  ++c->done;
}

// Spawns n coroutines of `body` between two snapshots; `release` lets them finish afterwards.
template <class Ctx, class Body, class Release>
memory_result suspended_coroutines(net::io_context& ioc, std::size_t n, Ctx& ctx, Body body,
                                   Release release, const char* what) {
  ioc.restart();
  auto guard = net::make_work_guard(ioc);
  const heap_snapshot before = heap_now();
  for (std::size_t i = 0; i < n; ++i)
    net::co_spawn(ioc, body(&ctx), rethrow{});
  poll_all(ioc);
  const heap_snapshot after = heap_now();
  expect_done(ctx.started, n, what);
  expect_done(ctx.done, 0, what);
  release();
  guard.reset();
  ioc.run();
  expect_done(ctx.done, n, what);
  return per_item(before, after, n);
}

memory_result queue_entries_serq_awaitable(std::size_t n) {
  net::io_context ioc(1);
  const net::any_io_executor ex = ioc.get_executor();
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  ioc.run();
  ioc.restart();
  if (!held || !*held)
    throw std::logic_error("serq_bench: no turn");
  await_ctx<serq::serialized_queue> ctx;
  ctx.q = &q;
  ctx.ex = &ex;
  return suspended_coroutines(
      ioc, n, ctx, await_serq_entry, [&] { held.reset(); }, "queue entries (use_awaitable)");
}

memory_result queue_entries_hand_awaitable(std::size_t n) {
  net::io_context ioc(1);
  awaitable_hand_queue q(ioc.get_executor());
  q.hold();
  await_ctx<awaitable_hand_queue> ctx;
  ctx.q = &q;
  return suspended_coroutines(
      ioc, n, ctx, await_hand_entry, [&] { q.release(); },
      "hand-rolled queue entries (use_awaitable)");
}

// The floor: the same coroutines parked without a queue. One coroutine first, so that the parking
// storage is reserved before the snapshots.
template <class... Extra>
memory_result parked_coroutines(std::size_t n) {
  net::io_context ioc(1);
  parking_lot lot;
  lot.capacity = n;
  await_ctx<parking_lot> ctx;
  ctx.q = &lot;
  {
    auto guard = net::make_work_guard(ioc);
    net::co_spawn(ioc, await_parked<Extra...>(&ctx), rethrow{});
    poll_all(ioc);
    lot.release();
    poll_all(ioc);
    expect_done(ctx.done, 1, "parked coroutine (warm-up)");
    ctx.started = ctx.done = 0;
  }
  return suspended_coroutines(
      ioc, n, ctx, await_parked<Extra...>, [&] { lot.release(); }, "parked coroutines");
}

constexpr std::size_t pending_message_size = 64;

// Writer messages: the socket's buffer is full, so the writer's first write_some blocks and every
// message stays queued (up to 64 of them gathered into that write_some). Callback: handler one
// pointer, the 64 B buffer borrowed.
template <class Writer>
memory_result writer_messages_callback(std::size_t n) {
  local_pair conn(true);
  const std::vector<char> msg(pending_message_size, 'm');
  std::size_t done = 0;
  heap_snapshot before, after;
  {
    Writer w(conn.tx());
    auto guard = net::make_work_guard(conn.ioc());
    before = heap_now();
    for (std::size_t i = 0; i < n; ++i)
      w.async_write(net::buffer(msg), count_handler{&done});
    poll_all(conn.ioc());
    after = heap_now();
    expect_done(done, 0, "messages written to a full socket");
    if constexpr (std::is_same_v<Writer, serq::queued_writer<stream_socket&>>)
      expect_done(w.pending_bytes(), n * pending_message_size, "bytes pending");
    conn.start_reader();
    guard.reset();
    conn.ioc().run();
    expect_done(done, n, "writer messages (callback)");
  }
  conn.finish();
  return per_item(before, after, n);
}

template <class Writer>
memory_result writer_messages_awaitable(std::size_t n) {
  local_pair conn(true);
  const std::vector<char> msg(pending_message_size, 'm');
  Writer w(conn.tx());
  await_ctx<Writer> ctx;
  ctx.q = &w;
  ctx.msg = &msg;
  auto r = suspended_coroutines(
      conn.ioc(), n, ctx, await_write<Writer>, [&] { conn.start_reader(); },
      "writer messages (use_awaitable)");
  conn.finish();
  return r;
}

// async_send of an owned 64-character std::string (its heap buffer is made inside the window).
memory_result writer_sends_serq(std::size_t n) {
  local_pair conn(true);
  std::size_t done = 0;
  heap_snapshot before, after;
  {
    serq::queued_writer<stream_socket&> w(conn.tx());
    auto guard = net::make_work_guard(conn.ioc());
    before = heap_now();
    for (std::size_t i = 0; i < n; ++i)
      w.async_send(std::string(pending_message_size, 's'), count_handler{&done});
    poll_all(conn.ioc());
    after = heap_now();
    expect_done(done, 0, "messages sent to a full socket");
    expect_done(w.pending_bytes(), n * pending_message_size, "bytes pending");
    conn.start_reader();
    guard.reset();
    conn.ioc().run();
    expect_done(done, n, "writer async_send");
  }
  conn.finish();
  return per_item(before, after, n);
}

// The payload alone: n such strings in a vector reserved beforehand.
memory_result string_payloads(std::size_t n) {
  std::vector<std::string> v;
  v.reserve(n);
  const heap_snapshot before = heap_now();
  for (std::size_t i = 0; i < n; ++i)
    v.emplace_back(pending_message_size, 's');
  const heap_snapshot after = heap_now();
  return per_item(before, after, n);
}

// -- case 8: idle objects, besides the object itself (in storage made beforehand) and its stream

template <class T>
using object_slots = std::vector<std::optional<T>>;

memory_result idle_queues(std::size_t n, bool used) {
  net::io_context ioc(1);
  const net::any_io_executor ex = ioc.get_executor();
  {
    serq::serialized_queue warm(ioc);  // the service exists before the snapshots
    std::size_t done = 0;
    warm.async_enqueue<void(error_code)>(lean_step_op{&ex}, count_handler{&done});
    ioc.run();
    ioc.restart();
  }
  object_slots<serq::serialized_queue> qs(n);
  std::size_t done = 0;
  const heap_snapshot before = heap_now();
  for (auto& q : qs) {
    q.emplace(ioc);
    if (used)
      q->async_enqueue<void(error_code)>(lean_step_op{&ex}, count_handler{&done});
  }
  ioc.run();
  const heap_snapshot after = heap_now();
  expect_done(done, used ? n : 0, "idle queues");
  return per_item(before, after, n);
}

// n writers on one socket (the stream is not what is measured; 20000 sockets would not fit the
// descriptor limit). "used": each has written one 64 B message, and it has completed.
memory_result idle_writers(std::size_t n, bool used) {
  local_pair conn(false);
  conn.start_reader();
  const std::vector<char> msg(pending_message_size, 'i');
  {
    serq::queued_writer<stream_socket&> warm(conn.tx());
    std::size_t done = 0;
    warm.async_write(net::buffer(msg), count_handler{&done});
    conn.ioc().run();
    conn.ioc().restart();
  }
  object_slots<serq::queued_writer<stream_socket&>> ws(n);
  std::size_t done = 0;
  const heap_snapshot before = heap_now();
  for (auto& w : ws) {
    w.emplace(conn.tx());
    if (used)
      w->async_write(net::buffer(msg), count_handler{&done});
  }
  conn.ioc().run();
  const heap_snapshot after = heap_now();
  expect_done(done, used ? n : 0, "idle writers");
  ws.clear();
  conn.finish();
  return per_item(before, after, n);
}

template <class T, class Make>
memory_result idle_peers(std::size_t n, Make make) {
  object_slots<T> objs(n);
  const heap_snapshot before = heap_now();
  for (auto& o : objs)
    make(o);
  const heap_snapshot after = heap_now();
  return per_item(before, after, n);
}

memory_result derived(const std::string& id, const std::string& label, const memory_result& a,
                      const memory_result& b) {
  memory_result m;
  m.id = id;
  m.label = label;
  m.items = a.items;
  m.malloc_bytes = a.malloc_bytes - b.malloc_bytes;
  m.usable_bytes = a.usable_bytes - b.usable_bytes;
  m.allocations = a.allocations - b.allocations;
  m.derived = true;
  return m;
}

// Bytes per item only grow with anything else the process allocates meanwhile: the least of two
// measurements.
template <class Measure>
memory_result least_of_two(Measure measure) {
  memory_result first = measure();
  memory_result second = measure();
  return second.malloc_bytes < first.malloc_bytes ? second : first;
}

std::vector<memory_result> pending_memory(std::size_t n) {
  live_byte_tracking tracking;
  std::vector<memory_result> out;
  auto add = [&](std::string id, std::string label, memory_result m) -> const memory_result& {
    return add_labelled(out, std::move(id), std::move(label), std::move(m));
  };
  using serq_writer = serq::queued_writer<stream_socket&>;
  using peer_writer = hand_writer<stream_socket>;
  const memory_result qs = add("7q.serq", "queue entry, callback: serq (waiting behind a turn)",
                               least_of_two([&] { return queue_entries_serq_callback(n); }));
  add("7q.hand", "queue entry, callback: hand-rolled queue",
      least_of_two([&] { return queue_entries_hand_callback(n); }));
  const memory_result qa = add("7qa.serq", "queue entry, use_awaitable: serq, incl. the coroutine",
                               least_of_two([&] { return queue_entries_serq_awaitable(n); }));
  const memory_result qah = add("7qa.hand", "queue entry, use_awaitable: hand-rolled queue",
                                least_of_two([&] { return queue_entries_hand_awaitable(n); }));
  const memory_result qaf = add("7qa.floor", "suspended coroutine alone (parked, no queue)",
                                least_of_two([&] { return parked_coroutines<>(n); }));
  out.push_back(
      derived("7qa.serq-floor", "  use_awaitable entry: serq beyond the coroutine", qa, qaf));
  out.push_back(
      derived("7qa.hand-floor", "  use_awaitable entry: hand-rolled beyond it", qah, qaf));
  out.push_back(
      derived("7qa.serq-hand", "  use_awaitable entry: serq beyond hand-rolled", qa, qah));
  (void)qs;
  add("7w.serq", "writer message, async_write 64 B, callback: serq",
      least_of_two([&] { return writer_messages_callback<serq_writer>(n); }));
  add("7w.hand", "writer message, async_write 64 B, callback: hand-rolled",
      least_of_two([&] { return writer_messages_callback<peer_writer>(n); }));
  const memory_result wa =
      add("7wa.serq", "writer message, use_awaitable: serq, incl. coroutine",
          least_of_two([&] { return writer_messages_awaitable<serq_writer>(n); }));
  const memory_result wah =
      add("7wa.hand", "writer message, use_awaitable: hand-rolled",
          least_of_two([&] { return writer_messages_awaitable<peer_writer>(n); }));
  const memory_result waf = add("7wa.floor", "suspended coroutine alone (parked, no writer)",
                                least_of_two([&] { return parked_coroutines<std::size_t>(n); }));
  out.push_back(
      derived("7wa.serq-floor", "  use_awaitable message: serq beyond the coroutine", wa, waf));
  out.push_back(
      derived("7wa.hand-floor", "  use_awaitable message: hand-rolled beyond it", wah, waf));
  out.push_back(
      derived("7wa.serq-hand", "  use_awaitable message: serq beyond hand-rolled", wa, wah));
  const memory_result ss = add("7s.serq", "writer async_send std::string(64), callback: serq",
                               least_of_two([&] { return writer_sends_serq(n); }));
  const memory_result sp = add("7s.payload", "the std::string(64) alone",
                               least_of_two([&] { return string_payloads(n); }));
  out.push_back(derived("7s.serq-payload", "  async_send: serq beyond the payload", ss, sp));
  return out;
}

std::vector<memory_result> idle_memory(std::size_t n) {
  live_byte_tracking tracking;
  std::vector<memory_result> out;
  auto add = [&](std::string id, std::string label, memory_result m) {
    add_labelled(out, std::move(id), std::move(label), std::move(m));
  };
  add("8q.fresh", "idle serialized_queue, freshly constructed",
      least_of_two([&] { return idle_queues(n, false); }));
  add("8q.used", "idle serialized_queue, after one op completed",
      least_of_two([&] { return idle_queues(n, true); }));
  add("8w.fresh", "idle queued_writer<local_socket&>, freshly constructed",
      least_of_two([&] { return idle_writers(n, false); }));
  add("8w.used", "idle queued_writer<local_socket&>, after one write",
      least_of_two([&] { return idle_writers(n, true); }));
  net::io_context ioc(1);
  add("8q.hand", "idle hand-rolled queue (std::deque), for reference", least_of_two([&] {
        return idle_peers<hand_queue<std::function<void(error_code)>>>(
            n, [&](auto& o) { o.emplace(ioc.get_executor()); });
      }));
  local_pair conn(false);
  add("8w.hand", "idle hand-rolled writer (std::deque), for reference", least_of_two([&] {
        return idle_peers<hand_writer<stream_socket>>(n, [&](auto& o) { o.emplace(conn.tx()); });
      }));
  return out;
}

void print_memory(std::FILE* out, const std::string& title,
                  const std::vector<memory_result>& rows) {
  std::fprintf(out, "\n%s\n", title.c_str());
  std::fprintf(out, "  %-16s %-54s %10s %10s %8s\n", "id", "item", "malloc B", "usable B",
               "allocs");
  for (const auto& m : rows)
    std::fprintf(out, "  %-16s %-54s %10s %10s %8s\n", m.id.c_str(), m.label.c_str(),
                 fmt(m.malloc_bytes, 1).c_str(), fmt(m.usable_bytes, 1).c_str(),
                 fmt(m.allocations, 2).c_str());
}

// ---- main
// ---------------------------------------------------------------------------------------------

struct options {
  bool smoke = false;
  int rounds = 9;
  double scale = 1.0;
  std::string json;
  std::string only_case;  // --only ID[:VARIANT][,ID[:VARIANT]...] (profiling)
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--smoke")
      o.smoke = true;
    else if (a == "--rounds")
      o.rounds = std::stoi(value());
    else if (a == "--scale")
      o.scale = std::stod(value());
    else if (a == "--json")
      o.json = value();
    else if (a == "--only") {
      o.only_case = value();
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: serq_bench [--smoke] [--rounds R] [--scale F] [--json FILE] [--only "
          "ID[:VARIANT][,ID[:VARIANT]...]]\n"
          "  --smoke      1 round, no warm-up, tiny sizes (CI: checks that every case runs)\n"
          "  --rounds R   measured rounds after the warm-up (default 9, at least 5 advised)\n"
          "  --scale F    multiply every operation count by F (default 1)\n"
          "  --json FILE  also write the results as JSON\n"
          "  --only ID[:VARIANT]  run one case (1a 1b 2 3 4a 4b 4c 6a 6b 9), or one variant of it\n"
          "               (6a: \"serq D=1024\"), and skip allocations and targets: for profiling\n"
          "               (valgrind, perf); a comma-separated list runs those in that order\n"
          "               (2,6a:\"serq D=1\"); --only 5, 7 or 8 prints that table alone\n");
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument " + a);
    }
  }
  if (o.smoke)
    o.rounds = 1;
  if (o.rounds < 1)
    throw std::invalid_argument("--rounds must be >= 1");
  return o;
}

std::string load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f)
    return "?";
  char buf[128] = {};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  std::string s = ok ? buf : "?";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  return s;
}

int run(const options& o) {
  const std::string load_before = load_average();
  // Sizes: each full measurement takes a few tens of milliseconds on the 2-core reference machine.
  auto scaled = [&](std::size_t full, std::size_t smoke, std::size_t multiple = 64) {
    std::size_t n = o.smoke ? smoke : static_cast<std::size_t>(static_cast<double>(full) * o.scale);
    n = std::max(multiple, n / multiple * multiple);
    return n;
  };
  const int warmups = o.smoke ? 0 : 1;

  std::vector<bench_case> cases;
  cases.push_back(queue_case("1a", scaled(400000, 1024), 1));
  cases.push_back(queue_case("1b", scaled(400000, 1024), 64));
  cases.push_back(contention_case(scaled(200000, 1024)));
  cases.push_back(coroutine_case(scaled(200000, 1024)));
  cases.push_back(writer_case("4a", 64, scaled(131072, 1024)));
  cases.push_back(writer_case("4b", 1024, scaled(131072, 1024)));
  cases.push_back(writer_case("4c", 64 * 1024, scaled(4096, 128)));
  // Depth: 262144 operations in all (a power of two, so D divides it).
  const std::size_t depth_ops = o.smoke ? 4096 : scaled(262144, 4096, 1024);
  const std::vector<std::size_t> depths = depths_for(depth_ops);
  cases.push_back(depth_callback_case(depth_ops, depths));
  cases.push_back(depth_awaitable_case(depth_ops, depths));
  cases.push_back(observability_case("10a", scaled(400000, 1024), 1));
  cases.push_back(observability_case("10b", scaled(262144, 4096, 1024), 1024));
  // Redis: needs redis-server and redis-benchmark (scripts/setup.sh); skipped, said so, without.
  std::string redis_missing;
  if (auto c = redis_case(o.smoke ? 2048 : scaled(200000, 2048), redis_missing))
    cases.push_back(std::move(*c));
  // Memory: pending items, idle objects.
  const std::size_t pending_items = o.smoke ? 2048 : scaled(262144, 2048, 1024);
  const std::size_t idle_objects = o.smoke ? 256 : scaled(20000, 256, 16);

  const std::string pending_title =
      "7  heap bytes held per pending item, N = " + std::to_string(pending_items) +
      "\n   malloc B: mallinfo2() uordblks + hblkhd; usable B: malloc_usable_size of the live "
      "blocks; allocs: heap allocations made";
  const std::string idle_title =
      "8  heap bytes per idle object besides the object and its "
      "stream, " +
      std::to_string(idle_objects) + " objects";
  if (o.only_case == "5") {
    steady_allocations(scaled(20000, 512));
    return 0;
  }
  if (o.only_case == "7" || o.only_case == "8") {
    const bool pending = o.only_case == "7";
    print_memory(stdout, pending ? pending_title : idle_title,
                 pending ? pending_memory(pending_items) : idle_memory(idle_objects));
    return 0;
  }
  if (!o.only_case.empty()) {
    // A comma-separated list runs those cases in that order, each ID or ID:VARIANT: to see what
    // one case leaves behind in the process for the next. Each item runs a fresh copy of its case,
    // and the whole list is checked before anything runs.
    std::vector<bench_case> run_list;
    for (std::size_t at = 0;;) {
      const auto comma = o.only_case.find(',', at);
      const std::string item = o.only_case.substr(at, comma - at);
      const auto colon = item.find(':');
      const std::string id = item.substr(0, colon);
      auto it =
          std::find_if(cases.begin(), cases.end(), [&](const bench_case& c) { return c.id == id; });
      if (it == cases.end())
        throw std::invalid_argument("no such case: " + id +
                                    (id == "5" || id == "7" || id == "8" ? " (only alone)" : ""));
      bench_case c = *it;
      if (colon != std::string::npos) {
        const std::string name = item.substr(colon + 1);
        std::erase_if(c.variants, [&](const variant& v) { return v.name != name; });
        if (c.variants.empty())
          throw std::invalid_argument("no such variant: " + name);
        c.reference = c.variants.front().name;
      }
      run_list.push_back(std::move(c));
      if (comma == std::string::npos)
        break;
      at = comma + 1;
    }
    for (auto& c : run_list) {
      c.run(warmups, o.rounds);
      print_case(stdout, c);
      std::fflush(stdout);
    }
    return 0;
  }

  std::printf("serq_bench: %s, %d round(s) after %d warm-up(s), medians; load average before: %s\n",
              o.smoke ? "SMOKE (timings meaningless)" : "full", o.rounds, warmups,
              load_before.c_str());
  std::printf(
      "ref x = this row's median time / the reference serq variant's: > 1 means serq is faster\n"
      "heap counting: %s\n",
      SERQ_BENCH_MALLOC_HOOKS ? "every malloc-family call (glibc, interposed), mallinfo2"
                              : "operator new only (no malloc hooks in this build)");
  std::fflush(stdout);
  std::vector<depth_table> depth_tables;
  for (auto& c : cases) {
    c.run(warmups, o.rounds);
    print_case(stdout, c);
    if (c.id == "6a" || c.id == "6b") {
      depth_tables.push_back(depth_rows(c, c.id == "6a" ? "callback" : "use_awaitable", depths));
      print_depth_table(stdout, depth_tables.back());
    }
    std::fflush(stdout);
  }

  // Allocations: deterministic, so one run each.
  const std::vector<alloc_result> allocs = steady_allocations(scaled(20000, 512));

  // Memory: deterministic up to the allocator's rounding, so one run each.
  std::vector<memory_result> memory = pending_memory(pending_items);
  print_memory(stdout, pending_title, memory);
  std::vector<memory_result> idle = idle_memory(idle_objects);
  print_memory(stdout, idle_title, idle);
  memory.insert(memory.end(), idle.begin(), idle.end());
  std::fflush(stdout);

  // Targets: speed ratios are peer median / serq median from this run.
  auto speed = [&](const std::string& id, const std::string& serq_v, const std::string& peer_v) {
    for (const auto& c : cases)
      if (c.id == id)
        return c.find(peer_v).median_s() / c.find(serq_v).median_s();
    throw std::logic_error("no case " + id);
  };
  auto alloc = [&](const std::string& id) {
    for (const auto& a : allocs)
      if (a.id == id)
        return a.per_op;
    throw std::logic_error("no allocation result " + id);
  };
  std::vector<target> targets;
  for (const char* id : {"1a", "1b"}) {
    const std::string w = std::string(id) == "1a" ? "1 in flight" : "64 in flight";
    targets.push_back({"1 (" + w + "): serq default vs hand-rolled queue",
                       speed(id, "serq default", "hand-rolled queue"), 1.0, true});
    targets.push_back({"1 (" + w + "): serq trigger_inline vs hand-rolled queue",
                       speed(id, "serq trigger_inline", "hand-rolled queue"), 1.5, true});
    targets.push_back({"1 (" + w + "): serq default vs bare post",
                       speed(id, "serq default", "bare post"), 0.7, true});
  }
  targets.push_back({"4 (64 B): serq vs hand-rolled writer",
                     speed("4a", "serq gathering on", "hand-rolled writer"), 8.0, true});
  targets.push_back({"4 (1 KiB): serq vs hand-rolled writer",
                     speed("4b", "serq gathering on", "hand-rolled writer"), 3.0, true});
  targets.push_back({"4 (1 KiB): serq vs writev limit",
                     speed("4b", "serq gathering on", "limit: writev x64"), 0.5, true});
  targets.push_back({"4 (64 KiB): serq vs contiguous limit",
                     speed("4c", "serq gathering on", "limit: contiguous write"), 0.9, true});
  if (redis_missing.empty())
    targets.push_back({"9: serq RESP client (writer defaults) vs redis-benchmark -P 32",
                       speed("9", "serq client, writer defaults", "redis-benchmark -c 1 -P 32"),
                       1.0, true});
  else
    std::printf("\n9  Redis pipelining: skipped, %s\n", redis_missing.c_str());
  targets.push_back(
      {"5: allocations per queue op, callback (1 in flight)", alloc("5q1"), 0.0, false});
  targets.push_back(
      {"5: allocations per queue op, callback (64 in flight)", alloc("5q64"), 0.0, false});
  targets.push_back({"5: allocations per queue op, callback, queue on a strand (1 in flight)",
                     alloc("5qs1"), 0.0, false});
  targets.push_back(
      {"5: allocations per queue op, use_awaitable (8 coroutines)", alloc("5a8"), 0.0, false});
  targets.push_back(
      {"5: allocations per writer message, callback (1 in flight)", alloc("5w1"), 0.0, false});
  targets.push_back(
      {"5: allocations per writer message, callback (64 in flight)", alloc("5w64"), 0.0, false});
  targets.push_back({"5: allocations per writer message, callback, idle between messages",
                     alloc("5wi1"), 0.0, false});
  targets.push_back(
      {"5: allocations per writer message, callback, on a strand, idle between messages",
       alloc("5ws1"), 0.0, false});
  for (const auto& t : depth_tables) {
    const std::string name = t.id + " (" + t.token + ")";
    targets.push_back({name + ": serq D=" + std::to_string(t.rows.back().depth) +
                           " / serq D=" + std::to_string(t.rows.front().depth),
                       t.growth(), 1.3, false});
    for (const auto& r : t.rows)
      targets.push_back(
          {name + " D=" + std::to_string(r.depth) + ": hand-rolled / serq", r.ratio(), 1.0, true});
  }
  auto bytes = [&](const std::string& id) {
    for (const auto& m : memory)
      if (m.id == id)
        return m.malloc_bytes;
    throw std::logic_error("no memory result " + id);
  };
  targets.push_back(
      {"7: heap B per waiting queue entry, callback (mallinfo2)", bytes("7q.serq"), 96, false});
  targets.push_back({"7: heap B per pending async_write 64 B, callback (mallinfo2)",
                     bytes("7w.serq"), 96, false});
  targets.push_back({"7: heap B per pending async_send beyond its payload (mallinfo2)",
                     bytes("7s.serq-payload"), 96, false});
  targets.push_back(
      {"8: heap B per idle queued_writer, fresh (mallinfo2)", bytes("8w.fresh"), 256, false});
  targets.push_back({"8: heap B per idle queued_writer, after one write (mallinfo2)",
                     bytes("8w.used"), 256, false});
  targets.push_back(
      {"8: heap B per idle serialized_queue, fresh (mallinfo2)", bytes("8q.fresh"), 128, false});
  targets.push_back({"8: heap B per idle serialized_queue, after one op (mallinfo2)",
                     bytes("8q.used"), 128, false});

  const std::string load_after = load_average();
  std::printf("\ntargets (%s)%s\n", o.smoke ? "smoke run: not judged" : "ratios of medians", "");
  for (const auto& t : targets)
    std::printf("  %-64s %8s  %s %-6s %s\n", t.label.c_str(), fmt(t.value, 3).c_str(),
                t.at_least ? ">=" : "<=", fmt(t.threshold, 2).c_str(),
                o.smoke ? "-" : (t.pass() ? "PASS" : "MISS"));
  std::printf("\nload average after: %s\n", load_after.c_str());

  if (!o.json.empty()) {
    std::string config =
        std::string("{\"smoke\": ") + (o.smoke ? "true" : "false") +
        ", \"rounds\": " + std::to_string(o.rounds) + ", \"warmups\": " + std::to_string(warmups) +
        ", \"scale\": " + fmt(o.scale, 3) +
        ", \"hardware_threads\": " + std::to_string(std::thread::hardware_concurrency()) +
        ", \"load_before\": \"" + load_before + "\", \"load_after\": \"" + load_after + "\"}";
    write_json(o.json, config, cases, allocs, depth_tables, memory, targets);
    std::printf("JSON written to %s\n", o.json.c_str());
  }
  return 0;  // timings are reported, never asserted
}

}  // namespace
}  // namespace serq_bench

int main(int argc, char** argv) {
  try {
    return serq_bench::run(serq_bench::parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serq_bench: %s\n", e.what());
    return 1;
  }
}
