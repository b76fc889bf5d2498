//
// example/redis_pipeline.hpp: a pipelining Redis (RESP2) client on one
// serq::queued_writer. Used by example/redis_pipeline.cpp and by the
// benchmark (test/bench), which runs the same client beside redis-benchmark.
//
// Any number of callers share one TCP connection. Each call sends one command
// and completes with its reply. Requests go through the writer, which writes
// each one whole and in call order, gathering those that queue up while a
// write is in flight into one vectored write. One reader coroutine parses the
// replies. Redis answers the commands of a connection in the order it received
// them, so the n-th reply belongs to the n-th command written: the client keeps
// one reply slot per command in a FIFO and hands each reply to the slot at its
// front.
//
// The one rule that makes this correct: a command's slot must take its place
// in the FIFO in the same order as the command's bytes take their place on
// the wire. With callers on several threads, two callers may race between
// "reserve my slot" and "queue my bytes", and the replies would go to the
// wrong callers. So both happen under one lock (submit() below). The writer's
// async_send only queues the bytes (it never writes them from a foreign thread,
// never blocks, never completes inside the call), and its queue order is its
// wire order, so the lock is held for a few hundred nanoseconds. On a single
// thread the lock is uncontended; the same code serves both.
//

#ifndef SERQ_EXAMPLE_REDIS_PIPELINE_HPP
#define SERQ_EXAMPLE_REDIS_PIPELINE_HPP

#include <serq.hpp>

// The Asio serq was built on (serq::serq defines SERQ_ASIO_STANDALONE for standalone Asio).
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#else
#include <boost/asio.hpp>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace redis_pipeline {

namespace net = serq::net;
using net::ip::tcp;
using serq::error_code;

// One RESP2 reply. Arrays are not supported: SET, GET and DEL never return one.
struct reply {
  enum class kind { simple, error, integer, bulk, null };
  kind type = kind::null;
  std::string value;  // the text of a simple string, error or bulk string; an integer's digits
};

// The start of a command of `argc` arguments as RESP sends it (an array of
// bulk strings): the array's header and the first arguments, `first`.
inline std::string encode_head(std::size_t argc, std::initializer_list<std::string_view> first) {
  std::string out;
  out.reserve(16 + first.size() * 16);
  out += '*';
  out += std::to_string(argc);
  out += "\r\n";
  for (std::string_view a : first) {
    out += '$';
    out += std::to_string(a.size());
    out += "\r\n";
    out += a;
    out += "\r\n";
  }
  return out;
}

// A whole command.
inline std::string encode(std::initializer_list<std::string_view> args) {
  return encode_head(args.size(), args);
}

// Parses the reply at the front of `in` into `out`. Returns the bytes it used,
// or 0 when `in` does not hold a whole reply yet. Throws std::runtime_error on
// anything else.
inline std::size_t parse(std::string_view in, reply& out) {
  const std::size_t eol = in.find("\r\n");
  if (eol == std::string_view::npos)
    return 0;
  if (eol == 0)
    throw std::runtime_error("RESP: empty line");
  const std::string_view line = in.substr(1, eol - 1);
  switch (in[0]) {
    case '+':
    case '-':
    case ':':
      out.type = in[0] == '+'   ? reply::kind::simple
                 : in[0] == '-' ? reply::kind::error
                                : reply::kind::integer;
      out.value.assign(line);
      return eol + 2;
    case '$': {
      long long length = 0;
      const auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), length);
      if (ec != std::errc() || end != line.data() + line.size() || length < -1)
        throw std::runtime_error("RESP: bad bulk length");
      if (length == -1) {
        out.type = reply::kind::null;
        out.value.clear();
        return eol + 2;
      }
      const std::size_t size = static_cast<std::size_t>(length);
      if (in.size() < eol + 2 + size + 2)
        return 0;
      if (in.substr(eol + 2 + size, 2) != "\r\n")
        throw std::runtime_error("RESP: bulk string not terminated");
      out.type = reply::kind::bulk;
      out.value.assign(in.substr(eol + 2, size));
      return eol + 2 + size + 2;
    }
    default:
      throw std::runtime_error("RESP: unsupported reply type '" + std::string(1, in[0]) + "'");
  }
}

