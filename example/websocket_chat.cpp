//
// example/websocket_chat.cpp: a browser chat room, Boost.Beast HTTP and
// WebSocket, with every outgoing message written through a
// serq::serialized_queue.
//
// The server serves one page (websocket_chat.html, compiled into the binary)
// at "/" and a WebSocket endpoint at "/ws". Every text message a browser sends
// on "/ws" is relayed, unchanged, to every connected browser, the sender
// included. The page speaks JSON ({"name": ..., "text": ...}); the server
// never looks inside.
//
// Writes. A Beast websocket stream allows one write at a time and must only
// be used from its strand, yet any session's reader, on any thread, may
// broadcast to it at any moment. Each session therefore owns a
// serq::serialized_queue built on its stream's strand, and every write to the
// browser is one entry:
//
//     queue.async_enqueue(ws.async_write(net::buffer(*msg), net::deferred), handler);
//
// The queue launches one write at a time, in order, on the strand (also when
// async_enqueue is called from another thread), and every step of Beast's
// composed write runs there too. No deque, no busy flag, no "am I writing?".
//
// Broadcasts. A message is copied once out of the sender's read buffer into
// a std::shared_ptr<const std::string> that every session's write refers to
// until it completes; nothing is copied per recipient.
//
// Slow browsers. Each session counts the bytes queued for it and not yet
// written (its backlog). A broadcast that would take a session's backlog past
// --max-backlog bytes (default 1 MiB) is not queued; that session is dropped
// instead: its queued messages are cancelled and its TCP connection closed
// at once (a WebSocket close frame would wait behind the very bytes the
// browser is not reading). A healthy browser keeps its backlog near zero; one
// that is 1 MiB of chat behind is stalled or on a link too slow for the
// room, and no one else waits for it: broadcasting never blocks on a
// recipient, and the dropped session's memory is released at once.
//
// Usage:
//   websocket_chat <address> <port> [--threads N] [--max-backlog BYTES]
//       Serves http://<address>:<port>/ until SIGINT or SIGTERM. Port 0 picks
//       a free port; the first line on stdout is "listening on <port>".
//       Try: websocket_chat 127.0.0.1 8080, then open http://127.0.0.1:8080/
//       in a few browser tabs. /?selftest=4x1000 runs the page's self-test.
//

#include <serq/serialized_queue.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/version.hpp>
#include <boost/beast/websocket.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <syncstream>
#include <thread>
#include <utility>
#include <vector>

#include "websocket_chat_html.hpp"  // generated from websocket_chat.html: chat_page_html

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = serq::net;  // boost::asio: Beast needs the Boost flavour
using serq::error_code;
using tcp = net::ip::tcp;

namespace {

constexpr auto nothrow_awaitable = net::as_tuple(net::use_awaitable);

// A browser sending more than this in one message is disconnected (Beast
// closes with "message too big"), so no client can make the server buffer an
// unbounded message.
constexpr std::size_t max_message_bytes = 64 * 1024;

template <class... Args>
void log(const Args&... args) {
  std::osyncstream out(std::cout);
  (out << ... << args) << std::endl;  // flushed: the log may be a pipe
}

//----------------------------------------------------------------------------

class chat_session;

// The set of connected sessions. Sessions join and leave rarely and broadcast
// often, so the set is an immutable vector replaced on every join and leave:
// a broadcast takes a reference to the current one under the lock and walks
// it without the lock.
class chat_room {
 public:
  using session_list = std::vector<std::shared_ptr<chat_session>>;

  explicit chat_room(std::size_t max_backlog) : max_backlog_(max_backlog) {}

  std::size_t max_backlog() const noexcept { return max_backlog_; }
  std::uint64_t next_id() noexcept { return ++last_id_; }

  // Returns how many sessions are in the room after the change.
  std::size_t join(std::shared_ptr<chat_session> s);
  std::size_t leave(const chat_session& s);

