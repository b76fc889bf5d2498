//
// test/unit/lifetime.cpp
//
// Object and context lifetimes: queues and writers destroyed from inside
// their own completion handlers, io_context destroyed with operations in
// every state, stop()/restart() mid-stream, a strand as the queue's
// executor, and completion handlers that throw.
//

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// A one-step operation: completes with success on its executor's next turn.
template <class Executor>
auto one_step(const Executor& ex) {
  return [ex](auto handler) {
    net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code{}); });
  };
}

// Lets a test shut an io_context down (as its destructor does) while objects
// using it are still alive.
struct shutdownable_io_context : net::io_context {
  using net::io_context::shutdown;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(lifetime)

BOOST_AUTO_TEST_CASE(queue_destroyed_inside_its_own_completion_handler_aborts_the_rest) {
  net::io_context ioc;
  auto q = std::make_unique<serq::serialized_queue>(ioc.get_executor());
  std::vector<std::optional<error_code>> results(4);
  q->async_enqueue<void(error_code)>(one_step(ioc.get_executor()), [&](error_code ec) {
    results[0] = ec;
    q.reset();  // from inside its own first completion
  });
  for (int i = 1; i < 4; ++i)
    q->async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                       [&results, i](error_code ec) { results[i] = ec; });
  ioc.run();
  for (const auto& r : results)
    BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(!*results[0]);
  // The next entry's turn came before the first one's handler ran (the turn
  // is handed on first), but it was not launched yet: it never starts.
  for (int i = 1; i < 4; ++i)
    BOOST_TEST(*results[i] == net::error::operation_aborted);
}

// The way a session object meets it: a socket and its queue in one object,
// destroyed before the posted trigger of the entry added to the idle queue
// runs. Launching it then would run an async_write on the freed socket: it is
// aborted instead, as in Asio an operation on a destroyed socket is.
BOOST_AUTO_TEST_CASE(an_entry_whose_turn_came_is_not_launched_once_the_queue_is_destroyed) {
  net::io_context ioc;
  auto q = std::make_unique<serq::serialized_queue>(ioc.get_executor());
  bool launched = false;
  std::optional<error_code> result;
  q->async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched = true;
        net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [&](error_code ec) { result = ec; });
  BOOST_TEST_REQUIRE(q->size() == 1u);  // active: its trigger is posted
  q.reset();
  ioc.run();
  BOOST_TEST(!launched);
  BOOST_TEST_REQUIRE(result.has_value());
  BOOST_TEST(*result == net::error::operation_aborted);
}

// The same for a turn whose trigger is posted when the queue goes.
BOOST_AUTO_TEST_CASE(a_turn_whose_trigger_is_posted_is_aborted_once_the_queue_is_destroyed) {
  net::io_context ioc;
  auto q = std::make_unique<serq::serialized_queue>(ioc.get_executor());
  std::optional<error_code> result;
  bool held = true;
  q->async_acquire([&](error_code ec, serq::turn t) {
    result = ec;
    held = static_cast<bool>(t);
  });
  q.reset();
  ioc.run();
  BOOST_TEST_REQUIRE(result.has_value());
  BOOST_TEST(*result == net::error::operation_aborted);
  BOOST_TEST(!held);
}

BOOST_AUTO_TEST_CASE(writer_destroyed_inside_its_own_completion_handler_aborts_the_rest) {
  net::io_context ioc;
  serq_test::test_stream a(ioc), b(ioc);
  a.connect(b);
  a.write_size(2);
  auto w = std::make_unique<serq::queued_writer<serq_test::test_stream&>>(a);
  w->set_gathering(false);
  const std::string m1 = "first", m2 = "second", m3 = "third";
  std::vector<std::pair<error_code, std::size_t>> results;
  w->async_write(net::buffer(m1), [&](error_code ec, std::size_t n) {
    results.emplace_back(ec, n);
    w.reset();
  });
  w->async_write(net::buffer(m2),
                 [&](error_code ec, std::size_t n) { results.emplace_back(ec, n); });
  w->async_write(net::buffer(m3),
                 [&](error_code ec, std::size_t n) { results.emplace_back(ec, n); });
  ioc.run();
  BOOST_TEST_REQUIRE(results.size() == 3u);
  BOOST_TEST(!results[0].first);
  BOOST_TEST(results[0].second == m1.size());
  // m2 may have started before the writer went away (it is gathered or
  // pumped right after m1): if it started it reports what it wrote.
  for (int i = 1; i < 3; ++i) {
    if (results[i].first == net::error::operation_aborted)
      continue;
    BOOST_TEST(!results[i].first);
  }
  std::string expected = m1;
  for (int i = 1; i < 3; ++i)
    expected += (i == 1 ? m2 : m3).substr(0, results[i].second);
  BOOST_TEST(b.str() == expected);
}

