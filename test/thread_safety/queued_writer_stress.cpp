//
// test/thread_safety/queued_writer_stress.cpp
//
// serq::queued_writer shared by many coroutines and threads over a real
// socket pair whose buffers are much smaller than the messages, so every
// message needs several write_some calls and would interleave with the
// others if the writer let it. Meant to run under TSan; sized to take a few
// seconds there.
//

#include <serq/queued_writer.hpp>

#include "common/exactly_once.hpp"
#include "common/io_threads.hpp"
#include "common/net.hpp"
#include "common/socket_buffers.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using socket_type = net::local::stream_protocol::socket;

namespace {

// Frame: producer (u32), sequence (u32), payload length (u32), payload.
// Payload byte i of (p, s) is a function of (p, s, i), so a frame cut into
// by another one fails the check.
constexpr std::size_t header_size = 12;

unsigned char payload_byte(std::uint32_t producer, std::uint32_t seq, std::size_t i) {
  return static_cast<unsigned char>((producer * 131u + seq * 7u + i * 31u + (i >> 8)) & 0xff);
}

std::string make_frame(std::uint32_t producer, std::uint32_t seq, std::uint32_t len) {
  std::string f(header_size + len, '\0');
  std::memcpy(&f[0], &producer, 4);
  std::memcpy(&f[4], &seq, 4);
  std::memcpy(&f[8], &len, 4);
  for (std::size_t i = 0; i < len; ++i)
    f[header_size + i] = static_cast<char>(payload_byte(producer, seq, i));
  return f;
}

// Reads frames from a blocking socket until EOF, on its own thread, and
// records what it saw; checked on the test's thread after join().
class frame_reader {
 public:
  explicit frame_reader(socket_type& s, std::size_t producers) : seen(producers), socket_(s) {}

  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void join() { thread_.join(); }

  std::vector<std::vector<std::uint32_t>> seen;  // sequences per producer, in arrival order
  std::string error;                             // the first framing error
  std::size_t frames = 0;
  std::size_t bytes = 0;

 private:
  void run() {
    read_frames();
    // After a framing error keep draining, so that the writers finish and
    // the test reports the error instead of hanging.
    char sink[4096];
    error_code ec;
    while (!ec)
      socket_.read_some(net::buffer(sink), ec);
  }

  void read_frames() {
    std::string payload;
    for (;;) {
      unsigned char header[header_size];
      error_code ec;
      net::read(socket_, net::buffer(header), ec);
      if (ec) {
        if (ec != net::error::eof)
          fail("read error: " + ec.message());
        return;
      }
      std::uint32_t producer, seq, len;
      std::memcpy(&producer, header, 4);
      std::memcpy(&seq, header + 4, 4);
      std::memcpy(&len, header + 8, 4);
      if (producer >= seen.size() || len > (1u << 24)) {
        fail("garbage header after " + std::to_string(frames) + " frames");
        return;
      }
      payload.resize(len);
      net::read(socket_, net::buffer(payload), ec);
      if (ec) {
        fail("read error in payload: " + ec.message());
        return;
      }
      for (std::size_t i = 0; i < len; ++i)
        if (static_cast<unsigned char>(payload[i]) != payload_byte(producer, seq, i)) {
          fail("payload of producer " + std::to_string(producer) + " seq " + std::to_string(seq) +
               " corrupted at byte " + std::to_string(i));
          return;
        }
      seen[producer].push_back(seq);
      ++frames;
      bytes += header_size + len;
    }
  }
  void fail(std::string what) {
    if (error.empty())
      error = std::move(what);
  }

  socket_type& socket_;
  std::thread thread_;
};

// A connected pair with small kernel buffers: the writer's end is
// non-blocking under Asio, the reader's end is read with blocking calls.
struct socket_pair {
  net::io_context ioc;
  socket_type writer_end{ioc};
  net::io_context reader_ioc;
  socket_type reader_end{reader_ioc};

  socket_pair() { serq_test::connect_small_pair(writer_end, reader_end); }
};

void run_threads(net::io_context& ioc, int n) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&ioc] { ioc.run(); });
  for (auto& t : threads)
    t.join();
}