class client {
 public:
  using executor_type = tcp::socket::executor_type;

  // Takes a connected socket (or one that will be connected through
  // next_layer() before run()).
  explicit client(tcp::socket socket) : writer_(std::move(socket)) {}

  executor_type get_executor() const noexcept { return writer_.get_executor(); }
  tcp::socket& socket() noexcept { return writer_.next_layer(); }
  serq::queued_writer<tcp::socket>& writer() noexcept { return writer_; }

  // Sends one command and completes with its reply: void(error_code, reply).
  // `request` is the encoded command, as any message the writer's async_send
  // owns: a std::string (encode), or parts such as a shared, prebuilt head
  // and a small tail (see set_get_loop). May be called from any thread, by
  // any number of callers at once. A Redis error reply is a reply
  // (kind::error), not an error_code; the error_code reports a connection
  // failure.
  template <class Request, class CompletionToken>
  auto async_command(Request request, CompletionToken&& token) {
    return net::async_initiate<CompletionToken, void(error_code, reply)>(
        [this](auto handler, Request req) {
          bool direct = false;
          using handler_executor = net::associated_executor_t<decltype(handler), executor_type>;
          if constexpr (std::is_same_v<handler_executor, executor_type>)
            direct = net::get_associated_executor(handler, get_executor()) == get_executor();
          submit(slot{std::move(handler), direct}, std::move(req));
        },
        token, std::move(request));
  }

  // Reads and dispatches replies until the connection closes or fails, then
  // fails every call still waiting. Run it once, on the socket's executor:
  // net::co_spawn(c.get_executor(), c.run(), ...).
  net::awaitable<void> run() {
    std::vector<char> buffer(64 * 1024);
    std::size_t begin = 0;  // [begin, end): received, not parsed yet
    std::size_t end = 0;
    reply r;
    for (;;) {
      if (begin == end) {
        begin = end = 0;
      } else if (buffer.size() - end < 4096) {
        std::memmove(buffer.data(), buffer.data() + begin, end - begin);
        end -= begin;
        begin = 0;
        if (buffer.size() - end < 4096)
          buffer.resize(buffer.size() * 2);  // one reply larger than the buffer
      }
      auto [ec, n] = co_await writer_.async_read_some(
          net::buffer(buffer.data() + end, buffer.size() - end), net::as_tuple(net::use_awaitable));
      if (ec) {
        fail(ec);
        co_return;
      }
      end += n;
      try {
        while (const std::size_t used = parse({buffer.data() + begin, end - begin}, r)) {
          begin += used;
          deliver(std::move(r));
        }
      } catch (const std::runtime_error&) {
        fail(net::error::invalid_argument);  // the stream cannot be trusted any more
        co_return;
      }
    }
  }

  // Writes what is queued, then shuts the sending side down: the server
  // answers what it got and closes, and run() ends.
  template <class CompletionToken>
  auto async_close(CompletionToken&& token) {
    return writer_.async_close(std::forward<CompletionToken>(token));
  }

 private:
  // A caller waiting for its reply.
  struct slot {
    net::any_completion_handler<void(error_code, reply)> handler;
    // The handler's executor is the socket's, which runs the reader: the
    // reader may call it directly (what dispatch would do, minus the
    // type-erased detour).
    bool direct = false;
  };

  // A write error leaves the connection's framing unknown: close the socket,
  // so that run() fails every waiting call. Runs on the socket's executor.
  struct on_written {
    client* self;
    void operator()(const error_code& ec, std::size_t) const {
      if (ec) {
        error_code ignored;
        self->writer_.next_layer().close(ignored);
      }
    }
  };