BOOST_AUTO_TEST_CASE(context_destroyed_with_entries_waiting_triggered_and_active_releases_all) {
  serq_test::handler_tracker tr;
  auto captured = std::make_shared<int>(0);
  std::weak_ptr<int> watch = captured;
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc.get_executor());
    net::steady_timer long_op(ioc, std::chrono::hours(1));
    // Active: a timer that never fires while we run.
    q.async_enqueue(long_op.async_wait(net::deferred),
                    tr.wrap([captured](error_code) { BOOST_ERROR("invoked at shutdown"); }));
    // Waiting behind it.
    for (int i = 0; i < 3; ++i)
      q.async_enqueue<void(error_code)>(
          one_step(ioc.get_executor()),
          tr.wrap([captured](error_code) { BOOST_ERROR("invoked at shutdown"); }));
    q.async_acquire(tr.wrap([captured](error_code, serq::turn) { BOOST_ERROR("invoked"); }));
    ioc.poll();  // launches the timer wait; the rest wait
    BOOST_TEST(q.size() == 5u);
    captured.reset();
    // q goes first (Asio's rule: IO objects before their context), while its
    // timer wait is active: the core outlives q until the context's shutdown
    // destroys that wait's handler.
    ioc.stop();
  }
  BOOST_TEST(watch.expired());
  BOOST_TEST(tr.invoked() == 0u);
  tr.check_all_accounted();
}

BOOST_AUTO_TEST_CASE(context_destroyed_with_a_trigger_posted_but_not_run_releases_all) {
  serq_test::handler_tracker tr;
  auto captured = std::make_shared<int>(0);
  std::weak_ptr<int> watch = captured;
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc.get_executor());
    // Idle queue: the entry becomes active at once and its trigger is posted.
    q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                      tr.wrap([captured](error_code) { BOOST_ERROR("invoked"); }));
    q.async_wait(tr.wrap([captured](error_code) { BOOST_ERROR("invoked"); }));
    captured.reset();
  }
  BOOST_TEST(watch.expired());
  BOOST_TEST(tr.invoked() == 0u);
}

// Five writes of msg whose handlers must never run, queued on a writer with
// its pump started: a gathered write_some is in flight or about to be, with
// bytes still pending. The handlers own the only references to an object
// that `watch` sees go when they are destroyed.
struct pending_writes {
  serq_test::handler_tracker tr;  // before the test's io_context
  const std::string msg = std::string(100, 'x');
  std::weak_ptr<int> watch;

  template <class Writer>
  void queue_and_start(Writer& w, net::io_context& ioc) {
    const auto captured = std::make_shared<int>(0);
    watch = captured;
    for (int i = 0; i < 5; ++i)
      w.async_write(net::buffer(msg),
                    tr.wrap([captured](error_code, std::size_t) { BOOST_ERROR("invoked"); }));
    for (int i = 0; i < 3; ++i)
      ioc.run_one();
    BOOST_TEST(w.pending_bytes() > 0u);
  }
};

BOOST_FIXTURE_TEST_CASE(context_destroyed_while_the_writer_gathers_releases_all, pending_writes) {
  {
    net::io_context ioc;
    serq_test::test_stream a(ioc), b(ioc);
    a.connect(b);
    a.write_size(7);
    {
      serq::queued_writer<serq_test::test_stream&> w(a);
      queue_and_start(w, ioc);
      ioc.stop();
      // The writer outlives this block's io_context? No: it goes first, as
      // Asio requires; its queued messages are aborted (posted into the
      // stopped context, then destroyed with it).
    }
  }
  BOOST_TEST(watch.expired());
  BOOST_TEST(tr.invoked() == 0u);
  tr.check_all_accounted();
}

