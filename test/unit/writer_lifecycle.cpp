//
// test/unit/writer_lifecycle.cpp
//
// queued_writer's lifecycle rules: async_close (socket shutdown, TLS
// shutdown, a closing operation of the caller's), the urgent lane, and the
// stall deadline; each rule against real local sockets (or loopback TLS),
// with partial writes and errors forced by serq's test stream, and a
// failure-point sweep over a script with urgent writes and a close.
//

#include "common/net.hpp"
#include "common/socket_buffers.hpp"
#include "common/test_stream.hpp"
#include "common/tls.hpp"

#include <serq/queued_writer.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using local_socket = net::local::stream_protocol::socket;
using tcp = net::ip::tcp;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

// What one completion reported, and when (a global sequence number).
struct result {
  error_code ec;
  std::size_t bytes = 0;
  int calls = 0;
  int order = 0;
};

// Hands out handlers that record into results, in completion order.
class recorder {
 public:
  std::function<void(error_code, std::size_t)> write(result& r) {
    return [this, &r](error_code ec, std::size_t n) {
      r.ec = ec;
      r.bytes = n;
      ++r.calls;
      r.order = ++clock_;
    };
  }
  std::function<void(error_code)> signal(result& r) {
    return [this, &r](error_code ec) {
      r.ec = ec;
      ++r.calls;
      r.order = ++clock_;
    };
  }
  int now() const noexcept { return clock_; }

 private:
  int clock_ = 0;
};

// Bytes that tell messages (and positions inside them) apart.
std::string pattern(std::size_t size, char tag) {
  std::string s(size, tag);
  for (std::size_t i = 0; i < size; i += 97)
    s[i] = static_cast<char>('0' + (i / 97) % 10);
  return s;
}

// Runs every ready handler until none is left: a write to a peer that does
// not read then sits in flight, waiting for room.
void drain_ready(net::io_context& ioc) {
  ioc.restart();
  while (ioc.poll() > 0) {
  }
}

// No test waits longer than this for anything: a broken rule fails the
// test instead of hanging it.
constexpr std::chrono::seconds patience(20);

// Runs one handler at a time until pred() holds; false if the context ran
// out of work first, or patience ran out.
template <class Pred>
bool run_until(net::io_context& ioc, Pred pred) {
  ioc.restart();
  const auto give_up = steady_clock::now() + patience;
  while (!pred()) {
    if (steady_clock::now() >= give_up)
      return false;
    if (ioc.run_one_for(milliseconds(100)) == 0 && ioc.stopped())
      return pred();
  }
  return true;
}

// Runs the context until it runs out of work, or patience runs out.
void run_all(net::io_context& ioc) {
  ioc.restart();
  ioc.run_for(patience);
}

// Reads from s until an error, appending to out; final_ec gets the error.
template <class Stream>
void read_all(Stream& s, std::string& out, error_code& final_ec) {
  auto buf = std::make_shared<std::array<char, 65536>>();
  s.async_read_some(net::buffer(*buf), [&s, &out, &final_ec, buf](error_code ec, std::size_t n) {
    out.append(buf->data(), n);
    if (ec) {
      final_ec = ec;
      return;
    }
    read_all(s, out, final_ec);
  });
}

// Reads what is there now, without blocking; eof tells whether the peer shut
// its side down.
std::string read_available(local_socket& s, bool* eof = nullptr) {
  s.non_blocking(true);
  std::string out;
  std::array<char, 65536> buf;
  for (;;) {
    error_code ec;
    const std::size_t n = s.read_some(net::buffer(buf), ec);
    out.append(buf.data(), n);
    if (ec) {
      if (eof)
        *eof = ec == net::error::eof;
      break;
    }
  }
  return out;
}

// A connected pair: `a` for the writer, `b` for the peer; its buffers are capped (a message of
// hundreds of KiB does not fit while `b` does not read, whatever the host's defaults).
struct socket_pair {
  explicit socket_pair(net::io_context& ioc) : a(ioc), b(ioc) {
    serq_test::connect_small_pair(a, b);
  }
  local_socket a, b;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(writer_lifecycle)

// ---- async_close -------------------------------------------------------------

BOOST_AUTO_TEST_CASE(close_during_a_half_written_message_completes_it_whole_then_shuts_down) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(4 * 1024 * 1024, 'b');
  result big_r, close_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  drain_ready(ioc);
  // The peer reads nothing yet: the message is half written, its write in flight.
  BOOST_REQUIRE(writer.pending_bytes() > 0u);
  BOOST_REQUIRE(writer.pending_bytes() < big.size());

  writer.async_close(rec.signal(close_r));
  BOOST_TEST(!writer.writable());
  BOOST_TEST(!writer.error());  // closing, not closed

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  run_all(ioc);

  BOOST_TEST(big_r.calls == 1);
  BOOST_TEST(!big_r.ec);
  BOOST_TEST(big_r.bytes == big.size());
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(!close_r.ec);
  BOOST_TEST(close_r.order > big_r.order);
  BOOST_TEST(received.size() == big.size());
  BOOST_TEST((received == big));
  BOOST_TEST(read_ec == net::error::eof);  // every byte, then end of file
  BOOST_TEST(writer.error() == net::error::shut_down);
}

BOOST_AUTO_TEST_CASE(every_request_after_async_close_fails_with_shut_down_at_once_not_inline) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(4 * 1024 * 1024, 'b');
  result big_r, close_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  drain_ready(ioc);
  writer.async_close(rec.signal(close_r));

  const std::string late = "late bytes";
  result write_r, send_r, urgent_r, urgent_send_r, flush_r, wait_r;
  result op_r, urgent_op_r;
  int ops_launched = 0;
  auto op = [&](auto handler) {
    ++ops_launched;
    std::move(handler)(error_code());
  };
  writer.async_write(net::buffer(late), rec.write(write_r));
  writer.async_send(std::string("late send"), rec.write(send_r));
  writer.async_write(serq::urgent, net::buffer(late), rec.write(urgent_r));
  writer.async_send(serq::urgent, std::string("late urgent send"), rec.write(urgent_send_r));
  writer.async_flush(rec.signal(flush_r));
  writer.async_wait_writable(rec.signal(wait_r));
  writer.async_enqueue<void(error_code)>(op, rec.signal(op_r));
  writer.async_enqueue<void(error_code)>(serq::urgent, op, rec.signal(urgent_op_r));
  BOOST_TEST(rec.now() == 0);  // nothing completed inside a call

  drain_ready(ioc);
  for (result* r :
       {&write_r, &send_r, &urgent_r, &urgent_send_r, &flush_r, &wait_r, &op_r, &urgent_op_r}) {
    BOOST_TEST(r->calls == 1);
    BOOST_TEST(r->ec == net::error::shut_down);
    BOOST_TEST(r->bytes == 0u);
  }
  BOOST_TEST(ops_launched == 0);
  BOOST_TEST(big_r.calls == 0);  // still being written

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  run_all(ioc);
  BOOST_TEST(!close_r.ec);
  BOOST_TEST((received == big));  // none of the refused bytes
  BOOST_TEST(read_ec == net::error::eof);
}

