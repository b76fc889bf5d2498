//
// test/integration/websocket_strand.cpp: queued operations stay on the queue's strand.
//
// A Beast websocket server session lives on a strand; a serq::serialized_queue
// built on that strand serializes its writes, pings and the final close, which
// 16 producer coroutines running on the plain io_context enqueue. The session's
// reader runs on the strand at the same time and answers the peer's pings, so
// Beast's write and read operations hand the stream's write block back and
// forth while writes are in flight. The io_context runs on 2 threads.
//
// Beast requires every operation on one stream to run on the stream's strand.
// A queued operation is launched by the queue on its executor (the strand), but
// its continuations run on its intermediate handler's associated executor: if
// that were the caller's (the plain io_context), Beast would continue the write
// (the next frame of a fragmented message, a suspended read resumed) off the
// strand, racing the reader (Beast asserts `wr_block.is_locked()` in debug).
//
// A pass-through layer under the websocket stream, counting_stream, counts every
// async_read_some / async_write_some started while the strand is not running in
// the calling thread. It must stay 0. The peer, a Beast websocket client on
// loopback TCP, checks that every message arrives whole, in order per producer,
// and all of them, then ends on the close frame.
//
// Nothing waits on wall-clock time except a watchdog that fails the test (and
// stops the io_context) if it has not finished after kWatchdog.
//

#include <serq/serialized_queue.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using boost::system::error_code;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

namespace {

constexpr int kProducers = 16;
constexpr int kMessagesPerProducer = 200;
constexpr int kServerPingEvery = 25;  // a producer queues a ping after every 25th message
constexpr int kClientPingEvery = 16;  // the client pings after every 16th message received
constexpr auto kWatchdog = 60s;

using strand_type = net::strand<net::io_context::executor_type>;

// Stream operations started by the layer, and those started off the strand.
struct start_counts {
  std::atomic<long> reads{0}, writes{0}, reads_off_strand{0}, writes_off_strand{0};
};

// A pass-through stream layer: forwards everything to Next, and counts the
// operations it starts, and those started while `strand` is not running in the
// calling thread.
template <class Next>
class counting_stream {
 public:
  using next_layer_type = Next;
  using executor_type = typename Next::executor_type;

  template <class... Args>
  counting_stream(strand_type strand, start_counts& counts, Args&&... args)
      : strand_(std::move(strand)), counts_(&counts), next_(std::forward<Args>(args)...) {}

  next_layer_type& next_layer() noexcept { return next_; }
  const next_layer_type& next_layer() const noexcept { return next_; }
  executor_type get_executor() noexcept { return next_.get_executor(); }

  template <class MutableBufferSequence, class ReadToken>
  auto async_read_some(const MutableBufferSequence& buffers, ReadToken&& token) {
    ++counts_->reads;
    if (!strand_.running_in_this_thread())
      ++counts_->reads_off_strand;
    return next_.async_read_some(buffers, std::forward<ReadToken>(token));
  }

  template <class ConstBufferSequence, class WriteToken>
  auto async_write_some(const ConstBufferSequence& buffers, WriteToken&& token) {
    ++counts_->writes;
    if (!strand_.running_in_this_thread())
      ++counts_->writes_off_strand;
    return next_.async_write_some(buffers, std::forward<WriteToken>(token));
  }

  // The websocket closing handshake ends with a teardown of the layer below.
  friend void teardown(beast::role_type role, counting_stream& s, error_code& ec) {
    using websocket::teardown;
    teardown(role, s.next_, ec);
  }

  template <class TeardownHandler>
  friend void async_teardown(beast::role_type role, counting_stream& s, TeardownHandler&& handler) {
    using websocket::async_teardown;
    async_teardown(role, s.next_, std::forward<TeardownHandler>(handler));
  }

