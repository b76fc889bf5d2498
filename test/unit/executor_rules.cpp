//
// Where queued operations and their handlers run: a queued operation runs on
// the queue's executor (every step of it, not only its launch), and its final
// handler on the handler's own associated executor.
//

#include <serq.hpp>

#include "common/net.hpp"
#include "common/socket_buffers.hpp"
#include "common/tracking_executor.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <tuple>

namespace {

using strand_type = net::strand<net::io_context::executor_type>;

// Two asynchronous steps on a timer, composed with async_compose: each step
// records whether it ran inside `strand`. Completes with (ec, step 1 on the
// strand, step 2 on the strand).
struct two_step_impl {
  net::steady_timer& timer;
  strand_type strand;
  int state = 0;
  bool first = false;

  template <class Self>
  void operator()(Self& self, error_code ec = {}) {
    if (state++ == 0) {
      first = strand.running_in_this_thread();
      timer.expires_after(std::chrono::seconds(0));
      timer.async_wait(std::move(self));
      return;
    }
    self.complete(ec, first, strand.running_in_this_thread());
  }
};

auto two_step(net::steady_timer& timer, const strand_type& strand) {
  return net::async_compose<const net::deferred_t, void(error_code, bool, bool)>(
      two_step_impl{timer, strand}, net::deferred, timer);
}

struct fixture {
  net::io_context ioc;
  strand_type strand{net::make_strand(ioc)};
  net::steady_timer timer{strand};
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(executor_rules, fixture)

BOOST_AUTO_TEST_CASE(a_callback_bound_elsewhere_still_gets_every_step_on_the_queue_strand) {
  serq::serialized_queue q(strand);
  int done = 0;
  q.async_enqueue(two_step(timer, strand),
                  net::bind_executor(ioc.get_executor(), [&](error_code ec, bool s1, bool s2) {
                    BOOST_TEST(!ec);
                    BOOST_TEST(s1);
                    BOOST_TEST(s2);  // was false: the second step ran on the handler's executor
                    ++done;
                  }));
  ioc.run();
  BOOST_TEST(done == 1);
}

BOOST_AUTO_TEST_CASE(use_awaitable_from_a_coroutine_on_the_io_context) {
  serq::serialized_queue q(strand);
  int done = 0;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        auto [ec, s1, s2] =
            co_await q.async_enqueue(two_step(timer, strand), net::as_tuple(net::use_awaitable));
        BOOST_TEST(!ec);
        BOOST_TEST(s1);
        BOOST_TEST(s2);
        ++done;
      },
      net::detached);
  ioc.run();
  BOOST_TEST(done == 1);
}

BOOST_AUTO_TEST_CASE(use_future_from_a_foreign_thread) {
  serq::serialized_queue q(strand);
  auto work = net::make_work_guard(ioc);
  std::thread runner([&] { ioc.run(); });
  std::tuple<bool, bool> steps = q.async_enqueue(two_step(timer, strand), net::use_future).get();
  BOOST_TEST(std::get<0>(steps));
  BOOST_TEST(std::get<1>(steps));
  work.reset();
  runner.join();
}

BOOST_AUTO_TEST_CASE(a_handler_on_another_strand_runs_there_while_the_op_runs_on_the_queue_strand) {
  serq::serialized_queue q(strand);
  strand_type other = net::make_strand(ioc);
  int done = 0;
  q.async_enqueue(two_step(timer, strand),
                  net::bind_executor(other, [&](error_code ec, bool s1, bool s2) {
                    BOOST_TEST(!ec);
                    BOOST_TEST(s1);
                    BOOST_TEST(s2);
                    BOOST_TEST(other.running_in_this_thread());
                    ++done;
                  }));
  ioc.run();
  BOOST_TEST(done == 1);
}

