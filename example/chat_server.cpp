//
// example/chat_server.cpp: a TCP chat room built on serq::queued_writer.
//
// Every line a client sends is relayed to every client in the room (the
// sender included). Each session owns a serq::queued_writer<tcp::socket>, so
// the room can hand a message to any session from any thread without caring
// whether that session is already writing: the writer keeps whole lines in
// order and never interleaves them. A broadcast allocates the line once and
// shares it, as a std::shared_ptr<const std::string>, across every writer.
//
// Slow clients. A session's writer turns unwritable when more than its high
// watermark of bytes is waiting for that client. A sender's session then
// waits (async_wait_writable) before reading the sender's next line, which
// carries TCP's backpressure through the room instead of buffering without
// bound; and each writer's stall deadline (set_stall_timeout) drops a client
// that accepts no bytes at all for a time limit, so one stalled reader cannot
// hold up the room for long: its writer fails with timed_out, which fails its
// pending sends and wakes the senders waiting for it.
//
// Usage:
//   chat_server [--port P] [--threads T] [--drop-after MS]
//       Serves on 127.0.0.1:P (default 5555) until SIGINT or SIGTERM.
//       Try it with a few `nc 127.0.0.1 5555`.
//   chat_server --demo [--clients N] [--seconds S] [--slow K] [--threads T] [--drop-after MS]
//       Starts the server on an ephemeral loopback port with N talking
//       clients (default 8) and K clients that never read (default 1). The
//       talkers send for S seconds (default 2), then each checks that it got
//       every talker's messages intact and in order; the demo also checks that
//       every silent client was dropped. Exits 0 only if everything checked out.
//   --drop-after MS: the stall deadline, how long a client may accept no
//       bytes at all before it is dropped (default 5000, 2000 in the demo).
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
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <syncstream>
#include <thread>
#include <utility>
#include <vector>

namespace net = serq::net;
using net::awaitable;
using net::use_awaitable;
using net::ip::tcp;
using namespace net::experimental::awaitable_operators;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

constexpr auto nothrow_awaitable = net::as_tuple(use_awaitable);

// Longer lines end the session: a client cannot make the server buffer
// without bound while it waits for a newline.
constexpr std::size_t max_line_length = 64 * 1024;

template <class... Args>
void log(const Args&... args) {
  std::osyncstream out(std::cout);
  out << "chat_server: ";
  // Flushed when out is destroyed, so that a log piped to a file keeps up.
  (out << ... << args) << '\n' << std::flush;
}

//----------------------------------------------------------------------------
// The server
//----------------------------------------------------------------------------

struct server_options {
  milliseconds drop_after{5000};
  bool log_joins = true;
};

class room;

class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, room& r, std::uint64_t id);

  std::uint64_t id() const noexcept { return id_; }

  // Starts reading; the session joins the room and stays until its client
  // leaves or is dropped.
  void start();

  // Queues one line for this client. Callable from any thread.
  void deliver(const std::shared_ptr<const std::string>& line);

  // Completes once this client's writer is writable again, or has failed
  // (the session is then going away).
  awaitable<void> wait_writable();

  // Closes the connection. Callable from any thread.
  void close();

 private:
  awaitable<void> read_lines();
  // A send failed: if the writer's stall deadline passed, the client is
  // dropped (once).
  void on_sent(serq::error_code ec);
  void do_close();  // on the session's strand

  serq::queued_writer<tcp::socket> writer_;
  room& room_;
  std::uint64_t id_;
  std::atomic<bool> dropped_{false};
  bool closed_ = false;  // on the strand
};

class room {
 public:
  explicit room(server_options opts) : opts_(opts) {}

  const server_options& options() const noexcept { return opts_; }
  std::uint64_t next_id() noexcept { return ++last_id_; }

  void join(std::shared_ptr<session> s) {
    const std::uint64_t id = s->id();
    std::size_t n;
    {
      std::lock_guard lock(mutex_);
      sessions_.push_back(std::move(s));
      n = sessions_.size();
    }
    if (opts_.log_joins)
      log("client ", id, " joined, ", n, " in the room");
  }

  void leave(const session& s) {
    std::size_t n;
    {
      std::lock_guard lock(mutex_);
      std::erase_if(sessions_, [&](const auto& p) { return p.get() == &s; });
      n = sessions_.size();
    }
    if (opts_.log_joins)
      log("client ", s.id(), " left, ", n, " in the room");
  }

