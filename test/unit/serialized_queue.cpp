//
// test/unit/serialized_queue.cpp: the behaviour of serq::basic_serialized_queue.
//
// Every test drives its io_context by hand (run, poll, poll_one, run_one) so
// it can observe the queue between steps; nothing waits on wall-clock time.
// Handlers are wrapped by serq_test::handler_tracker, which fails the test if
// one is invoked twice or lost.
//

#include <serq/serialized_queue.hpp>

#include "common/counting_allocator.hpp"
#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"
#include "common/tracking_executor.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr net::cancellation_type_t all_cancellation_types[] = {net::cancellation_type::terminal,
                                                               net::cancellation_type::partial,
                                                               net::cancellation_type::total};

// A raw initiation that counts its launch and completes with `results`,
// posted to the handler's associated executor as a conforming Asio
// operation would.
template <class... Results>
auto posting_op(int& launched, Results... results) {
  return [&launched, results...](auto handler) {
    ++launched;
    net::post(net::append(std::move(handler), results...));
  };
}

// Raw initiations of signature void(error_code) that only store their
// handler, so the test decides when each operation completes. Declare it
// after the io_context: handlers left in it are destroyed with it.
class manual_ops {
 public:
  explicit manual_ops(net::any_io_executor ex) : ex_(std::move(ex)) {}

  auto op() {
    return [this](auto handler) {
      handlers_.emplace_back(std::move(handler));
      ++launched_;
    };
  }

  std::size_t launched() const noexcept { return launched_; }
  std::size_t running() const noexcept { return handlers_.size(); }

  // Completes the oldest running operation: its handler is posted (through
  // the context's executor) to its associated executor.
  void complete_next(error_code ec = {}) {
    BOOST_REQUIRE(!handlers_.empty());
    auto h = std::move(handlers_.front());
    handlers_.pop_front();
    net::post(ex_, net::append(std::move(h), ec));
  }

 private:
  net::any_io_executor ex_;
  std::deque<net::any_completion_handler<void(error_code)>> handlers_;
  std::size_t launched_ = 0;
};

// Lets a test shut an io_context down (as its destructor does) while objects
// using it are still alive.
struct shutdownable_io_context : net::io_context {
  using net::io_context::shutdown;
};

void rethrow(std::exception_ptr e) {
  if (e)
    std::rethrow_exception(e);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(test_serialized_queue)

// ---- construction and observers ---------------------------------------------

BOOST_AUTO_TEST_CASE(constructed_running_and_empty_with_copied_name) {
  net::io_context ioc;
  std::optional<std::string> name("alpha");
  serq::serialized_queue q(ioc, *name);
  name.reset();  // the queue keeps its own copy
  BOOST_TEST(q.name() == "alpha");
  BOOST_TEST(q.running());
  BOOST_TEST(q.empty());
  BOOST_TEST(q.size() == 0u);
  BOOST_TEST((q.get_executor() == net::any_io_executor(ioc.get_executor())));

  serq::serialized_queue unnamed(ioc.get_executor());
  BOOST_TEST(unnamed.name().empty());

  static_assert(
      std::is_same_v<serq::serialized_queue::rebind_executor<net::io_context::executor_type>::other,
                     serq::basic_serialized_queue<net::io_context::executor_type>>);
}

BOOST_AUTO_TEST_CASE(size_counts_waiting_entries_plus_the_active_one) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  for (int i = 0; i < 3; ++i)
    q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  BOOST_TEST(q.size() == 3u);
  BOOST_TEST(!q.empty());

  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);
  BOOST_TEST(q.size() == 3u);  // one active, two waiting

  ops.complete_next();
  ioc.poll();
  BOOST_TEST(ops.launched() == 2u);
  BOOST_TEST(q.size() == 2u);

  q.async_wait(tr.wrap([](error_code) {}));
  BOOST_TEST(q.size() == 3u);  // a barrier is an entry

  ops.complete_next();
  ioc.poll();
  ops.complete_next();
  ioc.run();
  BOOST_TEST(q.size() == 0u);
  BOOST_TEST(q.empty());
  BOOST_TEST(tr.invoked() == 4u);
}

// ---- ordering ---------------------------------------------------------------

BOOST_AUTO_TEST_CASE(fifo_order_and_no_overlap_under_random_durations) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  constexpr int n = 40;
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<int> ms(0, 3);
  std::vector<std::unique_ptr<net::steady_timer>> timers;
  int active = 0;
  int max_active = 0;
  std::vector<int> launched, completed;

  for (int i = 0; i < n; ++i) {
    timers.push_back(std::make_unique<net::steady_timer>(ioc));
    auto& timer = *timers.back();
    const auto duration = std::chrono::milliseconds(ms(rng));
    q.async_enqueue<void(error_code)>(
        [&, i, duration](auto handler) {
          launched.push_back(i);
          max_active = std::max(max_active, ++active);
          timer.expires_after(duration);
          timer.async_wait([&active, h = std::move(handler)](error_code ec) mutable {
            --active;  // the operation completes here
            std::move(h)(ec);
          });
        },
        tr.wrap([&, i](error_code ec) {
          BOOST_TEST(!ec);
          completed.push_back(i);
        }));
  }
  BOOST_TEST(launched.empty());
  ioc.run();

  std::vector<int> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  BOOST_TEST(max_active == 1);
  BOOST_TEST(launched == expected, boost::test_tools::per_element());
  BOOST_TEST(completed == expected, boost::test_tools::per_element());
  BOOST_TEST(tr.invoked() == std::size_t(n));
}

// Each timer's expiry is fixed at construction, so if the queue launched them
// together they would complete shortest first; serialized, they complete in
// the order they were queued.
BOOST_AUTO_TEST_CASE(fifo_order_of_deferred_timer_waits_of_random_length) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  constexpr int n = 30;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> ms(0, 20);
  std::vector<std::unique_ptr<net::steady_timer>> timers;
  std::vector<int> completed;
  for (int i = 0; i < n; ++i) {
    timers.push_back(std::make_unique<net::steady_timer>(ioc, std::chrono::milliseconds(ms(rng))));
    q.async_enqueue(timers.back()->async_wait(net::deferred), tr.wrap([&, i](error_code ec) {
      BOOST_TEST(!ec);
      completed.push_back(i);
    }));
  }
  ioc.run();

  std::vector<int> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  BOOST_TEST(completed == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(trigger_is_posted_never_run_inside_async_enqueue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq::basic_serialized_queue<decltype(tracked)> q(tracked);

  int launched = 0;
  bool launched_on_queue_executor = false;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        ++launched;
        launched_on_queue_executor = tracked.running_in_this_thread();
        net::post(net::append(std::move(handler), error_code()));
      },
      tr.wrap([](error_code) {}));
  BOOST_TEST(launched == 0);
  BOOST_TEST(tracked.executions() == 1u);  // the trigger, posted

  BOOST_TEST(ioc.poll_one() == 1u);
  BOOST_TEST(launched == 1);
  BOOST_TEST(launched_on_queue_executor);
  ioc.run();
  BOOST_TEST(tr.invoked() == 1u);
}

BOOST_AUTO_TEST_CASE(trigger_inline_launches_inside_the_call_when_running_and_idle) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  int launched = 0;
  int completed = 0;
  q.async_enqueue<void(error_code, int)>(serq::trigger_inline,
                                         posting_op(launched, error_code(), 5),
                                         tr.wrap([&](error_code ec, int v) {
                                           BOOST_TEST(!ec);
                                           BOOST_TEST(v == 5);
                                           ++completed;
                                         }));
  BOOST_TEST(launched == 1);
  BOOST_TEST(completed == 0);
  BOOST_TEST(q.size() == 1u);
  ioc.run();
  BOOST_TEST(completed == 1);

  // The deferred-operation form too.
  net::steady_timer timer(ioc, 1h);
  q.async_enqueue(serq::trigger_inline, timer.async_wait(net::deferred),
                  tr.wrap([&](error_code ec) {
                    BOOST_TEST(ec == net::error::operation_aborted);
                    ++completed;
                  }));
  BOOST_TEST(timer.cancel() == 1u);  // it was waiting: launched inside the call
  ioc.restart();
  ioc.run();
  BOOST_TEST(completed == 2);
}

