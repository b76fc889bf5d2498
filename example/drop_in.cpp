//
// example/drop_in.cpp: replacing a hand-rolled writer with serq::queued_writer.
//
// Many Asio programs carry some version of the writer below ("before"): a
// deque of outgoing messages and a flag saying whether a write is in flight,
// so that two async_write calls never overlap on one socket. It works, but
// callers learn nothing about completion or errors, nothing limits the
// queue, and any other multi-step write on the socket has to be folded into
// the class by hand.
//
// serq::queued_writer<tcp::socket> ("after") replaces it. The writer is
// itself a stream, so net::async_write(writer, ...) and
// net::async_read(writer, ...) keep working unchanged; owned messages
// go through async_send; and a composed operation that writes one frame in
// several pieces runs through async_enqueue, in turn with the other writes,
// so nothing is ever written between its pieces.
//
// The protocol is a small http-like framing, no Beast needed: a header line
// "LEN <n>\n", then n bytes of body. An in-process loopback server checks
// every frame it reads and acknowledges it with a frame "ack <id>"; the
// client checks that every frame was acknowledged once. Exits 0 if all is well.
//

#include <serq.hpp>

// The Asio serq was built on (serq::serq defines SERQ_ASIO_STANDALONE for standalone Asio).
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#else
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#endif

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <deque>
#include <exception>
#include <iostream>
#include <set>
#include <string>
#include <string_view>

namespace net = serq::net;
using net::awaitable;
using net::use_awaitable;
using net::ip::tcp;
using serq::error_code;
using namespace net::experimental::awaitable_operators;

namespace {

//----------------------------------------------------------------------------
// Framing
//----------------------------------------------------------------------------

// Frame bodies are recomputable from their id, so the reader can check
// every byte.
std::string frame_body(int id, std::size_t size) {
  std::string body = "frame " + std::to_string(id) + ' ';
  for (std::size_t i = 0; body.size() < size; ++i)
    body += static_cast<char>('a' + (id + i) % 26);
  return body;
}

std::size_t small_size(int id) {
  return 20 + static_cast<std::size_t>(id) * 37 % 2000;
}
constexpr std::size_t large_size = 64 * 1024;

std::string frame(const std::string& body) {
  return "LEN " + std::to_string(body.size()) + '\n' + body;
}

// Reads one frame's body from any AsyncReadStream: a socket, or a writer,
// which forwards reads to its socket.
template <class AsyncReadStream>
awaitable<std::string> read_frame(AsyncReadStream& stream, std::string& buffer) {
  std::size_t n =
      co_await net::async_read_until(stream, net::dynamic_buffer(buffer), '\n', use_awaitable);
  std::size_t length = 0;
  if (!std::string_view(buffer).starts_with("LEN ") ||
      std::from_chars(buffer.data() + 4, buffer.data() + n - 1, length).ec != std::errc()) {
    throw std::runtime_error("bad frame header: " + buffer.substr(0, std::min<std::size_t>(n, 40)));
  }
  buffer.erase(0, n);
  if (buffer.size() < length) {
    co_await net::async_read(stream, net::dynamic_buffer(buffer),
                             net::transfer_exactly(length - buffer.size()), use_awaitable);
  }
  std::string body = buffer.substr(0, length);
  buffer.erase(0, length);
  co_return body;
}

// The id of a frame body, if the body is intact.
int check_frame(const std::string& body) {
  int id = -1;
  if (!body.starts_with("frame "))
    return -1;
  std::from_chars(body.data() + 6, body.data() + body.size(), id);
  return body == frame_body(id, body.size()) ? id : -1;
}

// A multi-step write: the header, then the body in 4 KiB pieces, each its
// own async_write on the socket (a serializer that produces its output
// piece by piece looks like this). Another write landing between two pieces
// would corrupt the frame.
struct write_chunked_frame_op {
  tcp::socket& socket;
  std::unique_ptr<std::string> header;  // stable addresses while written
  std::unique_ptr<std::string> body;
  std::size_t offset = 0;
  bool header_done = false;

