//
// test/unit/queued_writer.cpp
//
// serq::queued_writer over serq_test::test_stream (forced partial writes and
// failures), local socket pairs (real flow control, real cancellation) and
// TLS. Everything runs on one thread; the multi-threaded cases are in
// test/thread_safety/queued_writer_stress.cpp.
//

#include <serq/queued_writer.hpp>

#define SERQ_TEST_NET_SSL  // net::ssl, for the TLS test (see common/net.hpp)

#include "common/counting_allocator.hpp"
#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"
#include "common/tls.hpp"
#include "common/tracking_executor.hpp"

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// ---- a stream that records its write_some calls -----------------------------

struct write_call {
  std::size_t buffers;
  std::size_t bytes;
};

// What write_some calls reported, shared with their handlers so that a
// handler that outlives the stream (the writer destroyed mid-write) is safe.
struct write_results {
  std::size_t calls = 0;
  std::size_t bytes = 0;
};

// Counts the bytes a write_some reported before the writer sees them, so a
// test can compute what the writer must believe is still pending. Forwards
// every associator (the writer binds a cancellation slot).
template <class Handler>
class counted_handler {
 public:
  counted_handler(Handler h, std::shared_ptr<write_results> r)
      : h_(std::move(h)), r_(std::move(r)) {}
  void operator()(error_code ec, std::size_t n);
  const Handler& inner() const noexcept { return h_; }

 private:
  Handler h_;
  std::shared_ptr<write_results> r_;
};

// serq_test::test_stream plus a log of every async_write_some: how many buffers
// and bytes it carried. `write_sizes` (cycled) caps each call's bytes;
// `before_write` runs before each call with its index.
class counting_stream {
 public:
  using executor_type = serq_test::test_stream::executor_type;

  explicit counting_stream(net::io_context& ioc) : s_(ioc) {}
  counting_stream(net::io_context& ioc, serq_test::fail_count& fc) : s_(ioc, fc) {}

  executor_type get_executor() noexcept { return s_.get_executor(); }
  serq_test::test_stream& inner() noexcept { return s_; }

  template <class ConstBufferSequence, class Handler>
  void async_write_some(const ConstBufferSequence& buffers, Handler&& handler) {
    write_call c{0, net::buffer_size(buffers)};
    for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers);
         ++it)
      ++c.buffers;
    calls.push_back(c);
    const std::size_t index = calls.size() - 1;
    if (!write_sizes.empty())
      s_.write_size(write_sizes[index % write_sizes.size()]);
    if (before_write)
      before_write(index);
    s_.async_write_some(
        buffers, counted_handler<std::decay_t<Handler>>(std::forward<Handler>(handler), results_));
  }

  template <class MutableBufferSequence, class Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    return s_.async_read_some(buffers, std::forward<Token>(token));
  }

  std::vector<write_call> calls;
  std::vector<std::size_t> write_sizes;
  std::function<void(std::size_t)> before_write;
  // Bytes the write_some calls reported to the writer so far.
  std::size_t completed_bytes() const noexcept { return results_->bytes; }

 private:
  serq_test::test_stream s_;
  std::shared_ptr<write_results> results_ = std::make_shared<write_results>();
};

template <class Handler>
void counted_handler<Handler>::operator()(error_code ec, std::size_t n) {
  ++r_->calls;
  r_->bytes += n;
  std::move(h_)(ec, n);
}

}  // namespace

template <template <class, class> class Associator, class Handler, class DefaultCandidate>
struct net::associator<Associator, counted_handler<Handler>, DefaultCandidate> {
  static typename Associator<Handler, DefaultCandidate>::type get(
      const counted_handler<Handler>& h) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.inner());
  }
  static auto get(const counted_handler<Handler>& h, const DefaultCandidate& c) noexcept
      -> decltype(Associator<Handler, DefaultCandidate>::get(h.inner(), c)) {
    return Associator<Handler, DefaultCandidate>::get(h.inner(), c);
  }
};

namespace {

using writer_type = serq::queued_writer<counting_stream>;

// ---- completion bookkeeping --------------------------------------------------

struct outcome {
  error_code ec;
  std::size_t bytes = 0;
};

// Hands out tracked handlers that log (id, ec, bytes) in completion order.
class completion_log {
 public:
  explicit completion_log(serq_test::handler_tracker& tr) : tr_(tr) {}

  auto write(int id) {
    return tr_.wrap([this, id](error_code ec, std::size_t n) { record(id, ec, n); });
  }
  auto signal(int id) {
    return tr_.wrap([this, id](error_code ec) { record(id, ec, 0); });
  }

  bool done(int id) const { return results.count(id) != 0; }
  const outcome& operator[](int id) const { return results.at(id); }
  // Position of id in completion order, or -1.
  int position(int id) const {
    for (std::size_t i = 0; i < order.size(); ++i)
      if (order[i] == id)
        return static_cast<int>(i);
    return -1;
  }

  std::vector<int> order;
  std::map<int, outcome> results;

 private:
  void record(int id, error_code ec, std::size_t n) {
    BOOST_TEST(!done(id), "completion " << id << " logged twice");
    order.push_back(id);
    results[id] = {ec, n};
  }

  serq_test::handler_tracker& tr_;
};

std::string pattern(char first, std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>(first + static_cast<char>(i % 23));
  return s;
}

// Runs one handler at a time until pred() holds; fails if the context runs out.
template <class Pred>
void run_until(net::io_context& ioc, Pred pred) {
  while (!pred())
    BOOST_REQUIRE_MESSAGE(ioc.run_one() != 0, "ran out of work before the condition");
}

// A writer over a counting_stream connected to a serq_test::test_stream peer.
struct writer_fixture {
  serq_test::handler_tracker tracker;  // outlives the context
  net::io_context ioc;
  completion_log log{tracker};
  writer_type w{ioc};
  serq_test::test_stream peer{ioc};

  writer_fixture() { w.next_layer().inner().connect(peer); }
  std::string wire() const { return std::string(peer.str()); }
};

const error_code test_failure = serq_test::test_error::test_failure;

constexpr net::cancellation_type_t all_cancellation_types[] = {net::cancellation_type::terminal,
                                                               net::cancellation_type::partial,
                                                               net::cancellation_type::total};

}  // namespace

BOOST_AUTO_TEST_SUITE(queued_writer)

// ---- partial writes ------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(partial_writes_of_one_to_three_bytes_keep_exact_wire_content,
                        writer_fixture) {
  w.next_layer().write_sizes = {1, 2, 3};
  const std::string a = pattern('a', 17), b = pattern('A', 1), c1 = pattern('0', 5),
                    c2 = pattern('K', 9), d = pattern('k', 40);
  const std::vector<net::const_buffer> c{net::buffer(c1), net::buffer(c2)};
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::buffer(b), log.write(1));
  w.async_write(c, log.write(2));
  w.async_write(net::buffer(d), log.write(3));
  BOOST_TEST(log.order.empty());

  ioc.run();

  BOOST_TEST(wire() == a + b + c1 + c2 + d);
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3}));
  BOOST_TEST(!log[0].ec);
  BOOST_TEST(log[0].bytes == a.size());
  BOOST_TEST(log[1].bytes == b.size());
  BOOST_TEST(log[2].bytes == c1.size() + c2.size());
  BOOST_TEST(log[3].bytes == d.size());
  std::size_t total = 0;
  for (std::size_t i = 0; i < w.next_layer().calls.size(); ++i)
    total += std::min<std::size_t>(w.next_layer().calls[i].bytes, i % 3 + 1);
  BOOST_TEST(total == wire().size(), "each write_some took at most its 1..3 bytes");
  BOOST_TEST(w.next_layer().calls.size() >= wire().size() / 3);
  BOOST_TEST(w.pending_bytes() == 0u);
  BOOST_TEST(w.size() == 0u);
}

// ---- the stream model ---------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(async_write_free_function_is_one_queued_write_in_order, writer_fixture) {
  w.next_layer().write_sizes = {3};
  const std::string a = pattern('a', 10), b = pattern('B', 1000), c = pattern('c', 7);
  w.async_write(net::buffer(a), log.write(0));
  net::async_write(w, net::buffer(b), log.write(1));
  w.async_write(net::buffer(c), log.write(2));

  ioc.run();

  BOOST_TEST(wire() == a + b + c);
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2}));
  BOOST_TEST(!log[1].ec);
  BOOST_TEST(log[1].bytes == b.size());
}

BOOST_FIXTURE_TEST_CASE(async_read_free_function_reads_the_next_layer, writer_fixture) {
  w.next_layer().inner().append("hello, world");
  std::string got(12, '\0');
  net::async_read(w, net::buffer(got), log.write(0));
  ioc.run();
  BOOST_TEST(!log[0].ec);
  BOOST_TEST(log[0].bytes == 12u);
  BOOST_TEST(got == "hello, world");
}

// ---- composed operations in turn ------------------------------------------------

