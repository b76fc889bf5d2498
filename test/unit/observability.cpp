//
// Trace hooks, tags, untrigger and statistics of serialized_queue: each hook
// point exactly once for every way an entry can end, tags kept from attach
// on, the rules of turn::async_untrigger, and stats() consistent at any time.
//

#include <serq.hpp>

#include "common/counting_allocator.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

// Printable trace points, for the test tool's messages (found by ADL).
SERQ_NAMESPACE_BEGIN
inline std::ostream& operator<<(std::ostream& os, trace_point p) {
  const char* names[] = {"attach", "before_trigger", "after_complete", "detach"};
  return os << names[static_cast<int>(p)];
}
SERQ_NAMESPACE_END

namespace {

using serq::entry_kind;
using serq::trace_point;
using tp = serq::trace_point;

struct record {
  trace_point point;
  std::uint64_t tag;
  entry_kind kind;
  error_code result;
  std::chrono::steady_clock::duration waited;
  std::string queue_name;
};

// A hook that numbers entries at attach (tag 1, 2, ...) and records every call.
struct recorder {
  std::mutex mutex;
  std::vector<record> records;
  std::uint64_t next_tag = 1;
  // Called inside the hook: must not deadlock (no serq lock is held).
  std::function<void()> inside;

  serq::trace_hook hook() {
    return [this](trace_point p, serq::entry_info& info) {
      if (inside)
        inside();
      std::lock_guard<std::mutex> lock(mutex);
      if (p == tp::attach) {
        BOOST_TEST(info.tag == 0u);
        BOOST_TEST(info.waited.count() == 0);
        info.tag = next_tag++;
      }
      records.push_back(
          {p, info.tag, info.kind, info.result, info.waited, std::string(info.queue_name)});
    };
  }

  std::vector<trace_point> points(std::uint64_t tag) {
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<trace_point> out;
    for (const auto& r : records)
      if (r.tag == tag)
        out.push_back(r.point);
    return out;
  }

  record last(std::uint64_t tag, trace_point p) {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = records.rbegin(); it != records.rend(); ++it)
      if (it->tag == tag && it->point == p)
        return *it;
    BOOST_FAIL("no such record");
    return {};
  }
};

const std::vector<trace_point> full{tp::attach, tp::before_trigger, tp::after_complete, tp::detach};
const std::vector<trace_point> unrun{tp::attach, tp::detach};

// An operation that completes with ec, posted to ex.
auto completes_with(net::any_io_executor ex, error_code ec) {
  return [ex, ec](auto handler) {
    net::post(ex, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
  };
}

void expect_counts(const serq::serialized_queue& q, std::uint64_t added, std::uint64_t completed,
                   std::uint64_t aborted) {
  const serq::queue_stats s = q.stats();
  BOOST_TEST(s.added == added);
  BOOST_TEST(s.completed == completed);
  BOOST_TEST(s.aborted == aborted);
}

// Entries that wait count as outstanding work, so run() would not return
// while a stopped queue or a held turn keeps them waiting: drain with poll.
struct fixture {
  net::io_context ioc;
  recorder rec;

  void drain() {
    ioc.restart();
    ioc.poll();
  }

  // What hold_and_untrigger leaves: the turn given back (held, now empty),
  // the order in which the untrigger's handler (1) and the barrier behind
  // the turn (2) ran, the untrigger's result and the turn granted anew.
  struct untriggered {
    std::vector<int> order;
    std::optional<serq::turn> held;
    std::optional<serq::turn> again;
    error_code result{net::error::would_block};
  };

  // On q: a turn acquired (q's first entry) and held in `held`, then q
  // stopped, so that the turn can be given back with async_untrigger.
  void hold_stopped(serq::serialized_queue& q, std::optional<serq::turn>& held) {
    q.async_acquire([&held](error_code, serq::turn t) { held.emplace(std::move(t)); });
    drain();
    BOOST_REQUIRE(held && *held);
    q.stop();
  }

  // On q: a turn acquired (q's first entry) and held with a barrier behind
  // it, then q stopped and the turn given back with async_untrigger.
  void hold_and_untrigger(serq::serialized_queue& q, untriggered& u) {
    q.async_acquire([&u](error_code, serq::turn t) { u.held.emplace(std::move(t)); });
    q.async_wait([&u](error_code ec) {
      BOOST_TEST(!ec);
      u.order.push_back(2);
    });
    drain();
    BOOST_REQUIRE(u.held && *u.held);
    q.stop();
    u.held->async_untrigger([&u](error_code ec, serq::turn t) {
      u.result = ec;
      u.order.push_back(1);
      u.again.emplace(std::move(t));
    });
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(observability, fixture)

BOOST_AUTO_TEST_CASE(a_completed_operation_passes_every_point_once_with_its_tag_and_result) {
  serq::serialized_queue q(ioc, "requests");
  q.set_trace_hook(rec.hook());
  error_code got;
  q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), net::error::eof),
                                    [&](error_code ec) { got = ec; });
  drain();
  BOOST_TEST(got == net::error::eof);
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  const record done = rec.last(1, tp::after_complete);
  BOOST_TEST(done.result == net::error::eof);
  BOOST_TEST(rec.last(1, tp::detach).result == net::error::eof);
  BOOST_TEST(rec.last(1, tp::before_trigger).result == error_code());
  BOOST_TEST(done.queue_name == "requests");
  BOOST_TEST((done.kind == entry_kind::operation));
  // Added to an idle queue: it never waited for its trigger.
  BOOST_TEST(done.waited.count() == 0);
}