// The context shuts down while a writer (and so its queue cores) is alive,
// with writes queued and one in flight: every pending handler is destroyed
// uninvoked, and the writer can still be destroyed afterwards.
BOOST_FIXTURE_TEST_CASE(context_shutdown_with_a_live_writer_destroys_its_handlers, pending_writes) {
  {
    shutdownable_io_context ioc;
    serq_test::test_stream a(ioc), b(ioc);
    a.connect(b);
    a.write_size(7);
    serq::queued_writer<serq_test::test_stream&> w(a);
    queue_and_start(w, ioc);
    ioc.shutdown();
    BOOST_TEST(watch.expired());
    BOOST_TEST(tr.invoked() == 0u);
  }
  tr.check_all_accounted();
}

// A held turn outlives its queue and the queue's context: releasing it then
// only frees the queue's state (documented: "a turn may outlive its queue").
BOOST_AUTO_TEST_CASE(turn_outliving_its_context_releases_cleanly) {
  std::optional<serq::turn> held;
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc);
    q.async_acquire([&](error_code ec, serq::turn t) {
      BOOST_TEST(!ec);
      held = std::move(t);
    });
    ioc.run();
    BOOST_REQUIRE(held.has_value());
    BOOST_TEST(static_cast<bool>(*held));
  }
  held->release();
  BOOST_TEST(!static_cast<bool>(*held));
  held.reset();
}

// At the context's shutdown a waiting entry's handler owns the only queue
// object: destroying the handler destroys the queue while the service shuts
// it down, and the queue's state goes with the last reference, once the
// active timer wait's handler is destroyed too.
BOOST_AUTO_TEST_CASE(handler_owning_its_queue_destroyed_at_context_shutdown) {
  serq_test::handler_tracker tr;
  std::weak_ptr<serq::serialized_queue> watch;
  {
    shutdownable_io_context ioc;
    net::steady_timer never(ioc, std::chrono::hours(1));
    {
      auto q = std::make_shared<serq::serialized_queue>(ioc);
      watch = q;
      q->async_enqueue(never.async_wait(net::deferred),
                       tr.wrap([](error_code) { BOOST_ERROR("invoked"); }));
      serq::serialized_queue& queue = *q;
      queue.async_enqueue<void(error_code)>(
          one_step(ioc.get_executor()),
          tr.wrap([owner = std::move(q)](error_code) { BOOST_ERROR("invoked"); }));
      ioc.poll();  // the timer wait is launched; the second entry waits
      BOOST_TEST(queue.size() == 2u);
    }
    BOOST_TEST(!watch.expired());  // owned by the waiting handler only
    ioc.shutdown();
    BOOST_TEST(watch.expired());
    BOOST_TEST(tr.invoked() == 0u);
  }
  tr.check_all_accounted();
}

// Asio shuts services down newest first. A strand made after the first
// queue (a long-lived queue, then a strand per connection) is shut down
// before serq's service: the strand destroys the posted trigger of its
// queue's first entry, which abandons it, and the next entry's trigger,
// posted to the shut-down strand, is destroyed inside that post, and so on
// for every entry waiting. That must be a loop, not a recursion as deep as
// the queue (which overflowed the stack).
BOOST_AUTO_TEST_CASE(strand_shut_down_first_abandons_a_deep_queue_without_deep_recursion) {
  serq_test::handler_tracker tr;
  constexpr int entries = 50000;
  int invoked = 0;
  {
    shutdownable_io_context ioc;
    serq::serialized_queue first(ioc);  // serq's service before the strand's
    serq::serialized_queue q(net::make_strand(ioc));
    for (int i = 0; i < entries; ++i)
      q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                        tr.wrap([&](error_code) { ++invoked; }));
    BOOST_TEST(q.size() == std::size_t(entries));
    ioc.shutdown();
    BOOST_TEST(invoked == 0);
  }
  BOOST_TEST(tr.invoked() == 0u);
  tr.check_all_accounted();
}

