//
// test/unit/newer_asio.cpp
//
// What newer Asio releases add, used where the Asio in the build has it:
// immediate executors (Asio 1.28, Boost 1.82), cancel_after and deferred as
// the default completion token (Asio 1.31, Boost 1.86); and what every
// supported Asio has: as_tuple, redirect_error, and completions that happen
// at once never recursing without bound.
//

#include <serq.hpp>

#include "common/exactly_once.hpp"
#include "common/io_threads.hpp"
#include "common/net.hpp"
#include "common/socket_buffers.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <tuple>

using local_socket = net::local::stream_protocol::socket;
using namespace std::chrono_literals;

namespace {

// A writer that has failed: moved from, so every call fails at once with
// bad_descriptor.
struct failed_writer {
  net::io_context ioc;
  local_socket a{ioc}, b{ioc};
  serq::queued_writer<local_socket> owner{(net::local::connect_pair(a, b), std::move(a))};
  serq::queued_writer<local_socket> w{std::move(owner)};
  serq::queued_writer<local_socket>& failed = owner;
};

// Issues `left` writes to a failed writer one after the other, each from the
// previous one's handler, and records how deeply those handlers nested.
struct write_loop {
  serq::queued_writer<local_socket>& w;
  std::size_t left;
  std::size_t completed = 0;
  std::size_t depth = 0;
  std::size_t max_depth = 0;

  template <class Bind>
  void next(Bind bind) {
    if (left-- == 0)
      return;
    w.async_write(net::buffer("x", 1), bind([this, bind](error_code ec, std::size_t) {
                    BOOST_REQUIRE(ec == net::error::bad_descriptor);
                    ++completed;
                    ++depth;
                    max_depth = std::max(max_depth, depth);
                    next(bind);
                    --depth;
                  }));
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(newer_asio)

BOOST_AUTO_TEST_CASE(a_loop_of_failed_writes_without_an_immediate_executor_is_posted) {
  failed_writer f;
  write_loop loop{f.failed, 10000};
  loop.next([](auto h) { return h; });
  BOOST_TEST(loop.completed == 0u);  // none inside the call
  f.ioc.run();
  BOOST_TEST(loop.completed == 10000u);
  BOOST_TEST(loop.max_depth == 1u);
}

BOOST_AUTO_TEST_CASE(as_tuple_and_redirect_error_carry_the_error) {
  failed_writer f;
  std::tuple<error_code, std::size_t> as_tuple_result;
  error_code redirected;
  int done = 0;
  net::co_spawn(
      f.ioc,
      [&]() -> net::awaitable<void> {
        as_tuple_result =
            co_await f.failed.async_write(net::buffer("x", 1), net::as_tuple(net::use_awaitable));
        co_await f.failed.async_flush(net::redirect_error(net::use_awaitable, redirected));
        ++done;
      },
      net::detached);
  f.ioc.run();
  BOOST_TEST(done == 1);
  BOOST_TEST(std::get<0>(as_tuple_result) == net::error::bad_descriptor);
  BOOST_TEST(redirected == net::error::bad_descriptor);
}

#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)

BOOST_AUTO_TEST_CASE(a_write_to_a_failed_writer_completes_through_the_immediate_executor) {
  failed_writer f;
  serq_test::handler_tracker tr;
  bool returned = false;
  bool inside_the_call = false;
  f.failed.async_write(net::buffer("x", 1),
                       net::bind_immediate_executor(net::system_executor(),
                                                    tr.wrap([&](error_code ec, std::size_t n) {
                                                      BOOST_TEST(ec == net::error::bad_descriptor);
                                                      BOOST_TEST(n == 0u);
                                                      inside_the_call = !returned;
                                                    })));
  returned = true;
  BOOST_TEST(inside_the_call);
  BOOST_TEST(tr.invoked() == 1u);

  // The same for a composed operation, a flush and a writability wait.
  int immediate = 0;
  net::steady_timer timer(f.ioc);
  returned = false;
  auto bind = [&](auto h) { return net::bind_immediate_executor(net::system_executor(), h); };
  f.failed.async_enqueue(timer.async_wait(net::deferred), bind([&](error_code ec) {
                           BOOST_TEST(ec == net::error::bad_descriptor);
                           immediate += !returned;
                         }));
  f.failed.async_flush(bind([&](error_code ec) {
    BOOST_TEST(ec == net::error::bad_descriptor);
    immediate += !returned;
  }));
  f.failed.async_wait_writable(bind([&](error_code ec) {
    BOOST_TEST(ec == net::error::bad_descriptor);
    immediate += !returned;
  }));
  returned = true;
  BOOST_TEST(immediate == 3);
}

BOOST_AUTO_TEST_CASE(a_loop_of_immediate_completions_does_not_grow_the_stack) {
  failed_writer f;
  write_loop loop{f.failed, 100000};
  loop.next([](auto h) { return net::bind_immediate_executor(net::system_executor(), h); });
  f.ioc.run();
  BOOST_TEST(loop.completed == 100000u);
  BOOST_TEST(loop.max_depth >= 2u);   // some did run inline, nested
  BOOST_TEST(loop.max_depth <= 16u);  // and the nesting is bounded
}

#endif  // SERQ_HAS_IMMEDIATE_EXECUTOR

#if SERQ_ASIO_VERSION >= 103100

BOOST_AUTO_TEST_CASE(token_less_calls_use_deferred_as_the_default_token) {
  static_assert(
      std::is_same_v<net::default_completion_token_t<net::any_io_executor>, net::deferred_t>);
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::serialized_queue q(ioc);
  serq::queued_writer<local_socket&> w(a);
  net::steady_timer timer(ioc);
  std::size_t written = 0;
  int done = 0;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        timer.expires_after(0s);
        co_await q.async_enqueue(timer.async_wait(net::deferred));
        serq::turn t = co_await q.async_acquire();
        t.release();
        co_await q.async_wait();
        written = co_await w.async_write(net::buffer("hello", 5));
        co_await w.async_flush();
        ++done;
      },
      net::detached);
  ioc.run();
  BOOST_TEST(done == 1);
  BOOST_TEST(written == 5u);
}

BOOST_AUTO_TEST_CASE(cancel_after_removes_a_waiting_entry_before_it_starts) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq::serialized_queue q(strand);
  serq::turn held;
  q.async_acquire([&](error_code ec, serq::turn t) {
    BOOST_TEST(!ec);
    held = std::move(t);
  });
  bool launched = false;
  error_code result;
  bool done = false;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched = true;
        net::post(strand, [h = std::move(handler)]() mutable { h(error_code()); });
      },
      net::cancel_after(1ms, tr.wrap([&](error_code ec) {
        result = ec;
        done = true;
      })));
  while (!done && ioc.run_one() > 0) {
  }
  BOOST_TEST(done);
  BOOST_TEST(result == net::error::operation_aborted);
  BOOST_TEST(!launched);
  BOOST_TEST(q.size() == 1u);  // only the held turn
  held.release();
  ioc.run();
  BOOST_TEST(tr.invoked() == 1u);
}