  template <class Self>
  void operator()(Self& self, error_code ec = {}, std::size_t n = 0) {
    if (ec)
      return self.complete(ec, offset);
    if (!header_done) {
      header_done = n != 0;
      if (!header_done) {
        return net::async_write(socket, net::buffer(*header), std::move(self));
      }
    } else {
      offset += n;
    }
    if (offset == body->size())
      return self.complete(error_code(), offset);
    const std::size_t piece = std::min<std::size_t>(4096, body->size() - offset);
    net::async_write(socket, net::buffer(body->data() + offset, piece), std::move(self));
  }
};

template <class CompletionToken>
auto async_write_chunked_frame(tcp::socket& socket, std::string body, CompletionToken&& token) {
  auto header = std::make_unique<std::string>("LEN " + std::to_string(body.size()) + '\n');
  return net::async_compose<CompletionToken, void(error_code, std::size_t)>(
      write_chunked_frame_op{socket, std::move(header),
                             std::make_unique<std::string>(std::move(body))},
      token, socket);
}

//----------------------------------------------------------------------------
// Before: the hand-rolled writer
//----------------------------------------------------------------------------

class hand_rolled_writer {
 public:
  explicit hand_rolled_writer(tcp::socket& socket) : socket_(socket) {}

  // Fire and forget: the caller never hears whether the message went out.
  void send(std::string msg) {
    queue_.push_back(std::move(msg));
    if (!writing_)
      write_next();
  }

 private:
  void write_next() {
    writing_ = true;
    // A deque's elements stay put when others are pushed behind them.
    net::async_write(socket_, net::buffer(queue_.front()), [this](error_code ec, std::size_t) {
      queue_.pop_front();
      if (ec)
        queue_.clear();  // and nobody is told
      if (queue_.empty()) {
        writing_ = false;
        return;
      }
      write_next();
    });
  }