BOOST_AUTO_TEST_CASE(a_queue_on_a_strand_in_an_any_io_executor_keeps_the_steps_there) {
  // The common spelling: serialized_queue on any_io_executor holding a strand,
  // callers on a thread pool.
  serq::serialized_queue q{net::any_io_executor(strand)};
  std::atomic<int> good{0};
  constexpr int producers = 8;
  for (int i = 0; i < producers; ++i) {
    net::co_spawn(
        ioc,
        [&]() -> net::awaitable<void> {
          auto [ec, s1, s2] =
              co_await q.async_enqueue(two_step(timer, strand), net::as_tuple(net::use_awaitable));
          if (!ec && s1 && s2)
            ++good;
        },
        net::detached);
  }
  std::thread second([&] { ioc.run(); });
  ioc.run();
  second.join();
  BOOST_TEST(good.load() == producers);
}

BOOST_AUTO_TEST_CASE(trigger_inline_from_outside_the_strand_does_not_launch_in_the_call) {
  serq::serialized_queue q(strand);
  bool launched = false;
  bool launched_on_strand = false;
  int done = 0;
  auto op = [&](auto handler) {
    launched = true;
    launched_on_strand = strand.running_in_this_thread();
    net::post(ioc, [h = std::move(handler)]() mutable { h(error_code()); });
  };
  q.async_enqueue<void(error_code)>(serq::trigger_inline, op, [&](error_code ec) {
    BOOST_TEST(!ec);
    ++done;
  });
  BOOST_TEST(!launched);  // not from this thread: it is outside the strand
  ioc.run();
  BOOST_TEST(launched);
  BOOST_TEST(launched_on_strand);
  BOOST_TEST(done == 1);

  // From inside the strand it still launches in the call.
  launched = false;
  bool launched_in_call = false;
  ioc.restart();
  net::post(strand, [&] {
    q.async_enqueue<void(error_code)>(serq::trigger_inline, op, [&](error_code) { ++done; });
    launched_in_call = launched;
  });
  ioc.run();
  BOOST_TEST(launched_in_call);
  BOOST_TEST(done == 2);
}

BOOST_AUTO_TEST_CASE(trigger_inline_on_an_any_io_executor_of_another_strand_waits_its_turn) {
  // A strand serq cannot see through the type erasure (here: of a
  // thread_pool's executor) must not be bypassed: the operation is
  // triggered on the strand, never launched on the calling thread.
  net::thread_pool pool(1);
  const auto pool_strand = net::make_strand(pool.get_executor());
  serq::serialized_queue q{net::any_io_executor(pool_strand)};

  // Keep the strand busy until the call has returned.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  net::post(pool_strand, [released] { released.wait(); });

  std::atomic<bool> launched{false};
  std::atomic<bool> launched_on_strand{false};
  std::promise<error_code> done;
  auto op = [&, pool_strand](auto handler) {
    launched = true;
    launched_on_strand = pool_strand.running_in_this_thread();
    std::move(handler)(error_code());
  };
  q.async_enqueue<void(error_code)>(serq::trigger_inline, op,
                                    [&](error_code ec) { done.set_value(ec); });
  BOOST_TEST(!launched.load());  // this thread is not in the strand
  release.set_value();
  BOOST_TEST(!done.get_future().get());
  BOOST_TEST(launched.load());
  BOOST_TEST(launched_on_strand.load());
  pool.join();
}

