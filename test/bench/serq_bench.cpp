//
// test/bench/serq_bench.cpp
//
// serq against its peers, every case in one process, interleaved: see README.md beside this file.
//
//   serq_bench [--smoke] [--rounds R] [--scale F] [--json FILE]
//

#include "harness.hpp"
#include "peers.hpp"

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <latch>
#include <limits>
#include <new>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// ---- allocation counting ---------------------------------------------------------------------
//
// Every allocation of the program goes through these. The count is per thread, so counting costs
// no shared cache line in the multi-threaded cases; the allocation cases run on one thread.

namespace {
thread_local std::size_t thread_allocations = 0;

void* counted_alloc(std::size_t n) {
  ++thread_allocations;
  if (void* p = std::malloc(n ? n : 1))
    return p;
  throw std::bad_alloc();
}

void* counted_aligned_alloc(std::size_t n, std::align_val_t a) {
  ++thread_allocations;
  const auto al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al))
    return p;
  throw std::bad_alloc();
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
  ++thread_allocations;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  ++thread_allocations;
  return std::malloc(n ? n : 1);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace serq_bench {
namespace {

using stream_socket = asio::local::stream_protocol::socket;

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
auto async_one_step(asio::any_io_executor ex, Token&& token) {
  return asio::async_initiate<Token, void(error_code)>(one_step_op{std::move(ex)}, token);
}

// ---- a window of callback operations (cases 1, 4 with callbacks, 5)
// ------------------------------
//
// Keeps `window` operations in flight: every completion submits the next until n were submitted.
// Optionally notes the allocation count when `mark_at` operations have completed, so a run can
// measure its own steady state (Asio's recycling caches live as long as the run() call).

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
  std::size_t allocations_after_mark() const noexcept { return allocations_so_far() - mark_; }

 private:
  void submit_one() {
    ++issued_;
    submit_(done_handler{this});
  }

  void on_done(error_code ec) {
    if (ec)
      throw boost::system::system_error(ec, "serq_bench: operation failed");
    if (++done_ == mark_at_)
      mark_ = allocations_so_far();
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
};

template <class Submit>
double time_window(asio::io_context& ioc, std::size_t n, std::size_t window, Submit submit) {
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
alloc_result count_window(asio::io_context& ioc, std::size_t n, std::size_t warm,
                          std::size_t window, Submit submit) {
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

enum class queue_kind { serq_default, serq_inline, hand, bare };

// Each returns the seconds of n one-step operations with `window` in flight (or, with count, the
// steady-state allocations).
template <class Body>
auto with_queue(queue_kind kind, Body&& body) {
  asio::io_context ioc(1);
  asio::any_io_executor ex = ioc.get_executor();
  switch (kind) {
    case queue_kind::serq_default: {
      serq::serialized_queue q(ioc);
      return body(ioc, [&q, ex](auto h) {
        q.async_enqueue<void(error_code)>(one_step_op{ex}, std::move(h));
      });
    }
    case queue_kind::serq_inline: {
      serq::serialized_queue q(ioc);
      return body(ioc, [&q, ex](auto h) {
        q.async_enqueue<void(error_code)>(serq::trigger_inline, one_step_op{ex}, std::move(h));
      });
    }
    case queue_kind::hand: {
      hand_queue<std::function<void(error_code)>> q(ex);
      return body(ioc, [&q](auto h) { q.async_enqueue(std::move(h)); });
    }
    case queue_kind::bare:
    default:
      return body(ioc, [ex](auto h) { one_step_op{ex}(std::move(h)); });
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
      return with_queue(k, [&](asio::io_context& ioc, auto submit) {
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

// ---- case 2: queue under contention
// --------------------------------------------------------------

// Two producer threads submit n operations in all, each keeping at most 64 in flight (a semaphore,
// the usual backpressure); two threads run the io_context.
template <class Submit>
double time_contended(asio::io_context& ioc, std::size_t n, Submit submit) {
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
  auto work = asio::make_work_guard(ioc);
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
      asio::io_context ioc(2);
      asio::any_io_executor ex = ioc.get_executor();
      serq::serialized_queue q(ioc);
      if (inl)
        return time_contended(ioc, n, [&q, ex](auto h) {
          q.async_enqueue<void(error_code)>(serq::trigger_inline, one_step_op{ex}, std::move(h));
        });
      return time_contended(ioc, n, [&q, ex](auto h) {
        q.async_enqueue<void(error_code)>(one_step_op{ex}, std::move(h));
      });
    };
  };
  c.variants = {{"serq default", serq_variant(false), {}},
                {"serq trigger_inline", serq_variant(true), {}},
                {"hand-rolled queue (strand)",
                 [n] {
                   asio::io_context ioc(2);
                   hand_queue<std::function<void(error_code)>> q(asio::make_strand(ioc));
                   return time_contended(ioc, n, [&q](auto h) { q.async_enqueue(std::move(h)); });
                 },
                 {}},
                {"bare post",
                 [n] {
                   asio::io_context ioc(2);
                   asio::any_io_executor ex = ioc.get_executor();
                   return time_contended(ioc, n, [ex](auto h) { one_step_op{ex}(std::move(h)); });
                 },
                 {}}};
  return c;
}

// ---- case 3: acquire / turn throughput from coroutines
// --------------------------------------------

constexpr std::size_t coroutines = 8;

asio::awaitable<void> acquire_worker(serq::serialized_queue& q, std::size_t steps) {
  auto ex = co_await asio::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i) {
    serq::turn t = co_await q.async_acquire(asio::use_awaitable);
    co_await async_one_step(ex, asio::use_awaitable);
  }
}

asio::awaitable<void> enqueue_worker(serq::serialized_queue& q, std::size_t steps) {
  auto ex = co_await asio::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i)
    co_await q.async_enqueue<void(error_code)>(one_step_op{ex}, asio::use_awaitable);
}

asio::awaitable<void> hand_worker(hand_queue<asio::any_completion_handler<void(error_code)>>& q,
                                  std::size_t steps) {
  for (std::size_t i = 0; i < steps; ++i)
    co_await q.async_enqueue(asio::use_awaitable);
}

asio::awaitable<void> bare_worker(std::size_t steps) {
  auto ex = co_await asio::this_coro::executor;
  for (std::size_t i = 0; i < steps; ++i)
    co_await async_one_step(ex, asio::use_awaitable);
}

template <class Spawn>
double time_coroutines(Spawn spawn) {
  asio::io_context ioc(1);
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
         return time_coroutines([&](asio::io_context& ioc) {
           if (!q)
             q = std::make_unique<serq::serialized_queue>(ioc);
           asio::co_spawn(ioc, acquire_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"serq async_enqueue(use_awaitable)",
       [per] {
         std::unique_ptr<serq::serialized_queue> q;
         return time_coroutines([&](asio::io_context& ioc) {
           if (!q)
             q = std::make_unique<serq::serialized_queue>(ioc);
           asio::co_spawn(ioc, enqueue_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"hand-rolled queue (use_awaitable)",
       [per] {
         std::unique_ptr<hand_queue<asio::any_completion_handler<void(error_code)>>> q;
         return time_coroutines([&](asio::io_context& ioc) {
           if (!q)
             q = std::make_unique<hand_queue<asio::any_completion_handler<void(error_code)>>>(
                 ioc.get_executor());
           asio::co_spawn(ioc, hand_worker(*q, per), rethrow{});
         });
       },
       {}},
      {"bare co_await post (no queue)",
       [per] {
         return time_coroutines(
             [&](asio::io_context& ioc) { asio::co_spawn(ioc, bare_worker(per), rethrow{}); });
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
  explicit wire(std::size_t expect) : tx_(ioc_), rx_(ioc_) {
    asio::local::connect_pair(tx_, rx_);
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

  asio::io_context& ioc() noexcept { return ioc_; }
  stream_socket& tx() noexcept { return tx_; }
  void wait_drained() { reader_.join(); }

 private:
  asio::io_context ioc_{1};
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
asio::awaitable<void> write_producer(Writer& w, asio::const_buffer msg, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i)
    co_await w.async_write(msg, asio::use_awaitable);
}

double time_serq_writer(const payload& p, bool gathering) {
  wire net(p.bytes());
  serq::queued_writer<stream_socket&> w(net.tx());
  w.set_gathering(gathering);
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < producers; ++i)
    asio::co_spawn(net.ioc(), write_producer(w, asio::buffer(p.messages[i]), p.count / producers),
                   rethrow{});
  net.ioc().run();
  net.wait_drained();
  return seconds_since(t0);
}

double time_hand_writer(const payload& p) {
  wire net(p.bytes());
  hand_writer<stream_socket> w(net.tx());
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < producers; ++i)
    asio::co_spawn(net.ioc(), write_producer(w, asio::buffer(p.messages[i]), p.count / producers),
                   rethrow{});
  net.ioc().run();
  net.wait_drained();
  return seconds_since(t0);
}

double time_contiguous_limit(const payload& p) {
  wire net(p.bytes());
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < p.count / producers; ++i)
    blocking_write_all(net.tx().native_handle(), p.contiguous.data(), p.contiguous.size());
  net.wait_drained();
  return seconds_since(t0);
}

double time_writev_limit(const payload& p) {
  wire net(p.bytes());
  std::vector<iovec> iov(p.count);
  for (std::size_t i = 0; i < p.count; ++i)
    iov[i] = iovec{const_cast<char*>(p.messages[i % producers].data()), p.size};
  const auto t0 = bench_clock::now();
  blocking_writev_all(net.tx().native_handle(), std::move(iov), 64);
  net.wait_drained();
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
  return with_queue(kind, [&](asio::io_context& ioc, auto submit) {
    return count_window(ioc, n, n / 2, window, std::move(submit));
  });
}

// use_awaitable: `coros` coroutines each awaiting its own operations; counts after half were done.
alloc_result awaitable_allocations(std::size_t n, std::size_t coros) {
  asio::io_context ioc(1);
  serq::serialized_queue q(ioc);
  std::size_t done = 0;
  std::size_t mark = 0;
  const std::size_t warm = n / 2;
  auto worker = [&](std::size_t steps) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    for (std::size_t i = 0; i < steps; ++i) {
      co_await q.async_enqueue<void(error_code)>(one_step_op{ex}, asio::use_awaitable);
      if (++done == warm)
        mark = allocations_so_far();
    }
  };
  for (std::size_t i = 0; i < coros; ++i)
    asio::co_spawn(ioc, worker(n / coros), rethrow{});
  ioc.run();
  alloc_result r;
  r.allocations = allocations_so_far() - mark;
  r.ops = n - warm;
  r.per_op = static_cast<double>(r.allocations) / static_cast<double>(r.ops);
  return r;
}

// Writer messages with a callback token: `window` messages in flight, each completion writing
// the next, until n; counts after half were done.
alloc_result writer_allocations(std::size_t n, std::size_t window, bool serq_writer) {
  std::vector<char> msg(64, 'x');
  wire net(n * msg.size());
  alloc_result r;
  if (serq_writer) {
    serq::queued_writer<stream_socket&> w(net.tx());
    r = count_window(net.ioc(), n, n / 2, window,
                     [&](auto h) { w.async_write(asio::buffer(msg), std::move(h)); });
  } else {
    hand_writer<stream_socket> w(net.tx());
    r = count_window(net.ioc(), n, n / 2, window,
                     [&](auto h) { w.async_write(asio::buffer(msg), std::move(h)); });
  }
  net.wait_drained();
  return r;
}

// ---- main
// ---------------------------------------------------------------------------------------------

struct options {
  bool smoke = false;
  int rounds = 9;
  double scale = 1.0;
  std::string json;
  std::string only_case;  // --only ID or ID:VARIANT (profiling)
  std::string only_variant;
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
      const std::string v = value();
      const auto colon = v.find(':');
      o.only_case = v.substr(0, colon);
      if (colon != std::string::npos)
        o.only_variant = v.substr(colon + 1);
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: serq_bench [--smoke] [--rounds R] [--scale F] [--json FILE] [--only "
          "ID[:VARIANT]]\n"
          "  --smoke      1 round, no warm-up, tiny sizes (CI: checks that every case runs)\n"
          "  --rounds R   measured rounds after the warm-up (default 9, at least 5 advised)\n"
          "  --scale F    multiply every operation count by F (default 1)\n"
          "  --json FILE  also write the results as JSON\n"
          "  --only ID[:VARIANT]  run one case (1a 1b 2 3 4a 4b 4c), or one variant of it, and\n"
          "               skip allocations and targets: for profiling (valgrind, perf)\n");
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

  if (!o.only_case.empty()) {
    for (auto& c : cases) {
      if (c.id != o.only_case)
        continue;
      if (!o.only_variant.empty()) {
        std::erase_if(c.variants, [&](const variant& v) { return v.name != o.only_variant; });
        if (c.variants.empty())
          throw std::invalid_argument("no such variant: " + o.only_variant);
        c.reference = c.variants.front().name;
      }
      c.run(warmups, o.rounds);
      print_case(stdout, c);
      return 0;
    }
    throw std::invalid_argument("no such case: " + o.only_case);
  }

  std::printf("serq_bench: %s, %d round(s) after %d warm-up(s), medians; load average before: %s\n",
              o.smoke ? "SMOKE (timings meaningless)" : "full", o.rounds, warmups,
              load_before.c_str());
  std::printf(
      "ref x = this row's median time / the reference serq variant's: > 1 means serq is faster\n");
  std::fflush(stdout);
  for (auto& c : cases) {
    c.run(warmups, o.rounds);
    print_case(stdout, c);
    std::fflush(stdout);
  }

  // Allocations: deterministic, so one run each.
  const std::size_t na = scaled(20000, 512);
  std::vector<alloc_result> allocs;
  auto add_alloc = [&](std::string id, std::string label, alloc_result r) {
    r.id = std::move(id);
    r.label = std::move(label);
    allocs.push_back(std::move(r));
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
  add_alloc("5b64", "queue op, callback, bare post, 64 in flight",
            queue_allocations(queue_kind::bare, na, 64));
  add_alloc("5a1", "queue op, use_awaitable, serq, 1 coroutine", awaitable_allocations(na, 1));
  add_alloc("5a8", "queue op, use_awaitable, serq, 8 coroutines", awaitable_allocations(na, 8));
  add_alloc("5w1", "writer message, async_write callback, serq, 1 in flight",
            writer_allocations(na, 1, true));
  add_alloc("5w64", "writer message, async_write callback, serq, 64 in flight",
            writer_allocations(na, 64, true));
  add_alloc("5hw64", "writer message, callback, hand-rolled writer, 64 in flight",
            writer_allocations(na, 64, false));

  std::printf("\n5  heap allocations per operation, steady state (second half of %zu ops)\n", na);
  for (const auto& a : allocs)
    std::printf("  %-62s %8s  (%zu in %zu)\n", a.label.c_str(), fmt(a.per_op, 3).c_str(),
                a.allocations, a.ops);

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
  targets.push_back(
      {"5: allocations per queue op, callback (1 in flight)", alloc("5q1"), 0.05, false});
  targets.push_back(
      {"5: allocations per queue op, callback (64 in flight)", alloc("5q64"), 0.05, false});
  targets.push_back(
      {"5: allocations per writer message, callback (1 in flight)", alloc("5w1"), 0.05, false});
  targets.push_back(
      {"5: allocations per writer message, callback (64 in flight)", alloc("5w64"), 0.05, false});

  const std::string load_after = load_average();
  std::printf("\ntargets (%s)%s\n", o.smoke ? "smoke run: not judged" : "ratios of medians", "");
  for (const auto& t : targets)
    std::printf("  %-62s %8s  %s %-5s %s\n", t.label.c_str(), fmt(t.value, 3).c_str(),
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
    write_json(o.json, config, cases, allocs, targets);
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