  // Hands one shared copy of line to every session; returns the recipients
  // so that the sender can wait for them to drain.
  std::vector<std::shared_ptr<session>> broadcast(std::string line) {
    auto shared = std::make_shared<const std::string>(std::move(line));
    std::vector<std::shared_ptr<session>> recipients = snapshot();
    for (const auto& s : recipients)
      s->deliver(shared);
    return recipients;
  }

  std::vector<std::shared_ptr<session>> snapshot() const {
    std::lock_guard lock(mutex_);
    return sessions_;
  }

  void note_pending(std::size_t bytes) noexcept {
    std::size_t seen = max_pending_.load(std::memory_order_relaxed);
    while (bytes > seen && !max_pending_.compare_exchange_weak(seen, bytes)) {
    }
  }
  void note_dropped() noexcept { dropped_.fetch_add(1); }

  std::size_t max_pending() const noexcept { return max_pending_.load(); }
  std::size_t dropped() const noexcept { return dropped_.load(); }

 private:
  server_options opts_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<session>> sessions_;
  std::atomic<std::uint64_t> last_id_{0};
  std::atomic<std::size_t> max_pending_{0};
  std::atomic<std::size_t> dropped_{0};
};

session::session(tcp::socket socket, room& r, std::uint64_t id)
    : writer_(std::move(socket)), room_(r), id_(id) {
  // Small watermarks keep a chat room's memory per client small; the
  // defaults (32 KiB / 64 KiB) suit bulk transfers better.
  writer_.set_watermarks(16 * 1024, 64 * 1024);
  // A client that takes no bytes at all for this long is gone or stuck.
  writer_.set_stall_timeout(room_.options().drop_after);
}

void session::start() {
  room_.join(shared_from_this());
  writer_.async_send(
      std::string("* welcome, you are client ") + std::to_string(id_) + '\n',
      [self = shared_from_this()](serq::error_code ec, std::size_t) { self->on_sent(ec); });
  // The spawned function object, and with it the session, lives as long as
  // the coroutine.
  net::co_spawn(
      writer_.get_executor(), [self = shared_from_this()] { return self->read_lines(); },
      net::detached);
}

void session::deliver(const std::shared_ptr<const std::string>& line) {
  // No copy of the bytes: the writer keeps a reference to the shared line
  // until it is written, and completes the handler on this session's strand.
  // The handler holds the session so that the writer outlives its messages.
  writer_.async_send(
      line, [self = shared_from_this()](serq::error_code ec, std::size_t) { self->on_sent(ec); });
  room_.note_pending(writer_.pending_bytes());
}

void session::on_sent(serq::error_code ec) {
  // Every pending send fails with the same error: drop the client once.
  if (ec != net::error::timed_out || dropped_.exchange(true))
    return;
  log("dropping client ", id_, ": it accepted no bytes for ", room_.options().drop_after.count(),
      " ms");
  room_.note_dropped();
  close();
}

awaitable<void> session::wait_writable() {
  if (!writer_.writable())
    co_await writer_.async_wait_writable(nothrow_awaitable);
}

void session::close() {
  net::dispatch(writer_.get_executor(), [self = shared_from_this()] { self->do_close(); });
}

void session::do_close() {
  if (closed_)
    return;
  closed_ = true;
  serq::error_code ignored;
  writer_.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
  writer_.next_layer().close(ignored);
  // Lines not yet started will never reach the client: release them now
  // rather than when the last write fails.
  writer_.cancel();
}

awaitable<void> session::read_lines() {
  std::string buffer;
  for (;;) {
    // The writer forwards reads to its socket, so it stands in for it here.
    auto [ec, n] = co_await net::async_read_until(
        writer_, net::dynamic_buffer(buffer, max_line_length), '\n', nothrow_awaitable);
    if (ec)
      break;
    std::vector<std::shared_ptr<session>> recipients = room_.broadcast(buffer.substr(0, n));
    buffer.erase(0, n);
    // Do not read this client's next line before everyone can take it. A
    // stalled recipient holds us up at most until its stall deadline drops
    // it (its writer fails, which completes the wait).
    for (const auto& r : recipients)
      co_await r->wait_writable();
  }
  room_.leave(*this);
  do_close();
}