BOOST_AUTO_TEST_CASE(a_waiter_waiting_when_async_close_is_called_gets_shut_down_with_the_close) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;
  writer.set_watermarks(0, 4);

  // Not writable: 8 bytes pending above a high watermark of 4.
  const std::string msg = "8 bytes!";
  result msg_r, wait_r, close_r;
  writer.async_write(net::buffer(msg), rec.write(msg_r));
  BOOST_REQUIRE(!writer.writable());
  writer.async_wait_writable(rec.signal(wait_r));
  writer.async_close(rec.signal(close_r));
  BOOST_TEST(rec.now() == 0);  // nothing completed inside a call

  // writable() never becomes true again: the waiter is not released when
  // the message drains below the low watermark before the close runs; it
  // gets shut_down when the close completes.
  run_all(ioc);
  BOOST_TEST(!writer.writable());
  BOOST_TEST(wait_r.calls == 1);
  BOOST_TEST(wait_r.ec == net::error::shut_down);
  BOOST_TEST(wait_r.order > msg_r.order);
  BOOST_TEST(!msg_r.ec);
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(!close_r.ec);
  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  run_all(ioc);
  BOOST_TEST((received == msg));
}

// The same waiter, when the close is cancelled before it starts: the
// writer stays open, writable() is true again, and the waiter completes as
// usual.
BOOST_AUTO_TEST_CASE(a_waiter_kept_by_a_close_cancelled_before_it_starts_completes_as_usual) {
  net::io_context ioc;
  serq_test::test_stream a(ioc), b(ioc);
  a.connect(b);
  a.write_size(3);
  serq::queued_writer<serq_test::test_stream&> writer(a);
  writer.set_watermarks(4, 8);
  recorder rec;

  const std::string msg = pattern(10, 'm');
  result msg_r, wait_r, close_r;
  int close_runs = 0;
  net::cancellation_signal cancel_close;
  writer.async_write(net::buffer(msg), rec.write(msg_r));
  BOOST_REQUIRE(!writer.writable());
  writer.async_wait_writable(rec.signal(wait_r));
  writer.async_close(serq_test::close_test_stream{&a, &close_runs},
                     net::bind_cancellation_slot(cancel_close.slot(), rec.signal(close_r)));
  // Written three bytes at a time: at 4 pending the low watermark is
  // reached, with the message (and so the close) not done.
  while (writer.pending_bytes() > 4)
    BOOST_REQUIRE(ioc.run_one() != 0);
  BOOST_TEST(msg_r.calls == 0);
  BOOST_TEST(!writer.writable());  // closing
  BOOST_TEST(wait_r.calls == 0);

  cancel_close.emit(net::cancellation_type::total);
  BOOST_TEST(writer.writable());  // the close was taken back
  run_all(ioc);
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(close_r.ec == net::error::operation_aborted);
  BOOST_TEST(close_runs == 0);
  BOOST_TEST(wait_r.calls == 1);
  BOOST_TEST(!wait_r.ec);
  BOOST_TEST(!msg_r.ec);
  BOOST_TEST(b.str() == msg);
  BOOST_TEST(!writer.error());
}

// The closing operation throws from its launch: the close reports the
// exception's error, nothing leaves run(), and the writer is failed with it.
BOOST_AUTO_TEST_CASE(a_closing_operation_whose_launch_throws_fails_the_close_with_its_error) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<local_socket&> writer(a);
  int launches = 0;
  error_code write_r = net::error::would_block, close_r = net::error::would_block,
             later_r = net::error::would_block;
  writer.async_write(net::buffer("hi", 2), [&](error_code ec, std::size_t) { write_r = ec; });
  writer.async_close(net::async_initiate<const net::deferred_t&, void(error_code)>(
                         [&](auto&&) {
                           ++launches;
                           throw std::bad_alloc();
                         },
                         net::deferred),
                     [&](error_code ec) { close_r = ec; });
  BOOST_CHECK_NO_THROW(ioc.run());
  BOOST_TEST(launches == 1);
  BOOST_TEST(!write_r);
  BOOST_TEST(close_r == net::error::no_memory);
  BOOST_TEST(writer.error() == net::error::no_memory);
  writer.async_write(net::buffer("x", 1), [&](error_code ec, std::size_t) { later_r = ec; });
  ioc.restart();
  ioc.run();
  BOOST_TEST(later_r == net::error::no_memory);
}

// A socket's close completes inside its launch, and its handler runs there:
// the handler's exception leaves run() as any handler's does, and the close
// stands.
BOOST_AUTO_TEST_CASE(an_exception_from_the_close_s_handler_leaves_run_and_the_close_stands) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<local_socket&> writer(a);
  struct handler_failure {};
  int close_calls = 0;
  error_code later_r = net::error::would_block;
  writer.async_write(net::buffer("hi", 2), [](error_code ec, std::size_t) { BOOST_TEST(!ec); });
  writer.async_close([&](error_code ec) {
    BOOST_TEST(!ec);
    ++close_calls;
    throw handler_failure();
  });
  BOOST_CHECK_THROW(ioc.run(), handler_failure);
  ioc.restart();
  ioc.run();
  BOOST_TEST(close_calls == 1);
  BOOST_TEST(writer.error() == net::error::shut_down);
  writer.async_write(net::buffer("x", 1), [&](error_code ec, std::size_t) { later_r = ec; });
  ioc.restart();
  ioc.run();
  BOOST_TEST(later_r == net::error::shut_down);
  std::array<char, 8> buf{};
  error_code ec;
  BOOST_TEST(b.read_some(net::buffer(buf), ec) == 2u);
  b.read_some(net::buffer(buf), ec);
  BOOST_TEST(ec == net::error::eof);  // shut down once
}

BOOST_AUTO_TEST_CASE(a_write_error_before_the_close_fails_the_close_with_that_error) {
  net::io_context ioc;
  serq_test::fail_count fc(3);
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  a.write_size(4);
  serq::queued_writer<serq_test::test_stream&> writer(a);
  recorder rec;

  const std::string m1 = pattern(10, 'x'), m2 = pattern(10, 'y');
  result r1, r2, close_r;
  int close_runs = 0;
  writer.async_write(net::buffer(m1), rec.write(r1));
  writer.async_write(net::buffer(m2), rec.write(r2));
  writer.async_close(serq_test::close_test_stream{&a, &close_runs}, rec.signal(close_r));
  run_all(ioc);

  BOOST_TEST(r1.ec == serq_test::test_error::test_failure);
  BOOST_TEST(r1.bytes == 8u);  // two writes of 4, then the failure
  BOOST_TEST(r2.ec == serq_test::test_error::test_failure);
  BOOST_TEST(r2.bytes == 0u);
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(close_r.ec == serq_test::test_error::test_failure);
  BOOST_TEST(close_runs == 0);  // the closing operation never ran
  BOOST_TEST(writer.error() == serq_test::test_error::test_failure);
  BOOST_TEST(b.str() == m1.substr(0, 8));

  // A close after that completes with the sticky error too.
  result again;
  writer.async_close(serq_test::close_test_stream{&a, &close_runs}, rec.signal(again));
  drain_ready(ioc);
  BOOST_TEST(again.ec == serq_test::test_error::test_failure);
  BOOST_TEST(close_runs == 0);
}

