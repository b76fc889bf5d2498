//
// example/future_client.cpp: driving a serq::queued_writer from plain threads
// with net::use_future.
//
// The io_context runs in a thread of its own. main() and a few other plain
// threads, none of them running the io_context, send requests through one
// shared writer and block on std::future results. The writer's member
// functions may be called from any thread, and whole messages never
// interleave on the wire, so the threads need no lock of their own. A small
// in-process server acknowledges every request line with "ack <line>"; the
// program checks that each request was acknowledged exactly once, then shows
// how a write error reaches a future, and exits 0.
//

#include <serq.hpp>

// The Asio serq was built on (serq::serq defines SERQ_ASIO_STANDALONE for standalone Asio).
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#else
#include <boost/asio.hpp>
#endif

#include <atomic>
#include <cstdlib>
#include <future>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace net = serq::net;
using net::awaitable;
using net::use_awaitable;
using net::ip::tcp;

namespace {

constexpr int sender_threads = 4;         // main() plus three more
constexpr int requests_per_thread = 250;  // each waits for its write
constexpr int pipelined_requests = 200;   // sent at once, then waited for
constexpr int total_requests = sender_threads * requests_per_thread + pipelined_requests;

// The in-process server: acknowledges every line of one connection.
awaitable<void> serve_one(tcp::acceptor& acceptor) {
  serq::queued_writer<tcp::socket> writer(co_await acceptor.async_accept(use_awaitable));
  std::string buffer;
  for (;;) {
    auto [ec, n] = co_await net::async_read_until(writer, net::dynamic_buffer(buffer), '\n',
                                                  net::as_tuple(use_awaitable));
    if (ec)
      break;  // the client hung up
    writer.async_send("ack " + buffer.substr(0, n), net::detached);
    buffer.erase(0, n);
  }
  // Let the acknowledgements already queued go out before the socket closes.
  co_await writer.async_flush(net::as_tuple(use_awaitable));
}

// Reads count acknowledgements on the client's strand. Reads go through the
// writer too, which forwards them to its socket.
awaitable<std::map<std::string, int>> read_acks(serq::queued_writer<tcp::socket>& writer,
                                                int count) {
  std::map<std::string, int> seen;
  std::string buffer;
  for (int i = 0; i < count; ++i) {
    std::size_t n =
        co_await net::async_read_until(writer, net::dynamic_buffer(buffer), '\n', use_awaitable);
    ++seen[buffer.substr(0, n)];
    buffer.erase(0, n);
  }
  co_return seen;
}

std::string request(int thread, int i) {
  return "request " + std::to_string(thread) + '.' + std::to_string(i) + '\n';
}

}  // namespace

int main() {
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  net::co_spawn(ioc, serve_one(acceptor), net::detached);

  // The client's socket lives on a strand: the writer's own work and the ack
  // reader then never touch it at once, whichever thread runs them.
  serq::queued_writer<tcp::socket> writer(net::make_strand(ioc));

  auto work = net::make_work_guard(ioc);
  std::thread io_thread([&] { ioc.run(); });

  int status = EXIT_SUCCESS;
  try {
    // Nothing else uses the socket yet, so connecting from this thread is fine.
    writer.next_layer().async_connect(acceptor.local_endpoint(), net::use_future).get();

    // Reads are started on the socket's strand, not from this thread.
    std::future<std::map<std::string, int>> acks =
        net::co_spawn(writer.get_executor(), read_acks(writer, total_requests), net::use_future);

    // One request at a time per thread: get() waits until the whole line has
    // been written, and rethrows the write's error as serq::system_error.
    std::atomic<int> failed_sends{0};
    auto send_requests = [&](int thread) {
      try {
        for (int i = 0; i < requests_per_thread; ++i) {
          std::future<std::size_t> written = writer.async_send(request(thread, i), net::use_future);
          if (written.get() != request(thread, i).size())
            ++failed_sends;
        }
      } catch (const serq::system_error& e) {
        std::cout << "future_client: thread " << thread << ": " << e.code().message() << '\n';
        ++failed_sends;
      }
    };
    std::vector<std::thread> senders;
    for (int t = 1; t < sender_threads; ++t)
      senders.emplace_back(send_requests, t);
    send_requests(0);
    for (auto& t : senders)
      t.join();
    if (failed_sends != 0)
      throw std::runtime_error("some requests were not written");

    // Pipelined: start every write, then wait. async_write borrows the bytes,
    // so the strings must live until their futures are ready.
    std::vector<std::string> batch;
    std::vector<std::future<std::size_t>> pending;
    for (int i = 0; i < pipelined_requests; ++i)
      batch.push_back(request(sender_threads, i));
    for (const std::string& r : batch) {
      pending.push_back(writer.async_write(net::buffer(r), net::use_future));
    }
    for (auto& f : pending)
      f.get();
    writer.async_flush(net::use_future).get();

    // Every request acknowledged exactly once, intact.
    const std::map<std::string, int> seen = acks.get();
    int good = 0;
    for (int t = 0; t <= sender_threads; ++t) {
      const int n = t < sender_threads ? requests_per_thread : pipelined_requests;
      for (int i = 0; i < n; ++i) {
        auto it = seen.find("ack " + request(t, i));
        if (it != seen.end() && it->second == 1)
          ++good;
      }
    }
    std::cout << "future_client: " << good << " of " << total_requests
              << " requests acknowledged exactly once\n";
    if (good != total_requests || seen.size() != static_cast<std::size_t>(total_requests)) {
      status = EXIT_FAILURE;
    }

    // Errors arrive as exceptions from get(). Shut down the sending side (on
    // the socket's strand, as every other use of the socket), then write.
    net::dispatch(writer.get_executor(), net::use_future([&writer] {
                    writer.next_layer().shutdown(tcp::socket::shutdown_send);
                  }))
        .get();
    try {
      writer.async_send(std::string("too late\n"), net::use_future).get();
      std::cout << "future_client: a write after shutdown succeeded\n";
      status = EXIT_FAILURE;
    } catch (const serq::system_error& e) {
      // The writer has failed for good: error() keeps the first error.
      std::cout << "future_client: write after shutdown failed as expected: " << e.code().message()
                << " (writer.error(): " << writer.error().message() << ")\n";
      if (writer.error() != e.code())
        status = EXIT_FAILURE;
    }

    net::dispatch(writer.get_executor(),
                  net::use_future([&writer] { writer.next_layer().close(); }))
        .get();
  } catch (const std::exception& e) {
    std::cout << "future_client: " << e.what() << '\n';
    status = EXIT_FAILURE;
    ioc.stop();  // the server may still be waiting for this client
  }

  // The server coroutine ends when it sees the client hang up; then the
  // io_context runs out of work.
  work.reset();
  io_thread.join();
  std::cout << (status == EXIT_SUCCESS ? "OK\n" : "FAILED\n");
  return status;
}