BOOST_AUTO_TEST_CASE(a_tag_changed_at_any_point_is_kept_for_the_later_ones) {
  serq::serialized_queue q(ioc);
  std::vector<std::uint64_t> seen;
  q.set_trace_hook([&](trace_point p, serq::entry_info& info) {
    seen.push_back(info.tag);
    if (p == tp::attach)
      info.tag = 7;
    else if (p == tp::before_trigger)
      info.tag = 8;
  });
  q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), [](error_code) {});
  drain();
  BOOST_TEST(seen == (std::vector<std::uint64_t>{0, 7, 8, 8}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(hooks_run_with_no_lock_held_so_they_may_use_the_queue) {
  serq::serialized_queue q(ioc);
  std::size_t calls = 0;
  rec.inside = [&] {
    ++calls;
    (void)q.size();
    (void)q.stats();
    (void)q.running();
  };
  q.set_trace_hook(rec.hook());
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  q.async_wait([](error_code) {});
  drain();
  held.reset();
  drain();
  BOOST_TEST(calls == 8u);
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.points(2) == full, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(an_entry_that_waited_reports_its_wait) {
  serq::serialized_queue q(ioc);
  q.set_trace_hook(rec.hook());
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), [](error_code) {});
  drain();
  held.reset();
  drain();
  const record trig = rec.last(2, tp::before_trigger);
  BOOST_TEST(trig.waited.count() > 0);
  BOOST_TEST(rec.last(2, tp::detach).waited == trig.waited);
  const serq::queue_stats s = q.stats();
  BOOST_TEST(s.max_wait == trig.waited);
  BOOST_TEST(s.total_wait == trig.waited);
}

BOOST_AUTO_TEST_CASE(turns_and_barriers_have_their_kinds_and_a_turn_completes_at_release) {
  serq::serialized_queue q(ioc);
  q.set_trace_hook(rec.hook());
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  q.async_wait([](error_code) {});
  drain();
  BOOST_TEST(rec.points(1) == (std::vector<trace_point>{tp::attach, tp::before_trigger}),
             boost::test_tools::per_element());
  BOOST_TEST((rec.last(1, tp::attach).kind == entry_kind::acquire));
  BOOST_TEST((rec.last(2, tp::attach).kind == entry_kind::barrier));
  held->release();
  drain();
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.points(2) == full, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_hook_installed_after_the_active_entry_was_triggered_reports_none_of_it) {
  serq::serialized_queue q(ioc);
  // A traced turn: the last kind the queue traced is acquire.
  q.set_trace_hook(rec.hook());
  q.async_acquire([](error_code, serq::turn t) { t.release(); });
  drain();
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  q.set_trace_hook(serq::trace_hook());

  // An operation triggered untraced installs a hook while it runs; the
  // barrier behind it was added untraced too.
  recorder late;
  bool op_done = false, barrier_done = false;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        q.set_trace_hook(late.hook());
        net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [&](error_code ec) {
        BOOST_TEST(!ec);
        op_done = true;
      });
  q.async_wait([&](error_code ec) {
    BOOST_TEST(!ec);
    barrier_done = true;
  });
  drain();
  BOOST_TEST(op_done);
  BOOST_TEST(barrier_done);
  // The barrier from its trigger on; nothing of the operation (whose kind
  // the queue did not learn), in particular not as the turn's kind.
  std::vector<trace_point> seen;
  for (const auto& r : late.records) {
    BOOST_TEST((r.kind == entry_kind::barrier));
    seen.push_back(r.point);
  }
  BOOST_TEST(seen == (std::vector<trace_point>{tp::before_trigger, tp::after_complete, tp::detach}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(every_way_a_waiting_entry_leaves_reports_attach_and_detach_only) {
  std::optional<serq::serialized_queue> q(std::in_place, ioc);
  q->set_trace_hook(rec.hook());
  std::optional<serq::turn> held;
  q->async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  net::cancellation_signal signal;
  std::vector<error_code> results;
  auto keep = [&](error_code ec) { results.push_back(ec); };
  q->async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}),
                                     net::bind_cancellation_slot(signal.slot(), keep));  // tag 2
  q->async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), keep);      // tag 3
  signal.emit(net::cancellation_type::terminal);
  BOOST_TEST(q->cancel() == 1u);
  q->async_wait(keep);  // tag 4
  q.reset();            // destroyed: its waiting entries are aborted
  drain();
  BOOST_TEST(results.size() == 3u);
  for (std::uint64_t tag : {2, 3, 4}) {
    BOOST_TEST(rec.points(tag) == unrun, boost::test_tools::per_element());
    BOOST_TEST(rec.last(tag, tp::detach).result == net::error::operation_aborted);
  }
  held.reset();
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(an_entry_cancelled_between_trigger_and_launch_is_triggered_then_aborted) {
  serq::serialized_queue q(ioc);
  q.set_trace_hook(rec.hook());
  net::cancellation_signal signal;
  error_code got;
  bool launched = false;
  q.async_enqueue<void(error_code)>(
      [&](auto h) {
        launched = true;
        std::move(h)(error_code());
      },
      net::bind_cancellation_slot(signal.slot(), [&](error_code ec) { got = ec; }));
  signal.emit(net::cancellation_type::terminal);  // triggered (posted), not launched yet
  drain();
  BOOST_TEST(!launched);
  BOOST_TEST(got == net::error::operation_aborted);
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.last(1, tp::after_complete).result == net::error::operation_aborted);
}