 private:
  strand_type strand_;
  start_counts* counts_;
  Next next_;
};

// The filler after "p<k>:<seq>|": every 8th message is larger than Beast's
// write buffer (4096 bytes by default), so the server sends it as several
// frames, each started from the previous one's completion.
std::size_t filler_size(int producer, int seq) {
  if (seq % 8 == 3)
    return 5000 + static_cast<std::size_t>((producer * 131 + seq * 17) % 3000);
  return static_cast<std::size_t>((producer * 7 + seq) % 64);
}

char filler_char(int producer, int seq, std::size_t i) {
  return static_cast<char>('a' + (static_cast<std::size_t>(producer + seq) + i) % 26);
}

std::string make_message(int producer, int seq) {
  std::string m = "p" + std::to_string(producer) + ":" + std::to_string(seq) + "|";
  const std::size_t n = filler_size(producer, seq);
  m.reserve(m.size() + n);
  for (std::size_t i = 0; i < n; ++i)
    m.push_back(filler_char(producer, seq, i));
  return m;
}

// Parses a non-negative decimal number at the front of s, up to `end`.
bool parse_int(std::string_view& s, char end, int& out) {
  out = 0;
  std::size_t i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9' && i < 9; ++i)
    out = out * 10 + (s[i] - '0');
  if (i == 0 || i >= s.size() || s[i] != end)
    return false;
  s.remove_prefix(i + 1);
  return true;
}

// Checks one received message: whole, from a known producer, next in its order.
// Returns an empty string when it is right, else what is wrong.
std::string check_message(std::string_view m, std::vector<int>& next_seq) {
  const std::string head(m.substr(0, 40));
  if (m.empty() || m[0] != 'p')
    return "malformed message: " + head;
  std::string_view rest = m.substr(1);
  int producer = 0, seq = 0;
  if (!parse_int(rest, ':', producer) || !parse_int(rest, '|', seq))
    return "malformed message: " + head;
  if (producer >= kProducers)
    return "unknown producer: " + head;
  if (seq != next_seq[producer])
    return "producer " + std::to_string(producer) + ": expected seq " +
           std::to_string(next_seq[producer]) + ", got " + head;
  const std::size_t n = filler_size(producer, seq);
  if (rest.size() != n)
    return "torn message (" + std::to_string(rest.size()) + " filler bytes, expected " +
           std::to_string(n) + "): " + head;
  for (std::size_t i = 0; i < n; ++i)
    if (rest[i] != filler_char(producer, seq, i))
      return "corrupt filler at byte " + std::to_string(i) + ": " + head;
  ++next_seq[producer];
  return {};
}

// Failures seen on io_context threads; reported on the test's thread
// (Boost.Test is not thread-safe).
class failures {
 public:
  void add(std::string what) {
    std::lock_guard<std::mutex> lock(mutex_);
    list_.push_back(std::move(what));
  }
  std::vector<std::string> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::move(list_);
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> list_;
};

std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(queued_websocket_operations_stay_on_the_queues_strand) {
  net::io_context ioc(2);
  failures failed;
  start_counts counts;

  // Loopback TCP, connected before the io_context runs.
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  const strand_type server_strand = net::make_strand(ioc);
  const strand_type client_strand = net::make_strand(ioc);
  tcp::socket client_socket(client_strand);
  client_socket.connect(acceptor.local_endpoint());
  tcp::socket server_socket(server_strand);
  acceptor.accept(server_socket);
  acceptor.close();

  websocket::stream<counting_stream<tcp::socket>> ws(server_strand, counts,
                                                     std::move(server_socket));
  websocket::stream<tcp::socket> client(std::move(client_socket));
  serq::serialized_queue q(server_strand);

  // Watchdog: cancelled (on its strand) when every party has finished.
  const strand_type watchdog_strand = net::make_strand(ioc);
  net::steady_timer watchdog(watchdog_strand, kWatchdog);
  std::atomic<bool> timed_out{false};
  watchdog.async_wait([&](error_code ec) {
    if (!ec) {
      timed_out = true;
      ioc.stop();
    }
  });

  // Parties: the client, the server's handshake, its reader, the producers.
  std::atomic<int> parties{3 + kProducers};
  auto party_done = [&](const char* who, std::exception_ptr e) {
    if (e)
      failed.add(std::string(who) + ": " + describe(e));
    if (--parties == 0)
      net::post(watchdog_strand, [&] { watchdog.cancel(); });
  };

  // ---- client: reads everything, pings now and then, ends on the close frame.
  std::vector<int> next_seq(kProducers, 0);
  long received = 0;
  long client_pings = 0;
  bool ping_in_flight = false;  // touched on the client's strand only
  error_code client_end;
  websocket::close_reason close_received;
  net::co_spawn(
      client_strand,
      [&]() -> net::awaitable<void> {
        co_await client.async_handshake("127.0.0.1", "/", net::use_awaitable);
        beast::flat_buffer buffer;
        for (;;) {
          auto [ec, n] = co_await client.async_read(buffer, net::as_tuple(net::use_awaitable));
          if (ec) {
            client_end = ec;
            close_received = client.reason();
            break;
          }
          if (!client.got_text())
            failed.add("client: a binary message");
          const std::string m = beast::buffers_to_string(buffer.data());
          buffer.consume(n);
          if (std::string why = check_message(m, next_seq); !why.empty())
            failed.add("client: " + why);
          if (++received % kClientPingEvery == 0 && !ping_in_flight) {
            ping_in_flight = true;
            ++client_pings;
            // No associated executor: completes on the client stream's strand.
            client.async_ping({}, [&](error_code) { ping_in_flight = false; });
          }
        }
      },
      [&](std::exception_ptr e) { party_done("client", e); });

  // ---- server: handshake on the strand, then the reader and the producers.
  error_code reader_end;
  long server_reads = 0;
  std::atomic<int> producers_left{kProducers};
  std::atomic<long> messages_written{0}, pings_written{0};
  std::atomic<bool> closed{false};

  auto reader = [&]() -> net::awaitable<void> {
    beast::flat_buffer buffer;
    for (;;) {
      auto [ec, n] = co_await ws.async_read(buffer, net::as_tuple(net::use_awaitable));
      if (ec) {
        reader_end = ec;
        break;
      }
      ++server_reads;  // the client sends no messages
      buffer.consume(n);
    }
  };

  auto producer = [&](int k) -> net::awaitable<void> {
    for (int seq = 0; seq < kMessagesPerProducer; ++seq) {
      const std::string msg = make_message(k, seq);  // lives in the frame until written
      const std::size_t n = co_await q.async_enqueue(
          ws.async_write(net::buffer(msg), net::deferred), net::use_awaitable);
      if (n != msg.size())
        failed.add("producer " + std::to_string(k) + ": wrote " + std::to_string(n) + " of " +
                   std::to_string(msg.size()) + " bytes");
      ++messages_written;
      if ((seq + 1) % kServerPingEvery == 0) {
        co_await q.async_enqueue(ws.async_ping({}, net::deferred), net::use_awaitable);
        ++pings_written;
      }
    }
    // The last producer to finish closes the session, through the queue too.
    if (--producers_left == 0) {
      co_await q.async_enqueue(ws.async_close(websocket::close_code::normal, net::deferred),
                               net::use_awaitable);
      closed = true;
    }
  };

  net::co_spawn(
      server_strand,
      [&]() -> net::awaitable<void> {
        // The overload with a (here empty) buffer sequence of bytes already read: with Asio
        // 1.31+ (deferred as the default token) Boost 1.81's Beast takes a lone token for the
        // buffer sequence of that overload.
        co_await ws.async_accept(net::const_buffer(), net::use_awaitable);
        net::co_spawn(server_strand, reader(),
                      [&](std::exception_ptr e) { party_done("server reader", e); });
        for (int k = 0; k < kProducers; ++k)
          net::co_spawn(ioc, producer(k), [&, k](std::exception_ptr e) {
            party_done(("producer " + std::to_string(k)).c_str(), e);
          });
      },
      [&](std::exception_ptr e) {
        if (e)  // the producers were never spawned: account for them
          parties -= kProducers + 1;
        party_done("server handshake", e);
      });

  const auto started = std::chrono::steady_clock::now();
  std::thread second([&] { ioc.run(); });
  ioc.run();
  second.join();
  const auto elapsed = std::chrono::steady_clock::now() - started;
  BOOST_TEST_MESSAGE("websocket_strand: "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
                     << " ms, " << counts.writes << " write_some (" << counts.writes_off_strand
                     << " off the strand), " << counts.reads << " read_some ("
                     << counts.reads_off_strand << " off the strand), " << pings_written
                     << " server pings, " << client_pings << " client pings");

  BOOST_TEST(!timed_out, "the test did not finish within the watchdog's limit");
  for (const std::string& f : failed.take())
    BOOST_ERROR(f);

  // The point of the test: Beast never started a stream operation off the strand.
  BOOST_TEST(counts.writes_off_strand == 0);
  BOOST_TEST(counts.reads_off_strand == 0);
  BOOST_TEST(counts.writes >= long{kProducers} * kMessagesPerProducer);  // the layer was used
  BOOST_TEST(counts.reads > 0);

  // Everything arrived, whole and in order, then the close frame.
  BOOST_TEST(messages_written == long{kProducers} * kMessagesPerProducer);
  BOOST_TEST(pings_written == long{kProducers} * (kMessagesPerProducer / kServerPingEvery));
  BOOST_TEST(received == long{kProducers} * kMessagesPerProducer);
  for (int k = 0; k < kProducers; ++k)
    BOOST_TEST(next_seq[k] == kMessagesPerProducer, "producer " << k);
  BOOST_TEST(closed);
  BOOST_TEST((client_end == websocket::error::closed), client_end.message());
  BOOST_TEST(close_received.code == websocket::close_code::normal);
  // The reader ends when the close handshake does: Beast completes a read that
  // yielded to async_close with operation_aborted, one that saw it end with closed.
  BOOST_TEST(
      (reader_end == websocket::error::closed || reader_end == net::error::operation_aborted),
      reader_end.message());
  BOOST_TEST(server_reads == 0);
  BOOST_TEST(q.empty());
}
