//
// test/unit/writer_first_write.cpp
//
// An idle queued_writer called from its stream's executor starts its first
// write_some inside the call, instead of waiting for its pump's posted turn;
// what callers queue while that write is in flight is gathered into the next
// one. Only when nothing else can use the stream: never from a thread that
// does not run the stream's executor (or outside its strand), never while a
// composed operation, urgent item or earlier write is queued. The completion
// still never runs inside the call. (Request/response pipelining depends on
// it: see the README's benchmark section.)
//

#include <serq/queued_writer.hpp>
#include <serq/trace.hpp>

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

using serq_test::test_stream;

namespace {

struct result {
  error_code ec;
  std::size_t bytes = 0;
  int calls = 0;
};

// A tracked write handler that records its completion in r.
auto recorder(serq_test::handler_tracker& tr, result& r) {
  return tr.wrap([&r](error_code ec, std::size_t n) {
    r.ec = ec;
    r.bytes = n;
    ++r.calls;
  });
}

struct fixture {
  serq_test::handler_tracker tr;  // destroyed last: every handler accounted for
  net::io_context ioc;
  test_stream peer{ioc};
  std::optional<serq::queued_writer<test_stream>> writer;

  // The stream's executor: the io_context's, or a strand of it; fc, if
  // given, makes its operations fail.
  explicit fixture(bool on_strand = false, serq_test::fail_count* fc = nullptr)
      : writer(std::in_place,
               on_strand ? net::any_io_executor(net::make_strand(ioc))
                         : net::any_io_executor(ioc.get_executor()),
               fc) {
    writer->next_layer().connect(peer);
  }

  void send(std::string msg, result& r) { writer->async_send(std::move(msg), recorder(tr, r)); }

  // Runs f as a handler of the io_context (on its thread), then everything.
  template <class F>
  void on_executor(F f) {
    net::post(ioc, std::move(f));
    ioc.run();
  }
};

// A test_stream whose async_write_some throws on chosen calls, before the
// operation takes its handler (as an initiation that cannot allocate its
// operation does). `before_throw`, if set, runs first.
class throwing_stream : public test_stream {
 public:
  using test_stream::test_stream;

  std::size_t throw_at = 0;  // the 1-based call that throws; 0: none
  std::function<void()> thrower = [] { throw std::bad_alloc(); };
  std::function<void()> before_throw;
  std::size_t calls = 0;

  template <class ConstBufferSequence, class Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    if (++calls == throw_at) {
      if (before_throw)
        before_throw();
      thrower();
    }
    return test_stream::async_write_some(buffers, std::forward<Token>(token));
  }
};

struct throwing_fixture {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer{ioc};
  std::optional<serq::queued_writer<throwing_stream>> writer;

  // Turns of the writer's own queue that ended (its pumps' turns).
  int turns_released = 0;

  // observed: a default trace hook counts the turns; without it, an early
  // pump takes its turn inside the call, with no acquire entry.
  explicit throwing_fixture(std::size_t throw_at, bool observed = true) {
    if (observed)
      serq::set_default_trace_hook(ioc, [this](serq::trace_point p, serq::entry_info& e) {
        if (p == serq::trace_point::detach && e.kind == serq::entry_kind::acquire &&
            e.queue_name == "serq.queued_writer")
          ++turns_released;
      });
    writer.emplace(ioc.get_executor());
    writer->next_layer().connect(peer);
    writer->next_layer().throw_at = throw_at;
  }

  void send(std::string msg, result& r) { writer->async_send(std::move(msg), recorder(tr, r)); }

  template <class F>
  void on_executor(F f) {
    net::post(ioc, std::move(f));
    ioc.run();
  }