// An io_context whose shutdown (which its destructor starts) a test can call
// while the objects of the context are still alive.
struct shutdown_context : net::io_context {
  using net::io_context::shutdown;
};

BOOST_AUTO_TEST_CASE(context_shutdown_reports_waiting_and_active_entries_as_shut_down) {
  shutdown_context ctx;
  net::steady_timer timer(ctx, std::chrono::hours(1));
  serq::serialized_queue q(ctx);
  q.set_trace_hook(rec.hook());
  q.async_enqueue(timer.async_wait(net::deferred), [](error_code) {});  // tag 1: active
  q.async_wait([](error_code) {});                                      // tag 2: waits
  ctx.poll();
  BOOST_TEST(rec.points(1) == (std::vector<trace_point>{tp::attach, tp::before_trigger}),
             boost::test_tools::per_element());
  ctx.shutdown();  // handlers destroyed unrun
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.last(1, tp::detach).result == net::error::shut_down);
  BOOST_TEST(rec.points(2) == unrun, boost::test_tools::per_element());
  BOOST_TEST(rec.last(2, tp::detach).result == net::error::shut_down);
  // Refused once the context is down: attached, then detached at once.
  q.async_wait([](error_code) {});  // tag 3
  BOOST_TEST(rec.points(3) == unrun, boost::test_tools::per_element());
  BOOST_TEST(rec.last(3, tp::detach).result == net::error::operation_aborted);
  expect_counts(q, 3, 1, 2);
}

BOOST_AUTO_TEST_CASE(the_default_hook_serves_queues_without_their_own_and_writers) {
  serq::set_default_trace_hook(ioc, rec.hook());
  recorder own;
  serq::serialized_queue plain(ioc, "plain");
  serq::serialized_queue mine(ioc, "mine");
  mine.set_trace_hook(own.hook());
  serq_test::test_stream stream(ioc.get_executor());
  serq::queued_writer<serq_test::test_stream&> writer(stream);
  plain.async_wait([](error_code) {});
  mine.async_wait([](error_code) {});
  writer.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), [](error_code) {});
  drain();
  std::vector<std::string> names;
  for (const auto& r : rec.records)
    if (r.point == tp::attach)
      names.push_back(r.queue_name);
  BOOST_TEST(names.size() == 2u);
  BOOST_TEST(names.front() == "plain");
  BOOST_TEST(own.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.points(2) == full, boost::test_tools::per_element());
  // Removed: no more calls.
  serq::set_default_trace_hook(ioc, {});
  const std::size_t before = rec.records.size();
  plain.async_wait([](error_code) {});
  drain();
  BOOST_TEST(rec.records.size() == before);
}

// A queue keeps nothing for tracing until something observes it: the
// context's default hook must still reach queues (and writers) that existed
// before it was installed, and stop when it is removed.
BOOST_AUTO_TEST_CASE(a_default_hook_installed_later_serves_queues_made_before_it) {
  serq::serialized_queue early(ioc, "early");
  serq_test::test_stream stream(ioc.get_executor());
  serq::queued_writer<serq_test::test_stream&> writer(stream);
  early.async_wait([](error_code) {});  // before the hook: not reported
  drain();
  serq::set_default_trace_hook(ioc, rec.hook());
  early.async_wait([](error_code) {});  // tag 1
  writer.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}),
                                         [](error_code) {});  // tag 2
  drain();
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.last(1, tp::detach).queue_name == "early");
  BOOST_TEST(rec.points(2) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.last(2, tp::detach).queue_name == "serq.queued_writer");
  serq::set_default_trace_hook(ioc, {});
  const std::size_t before = rec.records.size();
  early.async_wait([](error_code) {});
  serq::serialized_queue late(ioc);
  late.async_wait([](error_code) {});
  drain();
  BOOST_TEST(rec.records.size() == before);
  serq::set_default_trace_hook(ioc, rec.hook());  // again: both queues see it
  early.async_wait([](error_code) {});            // tag 3
  late.async_wait([](error_code) {});             // tag 4
  drain();
  BOOST_TEST(rec.points(3) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.points(4) == full, boost::test_tools::per_element());
}