// A stream on a strand that takes at most 5 bytes per write_some and
// completes posted to the strand. Its cancellation handler completes a
// write still pending inside the emit (dispatch to the strand, where the
// test emits), as Asio allows. Its counters are touched on the strand only.
class strand_cancel_stream {
 public:
  using executor_type = net::any_io_executor;

  explicit strand_cancel_stream(executor_type ex) : ex_(std::move(ex)) {}
  executor_type get_executor() const noexcept { return ex_; }

  template <class ConstBufferSequence, class Handler>
  void async_write_some(const ConstBufferSequence& buffers, Handler&& handler) {
    using handler_type = std::decay_t<Handler>;
    const std::size_t n = (std::min)(std::size_t(5), net::buffer_size(buffers));
    auto pending = std::make_shared<std::optional<handler_type>>(std::forward<Handler>(handler));
    auto slot = net::get_associated_cancellation_slot(**pending);
    if (slot.is_connected()) {
      slot.assign([pending, this](net::cancellation_type_t) {
        if (!pending->has_value())
          return;  // completed already: a stale signal
        handler_type h = std::move(**pending);
        pending->reset();
        ++cancelled_inside_emit;
        net::dispatch(ex_, [h = std::move(h)]() mutable {
          std::move(h)(net::error::operation_aborted, std::size_t(0));
        });
      });
    }
    net::post(ex_, [pending, n, this] {
      if (!pending->has_value())
        return;  // cancelled first
      handler_type h = std::move(**pending);
      pending->reset();
      accepted += n;
      std::move(h)(error_code(), n);
    });
  }

  std::size_t accepted = 0;
  int cancelled_inside_emit = 0;