class chat_server {
 public:
  chat_server(net::io_context& ioc, const tcp::endpoint& ep, server_options opts)
      : ioc_(ioc), acceptor_(net::make_strand(ioc), ep), room_(opts) {}

  tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
  room& chat_room() noexcept { return room_; }

  void start() { net::co_spawn(acceptor_.get_executor(), accept_loop(), net::detached); }

  // Stops accepting and closes every session. Callable from any thread.
  void stop() {
    net::dispatch(acceptor_.get_executor(), [this] {
      serq::error_code ignored;
      acceptor_.close(ignored);
    });
    for (const auto& s : room_.snapshot())
      s->close();
  }

 private:
  awaitable<void> accept_loop() {
    for (;;) {
      // Each session gets its own strand: its reader, its writer's pump and
      // its writer's stall timer never run at once, while different sessions
      // run on different threads.
      auto [ec, socket] =
          co_await acceptor_.async_accept(net::make_strand(ioc_), nothrow_awaitable);
      if (ec == net::error::operation_aborted || !acceptor_.is_open())
        co_return;
      if (ec)
        continue;
      // A small kernel send buffer keeps the bytes queued for a client in the
      // writer, where the watermarks can see them, rather than in the kernel.
      serq::error_code ignored;
      socket.set_option(net::socket_base::send_buffer_size(64 * 1024), ignored);
      socket.set_option(tcp::no_delay(true), ignored);
      std::make_shared<session>(std::move(socket), room_, room_.next_id())->start();
    }
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  room room_;
};

//----------------------------------------------------------------------------
// The demo: built-in clients that check what they receive
//----------------------------------------------------------------------------

// Wire format of a demo message, one line:
//   M <sender> <seq> <length> <checksum> <payload>\n   a message
//   E <sender> <count> 0 0 \n                          the sender's last line
// Payloads are printable and of varying length; the checksum is FNV-1a.
std::uint32_t fnv1a(std::string_view s) noexcept {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : s)
    h = (h ^ c) * 16777619u;
  return h;
}

struct parsed_line {
  char kind = 0;
  std::uint64_t sender = 0, seq = 0, length = 0, checksum = 0;
  std::string_view payload;
};

std::optional<parsed_line> parse_line(std::string_view line) {
  if (line.size() < 2 || line[1] != ' ' || line.back() != '\n')
    return std::nullopt;
  parsed_line p;
  p.kind = line[0];
  line.remove_prefix(2);
  line.remove_suffix(1);
  for (std::uint64_t* field : {&p.sender, &p.seq, &p.length, &p.checksum}) {
    auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), *field);
    if (ec != std::errc() || ptr == line.data() + line.size() || *ptr != ' ')
      return std::nullopt;
    line.remove_prefix(static_cast<std::size_t>(ptr - line.data()) + 1);
  }
  p.payload = line;
  return p;
}

// A one-shot event that any thread can set and any coroutine can await. It
// is a serq::serialized_queue kept stopped: a barrier (async_wait) does not
// pass while its queue is stopped, and start() lets every barrier pass.
class event {
 public:
  explicit event(const net::any_io_executor& ex) : queue_(ex, "event") { queue_.stop(); }
  void set() { queue_.start(); }
  template <class CompletionToken>
  auto async_wait(CompletionToken&& token) {
    return queue_.async_wait(std::forward<CompletionToken>(token));
  }

 private:
  serq::serialized_queue queue_;
};

struct demo_options {
  std::size_t clients = 8;
  std::size_t slow = 1;
  double seconds = 2.0;
  std::size_t threads = 2;
  milliseconds drop_after{2000};
};

// What all demo clients share.
class demo {
 public:
  demo(net::io_context& ioc, const demo_options& opts, room& r)
      : opts_(opts), room_(r), all_joined_(ioc.get_executor()), all_done_(ioc.get_executor()) {}

  const demo_options& options() const noexcept { return opts_; }

  // Talkers send until the time is up and every silent client has been
  // dropped, so the drop is part of what is checked, however fast the
  // machine.
  bool keep_talking() const {
    return steady_clock::now() < talk_until_ || room_.dropped() < opts_.slow;
  }

  void joined() {
    if (++joined_ == opts_.clients + opts_.slow) {
      started_ = steady_clock::now();
      talk_until_ = started_ + std::chrono::duration_cast<steady_clock::duration>(
                                   std::chrono::duration<double>(opts_.seconds));
      all_joined_.set();
    }
  }
  event& all_joined() noexcept { return all_joined_; }