// A writer keeps its queue's core only while it uses it. A default hook
// installed while it holds one serves that core, and the cores it makes
// later, after giving that one back, as well.
BOOST_AUTO_TEST_CASE(a_default_hook_serves_a_writers_queue_made_before_and_after_it) {
  serq_test::test_stream stream(ioc.get_executor());
  serq::queued_writer<serq_test::test_stream&> writer(stream);
  const auto op = completes_with(ioc.get_executor(), {});
  writer.async_enqueue<void(error_code)>(op, [](error_code) {});  // before the hook: untraced
  const void* core = serq::detail::writer_access::queue(writer);
  BOOST_TEST_REQUIRE(core != nullptr);
  serq::set_default_trace_hook(ioc, rec.hook());
  writer.async_enqueue<void(error_code)>(op, [](error_code) {});  // tag 1, same core
  BOOST_TEST(serq::detail::writer_access::queue(writer) == core);
  drain();
  BOOST_TEST(!serq::detail::writer_access::queue(writer));  // idle: given back
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(rec.last(1, tp::detach).queue_name == "serq.queued_writer");
  writer.async_enqueue<void(error_code)>(op, [](error_code) {});  // tag 2, a core made now
  drain();
  BOOST_TEST(rec.points(2) == full, boost::test_tools::per_element());
  serq::set_default_trace_hook(ioc, {});
  const std::size_t before = rec.records.size();
  writer.async_enqueue<void(error_code)>(op, [](error_code) {});
  drain();
  BOOST_TEST(rec.records.size() == before);
}

// A writer whose pump holds its queue's turn when the context shuts down (a
// write_some in flight, its handler destroyed unrun) releases that turn
// when its state goes, as a turn object does: the pump's entry is detached,
// and its queue's core freed (ASan's leak checker sees it otherwise).
BOOST_AUTO_TEST_CASE(a_writers_turn_held_at_shutdown_is_released_when_the_writer_goes) {
  shutdown_context ctx;
  serq::set_default_trace_hook(ctx, rec.hook());
  net::local::stream_protocol::socket a(ctx), b(ctx);
  net::local::connect_pair(a, b);  // b never reads: the write stays in flight
  const std::string big(8 << 20, 'x');
  error_code written{net::error::would_block};
  {
    serq::queued_writer<net::local::stream_protocol::socket&> writer(a);
    writer.async_write(net::buffer(big), [&](error_code ec, std::size_t) { written = ec; });
    ctx.poll();
    BOOST_TEST(rec.points(1) == (std::vector<trace_point>{tp::attach, tp::before_trigger}),
               boost::test_tools::per_element());
  }                // the writer object goes: its pump runs on
  ctx.shutdown();  // the write's handler is destroyed unrun, and the writer's state with it
  BOOST_TEST(rec.points(1) == full, boost::test_tools::per_element());
  BOOST_TEST(written == net::error::would_block);  // destroyed, never called
}

// A writer destroyed right after a message it started writing in the call
// (an early write: the caller runs the stream's executor, the writer is
// idle): its pump's acquire is aborted before the turn comes, and the pump
// that ends when the write returns has no turn to release. The acquire is
// reported over once, aborted.
BOOST_AUTO_TEST_CASE(a_writer_gone_before_its_early_pumps_turn_reports_the_acquire_once) {
  serq::set_default_trace_hook(ioc, rec.hook());
  serq_test::test_stream peer(ioc);
  std::optional<serq::queued_writer<serq_test::test_stream>> writer(std::in_place, ioc);
  writer->next_layer().connect(peer);
  net::post(ioc, [&] {
    writer->async_write(net::buffer("abc", 3), [](error_code, std::size_t) {});
    writer.reset();
  });
  drain();
  int detached = 0;
  for (const auto& r : rec.records)
    if (r.tag == 1 && r.point == tp::detach)
      ++detached;
  BOOST_TEST(detached == 1);
  BOOST_TEST(rec.last(1, tp::detach).queue_name == "serq.queued_writer");
  BOOST_TEST(rec.last(1, tp::detach).result == net::error::operation_aborted);
}

// ---- untrigger -------------------------------------------------------------