BOOST_AUTO_TEST_CASE(trigger_inline_waits_behind_an_active_or_triggered_entry) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  // Triggered (posted) but not yet launched: the queue is already busy.
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  int launched = 0;
  q.async_enqueue<void(error_code)>(serq::trigger_inline, posting_op(launched, error_code()),
                                    tr.wrap([](error_code) {}));
  BOOST_TEST(launched == 0);
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);
  BOOST_TEST(launched == 0);

  // Active.
  q.async_enqueue<void(error_code)>(serq::trigger_inline, posting_op(launched, error_code()),
                                    tr.wrap([](error_code) {}));
  BOOST_TEST(launched == 0);

  ops.complete_next();
  ioc.run();
  BOOST_TEST(launched == 2);
  BOOST_TEST(tr.invoked() == 3u);
}

BOOST_AUTO_TEST_CASE(trigger_inline_waits_when_stopped) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  q.stop();

  int launched = 0;
  q.async_enqueue<void(error_code)>(serq::trigger_inline, posting_op(launched, error_code()),
                                    tr.wrap([](error_code) {}));
  BOOST_TEST(launched == 0);
  ioc.poll();
  BOOST_TEST(launched == 0);
  BOOST_TEST(q.size() == 1u);

  q.start();
  ioc.poll();
  BOOST_TEST(launched == 1);
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- results ----------------------------------------------------------------

// With one byte per write_some, two unserialized async_writes would interleave.
BOOST_AUTO_TEST_CASE(async_write_byte_counts_pass_through_and_writes_do_not_interleave) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  serq_test::test_stream local(ioc), remote(ioc);
  local.connect(remote);
  local.write_size(1);

  const std::string first = "hello ", second = "queued world";
  std::vector<std::size_t> written;
  q.async_enqueue(net::async_write(local, net::buffer(first), net::deferred),
                  tr.wrap([&](error_code ec, std::size_t n) {
                    BOOST_TEST(!ec);
                    written.push_back(n);
                  }));
  q.async_enqueue(net::async_write(local, net::buffer(second), net::deferred),
                  tr.wrap([&](error_code ec, std::size_t n) {
                    BOOST_TEST(!ec);
                    written.push_back(n);
                  }));
  ioc.run();

  BOOST_TEST(remote.str() == first + second);
  BOOST_TEST(written == (std::vector<std::size_t>{first.size(), second.size()}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(operation_error_passes_through_and_the_queue_moves_on) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  // fail_count fails its n-th and every later operation: the second write
  // goes to another stream.
  serq_test::fail_count fc(1);
  serq_test::test_stream local(ioc, fc), remote(ioc), other(ioc), other_remote(ioc);
  local.connect(remote);
  other.connect(other_remote);

  const std::string data = "abc";
  error_code first_ec;
  std::size_t first_n = 99;
  q.async_enqueue(net::async_write(local, net::buffer(data), net::deferred),
                  tr.wrap([&](error_code ec, std::size_t n) {
                    first_ec = ec;
                    first_n = n;
                  }));
  q.async_enqueue(net::async_write(other, net::buffer(data), net::deferred),
                  tr.wrap([&](error_code ec, std::size_t n) {
                    BOOST_TEST(!ec);
                    BOOST_TEST(n == data.size());
                  }));
  ioc.run();
  BOOST_TEST(first_ec == error_code(serq_test::test_error::test_failure));
  BOOST_TEST(first_n == 0u);
  BOOST_TEST(remote.str().empty());
  BOOST_TEST(other_remote.str() == data);
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(cancelled_timer_reports_operation_aborted_through_the_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::steady_timer timer(ioc, 1h);

  error_code got;
  q.async_enqueue(timer.async_wait(net::deferred), tr.wrap([&](error_code ec) { got = ec; }));
  ioc.poll();
  BOOST_TEST(timer.cancel() == 1u);
  ioc.run();
  BOOST_TEST(got == net::error::operation_aborted);
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- completion tokens ------------------------------------------------------

BOOST_AUTO_TEST_CASE(use_future_delivers_the_value) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int launched = 0;
  std::future<int> f = q.async_enqueue<void(error_code, int)>(
      posting_op(launched, error_code(), 42), net::use_future);
  ioc.run();
  BOOST_TEST(f.get() == 42);
  BOOST_TEST(launched == 1);
}

BOOST_AUTO_TEST_CASE(use_future_throws_the_operation_error) {
  net::io_context ioc;
  serq::serialized_queue q(ioc), stopped(ioc);
  int launched = 0;
  std::future<int> failed = q.async_enqueue<void(error_code, int)>(
      posting_op(launched, error_code(net::error::connection_reset), 1), net::use_future);
  stopped.stop();
  std::future<void> aborted = stopped.async_wait(net::use_future);
  BOOST_TEST(stopped.cancel() == 1u);
  ioc.run();

  auto is = [](net::error::basic_errors e) {
    return [e](const serq::system_error& x) { return x.code() == e; };
  };
  BOOST_CHECK_EXCEPTION(failed.get(), serq::system_error, is(net::error::connection_reset));
  BOOST_CHECK_EXCEPTION(aborted.get(), serq::system_error, is(net::error::operation_aborted));
}

BOOST_AUTO_TEST_CASE(use_awaitable_returns_results_to_the_coroutine) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  serq_test::test_stream local(ioc), remote(ioc);
  local.connect(remote);
  const std::string data = "coro";
  bool done = false;

  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        std::size_t n = co_await q.async_enqueue(
            net::async_write(local, net::buffer(data), net::deferred), net::use_awaitable);
        BOOST_TEST(n == data.size());
        co_await q.async_wait(net::use_awaitable);
        int launched = 0;
        try {
          co_await q.async_enqueue<void(error_code)>(
              posting_op(launched, error_code(net::error::eof)), net::use_awaitable);
          BOOST_ERROR("an error must throw");
        } catch (const serq::system_error& e) {
          BOOST_TEST(e.code() == net::error::eof);
        }
        BOOST_TEST(launched == 1);
        done = true;
      },
      rethrow);
  ioc.run();
  BOOST_TEST(done);
  BOOST_TEST(remote.str() == data);
}

BOOST_AUTO_TEST_CASE(deferred_token_queues_nothing_until_the_deferred_op_is_launched) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int launched = 0;

  auto op =
      q.async_enqueue<void(error_code, int)>(posting_op(launched, error_code(), 3), net::deferred);
  ioc.poll();
  BOOST_TEST(q.size() == 0u);
  BOOST_TEST(launched == 0);
  ioc.restart();

  std::move(op)(tr.wrap([](error_code ec, int v) {
    BOOST_TEST(!ec);
    BOOST_TEST(v == 3);
  }));
  BOOST_TEST(q.size() == 1u);
  ioc.run();
  BOOST_TEST(launched == 1);
  BOOST_TEST(tr.invoked() == 1u);
}

// Asio 1.26's as_tuple copies the token it wraps, so the handler here is a
// plain (copyable) lambda rather than a tracked one.
BOOST_AUTO_TEST_CASE(as_tuple_token_packs_error_and_values) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int launched = 0;
  int invoked = 0;
  q.async_enqueue<void(error_code, int)>(posting_op(launched, error_code(net::error::eof), 7),
                                         net::as_tuple([&](std::tuple<error_code, int> t) {
                                           BOOST_TEST(std::get<0>(t) == net::error::eof);
                                           BOOST_TEST(std::get<1>(t) == 7);
                                           ++invoked;
                                         }));
  ioc.run();
  BOOST_TEST(invoked == 1);
  BOOST_TEST(launched == 1);
}

BOOST_AUTO_TEST_CASE(redirect_error_token_stores_the_error) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int launched = 0;
  error_code ec;
  q.async_enqueue<void(error_code, int)>(
      posting_op(launched, error_code(net::error::eof), 8),
      net::redirect_error(tr.wrap([](int v) { BOOST_TEST(v == 8); }), ec));
  ioc.run();
  BOOST_TEST(ec == net::error::eof);
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- async_acquire and turn -------------------------------------------------