BOOST_AUTO_TEST_CASE(cancelling_a_queued_close_keeps_the_writer_open) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(4 * 1024 * 1024, 'b');
  result big_r, close_r, joined_r, refused_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  drain_ready(ioc);

  net::cancellation_signal cancel;
  writer.async_close(net::bind_cancellation_slot(cancel.slot(), rec.signal(close_r)));
  writer.async_close(rec.signal(joined_r));  // joins the first
  writer.async_send(std::string("refused"), rec.write(refused_r));
  cancel.emit(net::cancellation_type::total);
  BOOST_TEST(close_r.calls == 0);  // posted, not inside emit
  drain_ready(ioc);

  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(close_r.ec == net::error::operation_aborted);
  BOOST_TEST(joined_r.ec == net::error::operation_aborted);
  BOOST_TEST(refused_r.ec == net::error::shut_down);
  BOOST_TEST(!writer.error());

  // Open again: new messages are written, and the socket was not shut down.
  const std::string after = "after the cancelled close";
  result after_r;
  writer.async_write(net::buffer(after), rec.write(after_r));
  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  BOOST_REQUIRE(run_until(ioc, [&] { return after_r.calls == 1; }));
  BOOST_TEST(!after_r.ec);
  BOOST_TEST(!big_r.ec);
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == big.size() + after.size(); }));
  BOOST_TEST((received == big + after));
  BOOST_TEST(!read_ec);  // no end of file
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(a_second_close_completes_with_the_first_closes_result) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string msg = pattern(1000, 'm');
  result msg_r, first, second, third;
  writer.async_write(net::buffer(msg), rec.write(msg_r));
  writer.async_close(rec.signal(first));
  writer.async_close(rec.signal(second));
  run_all(ioc);

  BOOST_TEST(!first.ec);
  BOOST_TEST(!second.ec);
  BOOST_TEST(second.order > first.order);
  BOOST_TEST(writer.error() == net::error::shut_down);

  // After the close: at once (never inside the call), with the same result,
  // not with the error that now refuses writes.
  writer.async_close(rec.signal(third));
  BOOST_TEST(third.calls == 0);
  drain_ready(ioc);
  BOOST_TEST(third.calls == 1);
  BOOST_TEST(!third.ec);
  bool eof = false;
  BOOST_TEST(read_available(sp.b, &eof) == msg);
  BOOST_TEST(eof);
}

BOOST_AUTO_TEST_CASE(close_on_a_failed_writer_completes_at_once_with_its_error_not_inline) {
  net::io_context ioc;
  serq_test::fail_count fc(1);
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  serq::queued_writer<serq_test::test_stream&> writer(a);
  recorder rec;

  result w, close_r;
  writer.async_write(net::buffer("abc", 3), rec.write(w));
  run_all(ioc);
  BOOST_REQUIRE(writer.error() == serq_test::test_error::test_failure);

  int close_runs = 0;
  writer.async_close(serq_test::close_test_stream{&a, &close_runs}, rec.signal(close_r));
  BOOST_TEST(close_r.calls == 0);
  drain_ready(ioc);
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(close_r.ec == serq_test::test_error::test_failure);
  BOOST_TEST(close_runs == 0);

  // A moved-from writer has no stream: bad_descriptor.
  serq::queued_writer<serq_test::test_stream&> other(std::move(writer));
  result moved_r;
  writer.async_close(serq_test::close_test_stream{&a, &close_runs}, rec.signal(moved_r));
  BOOST_TEST(moved_r.calls == 0);
  drain_ready(ioc);
  BOOST_TEST(moved_r.ec == net::error::bad_descriptor);
}

BOOST_AUTO_TEST_CASE(reads_keep_working_after_the_close_until_the_peer_closes) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  result close_r;
  writer.async_send(std::string("bye"), [](error_code, std::size_t) {});
  writer.async_close(rec.signal(close_r));
  run_all(ioc);
  BOOST_REQUIRE(!close_r.ec);

  net::write(sp.b, net::buffer("pong", 4));
  sp.b.shutdown(net::socket_base::shutdown_send);
  std::string got;
  error_code read_ec;
  read_all(writer, got, read_ec);
  run_all(ioc);
  BOOST_TEST(got == "pong");
  BOOST_TEST(read_ec == net::error::eof);
}

BOOST_AUTO_TEST_CASE(close_with_a_closing_operation_runs_it_after_the_queued_writes) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string m1 = pattern(300, 'a'), m2 = pattern(200, 'b');
  const std::string bye = "BYE", never = "NEVER";
  result r1, r2, close_r, second_r;
  writer.async_write(net::buffer(m1), rec.write(r1));
  writer.async_write(net::buffer(m2), rec.write(r2));
  writer.async_close(net::async_write(writer.next_layer(), net::buffer(bye), net::deferred),
                     rec.signal(close_r));
  // Joins the first: its own operation never runs.
  writer.async_close(net::async_write(writer.next_layer(), net::buffer(never), net::deferred),
                     rec.signal(second_r));
  run_all(ioc);

  BOOST_TEST(!close_r.ec);
  BOOST_TEST(close_r.order > r2.order);
  BOOST_TEST(!second_r.ec);
  BOOST_TEST(writer.error() == net::error::shut_down);
  bool eof = false;
  BOOST_TEST(read_available(sp.b, &eof) == m1 + m2 + bye);
  BOOST_TEST(!eof);  // the operation given decides how the stream closes
}

// A closing operation that finishes only when cancelled, with
// operation_aborted; it records that it was launched and the signal it got.
// With inline_completion its cancellation handler completes it through
// net::dispatch: inside the emit when that runs on the io_context's thread.
struct close_until_cancelled {
  net::io_context* ioc;
  bool* launched;
  net::cancellation_type_t* seen;
  bool inline_completion = false;

  template <class Token>
  auto operator()(Token&& token) && {
    return net::async_initiate<Token, void(error_code)>(
        [](auto handler, net::io_context* ioc, bool* launched, net::cancellation_type_t* seen,
           bool inline_completion) {
          *launched = true;
          auto slot = net::get_associated_cancellation_slot(handler);
          BOOST_TEST_REQUIRE(slot.is_connected());
          using handler_type = decltype(handler);
          auto held = std::make_shared<std::optional<handler_type>>(std::move(handler));
          slot.assign([held, ioc, seen, inline_completion](net::cancellation_type_t t) {
            *seen = t;
            auto complete = [held] {
              if (*held) {
                handler_type h = std::move(**held);
                held->reset();
                std::move(h)(error_code(net::error::operation_aborted));
              }
            };
            if (inline_completion)
              net::dispatch(*ioc, complete);
            else
              net::post(*ioc, complete);
          });
        },
        token, ioc, launched, seen, inline_completion);
  }
};