BOOST_AUTO_TEST_CASE(untrigger_gives_the_turn_back_and_start_grants_it_again_first) {
  serq::serialized_queue q(ioc);
  q.set_trace_hook(rec.hook());
  untriggered u;
  hold_and_untrigger(q, u);    // the acquire is tag 1
  BOOST_TEST(!*u.held);        // given back at once
  BOOST_TEST(q.size() == 2u);  // the head waits again, the barrier behind it
  drain();
  BOOST_TEST(u.order.empty());  // stopped: nothing runs
  q.start();
  BOOST_TEST(u.order.empty());  // posted, never inside start()
  drain();
  BOOST_TEST(!u.result);
  BOOST_TEST(u.order == (std::vector<int>{1}), boost::test_tools::per_element());
  BOOST_REQUIRE(u.again && *u.again);
  BOOST_TEST(rec.points(1) ==
                 (std::vector<trace_point>{tp::attach, tp::before_trigger, tp::before_trigger}),
             boost::test_tools::per_element());
  u.again.reset();
  drain();
  BOOST_TEST(u.order == (std::vector<int>{1, 2}), boost::test_tools::per_element());
  BOOST_TEST(
      rec.points(1) == (std::vector<trace_point>{tp::attach, tp::before_trigger, tp::before_trigger,
                                                 tp::after_complete, tp::detach}),
      boost::test_tools::per_element());
  const serq::queue_stats s = q.stats();
  BOOST_TEST(s.added == 2u);
  BOOST_TEST(s.completed == 2u);
  BOOST_TEST(s.depth == 0u);
}

// The same on a queue that nothing observes (no hook, no stats() yet), which
// keeps no trace or wait state for the head it puts back.
BOOST_AUTO_TEST_CASE(untrigger_on_an_unobserved_queue_grants_the_turn_again_first) {
  serq::serialized_queue q(ioc);
  untriggered u;
  hold_and_untrigger(q, u);
  BOOST_TEST(q.size() == 2u);
  q.start();
  drain();
  BOOST_TEST(!u.result);
  BOOST_TEST(u.order == (std::vector<int>{1}), boost::test_tools::per_element());
  BOOST_REQUIRE(u.again && *u.again);
  u.again.reset();
  drain();
  BOOST_TEST(u.order == (std::vector<int>{1, 2}), boost::test_tools::per_element());
  const serq::queue_stats s = q.stats();
  BOOST_TEST(s.added == 2u);
  BOOST_TEST(s.completed == 2u);
  BOOST_TEST(s.aborted == 0u);
  BOOST_TEST(s.total_wait.count() == 0);  // nobody asked while they waited
}

BOOST_AUTO_TEST_CASE(untrigger_while_running_or_on_an_empty_turn_is_refused_changing_nothing) {
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  bool barrier = false;
  q.async_wait([&](error_code) { barrier = true; });
  drain();
  BOOST_REQUIRE(held && *held);
  std::vector<error_code> results;
  bool got_empty = true;
  held->async_untrigger(net::bind_executor(ioc, [&](error_code ec, serq::turn t) {
    results.push_back(ec);
    got_empty = got_empty && !t;
  }));
  BOOST_TEST(results.empty());  // posted
  BOOST_TEST(static_cast<bool>(*held));
  serq::turn empty;
  empty.async_untrigger(net::bind_executor(ioc, [&](error_code ec, serq::turn t) {
    results.push_back(ec);
    got_empty = got_empty && !t;
  }));
  BOOST_TEST(results.empty());
  drain();
  BOOST_TEST(results.size() == 2u);
  for (const auto& ec : results)
    BOOST_TEST(ec == net::error::invalid_argument);
  BOOST_TEST(got_empty);
  BOOST_TEST(static_cast<bool>(*held));  // still held: nothing changed
  BOOST_TEST(!barrier);
  BOOST_TEST(q.size() == 2u);
  held.reset();
  drain();
  BOOST_TEST(barrier);
}

BOOST_AUTO_TEST_CASE(cancelling_an_untriggered_head_aborts_it_and_lets_the_next_through) {
  serq::serialized_queue q(ioc);
  q.set_trace_hook(rec.hook());
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  bool barrier = false;
  q.async_wait([&](error_code ec) { barrier = !ec; });
  drain();
  q.stop();
  net::cancellation_signal signal;
  error_code got;
  bool empty = false;
  held->async_untrigger(
      net::bind_cancellation_slot(signal.slot(), [&](error_code ec, serq::turn t) {
        got = ec;
        empty = !t;
      }));
  signal.emit(net::cancellation_type::terminal);
  drain();
  BOOST_TEST(got == net::error::operation_aborted);
  BOOST_TEST(empty);
  BOOST_TEST(!barrier);
  q.start();
  drain();
  BOOST_TEST(barrier);
  BOOST_TEST(
      rec.points(1) == (std::vector<trace_point>{tp::attach, tp::before_trigger, tp::detach}),
      boost::test_tools::per_element());
  BOOST_TEST(rec.last(1, tp::detach).result == net::error::operation_aborted);
  expect_counts(q, 2, 1, 1);
}