BOOST_FIXTURE_TEST_CASE(enqueued_composed_ops_run_between_writes_without_interleaving,
                        writer_fixture) {
  w.next_layer().write_sizes = {1, 3, 2};
  const std::string a = pattern('a', 20), b = pattern('B', 30), c = pattern('c', 20),
                    d = pattern('D', 30), e = pattern('e', 20);
  w.async_write(net::buffer(a), log.write(0));
  w.async_enqueue(net::async_write(w.next_layer(), net::buffer(b), net::deferred), log.write(1));
  w.async_write(net::buffer(c), log.write(2));
  w.async_enqueue<void(error_code, std::size_t)>(
      [this, &d](auto handler) {
        net::async_write(w.next_layer(), net::buffer(d), std::move(handler));
      },
      log.write(3));
  w.async_write(net::buffer(e), log.write(4));
  BOOST_TEST(log.order.empty());

  ioc.run();

  BOOST_TEST(wire() == a + b + c + d + e);
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3, 4}));
  for (int i = 0; i < 5; ++i)
    BOOST_TEST(!log[i].ec);
  BOOST_TEST(log[1].bytes == b.size());
  BOOST_TEST(log[3].bytes == d.size());
}

// ---- gathering -------------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(gathering_writes_queued_messages_in_fewer_write_some_calls,
                        writer_fixture) {
  std::string expected;
  std::vector<std::string> msgs;
  for (int i = 0; i < 20; ++i)
    msgs.push_back(pattern(static_cast<char>('A' + i), 10));
  for (int i = 0; i < 20; ++i) {
    w.async_write(net::buffer(msgs[i]), log.write(i));
    expected += msgs[i];
  }
  ioc.run();
  BOOST_TEST(wire() == expected);
  BOOST_TEST(w.next_layer().calls.size() < msgs.size());
  BOOST_TEST(log.order.size() == msgs.size());
  for (int i = 0; i < 20; ++i) {
    BOOST_TEST(log.order[i] == i);
    BOOST_TEST(log[i].bytes == 10u);
  }
}

BOOST_FIXTURE_TEST_CASE(gathering_off_never_puts_two_messages_in_one_write_some, writer_fixture) {
  w.set_gathering(false);
  w.next_layer().write_sizes = {7};
  std::vector<std::string> msgs;
  for (int i = 0; i < 20; ++i)
    msgs.push_back(pattern(static_cast<char>('A' + i), 10));
  for (int i = 0; i < 20; ++i)
    w.async_write(net::buffer(msgs[i]), log.write(i));
  ioc.run();

  const auto& calls = w.next_layer().calls;
  BOOST_TEST(calls.size() >= msgs.size());
  // Replay the calls (each took min(bytes, 7)): none may cross a boundary.
  std::size_t offset = 0;
  for (const auto& c : calls) {
    const std::size_t took = std::min<std::size_t>(c.bytes, 7);
    BOOST_TEST(offset / 10 == (offset + c.bytes - 1) / 10, "a write_some spans two messages");
    offset += took;
  }
  BOOST_TEST(offset == 200u);
  BOOST_TEST(log.order.size() == 20u);
}

BOOST_FIXTURE_TEST_CASE(gather_limits_bound_buffers_and_bytes_per_write_some, writer_fixture) {
  w.set_gather_limits(3, 25);
  std::string expected;
  std::vector<std::string> msgs;
  for (int i = 0; i < 12; ++i)
    msgs.push_back(pattern(static_cast<char>('A' + i), 4 + i));
  std::vector<net::const_buffer> pieces;
  for (const auto& m : msgs)
    pieces.push_back(net::buffer(m));
  for (int i = 0; i < 12; ++i) {
    w.async_write(net::buffer(msgs[i]), log.write(i));
    expected += msgs[i];
  }
  w.async_write(pieces, log.write(12));  // one message of 12 pieces
  for (const auto& m : msgs)
    expected += m;

  ioc.run();

  BOOST_TEST(wire() == expected);
  for (const auto& c : w.next_layer().calls) {
    BOOST_TEST(c.buffers <= 3u);
    BOOST_TEST(c.bytes <= 25u);
  }
  BOOST_TEST(log.order.size() == 13u);
  BOOST_TEST(log[12].bytes == expected.size() / 2);
}

BOOST_FIXTURE_TEST_CASE(gather_limits_of_zero_throw_invalid_argument, writer_fixture) {
  BOOST_CHECK_THROW(w.set_gather_limits(0, 10), std::invalid_argument);
  BOOST_CHECK_THROW(w.set_gather_limits(10, 0), std::invalid_argument);
}

// ---- errors ----------------------------------------------------------------------

// Beast style: fail at every write_some in turn. With 4 bytes per call over
// three 10-byte messages, call k (0-based) fails after 4k bytes went out.
// (fail_count(n) fails the n-th operation, counting from 1.)
BOOST_AUTO_TEST_CASE(write_error_at_every_point_accounts_for_every_completion) {
  const std::string msgs[3] = {pattern('a', 10), pattern('B', 10), pattern('c', 10)};
  const std::string all = msgs[0] + msgs[1] + msgs[2];
  for (std::size_t fail_at = 0; fail_at <= 8; ++fail_at) {
    BOOST_TEST_CONTEXT("fail_at " << fail_at) {
      serq_test::handler_tracker tracker;
      net::io_context ioc;
      completion_log log(tracker);
      serq_test::fail_count fc(fail_at + 1);
      writer_type w(ioc, fc);
      serq_test::test_stream peer(ioc);
      w.next_layer().inner().connect(peer);
      w.next_layer().write_sizes = {4};
      for (int i = 0; i < 3; ++i)
        w.async_write(net::buffer(msgs[i]), log.write(i));
      w.async_flush(log.signal(3));

      ioc.run();

      const std::size_t on_wire = std::min<std::size_t>(4 * fail_at, all.size());
      BOOST_TEST(std::string(peer.str()) == all.substr(0, on_wire));
      BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3}));
      const bool failed = fail_at < 8;
      BOOST_TEST(w.error() == (failed ? test_failure : error_code()));
      for (int i = 0; i < 3; ++i) {
        const std::size_t begin = 10 * static_cast<std::size_t>(i);
        const std::size_t wrote = on_wire <= begin ? 0 : std::min<std::size_t>(on_wire - begin, 10);
        BOOST_TEST_CONTEXT("message " << i) {
          BOOST_TEST(log[i].bytes == wrote);
          if (wrote == 10)
            BOOST_TEST(!log[i].ec);
          else
            BOOST_TEST(log[i].ec == test_failure);
        }
      }
      BOOST_TEST(log[3].ec == w.error());
      BOOST_TEST(w.pending_bytes() == 0u);
      BOOST_TEST(w.size() == 0u);
      BOOST_TEST(w.writable() == !failed);
    }
  }
}

BOOST_AUTO_TEST_CASE(failed_writer_fails_later_calls_with_sticky_error_never_inline) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  serq_test::fail_count fc(1);  // the first write_some fails
  writer_type w(ioc, fc);
  serq_test::test_stream peer(ioc);
  w.next_layer().inner().connect(peer);
  const std::string a = "first";
  w.async_write(net::buffer(a), log.write(0));
  ioc.run();
  ioc.restart();
  BOOST_REQUIRE(w.error() == test_failure);
  BOOST_TEST(log[0].ec == test_failure);
  BOOST_TEST(log[0].bytes == 0u);

  const std::string b = "second";
  bool launched = false;
  w.async_write(net::buffer(b), log.write(1));
  w.async_send(std::string("third"), log.write(2));
  w.async_flush(log.signal(3));
  w.async_wait_writable(log.signal(4));
  w.async_enqueue<void(error_code)>(
      [&launched](auto handler) {
        launched = true;
        std::move(handler)(error_code());
      },
      log.signal(5));
  BOOST_TEST(log.order.size() == 1u, "a completion ran inside its initiating call");
  BOOST_TEST(w.pending_bytes() == 0u);
  BOOST_TEST(w.size() == 0u);
  BOOST_TEST(!w.writable());

  ioc.run();

  BOOST_TEST(!launched);
  BOOST_TEST(std::string(peer.str()).empty());
  for (int i = 1; i <= 5; ++i) {
    BOOST_TEST_CONTEXT("call " << i) {
      BOOST_TEST(log.done(i));
      BOOST_TEST(log[i].ec == test_failure);
      BOOST_TEST(log[i].bytes == 0u);
    }
  }
  BOOST_TEST(w.next_layer().calls.size() == 1u);
}

BOOST_AUTO_TEST_CASE(closed_peer_fails_active_write_with_its_bytes_and_queued_with_zero) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  writer_type w(ioc);
  auto peer = std::make_unique<serq_test::test_stream>(ioc);
  w.next_layer().inner().connect(*peer);
  w.set_gathering(false);
  w.next_layer().write_sizes = {4};
  std::string seen;
  w.next_layer().before_write = [&](std::size_t index) {
    if (index == 2) {  // the peer goes away in the middle of the first message
      seen = std::string(peer->str());
      peer.reset();
    }
  };
  const std::string a = pattern('a', 10), b = pattern('B', 10);
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::buffer(b), log.write(1));

  ioc.run();

  BOOST_TEST(seen == a.substr(0, 8));
  BOOST_TEST(w.error() == net::error::connection_reset);
  BOOST_TEST(log[0].ec == net::error::connection_reset);
  BOOST_TEST(log[0].bytes == 8u);
  BOOST_TEST(log[1].ec == net::error::connection_reset);
  BOOST_TEST(log[1].bytes == 0u);
  BOOST_TEST((log.order == std::vector<int>{0, 1}));
  BOOST_TEST(w.next_layer().calls.size() == 3u);
}