BOOST_AUTO_TEST_CASE(cancel_after_is_forwarded_to_an_active_operation) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq::serialized_queue q(strand);
  net::steady_timer long_wait(strand, 1h);
  error_code result;
  q.async_enqueue(long_wait.async_wait(net::deferred),
                  net::cancel_after(1ms, tr.wrap([&](error_code ec) { result = ec; })));
  ioc.run();  // returns: the deadline cancelled the hour-long wait
  BOOST_TEST(result == net::error::operation_aborted);
  BOOST_TEST(tr.invoked() == 1u);
}

BOOST_AUTO_TEST_CASE(cancel_after_from_another_thread_on_a_strand_queue) {
  // A foreign thread waits on futures of operations queued on a strand queue run by another
  // thread. cancel_after's own rule (its timer and the operation must share an implicit or
  // explicit strand) is kept by initiating on the io_context's single thread: the main thread
  // only posts the calls there and waits.
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq::serialized_queue q(strand);
  net::steady_timer long_wait(strand, 1h);
  net::steady_timer never(strand, 1h);
  serq_test::io_threads runner(ioc, 1);
  using result = std::tuple<error_code>;
  std::promise<std::pair<std::future<result>, std::future<result>>> started;
  net::post(ioc, [&] {
    // An hour-long operation at the head, then a waiting entry with a deadline.
    auto active = q.async_enqueue(long_wait.async_wait(net::deferred),
                                  net::cancel_after(50ms, net::as_tuple(net::use_future)));
    auto waiting = q.async_enqueue(never.async_wait(net::deferred),
                                   net::cancel_after(1ms, net::as_tuple(net::use_future)));
    started.set_value({std::move(active), std::move(waiting)});
  });
  auto [active, waiting] = started.get_future().get();
  BOOST_TEST(std::get<0>(waiting.get()) == net::error::operation_aborted);
  BOOST_TEST(std::get<0>(active.get()) == net::error::operation_aborted);
  runner.finish();
}

