//
// test/unit/owning_writer.cpp
//
// A queued_writer that owns its stream: destroying it with a write in flight
// is safe for every stream (the stream lives until that write returns, and
// the destructor closes its lowest layer so that it returns at once); and the
// writer is movable.
//

#include <serq/queued_writer.hpp>

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/socket_buffers.hpp"
#include "common/tls.hpp"

#if SERQ_TEST_WITH_BEAST  // Boost flavour only (test/CMakeLists.txt)
#include <boost/beast/core/tcp_stream.hpp>
#endif

#include <boost/test/unit_test.hpp>

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using tcp = net::ip::tcp;
using local_socket = net::local::stream_protocol::socket;

namespace {

struct write_result {
  error_code ec;
  std::size_t bytes = 0;
  int calls = 0;
};

// n messages of `size` bytes, message i filled with 'a' + i % 26.
std::vector<std::string> make_messages(std::size_t n, std::size_t size) {
  std::vector<std::string> messages;
  for (std::size_t i = 0; i < n; ++i)
    messages.emplace_back(size, static_cast<char>('a' + i % 26));
  return messages;
}

// Queues every message on w, recording each completion in results.
template <class Writer>
void write_all(Writer& w, const std::vector<std::string>& messages,
               std::vector<write_result>& results, serq_test::handler_tracker& tr) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    w.async_write(net::buffer(messages[i]), tr.wrap([&results, i](error_code ec, std::size_t n) {
      results[i].ec = ec;
      results[i].bytes = n;
      ++results[i].calls;
    }));
  }
}

std::string concatenated(const std::vector<std::string>& messages) {
  std::string all;
  for (const auto& m : messages)
    all += m;
  return all;
}

// Runs every ready handler until none is left: a write to a peer that does
// not read then sits in flight, waiting for room.
void drain_ready(net::io_context& ioc) {
  ioc.restart();
  while (ioc.poll() > 0) {
  }
}

// Reads from s until an error, appending to out.
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

// Destroys w, whose stream operation may still be in flight, and runs ioc
// while `server` reads until an error (the writer's stream closed, into
// read_ec); returns what it read.
template <class Writer, class Stream>
std::string read_after_destroying(std::unique_ptr<Writer>& w, Stream& server, net::io_context& ioc,
                                  error_code& read_ec) {
  w.reset();
  std::string received;
  read_all(server, received, read_ec);
  ioc.restart();
  ioc.run();
  return received;
}

// Checks the completions of messages destroyed mid-write: a run of whole
// successes, then failures; only a started message may report bytes.
void check_aborted_run(const std::vector<write_result>& results, std::size_t size) {
  std::size_t i = 0;
  while (i < results.size() && !results[i].ec) {
    BOOST_TEST(results[i].bytes == size);
    ++i;
  }
  BOOST_TEST(i < results.size(), "some message must still have been pending");
  std::size_t partial = 0;
  for (; i < results.size(); ++i) {
    BOOST_TEST(results[i].ec);
    BOOST_TEST(results[i].bytes <= size);
    if (results[i].ec != net::error::operation_aborted || results[i].bytes != 0)
      ++partial;
  }
  BOOST_TEST(partial <= 1u);  // at most the message in flight
  for (const auto& r : results)
    BOOST_TEST(r.calls == 1);
}