// ---- cancellation ----------------------------------------------------------------

BOOST_AUTO_TEST_CASE(queued_write_cancelled_through_its_slot_aborts_and_writes_nothing) {
  for (const auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      writer_fixture f;
      f.w.set_gathering(false);  // B stays queued while A is written
      f.w.next_layer().write_sizes = {4};
      const std::string a = pattern('a', 12), b = pattern('B', 8), c = pattern('c', 4);
      net::cancellation_signal sig;
      f.w.async_write(net::buffer(a), f.log.write(0));
      f.w.async_write(net::buffer(b), net::bind_cancellation_slot(sig.slot(), f.log.write(1)));
      f.w.async_write(net::buffer(c), f.log.write(2));
      run_until(f.ioc, [&] { return !f.wire().empty(); });  // A has started

      sig.emit(type);
      BOOST_TEST(!f.log.done(1), "completed inside emit()");
      BOOST_TEST(f.w.size() == 2u);
      BOOST_TEST(f.w.pending_bytes() == a.size() + c.size());

      f.ioc.run();

      BOOST_TEST(f.log[1].ec == net::error::operation_aborted);
      BOOST_TEST(f.log[1].bytes == 0u);
      BOOST_TEST(!f.log[0].ec);
      BOOST_TEST(f.log[0].bytes == a.size());
      BOOST_TEST(!f.log[2].ec);
      BOOST_TEST(f.log.position(0) < f.log.position(2));
      BOOST_TEST(f.wire() == a + c);
      BOOST_TEST(!f.w.error());
    }
  }
}

BOOST_AUTO_TEST_CASE(write_cancelled_before_the_pump_starts_never_reaches_the_stream) {
  for (const auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      writer_fixture f;
      const std::string a = pattern('a', 12), b = pattern('B', 8);
      net::cancellation_signal sig;
      f.w.async_write(net::buffer(a), net::bind_cancellation_slot(sig.slot(), f.log.write(0)));
      f.w.async_write(net::buffer(b), f.log.write(1));
      sig.emit(type);
      BOOST_TEST(f.log.order.empty());
      f.ioc.run();
      BOOST_TEST(f.log[0].ec == net::error::operation_aborted);
      BOOST_TEST(f.log[0].bytes == 0u);
      BOOST_TEST(f.log[1].bytes == b.size());
      BOOST_TEST(f.wire() == b);
    }
  }
}

BOOST_FIXTURE_TEST_CASE(cancel_aborts_writes_not_started_and_returns_their_count, writer_fixture) {
  w.set_gathering(false);
  w.next_layer().write_sizes = {4};
  const std::string a = pattern('a', 12), b = pattern('B', 8), c = pattern('c', 4),
                    d = pattern('D', 6);
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::buffer(b), log.write(1));
  w.async_write(net::buffer(c), log.write(2));
  w.async_send(d, log.write(3));
  run_until(ioc, [&] { return !wire().empty(); });

  BOOST_TEST(w.cancel() == 3u);
  BOOST_TEST(log.order.empty(), "completed inside cancel()");
  BOOST_TEST(w.size() == 1u);
  BOOST_TEST(w.pending_bytes() == a.size());

  ioc.run();

  BOOST_TEST(!log[0].ec);
  BOOST_TEST(log[0].bytes == a.size());
  for (int i = 1; i <= 3; ++i) {
    BOOST_TEST(log[i].ec == net::error::operation_aborted);
    BOOST_TEST(log[i].bytes == 0u);
  }
  BOOST_TEST(wire() == a);
  BOOST_TEST(!w.error());
  BOOST_TEST(w.cancel() == 0u);
}

BOOST_FIXTURE_TEST_CASE(cancel_before_the_pump_starts_aborts_everything, writer_fixture) {
  const std::string a = pattern('a', 12), b = pattern('B', 8);
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::buffer(b), log.write(1));
  BOOST_TEST(w.cancel() == 2u);
  ioc.run();
  BOOST_TEST(log[0].ec == net::error::operation_aborted);
  BOOST_TEST(log[1].ec == net::error::operation_aborted);
  BOOST_TEST(w.next_layer().calls.empty());
  BOOST_TEST(wire().empty());
  // The writer is still usable.
  w.async_write(net::buffer(b), log.write(2));
  ioc.restart();
  ioc.run();
  BOOST_TEST(!log[2].ec);
  BOOST_TEST(wire() == b);
}

BOOST_AUTO_TEST_CASE(started_write_ignores_total_and_partial_cancellation) {
  for (const auto type : {net::cancellation_type::partial, net::cancellation_type::total}) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      writer_fixture f;
      f.w.next_layer().write_sizes = {4};
      const std::string a = pattern('a', 12), b = pattern('B', 5);
      net::cancellation_signal sig;
      f.w.async_write(net::buffer(a), net::bind_cancellation_slot(sig.slot(), f.log.write(0)));
      f.w.async_write(net::buffer(b), f.log.write(1));
      run_until(f.ioc, [&] { return !f.wire().empty(); });
      sig.emit(type);
      f.ioc.run();
      BOOST_TEST(!f.log[0].ec);
      BOOST_TEST(f.log[0].bytes == a.size());
      BOOST_TEST(!f.log[1].ec);
      BOOST_TEST(f.wire() == a + b);
      BOOST_TEST(!f.w.error());
    }
  }
}

BOOST_FIXTURE_TEST_CASE(terminal_cancellation_of_started_write_fails_the_writer, writer_fixture) {
  w.set_gathering(false);
  w.next_layer().write_sizes = {4};
  const std::string a = pattern('a', 12), b = pattern('B', 5);
  net::cancellation_signal sig;
  w.async_write(net::buffer(a), net::bind_cancellation_slot(sig.slot(), log.write(0)));
  w.async_write(net::buffer(b), log.write(1));
  run_until(ioc, [&] { return !wire().empty(); });
  sig.emit(net::cancellation_type::terminal);
  ioc.run();
  BOOST_TEST(w.error() == net::error::operation_aborted);
  BOOST_TEST(log[0].ec == net::error::operation_aborted);
  BOOST_TEST(log[0].bytes == wire().size(), "the started message reports the bytes it wrote");
  BOOST_TEST(log[0].bytes < a.size());
  BOOST_TEST(log[1].ec == net::error::operation_aborted);
  BOOST_TEST(log[1].bytes == 0u);
  BOOST_TEST(wire() == a.substr(0, log[0].bytes));
}

// Over a real socket whose buffer is full: the write_some is really pending
// in the reactor, and terminal cancellation reaches it.
BOOST_AUTO_TEST_CASE(terminal_cancellation_reaches_a_pending_socket_write) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  net::local::stream_protocol::socket s(ioc), peer(ioc);
  net::local::connect_pair(s, peer);
  s.set_option(net::socket_base::send_buffer_size(8192));
  serq::queued_writer<net::local::stream_protocol::socket&> w(s);
  const std::string a = pattern('a', 4 << 20), b = pattern('B', 100);
  net::cancellation_signal sig;
  w.async_write(net::buffer(a), net::bind_cancellation_slot(sig.slot(), log.write(0)));
  w.async_write(net::buffer(b), log.write(1));
  while (ioc.poll() != 0) {
  }
  BOOST_REQUIRE(!log.done(0));  // blocked: the peer does not read

  sig.emit(net::cancellation_type::terminal);
  ioc.run();

  BOOST_TEST(log[0].ec == net::error::operation_aborted);
  BOOST_TEST(log[1].ec == net::error::operation_aborted);
  BOOST_TEST(log[1].bytes == 0u);
  BOOST_TEST(w.error() == net::error::operation_aborted);
  std::string got(peer.available(), '\0');
  net::read(peer, net::buffer(got));
  BOOST_TEST(log[0].bytes == got.size());
  BOOST_TEST(got.size() > 0u);
  BOOST_TEST(got.size() < a.size());
  BOOST_TEST(got == a.substr(0, got.size()));
}

// ---- backpressure ------------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(set_watermarks_with_low_above_high_throws_invalid_argument,
                        writer_fixture) {
  BOOST_CHECK_THROW(w.set_watermarks(11, 10), std::invalid_argument);
  BOOST_CHECK_NO_THROW(w.set_watermarks(10, 10));
}

BOOST_FIXTURE_TEST_CASE(wait_writable_completes_at_once_but_never_inline_when_writable,
                        writer_fixture) {
  BOOST_TEST(w.writable());
  w.async_wait_writable(log.signal(0));
  BOOST_TEST(!log.done(0), "completed inside async_wait_writable");
  ioc.poll();
  BOOST_TEST(log.done(0));
  BOOST_TEST(!log[0].ec);
}