BOOST_AUTO_TEST_CASE(acquire_excludes_other_holders_across_co_await_points) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int inside = 0;
  int max_inside = 0;
  std::vector<int> log;

  for (int id = 0; id < 3; ++id) {
    net::co_spawn(
        ioc,
        [&, id]() -> net::awaitable<void> {
          serq::turn t = co_await q.async_acquire(net::use_awaitable);
          BOOST_TEST(static_cast<bool>(t));
          max_inside = std::max(max_inside, ++inside);
          auto ex = co_await net::this_coro::executor;
          for (int step = 0; step < 3; ++step) {
            log.push_back(id);
            net::steady_timer timer(ex, 1ms);
            co_await timer.async_wait(net::use_awaitable);
            co_await net::post(ex, net::use_awaitable);
          }
          --inside;
        },
        rethrow);
  }
  // Started after the three, so queued behind their acquires.
  int launched = 0;
  bool op_done = false;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        co_await q.async_enqueue<void(error_code)>(
            [&](auto handler) {
              ++launched;
              BOOST_TEST(inside == 0);
              BOOST_TEST(log.size() == 9u);
              net::post(net::append(std::move(handler), error_code()));
            },
            net::use_awaitable);
        op_done = true;
      },
      rethrow);
  ioc.run();

  BOOST_TEST(max_inside == 1);
  BOOST_TEST(log.size() == 9u);
  for (std::size_t i = 0; i + 1 < log.size(); ++i)
    if (i % 3 != 2)
      BOOST_TEST(log[i] == log[i + 1]);  // each holder's steps stay together
  BOOST_TEST(op_done);
  BOOST_TEST(launched == 1);
}

BOOST_AUTO_TEST_CASE(turn_keeps_queue_busy_until_release_which_posts_next_trigger) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  serq::turn held;
  q.async_acquire(tr.wrap([&](error_code ec, serq::turn t) {
    BOOST_TEST(!ec);
    BOOST_TEST(static_cast<bool>(t));
    held = std::move(t);
  }));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST(static_cast<bool>(held));
  BOOST_TEST(launched == 0);
  BOOST_TEST(q.size() == 2u);

  held.release();
  BOOST_TEST(!held);
  BOOST_TEST(launched == 0);  // posted, not launched inside release()
  held.release();             // no-op on an empty turn
  ioc.poll();
  BOOST_TEST(launched == 1);
  BOOST_TEST(q.empty());
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(destroying_turn_ends_it) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  std::optional<serq::turn> held;
  q.async_acquire(tr.wrap([&](error_code, serq::turn t) { held.emplace(std::move(t)); }));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST(launched == 0);
  held.reset();
  ioc.poll();
  BOOST_TEST(launched == 1);
}

// Takes q's turn into held (one poll grants it), so that entries queued
// next wait behind it. The context, out of work once the turn was handed
// out, is restarted.
template <class Queue>
void hold_turn(Queue& q, std::optional<serq::turn>& held, serq_test::handler_tracker& tr,
               net::io_context& ioc) {
  q.async_acquire(tr.wrap([&held](error_code, serq::turn t) { held.emplace(std::move(t)); }));
  ioc.poll();
  ioc.restart();
  BOOST_TEST_REQUIRE(held.has_value());
}

// A waiting entry removed by its signal or by cancel() has its abort posted
// after the queue's lock is released. If another thread finishes the active
// entry in between (here: the trace hook, which runs at that moment,
// releases the held turn), the queue is idle, but its work must outlive
// the post: were it released first, an io_context with nothing else to do
// would stop, and run() would return without running the aborted handler.
BOOST_AUTO_TEST_CASE(the_queue_s_work_outlives_the_posting_of_aborts_it_removed) {
  for (const bool by_signal : {true, false}) {
    BOOST_TEST_CONTEXT("by_signal " << by_signal) {
      serq_test::handler_tracker tr;
      net::io_context ioc;
      serq::serialized_queue q(ioc.get_executor());
      std::optional<serq::turn> held;
      hold_turn(q, held, tr, ioc);

      net::cancellation_signal sig;
      int launched = 0;
      error_code got;
      int calls = 0;
      q.async_enqueue<void(error_code)>(
          posting_op(launched, error_code()),
          net::bind_cancellation_slot(sig.slot(), tr.wrap([&](error_code ec) {
            got = ec;
            ++calls;
          })));
      q.set_trace_hook([&](serq::trace_point p, serq::entry_info&) {
        if (p == serq::trace_point::detach && held)
          held.reset();  // the active entry finishes: nothing waits any more
      });
      if (by_signal)
        sig.emit(net::cancellation_type::total);
      else
        BOOST_TEST(q.cancel() == 1u);
      BOOST_TEST(!held.has_value());
      ioc.run();  // no restart(): the context must not have stopped
      BOOST_TEST(calls == 1);
      BOOST_TEST(got == net::error::operation_aborted);
      BOOST_TEST(launched == 0);
    }
  }
}

// An aborted entry's completion is posted; when its executor cannot take
// it (std::bad_alloc), that handler is destroyed unrun, as at shutdown, and
// the other entries are still aborted: none is lost, and the queue's work
// does not keep run() from returning.
BOOST_AUTO_TEST_CASE(cancel_whose_post_fails_aborts_the_rest_then_rethrows) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq::basic_serialized_queue<decltype(tracked)> q(tracked);

  std::optional<serq::turn> held;
  hold_turn(q, held, tr, ioc);
  int launched = 0;
  int aborted = 0;
  for (int i = 0; i < 3; ++i)
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      tr.wrap([&](error_code ec) {
                                        if (ec == net::error::operation_aborted)
                                          ++aborted;
                                      }));
  tracked.state()->fail_next = 1;  // the first abort's post
  BOOST_CHECK_THROW(q.cancel(), std::bad_alloc);
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
  BOOST_TEST(q.size() == 1u);  // the turn
  held.reset();
  ioc.run();  // returns: no entry is left holding the queue's work
  BOOST_TEST(aborted == 2);
  BOOST_TEST(launched == 0);
  tr.check_all_accounted();
}

// Releasing a turn triggers the next entry: its launch is posted. When the
// executor cannot take it (std::bad_alloc) inside that noexcept release, the
// entry is dropped as at shutdown (its handler destroyed unrun) and the one
// after it goes on; the release does not terminate the program.
BOOST_AUTO_TEST_CASE(a_trigger_that_cannot_be_posted_drops_its_entry_and_the_queue_goes_on) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq::basic_serialized_queue<decltype(tracked)> q(tracked);

  std::optional<serq::turn> held;
  hold_turn(q, held, tr, ioc);
  int launched = 0;
  int completed = 0;
  for (int i = 0; i < 2; ++i)
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      tr.wrap([&](error_code ec) {
                                        if (!ec)
                                          ++completed;
                                      }));
  tracked.state()->fail_next = 1;  // the first entry's trigger
  held.reset();
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
  ioc.run();
  BOOST_TEST(launched == 1);
  BOOST_TEST(completed == 1);
  BOOST_TEST(q.empty());
  tr.check_all_accounted();
}

BOOST_AUTO_TEST_CASE(destroying_a_queue_whose_abort_post_fails_neither_throws_nor_loses_entries) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  int aborted = 0;
  {
    std::optional<serq::turn> held;  // outlives the queue: its release triggers nothing
    serq::basic_serialized_queue<decltype(tracked)> q(tracked);
    hold_turn(q, held, tr, ioc);
    int launched = 0;
    for (int i = 0; i < 3; ++i)
      q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                        tr.wrap([&](error_code ec) {
                                          if (ec == net::error::operation_aborted)
                                            ++aborted;
                                        }));
    tracked.state()->fail_next = 2;
  }  // the destructor aborts the three: two posts fail
  BOOST_TEST(tr.destroyed_uninvoked() == 2u);
  ioc.run();
  BOOST_TEST(aborted == 1);
  tr.check_all_accounted();
}

// An operation that cannot be copied into its entry (its copy throws, as a
// copy that allocates may): the exception leaves async_enqueue, and the entry
// keeps nothing: no outstanding work on the handler's executor (its
// context's run() returns), no canceller in the handler's slot.
struct copy_throws {
  copy_throws() = default;
  copy_throws(const copy_throws&) { throw std::runtime_error("operation copy"); }
  copy_throws(copy_throws&&) noexcept = default;
  template <class Handler>
  void operator()(Handler handler) const {
    net::post(net::append(std::move(handler), error_code()));
  }
};