BOOST_AUTO_TEST_CASE(trigger_inline_on_a_user_executor_launches_only_where_it_says_it_runs) {
  // An executor type serq does not know (here a user's wrapper of a strand)
  // might serialize: the operation launches in the call only where the
  // executor's running_in_this_thread() says the caller runs.
  net::io_context ioc;
  const auto ex = serq_test::make_tracking_executor(net::make_strand(ioc));
  serq::basic_serialized_queue<std::decay_t<decltype(ex)>> q(ex);
  bool launched = false;
  int done = 0;
  auto op = [&](auto handler) {
    launched = true;
    net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
  };
  q.async_enqueue<void(error_code)>(serq::trigger_inline, op, [&](error_code ec) {
    BOOST_TEST(!ec);
    ++done;
  });
  BOOST_TEST(!launched);  // this thread does not run ex
  ioc.run();
  BOOST_TEST(launched);
  BOOST_TEST(done == 1);

  launched = false;
  bool launched_in_call = false;
  net::post(ex, [&] {
    q.async_enqueue<void(error_code)>(serq::trigger_inline, op, [&](error_code) { ++done; });
    launched_in_call = launched;
  });
  ioc.restart();
  ioc.run();
  BOOST_TEST(launched_in_call);
  BOOST_TEST(done == 2);
}

BOOST_AUTO_TEST_CASE(trigger_inline_on_an_any_io_executor_of_a_work_tracking_io_executor_launches) {
  // Not a strand, though not the plain io_context executor either: the
  // operation is launched inside the call, as on the plain one.
  net::io_context ioc;
  int done = 0;
  bool launched_in_call = false;
  {
    serq::serialized_queue q{net::any_io_executor(
        net::prefer(ioc.get_executor(), net::execution::outstanding_work.tracked))};
    bool launched = false;
    q.async_enqueue<void(error_code)>(
        serq::trigger_inline,
        [&](auto handler) {
          launched = true;
          std::move(handler)(error_code());
        },
        [&](error_code ec) {
          BOOST_TEST(!ec);
          ++done;
        });
    launched_in_call = launched;
    BOOST_TEST(done == 0);  // never inside the call
  }
  ioc.poll();
  BOOST_TEST(launched_in_call);
  BOOST_TEST(done == 1);
}

BOOST_AUTO_TEST_CASE(a_writer_runs_enqueued_operations_on_the_stream_strand) {
  net::local::stream_protocol::socket a(strand), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<net::local::stream_protocol::socket&> w(a);
  int done = 0;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        auto [ec, s1, s2] =
            co_await w.async_enqueue(two_step(timer, strand), net::as_tuple(net::use_awaitable));
        BOOST_TEST(!ec);
        BOOST_TEST(s1);
        BOOST_TEST(s2);
        ++done;
      },
      net::detached);
  ioc.run();
  BOOST_TEST(done == 1);
}