// A handler bound to another context's executor: its context has work
// while the untriggered head waits, as for any pending Asio operation.
BOOST_AUTO_TEST_CASE(a_pending_untrigger_counts_as_work_of_the_handler_s_executor) {
  net::io_context other;
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  hold_stopped(q, held);
  error_code got{net::error::would_block};
  bool on_other = false;
  held->async_untrigger(net::bind_executor(other, [&](error_code ec, serq::turn) {
    got = ec;
    on_other = other.get_executor().running_in_this_thread();
  }));
  BOOST_TEST(other.poll() == 0u);
  BOOST_TEST(!other.stopped());  // the pending untrigger keeps it running
  q.start();
  drain();
  BOOST_TEST(got == net::error::would_block);  // handed on to `other`
  BOOST_TEST(other.poll() == 1u);
  BOOST_TEST(!got);
  BOOST_TEST(on_other);
  BOOST_TEST(other.stopped());  // nothing left: the work was given back
}

// The pending untrigger keeps its handler in storage from the handler's
// allocator, given back by the time it completes.
BOOST_AUTO_TEST_CASE(a_pending_untrigger_keeps_its_handler_in_the_handler_s_allocator) {
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  hold_stopped(q, held);
  const auto counter = std::make_shared<serq_test::allocation_counter>();
  error_code got{net::error::would_block};
  held->async_untrigger(net::bind_allocator(serq_test::counting_allocator<void>(counter),
                                            [&](error_code ec, serq::turn) { got = ec; }));
  BOOST_TEST(counter->allocations.load() >= 1u);
  BOOST_TEST(counter->outstanding_bytes() > 0u);
  q.start();
  drain();
  BOOST_TEST(!got);
  BOOST_TEST(counter->outstanding_bytes() == 0u);
  BOOST_TEST(counter->deallocations.load() == counter->allocations.load());
}

// The untrigger's handler throws when it is moved out for its completion:
// the exception leaves run(), and nothing of the pending untrigger is kept.
BOOST_AUTO_TEST_CASE(an_untrigger_handler_whose_move_throws_leaves_nothing_behind) {
  struct move_failure {};
  struct handler {
    std::shared_ptr<bool> fail;
    bool* invoked;
    handler(std::shared_ptr<bool> f, bool* i) : fail(std::move(f)), invoked(i) {}
    handler(const handler&) = default;
    handler(handler&& o) : fail(o.fail), invoked(o.invoked) {
      if (*fail)
        throw move_failure();
    }
    void operator()(error_code, serq::turn) { *invoked = true; }
  };
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  hold_stopped(q, held);
  const auto counter = std::make_shared<serq_test::allocation_counter>();
  const auto fail = std::make_shared<bool>(false);
  bool invoked = false;
  held->async_untrigger(
      net::bind_allocator(serq_test::counting_allocator<void>(counter), handler(fail, &invoked)));
  BOOST_REQUIRE(counter->outstanding_bytes() > 0u);
  *fail = true;
  q.start();
  BOOST_CHECK_THROW(drain(), move_failure);
  *fail = false;
  ioc.restart();
  drain();
  BOOST_TEST(!invoked);
  BOOST_TEST(counter->outstanding_bytes() == 0u);
  bool next = false;
  q.async_wait([&](error_code ec) { next = !ec; });  // the queue goes on
  drain();
  BOOST_TEST(next);
}

BOOST_AUTO_TEST_CASE(destroying_the_queue_aborts_an_untriggered_head) {
  std::optional<serq::serialized_queue> q(std::in_place, ioc);
  std::optional<serq::turn> held;
  q->async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  q->stop();
  error_code got;
  held->async_untrigger([&](error_code ec, serq::turn) { got = ec; });
  q.reset();
  drain();
  BOOST_TEST(got == net::error::operation_aborted);
}

BOOST_AUTO_TEST_CASE(untrigger_after_the_queue_was_destroyed_releases_the_turn_and_aborts) {
  std::optional<serq::serialized_queue> q(std::in_place, ioc);
  std::optional<serq::turn> held;
  q->async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  q->stop();
  q.reset();  // the turn outlives its queue object
  error_code got;
  bool empty = false;
  held->async_untrigger([&](error_code ec, serq::turn t) {
    got = ec;
    empty = !t;
  });
  BOOST_TEST(!*held);  // released
  drain();
  BOOST_TEST(got == net::error::operation_aborted);
  BOOST_TEST(empty);
}