BOOST_FIXTURE_TEST_CASE(wait_writable_waits_above_high_until_pending_drops_to_low, writer_fixture) {
  w.set_watermarks(10, 30);
  w.set_gathering(false);
  w.next_layer().write_sizes = {3};
  std::vector<std::string> msgs;
  for (int i = 0; i < 4; ++i)
    msgs.push_back(pattern(static_cast<char>('A' + i), 10));
  for (std::size_t i = 0; i < 4; ++i) {
    w.async_write(net::buffer(msgs[i]), log.write(static_cast<int>(i)));
    BOOST_TEST(w.pending_bytes() == 10 * (i + 1));
    BOOST_TEST(w.size() == i + 1);
    BOOST_TEST(w.writable() == (i < 3));  // 40 > 30 turns it off
  }
  w.async_wait_writable(log.signal(100));
  BOOST_TEST(!log.done(100));

  bool expect_writable = false;
  std::optional<std::size_t> pending_when_waiter_ran;
  while (ioc.run_one() != 0) {
    const std::size_t reported = w.next_layer().completed_bytes();
    BOOST_TEST(w.pending_bytes() == 40 - reported);
    BOOST_TEST(w.size() == (40 - reported + 9) / 10);
    if (w.pending_bytes() <= 10)
      expect_writable = true;
    BOOST_TEST(w.writable() == expect_writable);
    if (log.done(100) && !pending_when_waiter_ran)
      pending_when_waiter_ran = w.pending_bytes();
    if (!expect_writable)
      BOOST_TEST(!log.done(100), "waiter completed above the low watermark");
  }
  BOOST_TEST(log.done(100));
  BOOST_TEST(!log[100].ec);
  BOOST_REQUIRE(pending_when_waiter_ran.has_value());
  BOOST_TEST(*pending_when_waiter_ran <= 10u);
  BOOST_TEST(w.writable());

  // Rising above high again turns it off at once.
  const std::string big = pattern('z', 31);
  ioc.restart();
  w.async_write(net::buffer(big), log.write(200));
  BOOST_TEST(!w.writable());
  ioc.run();
  BOOST_TEST(w.writable());
}

BOOST_FIXTURE_TEST_CASE(new_watermarks_above_pending_release_waiters_not_inline, writer_fixture) {
  w.set_watermarks(4, 8);
  const std::string a = pattern('a', 20);
  w.async_write(net::buffer(a), log.write(0));
  BOOST_TEST(!w.writable());
  w.async_wait_writable(log.signal(1));
  w.set_watermarks(32, 64);
  BOOST_TEST(w.writable());
  BOOST_TEST(!log.done(1), "completed inside set_watermarks");
  ioc.run();
  BOOST_TEST(!log[1].ec);
  BOOST_TEST(log.position(1) < log.position(0));
}

BOOST_FIXTURE_TEST_CASE(wait_writable_is_cancellable_through_its_slot, writer_fixture) {
  w.set_watermarks(0, 1);
  const std::string a = pattern('a', 20);
  w.async_write(net::buffer(a), log.write(0));
  net::cancellation_signal sig;
  w.async_wait_writable(net::bind_cancellation_slot(sig.slot(), log.signal(1)));
  sig.emit(net::cancellation_type::total);
  BOOST_TEST(!log.done(1));
  ioc.run();
  BOOST_TEST(log[1].ec == net::error::operation_aborted);
  BOOST_TEST(log.position(1) < log.position(0));
  BOOST_TEST(!log[0].ec);
}

// ---- owned messages ----------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(async_send_owns_string_and_byte_vector_bodies, writer_fixture) {
  w.next_layer().write_sizes = {2};
  std::string expected;
  {
    std::string shortstr = "hi";  // in the small-string buffer: moving it moves its bytes
    std::string longstr = pattern('L', 100);
    std::vector<unsigned char> bytes{'u', 'v', 'w'};
    std::vector<char> chars{'x', 'y'};
    std::vector<std::byte> raw{std::byte{'!'}};
    expected = shortstr + longstr + "uvw" + "xy" + "!";
    w.async_send(std::move(shortstr), log.write(0));
    w.async_send(std::move(longstr), log.write(1));
    w.async_send(std::move(bytes), log.write(2));
    w.async_send(std::move(chars), log.write(3));
    w.async_send(std::move(raw), log.write(4));
  }  // the caller's copies are gone
  ioc.run();
  BOOST_TEST(wire() == expected);
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3, 4}));
  BOOST_TEST(log[0].bytes == 2u);
  BOOST_TEST(log[1].bytes == 100u);
  BOOST_TEST(log[2].bytes == 3u);
}

BOOST_AUTO_TEST_CASE(shared_message_is_released_by_every_writer_after_completion) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  auto msg = std::make_shared<const std::string>(pattern('s', 1000));
  std::vector<std::unique_ptr<serq_test::test_stream>> peers;
  std::vector<std::unique_ptr<writer_type>> writers;
  for (int i = 0; i < 3; ++i) {
    writers.push_back(std::make_unique<writer_type>(ioc));
    peers.push_back(std::make_unique<serq_test::test_stream>(ioc));
    writers[i]->next_layer().inner().connect(*peers[i]);
    writers[i]->next_layer().write_sizes = {100 + static_cast<std::size_t>(i)};
    writers[i]->async_send(msg, log.write(i));
  }
  BOOST_TEST(msg.use_count() == 4);
  ioc.run();
  BOOST_TEST(msg.use_count() == 1);
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST(std::string(peers[i]->str()) == *msg);
    BOOST_TEST(log[i].bytes == msg->size());
  }
}

// ---- flush -------------------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(flush_completes_after_earlier_writes_and_before_later_ones,
                        writer_fixture) {
  w.next_layer().write_sizes = {3};
  const std::string a = pattern('a', 10), b = pattern('B', 10), c = pattern('c', 10);
  std::string wire_at_flush;
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::buffer(b), log.write(1));
  w.async_flush(tracker.wrap([&](error_code ec) {
    wire_at_flush = wire();
    log.order.push_back(2);
    log.results[2] = {ec, 0};
  }));
  w.async_write(net::buffer(c), log.write(3));
  ioc.run();
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3}));
  BOOST_TEST(!log[2].ec);
  BOOST_TEST(wire_at_flush.substr(0, 20) == a + b);
  BOOST_TEST(wire() == a + b + c);
}

BOOST_FIXTURE_TEST_CASE(flush_on_idle_writer_completes_but_not_inline, writer_fixture) {
  w.async_flush(log.signal(0));
  BOOST_TEST(!log.done(0));
  ioc.run();
  BOOST_TEST(!log[0].ec);
  BOOST_TEST(w.next_layer().calls.empty());
}

BOOST_AUTO_TEST_CASE(flush_gets_the_writer_error) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  serq_test::fail_count fc(2);  // the second write_some fails
  writer_type w(ioc, fc);
  serq_test::test_stream peer(ioc);
  w.next_layer().inner().connect(peer);
  w.next_layer().write_sizes = {4};
  const std::string a = pattern('a', 10);
  w.async_write(net::buffer(a), log.write(0));
  w.async_flush(log.signal(1));
  ioc.run();
  BOOST_TEST(log[0].ec == test_failure);
  BOOST_TEST(log[0].bytes == 4u);
  BOOST_TEST(log[1].ec == test_failure);
  BOOST_TEST((log.order == std::vector<int>{0, 1}));
}

// The flush's documented cancellation: all types abort it until the writes
// before it are done, even while they are being written.
BOOST_AUTO_TEST_CASE(flush_cancelled_while_earlier_writes_are_in_flight_aborts_only_the_flush) {
  for (const auto type : all_cancellation_types) {
    BOOST_TEST_CONTEXT("cancellation type " << static_cast<int>(type)) {
      writer_fixture f;
      f.w.next_layer().write_sizes = {4};
      const std::string a = pattern('a', 12), b = pattern('B', 6);
      net::cancellation_signal sig;
      f.w.async_write(net::buffer(a), f.log.write(0));
      f.w.async_flush(net::bind_cancellation_slot(sig.slot(), f.log.signal(1)));
      f.w.async_write(net::buffer(b), f.log.write(2));
      run_until(f.ioc, [&] { return !f.wire().empty(); });
      sig.emit(type);
      f.ioc.run();
      BOOST_TEST(f.log[1].ec == net::error::operation_aborted);
      BOOST_TEST(!f.log[0].ec);
      BOOST_TEST(!f.log[2].ec);
      BOOST_TEST(f.wire() == a + b);
      BOOST_TEST(!f.w.error());
    }
  }
}