BOOST_AUTO_TEST_CASE(an_operation_whose_copy_throws_leaves_nothing_behind) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  net::io_context handler_ioc;  // the handler's executor: not the queue's
  serq::serialized_queue q(ioc);
  net::cancellation_signal sig;
  const copy_throws op;
  BOOST_CHECK_THROW(q.async_enqueue<void(error_code)>(
                        op, net::bind_cancellation_slot(
                                sig.slot(), net::bind_executor(handler_ioc, tr.wrap([](error_code) {
                                  BOOST_ERROR("the handler of a failed call was invoked");
                                })))),
                    std::runtime_error);
  BOOST_TEST(!sig.slot().has_handler());
  BOOST_TEST(q.empty());
  handler_ioc.poll();
  BOOST_TEST(handler_ioc.stopped());  // no work left behind
  ioc.poll();
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
}

BOOST_AUTO_TEST_CASE(moving_a_turn_transfers_it_and_move_assignment_releases_the_old_one) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q1(ioc), q2(ioc);

  serq::turn t1, t2;
  q1.async_acquire(tr.wrap([&](error_code, serq::turn t) { t1 = std::move(t); }));
  q2.async_acquire(tr.wrap([&](error_code, serq::turn t) { t2 = std::move(t); }));
  int launched1 = 0;
  q1.async_enqueue<void(error_code)>(posting_op(launched1, error_code()),
                                     tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST((t1 && t2));

  serq::turn moved(std::move(t1));
  BOOST_TEST(!t1);
  BOOST_TEST(static_cast<bool>(moved));
  ioc.poll();
  BOOST_TEST(launched1 == 0);  // the turn on q1 is still held, by `moved`

  moved = std::move(t2);  // releases q1's turn, holds q2's
  BOOST_TEST(!t2);
  BOOST_TEST(static_cast<bool>(moved));
  ioc.poll();
  BOOST_TEST(launched1 == 1);

  int launched2 = 0;
  q2.async_enqueue<void(error_code)>(posting_op(launched2, error_code()),
                                     tr.wrap([](error_code) {}));
  ioc.restart();  // a held turn is no outstanding work: the context may have stopped
  ioc.poll();
  BOOST_TEST(launched2 == 0);
  moved = serq::turn();
  ioc.poll();
  BOOST_TEST(launched2 == 1);
}

BOOST_AUTO_TEST_CASE(aborted_acquire_yields_an_empty_turn) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  q.async_acquire(tr.wrap([](error_code ec, serq::turn t) {
    BOOST_TEST(ec == net::error::operation_aborted);
    BOOST_TEST(!t);
  }));
  net::cancellation_signal sig;
  q.async_acquire(net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec, serq::turn t) {
    BOOST_TEST(ec == net::error::operation_aborted);
    BOOST_TEST(!t);
  })));
  ioc.poll();
  sig.emit(net::cancellation_type::terminal);
  BOOST_TEST(q.cancel() == 1u);
  ioc.poll();
  BOOST_TEST(tr.invoked() == 2u);
  ops.complete_next();
  ioc.run();
  BOOST_TEST(tr.invoked() == 3u);
  BOOST_TEST(q.empty());
}

BOOST_AUTO_TEST_CASE(cancellation_after_the_turn_is_handed_out_is_ignored) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::cancellation_signal sig;

  serq::turn held;
  q.async_acquire(net::bind_cancellation_slot(sig.slot(), tr.wrap([&](error_code ec, serq::turn t) {
    BOOST_TEST(!ec);
    held = std::move(t);
  })));
  ioc.poll();
  BOOST_TEST(static_cast<bool>(held));
  for (auto type : all_cancellation_types)
    sig.emit(type);
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.restart();  // a held turn is no outstanding work: the context may have stopped
  ioc.poll();
  BOOST_TEST(static_cast<bool>(held));
  BOOST_TEST(launched == 0);
  held.release();
  ioc.poll();
  BOOST_TEST(launched == 1);
}

BOOST_AUTO_TEST_CASE(turn_may_outlive_its_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::turn held;
  {
    serq::serialized_queue q(ioc);
    q.async_acquire(tr.wrap([&](error_code, serq::turn t) { held = std::move(t); }));
    ioc.poll();
    q.async_wait(tr.wrap([](error_code ec) { BOOST_TEST(ec == net::error::operation_aborted); }));
  }
  BOOST_TEST(static_cast<bool>(held));
  ioc.restart();  // a held turn is no outstanding work: the context has stopped
  ioc.poll();
  BOOST_TEST(tr.invoked() == 2u);
  held.release();
  BOOST_TEST(!held);
  ioc.run();
}

// ---- stop and start ---------------------------------------------------------

BOOST_AUTO_TEST_CASE(stopped_queue_triggers_nothing_and_start_posts_the_first_trigger) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  q.stop();
  BOOST_TEST(!q.running());
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST(launched == 0);
  BOOST_TEST(q.size() == 2u);

  q.start();
  BOOST_TEST(q.running());
  BOOST_TEST(launched == 0);  // posted, not launched inside start()
  ioc.poll();
  BOOST_TEST(launched == 2);
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(stop_inside_running_op_lets_it_finish_and_triggers_nothing_more) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  int launched_b = 0;
  bool a_done = false;
  q.async_enqueue<void(error_code, int)>(
      [&](auto handler) {
        q.stop();
        net::post(net::append(std::move(handler), error_code(), 1));
      },
      tr.wrap([&](error_code ec, int v) {
        BOOST_TEST(!ec);
        BOOST_TEST(v == 1);
        a_done = true;
      }));
  q.async_enqueue<void(error_code)>(posting_op(launched_b, error_code()),
                                    tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST(a_done);
  BOOST_TEST(launched_b == 0);
  BOOST_TEST(q.size() == 1u);
  BOOST_TEST(!q.running());

  q.start();
  ioc.poll();
  BOOST_TEST(launched_b == 1);
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(start_while_an_entry_is_active_does_not_launch_a_second) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  ioc.poll();
  q.stop();
  q.start();
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);
  ops.complete_next();
  ioc.poll();
  BOOST_TEST(ops.launched() == 2u);
  ops.complete_next();
  ioc.run();
}

// ---- async_wait -------------------------------------------------------------

BOOST_AUTO_TEST_CASE(async_wait_passes_after_everything_queued_before_it) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::steady_timer t1(ioc, 5ms), t2(ioc, 1ms);
  std::vector<std::string> log;

  q.async_enqueue(t1.async_wait(net::deferred), tr.wrap([&](error_code) { log.push_back("a"); }));
  q.async_enqueue(t2.async_wait(net::deferred), tr.wrap([&](error_code) { log.push_back("b"); }));
  q.async_wait(tr.wrap([&](error_code ec) {
    BOOST_TEST(!ec);
    log.push_back("wait");
  }));
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        log.push_back("c launched");
        net::post(net::append(std::move(handler), error_code()));
      },
      tr.wrap([&](error_code) { log.push_back("c"); }));
  ioc.run();
  BOOST_TEST(log == (std::vector<std::string>{"a", "b", "wait", "c launched", "c"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(async_wait_on_an_idle_queue_completes_posted) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  q.async_wait(tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  BOOST_TEST(tr.invoked() == 0u);
  BOOST_TEST(q.size() == 1u);
  ioc.run();
  BOOST_TEST(tr.invoked() == 1u);
  BOOST_TEST(q.empty());
}

BOOST_AUTO_TEST_CASE(async_wait_does_not_pass_while_stopped) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  q.stop();
  q.async_wait(tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.poll();
  BOOST_TEST(tr.invoked() == 0u);
  BOOST_TEST(q.size() == 1u);
  q.start();
  ioc.poll();
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- cancel() ----------------------------------------------------------------

BOOST_AUTO_TEST_CASE(cancel_aborts_every_waiting_entry_with_value_initialised_results) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  bool a_ok = false;
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([&](error_code ec) { a_ok = !ec; }));
  int launched = 0;
  q.async_enqueue<void(error_code, std::size_t, std::string)>(
      posting_op(launched, error_code(), std::size_t(5), std::string("x")),
      tr.wrap([](error_code ec, std::size_t n, std::string s) {
        BOOST_TEST(ec == net::error::operation_aborted);
        BOOST_TEST(n == 0u);
        BOOST_TEST(s.empty());
      }));
  q.async_acquire(tr.wrap([](error_code ec, serq::turn t) {
    BOOST_TEST(ec == net::error::operation_aborted);
    BOOST_TEST(!t);
  }));
  q.async_wait(tr.wrap([](error_code ec) { BOOST_TEST(ec == net::error::operation_aborted); }));
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);

  BOOST_TEST(q.cancel() == 3u);
  BOOST_TEST(tr.invoked() == 0u);  // posted, not invoked inside cancel()
  BOOST_TEST(q.size() == 1u);      // the active entry is not affected
  ioc.poll();
  BOOST_TEST(tr.invoked() == 3u);
  BOOST_TEST(launched == 0);

  ops.complete_next();
  ioc.run();
  BOOST_TEST(a_ok);
  BOOST_TEST(q.empty());
  BOOST_TEST(q.cancel() == 0u);
}

BOOST_AUTO_TEST_CASE(cancel_aborts_entries_waiting_on_a_stopped_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  q.stop();
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code ec) {
    BOOST_TEST(ec == net::error::operation_aborted);
  }));
  BOOST_TEST(q.cancel() == 1u);
  q.start();
  ioc.run();
  BOOST_TEST(launched == 0);
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- per-operation cancellation ---------------------------------------------

