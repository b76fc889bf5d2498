//
// test/thread_safety/writer_lifecycle_stress.cpp
//
// queued_writer's lifecycle under threads: producer threads mix normal
// writes, urgent sends, normal and urgent composed operations and flushes on
// one writer over a socket pair with small buffers, run by three io_context
// threads, while a reader thread checks every frame. Rounds add a close from
// a producer thread mid-run, a stall deadline that fires (the reader pauses),
// or a stall deadline changed mid-run. Every call must complete exactly
// once, frames must never interleave, each producer's frames must arrive in
// order per lane, and every reported success must be on the wire. Meant to
// run under TSan too; sized to take a few seconds there.
//

#include "common/net.hpp"
#include "common/socket_buffers.hpp"

#include <serq/queued_writer.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using socket_type = net::local::stream_protocol::socket;
using std::chrono::milliseconds;

namespace {

// Frame: magic, producer, lane, sequence (u32), payload length (u32),
// payload; payload byte i is a function of all of them.
constexpr std::size_t header_size = 11;
constexpr unsigned char magic = 0xA5;

unsigned char payload_byte(unsigned p, unsigned lane, std::uint32_t seq, std::size_t i) {
  return static_cast<unsigned char>((p * 131u + lane * 17u + seq * 7u + i * 31u + (i >> 8)) & 0xff);
}

std::string make_frame(unsigned p, unsigned lane, std::uint32_t seq, std::uint32_t len) {
  std::string f(header_size + len, '\0');
  f[0] = static_cast<char>(magic);
  f[1] = static_cast<char>(p);
  f[2] = static_cast<char>(lane);
  std::memcpy(&f[3], &seq, 4);
  std::memcpy(&f[7], &len, 4);
  for (std::size_t i = 0; i < len; ++i)
    f[header_size + i] = static_cast<char>(payload_byte(p, lane, seq, i));
  return f;
}

using frame_id = std::tuple<unsigned, unsigned, std::uint32_t>;  // producer, lane, seq

// Reads frames on its own thread with blocking reads until end of file or an
// error. A frame cut short by the end is recorded as such (a write cut by a
// failure); anything else malformed is an error.
class frame_reader {
 public:
  explicit frame_reader(socket_type& s) : socket_(s) {}

  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void join() { thread_.join(); }

  // Stops reading until resume is set (the stall rounds).
  void pause_until(const std::atomic<bool>& resume) { pause_ = &resume; }

  std::set<frame_id> seen;
  std::string error;
  bool torn_end = false;
  std::size_t frames = 0;

 private:
  void run() {
    std::string data;
    std::vector<char> buf(64 * 1024);
    std::size_t pos = 0;
    std::vector<std::uint32_t> last(3 * 256, 0);
    std::vector<bool> any(3 * 256, false);
    for (;;) {
      if (const std::atomic<bool>* resume = pause_.exchange(nullptr)) {
        while (!resume->load())
          std::this_thread::sleep_for(milliseconds(1));
      }
      error_code ec;
      const std::size_t n = socket_.read_some(net::buffer(buf), ec);
      data.append(buf.data(), n);
      // Whole frames.
      for (;;) {
        if (data.size() - pos < header_size)
          break;
        const auto* h = reinterpret_cast<const unsigned char*>(data.data() + pos);
        std::uint32_t seq, len;
        std::memcpy(&seq, h + 3, 4);
        std::memcpy(&len, h + 7, 4);
        if (h[0] != magic || h[2] > 2 || len > (1u << 20)) {
          fail("garbage header after " + std::to_string(frames) + " frames");
          return drain();
        }
        if (data.size() - pos < header_size + len)
          break;
        for (std::size_t i = 0; i < len; ++i) {
          if (static_cast<unsigned char>(data[pos + header_size + i]) !=
              payload_byte(h[1], h[2], seq, i)) {
            fail("frame interleaved or corrupted after " + std::to_string(frames) + " frames");
            return drain();
          }
        }
        // Each producer's frames arrive in order on each lane.
        const std::size_t key = h[1] * 3u + h[2];
        if (any[key] && seq <= last[key]) {
          fail("frames of one producer and lane out of order");
          return drain();
        }
        any[key] = true;
        last[key] = seq;
        seen.insert({h[1], h[2], seq});
        ++frames;
        pos += header_size + len;
      }
      if (pos > (1u << 20)) {
        data.erase(0, pos);
        pos = 0;
      }
      if (ec) {
        torn_end = data.size() != pos;
        if (ec != net::error::eof && ec != net::error::connection_reset)
          fail("read error: " + ec.message());
        return;
      }
    }
  }
  // After an error keep reading, so that the writers finish and the test
  // reports the error instead of hanging.
  void drain() {
    char sink[4096];
    error_code ec;
    while (!ec)
      socket_.read_some(net::buffer(sink), ec);
  }
  void fail(std::string what) {
    if (error.empty())
      error = std::move(what);
  }