  // Sends text to every session in the room. Callable from any thread.
  void broadcast(std::string text);

  std::shared_ptr<const session_list> sessions() const {
    std::lock_guard lock(mutex_);
    return sessions_;
  }

 private:
  const std::size_t max_backlog_;
  mutable std::mutex mutex_;
  std::shared_ptr<const session_list> sessions_ = std::make_shared<const session_list>();
  std::atomic<std::uint64_t> last_id_{0};
};

// One browser's WebSocket connection. Its stream lives on a strand; its
// reader (run) and every queued write run there.
class chat_session : public std::enable_shared_from_this<chat_session> {
 public:
  chat_session(beast::tcp_stream stream, chat_room& room)
      : ws_(std::move(stream)), queue_(ws_.get_executor()), room_(room), id_(room.next_id()) {}

  // Completes the WebSocket handshake, joins the room and relays what the
  // browser sends until it leaves or is dropped.
  net::awaitable<void> run(http::request<http::string_body> req);

  // Queues one broadcast message for this browser. Callable from any thread.
  void deliver(const std::shared_ptr<const std::string>& msg);

  // Sends a close frame after the messages already queued. Callable from any
  // thread.
  void close();

 private:
  void drop(std::size_t backlog);  // on the strand

  websocket::stream<beast::tcp_stream> ws_;
  serq::serialized_queue queue_;  // on ws_'s strand: one write at a time
  chat_room& room_;
  const std::uint64_t id_;
  std::atomic<std::size_t> backlog_{0};  // bytes queued, not yet written
  std::atomic<std::size_t> peak_backlog_{0};
  std::atomic<bool> dropped_{false};
};

std::size_t chat_room::join(std::shared_ptr<chat_session> s) {
  std::lock_guard lock(mutex_);
  auto next = std::make_shared<session_list>(*sessions_);
  next->push_back(std::move(s));
  sessions_ = std::move(next);
  return sessions_->size();
}

std::size_t chat_room::leave(const chat_session& s) {
  std::lock_guard lock(mutex_);
  auto next = std::make_shared<session_list>(*sessions_);
  std::erase_if(*next, [&](const auto& p) { return p.get() == &s; });
  sessions_ = std::move(next);
  return sessions_->size();
}

void chat_room::broadcast(std::string text) {
  // The one copy of the message that every recipient's write refers to.
  const auto msg = std::make_shared<const std::string>(std::move(text));
  for (const auto& s : *sessions())
    s->deliver(msg);
}

net::awaitable<void> chat_session::run(http::request<http::string_body> req) {
  // Beast's websocket timeouts replace the tcp_stream's: a 30 s handshake
  // limit, and a ping after idle time that closes a browser which is gone.
  beast::get_lowest_layer(ws_).expires_never();
  ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
  ws_.set_option(websocket::stream_base::decorator([](websocket::response_type& res) {
    res.set(http::field::server, BOOST_BEAST_VERSION_STRING " serq-websocket-chat");
  }));
  ws_.read_message_max(max_message_bytes);
  ws_.text(true);  // every message the room sends is text

  if (auto [ec] = co_await ws_.async_accept(req, nothrow_awaitable); ec)
    co_return;
  const std::size_t online = room_.join(shared_from_this());
  log("client ", id_, " joined, ", online, " online");

  beast::flat_buffer buffer;
  for (;;) {
    auto [ec, n] = co_await ws_.async_read(buffer, nothrow_awaitable);
    if (ec)
      break;  // closed by the browser, dropped, or failed
    if (ws_.got_text())
      room_.broadcast(beast::buffers_to_string(buffer.data()));
    buffer.consume(n);
  }
  const std::size_t left = room_.leave(*this);
  log("client ", id_, " left, ", left, " online (peak backlog ", peak_backlog_.load(), " bytes)");
}

void chat_session::deliver(const std::shared_ptr<const std::string>& msg) {
  if (dropped_.load(std::memory_order_relaxed))
    return;
  // Counted before it is queued, so that the limit holds however many
  // threads deliver at once.
  const std::size_t size = msg->size();
  const std::size_t backlog = backlog_.fetch_add(size) + size;
  if (backlog > room_.max_backlog()) {
    backlog_.fetch_sub(size);
    if (!dropped_.exchange(true))
      net::post(ws_.get_executor(), [self = shared_from_this(), backlog] { self->drop(backlog); });
    return;
  }
  std::size_t peak = peak_backlog_.load(std::memory_order_relaxed);
  while (backlog > peak && !peak_backlog_.compare_exchange_weak(peak, backlog)) {
  }

  // Launched by the queue, on the strand, when every message queued before
  // it has been written. The handler keeps the message (and the session, and
  // so the stream and the queue) alive until the write is over; it runs on
  // the queue's executor. An error needs no action here: the reader sees the
  // same broken stream and ends the session.
  queue_.async_enqueue(ws_.async_write(net::buffer(*msg), net::deferred),
                       [self = shared_from_this(), msg](error_code, std::size_t) {
                         self->backlog_.fetch_sub(msg->size());
                       });
}

void chat_session::drop(std::size_t backlog) {
  log("dropping client ", id_, ": ", backlog, " bytes waiting, limit ", room_.max_backlog());
  // Messages that have not started are released now rather than when their
  // turn would come. Closing the socket then fails the write in flight and
  // the pending read at once; the reader leaves the room.
  queue_.cancel();
  beast::get_lowest_layer(ws_).close();
}

void chat_session::close() {
  // Queued like a write, so the close frame follows everything already
  // queued: a serialized_queue takes any composed operation, and this is the
  // co_await form of the same thing deliver() does with a callback.
  net::co_spawn(
      ws_.get_executor(),
      [self = shared_from_this()]() -> net::awaitable<void> {
        co_await self->queue_.async_enqueue(
            self->ws_.async_close(websocket::close_code::going_away, net::deferred),
            nothrow_awaitable);
      },
      net::detached);
}

//----------------------------------------------------------------------------

// The path of a request target, without its query: "/?selftest=4x1000" is "/".
std::string_view path_of(std::string_view target) {
  return target.substr(0, target.find('?'));
}

template <class Body>
http::message_generator respond(const http::request<Body>& req, http::status status,
                                std::string_view content_type, std::string body) {
  http::response<http::string_body> res(status, req.version());
  res.set(http::field::server, BOOST_BEAST_VERSION_STRING " serq-websocket-chat");
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-store");
  res.keep_alive(req.keep_alive());
  res.body() = std::move(body);
  res.prepare_payload();
  if (req.method() == http::verb::head)
    res.body().clear();  // prepare_payload() has set Content-Length already
  return res;
}

http::message_generator handle_request(const http::request<http::string_body>& req) {
  if (req.method() != http::verb::get && req.method() != http::verb::head)
    return respond(req, http::status::method_not_allowed, "text/plain", "GET or HEAD only\n");
  if (path_of(req.target()) != "/")
    return respond(req, http::status::not_found, "text/plain", "not found\n");
  return respond(req, http::status::ok, "text/html; charset=utf-8", std::string(chat_page_html));
}

// One TCP connection: plain HTTP requests until one asks for a WebSocket
// upgrade, which turns the connection into a chat session.
net::awaitable<void> serve_connection(beast::tcp_stream stream, chat_room& room) {
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(16 * 1024);  // the page sends no request bodies
    stream.expires_after(std::chrono::seconds(30));
    if (auto [ec, n] = co_await http::async_read(stream, buffer, parser, nothrow_awaitable); ec)
      break;
    http::request<http::string_body> req = parser.release();

    if (websocket::is_upgrade(req)) {
      if (path_of(req.target()) != "/ws") {
        co_await beast::async_write(
            stream, respond(req, http::status::not_found, "text/plain", "not found\n"),
            nothrow_awaitable);
        break;
      }
      // This coroutine becomes the session's reader; it owns the session
      // until the browser leaves.
      co_await std::make_shared<chat_session>(std::move(stream), room)->run(std::move(req));
      co_return;
    }

    http::message_generator res = handle_request(req);
    const bool keep_alive = res.keep_alive();
    if (auto [ec, n] = co_await beast::async_write(stream, std::move(res), nothrow_awaitable);
        ec || !keep_alive)
      break;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

net::awaitable<void> accept_connections(tcp::acceptor& acceptor, net::io_context& ioc,
                                        chat_room& room) {
  for (;;) {
    // Each connection gets its own strand: its reads, its queued writes and
    // its close never run at once, while connections run on all threads.
    auto [ec, socket] = co_await acceptor.async_accept(net::make_strand(ioc), nothrow_awaitable);
    if (!acceptor.is_open())
      co_return;
    if (ec)
      continue;  // e.g. reset by the peer before it was accepted: not the server's end
    // A small kernel send buffer keeps what a browser has not read in the
    // session's backlog, where the limit sees it, rather than in the kernel.
    socket.set_option(net::socket_base::send_buffer_size(64 * 1024), ec);
    socket.set_option(tcp::no_delay(true), ec);
    net::co_spawn(socket.get_executor(),
                  serve_connection(beast::tcp_stream(std::move(socket)), room), net::detached);
  }
}

int usage() {
  std::cerr << "usage: websocket_chat <address> <port> [--threads N] [--max-backlog BYTES]\n";
  return 2;
}

}  // namespace

int main(int argc, char* argv[]) {
  if (argc < 3)
    return usage();
  std::size_t threads = std::max(2u, std::thread::hardware_concurrency());
  std::size_t max_backlog = 1024 * 1024;
  tcp::endpoint endpoint;
  try {
    const unsigned long port = std::stoul(argv[2]);
    if (port > 65535)
      return usage();
    endpoint = tcp::endpoint(net::ip::make_address(argv[1]), static_cast<unsigned short>(port));
    for (int i = 3; i < argc; ++i) {
      const std::string_view arg = argv[i];
      if (i + 1 == argc)
        return usage();
      if (arg == "--threads")
        threads = std::max<std::size_t>(1, std::stoul(argv[++i]));
      else if (arg == "--max-backlog")
        max_backlog = std::stoul(argv[++i]);
      else
        return usage();
    }
  } catch (const std::exception&) {
    return usage();
  }

  try {
    net::io_context ioc(static_cast<int>(threads));
    chat_room room(max_backlog);

    tcp::acceptor acceptor(net::make_strand(ioc), endpoint);
    std::cout << "listening on " << acceptor.local_endpoint().port() << std::endl;
    net::co_spawn(acceptor.get_executor(), accept_connections(acceptor, ioc, room), net::detached);

    // SIGINT/SIGTERM: stop accepting, send every browser a close frame after
    // what is queued for it, and give them a second to complete the closing
    // handshake; a browser that does not is cut off when the io_context stops.
    net::signal_set signals(ioc, SIGINT, SIGTERM);
    net::steady_timer deadline(ioc);
    signals.async_wait([&](error_code ec, int) {
      if (ec)
        return;
      log("shutting down");
      net::dispatch(acceptor.get_executor(), [&] { acceptor.close(); });
      for (const auto& s : *room.sessions())
        s->close();
      deadline.expires_after(std::chrono::seconds(1));
      deadline.async_wait([&](error_code) { ioc.stop(); });
    });

    std::vector<std::thread> pool;
    for (std::size_t i = 1; i < threads; ++i)
      pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool)
      t.join();
  } catch (const std::exception& e) {
    std::cerr << "websocket_chat: " << e.what() << '\n';
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