  void finished(bool ok, std::uint64_t sent, std::uint64_t received, std::uint64_t bytes) {
    if (!ok)
      failures_.fetch_add(1);
    sent_.fetch_add(sent);
    received_.fetch_add(received);
    bytes_.fetch_add(bytes);
    if (++finished_ == opts_.clients) {
      elapsed_ = steady_clock::now() - started_;
      all_done_.set();
    }
  }
  event& all_done() noexcept { return all_done_; }

  std::size_t failures() const noexcept { return failures_.load(); }
  std::uint64_t sent() const noexcept { return sent_.load(); }
  std::uint64_t received() const noexcept { return received_.load(); }
  std::uint64_t bytes() const noexcept { return bytes_.load(); }
  // Read after the io_context's threads have been joined.
  steady_clock::duration elapsed() const noexcept { return elapsed_; }

 private:
  demo_options opts_;
  room& room_;
  event all_joined_;
  event all_done_;
  std::atomic<std::size_t> joined_{0};
  std::atomic<std::size_t> finished_{0};
  std::atomic<std::size_t> failures_{0};
  std::atomic<std::uint64_t> sent_{0}, received_{0}, bytes_{0};
  // Written by the last joiner before all_joined_ is set, read after.
  steady_clock::time_point started_{}, talk_until_{};
  steady_clock::duration elapsed_{};
};

// A demo client that talks and checks everything it hears.
class talker {
 public:
  talker(const net::any_io_executor& ex, std::uint64_t index, demo& d)
      : writer_(ex),
        index_(index),
        demo_(d),
        rng_(index * 0x9E3779B97F4A7C15ull + 1),
        echo_signal_(ex, steady_clock::time_point::max()) {}

  // The talker's strand: its reads, its writer's pump and its coroutines.
  net::any_io_executor get_executor() { return writer_.get_executor(); }

  awaitable<void> run(tcp::endpoint ep) {
    bool ok = false;
    try {
      co_await writer_.next_layer().async_connect(ep, use_awaitable);
      writer_.next_layer().set_option(tcp::no_delay(true));
      std::string_view welcome = co_await read_line();
      if (!welcome.starts_with("* welcome"))
        throw std::runtime_error("no welcome line");
      consume_line();
      // Nobody talks before everyone is in the room, or a late joiner would
      // rightly miss the first messages.
      demo_.joined();
      co_await demo_.all_joined().async_wait(use_awaitable);
      co_await (talk() && listen());
      ok = true;
    } catch (const net::multiple_exceptions& e) {
      // One failed and the other was cancelled: report the cause.
      try {
        std::rethrow_exception(e.first_exception());
      } catch (const std::exception& first) {
        log("demo client ", index_, ": ", first.what());
      }
    } catch (const std::exception& e) {
      log("demo client ", index_, ": ", e.what());
    }
    serq::error_code ignored;
    writer_.next_layer().close(ignored);
    demo_.finished(ok, sent_, received_, bytes_);
  }

 private:
  awaitable<void> talk() {
    std::uint64_t seq = 0;
    while (demo_.keep_talking()) {
      // Sends are fire-and-forget: the writer keeps them in order, and a
      // failed one fails the final flush.
      writer_.async_send(make_message(seq++), net::detached);
      // Stay at most a window of messages ahead of our own echo, as a person
      // who waits to see their words in the room would. Without this, a
      // talker runs ahead by whatever the kernel buffers hold, and the room
      // needs seconds to relay that backlog to everyone after time is up.
      while (seq - echoed_ >= echo_window) {
        co_await echo_signal_.async_wait(nothrow_awaitable);
        auto cs = co_await net::this_coro::cancellation_state;
        // listen() failed: its error is the one to report.
        if (cs.cancelled() != net::cancellation_type::none)
          co_return;
      }
    }
    sent_ = seq;
    writer_.async_send("E " + std::to_string(index_) + ' ' + std::to_string(seq) + " 0 0 \n",
                       net::detached);
    // Reports the writer's error, if any of the detached sends failed.
    co_await writer_.async_flush(use_awaitable);
  }