// Completions that are never invoked inside the call that makes them (an
// entry aborted by a signal or cancel(), a request refused at once) go
// through the I/O object's executor, as an Asio I/O object's do, and are
// dispatched from there to the handler's own executor. use_future's executor
// would run a function posted straight to it on a system_executor thread,
// outside the io_context thread's implicit strand that cancel_after (whose
// timer handler runs there) relies on: its handler was then destroyed unrun
// now and then, breaking the promise.
namespace {

// A use_future token whose value says which thread ran the handler.
auto thread_of_completion() {
  return net::use_future(
      [](error_code ec, auto&&...) { return std::make_pair(ec, std::this_thread::get_id()); });
}

using completion_thread = std::future<std::pair<error_code, std::thread::id>>;

// Checks that f completed with operation_aborted on this thread, after
// ioc ran: not before (never inside the call), not elsewhere.
void completes_here(net::io_context& ioc, completion_thread& f) {
  ioc.run();
  BOOST_REQUIRE(f.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  const auto [ec, id] = f.get();
  BOOST_TEST(ec == net::error::operation_aborted);
  BOOST_TEST((id == std::this_thread::get_id()));
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_use_future_entry_aborted_by_its_signal_completes_on_the_queue_thread) {
  serq::serialized_queue q(ioc.get_executor());
  net::steady_timer hour(ioc, std::chrono::hours(1));
  q.async_enqueue(hour.async_wait(net::deferred), [](error_code) {});
  net::cancellation_signal sig;
  completion_thread f =
      q.async_enqueue(hour.async_wait(net::deferred),
                      net::bind_cancellation_slot(sig.slot(), thread_of_completion()));
  ioc.poll();
  sig.emit(net::cancellation_type::terminal);
  hour.cancel();
  completes_here(ioc, f);
}

BOOST_AUTO_TEST_CASE(a_use_future_entry_aborted_by_cancel_completes_on_the_queue_thread) {
  serq::serialized_queue q(strand);
  net::steady_timer hour(strand, std::chrono::hours(1));
  q.async_enqueue(hour.async_wait(net::deferred), [](error_code) {});
  completion_thread f = q.async_enqueue(hour.async_wait(net::deferred), thread_of_completion());
  ioc.poll();
  BOOST_TEST(q.cancel() == 1u);
  hour.cancel();
  completes_here(ioc, f);
}

BOOST_AUTO_TEST_CASE(a_use_future_entry_cancelled_before_its_launch_completes_on_the_queue_thread) {
  serq::serialized_queue q(ioc.get_executor());
  net::steady_timer hour(ioc, std::chrono::hours(1));
  net::cancellation_signal sig;
  // Its turn comes at once (the queue is idle): the trigger is posted, and
  // the signal lands before it runs.
  completion_thread f =
      q.async_enqueue(hour.async_wait(net::deferred),
                      net::bind_cancellation_slot(sig.slot(), thread_of_completion()));
  sig.emit(net::cancellation_type::terminal);
  completes_here(ioc, f);
}

BOOST_AUTO_TEST_CASE(a_use_future_write_aborted_by_its_signal_completes_on_the_stream_thread) {
  net::local::stream_protocol::socket a(ioc), b(ioc);
  serq_test::connect_small_pair(a, b);
  serq::queued_writer<net::local::stream_protocol::socket&> w(a);
  // The peer does not read: a 16 MiB message blocks the stream.
  const std::string big(16 << 20, 'b');
  w.async_write(net::buffer(big), [](error_code, std::size_t) {});
  net::cancellation_signal sig;
  completion_thread f = w.async_write(
      net::buffer("small", 5), net::bind_cancellation_slot(sig.slot(), thread_of_completion()));
  ioc.poll();
  sig.emit(net::cancellation_type::terminal);
  a.close();  // ends the big one
  completes_here(ioc, f);
}

BOOST_AUTO_TEST_CASE(a_use_future_write_refused_at_once_completes_on_the_stream_thread) {
  net::local::stream_protocol::socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<net::local::stream_protocol::socket&> w(a);
  serq::queued_writer<net::local::stream_protocol::socket&> moved(std::move(w));
  // A moved-from writer refuses every request inside the call.
  completion_thread f = w.async_write(net::buffer("x", 1), thread_of_completion());
  ioc.run();
  BOOST_REQUIRE(f.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  const auto [ec, id] = f.get();
  BOOST_TEST(ec);
  BOOST_TEST((id == std::this_thread::get_id()));
}

// A coroutine's executor lives in its frame: a call that refuses at once
// must read it before the handler (the frame) moves into the completion.
BOOST_AUTO_TEST_CASE(a_coroutine_refused_at_once_by_a_moved_from_writer_resumes) {
  net::local::stream_protocol::socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<net::local::stream_protocol::socket&> w(a);
  serq::queued_writer<net::local::stream_protocol::socket&> moved(std::move(w));
  error_code enqueued, read;
  int done = 0;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        std::tie(enqueued) = co_await w.async_enqueue(timer.async_wait(net::deferred),
                                                      net::as_tuple(net::use_awaitable));
        char c = 0;
        std::tie(read, std::ignore) =
            co_await w.async_read_some(net::buffer(&c, 1), net::as_tuple(net::use_awaitable));
        ++done;
      },
      net::detached);
  ioc.run();
  BOOST_TEST(done == 1);
  BOOST_TEST(enqueued == net::error::bad_descriptor);
  BOOST_TEST(read == net::error::bad_descriptor);
}

BOOST_AUTO_TEST_SUITE_END()