BOOST_AUTO_TEST_CASE(cancel_before_trigger_never_launches_op) {
  for (auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      serq_test::handler_tracker tr;
      net::io_context ioc;
      serq::serialized_queue q(ioc);
      manual_ops ops(ioc.get_executor());
      net::cancellation_signal sig;

      q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
      int launched = 0;
      q.async_enqueue<void(error_code, int)>(
          posting_op(launched, error_code(), 1),
          net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec, int v) {
            BOOST_TEST(ec == net::error::operation_aborted);
            BOOST_TEST(v == 0);
          })));
      int launched_c = 0;
      q.async_enqueue<void(error_code)>(posting_op(launched_c, error_code()),
                                        tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
      ioc.poll();
      BOOST_TEST(q.size() == 3u);

      sig.emit(type);
      BOOST_TEST(tr.invoked() == 0u);  // not inside emit
      BOOST_TEST(q.size() == 2u);
      ioc.poll();
      BOOST_TEST(tr.invoked() == 1u);

      ops.complete_next();
      ioc.run();
      BOOST_TEST(launched == 0);
      BOOST_TEST(launched_c == 1);
      BOOST_TEST(tr.invoked() == 3u);
    }
  }
}

BOOST_AUTO_TEST_CASE(cancel_wait_and_acquire_before_their_turn) {
  for (auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      serq_test::handler_tracker tr;
      net::io_context ioc;
      serq::serialized_queue q(ioc);
      manual_ops ops(ioc.get_executor());
      net::cancellation_signal sig_wait, sig_acquire;

      q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
      q.async_wait(net::bind_cancellation_slot(sig_wait.slot(), tr.wrap([](error_code ec) {
        BOOST_TEST(ec == net::error::operation_aborted);
      })));
      q.async_acquire(
          net::bind_cancellation_slot(sig_acquire.slot(), tr.wrap([](error_code ec, serq::turn t) {
            BOOST_TEST(ec == net::error::operation_aborted);
            BOOST_TEST(!t);
          })));
      ioc.poll();
      sig_wait.emit(type);
      sig_acquire.emit(type);
      BOOST_TEST(q.size() == 1u);
      ioc.poll();
      BOOST_TEST(tr.invoked() == 2u);
      ops.complete_next();
      ioc.run();
      BOOST_TEST(tr.invoked() == 3u);
    }
  }
}

BOOST_AUTO_TEST_CASE(cancellation_after_launch_is_forwarded_to_the_running_op) {
  for (auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      serq_test::handler_tracker tr;
      net::io_context ioc;
      serq::serialized_queue q(ioc);
      net::steady_timer timer(ioc, 1h);
      net::cancellation_signal sig;

      q.async_enqueue(timer.async_wait(net::deferred),
                      net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec) {
                        BOOST_TEST(ec == net::error::operation_aborted);
                      })));
      int launched = 0;
      q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                        tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
      ioc.poll();
      BOOST_TEST(q.size() == 2u);
      BOOST_TEST(launched == 0);

      sig.emit(type);
      ioc.poll();  // the timer's aborted wait is posted at once
      BOOST_TEST(launched == 1);
      BOOST_TEST(tr.invoked() == 2u);
      timer.cancel();  // only so a failing run ends
      ioc.run();
    }
  }
}

// An operation may complete from inside its cancellation handler, that is,
// inside the user's emit(). This used to deadlock: the queue emitted to the
// operation while holding the lock its completion path takes.
BOOST_AUTO_TEST_CASE(op_completing_inside_its_cancellation_handler_does_not_deadlock) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::cancellation_signal sig;
  std::optional<net::any_completion_handler<void(error_code)>> stored;

  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        auto slot = net::get_associated_cancellation_slot(handler);
        stored.emplace(std::move(handler));
        slot.assign([&](net::cancellation_type_t) {
          auto h = std::move(*stored);
          stored.reset();
          std::move(h)(net::error::operation_aborted);
        });
      },
      net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec) {
        BOOST_TEST(ec == net::error::operation_aborted);
      })));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                    tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.poll();
  BOOST_TEST(stored.has_value());

  sig.emit(net::cancellation_type::terminal);
  BOOST_TEST(!stored.has_value());
  BOOST_TEST(tr.invoked() == 0u);  // not inside emit either
  ioc.run();
  BOOST_TEST(tr.invoked() == 2u);
  BOOST_TEST(launched == 1);
}

// An operation's initiation may emit the signal bound to its own handler
// (itself, or through code it calls). The queue's launch holds the lock a
// signal takes, so this deadlocked on that thread. The signal now goes to the
// operation's slot right there: it reaches the operation once the operation
// has installed its handler, and before that it reaches nothing (as with any
// Asio slot: a signal is not kept for a handler installed later).
BOOST_AUTO_TEST_CASE(an_initiation_emitting_its_own_signal_reaches_the_operation) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::cancellation_signal sig;
  std::optional<net::any_completion_handler<void(error_code)>> stored;
  std::vector<net::cancellation_type_t> seen;

  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        auto slot = net::get_associated_cancellation_slot(handler);
        BOOST_REQUIRE(slot.is_connected());
        sig.emit(net::cancellation_type::partial);  // no handler installed yet
        stored.emplace(std::move(handler));
        slot.assign([&](net::cancellation_type_t t) {
          seen.push_back(t);
          auto h = std::move(*stored);
          stored.reset();
          std::move(h)(net::error::operation_aborted);  // inside its own initiation
        });
        sig.emit(net::cancellation_type::terminal);
      },
      net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec) {
        BOOST_TEST(ec == net::error::operation_aborted);
      })));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                    tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.run();
  BOOST_TEST(seen.size() == 1u);
  BOOST_TEST((!seen.empty() && seen.front() == net::cancellation_type::terminal));
  BOOST_TEST(!stored.has_value());
  BOOST_TEST(tr.invoked() == 2u);
  BOOST_TEST(launched == 1);
}

