//
// example/serialized_requests.cpp: serq::serialized_queue keeping whole
// request/response exchanges from overlapping on one connection.
//
// The protocol has no request ids: the client writes a request line and the
// server answers with a header line "OK <length>" followed by <length> bytes
// of body. A reply can only be matched to its request if exchanges never
// overlap: a second request written before the first reply has been read in
// full would have its reply read by the wrong caller. Many coroutines share
// the connection, so the connection queues each exchange (write request,
// read header, read body) in a serialized_queue:
//
//   - a single exchange is a composed operation queued with async_enqueue;
//   - a transaction of several exchanges that must be adjacent (ADD then GET,
//     with no other ADD in between) holds the queue's turn from async_acquire;
//   - before a graceful shutdown, async_wait is a barrier that passes once
//     every exchange queued so far has finished, including fire-and-forget
//     requests that nobody awaits.
//
// The server is in-process on loopback and pauses briefly inside each reply,
// so overlapping exchanges would be caught. Exits 0 after checking that every
// reply matched its request.
//

#include <serq.hpp>

// The Asio serq was built on (serq::serq defines SERQ_ASIO_STANDALONE for standalone Asio).
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#include <asio/experimental/parallel_group.hpp>
#else
#include <boost/asio.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#endif

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace net = serq::net;
using net::awaitable;
using net::use_awaitable;
using net::ip::tcp;
using serq::error_code;

namespace {

//----------------------------------------------------------------------------
// One exchange: write a request, read "OK <length>\n", read the body.
//----------------------------------------------------------------------------

// The steps of one exchange, a composed operation in the usual Asio style.
// On its own it is not safe to run twice at once on one socket; the
// connection below makes sure it never is.
struct exchange_op {
  tcp::socket& socket;
  std::string& buffer;                   // bytes read past the previous reply stay here
  std::unique_ptr<std::string> request;  // a stable address while it is written
  enum { starting, writing, reading_header, reading_body } state = starting;
  std::size_t body_length = 0;

  template <class Self>
  void operator()(Self& self, error_code ec = {}, std::size_t n = 0) {
    if (ec)
      return self.complete(ec, std::string());
    switch (state) {
      case starting:
        state = writing;
        net::async_write(socket, net::buffer(*request), std::move(self));
        return;
      case writing:
        state = reading_header;
        net::async_read_until(socket, net::dynamic_buffer(buffer), '\n', std::move(self));
        return;
      case reading_header: {
        const std::string_view header = std::string_view(buffer).substr(0, n);
        if (!header.starts_with("OK ") ||
            std::from_chars(header.data() + 3, header.data() + n - 1, body_length).ec !=
                std::errc()) {
          return self.complete(net::error::invalid_argument, std::string());
        }
        buffer.erase(0, n);
        if (buffer.size() >= body_length)
          return finish(self);
        state = reading_body;
        net::async_read(socket, net::dynamic_buffer(buffer),
                        net::transfer_exactly(body_length - buffer.size()), std::move(self));
        return;
      }
      case reading_body:
        return finish(self);
    }
  }

  template <class Self>
  void finish(Self& self) {
    std::string body = buffer.substr(0, body_length);
    buffer.erase(0, body_length);
    self.complete(error_code(), std::move(body));
  }
};

// Completes with (error_code, reply body).
template <class CompletionToken>
auto async_exchange(tcp::socket& socket, std::string& buffer, std::string request,
                    CompletionToken&& token) {
  return net::async_compose<CompletionToken, void(error_code, std::string)>(
      exchange_op{socket, buffer, std::make_unique<std::string>(std::move(request))}, token,
      socket);
}

//----------------------------------------------------------------------------
// The connection: every exchange takes its turn in a serialized_queue.
//----------------------------------------------------------------------------

class connection {
 public:
  explicit connection(const net::any_io_executor& ex) : socket_(ex), queue_(ex, "connection") {}

  tcp::socket& socket() noexcept { return socket_; }

  // One exchange, queued behind every exchange started before it. The
  // deferred operation is launched only when its turn comes, and its result
  // (error_code, reply body) is passed to token unchanged.
  template <class CompletionToken>
  auto async_request(std::string request, CompletionToken&& token) {
    return queue_.async_enqueue(async_exchange(socket_, buffer_, std::move(request), net::deferred),
                                std::forward<CompletionToken>(token));
  }