  template <class Request>
  void submit(slot s, Request request) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (failed_) {
      lock.unlock();
      finish(std::move(s), net::error::not_connected, {}, false);
      return;
    }
    // The slot and the bytes take their places under the same lock: the
    // writer writes messages in the order async_send was called, so the n-th
    // slot is the n-th command on the wire, whatever thread each caller runs
    // on.
    slots_.push_back(std::move(s));
    writer_.async_send(std::move(request), on_written{this});
  }

  void deliver(reply&& r) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (slots_.empty())
      throw std::runtime_error("RESP: a reply to no command");
    slot s = std::move(slots_.front());
    slots_.pop_front();
    lock.unlock();
    finish(std::move(s), {}, std::move(r), true);
  }

  void fail(const error_code& ec) {
    std::deque<slot> waiting;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      failed_ = true;
      waiting.swap(slots_);
    }
    for (slot& s : waiting)
      finish(std::move(s), ec, {}, false);
  }

  // Runs the caller's handler on its own executor: right here when this
  // thread runs that executor already (a reply), else posted. Never inside
  // async_command (may_run_here false).
  void finish(slot s, error_code ec, reply r, bool may_run_here) {
    if (may_run_here && s.direct) {
      std::move(s.handler)(ec, std::move(r));
      return;
    }
    auto call = net::append(std::move(s.handler), ec, std::move(r));
    if (may_run_here)
      net::dispatch(get_executor(), std::move(call));
    else
      net::post(get_executor(), std::move(call));
  }

  serq::queued_writer<tcp::socket> writer_;
  std::mutex mutex_;
  std::deque<slot> slots_;  // one per command written and not answered, in wire order
  bool failed_ = false;
};

// What a run of set_get_loop checked.
struct verdict {
  std::atomic<std::size_t> commands{0};
  std::atomic<std::size_t> wrong{0};
  std::mutex mutex;
  std::string first_wrong;  // describes the first wrong reply

  void note_wrong(const std::string& what) {
    if (wrong++ == 0) {
      std::lock_guard<std::mutex> lock(mutex);
      first_wrong = what;
    }
  }
};

// The value of a caller's i-th SET: 3 bytes that change from one to the next.
inline std::string value_for(std::size_t caller, std::size_t i) {
  static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  const std::size_t v = caller * 7919 + i;
  return {digits[v % 36], digits[v / 36 % 36], digits[v / 1296 % 36]};
}

inline bool is(const reply& r, reply::kind type, std::string_view value) {
  return r.type == type && r.value == value;
}

// One caller with one command in flight: `pairs` times SET key <3 bytes>,
// then GET key, checking each reply. The key is this caller's own, so a GET
// returns what this caller set just before; a reply matched to the wrong
// caller (another key's value) is seen.
//
// The requests are built without a copy per command: the GET and the start
// of the SET ("*3 SET <key>") are built once and shared; each SET adds the
// value's bulk string ("$3\r\nxyz\r\n") held by value. The writer writes
// the parts as one message.
inline net::awaitable<void> set_get_loop(client& c, std::size_t caller, std::string key,
                                         std::size_t pairs, verdict& v) {
  using shared_string = std::shared_ptr<const std::string>;
  const auto get = std::make_shared<const std::string>(encode({"GET", key}));
  const auto set_head = std::make_shared<const std::string>(encode_head(3, {"SET", key}));
  for (std::size_t i = 0; i < pairs; ++i) {
    const std::string value = value_for(caller, i);
    const std::array<char, 9> bulk{'$', '3', '\r', '\n', value[0], value[1], value[2], '\r', '\n'};
    std::pair<shared_string, std::array<char, 9>> set{set_head, bulk};  // not inside co_await:
                                                                        // g++ 12 rejects that
    reply r = co_await c.async_command(std::move(set), net::use_awaitable);
    if (!is(r, reply::kind::simple, "OK"))
      v.note_wrong("SET " + key + ": " + r.value);
    r = co_await c.async_command(get, net::use_awaitable);
    if (!is(r, reply::kind::bulk, value))
      v.note_wrong("GET " + key + ": '" + r.value + "', expected '" + value + "'");
    v.commands += 2;
  }
}

}  // namespace redis_pipeline

#endif  // SERQ_EXAMPLE_REDIS_PIPELINE_HPP