  tcp::socket& socket_;
  std::deque<std::string> queue_;
  bool writing_ = false;
};

constexpr int frames_per_sender = 40;
constexpr int senders = 4;

awaitable<int> before(tcp::endpoint ep) {
  tcp::socket socket(co_await net::this_coro::executor);
  co_await socket.async_connect(ep, use_awaitable);
  hand_rolled_writer writer(socket);
  for (int i = 0; i < senders * frames_per_sender; ++i) {
    writer.send(frame(frame_body(i, small_size(i))));
  }
  // No way to know when the last frame is written; only the acks tell.
  std::string buffer;
  std::set<int> acked;
  for (int i = 0; i < senders * frames_per_sender; ++i) {
    const std::string ack = co_await read_frame(socket, buffer);
    acked.insert(std::stoi(ack.substr(4)));
  }
  co_return static_cast<int>(acked.size());
}

//----------------------------------------------------------------------------
// After: serq::queued_writer
//----------------------------------------------------------------------------

// Several coroutines share the writer, each writing its frames in its own
// way. Sender s writes ids s, s + senders, s + 2 * senders, ...
awaitable<void> send_frames(serq::queued_writer<tcp::socket>& writer, int s) {
  for (int k = 0; k < frames_per_sender; ++k) {
    const int id = s + k * senders;
    switch (s) {
      case 0:
        // Owned message: the writer keeps the string until it is written.
        co_await writer.async_send(frame(frame_body(id, small_size(id))), use_awaitable);
        break;
      case 1: {
        // The free function, unchanged: on the writer it is one whole queued
        // write, so it cannot interleave with the other senders' frames.
        const std::string f = frame(frame_body(id, small_size(id)));
        co_await net::async_write(writer, net::buffer(f), use_awaitable);
        break;
      }
      case 2: {
        // Header and body as one message from two buffers (a gathered write).
        const std::string body = frame_body(id, small_size(id));
        const std::string header = "LEN " + std::to_string(body.size()) + '\n';
        const std::array<net::const_buffer, 2> buffers{net::buffer(header), net::buffer(body)};
        co_await writer.async_write(buffers, use_awaitable);
        break;
      }
      default:
        // A composed, multi-step write of a large frame, in its turn: the
        // writer finishes everything queued before it, runs it alone, and
        // only then writes what was queued after it.
        co_await writer.async_enqueue(
            async_write_chunked_frame(writer.next_layer(), frame_body(id, large_size),
                                      net::deferred),
            use_awaitable);
        break;
    }
  }
}

awaitable<int> read_acks(serq::queued_writer<tcp::socket>& writer) {
  std::string buffer;
  std::set<int> acked;
  for (int i = 0; i < senders * frames_per_sender; ++i) {
    // net::async_read_until and async_read on the writer: reads go
    // straight to the socket.
    const std::string ack = co_await read_frame(writer, buffer);
    acked.insert(std::stoi(ack.substr(4)));
  }
  co_return static_cast<int>(acked.size());
}

awaitable<int> after(tcp::endpoint ep) {
  serq::queued_writer<tcp::socket> writer(co_await net::this_coro::executor);
  co_await writer.next_layer().async_connect(ep, use_awaitable);
  const int acked =
      co_await (send_frames(writer, 0) && send_frames(writer, 1) && send_frames(writer, 2) &&
                send_frames(writer, 3) && read_acks(writer));
  // Unlike the hand-rolled writer, this one can say when everything is out.
  co_await writer.async_flush(use_awaitable);
  co_return acked;
}

//----------------------------------------------------------------------------
// The server: checks every frame and acknowledges it.
//----------------------------------------------------------------------------

struct server_stats {
  int frames = 0;
  int bad = 0;
};

awaitable<void> serve(tcp::socket socket, server_stats& stats) {
  serq::queued_writer<tcp::socket> writer(std::move(socket));
  std::string buffer;
  try {
    for (;;) {
      const std::string body = co_await read_frame(writer, buffer);
      const int id = check_frame(body);
      ++stats.frames;
      if (id < 0) {
        ++stats.bad;
        std::cout << "drop_in: damaged frame: " << body.substr(0, 40) << '\n';
      }
      writer.async_send(frame("ack " + std::to_string(id)), net::detached);
    }
  } catch (const serq::system_error& e) {
    if (e.code() != net::error::eof)
      throw;  // the client hung up: done
  }
  co_await writer.async_flush(net::as_tuple(use_awaitable));
}

awaitable<void> accept_two(tcp::acceptor& acceptor, server_stats& stats) {
  for (int i = 0; i < 2; ++i) {
    net::co_spawn(acceptor.get_executor(),
                  serve(co_await acceptor.async_accept(use_awaitable), stats), net::detached);
  }
}

}  // namespace

int main() {
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  server_stats stats;
  net::co_spawn(ioc, accept_two(acceptor, stats), net::detached);

  const int expected = senders * frames_per_sender;
  int acked_before = 0, acked_after = 0;
  std::exception_ptr failure;
  net::co_spawn(
      ioc,
      [&]() -> awaitable<void> {
        acked_before = co_await before(acceptor.local_endpoint());
        acked_after = co_await after(acceptor.local_endpoint());
      },
      [&](std::exception_ptr e) { failure = e; });
  ioc.run();

  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      std::cout << "drop_in: " << e.what() << '\n';
    }
  }
  std::cout << "drop_in: before: " << acked_before << '/' << expected
            << " frames acknowledged; after: " << acked_after << '/' << expected << "; server read "
            << stats.frames << " frames, " << stats.bad << " damaged\n";
  const bool ok = !failure && acked_before == expected && acked_after == expected &&
                  stats.frames == 2 * expected && stats.bad == 0;
  std::cout << (ok ? "OK\n" : "FAILED\n");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