  // Several exchanges as one unit: nothing else is triggered until the turn
  // is released or destroyed.
  template <class CompletionToken>
  auto async_acquire(CompletionToken&& token) {
    return queue_.async_acquire(std::forward<CompletionToken>(token));
  }

  // An exchange run under a turn the caller holds. It must not be queued:
  // the queue would wait for the caller's turn to end, which waits for this.
  template <class CompletionToken>
  auto async_request(const serq::turn& held, std::string request, CompletionToken&& token) {
    if (!held)
      throw std::logic_error("async_request: no turn held");
    return async_exchange(socket_, buffer_, std::move(request),
                          std::forward<CompletionToken>(token));
  }

  // Waits until every exchange queued so far has finished, then says goodbye
  // and closes. Returns the server's farewell.
  awaitable<std::string> graceful_close() {
    co_await queue_.async_wait(use_awaitable);
    std::string bye = co_await async_request("QUIT\n", use_awaitable);
    socket_.shutdown(tcp::socket::shutdown_both);
    socket_.close();
    co_return bye;
  }

  std::size_t queued() const noexcept { return queue_.size(); }

 private:
  tcp::socket socket_;
  std::string buffer_;
  serq::serialized_queue queue_;
};

//----------------------------------------------------------------------------
// The server: one request at a time, each reply split around a short pause.
//----------------------------------------------------------------------------

awaitable<void> serve_one(tcp::acceptor& acceptor) {
  tcp::socket socket = co_await acceptor.async_accept(use_awaitable);
  // Replies go out in two writes; without this, Nagle's algorithm holds the
  // body back until the client's delayed ACK of the header, 40 ms a reply.
  socket.set_option(tcp::no_delay(true));
  net::steady_timer pause(socket.get_executor());
  std::string buffer;
  std::int64_t total = 0;
  std::uint32_t rng = 12345;
  for (;;) {
    auto [ec, n] = co_await net::async_read_until(socket, net::dynamic_buffer(buffer), '\n',
                                                  net::as_tuple(use_awaitable));
    if (ec)
      co_return;
    const std::string line = buffer.substr(0, n - 1);
    buffer.erase(0, n);

    std::string body;
    if (line.starts_with("ECHO ")) {
      body = line.substr(5);
    } else if (line.starts_with("ADD ")) {
      std::int64_t v = 0;
      std::from_chars(line.data() + 4, line.data() + line.size(), v);
      body = std::to_string(total += v);
    } else if (line == "GET") {
      body = std::to_string(total);
    } else if (line == "QUIT") {
      body = "bye";
    } else {
      body = "unknown request";
    }
    const std::string header = "OK " + std::to_string(body.size()) + '\n';
    co_await net::async_write(socket, net::buffer(header), use_awaitable);
    // Up to half a millisecond between header and body: time enough for an
    // unserialized client to write another request or read a wrong reply.
    rng = rng * 1664525u + 1013904223u;
    pause.expires_after(std::chrono::microseconds(rng % 500));
    co_await pause.async_wait(use_awaitable);
    co_await net::async_write(socket, net::buffer(body), use_awaitable);
    if (line == "QUIT")
      co_return;
  }
}

//----------------------------------------------------------------------------
// The client: many coroutines sharing one connection.
//----------------------------------------------------------------------------

constexpr int echo_workers = 16;
constexpr int echoes_per_worker = 20;
constexpr int transaction_workers = 4;
constexpr int transactions_per_worker = 10;
constexpr int notes = 50;

struct results {
  int echoes_ok = 0;
  int transactions_ok = 0;
  int notes_ok = 0;
  std::int64_t added = 0;
  int failures = 0;
};

awaitable<void> echo_worker(connection& conn, int id, results& r) {
  for (int i = 0; i < echoes_per_worker; ++i) {
    const std::string text = "worker " + std::to_string(id) + " says " + std::to_string(i);
    const std::string reply = co_await conn.async_request("ECHO " + text + '\n', use_awaitable);
    if (reply == text) {
      ++r.echoes_ok;
    } else {
      std::cout << "serialized_requests: sent \"" << text << "\", got \"" << reply << "\"\n";
      ++r.failures;
    }
  }
}

awaitable<void> transaction_worker(connection& conn, int id, results& r) {
  for (int i = 0; i < transactions_per_worker; ++i) {
    const std::int64_t amount = id * 100 + i + 1;
    // ADD then GET must see the same total: no other ADD may run between
    // them, so both run under one turn.
    serq::turn held = co_await conn.async_acquire(use_awaitable);
    const std::string after_add =
        co_await conn.async_request(held, "ADD " + std::to_string(amount) + '\n', use_awaitable);
    const std::string got = co_await conn.async_request(held, "GET\n", use_awaitable);
    held.release();  // or let it go out of scope
    r.added += amount;
    if (after_add == got) {
      ++r.transactions_ok;
    } else {
      std::cout << "serialized_requests: ADD left " << after_add << " but GET saw " << got << '\n';
      ++r.failures;
    }
  }
}

awaitable<void> client(tcp::endpoint ep, results& r) {
  const auto ex = co_await net::this_coro::executor;
  connection conn(ex);
  co_await conn.socket().async_connect(ep, use_awaitable);
  conn.socket().set_option(tcp::no_delay(true));

  // Many coroutines at once, each awaiting its own exchanges.
  using spawn_op = decltype(net::co_spawn(ex, echo_worker(conn, 0, r), net::deferred));
  std::vector<spawn_op> workers;
  for (int i = 0; i < echo_workers; ++i) {
    workers.push_back(net::co_spawn(ex, echo_worker(conn, i, r), net::deferred));
  }
  for (int i = 0; i < transaction_workers; ++i) {
    workers.push_back(net::co_spawn(ex, transaction_worker(conn, i, r), net::deferred));
  }
  auto [order, errors] = co_await net::experimental::make_parallel_group(std::move(workers))
                             .async_wait(net::experimental::wait_for_all(), use_awaitable);
  for (const std::exception_ptr& e : errors) {
    if (e)
      ++r.failures;
  }

  // Fire-and-forget: nobody awaits these, so the barrier in graceful_close()
  // is what keeps the connection open until they are done.
  for (int i = 0; i < notes; ++i) {
    const std::string text = "note " + std::to_string(i);
    conn.async_request("ECHO " + text + '\n', [&r, text](error_code ec, std::string reply) {
      if (!ec && reply == text) {
        ++r.notes_ok;
      } else {
        ++r.failures;
      }
    });
  }
  std::cout << "serialized_requests: " << conn.queued()
            << " exchanges queued; waiting for them before closing\n";

  const std::string bye = co_await conn.graceful_close();
  if (bye != "bye" || r.notes_ok != notes)
    ++r.failures;
}

}  // namespace