  std::string make_message(std::uint64_t seq) {
    std::string payload(16 + next_random() % 500, ' ');
    for (char& c : payload)
      c = static_cast<char>('!' + next_random() % 94);
    return "M " + std::to_string(index_) + ' ' + std::to_string(seq) + ' ' +
           std::to_string(payload.size()) + ' ' + std::to_string(fnv1a(payload)) + ' ' + payload +
           '\n';
  }

  awaitable<void> listen() {
    const std::size_t talkers = demo_.options().clients;
    std::vector<std::uint64_t> next(talkers, 0);
    std::vector<bool> ended(talkers, false);
    std::size_t still_talking = talkers;
    while (still_talking != 0) {
      const std::string_view line = co_await read_line();
      const std::optional<parsed_line> p = parse_line(line);
      if (!p || p->sender >= talkers || ended[p->sender])
        fail("unexpected line", line);
      if (p->kind == 'M') {
        if (p->seq != next[p->sender])
          fail("out of sequence", line);
        if (p->payload.size() != p->length || fnv1a(p->payload) != p->checksum) {
          fail("corrupted payload", line);
        }
        ++next[p->sender];
        ++received_;
        if (p->sender == index_) {
          ++echoed_;
          echo_signal_.cancel();  // wakes talk(), which shares our strand
        }
        bytes_ += line.size();
      } else if (p->kind == 'E') {
        if (p->seq != next[p->sender])
          fail("missing messages before the end", line);
        ended[p->sender] = true;
        --still_talking;
      } else {
        fail("unexpected line", line);
      }
      consume_line();
    }
  }

  [[noreturn]] void fail(std::string_view what, std::string_view line) {
    throw std::runtime_error(std::string(what) + ": " + std::string(line.substr(0, 60)));
  }

  awaitable<std::string_view> read_line() {
    line_length_ = co_await net::async_read_until(
        writer_, net::dynamic_buffer(buffer_, max_line_length), '\n', use_awaitable);
    co_return std::string_view(buffer_).substr(0, line_length_);
  }
  void consume_line() { buffer_.erase(0, line_length_); }

  std::uint64_t next_random() noexcept {  // xorshift64
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }

  serq::queued_writer<tcp::socket> writer_;
  std::uint64_t index_;
  demo& demo_;
  std::uint64_t rng_;
  std::string buffer_;
  std::size_t line_length_ = 0;
  std::uint64_t sent_ = 0, received_ = 0, bytes_ = 0;
  static constexpr std::uint64_t echo_window = 128;
  std::uint64_t echoed_ = 0;
  net::steady_timer echo_signal_;  // never expires; cancelled to signal an echo
};

// A demo client that joins and then never reads: the server must drop it.
awaitable<void> silent_client(tcp::endpoint ep, demo& d, std::shared_ptr<event> release) {
  tcp::socket socket(co_await net::this_coro::executor);
  socket.open(ep.protocol());
  // A tiny receive window makes the server's writer for this client back up
  // after a few kilobytes instead of after the kernel's megabytes.
  socket.set_option(net::socket_base::receive_buffer_size(4096));
  co_await socket.async_connect(ep, use_awaitable);
  std::string welcome;
  co_await net::async_read_until(socket, net::dynamic_buffer(welcome), '\n', use_awaitable);
  d.joined();
  co_await release->async_wait(nothrow_awaitable);
}