BOOST_AUTO_TEST_CASE(untrigger_from_a_coroutine_as_winbindd_waits_for_a_free_child) {
  serq::serialized_queue q(ioc);
  int busy_children = 1;
  std::vector<std::string> log;
  auto request = [&](std::string name) -> net::awaitable<void> {
    auto [ec, t] = co_await q.async_acquire(net::as_tuple(net::use_awaitable));
    BOOST_TEST(!ec);
    while (busy_children > 0) {
      q.stop();
      std::tie(ec, t) = co_await t.async_untrigger(net::as_tuple(net::use_awaitable));
      BOOST_TEST(!ec);
    }
    log.push_back(name);
  };
  net::co_spawn(ioc, request("first"), net::detached);
  net::co_spawn(ioc, request("second"), net::detached);
  drain();
  BOOST_TEST(log.empty());
  BOOST_TEST(q.size() == 2u);
  busy_children = 0;  // a child frees up
  q.start();
  drain();
  BOOST_TEST(log == (std::vector<std::string>{"first", "second"}),
             boost::test_tools::per_element());
}

// ---- statistics ------------------------------------------------------------

BOOST_AUTO_TEST_CASE(stats_count_added_completed_aborted_and_the_peak_depth) {
  serq::serialized_queue q(ioc);
  BOOST_TEST(q.stats().added == 0u);  // the first call also starts the wait timing
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  for (int i = 0; i < 4; ++i)
    q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), [](error_code) {});
  serq::queue_stats s = q.stats();
  BOOST_TEST(s.added == 5u);
  BOOST_TEST(s.depth == 5u);
  BOOST_TEST(s.peak_depth == 5u);
  q.async_wait([](error_code) {});
  BOOST_TEST(q.cancel() == 5u);
  held.reset();
  drain();
  q.async_wait([](error_code) {});
  drain();
  s = q.stats();
  BOOST_TEST(s.added == 7u);
  BOOST_TEST(s.completed == 2u);
  BOOST_TEST(s.aborted == 5u);
  BOOST_TEST(s.depth == 0u);
  BOOST_TEST(s.peak_depth == 6u);
  BOOST_TEST(s.max_wait.count() > 0);
  BOOST_TEST((s.total_wait >= s.max_wait));
}

BOOST_AUTO_TEST_CASE(waits_are_measured_from_the_first_stats_call_on) {
  serq::serialized_queue q(ioc);
  std::optional<serq::turn> held;
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  q.async_wait([](error_code) {});  // waits untimed: nobody asked yet
  held.reset();
  drain();
  serq::queue_stats s = q.stats();
  BOOST_TEST(s.completed == 2u);
  BOOST_TEST(s.total_wait.count() == 0);
  q.async_acquire([&](error_code, serq::turn t) { held.emplace(std::move(t)); });
  drain();
  q.async_wait([](error_code) {});  // timed
  held.reset();
  drain();
  s = q.stats();
  BOOST_TEST(s.completed == 4u);
  BOOST_TEST(s.total_wait.count() > 0);
  BOOST_TEST((s.total_wait == s.max_wait));
}