// A writer on a test_stream and an async_close of close_until_cancelled
// whose handler is bound to `signal`.
struct cancellable_close {
  net::io_context ioc;
  serq_test::test_stream peer{ioc};
  serq::queued_writer<serq_test::test_stream> writer{ioc};
  net::cancellation_signal signal;
  bool launched = false;
  net::cancellation_type_t seen = net::cancellation_type::none;
  error_code ec = net::error::would_block;

  cancellable_close() { writer.next_layer().connect(peer); }

  void close(bool inline_completion) {
    writer.async_close(
        close_until_cancelled{&ioc, &launched, &seen, inline_completion},
        net::bind_cancellation_slot(signal.slot(), [this](error_code e) { ec = e; }));
  }
  // Not run(): without the signal the close would never finish.
  template <class Pred>
  void poll_until(Pred done) {
    for (int i = 0; i < 100 && !done(); ++i) {
      ioc.restart();
      ioc.poll();
    }
  }
  void poll_until_closed() {
    poll_until([&] { return ec != net::error::would_block; });
  }
};

BOOST_AUTO_TEST_CASE(a_close_cancelled_after_it_is_due_but_before_it_starts_gets_the_signal) {
  // Also with a closing operation that completes inside that signal (the
  // writer passes it on under its lock: it must not deadlock).
  for (const bool inline_completion : {false, true}) {
    BOOST_TEST_CONTEXT("inline_completion=" << inline_completion) {
      cancellable_close t;
      // A handler that runs once the close is due (every write before it is
      // done) and before its operation starts (what finished before the close
      // completes first) cancels the close: the signal must reach the operation.
      // An operation first: the writes after it wait for it, so the pump that
      // goes on behind it finds an empty message at the head, done at once, and
      // then the close: due now, launched once the empty message's handler has
      // run, and that handler cancels the close.
      t.writer.async_enqueue<void(error_code)>(
          [&](auto handler) {
            net::post(t.ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
          },
          [](error_code ec) { BOOST_TEST(!ec); });
      t.writer.async_write(net::const_buffer(), [&](error_code ec, std::size_t n) {
        BOOST_TEST(!ec);
        BOOST_TEST(n == 0u);
        BOOST_TEST(!t.launched);
        t.signal.emit(net::cancellation_type::terminal);
      });
      t.close(inline_completion);
      t.poll_until_closed();
      BOOST_TEST(t.launched);
      BOOST_TEST((t.seen == net::cancellation_type::terminal));
      BOOST_TEST(t.ec == net::error::operation_aborted);
      BOOST_TEST(t.peer.str().empty());
    }
  }
}

// A closing operation may complete inside its cancellation handler, which
// the writer runs under its lock: the completion must wait until the lock is
// let go of, not deadlock. Here cancelled while it runs; before it started
// (passed on at its launch) in the test above.
BOOST_AUTO_TEST_CASE(a_close_completing_inside_its_cancellation_handler_does_not_deadlock) {
  cancellable_close t;
  t.close(true);
  t.poll_until([&] { return t.launched; });
  BOOST_TEST_REQUIRE(t.launched);
  t.ioc.restart();
  net::post(t.ioc, [&] { t.signal.emit(net::cancellation_type::terminal); });
  t.poll_until_closed();
  BOOST_TEST((t.seen == net::cancellation_type::terminal));
  BOOST_TEST(t.ec == net::error::operation_aborted);
}

BOOST_AUTO_TEST_CASE(tls_close_sends_every_byte_then_a_clean_shutdown) {
  serq_test::tls_contexts tls;
  net::io_context ioc;
  auto c =
      serq_test::tls_connection<serq::queued_writer<serq_test::tls_tcp_stream>>::connect(ioc, tls);
  auto& writer = *c.writer;
  auto& server = c.server;

  // More than the socket buffers hold, so the close is queued behind writes
  // in flight.
  std::string expected;
  std::vector<std::string> messages;
  for (int i = 0; i < 40; ++i)
    messages.push_back(
        pattern(32 * 1024 + static_cast<std::size_t>(i), static_cast<char>('a' + i % 26)));
  recorder rec;
  std::vector<result> results(messages.size());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    writer.async_write(net::buffer(messages[i]), rec.write(results[i]));
    expected += messages[i];
  }
  result close_r;
  writer.async_close(rec.signal(close_r));

  // The peer reads to the end; then answers the close_notify with its own.
  std::string received;
  error_code read_ec;
  error_code server_shutdown = net::error::fault;
  std::function<void()> read_more;
  auto buf = std::make_shared<std::array<char, 16384>>();
  read_more = [&] {
    server.async_read_some(net::buffer(*buf), [&](error_code ec, std::size_t n) {
      received.append(buf->data(), n);
      if (!ec) {
        read_more();
        return;
      }
      read_ec = ec;
      server.async_shutdown([&](error_code sec) { server_shutdown = sec; });
    });
  };
  read_more();
  run_all(ioc);

  for (const result& r : results) {
    BOOST_TEST(r.calls == 1);
    BOOST_TEST(!r.ec);
  }
  BOOST_TEST(close_r.calls == 1);
  BOOST_TEST(!close_r.ec);
  BOOST_TEST(close_r.order > results.back().order);
  BOOST_TEST(received.size() == expected.size());
  BOOST_TEST((received == expected));
  // A clean TLS shutdown: close_notify, which Asio reports as eof; not a
  // truncated stream.
  BOOST_TEST(read_ec == net::error::eof);
  BOOST_TEST(read_ec != net::ssl::error::stream_truncated);
  BOOST_TEST(!server_shutdown);
  BOOST_TEST(writer.error() == net::error::shut_down);
}

// ---- the urgent lane ---------------------------------------------------------