// The flush leaves the window in flight; what follows it in the next turn
// (an empty message behind a composed op) must still wait for that op.
BOOST_FIXTURE_TEST_CASE(flush_cancelled_in_the_last_window_keeps_later_turns_in_order,
                        writer_fixture) {
  w.next_layer().write_sizes = {4};
  const std::string a = pattern('a', 12), x = "X";
  net::cancellation_signal sig;
  w.async_write(net::buffer(a), log.write(0));
  w.async_flush(net::bind_cancellation_slot(sig.slot(), log.signal(1)));
  w.async_enqueue(net::async_write(w.next_layer(), net::buffer(x), net::deferred), log.write(2));
  w.async_write(net::const_buffer(), log.write(3));
  run_until(ioc, [&] { return wire().size() == a.size(); });  // A's last write_some in flight
  sig.emit(net::cancellation_type::total);
  ioc.run();
  BOOST_TEST(log[1].ec == net::error::operation_aborted);
  BOOST_TEST(log.position(0) < log.position(2));
  BOOST_TEST(log.position(2) < log.position(3), "the empty message overtook the composed op");
  BOOST_TEST(wire() == a + x);
}

// A writer over a test_stream whose executor, a tracking one, can be made to
// throw std::bad_alloc on its next posts (tracked.state()->fail_next).
struct failing_post_fixture {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq_test::tracking_executor<> tracked = serq_test::make_tracking_executor(ioc.get_executor());
  serq_test::test_stream peer{ioc};
  std::optional<serq::queued_writer<serq_test::test_stream>> writer{std::in_place,
                                                                    net::any_io_executor(tracked)};

  failing_post_fixture() { writer->next_layer().connect(peer); }
};

// An idle writer's first message queues a pump in the writer's serialized
// queue. If that cannot be done (the pump's trigger cannot be posted:
// std::bad_alloc), the message is refused with no_memory, as when the writer
// cannot make its busy state, and the writer goes on: nothing is thrown, and
// the next message gets a pump and is written.
BOOST_FIXTURE_TEST_CASE(a_pump_that_cannot_be_queued_refuses_its_message_and_the_writer_goes_on,
                        failing_post_fixture) {
  auto& w = *writer;
  error_code lost_ec, sent_ec;
  int lost_calls = 0, sent_calls = 0;
  tracked.state()->fail_next = 1;  // the pump's trigger
  BOOST_CHECK_NO_THROW(w.async_send(std::string("lost;"), tr.wrap([&](error_code ec, std::size_t) {
    lost_ec = ec;
    ++lost_calls;
  })));
  BOOST_TEST(tracked.state()->fail_next.load() == 0u);
  w.async_send(std::string("sent;"), tr.wrap([&](error_code ec, std::size_t) {
    sent_ec = ec;
    ++sent_calls;
  }));
  // The failed post gave back the outstanding work it had taken, which was
  // the io_context's last: Asio stopped it.
  ioc.restart();
  ioc.poll();
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(lost_calls == 1);
  BOOST_TEST(lost_ec == net::error::no_memory);
  BOOST_TEST(sent_calls == 1);
  BOOST_TEST(!sent_ec);
  BOOST_TEST(peer.str() == "sent;");
  BOOST_TEST(!w.error());
  BOOST_TEST(w.stats().pending_bytes == 0u);
}

// The same for a close on an idle writer: refused with no_memory, its
// closing operation never runs, and the writer is not closing: later
// messages are written.
BOOST_FIXTURE_TEST_CASE(a_close_whose_pump_cannot_be_queued_is_refused_and_the_writer_stays_open,
                        failing_post_fixture) {
  auto& w = *writer;
  error_code close_ec, sent_ec;
  int close_calls = 0, close_runs = 0, sent_calls = 0;
  tracked.state()->fail_next = 1;  // the close's pump's trigger
  BOOST_CHECK_NO_THROW(w.async_close(serq_test::close_test_stream{&w.next_layer(), &close_runs},
                                     tr.wrap([&](error_code ec) {
                                       close_ec = ec;
                                       ++close_calls;
                                     })));
  w.async_send(std::string("still open;"), tr.wrap([&](error_code ec, std::size_t) {
    sent_ec = ec;
    ++sent_calls;
  }));
  ioc.restart();  // the failed post gave back the io_context's last work
  ioc.poll();
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(close_calls == 1);
  BOOST_TEST(close_ec == net::error::no_memory);
  BOOST_TEST(close_runs == 0);
  BOOST_TEST(sent_calls == 1);
  BOOST_TEST(!sent_ec);
  BOOST_TEST(peer.str() == "still open;");
  BOOST_TEST(!w.error());
}

// An urgent message needs a lender in the writer's queue. If that cannot be
// queued (its trigger cannot be posted), the message is refused with
// no_memory and the writer goes on: the next urgent message queues a lender
// again and is written.
BOOST_FIXTURE_TEST_CASE(
    an_urgent_message_whose_lender_cannot_be_queued_is_refused_and_the_next_goes,
    failing_post_fixture) {
  auto& w = *writer;
  w.set_watermarks(4, 8);
  error_code lost_ec, sent_ec;
  int lost_calls = 0, sent_calls = 0;
  tracked.state()->fail_next = 1;  // the lender's trigger (the urgent queue is stopped)
  BOOST_CHECK_NO_THROW(w.async_send(serq::urgent, std::string("lost, urgently;"),
                                    tr.wrap([&](error_code ec, std::size_t) {
                                      lost_ec = ec;
                                      ++lost_calls;
                                    })));
  BOOST_TEST(tracked.state()->fail_next.load() == 0u);
  BOOST_TEST(w.writable());  // as before the refused message
  BOOST_TEST(w.pending_bytes() == 0u);
  w.async_send(serq::urgent, std::string("sent;"), tr.wrap([&](error_code ec, std::size_t) {
    sent_ec = ec;
    ++sent_calls;
  }));
  ioc.restart();  // the failed post gave back the io_context's last work
  ioc.poll();
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(lost_calls == 1);
  BOOST_TEST(lost_ec == net::error::no_memory);
  BOOST_TEST(sent_calls == 1);
  BOOST_TEST(!sent_ec);
  BOOST_TEST(peer.str() == "sent;");
  BOOST_TEST(!w.error());
}

// The same for an urgent composed operation: refused with no_memory, never
// launched, and not left behind in the urgent queue, where it would have
// kept the urgent lane waiting for a lender: the next urgent item goes.
BOOST_FIXTURE_TEST_CASE(
    an_urgent_operation_whose_lender_cannot_be_queued_is_refused_and_the_next_goes,
    failing_post_fixture) {
  auto& w = *writer;
  error_code lost_ec, sent_ec;
  int lost_calls = 0, launched = 0, sent_calls = 0;
  tracked.state()->fail_next = 1;  // the lender's trigger (the urgent queue is stopped)
  BOOST_CHECK_NO_THROW(w.async_enqueue<void(error_code)>(
      serq::urgent,
      [&](auto handler) {
        ++launched;
        std::move(handler)(error_code());
      },
      tr.wrap([&](error_code ec) {
        lost_ec = ec;
        ++lost_calls;
      })));
  BOOST_TEST(tracked.state()->fail_next.load() == 0u);
  w.async_send(serq::urgent, std::string("sent;"), tr.wrap([&](error_code ec, std::size_t) {
    sent_ec = ec;
    ++sent_calls;
  }));
  ioc.restart();  // the failed post gave back the io_context's last work
  ioc.poll();
  BOOST_TEST(lost_calls == 1);
  BOOST_TEST(lost_ec == net::error::no_memory);
  BOOST_TEST(launched == 0);
  BOOST_TEST(sent_calls == 1);
  BOOST_TEST(!sent_ec);
  BOOST_TEST(peer.str() == "sent;");
  BOOST_TEST(!w.error());
}

// A queued message cancelled from another thread is taken out under the
// writer's lock and its completion posted after it. If the writer's last
// operation finishes in between (here: the thread that emitted runs the
// io_context, at the moment of the post), an io_context with nothing else
// to do must not stop before that post: the canceller holds work on the
// writer's executor until it is done (without it, run() returned and the
// aborted handler never ran). The same holds for cancel().
BOOST_FIXTURE_TEST_CASE(a_cancelled_message_s_completion_is_posted_before_the_work_runs_out,
                        failing_post_fixture) {
  for (const bool by_signal : {true, false}) {
    BOOST_TEST_CONTEXT("by_signal " << by_signal) {
      ioc.restart();
      auto& w = *writer;
      int first_calls = 0, second_calls = 0;
      error_code second_ec;
      net::cancellation_signal sig;
      w.async_send(std::string("first;"), tr.wrap([&](error_code, std::size_t) { ++first_calls; }));
      ioc.run_one();  // the pump: its write_some is in flight (its completion posted)
      BOOST_TEST_REQUIRE(first_calls == 0);
      w.async_send(std::string("second;"),
                   net::bind_cancellation_slot(sig.slot(), tr.wrap([&](error_code ec, std::size_t) {
                     second_ec = ec;
                     ++second_calls;
                   })));
      tracked.state()->before_execute = [&] { ioc.poll(); };  // the first write finishes
      tracked.state()->before_execute_armed = true;
      if (by_signal)
        sig.emit(net::cancellation_type::total);
      else
        BOOST_TEST(w.cancel() == 1u);
      BOOST_TEST(!tracked.state()->before_execute_armed.load());
      BOOST_TEST(first_calls == 1);
      ioc.run();  // no restart(): the context must not have stopped
      BOOST_TEST(second_calls == 1);
      BOOST_TEST(second_ec == net::error::operation_aborted);
    }
  }
  BOOST_TEST(peer.str() == "first;first;");
}