int main() {
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  results r;
  std::exception_ptr failure;
  const auto started = std::chrono::steady_clock::now();
  net::co_spawn(ioc, serve_one(acceptor), net::detached);
  net::co_spawn(ioc, client(acceptor.local_endpoint(), r),
                [&](std::exception_ptr e) { failure = e; });
  ioc.run();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();

  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      std::cout << "serialized_requests: " << e.what() << '\n';
    }
    ++r.failures;
  }
  const std::int64_t expected_added = [] {
    std::int64_t sum = 0;
    for (int id = 0; id < transaction_workers; ++id) {
      for (int i = 0; i < transactions_per_worker; ++i)
        sum += id * 100 + i + 1;
    }
    return sum;
  }();
  std::cout << "serialized_requests: " << r.echoes_ok << '/' << echo_workers * echoes_per_worker
            << " echoes, " << r.transactions_ok << '/'
            << transaction_workers * transactions_per_worker << " transactions, " << r.notes_ok
            << '/' << notes << " notes matched in " << ms << " ms\n";
  const bool ok = r.failures == 0 && r.echoes_ok == echo_workers * echoes_per_worker &&
                  r.transactions_ok == transaction_workers * transactions_per_worker &&
                  r.notes_ok == notes && r.added == expected_added;
  std::cout << (ok ? "OK\n" : "FAILED\n");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