BOOST_AUTO_TEST_CASE(an_urgent_message_is_next_on_the_wire_after_the_message_in_flight) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(1024 * 1024, 'B');
  result big_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  std::vector<std::string> normal;
  for (int i = 0; i < 1000; ++i)
    normal.push_back("normal " + std::to_string(i) + ";");
  std::vector<result> normal_r(normal.size());
  for (std::size_t i = 0; i < normal.size(); ++i)
    writer.async_write(net::buffer(normal[i]), rec.write(normal_r[i]));
  drain_ready(ioc);
  BOOST_REQUIRE(writer.pending_bytes() > 0u);
  BOOST_REQUIRE(big_r.calls == 0);  // the 1 MiB message is in flight

  const std::string urgent_msg = "URGENT!";
  result urgent_r;
  writer.async_write(serq::urgent, net::buffer(urgent_msg), rec.write(urgent_r));

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  std::string expected = big + urgent_msg;
  for (const auto& m : normal)
    expected += m;
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == expected.size(); }));

  BOOST_TEST((received == expected));  // byte-exact: big, the urgent one, then the rest
  BOOST_TEST(!urgent_r.ec);
  BOOST_TEST(urgent_r.bytes == urgent_msg.size());
  BOOST_TEST(urgent_r.order > big_r.order);
  BOOST_TEST(urgent_r.order < normal_r.front().order);
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(urgent_items_run_in_order_ahead_of_waiting_writes_and_composed_operations) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(1024 * 1024, 'B');
  const std::string x = "<normal op>", n = "<normal write>";
  const std::string u1 = "<urgent 1>", o = "<urgent op>", u2 = "<urgent send>";
  result big_r, x_r, n_r, u1_r, o_r, u2_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(x), net::deferred),
                       rec.write(x_r));
  writer.async_write(net::buffer(n), rec.write(n_r));
  drain_ready(ioc);
  BOOST_REQUIRE(big_r.calls == 0);

  writer.async_write(serq::urgent, net::buffer(u1), rec.write(u1_r));
  writer.async_enqueue(serq::urgent,
                       net::async_write(writer.next_layer(), net::buffer(o), net::deferred),
                       rec.write(o_r));
  writer.async_send(serq::urgent, std::string(u2), rec.write(u2_r));

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  const std::string expected = big + u1 + o + u2 + x + n;
  BOOST_REQUIRE(run_until(ioc, [&] { return n_r.calls == 1; }));
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == expected.size(); }));
  BOOST_TEST((received == expected));
  for (result* r : {&big_r, &x_r, &n_r, &u1_r, &o_r, &u2_r})
    BOOST_TEST(!r->ec);
  BOOST_TEST(big_r.order < u1_r.order);
  BOOST_TEST(u1_r.order < o_r.order);
  BOOST_TEST(o_r.order < u2_r.order);
  BOOST_TEST(u2_r.order < x_r.order);
  BOOST_TEST(x_r.order < n_r.order);
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(a_normal_operation_whose_turn_comes_runs_behind_waiting_urgent_items) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  // A composed operation holds the stream (its write cannot finish: the
  // peer does not read); another waits behind it. Then an urgent write.
  const std::string x = pattern(1024 * 1024, 'X'), y = "<second normal op>";
  const std::string u = "<urgent>";
  result x_r, y_r, u_r;
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(x), net::deferred),
                       rec.write(x_r));
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(y), net::deferred),
                       rec.write(y_r));
  drain_ready(ioc);
  BOOST_REQUIRE(x_r.calls == 0);
  writer.async_write(serq::urgent, net::buffer(u), rec.write(u_r));

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  const std::string expected = x + u + y;
  BOOST_REQUIRE(run_until(ioc, [&] { return y_r.calls == 1; }));
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == expected.size(); }));
  BOOST_TEST((received == expected));
  BOOST_TEST(!y_r.ec);
  BOOST_TEST(y_r.bytes == y.size());
  BOOST_TEST(u_r.order < y_r.order);
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(urgent_items_queued_after_a_deferred_operation_s_turn_run_after_it) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  // x holds the stream; y's turn comes while the urgent write u is queued,
  // so y runs in the urgent lane behind u. u is still being written (the
  // peer reads x only) when u2 and then the urgent operation o2 arrive:
  // y's turn has come, so they run after y, in the order they came.
  const std::string x = pattern(512 * 1024, 'X'), y = "<deferred op>";
  const std::string u = pattern(4 * 1024 * 1024, 'U');
  const std::string u2 = "<urgent write after>", o2 = "<urgent op after>";
  result x_r, y_r, u_r, u2_r, o2_r;
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(x), net::deferred),
                       rec.write(x_r));
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(y), net::deferred),
                       rec.write(y_r));
  drain_ready(ioc);
  writer.async_write(serq::urgent, net::buffer(u), rec.write(u_r));

  std::string got_x(x.size(), '\0');
  bool x_read = false;
  net::async_read(sp.b, net::buffer(got_x), [&](error_code, std::size_t) { x_read = true; });
  BOOST_REQUIRE(run_until(ioc, [&] { return x_read && x_r.calls == 1; }));
  drain_ready(ioc);
  BOOST_REQUIRE(u_r.calls == 0);  // u is in flight, y waits behind it
  BOOST_REQUIRE(y_r.calls == 0);

  writer.async_write(serq::urgent, net::buffer(u2), rec.write(u2_r));
  writer.async_enqueue(serq::urgent,
                       net::async_write(writer.next_layer(), net::buffer(o2), net::deferred),
                       rec.write(o2_r));
  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  const std::string expected = u + y + u2 + o2;
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == expected.size(); }));
  BOOST_REQUIRE(run_until(ioc, [&] { return y_r.calls == 1 && o2_r.calls == 1; }));
  BOOST_TEST((got_x == x));
  BOOST_TEST((received == expected));
  for (result* r : {&x_r, &y_r, &u_r, &u2_r, &o2_r})
    BOOST_TEST(!r->ec);
  // y's result is held until the urgent lane is quiet: it completes last.
  BOOST_TEST(u_r.order < u2_r.order);
  BOOST_TEST(u2_r.order < o2_r.order);
  BOOST_TEST(o2_r.order < y_r.order);
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(cancelling_a_normal_operation_held_behind_urgent_items_aborts_it_unlaunched) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string x = pattern(512 * 1024, 'X'), y = "<never written>";
  const std::string u = pattern(4 * 1024 * 1024, 'U');
  result x_r, y_r, u_r;
  net::cancellation_signal cancel_y;
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(x), net::deferred),
                       rec.write(x_r));
  writer.async_enqueue(net::async_write(writer.next_layer(), net::buffer(y), net::deferred),
                       net::bind_cancellation_slot(cancel_y.slot(), rec.write(y_r)));
  drain_ready(ioc);
  writer.async_write(serq::urgent, net::buffer(u), rec.write(u_r));

  // The peer reads exactly x: x completes, y's turn comes, and it waits
  // behind the urgent write, which the peer does not read (yet).
  std::string got_x(x.size(), '\0');
  bool x_read = false;
  net::async_read(sp.b, net::buffer(got_x), [&](error_code, std::size_t) { x_read = true; });
  BOOST_REQUIRE(run_until(ioc, [&] { return x_read && x_r.calls == 1; }));
  drain_ready(ioc);
  BOOST_REQUIRE(u_r.calls == 0);
  BOOST_REQUIRE(y_r.calls == 0);

  cancel_y.emit(net::cancellation_type::total);
  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  BOOST_REQUIRE(run_until(ioc, [&] { return y_r.calls == 1 && u_r.calls == 1; }));
  BOOST_TEST((got_x == x));
  BOOST_TEST(y_r.ec == net::error::operation_aborted);
  BOOST_TEST(y_r.bytes == 0u);
  BOOST_TEST(!u_r.ec);
  drain_ready(ioc);
  BOOST_TEST((received == u));  // y never reached the stream
  BOOST_TEST(!writer.error());
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(urgent_messages_count_in_pending_bytes_and_watermarks_without_waiting) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  writer.set_watermarks(1024, 4096);
  recorder rec;

  const std::string big = pattern(1024 * 1024, 'B');
  result big_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  drain_ready(ioc);
  BOOST_REQUIRE(!writer.writable());
  const std::size_t pending = writer.pending_bytes();
  const std::size_t count = writer.size();

  const std::string u = pattern(3000, 'u');
  result u_r, waiter;
  writer.async_write(serq::urgent, net::buffer(u), rec.write(u_r));  // no wait, above high
  BOOST_TEST(writer.pending_bytes() == pending + u.size());
  BOOST_TEST(writer.size() == count + 1);
  writer.async_wait_writable(rec.signal(waiter));

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  BOOST_REQUIRE(run_until(ioc, [&] { return u_r.calls == 1 && waiter.calls == 1; }));
  BOOST_TEST(!u_r.ec);
  BOOST_TEST(!waiter.ec);
  BOOST_TEST(writer.pending_bytes() == 0u);
  BOOST_TEST(writer.writable());
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(cancelling_a_queued_urgent_write_removes_it_whole) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  recorder rec;

  const std::string big = pattern(1024 * 1024, 'B');
  const std::string u1 = "<cancelled>", u2 = "<kept>";
  result big_r, u1_r, u2_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  drain_ready(ioc);
  net::cancellation_signal cancel;
  writer.async_write(serq::urgent, net::buffer(u1),
                     net::bind_cancellation_slot(cancel.slot(), rec.write(u1_r)));
  writer.async_write(serq::urgent, net::buffer(u2), rec.write(u2_r));
  const std::size_t pending = writer.pending_bytes();
  cancel.emit(net::cancellation_type::partial);
  BOOST_TEST(writer.pending_bytes() == pending - u1.size());

  std::string received;
  error_code read_ec;
  read_all(sp.b, received, read_ec);
  BOOST_REQUIRE(run_until(ioc, [&] { return received.size() == big.size() + u2.size(); }));
  BOOST_TEST((received == big + u2));
  BOOST_TEST(u1_r.ec == net::error::operation_aborted);
  BOOST_TEST(u1_r.bytes == 0u);
  BOOST_TEST(!u2_r.ec);
  sp.b.close();
  run_all(ioc);
}