// An owning TLS writer connected to a TLS server over loopback, both
// handshaken; the client's handshake handler counts in tr.
struct tls_writer {
  serq_test::tls_contexts tls;
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq_test::tls_connection<serq::queued_writer<serq_test::tls_tcp_stream>> c =
      serq_test::tls_connection<serq::queued_writer<serq_test::tls_tcp_stream>>::connect(
          ioc, tls, [this](auto h) { return tr.wrap(std::move(h)); });
  std::unique_ptr<serq::queued_writer<serq_test::tls_tcp_stream>>& w = c.writer;
  serq_test::tls_tcp_stream& server = c.server;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(owning_writer)

BOOST_FIXTURE_TEST_CASE(destroying_an_owning_tls_writer_with_a_write_in_flight_is_safe,
                        tls_writer) {
  // The server stops reading: 400 x 64 KiB cannot all go out.
  constexpr std::size_t count = 400, size = 64 * 1024;
  const auto messages = make_messages(count, size);
  std::vector<write_result> results(count);
  write_all(*w, messages, results, tr);
  drain_ready(ioc);
  BOOST_REQUIRE(w->pending_bytes() > 0u);
  BOOST_REQUIRE(w->pending_bytes() < count * size);  // some went out: a write is in flight

  // The writer goes with its stream's operation still in flight; the server
  // goes on reading: what it gets is a prefix of what was queued.
  error_code read_ec;
  const std::string received = read_after_destroying(w, server, ioc, read_ec);

  BOOST_TEST(read_ec);  // the client's socket was closed
  const std::string expected = concatenated(messages);
  BOOST_TEST(received.size() <= expected.size());
  BOOST_TEST((received == expected.substr(0, received.size())));
  check_aborted_run(results, size);
  BOOST_TEST(tr.invoked() == count + 1);
}

BOOST_AUTO_TEST_CASE(destroying_an_idle_owning_writer_closes_its_stream_inside_the_destructor) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  auto w = std::make_unique<serq::queued_writer<local_socket>>(std::move(a));
  std::size_t written = 0;
  w->async_write(net::buffer("hello", 5), [&](error_code ec, std::size_t n) {
    BOOST_TEST(!ec);
    written = n;
  });
  ioc.run();
  BOOST_TEST(written == 5u);

  w.reset();
  b.non_blocking(true);
  std::array<char, 16> buf{};
  error_code ec;
  BOOST_TEST(b.read_some(net::buffer(buf), ec) == 5u);
  BOOST_TEST(!ec);
  b.read_some(net::buffer(buf), ec);
  BOOST_TEST(ec == net::error::eof);  // closed, not would_block
}

BOOST_AUTO_TEST_CASE(destroying_an_owning_writer_mid_write_closes_the_socket_once_it_runs) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  serq_test::connect_small_pair(a, b);
  auto w = std::make_unique<serq::queued_writer<local_socket>>(std::move(a));

  constexpr std::size_t count = 64, size = 256 * 1024;
  const auto messages = make_messages(count, size);
  std::vector<write_result> results(count);
  write_all(*w, messages, results, tr);
  drain_ready(ioc);
  BOOST_REQUIRE(w->pending_bytes() > 0u);
  w.reset();

  std::string received;
  error_code read_ec;
  read_all(b, received, read_ec);
  ioc.restart();
  ioc.run();
  BOOST_TEST(read_ec == net::error::eof);
  const std::string expected = concatenated(messages);
  BOOST_TEST((received == expected.substr(0, received.size())));
  check_aborted_run(results, size);
  BOOST_TEST(tr.invoked() == count);
}

#if SERQ_TEST_WITH_BEAST
BOOST_AUTO_TEST_CASE(destroying_an_owning_beast_tcp_stream_writer_mid_write_is_safe) {
  namespace beast = boost::beast;
  serq_test::handler_tracker tr;
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  beast::tcp_stream client(ioc);
  client.socket().connect(acceptor.local_endpoint());
  tcp::socket server = acceptor.accept();
  serq_test::shrink_socket_buffers(client.socket(), server);
  auto w = std::make_unique<serq::queued_writer<beast::tcp_stream>>(std::move(client));

  constexpr std::size_t count = 64, size = 256 * 1024;
  const auto messages = make_messages(count, size);
  std::vector<write_result> results(count);
  write_all(*w, messages, results, tr);
  drain_ready(ioc);
  BOOST_REQUIRE(w->pending_bytes() > 0u);

  error_code read_ec;
  const std::string received = read_after_destroying(w, server, ioc, read_ec);
  BOOST_TEST(read_ec);
  const std::string expected = concatenated(messages);
  BOOST_TEST((received == expected.substr(0, received.size())));
  check_aborted_run(results, size);
  BOOST_TEST(tr.invoked() == count);
}
#endif

// ---- moves -----------------------------------------------------------------

// A socket that counts the live instances of its type.
class counted_socket : public local_socket {
 public:
  static inline int live = 0;
  explicit counted_socket(local_socket&& s) : local_socket(std::move(s)) { ++live; }
  ~counted_socket() { --live; }
};