// The next entry is triggered (its launch posted) when the active one
// completes; a signal emitted before that posted launch runs must still stop
// the operation from starting.
BOOST_AUTO_TEST_CASE(cancel_between_trigger_and_launch_never_launches_op) {
  for (auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      serq_test::handler_tracker tr;
      net::io_context ioc;
      serq::serialized_queue q(ioc);
      manual_ops ops(ioc.get_executor());
      net::cancellation_signal sig_op, sig_wait;

      // A held turn, released outside the queue's executor: B's launch is
      // posted (an entry completing on the queue's executor would launch B
      // right there instead, leaving no window).
      serq::turn held;
      q.async_acquire(tr.wrap([&](error_code, serq::turn t) { held = std::move(t); }));
      int launched = 0;
      q.async_enqueue<void(error_code)>(
          posting_op(launched, error_code()),
          net::bind_cancellation_slot(sig_op.slot(), tr.wrap([](error_code ec) {
            BOOST_TEST(ec == net::error::operation_aborted);
          })));
      ioc.poll();
      BOOST_TEST(tr.invoked() == 1u);
      held.release();  // B is triggered, not launched
      BOOST_TEST(q.size() == 1u);

      sig_op.emit(type);
      ioc.poll();
      BOOST_TEST(launched == 0);
      BOOST_TEST(tr.invoked() == 2u);
      BOOST_TEST(q.empty());

      // Same for a barrier.
      ioc.restart();
      q.async_acquire(tr.wrap([&](error_code, serq::turn t) { held = std::move(t); }));
      q.async_wait(net::bind_cancellation_slot(sig_wait.slot(), tr.wrap([](error_code ec) {
        BOOST_TEST(ec == net::error::operation_aborted);
      })));
      ioc.poll();
      held.release();
      sig_wait.emit(type);
      ioc.run();
      BOOST_TEST(tr.invoked() == 4u);
      BOOST_TEST(q.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(emitting_after_completion_has_no_effect) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::cancellation_signal sig;
  int launched = 0;
  q.async_enqueue<void(error_code)>(
      posting_op(launched, error_code()),
      net::bind_cancellation_slot(sig.slot(), tr.wrap([](error_code ec) { BOOST_TEST(!ec); })));
  ioc.run();
  for (auto type : all_cancellation_types)
    sig.emit(type);
  ioc.restart();
  int launched2 = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched2, error_code()),
                                    tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.run();
  BOOST_TEST(launched2 == 1);
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(
    launched_op_gets_the_queues_executor_and_the_final_handlers_allocator_and_slot) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  auto strand = net::make_strand(ioc);
  auto counter = std::make_shared<serq_test::allocation_counter>();
  serq_test::counting_allocator<int> alloc(counter);
  net::cancellation_signal sig;

  bool executor_ok = false, allocator_ok = false, slot_connected = false;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        // The queue's executor, not the handler's: the op's steps run where the
        // queue runs them.
        executor_ok = net::get_associated_executor(handler) == q.get_executor();
        allocator_ok = net::get_associated_allocator(handler) == alloc;
        slot_connected = net::get_associated_cancellation_slot(handler).is_connected();
        net::post(net::append(std::move(handler), error_code()));
      },
      net::bind_cancellation_slot(
          sig.slot(),
          net::bind_allocator(alloc, net::bind_executor(strand, tr.wrap([](error_code) {})))));
  ioc.run();
  BOOST_TEST(executor_ok);
  BOOST_TEST(allocator_ok);
  BOOST_TEST(slot_connected);
  BOOST_TEST(tr.invoked() == 1u);
}

// ---- executors --------------------------------------------------------------

BOOST_AUTO_TEST_CASE(completions_run_on_a_bound_strand) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  auto strand = net::make_strand(ioc);
  net::steady_timer timer(ioc, 1ms);
  manual_ops ops(ioc.get_executor());

  auto on_strand = [&](auto&&...) { BOOST_TEST(strand.running_in_this_thread()); };
  q.async_enqueue(timer.async_wait(net::deferred), tr.wrap(net::bind_executor(strand, on_strand)));
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap(net::bind_executor(strand, on_strand)));
  q.async_acquire(tr.wrap(net::bind_executor(strand, on_strand)));
  q.async_wait(tr.wrap(net::bind_executor(strand, on_strand)));
  ioc.poll();
  while (ops.launched() == 0)
    ioc.run_one();
  BOOST_TEST(q.cancel() == 2u);  // aborted entries too
  ops.complete_next();
  ioc.run();
  BOOST_TEST(tr.invoked() == 4u);
}

BOOST_AUTO_TEST_CASE(completions_run_on_the_queue_executor_by_default_never_inline) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq::basic_serialized_queue<decltype(tracked)> q(tracked);

  bool in_call = false;
  int on_queue_executor = 0;
  auto check = [&](auto&&...) {
    BOOST_TEST(!in_call);
    if (tracked.running_in_this_thread())
      ++on_queue_executor;
  };
  int launched = 0;
  net::steady_timer timer(ioc, 1h);

  in_call = true;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap(check));
  q.async_enqueue(timer.async_wait(net::deferred), tr.wrap(check));
  q.async_acquire(tr.wrap(check));
  q.async_wait(tr.wrap(check));
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap(check));
  in_call = false;

  // Run until the timer wait is active, then cancel the two waiting behind it.
  while (timer.cancel() == 0)
    ioc.run_one();
  in_call = true;
  BOOST_TEST(q.cancel() == 3u);
  in_call = false;
  ioc.run();
  BOOST_TEST(on_queue_executor == 5);
  BOOST_TEST(tr.invoked() == 5u);
}

BOOST_AUTO_TEST_CASE(completion_runs_on_a_bound_tracking_executor) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());

  bool on_tracked = false;
  net::steady_timer timer(ioc, 1ms);
  q.async_enqueue(timer.async_wait(net::deferred),
                  net::bind_executor(tracked, tr.wrap([&](error_code ec) {
                    BOOST_TEST(!ec);
                    on_tracked = tracked.running_in_this_thread();
                  })));
  ioc.run();
  BOOST_TEST(on_tracked);
  BOOST_TEST(tracked.executions() > 0u);
}

// An any_io_executor that wraps something other than a plain io_context
// executor (here a tracking executor, then a strand) takes the generic paths
// for posting and work tracking.
BOOST_AUTO_TEST_CASE(type_erased_queue_executor_other_than_io_context_is_honoured) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq::serialized_queue q{net::any_io_executor(tracked)};
  manual_ops ops(ioc.get_executor());

  bool launched_on_tracked = false;
  int on_tracked = 0;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched_on_tracked = tracked.running_in_this_thread();
        net::post(net::append(std::move(handler), error_code()));
      },
      tr.wrap([&](error_code) { on_tracked += tracked.running_in_this_thread(); }));
  q.async_enqueue<void(error_code)>(
      ops.op(), tr.wrap([&](error_code) { on_tracked += tracked.running_in_this_thread(); }));
  BOOST_TEST(tracked.executions() == 1u);  // the first trigger, posted
  ioc.poll();
  BOOST_TEST(launched_on_tracked);
  BOOST_TEST(ops.launched() == 1u);
  BOOST_TEST(!ioc.stopped());  // the pending entry is outstanding work
  ops.complete_next();
  ioc.run();
  BOOST_TEST(on_tracked == 2);

  ioc.restart();
  auto strand = net::make_strand(ioc);
  serq::serialized_queue on_strand(strand);
  int launched = 0;
  bool launched_in_strand = false;
  on_strand.async_enqueue<void(error_code)>(
      [&](auto handler) {
        ++launched;
        launched_in_strand = strand.running_in_this_thread();
        net::post(net::append(std::move(handler), error_code()));
      },
      tr.wrap([&](error_code) { BOOST_TEST(strand.running_in_this_thread()); }));
  BOOST_TEST(launched == 0);
  ioc.run();
  BOOST_TEST(launched_in_strand);
  BOOST_TEST(tr.invoked() == 3u);
}

// ---- allocator and outstanding work -----------------------------------------