// The requests a failure completes take their bytes with them: a spell above
// the high watermark ends there, and stats() stops counting it. (A terminal
// cancellation the stream ignores fails the writer at the pump's next step,
// where no write's result ends the spell.)
BOOST_FIXTURE_TEST_CASE(a_failure_ends_the_spell_above_the_high_watermark, writer_fixture) {
  w.set_watermarks(4, 8);
  w.next_layer().write_sizes = {2};
  const std::string a = pattern('a', 10);
  net::cancellation_signal sig;
  w.async_write(net::buffer(a), net::bind_cancellation_slot(sig.slot(), log.write(0)));
  BOOST_TEST(!w.writable());
  run_until(ioc, [&] { return w.stats().bytes >= 2; });
  sig.emit(net::cancellation_type::terminal);  // the test stream does not cancel
  ioc.run();
  BOOST_TEST(log[0].ec == net::error::operation_aborted);
  BOOST_TEST(w.stats().pending_bytes == 0u);
  const auto spell = w.stats().time_above_high_watermark;
  BOOST_TEST(spell.count() > 0);
  // Let the clock tick (no sleeping: spin until it has moved on).
  for (const auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() == t0;) {
  }
  BOOST_TEST(w.stats().time_above_high_watermark.count() == spell.count());
}

// The destructor aborts what is queued; if an abort's completion cannot be
// posted (std::bad_alloc), that handler is destroyed unrun, the others are
// aborted, and nothing leaves the destructor (which is noexcept).
BOOST_FIXTURE_TEST_CASE(destroying_a_writer_whose_aborts_cannot_be_posted_throws_nothing,
                        failing_post_fixture) {
  std::optional<serq::queued_writer<serq_test::test_stream>>& w = writer;
  int aborted = 0;
  auto count_aborted = [&](error_code ec, std::size_t) {
    if (ec == net::error::operation_aborted)
      ++aborted;
  };
  w->async_send(serq::urgent, std::string("urgent;"), tr.wrap(count_aborted));
  w->async_send(std::string("normal;"), tr.wrap(count_aborted));
  tracked.state()->fail_next = 1;  // the urgent queue's abort of its pump
  BOOST_CHECK_NO_THROW(w.reset());
  BOOST_TEST(tracked.state()->fail_next.load() == 0u);
  ioc.restart();
  ioc.run();
  BOOST_TEST(aborted == 2);  // both messages
  BOOST_TEST(peer.str().empty());
  tr.check_all_accounted();
}

// ---- async rules ------------------------------------------------------------------

BOOST_FIXTURE_TEST_CASE(handlers_run_on_their_associated_executor_with_its_allocator,
                        writer_fixture) {
  auto tracked = serq_test::make_tracking_executor(ioc.get_executor());
  auto counter = std::make_shared<serq_test::allocation_counter>();
  serq_test::counting_allocator<char> alloc(counter);
  bool on_executor[3] = {false, false, false};
  std::size_t outstanding_at_upcall = 1;
  const std::string a = pattern('a', 10);
  w.async_write(net::buffer(a),
                net::bind_executor(
                    tracked, net::bind_allocator(alloc, tracker.wrap([&](error_code, std::size_t) {
                      on_executor[0] = tracked.running_in_this_thread();
                      outstanding_at_upcall = counter->outstanding();
                    }))));
  w.async_flush(net::bind_executor(tracked, tracker.wrap([&](error_code) {
    on_executor[1] = tracked.running_in_this_thread();
  })));
  w.async_wait_writable(net::bind_executor(tracked, tracker.wrap([&](error_code) {
    on_executor[2] = tracked.running_in_this_thread();
  })));
  BOOST_TEST(counter->allocations.load() > 0u);
  ioc.run();
  BOOST_TEST(on_executor[0]);
  BOOST_TEST(on_executor[1]);
  BOOST_TEST(on_executor[2]);
  BOOST_TEST(outstanding_at_upcall == 0u, "intermediate storage not freed before the upcall");
  BOOST_TEST(counter->outstanding() == 0u);
}

// ---- lifetimes --------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(destroying_the_writer_aborts_queued_writes) {
  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  serq_test::test_stream peer(ioc);
  auto w = std::make_unique<writer_type>(ioc);
  w->next_layer().inner().connect(peer);
  w->set_gathering(false);
  w->next_layer().write_sizes = {4};
  const std::string a = pattern('a', 12), b = pattern('B', 8), c = pattern('c', 4);
  w->async_write(net::buffer(a), log.write(0));
  w->async_write(net::buffer(b), log.write(1));
  w->async_flush(log.signal(2));
  w->async_write(net::buffer(c), log.write(3));
  w->async_wait_writable(log.signal(4));  // writable: already posted
  run_until(ioc, [&] { return !peer.str().empty(); });

  w.reset();
  BOOST_TEST(!log.done(1), "completed inside the destructor");
  ioc.run();

  for (int i : {1, 3}) {
    BOOST_TEST(log[i].ec == net::error::operation_aborted);
    BOOST_TEST(log[i].bytes == 0u);
  }
  BOOST_TEST(log[2].ec == net::error::operation_aborted);
  // A was being written: it is not written further (the stream is gone) and
  // reports the bytes that reached the stream.
  BOOST_TEST(log.done(0));
  BOOST_TEST(log[0].ec == net::error::operation_aborted);
  BOOST_TEST(log[0].bytes == peer.str().size());
  BOOST_TEST(std::string(peer.str()) == a.substr(0, log[0].bytes));
}

struct session {
  explicit session(net::io_context& ioc) : w(ioc) {}
  writer_type w;
};

BOOST_AUTO_TEST_CASE(destroying_the_context_destroys_pending_handlers_without_invoking_them) {
  serq_test::handler_tracker tracker;
  std::weak_ptr<session> watch;
  bool invoked = false;
  std::string a = pattern('a', 12), b = pattern('B', 8);
  {
    net::io_context ioc;
    serq_test::test_stream peer(ioc);
    auto s = std::make_shared<session>(ioc);
    watch = s;
    s->w.next_layer().inner().connect(peer);
    s->w.set_gathering(false);
    s->w.next_layer().write_sizes = {4};
    // The handlers keep the session (and so the writer) alive: a cycle that
    // only destroying the handlers breaks.
    s->w.async_write(net::buffer(a),
                     tracker.wrap([s, &invoked](error_code, std::size_t) { invoked = true; }));
    s->w.async_write(net::buffer(b),
                     tracker.wrap([s, &invoked](error_code, std::size_t) { invoked = true; }));
    s->w.async_flush(tracker.wrap([s, &invoked](error_code) { invoked = true; }));
    s.reset();
    run_until(ioc, [&] { return !peer.str().empty(); });  // a write_some is in flight
    BOOST_TEST(!watch.expired());
  }
  BOOST_TEST(!invoked);
  BOOST_TEST(watch.expired(), "the handlers' captures were not released");
  BOOST_TEST(tracker.destroyed_uninvoked() == 3u);
}

BOOST_AUTO_TEST_CASE(destroying_the_context_before_the_pump_ran_releases_handlers) {
  serq_test::handler_tracker tracker;
  std::weak_ptr<session> watch;
  std::string a = pattern('a', 12);
  {
    net::io_context ioc;
    auto s = std::make_shared<session>(ioc);
    watch = s;
    s->w.async_write(net::buffer(a), tracker.wrap([s](error_code, std::size_t) {}));
    s->w.async_wait_writable(tracker.wrap([s](error_code) {}));
  }
  BOOST_TEST(watch.expired());
  BOOST_TEST(tracker.destroyed_uninvoked() == 2u);
}

// ---- degenerate and large sequences ----------------------------------------------------

BOOST_FIXTURE_TEST_CASE(zero_length_messages_complete_in_order_with_zero_bytes, writer_fixture) {
  w.next_layer().write_sizes = {2};
  const std::string a = "abc", c = "defgh";
  const std::vector<net::const_buffer> empty_seq;
  const std::vector<net::const_buffer> empty_pieces{net::const_buffer(), net::const_buffer()};
  w.async_write(net::buffer(a), log.write(0));
  w.async_write(net::const_buffer(), log.write(1));
  w.async_write(empty_seq, log.write(2));
  w.async_write(net::buffer(c), log.write(3));
  w.async_send(std::string(), log.write(4));
  w.async_write(empty_pieces, log.write(5));
  BOOST_TEST(w.size() == 6u);
  BOOST_TEST(w.pending_bytes() == 8u);
  ioc.run();
  BOOST_TEST((log.order == std::vector<int>{0, 1, 2, 3, 4, 5}));
  for (int i : {1, 2, 4, 5}) {
    BOOST_TEST(!log[i].ec);
    BOOST_TEST(log[i].bytes == 0u);
  }
  BOOST_TEST(wire() == a + c);
  for (const auto& call : w.next_layer().calls)
    BOOST_TEST(call.bytes > 0u);
}