BOOST_AUTO_TEST_CASE(stop_and_restart_mid_stream_loses_nothing_and_keeps_order) {
  net::io_context ioc;
  serq::serialized_queue q(ioc.get_executor());
  std::vector<int> order;
  for (int i = 0; i < 20; ++i)
    q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()), [&order, i](error_code ec) {
      BOOST_TEST(!ec);
      order.push_back(i);
    });
  for (int i = 0; i < 7; ++i)
    ioc.run_one();
  ioc.stop();
  const std::size_t mid = order.size();
  BOOST_TEST(mid < 20u);
  ioc.run();  // stopped: runs nothing
  BOOST_TEST(order.size() == mid);
  ioc.restart();
  ioc.run();
  BOOST_TEST_REQUIRE(order.size() == 20u);
  for (int i = 0; i < 20; ++i)
    BOOST_TEST(order[i] == i);
}

BOOST_AUTO_TEST_CASE(queue_on_a_strand_triggers_on_the_strand_with_two_threads) {
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  serq::basic_serialized_queue<decltype(strand)> q(strand);
  std::atomic<int> active{0}, overlaps{0}, off_strand{0}, done{0};
  for (int i = 0; i < 200; ++i) {
    q.async_enqueue<void(error_code)>(
        [&, strand](auto handler) {
          if (!strand.running_in_this_thread())
            ++off_strand;
          if (++active > 1)
            ++overlaps;
          net::post(ioc, [&, h = std::move(handler)]() mutable {
            --active;
            std::move(h)(error_code{});
          });
        },
        [&, strand](error_code ec) {
          BOOST_CHECK(!ec);
          if (!strand.running_in_this_thread())
            ++off_strand;
          ++done;
        });
  }
  std::thread t([&] { ioc.run(); });
  ioc.run();
  t.join();
  BOOST_TEST(done == 200);
  BOOST_TEST(overlaps == 0);
  BOOST_TEST(off_strand == 0);
}

BOOST_AUTO_TEST_CASE(throwing_handler_propagates_out_of_run_and_the_queue_goes_on) {
  net::io_context ioc;
  serq::serialized_queue q(ioc.get_executor());
  std::vector<int> order;
  q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()), [&](error_code) {
    order.push_back(0);
    throw std::runtime_error("handler failure");
  });
  for (int i = 1; i < 4; ++i)
    q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                      [&order, i](error_code) { order.push_back(i); });
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  BOOST_TEST(order.size() == 1u);
  ioc.restart();
  ioc.run();
  BOOST_TEST_REQUIRE(order.size() == 4u);
  for (int i = 0; i < 4; ++i)
    BOOST_TEST(order[i] == i);
  BOOST_TEST(q.empty());
}

// A handler that owns the cancellation signal its slot comes from (as the
// state of an awaitable operator or a parallel group does). Dropped without
// being invoked, it may emit that signal (cancelling what it led) and then
// frees it, with the queue's canceller in it.
class signal_owning_handler {
 public:
  signal_owning_handler(bool emit_when_dropped, int& dropped)
      : signal_(std::make_shared<net::cancellation_signal>()),
        emit_(emit_when_dropped),
        dropped_(&dropped) {}
  signal_owning_handler(signal_owning_handler&&) noexcept = default;
  signal_owning_handler& operator=(signal_owning_handler&&) = delete;
  ~signal_owning_handler() {
    if (!signal_)
      return;  // moved from
    if (emit_)
      signal_->emit(net::cancellation_type::terminal);
    ++*dropped_;
  }

  void operator()(error_code) { BOOST_ERROR("the handler of a failed initiation was invoked"); }

  using cancellation_slot_type = net::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return signal_->slot(); }

 private:
  std::shared_ptr<net::cancellation_signal> signal_;
  bool emit_;
  int* dropped_;
};

// An operation whose move throws once armed: at its launch, after it was
// queued.
class move_throws_when_armed {
 public:
  explicit move_throws_when_armed(const bool& armed) : armed_(&armed) {}
  move_throws_when_armed(move_throws_when_armed&& o) : armed_(o.armed_) {
    if (*armed_)
      throw std::runtime_error("operation move");
  }
  move_throws_when_armed& operator=(move_throws_when_armed&&) = delete;

  template <class Handler>
  void operator()(Handler handler) {
    net::post(net::append(std::move(handler), error_code()));
  }

 private:
  const bool* armed_;
};