BOOST_AUTO_TEST_CASE(urgent_requests_on_a_failed_writer_complete_at_once_not_inline) {
  net::io_context ioc;
  serq_test::fail_count fc(1);
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  serq::queued_writer<serq_test::test_stream&> writer(a);
  recorder rec;

  result w;
  writer.async_write(net::buffer("abc", 3), rec.write(w));
  run_all(ioc);
  BOOST_REQUIRE(writer.error() == serq_test::test_error::test_failure);

  result u_r, us_r, uo_r;
  int launched = 0;
  writer.async_write(serq::urgent, net::buffer("u", 1), rec.write(u_r));
  writer.async_send(serq::urgent, std::string("us"), rec.write(us_r));
  writer.async_enqueue<void(error_code, std::size_t)>(
      serq::urgent,
      [&](auto handler) {
        ++launched;
        std::move(handler)(error_code(), std::size_t(0));
      },
      rec.write(uo_r));
  BOOST_TEST(rec.now() == w.order);  // nothing new inside the calls
  drain_ready(ioc);
  for (result* r : {&u_r, &us_r, &uo_r}) {
    BOOST_TEST(r->calls == 1);
    BOOST_TEST(r->ec == serq_test::test_error::test_failure);
    BOOST_TEST(r->bytes == 0u);
  }
  BOOST_TEST(launched == 0);
}

// ---- the stall deadline ------------------------------------------------------

BOOST_AUTO_TEST_CASE(the_stall_deadline_fails_a_writer_whose_peer_stopped_reading) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  writer.set_stall_timeout(milliseconds(20));
  recorder rec;

  const std::string big = pattern(8 * 1024 * 1024, 'B');
  std::vector<std::string> small = {"one", "two", "three"};
  result big_r;
  std::vector<result> small_r(small.size());
  const auto start = steady_clock::now();
  writer.async_write(net::buffer(big), rec.write(big_r));
  for (std::size_t i = 0; i < small.size(); ++i)
    writer.async_write(net::buffer(small[i]), rec.write(small_r[i]));

  // No sleeps: the io_context runs the writer and its timer, one handler at
  // a time, until every write has completed.
  BOOST_REQUIRE(run_until(ioc, [&] { return big_r.calls == 1; }));
  const auto elapsed = steady_clock::now() - start;

  BOOST_TEST((elapsed >= milliseconds(20)));
  BOOST_TEST(writer.error() == net::error::timed_out);
  // The queued ones fail at once, in order; the one in flight when its
  // cancelled write_some returns, with the bytes it wrote.
  for (std::size_t i = 0; i < small.size(); ++i) {
    BOOST_TEST(small_r[i].calls == 1);
    BOOST_TEST(small_r[i].ec == net::error::timed_out);
    BOOST_TEST(small_r[i].bytes == 0u);
    if (i > 0)
      BOOST_TEST(small_r[i].order > small_r[i - 1].order);
  }
  BOOST_TEST(big_r.order > small_r.back().order);
  BOOST_TEST(big_r.ec == net::error::timed_out);
  BOOST_TEST(big_r.bytes > 0u);
  BOOST_TEST(big_r.bytes < big.size());
  BOOST_TEST((read_available(sp.b) == big.substr(0, big_r.bytes)));

  // Sticky: later writes fail fast, never inside the call.
  result late;
  writer.async_write(net::buffer("late", 4), rec.write(late));
  BOOST_TEST(late.calls == 0);
  drain_ready(ioc);
  BOOST_TEST(late.ec == net::error::timed_out);
}