BOOST_FIXTURE_TEST_CASE(only_empty_messages_complete_without_any_write_some, writer_fixture) {
  const std::vector<net::const_buffer> empty_seq;
  w.async_write(empty_seq, log.write(0));
  w.async_write(net::const_buffer(), log.write(1));
  BOOST_TEST(log.order.empty());
  ioc.run();
  BOOST_TEST((log.order == std::vector<int>{0, 1}));
  BOOST_TEST(w.next_layer().calls.empty());
}

BOOST_AUTO_TEST_CASE(sequences_of_more_than_64_pieces_are_written_exactly) {
  for (const std::size_t pieces : {65u, 100u, 1024u}) {
    BOOST_TEST_CONTEXT(pieces << " pieces") {
      writer_fixture f;
      f.w.next_layer().write_sizes = {1000, 7};
      std::vector<std::string> storage;
      std::vector<net::const_buffer> seq;
      std::string expected;
      for (std::size_t i = 0; i < pieces; ++i)
        storage.push_back(pattern(static_cast<char>('!' + i % 64), 1 + i % 13));
      for (const auto& s : storage) {
        seq.push_back(net::buffer(s));
        expected += s;
      }
      const std::string tail = "tail";
      f.w.async_write(seq, f.log.write(0));
      f.w.async_write(net::buffer(tail), f.log.write(1));
      f.ioc.run();
      BOOST_TEST(f.wire() == expected + tail);
      BOOST_TEST(!f.log[0].ec);
      BOOST_TEST(f.log[0].bytes == expected.size());
      for (const auto& call : f.w.next_layer().calls)
        BOOST_TEST(call.buffers <= writer_type::default_max_buffers);
    }
  }
}

// ---- TLS ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(queued_writes_over_tls_arrive_exactly_and_shutdown_takes_its_turn) {
  using tls_stream = net::ssl::stream<net::local::stream_protocol::socket>;
  serq_test::tls_contexts tls;
  net::ssl::context& server_ctx = tls.server;
  net::ssl::context& client_ctx = tls.client;

  serq_test::handler_tracker tracker;
  net::io_context ioc;
  completion_log log(tracker);
  net::local::stream_protocol::socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  tls_stream client(std::move(a), client_ctx), server(std::move(b), server_ctx);

  client.async_handshake(net::ssl::stream_base::client, log.signal(-1));
  server.async_handshake(net::ssl::stream_base::server, log.signal(-2));
  ioc.run();
  ioc.restart();
  BOOST_REQUIRE(!log[-1].ec);
  BOOST_REQUIRE(!log[-2].ec);

  serq::queued_writer<tls_stream&> w(client);
  const std::string m0 = pattern('a', 100), m1 = pattern('B', 40000), m2 = pattern('c', 1);
  const std::string m3a = pattern('D', 5000), m3b = pattern('e', 3);
  const std::vector<net::const_buffer> m3{net::buffer(m3a), net::buffer(m3b)};
  const std::string m4 = pattern('F', 20000);
  const std::string expected = m0 + m1 + m2 + m3a + m3b + m4;
  w.async_write(net::buffer(m0), log.write(0));
  w.async_write(net::buffer(m1), log.write(1));
  w.async_write(net::buffer(m2), log.write(2));
  w.async_write(m3, log.write(3));
  w.async_send(m4, log.write(4));
  w.async_enqueue(client.async_shutdown(net::deferred), log.signal(5));

  std::string received(expected.size(), '\0');
  error_code eof_ec, server_shutdown_ec;
  char extra = 0;
  net::async_read(server, net::buffer(received), tracker.wrap([&](error_code ec, std::size_t n) {
    BOOST_TEST(!ec);
    BOOST_TEST(n == expected.size());
    server.async_read_some(net::buffer(&extra, 1), tracker.wrap([&](error_code ec2, std::size_t) {
      eof_ec = ec2;
      server.async_shutdown(tracker.wrap([&](error_code ec3) { server_shutdown_ec = ec3; }));
    }));
  }));
  ioc.run();

  BOOST_TEST(received == expected);
  BOOST_TEST(((log.order == std::vector<int>{-1, -2, 0, 1, 2, 3, 4, 5}) ||
              (log.order == std::vector<int>{-2, -1, 0, 1, 2, 3, 4, 5})));
  BOOST_TEST(log[1].bytes == m1.size());
  BOOST_TEST(log[3].bytes == m3a.size() + m3b.size());
  for (int i = 0; i <= 4; ++i)
    BOOST_TEST(!log[i].ec);
  BOOST_TEST(!log[5].ec, "client shutdown: " << log[5].ec.message());
  BOOST_TEST(eof_ec == net::error::eof, "server saw the close_notify after the data");
  BOOST_TEST(!server_shutdown_ec);
}

BOOST_AUTO_TEST_CASE(gathered_message_cancelled_before_any_byte_is_accepted_is_removed) {
  for (auto type : {net::cancellation_type::total, net::cancellation_type::partial,
                    net::cancellation_type::terminal}) {
    net::io_context ioc;
    serq_test::test_stream a(ioc), b(ioc);
    a.connect(b);
    a.write_size(3);  // the first write_some takes 3 bytes of m1 only
    serq::queued_writer<serq_test::test_stream&> w(a);
    const std::string m1 = "0123456789", m2 = "abcdefghij", m3 = "XYZ";
    net::cancellation_signal sig;
    std::optional<std::pair<error_code, std::size_t>> r1, r2, r3;
    w.async_write(net::buffer(m1), [&](error_code ec, std::size_t n) { r1.emplace(ec, n); });
    w.async_write(net::buffer(m2),
                  net::bind_cancellation_slot(
                      sig.slot(), [&](error_code ec, std::size_t n) { r2.emplace(ec, n); }));
    w.async_write(net::buffer(m3), [&](error_code ec, std::size_t n) { r3.emplace(ec, n); });
    // Run until the first gathered write_some (m1, m2, m3 in one window) is in flight.
    while (b.str().empty() && a.nwrite() == 0 && ioc.run_one() != 0) {
    }
    BOOST_TEST_REQUIRE(a.nwrite() == 1u);
    sig.emit(type);  // m2's bytes are in the window, none accepted yet
    ioc.run();
    BOOST_TEST_CONTEXT("type=" << static_cast<int>(type)) {
      BOOST_TEST_REQUIRE(r1.has_value());
      BOOST_TEST_REQUIRE(r2.has_value());
      BOOST_TEST_REQUIRE(r3.has_value());
      BOOST_TEST(!r1->first);
      BOOST_TEST(r2->first == net::error::operation_aborted);
      BOOST_TEST(r2->second == 0u);
      BOOST_TEST(!r3->first);
      BOOST_TEST(b.str() == m1 + m3);
      BOOST_TEST(!w.error());
    }
  }
}

BOOST_AUTO_TEST_CASE(gathered_message_cancelled_terminally_after_some_bytes_fails_the_writer) {
  net::io_context ioc;
  serq_test::test_stream a(ioc), b(ioc);
  a.connect(b);
  a.write_size(13);  // the first write_some takes all of m1 and 3 bytes of m2
  serq::queued_writer<serq_test::test_stream&> w(a);
  const std::string m1 = "0123456789", m2 = "abcdefghij";
  net::cancellation_signal sig;
  std::optional<std::pair<error_code, std::size_t>> r2;
  w.async_write(net::buffer(m1), [](error_code, std::size_t) {});
  w.async_write(net::buffer(m2),
                net::bind_cancellation_slot(
                    sig.slot(), [&](error_code ec, std::size_t n) { r2.emplace(ec, n); }));
  while (a.nwrite() == 0 && ioc.run_one() != 0) {
  }
  sig.emit(net::cancellation_type::terminal);
  ioc.run();
  BOOST_TEST_REQUIRE(r2.has_value());
  BOOST_TEST(r2->first == net::error::operation_aborted);
  BOOST_TEST(r2->second == 3u);  // what it wrote before the writer failed
  BOOST_TEST(w.error() == net::error::operation_aborted);
  BOOST_TEST(b.str() == m1 + m2.substr(0, 3));
}

// A stream whose first write_some takes `accept` bytes (a posted
// completion) and whose later ones wait until cancelled. Its cancellation
// handler completes the waiting write through net::dispatch: inline when the
// signal is emitted on the stream's executor, which Asio allows (a
// cancellation handler may complete its operation from wherever it runs).
class inline_cancel_stream {
 public:
  using executor_type = net::any_io_executor;

  inline_cancel_stream(net::io_context& ioc, std::size_t accept)
      : ex_(ioc.get_executor()), accept_(accept) {}

  executor_type get_executor() const noexcept { return ex_; }