BOOST_AUTO_TEST_CASE(an_operation_whose_move_throws_at_launch_does_not_wedge_the_queue) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc.get_executor());
  bool armed = false;
  bool next_ran = false;
  q.async_enqueue<void(error_code)>(move_throws_when_armed(armed), tr.wrap([](error_code) {
    BOOST_ERROR("the handler of an operation never launched ran");
  }));
  q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                    tr.wrap([&](error_code ec) { next_ran = !ec; }));
  armed = true;  // the launch moves the operation out of its entry
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
  ioc.restart();
  ioc.run();
  BOOST_TEST(next_ran);
  BOOST_TEST(q.empty());
  tr.check_all_accounted();
}

// A result whose copy throws once armed.
struct fragile_result {
  static constexpr bool never = false;
  const bool* armed = &never;
  fragile_result() = default;  // what an aborted entry reports
  explicit fragile_result(const bool& a) : armed(&a) {}
  fragile_result(const fragile_result& o) : armed(o.armed) {
    if (*armed)
      throw std::runtime_error("result copy");
  }
  fragile_result& operator=(const fragile_result&) = delete;
};

BOOST_AUTO_TEST_CASE(an_inline_completion_whose_result_cannot_be_kept_does_not_wedge_the_queue) {
  // The operation completes inside its own launch (non-conforming), passing
  // a result the queue must copy to complete it later; the copy throws.
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq::serialized_queue q(ioc.get_executor());
  bool armed = false;
  bool next_ran = false;
  const fragile_result result(armed);
  q.async_enqueue<void(error_code, fragile_result)>(
      [&](auto handler) {
        armed = true;
        handler(error_code(), result);  // inline, with an lvalue: copied
      },
      tr.wrap([](error_code, fragile_result) {
        BOOST_ERROR("the handler of a result that could not be kept ran");
      }));
  q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                    tr.wrap([&](error_code ec) { next_ran = !ec; }));
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  armed = false;
  BOOST_TEST(tr.destroyed_uninvoked() == 1u);
  ioc.restart();
  ioc.run();
  BOOST_TEST(next_ran);
  BOOST_TEST(q.empty());
  tr.check_all_accounted();
}

BOOST_AUTO_TEST_CASE(an_initiation_that_throws_drops_a_handler_owning_its_signal_safely) {
  // The handler is destroyed as the exception leaves the launch; the queue
  // must have let go of the canceller (in that signal) by then: emitting it
  // took the canceller's lock, which the launch held (a self-deadlock), and
  // freeing it left the launch to unlock freed memory (ASan).
  for (const bool emit : {false, true}) {
    net::io_context ioc;
    serq::serialized_queue q(ioc.get_executor());
    int dropped = 0;
    bool next_ran = false;
    q.async_enqueue<void(error_code)>(
        [](auto handler) {
          (void)handler;
          throw std::runtime_error("initiation failure");
        },
        signal_owning_handler(emit, dropped));
    q.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                      [&](error_code ec) { next_ran = !ec; });
    BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
    BOOST_TEST(dropped == 1);
    ioc.restart();
    ioc.run();
    BOOST_TEST(next_ran);  // the queue went on
    BOOST_TEST(q.empty());
  }
}

BOOST_AUTO_TEST_CASE(a_handler_dropped_inside_a_nested_launch_waits_for_its_own_launch) {
  // A's initiation launches B (another queue, trigger_inline) inside its own
  // launch; B's operation holds A's handler and throws. A's handler goes
  // while A's launch still holds A's canceller: it must wait for that.
  for (const bool emit : {false, true}) {
    net::io_context ioc;
    serq::serialized_queue qa(ioc.get_executor()), qb(ioc.get_executor());
    int dropped = 0;
    bool b_handler_ran = false;
    bool next_ran = false;
    qa.async_enqueue<void(error_code)>(
        [&](auto handler) {
          qb.async_enqueue<void(error_code)>(
              serq::trigger_inline,
              [h = std::move(handler)](auto) mutable {
                (void)h;
                throw std::runtime_error("nested initiation failure");
              },
              [&](error_code) { b_handler_ran = true; });
        },
        signal_owning_handler(emit, dropped));
    qa.async_enqueue<void(error_code)>(one_step(ioc.get_executor()),
                                       [&](error_code ec) { next_ran = !ec; });
    BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
    BOOST_TEST(dropped == 1);
    ioc.restart();
    ioc.run();
    BOOST_TEST(next_ran);
    BOOST_TEST(!b_handler_ran);
    BOOST_TEST(qa.empty());
    BOOST_TEST(qb.empty());
  }
}