BOOST_AUTO_TEST_CASE(the_stall_deadline_never_fires_while_the_peer_reads_slowly_but_steadily) {
  net::io_context ioc;
  socket_pair sp(ioc);
  // Small socket buffers: the writer waits for the peer at every step.
  sp.a.set_option(net::socket_base::send_buffer_size(8 * 1024));
  sp.b.set_option(net::socket_base::receive_buffer_size(8 * 1024));
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  // Each read waits interval, 48 reads at least (8 KiB chunks): the run lasts
  // more than 2 timeouts, and a stall as long as one timeout would need the
  // process to stop for 20 intervals (a loaded machine stops it for a few).
  constexpr milliseconds timeout(1000), interval(50);
  writer.set_stall_timeout(timeout);
  recorder rec;

  std::vector<std::string> messages;
  std::string expected;
  for (int i = 0; i < 8; ++i) {
    messages.push_back(pattern(48 * 1024, static_cast<char>('a' + i)));
    expected += messages.back();
  }
  std::vector<result> results(messages.size());
  const auto start = steady_clock::now();
  for (std::size_t i = 0; i < messages.size(); ++i)
    writer.async_write(net::buffer(messages[i]), rec.write(results[i]));

  // The peer reads one chunk every interval (well inside the timeout), until
  // it has everything: the writer is stalled most of the time, but never
  // for a whole timeout.
  std::string received;
  std::array<char, 8 * 1024> chunk;
  net::steady_timer pace(ioc);
  std::function<void()> read_one;
  read_one = [&] {
    pace.expires_after(interval);
    pace.async_wait([&](error_code) {
      sp.b.async_read_some(net::buffer(chunk), [&](error_code ec, std::size_t n) {
        received.append(chunk.data(), n);
        if (!ec && received.size() < expected.size())
          read_one();
      });
    });
  };
  read_one();
  run_all(ioc);  // returns: the stall timer is not left armed once all is written
  const auto elapsed = steady_clock::now() - start;

  BOOST_TEST(!writer.error());
  for (const result& r : results) {
    BOOST_TEST(r.calls == 1);
    BOOST_TEST(!r.ec);
  }
  BOOST_TEST((received == expected));
  // The writer waited much longer than one timeout in all: the clock was
  // restarted by progress, again and again.
  BOOST_TEST((elapsed > 2 * timeout));
}

BOOST_AUTO_TEST_CASE(a_zero_or_negative_stall_timeout_turns_the_deadline_off) {
  for (const milliseconds off : {milliseconds(0), milliseconds(-5)}) {
    net::io_context ioc;
    socket_pair sp(ioc);
    serq::queued_writer<local_socket> writer(std::move(sp.a));
    writer.set_stall_timeout(milliseconds(10));
    writer.set_stall_timeout(off);

    const std::string big = pattern(4 * 1024 * 1024, 'B');
    result big_r;
    recorder rec;
    writer.async_write(net::buffer(big), rec.write(big_r));
    // Wait, through the io_context, five times the timeout once set.
    net::steady_timer later(ioc, milliseconds(50));
    bool waited = false;
    later.async_wait([&](error_code) { waited = true; });
    BOOST_REQUIRE(run_until(ioc, [&] { return waited; }));
    BOOST_TEST(!writer.error());
    BOOST_TEST(big_r.calls == 0);  // still waiting for the peer, not failed
  }
}

BOOST_AUTO_TEST_CASE(the_stall_timer_is_armed_only_while_bytes_are_pending) {
  net::io_context ioc;
  socket_pair sp(ioc);
  serq::queued_writer<local_socket> writer(std::move(sp.a));
  writer.set_stall_timeout(std::chrono::seconds(30));
  recorder rec;
  result r;
  const auto start = steady_clock::now();
  writer.async_write(net::buffer("hello", 5), rec.write(r));
  run_all(ioc);  // would wait 30 s if the timer stayed armed
  BOOST_TEST((steady_clock::now() - start < std::chrono::seconds(10)));
  BOOST_TEST(!r.ec);
  BOOST_TEST(!writer.error());

  // And it is armed again for the next write that waits.
  writer.set_stall_timeout(milliseconds(20));
  const std::string big = pattern(8 * 1024 * 1024, 'B');
  result big_r;
  writer.async_write(net::buffer(big), rec.write(big_r));
  BOOST_REQUIRE(run_until(ioc, [&] { return big_r.calls == 1; }));
  BOOST_TEST(big_r.ec == net::error::timed_out);
}

// ---- lifetimes ---------------------------------------------------------------

namespace {

// A writer in every new state at once: a message half written (its write
// in flight, the stall timer armed), a normal composed operation held in the
// urgent queue behind an urgent write in flight... or, with `held` false, a
// normal composed operation and urgent items waiting, a lender queued, and a
// close and a follower queued.
struct busy_writer {
  explicit busy_writer(net::io_context& ioc, bool held) : sp(ioc), writer(std::move(sp.a)) {
    writer->set_stall_timeout(std::chrono::seconds(30));
    if (held) {
      writer->async_enqueue(net::async_write(writer->next_layer(), net::buffer(x), net::deferred),
                            rec.write(r[0]));
      writer->async_enqueue(net::async_write(writer->next_layer(), net::buffer(y), net::deferred),
                            rec.write(r[1]));
      drain_ready(ioc);
      writer->async_write(serq::urgent, net::buffer(big), rec.write(r[2]));
      // The peer reads exactly x: y's turn comes, behind the urgent write.
      net::async_read(sp.b, net::buffer(got_x), [this](error_code, std::size_t) { x_read = true; });
      BOOST_REQUIRE(run_until(ioc, [&] { return x_read && r[0].calls == 1; }));
      drain_ready(ioc);
      BOOST_REQUIRE(r[1].calls == 0);
      BOOST_REQUIRE(r[2].calls == 0);
      count = 3;
    } else {
      writer->async_write(net::buffer(big), rec.write(r[0]));
      drain_ready(ioc);
      writer->async_enqueue(net::async_write(writer->next_layer(), net::buffer(y), net::deferred),
                            rec.write(r[1]));
      writer->async_write(serq::urgent, net::buffer(y), rec.write(r[2]));
      writer->async_enqueue(serq::urgent,
                            net::async_write(writer->next_layer(), net::buffer(y), net::deferred),
                            rec.write(r[3]));
      writer->async_close(rec.signal(r[4]));
      writer->async_close(rec.signal(r[5]));
      drain_ready(ioc);
      for (int i = 0; i < 6; ++i)
        BOOST_REQUIRE(r[i].calls == 0);
      count = 6;
    }
  }

  std::string big = pattern(4 * 1024 * 1024, 'B');
  std::string x = pattern(512 * 1024, 'X');
  std::string y = "<y>";
  std::string got_x = std::string(512 * 1024, '\0');
  bool x_read = false;
  socket_pair sp;
  std::optional<serq::queued_writer<local_socket>> writer;
  recorder rec;
  std::array<result, 6> r;
  int count = 0;
};

}  // namespace