  socket_type& socket_;
  std::thread thread_;
  std::atomic<const std::atomic<bool>*> pause_{nullptr};
};

enum class round_kind { plain, close, stall, timeout_changes };

// One request issued by a producer, and what its completion said.
struct request {
  frame_id id{};
  bool carries_frame = false;
  std::size_t size = 0;
  std::string frame;  // owned here for async_write and composed writes
  std::atomic<int> calls{0};
  error_code ec;
  std::size_t bytes = 0;
};

struct round_result {
  std::size_t requests = 0;
  std::size_t succeeded = 0;
  std::size_t failed = 0;
};

round_result run_round(round_kind kind, unsigned seed) {
  constexpr unsigned producers = 4;
  constexpr unsigned per_producer = 250;

  net::io_context ioc(3);
  socket_type writer_end(ioc);
  net::io_context reader_ioc;
  socket_type reader_end(reader_ioc);
  serq_test::connect_small_pair(writer_end, reader_end);

  auto writer = std::make_unique<serq::queued_writer<socket_type>>(std::move(writer_end));
  writer->set_watermarks(64 * 1024, 256 * 1024);
  if (kind == round_kind::stall)
    writer->set_stall_timeout(milliseconds(30));

  frame_reader reader(reader_end);
  reader.start();
  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> io_threads;
  for (int i = 0; i < 3; ++i)
    io_threads.emplace_back([&ioc] { ioc.run(); });

  std::vector<std::unique_ptr<request>> requests(producers * per_producer);
  for (auto& r : requests)
    r = std::make_unique<request>();
  std::atomic<std::size_t> completed{0};
  std::atomic<int> close_calls{0};
  error_code close_ec;
  std::atomic<bool> closed{false};
  std::atomic<bool> stalled{false};  // the stall round's reader waits for it

  auto on_write = [&completed](request* r) {
    return [r, &completed](error_code ec, std::size_t n) {
      r->ec = ec;
      r->bytes = n;
      if (r->calls.fetch_add(1) == 0)
        ++completed;
    };
  };
  auto on_signal = [&completed](request* r) {
    return [r, &completed](error_code ec) {
      r->ec = ec;
      if (r->calls.fetch_add(1) == 0)
        ++completed;
    };
  };

  std::vector<std::thread> producer_threads;
  for (unsigned p = 0; p < producers; ++p) {
    producer_threads.emplace_back([&, p] {
      std::mt19937 rng(seed * 7919u + p);
      std::uint32_t seq[3] = {0, 0, 0};
      for (unsigned i = 0; i < per_producer; ++i) {
        request* r = requests[p * per_producer + i].get();
        const unsigned pick = rng() % 100;
        const auto len = static_cast<std::uint32_t>(1 + rng() % 12000);
        if (kind == round_kind::close && p == 0 && i == per_producer / 2) {
          ++close_calls;
          writer->async_close([&](error_code ec) {
            close_ec = ec;
            closed = true;
          });
        }
        if (kind == round_kind::stall && p == 1 && i == per_producer / 3)
          reader.pause_until(stalled);
        if (kind == round_kind::timeout_changes && p == 2 && i % 50 == 0)
          writer->set_stall_timeout(i % 100 == 0 ? std::chrono::seconds(120) : milliseconds(0));
        if (pick < 60) {  // normal write, borrowed or owned
          r->id = {p, 0, ++seq[0]};
          r->carries_frame = true;
          r->frame = make_frame(p, 0, seq[0], len);
          r->size = r->frame.size();
          if (i % 2 == 0)
            writer->async_write(net::buffer(r->frame), on_write(r));
          else
            writer->async_send(r->frame, on_write(r));
        } else if (pick < 80) {  // urgent send
          r->id = {p, 1, ++seq[1]};
          r->carries_frame = true;
          r->frame = make_frame(p, 1, seq[1], len);
          r->size = r->frame.size();
          writer->async_send(serq::urgent, r->frame, on_write(r));
        } else if (pick < 88 && kind != round_kind::stall) {  // urgent composed write, lane 2
          r->id = {p, 2, ++seq[2]};
          r->carries_frame = true;
          r->frame = make_frame(p, 2, seq[2], len);
          r->size = r->frame.size();
          writer->async_enqueue(
              serq::urgent,
              net::async_write(writer->next_layer(), net::buffer(r->frame), net::deferred),
              on_write(r));
        } else if (pick < 95 && kind != round_kind::stall) {  // normal composed write
          r->id = {p, 0, ++seq[0]};
          r->carries_frame = true;
          r->frame = make_frame(p, 0, seq[0], len);
          r->size = r->frame.size();
          writer->async_enqueue(
              net::async_write(writer->next_layer(), net::buffer(r->frame), net::deferred),
              on_write(r));
        } else if (pick >= 95) {
          writer->async_flush(on_signal(r));
        } else {
          // Stall rounds: no composed operations, whose time on a stalled
          // stream the deadline does not count.
          writer->async_flush(on_signal(r));
        }
        if (rng() % 16 == 0)
          std::this_thread::yield();
      }
    });
  }
  for (auto& t : producer_threads)
    t.join();

  // Everything completes, or the round is stuck.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while ((completed.load() < requests.size() || (close_calls.load() > 0 && !closed.load())) &&
         std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(milliseconds(5));
  BOOST_TEST(completed.load() == requests.size());
  if (close_calls.load() > 0)
    BOOST_TEST(closed.load());

  const error_code sticky = writer->error();
  stalled = true;
  writer.reset();  // closes the socket: the reader sees the end
  reader.join();
  work.reset();
  for (auto& t : io_threads)
    t.join();

  round_result res;
  res.requests = requests.size();
  BOOST_TEST(reader.error == "");
  for (const auto& r : requests) {
    BOOST_TEST(r->calls.load() == 1);
    if (!r->ec)
      ++res.succeeded;
    else
      ++res.failed;
    if (!r->carries_frame)
      continue;
    const bool on_wire = reader.seen.count(r->id) != 0;
    if (!r->ec) {
      BOOST_TEST(r->bytes == r->size);
      BOOST_TEST(on_wire);  // every success is on the wire, whole
    } else if (r->bytes == 0) {
      BOOST_TEST(!on_wire);  // a request that wrote nothing is not there
    }
  }
  switch (kind) {
    case round_kind::close:
      BOOST_TEST(!close_ec);
      BOOST_TEST(sticky == net::error::shut_down);
      BOOST_TEST(!reader.torn_end);
      break;
    case round_kind::stall:
      BOOST_TEST(sticky == net::error::timed_out);
      break;
    case round_kind::plain:
    case round_kind::timeout_changes:
      BOOST_TEST(!sticky);
      BOOST_TEST(res.failed == 0u);
      BOOST_TEST(!reader.torn_end);
      break;
  }
  return res;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(writer_lifecycle_stress)

BOOST_AUTO_TEST_CASE(urgent_writes_closes_and_stall_deadlines_from_many_threads_lose_nothing) {
  const round_kind kinds[] = {round_kind::plain, round_kind::close, round_kind::stall,
                              round_kind::timeout_changes};
  unsigned seed = 1;
  for (int pass = 0; pass < 2; ++pass) {
    for (const round_kind kind : kinds) {
      BOOST_TEST_CONTEXT("round kind " << static_cast<int>(kind) << ", seed " << seed) {
        const round_result r = run_round(kind, seed++);
        BOOST_TEST_MESSAGE("round " << static_cast<int>(kind) << ": " << r.succeeded
                                    << " succeeded, " << r.failed << " failed");
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