 private:
  executor_type ex_;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(queued_writer_stress)

BOOST_AUTO_TEST_CASE(eight_coroutines_writing_large_messages_never_interleave) {
  constexpr std::uint32_t producers = 8;
  constexpr std::uint32_t messages = 96;
  socket_pair sp;
  serq::queued_writer<socket_type&> w(sp.writer_end);
  w.set_watermarks(256 * 1024, 512 * 1024);
  frame_reader reader(sp.reader_end, producers);
  reader.start();

  std::atomic<int> failures{0};
  std::atomic<std::size_t> written{0};
  std::atomic<int> finished{0};
  for (std::uint32_t p = 0; p < producers; ++p) {
    net::co_spawn(
        sp.ioc,
        [&, p]() -> net::awaitable<void> {
          for (std::uint32_t s = 0; s < messages; ++s) {
            // 20..80 KiB: several times the socket's buffers.
            const auto len =
                static_cast<std::uint32_t>(20000 + ((p * 7919u + s * 104729u) % 60000));
            // Alternate borrowed and owned messages; wait on backpressure.
            if (!w.writable())
              co_await w.async_wait_writable(net::use_awaitable);
            std::size_t n = 0;
            if (s % 2 == 0) {
              const std::string frame = make_frame(p, s, len);
              n = co_await w.async_write(net::buffer(frame), net::use_awaitable);
            } else {
              n = co_await w.async_send(make_frame(p, s, len), net::use_awaitable);
            }
            if (n != header_size + len)
              ++failures;
            written += n;
          }
          if (++finished == static_cast<int>(producers)) {
            co_await w.async_flush(net::use_awaitable);
            w.next_layer().shutdown(socket_type::shutdown_send);
          }
        },
        [&](std::exception_ptr e) {
          if (e)
            ++failures;
        });
  }
  run_threads(sp.ioc, 3);
  reader.join();

  BOOST_TEST(failures.load() == 0);
  BOOST_TEST(reader.error == "");
  BOOST_TEST(reader.frames == std::size_t{producers} * messages);
  BOOST_TEST(reader.bytes == written.load());
  for (std::uint32_t p = 0; p < producers; ++p) {
    BOOST_TEST_CONTEXT("producer " << p) {
      BOOST_TEST(reader.seen[p].size() == messages);
      for (std::uint32_t s = 0; s < reader.seen[p].size(); ++s)
        BOOST_TEST(reader.seen[p][s] == s);
    }
  }
  BOOST_TEST(!w.error());
  BOOST_TEST(w.pending_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(use_future_writes_from_foreign_threads_keep_per_thread_order) {
  constexpr std::uint32_t threads = 4;
  constexpr std::uint32_t messages = 100;
  socket_pair sp;
  serq::queued_writer<socket_type&> w(sp.writer_end);
  frame_reader reader(sp.reader_end, threads);
  reader.start();

  auto guard = net::make_work_guard(sp.ioc);
  std::thread io([&] { sp.ioc.run(); });

  std::atomic<int> failures{0};
  std::vector<std::thread> producers;
  for (std::uint32_t t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      // Several in flight at once from this thread, then wait for them all.
      std::vector<std::string> frames;
      std::vector<std::future<std::size_t>> futures;
      for (std::uint32_t s = 0; s < messages; ++s)
        frames.push_back(make_frame(t, s, 1000 + (s * 4099) % 30000));
      for (std::uint32_t s = 0; s < messages; ++s)
        futures.push_back(w.async_write(net::buffer(frames[s]), net::use_future));
      for (std::uint32_t s = 0; s < messages; ++s) {
        try {
          if (futures[s].get() != frames[s].size())
            ++failures;
        } catch (...) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : producers)
    t.join();
  w.async_flush(net::use_future).get();
  w.next_layer().shutdown(socket_type::shutdown_send);
  guard.reset();
  io.join();
  reader.join();

  BOOST_TEST(failures.load() == 0);
  BOOST_TEST(reader.error == "");
  BOOST_TEST(reader.frames == std::size_t{threads} * messages);
  for (std::uint32_t t = 0; t < threads; ++t)
    for (std::uint32_t s = 0; s < reader.seen[t].size(); ++s)
      BOOST_TEST(reader.seen[t][s] == s);
}

// Producer threads cancel some of their own writes (emitting from the
// initiating thread, as Asio requires) while the io threads write: each
// message either completes whole and is on the wire once, or is aborted with
// 0 bytes and absent. Never half.
BOOST_AUTO_TEST_CASE(concurrent_cancellation_leaves_every_message_whole_or_absent) {
  constexpr std::uint32_t threads = 4;
  constexpr std::uint32_t messages = 150;
  serq_test::handler_tracker tracker;
  socket_pair sp;
  auto w = std::make_unique<serq::queued_writer<socket_type&>>(sp.writer_end);
  frame_reader reader(sp.reader_end, threads);
  reader.start();

  auto guard = net::make_work_guard(sp.ioc);
  std::vector<std::thread> io;
  for (int i = 0; i < 2; ++i)
    io.emplace_back([&] { sp.ioc.run(); });

  struct result {
    std::atomic<int> state{0};  // 0 pending, 1 written whole, 2 aborted with 0, 3 wrong
  };
  std::vector<std::vector<result>> results(threads);
  for (auto& r : results)
    r = std::vector<result>(messages);
  std::vector<std::vector<std::string>> frames(threads);
  for (std::uint32_t t = 0; t < threads; ++t)
    for (std::uint32_t s = 0; s < messages; ++s)
      frames[t].push_back(make_frame(t, s, 2000 + (s * 3571) % 24000));

  std::vector<std::thread> producers;
  for (std::uint32_t t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      std::vector<net::cancellation_signal> signals(messages);
      std::vector<std::promise<void>> done(messages);
      std::vector<std::future<void>> completed;
      for (auto& d : done)
        completed.push_back(d.get_future());
      for (std::uint32_t s = 0; s < messages; ++s) {
        const std::size_t size = frames[t][s].size();
        w->async_write(
            net::buffer(frames[t][s]),
            net::bind_cancellation_slot(signals[s].slot(),
                                        tracker.wrap([&, t, s, size](error_code ec, std::size_t n) {
                                          int st = 3;
                                          if (!ec && n == size)
                                            st = 1;
                                          if (ec == net::error::operation_aborted && n == 0)
                                            st = 2;
                                          results[t][s].state = st;
                                          done[s].set_value();
                                        })));
        if (s % 3 == 1)
          signals[s].emit(net::cancellation_type::total);
      }
      // The signals must outlive the operations they are bound to.
      for (auto& c : completed)
        c.wait();
    });
  }
  for (auto& t : producers)
    t.join();
  w->async_flush(net::use_future).get();
  sp.writer_end.shutdown(socket_type::shutdown_send);
  guard.reset();
  for (auto& t : io)
    t.join();
  reader.join();
  w.reset();

  BOOST_TEST(reader.error == "");
  std::size_t whole = 0;
  for (std::uint32_t t = 0; t < threads; ++t) {
    BOOST_TEST_CONTEXT("thread " << t) {
      std::vector<std::uint32_t> expected;
      for (std::uint32_t s = 0; s < messages; ++s) {
        const int st = results[t][s].state.load();
        BOOST_TEST((st == 1 || st == 2), "message " << s << " state " << st);
        if (st == 1) {
          expected.push_back(s);
          ++whole;
        }
      }
      BOOST_TEST(reader.seen[t] == expected, boost::test_tools::per_element());
    }
  }
  BOOST_TEST(reader.frames == whole);
}

// Callers on three threads write to a writer whose stream is on a strand
// run by two threads. Some writes are cancelled on the strand (as Asio
// wants for an operation that may have started) right after the call, and
// every so often a sweep cancels everything still pending: with `total` (a
// queued message leaves, a started one goes on), and once per round with
// `terminal` (a started message fails the writer, and the stream completes
// the write in flight inside the writer's emit). Nothing hangs, every
// handler runs once with a consistent result, and TSan sees every touch
// ordered.
BOOST_AUTO_TEST_CASE(cancellations_completing_inside_the_emit_under_threads) {
  constexpr int rounds = 20, producers = 3, per_producer = 150;
  constexpr int total = producers * per_producer;
  int completed_inside_emit = 0;
  for (int round = 0; round < rounds; ++round) {
    serq_test::handler_tracker tr;
    net::io_context ioc(2);
    auto strand = net::make_strand(ioc);
    serq::queued_writer<strand_cancel_stream> w{net::any_io_executor(strand)};
    std::vector<net::cancellation_signal> signals(total);
    const auto issued = std::make_unique<std::atomic<bool>[]>(total);  // its slot is bound
    std::vector<char> done(total, 0);                                  // on the strand only
    // 23 bytes: write_some's 5-byte pieces straddle messages, so a message
    // is often started when the one before it completes.
    const std::string message = "0123456789abcdefghijklm";
    std::atomic<int> wrong{0};
    std::atomic<std::size_t> written{0};
    serq_test::countdown completed(total);
    // Cancels every request still pending whose call has returned; on the
    // strand, from a posted function (after the pump started its next write).
    auto sweep = [&](net::cancellation_type_t type) {
      net::post(strand, [&, type] {
        for (int id = 0; id < total; ++id)
          if (issued[id].load(std::memory_order_acquire) && !done[id])
            signals[id].emit(type);
      });
    };
    serq_test::io_threads io(ioc, 2);
    std::vector<std::thread> callers;
    for (int p = 0; p < producers; ++p) {
      callers.emplace_back([&, p] {
        for (int i = 0; i < per_producer; ++i) {
          const int id = p * per_producer + i;
          w.async_write(net::buffer(message),
                        net::bind_cancellation_slot(
                            signals[id].slot(), tr.wrap([&, id](error_code ec, std::size_t n) {
                              done[id] = 1;
                              if (!ec)
                                written += n;
                              if (ec ? n > message.size() : n != message.size())
                                ++wrong;
                              const int c = completed.arrive();
                              if (c == total / 2)
                                sweep(net::cancellation_type::terminal);
                              else if (c % 37 == 0)
                                sweep(net::cancellation_type::total);
                            })));
          issued[id].store(true, std::memory_order_release);
          if (i % 5 == 2)
            net::post(strand, [&signals, id] { signals[id].emit(net::cancellation_type::total); });
        }
      });
    }
    for (auto& t : callers)
      t.join();
    completed.wait();
    io.finish();
    BOOST_TEST(wrong.load() == 0);
    tr.check_all_accounted();
    // What succeeded went to the stream, with at most the pieces of messages
    // that failed after they had started.
    BOOST_TEST(written.load() <= w.next_layer().accepted);
    completed_inside_emit += w.next_layer().cancelled_inside_emit;
  }
  BOOST_TEST_MESSAGE("writes completed inside the writer's emit: " << completed_inside_emit);
}

BOOST_AUTO_TEST_SUITE_END()