int run_demo(const demo_options& opts) {
  net::io_context ioc(static_cast<int>(opts.threads));
  chat_server server(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0),
                     server_options{opts.drop_after, false});
  server.start();
  const tcp::endpoint ep = server.local_endpoint();
  demo d(ioc, opts, server.chat_room());

  for (std::size_t i = 0; i < opts.clients; ++i) {
    auto t = std::make_shared<talker>(net::make_strand(ioc), i, d);
    net::co_spawn(
        t->get_executor(), [t, ep] { return t->run(ep); }, net::detached);
  }
  // The silent clients hang up when released at the end of the demo.
  auto release_silent = std::make_shared<event>(ioc.get_executor());
  for (std::size_t i = 0; i < opts.slow; ++i) {
    net::co_spawn(net::make_strand(ioc), silent_client(ep, d, release_silent),
                  [](std::exception_ptr e) {
                    if (e)
                      log("silent client failed to connect");
                  });
  }

  bool timed_out = false;
  net::co_spawn(
      net::make_strand(ioc),
      [&]() -> awaitable<void> {
        net::steady_timer deadline(co_await net::this_coro::executor);
        deadline.expires_after(std::chrono::duration_cast<steady_clock::duration>(
                                   std::chrono::duration<double>(opts.seconds)) +
                               std::chrono::seconds(30));
        auto result = co_await (d.all_done().async_wait(nothrow_awaitable) ||
                                deadline.async_wait(nothrow_awaitable));
        timed_out = result.index() == 1;
        // Every talker has hung up by now; what is left is the acceptor and
        // the silent clients' sessions, if they were not dropped.
        release_silent->set();
        server.stop();
        if (timed_out)
          ioc.stop();
      },
      net::detached);

  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < opts.threads; ++i)
    threads.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : threads)
    t.join();

  const room& r = server.chat_room();
  const double secs = std::chrono::duration<double>(d.elapsed()).count();
  std::cout << "chat_server demo: " << opts.clients << " talkers, " << opts.slow << " silent ("
            << r.dropped() << " dropped), " << opts.threads << " threads\n"
            << "  messages sent " << d.sent() << ", delivered " << d.received() << " (" << d.bytes()
            << " bytes) in " << secs
            << " s: " << (secs > 0 ? static_cast<double>(d.received()) / secs : 0.0)
            << " messages/s\n"
            << "  max pending bytes in one writer: " << r.max_pending() << '\n';

  bool ok = true;
  if (timed_out) {
    std::cout << "FAILED: the demo did not finish in time\n";
    ok = false;
  }
  if (d.failures() != 0) {
    std::cout << "FAILED: " << d.failures() << " client(s) saw a missing or damaged message\n";
    ok = false;
  }
  if (d.failures() == 0 && d.received() != d.sent() * opts.clients) {
    std::cout << "FAILED: expected " << d.sent() * opts.clients << " deliveries\n";
    ok = false;
  }
  if (r.dropped() != opts.slow) {
    std::cout << "FAILED: expected " << opts.slow << " silent client(s) dropped\n";
    ok = false;
  }
  if (d.failures() == 0 && d.sent() == 0) {
    std::cout << "FAILED: nothing was sent\n";
    ok = false;
  }
  std::cout << (ok ? "OK\n" : "");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}

int run_server(unsigned short port, std::size_t threads, milliseconds drop_after) {
  net::io_context ioc(static_cast<int>(threads));
  chat_server server(ioc, tcp::endpoint(net::ip::address_v4::loopback(), port),
                     server_options{drop_after, true});
  server.start();
  log("listening on ", server.local_endpoint());

  net::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](serq::error_code, int) {
    log("shutting down");
    server.stop();
  });

  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < threads; ++i)
    pool.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : pool)
    t.join();
  return EXIT_SUCCESS;
}

int usage() {
  std::cerr << "usage: chat_server [--port P] [--threads T] [--drop-after MS]\n"
               "       chat_server --demo [--clients N] [--seconds S] [--slow K] [--threads T]"
               " [--drop-after MS]\n";
  return 2;
}

}  // namespace

int main(int argc, char* argv[]) {
  bool demo_mode = false;
  unsigned short port = 5555;
  demo_options opts;
  std::optional<milliseconds> drop_after;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 == argc)
          throw std::invalid_argument("missing value");
        return argv[++i];
      };
      if (arg == "--demo") {
        demo_mode = true;
      } else if (arg == "--port") {
        port = static_cast<unsigned short>(std::stoul(value()));
      } else if (arg == "--clients") {
        opts.clients = std::stoul(value());
      } else if (arg == "--slow") {
        opts.slow = std::stoul(value());
      } else if (arg == "--seconds") {
        opts.seconds = std::stod(value());
      } else if (arg == "--threads") {
        opts.threads = std::max<std::size_t>(1, std::stoul(value()));
      } else if (arg == "--drop-after") {
        drop_after = milliseconds(std::stol(value()));
      } else {
        return usage();
      }
    }
  } catch (const std::exception&) {
    return usage();
  }
  if (opts.clients == 0)
    return usage();

  try {
    if (demo_mode) {
      if (drop_after)
        opts.drop_after = *drop_after;
      return run_demo(opts);
    }
    return run_server(port, opts.threads, drop_after.value_or(milliseconds(5000)));
  } catch (const std::exception& e) {
    std::cerr << "chat_server: " << e.what() << '\n';
    return EXIT_FAILURE;
  }
}