// A composed operation on an owned stream that runs when the writer is
// destroyed keeps the stream alive until it completes (the destructor closes
// the stream, so it completes at once with an error).
BOOST_AUTO_TEST_CASE(a_composed_operation_in_flight_keeps_the_owned_stream_alive) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  serq_test::connect_small_pair(a, b);
  auto w = std::make_unique<serq::queued_writer<counted_socket>>(std::move(a));
  BOOST_REQUIRE(counted_socket::live == 1);
  const std::string big(8 * 1024 * 1024, 'x');  // more than the socket takes: b never reads
  error_code got = net::error::would_block;
  int live_at_completion = -1;
  w->async_enqueue(net::async_write(w->next_layer(), net::buffer(big), net::deferred),
                   [&](error_code ec, std::size_t) {
                     got = ec;
                     live_at_completion = counted_socket::live;
                   });
  drain_ready(ioc);
  BOOST_REQUIRE(got == net::error::would_block);  // launched, in flight

  w.reset();
  BOOST_TEST(counted_socket::live == 1);  // the operation holds it
  ioc.restart();
  ioc.run();
  BOOST_TEST(got);  // the stream was closed under it
  BOOST_TEST(live_at_completion == 1);
  BOOST_TEST(counted_socket::live == 0);  // destroyed once the operation let go
}

// The same as users meet it: a TLS write run as a composed operation (as an
// HTTP or websocket library's write would be) is in flight when the owning
// writer is destroyed. The ssl::stream lives until that operation has
// returned (under ASan, freed memory would be reported).
BOOST_FIXTURE_TEST_CASE(destroying_an_owning_tls_writer_with_a_composed_write_in_flight_is_safe,
                        tls_writer) {
  const std::string big(16 * 1024 * 1024, 'z');  // the server does not read yet
  error_code got = net::error::would_block;
  std::size_t written = 0;
  w->async_enqueue(net::async_write(w->next_layer(), net::buffer(big), net::deferred),
                   tr.wrap([&](error_code ec, std::size_t n) {
                     got = ec;
                     written = n;
                   }));
  drain_ready(ioc);
  BOOST_REQUIRE(got == net::error::would_block);  // in flight

  error_code read_ec;
  const std::string received = read_after_destroying(w, server, ioc, read_ec);
  BOOST_TEST(got);  // the stream was closed under the write
  BOOST_TEST(written < big.size());
  BOOST_TEST(received.size() <= written);
  BOOST_TEST((received == big.substr(0, received.size())));
  BOOST_TEST(tr.invoked() == 2u);
}

// A composed operation whose turn has come (its trigger posted) when the
// writer is destroyed has not started: it is aborted, never launched on the
// stream (which, referenced, may be gone with the writer).
BOOST_AUTO_TEST_CASE(a_composed_operation_triggered_but_not_started_is_aborted_with_the_writer) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  auto w = std::make_unique<serq::queued_writer<local_socket&>>(a);
  bool launched = false;
  error_code got = net::error::would_block;
  w->async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched = true;
        net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [&](error_code ec) { got = ec; });
  w.reset();  // the operation's trigger is posted: it is the queue's active entry
  ioc.run();
  BOOST_TEST(!launched);
  BOOST_TEST(got == net::error::operation_aborted);
}

// A flush's handler destroys the writer just as the close behind it is due
// (both are settled in the same step of the pump): the close is aborted, and
// the stream is not shut down.
BOOST_AUTO_TEST_CASE(a_close_due_when_a_handler_destroys_the_writer_is_aborted) {
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  auto w = std::make_unique<serq::queued_writer<local_socket&>>(a);
  error_code close_result = net::error::would_block;
  w->async_flush([&](error_code ec) {
    BOOST_TEST(!ec);
    w.reset();
  });
  w->async_close([&](error_code ec) { close_result = ec; });
  ioc.run();
  BOOST_TEST(!w);
  BOOST_TEST(close_result == net::error::operation_aborted);
  std::array<char, 16> buf{};
  b.non_blocking(true);
  error_code ec;
  b.read_some(net::buffer(buf), ec);
  BOOST_TEST(ec == net::error::would_block);  // not shut down: the close never ran
}

