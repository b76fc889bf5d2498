//
// example/redis_pipeline.cpp: many callers pipelining Redis commands over one
// connection, through a serq::queued_writer.
//
//   redis_pipeline [--host H] [--port P] [--clients N] [--pairs M] [--io-threads T]
//                  [--caller-threads K]
//
// Connects to redis-server (default 127.0.0.1:6379) once. N coroutines
// (default 32) each keep one command in flight: M times (default 2000)
// SET <own key> <3 bytes>, then GET <own key>, checking every reply. At the
// same time K plain threads (default 2), which do not run the io_context,
// do the same with net::use_future, and the io_context runs on T threads
// (default 2), so callers on several threads share the connection. The
// client (redis_pipeline.hpp) correlates replies with callers by the order
// of the commands on the wire; see the comment at its top for the recipe.
// Every reply is checked; the program exits 0 only if all were right.
//
// ctest runs it against a redis-server it starts on a free loopback port
// (example/redis_pipeline_test.sh). The benchmark runs the same client beside
// redis-benchmark (test/bench, case 9).
//

#include "redis_pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <future>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace net = serq::net;
using net::ip::tcp;
using redis_pipeline::client;
using redis_pipeline::reply;

namespace {

struct options {
  std::string host = "127.0.0.1";
  std::string port = "6379";
  std::size_t clients = 32;
  std::size_t pairs = 2000;
  std::size_t io_threads = 2;
  std::size_t caller_threads = 2;
};

options parse_options(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc)
      throw std::invalid_argument(
          "usage: redis_pipeline [--host H] [--port P] [--clients N] "
          "[--pairs M] [--io-threads T] [--caller-threads K]");
    const std::string v = argv[++i];
    if (a == "--host")
      o.host = v;
    else if (a == "--port")
      o.port = v;
    else if (a == "--clients")
      o.clients = std::stoul(v);
    else if (a == "--pairs")
      o.pairs = std::stoul(v);
    else if (a == "--io-threads")
      o.io_threads = std::max<std::size_t>(1, std::stoul(v));
    else if (a == "--caller-threads")
      o.caller_threads = std::stoul(v);
    else
      throw std::invalid_argument("unknown option " + a);
  }
  return o;
}

// A caller on a plain thread: the same loop as set_get_loop, blocking on
// futures. Its key is its own.
void thread_caller(client& c, std::size_t caller, std::size_t pairs, redis_pipeline::verdict& v) {
  using redis_pipeline::encode;
  const std::string key = "serq:example:thread:" + std::to_string(caller);
  for (std::size_t i = 0; i < pairs; ++i) {
    const std::string value = redis_pipeline::value_for(caller, i);
    reply r = c.async_command(encode({"SET", key, value}), net::use_future).get();
    if (!is(r, reply::kind::simple, "OK"))
      v.note_wrong("SET " + key + ": " + r.value);
    r = c.async_command(encode({"GET", key}), net::use_future).get();
    if (!is(r, reply::kind::bulk, value))
      v.note_wrong("GET " + key + ": '" + r.value + "', expected '" + value + "'");
    v.commands += 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse_options(argc, argv);
    net::io_context ioc(static_cast<int>(o.io_threads));

    // The socket lives on a strand: the reader and the writer's own work
    // never touch it at once, whichever io thread runs them. Callers run
    // anywhere.
    client c(tcp::socket(net::make_strand(ioc)));
    tcp::resolver resolver(ioc);
    net::connect(c.socket(), resolver.resolve(o.host, o.port));
    c.socket().set_option(tcp::no_delay(true));

    std::exception_ptr reader_error;
    net::co_spawn(c.get_executor(), c.run(), [&](std::exception_ptr e) { reader_error = e; });

    redis_pipeline::verdict v;
    std::atomic<std::size_t> callers_left{o.clients + o.caller_threads};
    std::promise<void> callers_done;
    auto one_done = [&] {
      if (--callers_left == 0)
        callers_done.set_value();
    };
    std::exception_ptr caller_error;
    std::mutex caller_error_mutex;
    auto note = [&](std::exception_ptr e) {
      if (e) {
        std::lock_guard<std::mutex> lock(caller_error_mutex);
        if (!caller_error)
          caller_error = e;
      }
      one_done();
    };

    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < o.clients; ++i)
      net::co_spawn(
          ioc,
          redis_pipeline::set_get_loop(c, i, "serq:example:coro:" + std::to_string(i), o.pairs, v),
          note);

    std::vector<std::thread> io;
    for (std::size_t t = 0; t < o.io_threads; ++t)
      io.emplace_back([&] { ioc.run(); });
    std::vector<std::thread> callers;
    for (std::size_t t = 0; t < o.caller_threads; ++t)
      callers.emplace_back([&, t] {
        try {
          thread_caller(c, o.clients + t, o.pairs, v);
          note(nullptr);
        } catch (...) {
          note(std::current_exception());
        }
      });
    for (auto& t : callers)
      t.join();
    callers_done.get_future().wait();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // Every caller has its replies: close the connection politely. The server
    // closes its side, the reader sees the end of the stream, and the
    // io_context runs out of work.
    c.async_close(net::use_future).get();
    for (auto& t : io)
      t.join();

    if (caller_error)
      std::rethrow_exception(caller_error);
    const std::size_t expected = (o.clients + o.caller_threads) * o.pairs * 2;
    std::cout << "redis_pipeline: " << o.clients << " coroutines and " << o.caller_threads
              << " threads on " << o.io_threads << " io thread(s), one connection: " << v.commands
              << " of " << expected << " commands answered, " << v.wrong << " wrong, "
              << static_cast<long long>(static_cast<double>(v.commands) / seconds)
              << " commands/s\n";
    if (v.wrong != 0) {
      std::cout << "redis_pipeline: first wrong reply: " << v.first_wrong << "\nFAILED\n";
      return EXIT_FAILURE;
    }
    if (v.commands != expected) {
      std::cout << "FAILED\n";
      return EXIT_FAILURE;
    }
    (void)reader_error;  // the end of the stream, or the socket closed after it
    std::cout << "OK\n";
    return EXIT_SUCCESS;
  } catch (const std::exception& e) {
    std::cerr << "redis_pipeline: " << e.what() << "\nFAILED\n";
    return EXIT_FAILURE;
  }
}