// The shape above, many times over: a waiting entry whose cancel_after
// deadline expires while an hour-long operation is active. Its timer's
// handler runs on use_future's executor, on the io_context's one thread;
// the aborted entry's completion must reach use_future on that thread too
// (posted to the queue's executor, dispatched from there), not on a
// system_executor thread where it raced the timer's handler and now and
// then destroyed the handler unrun (future_error: broken promise).
BOOST_AUTO_TEST_CASE(cancel_after_on_waiting_use_future_entries_never_breaks_the_promise) {
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq::serialized_queue q(strand);
  net::steady_timer hold(strand);
  net::steady_timer never(strand, 1h);
  serq_test::io_threads runner(ioc, 1);
  using result = std::tuple<error_code>;
  int aborted = 0;
  for (int i = 0; i < 200; ++i) {
    std::promise<std::pair<std::future<result>, std::future<result>>> started;
    net::post(strand, [&] {
      hold.expires_after(1h);
      auto active = q.async_enqueue(hold.async_wait(net::deferred), net::as_tuple(net::use_future));
      auto waiting = q.async_enqueue(never.async_wait(net::deferred),
                                     net::cancel_after(1us, net::as_tuple(net::use_future)));
      started.set_value({std::move(active), std::move(waiting)});
    });
    auto futures = started.get_future().get();
    try {
      aborted += std::get<0>(futures.second.get()) == net::error::operation_aborted;
    } catch (const std::future_error&) {
      // broken promise: counted as not aborted
    }
    net::post(strand, [&] { hold.cancel(); });
    BOOST_TEST(std::get<0>(futures.first.get()) == net::error::operation_aborted);
  }
  BOOST_TEST(aborted == 200);
  runner.finish();
}

// A normal composed operation whose turn comes while an urgent item is
// queued runs in the urgent lane, behind that item. A cancel_after deadline
// on it (use_future, waited on from a foreign thread, the writer's strand
// run by two threads) reaches it there: it completes with operation_aborted
// and never starts, while the urgent item it waited behind goes on. With
// more than one thread the token is bound to the strand: cancel_after's
// timer handler runs on the handler's executor, and use_future's runs it on
// whichever thread fires the timer, outside the strand where the operation
// completes (Asio's rule: the two must share a strand; broken, the promise
// broke in about one run in three).
BOOST_AUTO_TEST_CASE(cancel_after_reaches_a_composed_operation_waiting_in_the_urgent_lane) {
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq_test::io_threads io(ioc, 2);
  const std::string big(16 << 20, 'u');  // the peer does not read: it blocks the stream
  for (int round = 0; round < 20; ++round) {
    local_socket a(strand), b(ioc);
    serq_test::connect_small_pair(a, b);
    net::steady_timer hour(strand, 1h);
    std::atomic<bool> launched{false};
    std::promise<error_code> urgent_done;
    std::future<std::tuple<error_code>> composed;
    {
      serq::queued_writer<local_socket&> w(a);
      std::promise<void> queued;
      net::post(strand, [&] {
        w.async_send(serq::urgent, big,
                     [&](error_code ec, std::size_t) { urgent_done.set_value(ec); });
        composed = w.async_enqueue<void(error_code)>(
            [&](auto handler) {
              launched = true;
              hour.async_wait(std::move(handler));
            },
            net::cancel_after(2ms, net::bind_executor(strand, net::as_tuple(net::use_future))));
        queued.set_value();
      });
      queued.get_future().wait();
      BOOST_TEST(std::get<0>(composed.get()) == net::error::operation_aborted);
      BOOST_TEST(!launched);
      // The urgent send still waits for the peer; closing the socket fails it
      // (operation_aborted, or bad_descriptor if the close came between two
      // write_some calls).
      std::promise<void> closed;
      net::post(strand, [&] {
        a.close();
        closed.set_value();
      });
      closed.get_future().wait();
      BOOST_TEST(static_cast<bool>(urgent_done.get_future().get()));
      // The writer goes on the strand, where its stream's steps run.
      std::promise<void> gone;
      net::post(strand, [&] { gone.set_value(); });
      gone.get_future().wait();
    }
  }
  io.finish();
}

BOOST_AUTO_TEST_CASE(cancel_after_on_a_queued_write_removes_it_whole) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  serq_test::connect_small_pair(a, b);
  serq::queued_writer<local_socket&> w(a);
  // The peer does not read: a 16 MiB message blocks the stream.
  const std::string big(16 << 20, 'b');
  error_code big_ec;
  w.async_write(net::buffer(big), [&](error_code ec, std::size_t) { big_ec = ec; });
  error_code small_ec;
  std::size_t small_n = 1;
  bool small_done = false;
  w.async_write(net::buffer("small", 5), net::cancel_after(1ms, [&](error_code ec, std::size_t n) {
                  small_ec = ec;
                  small_n = n;
                  small_done = true;
                }));
  while (!small_done && ioc.run_one() > 0) {
  }
  BOOST_TEST(small_ec == net::error::operation_aborted);
  BOOST_TEST(small_n == 0u);
  BOOST_TEST(w.size() == 1u);  // the big one goes on
  a.close();
  ioc.run();
  BOOST_TEST(big_ec);
}

#endif  // SERQ_ASIO_VERSION >= 103100

BOOST_AUTO_TEST_SUITE_END()