  template <class ConstBufferSequence, class Handler>
  void async_write_some(const ConstBufferSequence& buffers, Handler&& handler) {
    using handler_type = std::decay_t<Handler>;
    auto slot = net::get_associated_cancellation_slot(handler);
    const executor_type hex = net::get_associated_executor(handler, ex_);
    if (accept_ != 0) {
      const std::size_t n = (std::min)(accept_, net::buffer_size(buffers));
      accept_ = 0;
      net::post(ex_, net::bind_executor(hex, [h = handler_type(std::forward<Handler>(handler)),
                                              n]() mutable { std::move(h)(error_code(), n); }));
      return;
    }
    ++waiting;
    auto held = std::make_shared<std::optional<handler_type>>(std::forward<Handler>(handler));
    BOOST_TEST_REQUIRE(slot.is_connected());
    slot.assign([held, hex, this](net::cancellation_type_t) {
      if (!held->has_value())
        return;
      handler_type h = std::move(**held);
      held->reset();
      --waiting;
      net::dispatch(
          hex, [h = std::move(h)]() mutable { std::move(h)(net::error::operation_aborted, 0); });
      if (throw_after_cancel)
        throw std::runtime_error("cancellation handler");
    });
  }

  int waiting = 0;
  bool throw_after_cancel = false;  // the cancellation handler throws once it completed

 private:
  executor_type ex_;
  std::size_t accept_;
};

// A writer on an inline_cancel_stream whose first write_some takes 3 bytes,
// and a 10-byte message whose handler (bound to `signal`) records its result.
struct inline_cancel_write {
  net::io_context ioc;
  serq::queued_writer<inline_cancel_stream> w{ioc, std::size_t(3)};
  net::cancellation_signal signal;
  std::optional<std::pair<error_code, std::size_t>> r;
  const std::string m = "abcdefghij";

  // Queues m and runs until its second write_some waits; then posts a
  // terminal emit of `signal`, which runs on the io_context's thread, where
  // the stream's dispatch runs the completion inside the emit. (The waiting
  // write holds no work: run_one found none left and stopped the context.)
  void write_then_cancel() {
    w.async_write(net::buffer(m),
                  net::bind_cancellation_slot(
                      signal.slot(), [this](error_code ec, std::size_t n) { r.emplace(ec, n); }));
    while (w.next_layer().waiting == 0 && ioc.run_one() != 0) {
    }
    BOOST_TEST_REQUIRE(w.next_layer().waiting == 1);
    ioc.restart();
    net::post(ioc, [this] { signal.emit(net::cancellation_type::terminal); });
  }
  void check_aborted_after_three_bytes() {
    BOOST_TEST(w.next_layer().waiting == 0);
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(r->first == net::error::operation_aborted);
    BOOST_TEST(r->second == 3u);
  }
};

// The writer passes a terminal cancellation of a partly written message on to
// the stream operation in flight; the stream may complete that operation
// inside the emit. The writer must not hold its lock across the emit (the
// completion takes it: a self-deadlock).
BOOST_AUTO_TEST_CASE(a_stream_completing_inside_a_forwarded_cancellation_does_not_deadlock) {
  inline_cancel_write t;
  t.write_then_cancel();
  t.ioc.run();
  t.check_aborted_after_three_bytes();
  BOOST_TEST(t.w.error() == net::error::operation_aborted);
}

// The same for the stall deadline, which cancels the write in flight from
// its timer's handler, on the executor.
BOOST_AUTO_TEST_CASE(
    a_stream_completing_inside_the_stall_deadlines_cancellation_does_not_deadlock) {
  net::io_context ioc;
  serq::queued_writer<inline_cancel_stream> w(ioc, std::size_t(3));
  w.set_stall_timeout(std::chrono::milliseconds(1));
  std::optional<std::pair<error_code, std::size_t>> r;
  const std::string m = "abcdefghij";
  w.async_write(net::buffer(m), [&](error_code ec, std::size_t n) { r.emplace(ec, n); });
  ioc.run();
  BOOST_TEST(w.next_layer().waiting == 0);
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->first == net::error::timed_out);
  BOOST_TEST(w.error() == net::error::timed_out);
}

// The stall deadline fails m2 (queued outside the write in flight) and
// cancels m1's write, which the stream completes inside the emit. Something
// then throws: m2's handler, before m1's write was resumed, or the stream's
// cancellation handler itself, before m2 was completed. The exception leaves
// run(); neither request is lost.
BOOST_AUTO_TEST_CASE(an_exception_at_the_stall_deadline_loses_no_request) {
  for (const bool cancellation_handler_throws : {false, true}) {
    BOOST_TEST_CONTEXT("cancellation_handler_throws=" << cancellation_handler_throws) {
      net::io_context ioc;
      serq::queued_writer<inline_cancel_stream> w(ioc, std::size_t(3));
      w.next_layer().throw_after_cancel = cancellation_handler_throws;
      w.set_gathering(false);  // m2 waits outside the write in flight
      w.set_stall_timeout(std::chrono::milliseconds(1));
      std::optional<std::pair<error_code, std::size_t>> r1;
      std::optional<error_code> r2;
      const std::string m1 = "abcdefghij", m2 = "klm";
      w.async_write(net::buffer(m1), [&](error_code ec, std::size_t n) { r1.emplace(ec, n); });
      w.async_write(net::buffer(m2), [&](error_code ec, std::size_t) {
        r2 = ec;
        if (!cancellation_handler_throws)
          throw std::runtime_error("m2");
      });
      BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
      ioc.restart();
      ioc.run();
      BOOST_TEST_REQUIRE(r1.has_value());
      BOOST_TEST(r1->first == net::error::timed_out);
      BOOST_TEST(r1->second == 3u);
      BOOST_TEST_REQUIRE(r2.has_value());
      BOOST_TEST(*r2 == net::error::timed_out);
    }
  }
}

// A cancellation handler that completes the write inside the emit and then
// throws: the exception leaves the emit (and run()), and the write still
// completes.
BOOST_AUTO_TEST_CASE(a_cancellation_handler_that_throws_after_completing_does_not_lose_the_write) {
  inline_cancel_write t;
  t.w.next_layer().throw_after_cancel = true;
  t.write_then_cancel();
  BOOST_CHECK_THROW(t.ioc.run(), std::runtime_error);
  t.ioc.restart();
  t.ioc.run();
  t.check_aborted_after_three_bytes();
}

// A stream that takes at most 5 bytes per write_some, completes posted, and
// leaves its cancellation handler in the slot after the operation completed
// (Asio's own operations leave theirs too). That handler counts the calls
// it gets once its operation is over: a composed stream's handler may refer
// to operation state that is freed by then.
class stale_slot_stream {
 public:
  using executor_type = net::any_io_executor;

  explicit stale_slot_stream(net::io_context& ioc) : ex_(ioc.get_executor()) {}
  executor_type get_executor() const noexcept { return ex_; }

  template <class ConstBufferSequence, class Handler>
  void async_write_some(const ConstBufferSequence& buffers, Handler&& handler) {
    auto over = std::make_shared<bool>(false);
    auto slot = net::get_associated_cancellation_slot(handler);
    if (slot.is_connected())
      slot.assign([over, this](net::cancellation_type_t) { stale_calls += *over; });
    const std::size_t n = (std::min)(std::size_t(5), net::buffer_size(buffers));
    accepted += n;
    net::post(ex_, [h = std::decay_t<Handler>(std::forward<Handler>(handler)), n, over]() mutable {
      *over = true;
      std::move(h)(error_code(), n);
    });
  }

  int stale_calls = 0;
  std::size_t accepted = 0;

 private:
  executor_type ex_;
};

// A terminal signal for a started message while no write_some is in flight
// (here from the handler of the message before it, which completed in the
// same write_some) fails the writer at its next step; it is not passed to
// the stream, whose last operation is over.
BOOST_AUTO_TEST_CASE(a_terminal_signal_between_writes_is_not_passed_to_a_finished_operation) {
  net::io_context ioc;
  serq::queued_writer<stale_slot_stream> w(ioc);
  net::cancellation_signal second_signal;
  std::optional<std::pair<error_code, std::size_t>> first, second;
  const std::string m1 = "abc", m2 = "defghijklm";
  w.async_write(net::buffer(m1), [&](error_code ec, std::size_t n) {
    first.emplace(ec, n);
    // The write_some that finished m1 took 2 bytes of m2: m2 has started.
    second_signal.emit(net::cancellation_type::terminal);
  });
  w.async_write(net::buffer(m2), net::bind_cancellation_slot(
                                     second_signal.slot(),
                                     [&](error_code ec, std::size_t n) { second.emplace(ec, n); }));
  ioc.run();
  BOOST_TEST(w.next_layer().stale_calls == 0);
  BOOST_TEST_REQUIRE(first.has_value());
  BOOST_TEST(!first->first);
  BOOST_TEST(first->second == 3u);
  BOOST_TEST_REQUIRE(second.has_value());
  BOOST_TEST(second->first == net::error::operation_aborted);
  BOOST_TEST(second->second == 2u);
  BOOST_TEST(w.next_layer().accepted == 5u);  // nothing written after the signal
  BOOST_TEST(w.error() == net::error::operation_aborted);
}

BOOST_AUTO_TEST_SUITE_END()