BOOST_AUTO_TEST_CASE(throwing_write_handler_leaves_the_writer_consistent) {
  net::io_context ioc;
  serq_test::test_stream a(ioc), b(ioc);
  a.connect(b);
  serq::queued_writer<serq_test::test_stream&> w(a);
  const std::string m1 = "one", m2 = "two", m3 = "three";
  int completed = 0;
  w.async_write(net::buffer(m1), [&](error_code, std::size_t) {
    ++completed;
    throw std::runtime_error("write handler failure");
  });
  w.async_write(net::buffer(m2), [&](error_code ec, std::size_t) {
    BOOST_TEST(!ec);
    ++completed;
  });
  w.async_write(net::buffer(m3), [&](error_code ec, std::size_t) {
    BOOST_TEST(!ec);
    ++completed;
  });
  try {
    ioc.run();
  } catch (const std::runtime_error&) {
  }
  ioc.restart();
  ioc.run();
  BOOST_TEST(completed == 3);
  BOOST_TEST(b.str() == m1 + m2 + m3);
  BOOST_TEST(w.size() == 0u);
  BOOST_TEST(w.pending_bytes() == 0u);
}

// A raw initiation that (wrongly) completes its handler inside init: the
// final handler must not be handed to the executor until init has returned,
// since it may destroy the cancellation signal that holds serq's canceller,
// whose lock the launch still holds. With two io threads, a final handler
// posted early would run on the other thread while init still waits here.
BOOST_AUTO_TEST_CASE(inline_completion_is_delivered_only_after_the_launch_returns) {
  net::io_context ioc(2);
  serq::serialized_queue q(ioc.get_executor());
  auto sig = std::make_unique<net::cancellation_signal>();
  std::atomic<bool> handler_ran{false};
  bool ran_during_init = true;
  std::promise<void> done;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        std::move(handler)(error_code{});
        // Bounded wait for something that must not happen.
        for (int i = 0; i < 200 && !handler_ran; ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ran_during_init = handler_ran;
      },
      net::bind_cancellation_slot(sig->slot(), [&](error_code ec) {
        BOOST_CHECK(!ec);
        sig.reset();  // destroys the signal, and serq's canceller in it
        handler_ran = true;
        done.set_value();
      }));
  auto work = net::make_work_guard(ioc);
  std::thread t1([&] { ioc.run(); }), t2([&] { ioc.run(); });
  done.get_future().wait();
  work.reset();
  t1.join();
  t2.join();
  BOOST_TEST(!ran_during_init);
  BOOST_TEST(handler_ran);
}

BOOST_AUTO_TEST_CASE(handler_that_destroys_its_writer_and_throws_loses_no_completion) {
  net::io_context ioc;
  auto a = std::make_unique<serq_test::test_stream>(ioc);
  serq_test::test_stream b(ioc);
  a->connect(b);
  auto w = std::make_unique<serq::queued_writer<serq_test::test_stream&>>(*a);
  const std::string m1 = "one", m2 = "two", m3 = "three";
  std::vector<error_code> results(3);
  int completed = 0;
  w->async_write(net::buffer(m1), [&](error_code ec, std::size_t) {
    results[0] = ec;
    ++completed;
    w.reset();
    a.reset();
    throw std::runtime_error("after destroying the writer and its stream");
  });
  w->async_write(net::buffer(m2), [&](error_code ec, std::size_t) {
    results[1] = ec;
    ++completed;
  });
  w->async_write(net::buffer(m3), [&](error_code ec, std::size_t) {
    results[2] = ec;
    ++completed;
  });
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  ioc.restart();
  ioc.run();
  BOOST_TEST(completed == 3);
  BOOST_TEST(!results[0]);
  // m1, m2 and m3 were gathered into one write: all of it went out before
  // m1's handler ran, so the others report success too.
  BOOST_TEST(b.str() == m1 + m2 + m3);
  for (const auto& ec : results)
    BOOST_TEST(!ec);
}

BOOST_AUTO_TEST_SUITE_END()