BOOST_AUTO_TEST_CASE(a_moved_writer_keeps_its_messages_and_the_moved_from_one_fails) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  local_socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<local_socket> w1(std::move(a));
  w1.async_write(net::buffer("one", 3),
                 tr.wrap([](error_code ec, std::size_t) { BOOST_TEST(!ec); }));
  w1.async_send(std::string("two"), tr.wrap([](error_code ec, std::size_t) { BOOST_TEST(!ec); }));

  serq::queued_writer<local_socket> w2(std::move(w1));
  w2.async_write(net::buffer("three", 5),
                 tr.wrap([](error_code ec, std::size_t) { BOOST_TEST(!ec); }));

  // The moved-from writer: no stream, every call fails with bad_descriptor.
  BOOST_TEST(w1.error() == net::error::bad_descriptor);
  BOOST_TEST(!w1.writable());
  BOOST_TEST(w1.pending_bytes() == 0u);
  BOOST_TEST((w1.get_executor() == ioc.get_executor()));
  bool returned = false;
  int failed = 0;
  w1.async_write(net::buffer("x", 1), tr.wrap([&](error_code ec, std::size_t n) {
    BOOST_TEST(returned);  // never inside the call
    BOOST_TEST(ec == net::error::bad_descriptor);
    BOOST_TEST(n == 0u);
    ++failed;
  }));
  w1.async_flush(tr.wrap([&](error_code ec) {
    BOOST_TEST(ec == net::error::bad_descriptor);
    ++failed;
  }));
  net::steady_timer timer(ioc);
  w1.async_enqueue(timer.async_wait(net::deferred), tr.wrap([&](error_code ec) {
    BOOST_TEST(ec == net::error::bad_descriptor);
    ++failed;
  }));
  std::array<char, 8> into{};
  w1.async_read_some(net::buffer(into), tr.wrap([&](error_code ec, std::size_t n) {
    BOOST_TEST(returned);
    BOOST_TEST(ec == net::error::bad_descriptor);
    BOOST_TEST(n == 0u);
    ++failed;
  }));
  returned = true;

  ioc.run();
  BOOST_TEST(failed == 4);
  BOOST_TEST(tr.invoked() == 7u);
  std::array<char, 32> buf{};
  b.non_blocking(true);
  error_code ec;
  const std::size_t n = b.read_some(net::buffer(buf), ec);
  BOOST_TEST(std::string(buf.data(), n) == "onetwothree");
}

BOOST_AUTO_TEST_CASE(move_assignment_closes_the_old_writer_then_takes_over) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  local_socket a1(ioc), b1(ioc), a2(ioc), b2(ioc);
  net::local::connect_pair(a1, b1);
  net::local::connect_pair(a2, b2);
  serq::queued_writer<local_socket> w(std::move(a1));
  int aborted = 0;
  w.async_write(net::buffer("old", 3), tr.wrap([&](error_code ec, std::size_t n) {
    aborted += ec == net::error::operation_aborted && n == 0;
  }));

  serq::queued_writer<local_socket> other(std::move(a2));
  w = std::move(other);
  w.async_write(net::buffer("new", 3), tr.wrap([](error_code ec, std::size_t n) {
    BOOST_TEST(!ec);
    BOOST_TEST(n == 3u);
  }));
  ioc.run();
  BOOST_TEST(aborted == 1);
  BOOST_TEST(tr.invoked() == 2u);

  // The old stream was closed; the new one got the message.
  std::array<char, 8> buf{};
  error_code ec;
  b1.non_blocking(true);
  b1.read_some(net::buffer(buf), ec);
  BOOST_TEST(ec == net::error::eof);
  b2.non_blocking(true);
  const std::size_t n = b2.read_some(net::buffer(buf), ec);
  BOOST_TEST(std::string(buf.data(), n) == "new");
}

BOOST_AUTO_TEST_CASE(writers_held_by_value_survive_a_vector_reallocation_with_writes_pending) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  constexpr int count = 5;
  std::vector<serq::queued_writer<local_socket>> writers;
  std::vector<local_socket> peers;
  for (int i = 0; i < count; ++i) {
    local_socket a(ioc), b(ioc);
    net::local::connect_pair(a, b);
    writers.emplace_back(std::move(a));  // reallocates: earlier writers move
    peers.push_back(std::move(b));
    writers.back().async_send(std::to_string(i),
                              tr.wrap([](error_code ec, std::size_t) { BOOST_TEST(!ec); }));
  }
  ioc.run();
  BOOST_TEST(tr.invoked() == static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    std::array<char, 8> buf{};
    error_code ec;
    peers[i].non_blocking(true);
    const std::size_t n = peers[i].read_some(net::buffer(buf), ec);
    BOOST_TEST(std::string(buf.data(), n) == std::to_string(i));
  }
}

BOOST_AUTO_TEST_SUITE_END()