BOOST_AUTO_TEST_CASE(destroying_the_writer_mid_close_lend_and_stall_wait_completes_all_once) {
  for (const bool held : {false, true}) {
    BOOST_TEST_CONTEXT("held=" << held) {
      net::io_context ioc;
      busy_writer w(ioc, held);
      const auto start = steady_clock::now();
      w.writer.reset();
      run_all(ioc);  // returns: nothing of the writer waits, its timer included
      BOOST_TEST((steady_clock::now() - start < std::chrono::seconds(10)));
      for (int i = 0; i < w.count; ++i) {
        BOOST_TEST_CONTEXT("request " << i) {
          BOOST_TEST(w.r[i].calls == 1);
          if (!held || i > 0)  // held: the first one completed before
            BOOST_TEST(w.r[i].ec);
        }
      }
      // Nothing started after the message in flight: the queued ones were
      // aborted, never launched.
      for (int i = 1; i < w.count; ++i) {
        if (!held || i == 1)
          BOOST_TEST(w.r[i].ec == net::error::operation_aborted);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(destroying_the_context_after_the_writer_releases_every_handler) {
  for (const bool held : {false, true}) {
    BOOST_TEST_CONTEXT("held=" << held) {
      auto token = std::make_shared<int>(0);
      std::weak_ptr<int> watch = token;
      int invoked = 0;
      {
        net::io_context ioc;
        busy_writer w(ioc, held);
        // One more of each, holding the token, never to be invoked.
        w.writer->async_write(serq::urgent, net::buffer(w.y),
                              [token, &invoked](error_code, std::size_t) { ++invoked; });
        if (!held)
          w.writer->async_close([token, &invoked](error_code) { ++invoked; });
        token.reset();
        w.writer.reset();  // the writer goes first, as Asio requires
      }                    // the context goes with every handler it holds
      BOOST_TEST(watch.expired());
      BOOST_TEST(invoked == 0);
    }
  }
}

// ---- failure sweep -------------------------------------------------------------

namespace {

struct sweep_item {
  std::string data;
  result r;
};

// One run of a script with urgent writes, an urgent composed operation and a
// close, partial writes of 5 bytes, and every write_some from fail_at on
// failing (0: none). Returns whether anything failed.
bool run_lifecycle_script(std::size_t fail_at) {
  net::io_context ioc;
  serq_test::fail_count fc(fail_at != 0 ? fail_at : static_cast<std::size_t>(-1));
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  a.write_size(5);
  serq::queued_writer<serq_test::test_stream&> writer(a);
  recorder rec;

  std::vector<sweep_item> items(8);
  items[0].data = pattern(23, 'a');
  items[1].data = "";
  items[2].data = pattern(40, 'c');
  items[3].data = pattern(11, 'U');  // urgent write
  items[4].data = pattern(17, 'd');
  items[5].data = pattern(9, 'V');   // urgent send
  items[6].data = pattern(13, 'O');  // urgent composed operation
  items[7].data = "late";            // after the close: refused
  result close_r, late_urgent_r;

  // While the first message is half written (its second write_some has
  // started), the urgent items, a normal one, the close and late requests
  // arrive; if the writer fails before that write, when the first message
  // has completed.
  error_code error_at_close;
  int close_runs = 0;
  auto add_rest = [&] {
    writer.async_write(serq::urgent, net::buffer(items[3].data), rec.write(items[3].r));
    writer.async_write(net::buffer(items[4].data), rec.write(items[4].r));
    writer.async_send(serq::urgent, items[5].data, rec.write(items[5].r));
    writer.async_enqueue(
        serq::urgent,
        net::async_write(writer.next_layer(), net::buffer(items[6].data), net::deferred),
        rec.write(items[6].r));
    error_at_close = writer.error();
    writer.async_close(serq_test::close_test_stream{&a, &close_runs}, rec.signal(close_r));
    writer.async_write(net::buffer(items[7].data), rec.write(items[7].r));
    writer.async_write(serq::urgent, net::buffer(items[7].data), rec.write(late_urgent_r));
  };
  writer.async_write(net::buffer(items[0].data), rec.write(items[0].r));
  writer.async_write(net::buffer(items[1].data), rec.write(items[1].r));
  {
    const std::string& d = items[2].data;
    std::array<net::const_buffer, 2> seq{net::buffer(d.data(), 15),
                                         net::buffer(d.data() + 15, d.size() - 15)};
    writer.async_write(seq, rec.write(items[2].r));
  }
  BOOST_REQUIRE(run_until(ioc, [&] { return a.nwrite() >= 2 || items[0].r.calls == 1; }));
  add_rest();
  run_all(ioc);

  bool any_failed = false;
  std::vector<const sweep_item*> by_order;
  BOOST_TEST_CONTEXT("fail_at=" << fail_at) {
    for (std::size_t i = 0; i < items.size(); ++i) {
      BOOST_TEST_CONTEXT("item " << i) {
        const result& r = items[i].r;
        BOOST_TEST(r.calls == 1);
        BOOST_TEST(r.bytes <= items[i].data.size());
        if (!r.ec)
          BOOST_TEST(r.bytes == items[i].data.size());
        else if (i != 7)
          any_failed = true;
      }
      by_order.push_back(&items[i]);
    }
    // Refused: closing, or failed already when the close was called.
    const error_code refusal = error_at_close ? error_at_close : net::error::shut_down;
    BOOST_TEST(items[7].r.ec == refusal);
    BOOST_TEST(late_urgent_r.calls == 1);
    BOOST_TEST(late_urgent_r.ec == refusal);

    // The wire holds each item's reported bytes, in completion order.
    std::sort(by_order.begin(), by_order.end(),
              [](const sweep_item* x, const sweep_item* y) { return x->r.order < y->r.order; });
    std::string expected;
    for (const sweep_item* it : by_order)
      expected.append(it->data, 0, it->r.bytes);
    BOOST_TEST((b.str() == expected));

    // The close: a success only if the writer never failed; else the error
    // that failed it, and its operation never ran.
    BOOST_TEST(close_r.calls == 1);
    const error_code sticky = writer.error();
    if (sticky == net::error::shut_down) {
      BOOST_TEST(!close_r.ec);
      BOOST_TEST(close_runs == 1);
      BOOST_TEST(!items[0].r.ec);
      BOOST_TEST(!items[4].r.ec);
    } else {
      BOOST_TEST(sticky == serq_test::test_error::test_failure);
      BOOST_TEST(close_r.ec == sticky);
      BOOST_TEST(close_runs == 0);
    }
    // With no failure, the urgent items go right after the first message.
    if (!any_failed) {
      BOOST_TEST(items[3].r.order < items[5].r.order);
      BOOST_TEST(items[5].r.order < items[6].r.order);
      BOOST_TEST(items[0].r.order < items[3].r.order);
      BOOST_TEST(items[6].r.order < items[2].r.order);
      BOOST_TEST(items[6].r.order < items[4].r.order);
      BOOST_TEST(close_r.order > items[4].r.order);
    }
  }
  return any_failed;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_failure_point_of_a_script_with_urgent_writes_and_a_close_is_accounted) {
  std::size_t points = 0;
  for (std::size_t fail_at = 1; fail_at < 200; ++fail_at) {
    if (!run_lifecycle_script(fail_at))
      break;
    ++points;
  }
  BOOST_TEST(points > 10u);
  BOOST_TEST(points < 199u);
  BOOST_TEST(!run_lifecycle_script(0));  // and the script without failures
  BOOST_TEST_MESSAGE("failure points: " << points);
}

BOOST_AUTO_TEST_SUITE_END()