// A queue's observing state is made on first need, from whichever thread
// needs it first: hooks (the queue's own and the context's default) and
// stats() come and go on two threads while two others add entries, and a
// fifth makes queues that are destroyed with their only operation active
// (the default hook's hand-out races their registration and their end).
// The observers keep going until the adders are done. Nothing is lost, the
// counts agree, the default hook installed last reaches a queue, and an
// entry whose attach a hook saw (and tagged) is reported at most once per
// point, in order, always with its own kind, however the hooks changed in
// between; TSan checks the rest.
BOOST_AUTO_TEST_CASE(observers_come_and_go_while_threads_add_and_complete) {
  constexpr int rounds = 50;
  constexpr int per_producer = 200;
  std::array<std::optional<serq::serialized_queue>, 3> queues;
  for (auto& q : queues)
    q.emplace(ioc);
  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> runners;
  for (int i = 0; i < 2; ++i)
    runners.emplace_back([&] { ioc.run(); });
  std::atomic<int> hook_calls{0};
  struct seen_point {
    std::uint64_t tag;
    trace_point point;
    entry_kind kind;
  };
  std::mutex seen_mutex;
  std::vector<seen_point> seen;  // an entry's points happen one after another: in order here
  std::atomic<std::uint64_t> next_tag{1};
  const serq::trace_hook hook = [&](trace_point p, serq::entry_info& info) {
    hook_calls.fetch_add(1);
    if (p == tp::attach)
      info.tag = next_tag.fetch_add(1);
    if (info.tag != 0) {
      std::lock_guard<std::mutex> lock(seen_mutex);
      seen.push_back({info.tag, p, info.kind});
    }
  };
  std::atomic<int> done{0};
  std::atomic<int> short_lived_done{0};
  std::promise<void> short_lived_all;
  std::atomic<bool> adders_done{false};
  std::vector<std::thread> observers;
  observers.emplace_back([&] {
    for (int i = 0; i < rounds || !adders_done.load(); ++i) {
      serq::set_default_trace_hook(ioc, hook);
      std::this_thread::yield();  // let the others run on a loaded or serialized (valgrind) CPU
      serq::set_default_trace_hook(ioc, {});
    }
  });
  observers.emplace_back([&] {
    for (int i = 0; i < rounds || !adders_done.load(); ++i)
      for (auto& q : queues) {
        q->set_trace_hook(hook);
        (void)q->stats();
        std::this_thread::yield();
        q->set_trace_hook({});
      }
  });
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    for (int i = 0; i < rounds; ++i) {
      serq::serialized_queue q(ioc);
      q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}), [&](error_code) {
        if (short_lived_done.fetch_add(1) + 1 == rounds)
          short_lived_all.set_value();
      });
    }  // destroyed with its operation active: it runs on
  });
  for (int p = 0; p < 2; ++p)
    threads.emplace_back([&] {
      for (int i = 0; i < per_producer; ++i)
        queues[static_cast<std::size_t>(i) % queues.size()]->async_enqueue<void(error_code)>(
            completes_with(ioc.get_executor(), {}), [&](error_code) { done.fetch_add(1); });
    });
  for (auto& t : threads)
    t.join();
  adders_done.store(true);
  for (auto& t : observers)
    t.join();
  for (auto& q : queues) {
    std::promise<void> drained;
    q->async_wait([&](error_code) { drained.set_value(); });
    drained.get_future().wait();
  }
  short_lived_all.get_future().wait();
  BOOST_TEST_MESSAGE("hook calls while running: " << hook_calls.load());
  // The default hook, installed once more, reaches the queues: four points.
  serq::set_default_trace_hook(ioc, hook);
  hook_calls.store(0);
  std::promise<void> passed;
  queues[0]->async_wait([&](error_code) { passed.set_value(); });
  passed.get_future().wait();
  serq::set_default_trace_hook(ioc, {});
  work.reset();
  for (auto& t : runners)
    t.join();
  BOOST_TEST(done.load() == 2 * per_producer);
  BOOST_TEST(short_lived_done.load() == rounds);
  std::uint64_t added = 0;
  for (auto& q : queues) {
    const serq::queue_stats s = q->stats();
    BOOST_TEST(s.completed == s.added);
    BOOST_TEST(s.aborted == 0u);
    BOOST_TEST(s.depth == 0u);
    added += s.added;
  }
  BOOST_TEST(added == static_cast<std::uint64_t>(2 * per_producer + queues.size() + 1));
  BOOST_TEST(hook_calls.load() == 4);

  // Per tagged entry: points strictly in their order (so none twice), the
  // first one its attach, every one with the kind its attach reported.
  std::vector<std::optional<seen_point>> last(next_tag.load());
  std::size_t bad = 0;
  for (const seen_point& r : seen) {
    auto& prev = last.at(r.tag);
    if (prev ? (r.point <= prev->point || r.kind != prev->kind) : r.point != tp::attach)
      ++bad;
    prev = r;
  }
  BOOST_TEST_MESSAGE("tagged points: " << seen.size());
  BOOST_TEST(!seen.empty());
  BOOST_TEST(bad == 0u);
}

BOOST_AUTO_TEST_CASE(stats_are_consistent_while_threads_add_and_complete) {
  serq::serialized_queue q(ioc);
  constexpr int producers = 3;
  constexpr int per_producer = 2000;
  std::atomic<int> done{0};
  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> runners;
  for (int i = 0; i < 2; ++i)
    runners.emplace_back([&] { ioc.run(); });
  std::atomic<bool> stop{false};
  std::atomic<int> snapshots{0};
  std::atomic<int> inconsistent{0};
  std::thread reader([&] {
    while (!stop.load()) {
      const serq::queue_stats s = q.stats();
      if (s.added != s.completed + s.aborted + s.depth || s.depth > s.peak_depth)
        inconsistent.fetch_add(1);
      snapshots.fetch_add(1);
      std::this_thread::yield();  // let the workers run on a loaded or serialized (valgrind) CPU
    }
  });
  std::vector<std::thread> adders;
  for (int p = 0; p < producers; ++p)
    adders.emplace_back([&] {
      for (int i = 0; i < per_producer; ++i)
        q.async_enqueue<void(error_code)>(completes_with(ioc.get_executor(), {}),
                                          [&](error_code) { done.fetch_add(1); });
    });
  for (auto& t : adders)
    t.join();
  std::promise<void> drained;
  q.async_wait([&](error_code) { drained.set_value(); });
  drained.get_future().wait();
  stop.store(true);
  reader.join();
  work.reset();
  for (auto& t : runners)
    t.join();
  const serq::queue_stats s = q.stats();
  BOOST_TEST(done.load() == producers * per_producer);
  BOOST_TEST(s.added == static_cast<std::uint64_t>(producers * per_producer + 1));
  BOOST_TEST(s.completed == s.added);
  BOOST_TEST(s.depth == 0u);
  BOOST_TEST(snapshots.load() > 0);
  BOOST_TEST(inconsistent.load() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