// Every entry is allocated with its handler's associated allocator, and the
// launched operation sees that allocator too (the timer's wait operation).
// The trigger posted for an idle queue also uses it: serq posts it to the
// io_context executor inside the any_io_executor, which honours a handler's
// allocator (the type-erased post would not).
BOOST_AUTO_TEST_CASE(handler_allocator_is_used_and_everything_is_returned_before_the_upcall) {
  serq_test::handler_tracker tr;
  auto counter = std::make_shared<serq_test::allocation_counter>();
  auto timer_counter = std::make_shared<serq_test::allocation_counter>();
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc);
    serq_test::counting_allocator<int> alloc(counter);
    net::steady_timer timer(ioc, 1ms);
    manual_ops ops(ioc.get_executor());

    q.async_enqueue(timer.async_wait(net::deferred),
                    net::bind_allocator(serq_test::counting_allocator<char>(timer_counter),
                                        tr.wrap([&](error_code ec) {
                                          BOOST_TEST(!ec);
                                          BOOST_TEST(timer_counter->allocations == 3u);
                                          BOOST_TEST(timer_counter->outstanding() == 0u);
                                        })));
    BOOST_TEST(timer_counter->allocations == 2u);  // the entry and its posted trigger
    BOOST_TEST(ioc.run_one() == 1u);               // the trigger launches the wait
    BOOST_TEST(timer_counter->allocations == 3u);  // the timer's wait operation

    q.async_enqueue<void(error_code)>(ops.op(),
                                      net::bind_allocator(alloc, tr.wrap([](error_code) {})));
    BOOST_TEST(counter->allocations == 1u);
    q.async_acquire(net::bind_allocator(alloc, tr.wrap([](error_code, serq::turn) {})));
    BOOST_TEST(counter->allocations == 2u);
    q.async_wait(net::bind_allocator(alloc, tr.wrap([](error_code) {})));
    BOOST_TEST(counter->allocations == 3u);

    while (ops.launched() == 0)
      ioc.run_one();
    BOOST_TEST(q.cancel() == 2u);
    ops.complete_next();
    ioc.run();
    BOOST_TEST(tr.invoked() == 4u);
  }
  BOOST_TEST(timer_counter->outstanding() == 0u);
  BOOST_TEST(counter->outstanding() == 0u);
  BOOST_TEST(counter->outstanding_bytes() == 0u);
}

// With a concrete io_context executor the queue's posted trigger and the
// posted completions use the handler's allocator as well.
BOOST_AUTO_TEST_CASE(handler_allocator_is_used_for_posted_triggers_and_completions) {
  serq_test::handler_tracker tr;
  auto counter = std::make_shared<serq_test::allocation_counter>();
  {
    net::io_context ioc;
    serq::basic_serialized_queue<net::io_context::executor_type> q(ioc.get_executor());
    serq_test::counting_allocator<int> alloc(counter);

    int launched = 0;
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      net::bind_allocator(alloc, tr.wrap([&](error_code) {
                                        BOOST_TEST(counter->outstanding() == 0u);
                                      })));
    BOOST_TEST(counter->allocations == 2u);  // the entry and its posted trigger
    ioc.run();
    BOOST_TEST(counter->allocations >= 3u);  // and the operation's posted completion

    const std::size_t before = counter->allocations;
    q.stop();
    q.async_wait(net::bind_allocator(alloc, tr.wrap([&](error_code ec) {
      BOOST_TEST(ec == net::error::operation_aborted);
      BOOST_TEST(counter->outstanding() == 0u);
    })));
    BOOST_TEST(q.cancel() == 1u);
    BOOST_TEST(counter->allocations == before + 2);  // the entry and its posted abort
    ioc.restart();
    ioc.run();
    BOOST_TEST(tr.invoked() == 2u);
  }
  BOOST_TEST(counter->outstanding() == 0u);
}

BOOST_AUTO_TEST_CASE(pending_entries_are_outstanding_work_on_the_queue_executor) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());

  // The stored handler is no Asio operation: only the queue's work keeps
  // the context from running out of work.
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code) {}));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);
  BOOST_TEST(!ioc.stopped());

  ops.complete_next();
  ioc.run();
  BOOST_TEST(launched == 1);
  BOOST_TEST(tr.invoked() == 2u);
  BOOST_TEST(ioc.stopped());
}

BOOST_AUTO_TEST_CASE(pending_entries_are_outstanding_work_on_the_handler_executor) {
  serq_test::handler_tracker tr;
  net::io_context ioc, handler_ioc;
  serq::serialized_queue q(ioc);
  net::steady_timer timer(ioc, 1ms);

  bool done = false;
  q.async_enqueue(timer.async_wait(net::deferred),
                  net::bind_executor(handler_ioc, tr.wrap([&](error_code) { done = true; })));
  BOOST_TEST(handler_ioc.poll() == 0u);
  BOOST_TEST(!handler_ioc.stopped());

  // The launched wait completes through the handler's executor too.
  BOOST_TEST(ioc.run_one() == 1u);  // the trigger
  BOOST_TEST(ioc.run_one() == 1u);  // the timer fires, its completion goes to handler_ioc
  BOOST_TEST(!done);
  handler_ioc.run();
  BOOST_TEST(done);
  ioc.run();
  BOOST_TEST(ioc.stopped());
}

BOOST_AUTO_TEST_CASE(run_returns_only_after_every_entry_completed) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  net::steady_timer long_op(ioc, 20ms);
  int done = 0;
  q.async_enqueue(long_op.async_wait(net::deferred), tr.wrap([&](error_code) { ++done; }));
  int launched = 0;
  for (int i = 0; i < 5; ++i)
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      tr.wrap([&](error_code) { ++done; }));
  q.async_wait(tr.wrap([&](error_code) { ++done; }));
  ioc.run();
  BOOST_TEST(launched == 5);
  BOOST_TEST(done == 7);
}

// ---- lifetimes ----------------------------------------------------------------

BOOST_AUTO_TEST_CASE(destroying_queue_aborts_waiting_entries_while_active_op_finishes_normally) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  manual_ops ops(ioc.get_executor());
  std::optional<serq::serialized_queue> q(std::in_place, ioc);

  error_code active_ec = net::error::fault;
  q->async_enqueue<void(error_code)>(ops.op(), tr.wrap([&](error_code ec) { active_ec = ec; }));
  int launched = 0;
  q->async_enqueue<void(error_code, int)>(posting_op(launched, error_code(), 1),
                                          tr.wrap([](error_code ec, int v) {
                                            BOOST_TEST(ec == net::error::operation_aborted);
                                            BOOST_TEST(v == 0);
                                          }));
  q->async_acquire(tr.wrap([](error_code ec, serq::turn t) {
    BOOST_TEST(ec == net::error::operation_aborted);
    BOOST_TEST(!t);
  }));
  q->async_wait(tr.wrap([](error_code ec) { BOOST_TEST(ec == net::error::operation_aborted); }));
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);

  q.reset();
  BOOST_TEST(tr.invoked() == 0u);  // posted, not invoked inside the destructor
  ioc.poll();
  BOOST_TEST(tr.invoked() == 3u);
  BOOST_TEST(launched == 0);

  ops.complete_next();
  ioc.run();
  BOOST_TEST(!active_ec);
  BOOST_TEST(tr.invoked() == 4u);
}

BOOST_AUTO_TEST_CASE(io_context_destruction_destroys_aborted_completions_uninvoked) {
  serq_test::handler_tracker tr;
  auto state = std::make_shared<int>(0);
  std::weak_ptr<int> watch = state;
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc);
    net::steady_timer timer(ioc, 1h);
    int launched = 0;
    q.async_enqueue(timer.async_wait(net::deferred), tr.wrap([state](error_code) {}));
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      tr.wrap([state](error_code) {}));
    q.async_acquire(tr.wrap([state](error_code, serq::turn) {}));
    q.async_wait(tr.wrap([state](error_code) {}));
    ioc.poll();
    BOOST_TEST(state.use_count() == 5);
  }  // the timer dies (its wait's completion posted), then the queue (entries aborted, posted)
  BOOST_TEST(tr.invoked() == 0u);
  BOOST_TEST(tr.destroyed_uninvoked() == 4u);
  state.reset();
  BOOST_TEST(watch.expired());
}

BOOST_AUTO_TEST_CASE(io_context_shutdown_destroys_pending_handlers_without_invoking_them) {
  serq_test::handler_tracker tr;
  auto state = std::make_shared<int>(0);
  std::weak_ptr<int> watch = state;
  {
    shutdownable_io_context ioc;
    serq::serialized_queue q(ioc);
    net::steady_timer timer(ioc, 1h);
    int launched = 0;

    q.async_enqueue(timer.async_wait(net::deferred), tr.wrap([state](error_code) {}));
    q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                      tr.wrap([state](error_code) {}));
    q.async_acquire(tr.wrap([state](error_code, serq::turn) {}));
    q.async_wait(tr.wrap([state](error_code) {}));
    // A second queue whose next trigger is posted but not run yet.
    serq::serialized_queue q2(ioc);
    q2.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                       tr.wrap([state](error_code) {}));
    ioc.poll_one();  // launches the timer wait only
    BOOST_TEST(state.use_count() == 6);

    ioc.shutdown();  // with the queues still alive
    BOOST_TEST(tr.invoked() == 0u);
    BOOST_TEST(tr.destroyed_uninvoked() == 5u);
    BOOST_TEST(state.use_count() == 1);
    BOOST_TEST(launched == 0);
    BOOST_TEST(q.size() == 0u);
  }
  state.reset();
  BOOST_TEST(watch.expired());
}