  // A composed operation queued behind the writes: it can only complete
  // once the pump before it has handed its turn on.
  void enqueue_op(result& r) {
    writer->async_enqueue(
        net::async_write(writer->next_layer(), net::buffer("op;", 3), net::deferred),
        recorder(tr, r));
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(writer_first_write)

BOOST_AUTO_TEST_CASE(an_idle_writer_starts_the_write_inside_the_call_on_its_executor) {
  fixture f;
  result a, b, c;
  f.on_executor([&] {
    f.send("first;", a);
    // Already handed to the stream (the test stream copies at once)...
    BOOST_TEST(f.peer.str() == "first;");
    BOOST_TEST(f.writer->next_layer().nwrite() == 1u);
    // ...but not completed inside the call.
    BOOST_TEST(a.calls == 0);
    // Queued while that write is in flight: gathered into the next one.
    f.send("second;", b);
    f.send("third;", c);
    BOOST_TEST(f.peer.str() == "first;");
  });
  BOOST_TEST(f.peer.str() == "first;second;third;");
  BOOST_TEST(f.writer->next_layer().nwrite() == 2u);
  for (const result* r : {&a, &b, &c}) {
    BOOST_TEST(r->calls == 1);
    BOOST_TEST(!r->ec);
  }
  BOOST_TEST(b.bytes == 7u);
}

BOOST_AUTO_TEST_CASE(a_call_from_a_thread_not_running_the_executor_waits_for_the_pump) {
  fixture f;
  result a, b;
  f.send("first;", a);  // this thread does not run the io_context
  f.send("second;", b);
  BOOST_TEST(f.peer.str().empty());
  f.ioc.run();
  BOOST_TEST(f.peer.str() == "first;second;");
  BOOST_TEST(f.writer->next_layer().nwrite() == 1u);  // both in one gathered write
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(b.calls == 1);
}

BOOST_AUTO_TEST_CASE(a_strand_stream_writes_inside_the_call_only_from_inside_its_strand) {
  fixture f(true);
  result outside, inside;
  f.on_executor([&] {
    // On the io_context's thread, but not in the stream's strand.
    f.send("outside;", outside);
    BOOST_TEST(f.peer.str().empty());
  });
  BOOST_TEST(f.peer.str() == "outside;");
  f.ioc.restart();
  net::post(f.writer->get_executor(), [&] {
    f.send("inside;", inside);
    BOOST_TEST(f.peer.str() == "outside;inside;");
  });
  f.ioc.run();
  BOOST_TEST(outside.calls == 1);
  BOOST_TEST(inside.calls == 1);
}

BOOST_AUTO_TEST_CASE(a_queued_composed_operation_keeps_its_place_before_a_later_write) {
  fixture f;
  result w;
  error_code op_ec;
  int op_calls = 0;
  f.on_executor([&] {
    f.writer->async_enqueue(
        net::async_write(f.writer->next_layer(), net::buffer("composed;", 9), net::deferred),
        f.tr.wrap([&](error_code ec, std::size_t) {
          op_ec = ec;
          ++op_calls;
        }));
    f.send("write;", w);
    BOOST_TEST(f.peer.str().empty());  // the write waits for the composed operation
  });
  BOOST_TEST(f.peer.str() == "composed;write;");
  BOOST_TEST(op_calls == 1);
  BOOST_TEST(!op_ec);
  BOOST_TEST(w.calls == 1);
}

BOOST_AUTO_TEST_CASE(an_urgent_item_queued_behind_an_early_write_goes_before_later_writes) {
  fixture f;
  result first, normal, urgent;
  f.on_executor([&] {
    f.send("first;", first);  // written at once
    f.send("normal;", normal);
    f.writer->async_send(serq::urgent, std::string("urgent;"), recorder(f.tr, urgent));
  });
  BOOST_TEST(f.peer.str() == "first;urgent;normal;");
  BOOST_TEST(first.calls == 1);
  BOOST_TEST(normal.calls == 1);
  BOOST_TEST(urgent.calls == 1);
}

BOOST_AUTO_TEST_CASE(a_message_written_inside_the_call_has_started_and_is_not_cancelled) {
  fixture f;
  f.writer->next_layer().write_size(2);
  result a, b;
  f.on_executor([&] {
    f.send("abcdef", a);
    f.send("queued", b);
    // a has started (its first bytes are out): only b can be taken back.
    BOOST_TEST(f.writer->cancel() == 1u);
  });
  BOOST_TEST(f.peer.str() == "abcdef");
  BOOST_TEST(!a.ec);
  BOOST_TEST(a.bytes == 6u);
  BOOST_TEST(b.ec == net::error::operation_aborted);
  BOOST_TEST(b.bytes == 0u);
}

BOOST_AUTO_TEST_CASE(an_early_write_that_fails_fails_the_writer) {
  serq_test::fail_count fc(1);  // the first operation fails
  fixture f(false, &fc);
  result a, b, later;
  f.on_executor([&] {
    f.send("doomed", a);
    f.send("queued", b);
  });
  BOOST_TEST(a.ec == serq_test::test_error::test_failure);
  BOOST_TEST(a.bytes == 0u);
  BOOST_TEST(b.ec == serq_test::test_error::test_failure);
  BOOST_TEST(f.writer->error() == serq_test::test_error::test_failure);
  f.send("later", later);
  f.ioc.restart();
  f.ioc.run();
  BOOST_TEST(later.ec == serq_test::test_error::test_failure);
  BOOST_TEST(f.peer.str().empty());
}

// Observed (a default trace hook), a writer queues its early pump's acquire,
// whose turn is posted and meets the early write: the tests below run both
// ways, the unobserved writer taking its idle queue's turn in the call.
namespace {
void observe(net::io_context& ioc, std::atomic<int>& acquires) {
  serq::set_default_trace_hook(ioc, [&acquires](serq::trace_point p, serq::entry_info& e) {
    if (p == serq::trace_point::attach && e.kind == serq::entry_kind::acquire)
      ++acquires;
  });
}

void destroy_with_an_early_write_in_flight(bool observed) {
  std::atomic<int> acquires{0};
  fixture f;
  if (observed)
    observe(f.ioc, acquires);
  f.writer->next_layer().write_size(3);
  result a, b;
  f.on_executor([&] {
    f.send("in flight", a);
    f.send("queued", b);
    // Unobserved, the pump holds the queue's turn taken in the first call;
    // observed, the pump's turn has not even arrived.
    f.writer.reset();
  });
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(b.calls == 1);
  BOOST_TEST(b.ec == net::error::operation_aborted);
  BOOST_TEST(b.bytes == 0u);
  // The message in flight reports what it wrote: 3 bytes, or all of them.
  BOOST_TEST(a.bytes == f.peer.str().size());
  BOOST_TEST(f.peer.str().size() >= 3u);
  BOOST_TEST((acquires.load() > 0) == observed);
}
}  // namespace

BOOST_AUTO_TEST_CASE(destroying_the_writer_with_an_early_write_in_flight_completes_it_once) {
  destroy_with_an_early_write_in_flight(false);
  destroy_with_an_early_write_in_flight(true);
}

// Each completion sends its chain's next message from an io thread, so most
// sends find the writer idle and write in the call; observed, the turn of
// the pump before may still be arriving on the other thread. On a strand,
// the two threads take turns inside it, where the sends run (and write in
// the call) as the strand's handlers.
namespace {
void early_write_chains_on_two_io_threads(bool observed, bool on_strand) {
  constexpr int chains = 4;
  constexpr int per_chain = 300;
  serq_test::handler_tracker tr;
  net::io_context ioc(2);
  std::atomic<int> acquires{0};
  if (observed)
    observe(ioc, acquires);
  test_stream peer(ioc);
  serq::queued_writer<test_stream> w(on_strand ? net::any_io_executor(net::make_strand(ioc))
                                               : net::any_io_executor(ioc.get_executor()));
  w.next_layer().connect(peer);
  std::atomic<int> completed{0};
  std::atomic<int> failed{0};
  std::function<void(int, int)> send = [&](int chain, int i) {
    std::string msg = "<" + std::to_string(chain) + ":" + std::to_string(i) + ">";
    w.async_send(std::move(msg), tr.wrap([&, chain, i](error_code ec, std::size_t) {
      if (ec)
        ++failed;
      ++completed;
      if (i + 1 < per_chain)
        send(chain, i + 1);
    }));
  };
  for (int c = 0; c < chains; ++c)
    net::post(w.get_executor(), [&send, c] { send(c, 0); });
  std::thread other([&] { ioc.run(); });
  ioc.run();
  other.join();
  BOOST_TEST(completed.load() == chains * per_chain);
  BOOST_TEST(failed.load() == 0);
  BOOST_TEST((acquires.load() > 0) == observed);
  // Every chain's messages arrived whole and in order.
  const std::string all = peer.str();
  for (int c = 0; c < chains; ++c) {
    std::size_t at = 0;
    for (int i = 0; i < per_chain; ++i) {
      const std::string msg = "<" + std::to_string(c) + ":" + std::to_string(i) + ">";
      const std::size_t found = all.find(msg, at);
      BOOST_TEST_REQUIRE(found != std::string::npos, "chain " << c << " message " << i);
      at = found + msg.size();
    }
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(chains_of_early_writes_on_two_io_threads_neither_stall_nor_reorder) {
  for (const bool on_strand : {false, true}) {
    early_write_chains_on_two_io_threads(false, on_strand);
    early_write_chains_on_two_io_threads(true, on_strand);
  }
}

// A stream whose async_write_some throws must neither hang the writer (its
// lock is held while the write starts) nor lose messages: the write never
// happened, so the writer fails with the exception's error, every request
// reports it, and the writer's queue moves on.
BOOST_AUTO_TEST_CASE(a_write_some_that_throws_in_a_pump_fails_the_writer) {
  throwing_fixture f(1);
  result a, b, op, later;
  f.send("first;", a);  // not on the executor's thread: the pump writes
  f.send("second;", b);
  f.enqueue_op(op);
  f.ioc.poll();
  BOOST_TEST(f.ioc.stopped());  // nothing left waiting
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(a.ec == net::error::no_memory);
  BOOST_TEST(a.bytes == 0u);
  BOOST_TEST(b.calls == 1);
  BOOST_TEST(b.ec == net::error::no_memory);
  BOOST_TEST(op.calls == 1);  // the pump's turn was handed on
  BOOST_TEST(op.ec == net::error::no_memory);
  BOOST_TEST(f.writer->error() == net::error::no_memory);
  f.send("later;", later);
  f.ioc.restart();
  f.ioc.poll();
  BOOST_TEST(later.ec == net::error::no_memory);
  BOOST_TEST(f.peer.str().empty());
  BOOST_TEST(f.writer->stats().pending_bytes == 0u);
}

BOOST_AUTO_TEST_CASE(a_write_some_that_throws_after_a_partial_write_reports_the_bytes_written) {
  throwing_fixture f(2);
  f.writer->next_layer().thrower = [] { throw std::runtime_error("stream broke"); };
  f.writer->next_layer().write_size(3);
  result a, b;
  f.send("abcdef", a);
  f.send("ghi", b);
  f.ioc.poll();
  BOOST_TEST(f.ioc.stopped());
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(a.ec == net::error::operation_not_supported);  // neither bad_alloc nor system_error
  BOOST_TEST(a.bytes == 3u);
  BOOST_TEST(b.calls == 1);
  BOOST_TEST(b.ec == net::error::operation_not_supported);
  BOOST_TEST(b.bytes == 0u);
  BOOST_TEST(f.peer.str() == "abc");
}

BOOST_AUTO_TEST_CASE(an_early_write_some_that_throws_fails_its_message_and_hands_the_turn_on) {
  throwing_fixture f(1);
  f.writer->next_layer().thrower = [] { throw serq::system_error(net::error::connection_reset); };
  result a, b;
  f.on_executor([&] {
    f.send("first;", a);                // written inside the call: the write throws there
    BOOST_TEST(a.calls == 0);           // and the message completes as a refused one does
    BOOST_TEST(f.turns_released == 0);  // the early pump's turn has not come yet
    f.send("second;", b);
  });
  BOOST_TEST(f.ioc.stopped());
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(a.ec == net::error::connection_reset);
  BOOST_TEST(a.bytes == 0u);
  BOOST_TEST(b.ec == net::error::connection_reset);
  // The turn came after the failure, found nothing to write, and went on.
  BOOST_TEST(f.turns_released == 1);
  BOOST_TEST(f.peer.str().empty());
}

// Unobserved, the early pump takes its turn inside the call: a write_some
// that throws there fails its message, and the call itself hands the turn on
// (the writer's queue goes quiet, its core given back).
BOOST_AUTO_TEST_CASE(an_early_write_some_that_throws_with_the_turn_taken_in_the_call_hands_it_on) {
  throwing_fixture f(1, false);
  f.writer->next_layer().thrower = [] { throw serq::system_error(net::error::connection_reset); };
  result a, b;
  f.on_executor([&] {
    f.send("first;", a);
    BOOST_TEST(serq::detail::writer_access::queue(*f.writer) == nullptr);
    f.send("second;", b);
  });
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(a.ec == net::error::connection_reset);
  BOOST_TEST(b.ec == net::error::connection_reset);
  BOOST_TEST(f.ioc.stopped());
  BOOST_TEST(f.peer.str().empty());
}

BOOST_AUTO_TEST_CASE(an_early_write_some_that_throws_after_its_turn_came_hands_the_turn_on) {
  throwing_fixture f(1);
  // The early pump's turn arrives while the write is being started (it was
  // posted when the pump was queued, just before): the failed write is
  // then the second of the two, and its call must end the pump.
  f.writer->next_layer().before_throw = [&] { BOOST_TEST(f.ioc.poll_one() == 1u); };
  result a;
  f.on_executor([&] {
    f.send("first;", a);
    BOOST_TEST(f.turns_released == 1);  // inside the call, once the write failed
  });
  BOOST_TEST(a.calls == 1);
  BOOST_TEST(a.ec == net::error::no_memory);
  BOOST_TEST(f.turns_released == 1);
  BOOST_TEST(f.ioc.stopped());
}

BOOST_AUTO_TEST_SUITE_END()