// ---- moves --------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(move_construction_keeps_entries_and_leaves_a_fresh_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  manual_ops ops(ioc.get_executor());
  serq::serialized_queue q1(ioc, "moved");

  q1.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  int launched_b = 0;
  q1.async_enqueue<void(error_code)>(posting_op(launched_b, error_code()),
                                     tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.poll();
  q1.stop();

  serq::serialized_queue q2(std::move(q1));
  BOOST_TEST(q2.size() == 2u);
  BOOST_TEST(!q2.running());
  BOOST_TEST(q2.name() == "moved");
  BOOST_TEST(q1.size() == 0u);
  BOOST_TEST(q1.running());
  BOOST_TEST(q1.name() == "moved");

  // The moved-from queue works independently.
  int launched_c = 0;
  q1.async_enqueue<void(error_code)>(posting_op(launched_c, error_code()),
                                     tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.poll();
  BOOST_TEST(launched_c == 1);

  q2.start();
  ops.complete_next();
  ioc.run();
  BOOST_TEST(launched_b == 1);
  BOOST_TEST(tr.invoked() == 3u);
}

BOOST_AUTO_TEST_CASE(move_assignment_aborts_the_targets_waiting_entries_then_takes_over) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  manual_ops ops(ioc.get_executor());
  serq::serialized_queue source(ioc, "source"), target(ioc, "target");

  error_code target_active_ec = net::error::fault;
  target.async_enqueue<void(error_code)>(ops.op(),
                                         tr.wrap([&](error_code ec) { target_active_ec = ec; }));
  int launched_target_waiting = 0;
  target.async_enqueue<void(error_code)>(
      posting_op(launched_target_waiting, error_code()),
      tr.wrap([](error_code ec) { BOOST_TEST(ec == net::error::operation_aborted); }));
  source.async_enqueue<void(error_code)>(ops.op(), tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  int launched_source_waiting = 0;
  source.async_enqueue<void(error_code)>(posting_op(launched_source_waiting, error_code()),
                                         tr.wrap([](error_code ec) { BOOST_TEST(!ec); }));
  ioc.poll();
  BOOST_TEST(ops.launched() == 2u);

  target = std::move(source);
  BOOST_TEST(target.name() == "source");
  BOOST_TEST(target.size() == 2u);
  BOOST_TEST(source.size() == 0u);
  ioc.poll();
  BOOST_TEST(tr.invoked() == 1u);  // the target's waiting entry, aborted

  ops.complete_next();  // the old target's active op finishes normally
  ops.complete_next();  // the source's active op, now in target
  ioc.run();
  BOOST_TEST(!target_active_ec);
  BOOST_TEST(launched_target_waiting == 0);
  BOOST_TEST(launched_source_waiting == 1);
  BOOST_TEST(tr.invoked() == 4u);
}

// ---- non-conforming initiations ---------------------------------------------

BOOST_AUTO_TEST_CASE(raw_initiation_completing_inline_still_completes_the_final_handler_posted) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  bool in_init = false;
  auto completes_inline = [&](auto handler) {
    in_init = true;
    std::move(handler)(error_code(), 9);
    in_init = false;
  };
  auto check = [&](error_code ec, int v) {
    BOOST_TEST(!in_init);
    BOOST_TEST(!ec);
    BOOST_TEST(v == 9);
  };

  // Launched from the posted trigger.
  q.async_enqueue<void(error_code, int)>(completes_inline, tr.wrap(check));
  ioc.run();
  BOOST_TEST(tr.invoked() == 1u);

  // Launched inside async_enqueue.
  ioc.restart();
  q.async_enqueue<void(error_code, int)>(serq::trigger_inline, completes_inline, tr.wrap(check));
  BOOST_TEST(tr.invoked() == 1u);
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.run();
  BOOST_TEST(tr.invoked() == 3u);
  BOOST_TEST(launched == 1);  // the queue moved on
}

BOOST_AUTO_TEST_CASE(raw_initiation_dropping_its_handler_does_not_wedge_the_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  q.async_enqueue<void(error_code)>([](auto handler) { auto dropped = std::move(handler); },
                                    tr.wrap([](error_code) {}));
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.run();
  BOOST_TEST(launched == 1);
  BOOST_TEST(tr.invoked() == 1u);
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
}

// ---- hand-off ---------------------------------------------------------------

BOOST_AUTO_TEST_CASE(next_entry_launches_when_the_previous_completes_on_the_queue_executor) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  manual_ops ops(ioc.get_executor());
  std::vector<std::string> log;
  q.async_enqueue<void(error_code)>(ops.op(), tr.wrap([&](error_code) { log.push_back("a"); }));
  int launched = 0;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        ++launched;
        log.push_back("b launched");
        net::post(net::append(std::move(handler), error_code()));
      },
      tr.wrap([&](error_code) { log.push_back("b"); }));
  ioc.poll();
  BOOST_TEST(ops.launched() == 1u);

  ops.complete_next();
  BOOST_TEST(ioc.run_one() == 1u);  // A's completion: its handler, then B's launch, no post between
  BOOST_TEST(launched == 1);
  BOOST_TEST(log == (std::vector<std::string>{"a", "b launched"}),
             boost::test_tools::per_element());
  ioc.run();
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(next_entry_is_posted_when_the_previous_completes_elsewhere) {
  serq_test::handler_tracker tr;
  net::io_context ioc, other;
  serq::serialized_queue q(ioc);
  int launched = 0;
  // A completes on another context's thread: B's launch is posted to the queue's executor.
  q.async_enqueue<void(error_code)>(
      [&](auto handler) { net::post(other, net::append(std::move(handler), error_code())); },
      tr.wrap([](error_code) {}));
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()), tr.wrap([](error_code) {}));
  ioc.poll();
  other.run();
  BOOST_TEST(launched == 0);
  ioc.run();
  BOOST_TEST(launched == 1);
  BOOST_TEST(tr.invoked() == 2u);
}

BOOST_AUTO_TEST_CASE(a_long_chain_of_entries_that_finish_at_once_does_not_grow_the_stack) {
  // Barriers pass as soon as they launch, so each hands the queue to the next
  // from inside its own launch: bounded, then posted.
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  serq::turn held;
  q.async_acquire(tr.wrap([&](error_code, serq::turn t) { held = std::move(t); }));
  ioc.run();
  ioc.restart();
  constexpr int count = 100000;
  int passed = 0;
  char* lowest = nullptr;
  char* highest = nullptr;
  for (int i = 0; i < count; ++i) {
    q.async_wait(tr.wrap([&](error_code ec) {
      BOOST_TEST(!ec);
      char here = 0;
      char* p = &here;
      lowest = lowest ? std::min(lowest, p) : p;
      highest = highest ? std::max(highest, p) : p;
      ++passed;
    }));
  }
  net::post(ioc, [&] { held.release(); });  // released on the queue's executor
  ioc.run();
  BOOST_TEST(passed == count);
  BOOST_TEST(static_cast<std::size_t>(highest - lowest) < 256u * 1024u);
}

BOOST_AUTO_TEST_CASE(a_throwing_handler_does_not_wedge_the_next_entry) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int launched = 0;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                    [](error_code) { throw std::runtime_error("handler"); });
  bool second = false;
  q.async_enqueue<void(error_code)>(posting_op(launched, error_code()),
                                    tr.wrap([&](error_code ec) { second = !ec; }));
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  ioc.restart();
  ioc.run();
  BOOST_TEST(launched == 2);
  BOOST_TEST(second);
}

BOOST_AUTO_TEST_SUITE_END()
