//
// test/unit/writer_stats.cpp
//
// queued_writer::stats(): what each counter counts (messages, bytes,
// write_some calls, pending and peak pending bytes, time above the high
// watermark), and that it may be called from any thread while the writer
// works, each call returning a consistent snapshot.
//

#include <serq/queued_writer.hpp>

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <string>
#include <thread>
#include <vector>

using serq_test::test_stream;

BOOST_AUTO_TEST_SUITE(writer_stats)

BOOST_AUTO_TEST_CASE(a_fresh_writer_counts_nothing) {
  net::io_context ioc;
  serq::queued_writer<test_stream> w(ioc);
  const serq::writer_stats s = w.stats();
  BOOST_TEST(s.messages == 0u);
  BOOST_TEST(s.bytes == 0u);
  BOOST_TEST(s.write_calls == 0u);
  BOOST_TEST(s.pending_bytes == 0u);
  BOOST_TEST(s.peak_pending_bytes == 0u);
  BOOST_TEST(s.time_above_high_watermark.count() == 0);
}

BOOST_AUTO_TEST_CASE(messages_bytes_and_write_calls_count_what_the_stream_took) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer(ioc);
  serq::queued_writer<test_stream> w(ioc);
  w.next_layer().connect(peer);
  w.next_layer().write_size(4);
  int done = 0;
  for (std::string m : {"aaaa", "bbbbbb", "", "cc"})
    w.async_send(m, tr.wrap([&done](error_code ec, std::size_t) { done += !ec; }));
  // Queued from a thread that does not run the context: nothing written yet.
  serq::writer_stats s = w.stats();
  BOOST_TEST(s.pending_bytes == 12u);
  BOOST_TEST(s.peak_pending_bytes == 12u);
  BOOST_TEST(s.write_calls == 0u);
  ioc.run();
  BOOST_TEST(done == 4);
  s = w.stats();
  BOOST_TEST(s.messages == 4u);  // the empty one too
  BOOST_TEST(s.bytes == 12u);
  BOOST_TEST(s.write_calls == 3u);  // one gathered window, 4 bytes per write_some
  BOOST_TEST(s.pending_bytes == 0u);
  BOOST_TEST(s.peak_pending_bytes == 12u);
  BOOST_TEST(peer.str() == "aaaabbbbbbcc");
}

BOOST_AUTO_TEST_CASE(a_failed_write_counts_the_bytes_taken_but_not_the_message) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  serq_test::fail_count fc(2);  // the second write_some fails
  test_stream peer(ioc);
  serq::queued_writer<test_stream> w(ioc, fc);
  w.next_layer().connect(peer);
  w.next_layer().write_size(3);
  w.async_send(std::string("abcdef"), tr.wrap([](error_code, std::size_t) {}));
  ioc.run();
  const serq::writer_stats s = w.stats();
  BOOST_TEST(s.messages == 0u);
  BOOST_TEST(s.bytes == 3u);
  BOOST_TEST(s.write_calls == 2u);
  BOOST_TEST(s.pending_bytes == 0u);
}

BOOST_AUTO_TEST_CASE(time_above_the_high_watermark_runs_only_while_above_it) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer(ioc);
  serq::queued_writer<test_stream> w(ioc);
  w.next_layer().connect(peer);
  w.set_watermarks(10, 20);
  w.async_send(std::string(15, 'x'), tr.wrap([](error_code, std::size_t) {}));
  BOOST_TEST(w.writable());
  BOOST_TEST(w.stats().time_above_high_watermark.count() == 0);  // 15 is not above 20
  w.async_send(std::string(15, 'y'), tr.wrap([](error_code, std::size_t) {}));
  BOOST_TEST(!w.writable());
  const auto t1 = w.stats().time_above_high_watermark;
  const auto t2 = w.stats().time_above_high_watermark;
  BOOST_TEST(t2.count() >= t1.count());  // the current spell is counted as it goes
  ioc.run();
  BOOST_TEST(w.writable());
  // The spell ended when the writer dropped to the low watermark: the total
  // stays put from then on.
  const auto t3 = w.stats().time_above_high_watermark;
  const auto t4 = w.stats().time_above_high_watermark;
  BOOST_TEST(t3.count() >= t2.count());
  BOOST_TEST(t4.count() == t3.count());
  BOOST_TEST(w.stats().peak_pending_bytes == 30u);
}

BOOST_AUTO_TEST_CASE(stats_may_be_read_from_any_thread_while_the_writer_works) {
  constexpr int producers = 3;
  constexpr int per_producer = 400;
  constexpr std::size_t size = 10;
  serq_test::handler_tracker tr;
  net::io_context ioc(2);
  test_stream peer(ioc);
  serq::queued_writer<test_stream> w(net::make_strand(ioc));
  w.next_layer().connect(peer);
  w.next_layer().write_size(7);
  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> io;
  for (int i = 0; i < 2; ++i)
    io.emplace_back([&] { ioc.run(); });

  std::atomic<int> completed{0};
  std::atomic<bool> stop{false};
  std::atomic<int> bad_snapshots{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back([&] {
      serq::writer_stats last;
      while (!stop.load()) {
        const serq::writer_stats s = w.stats();
        const bool ok = s.messages >= last.messages && s.bytes >= last.bytes &&
                        s.write_calls >= last.write_calls &&
                        s.peak_pending_bytes >= last.peak_pending_bytes &&
                        s.peak_pending_bytes >= s.pending_bytes &&
                        s.bytes <= std::uint64_t{producers} * per_producer * size &&
                        s.messages * size <= s.bytes;
        if (!ok)
          ++bad_snapshots;
        last = s;
        // Let the writer's threads run on a loaded or serialized CPU: under
        // valgrind, two readers spinning without it took 80 to 210 s.
        std::this_thread::yield();
      }
    });
  std::vector<std::thread> senders;
  for (int p = 0; p < producers; ++p)
    senders.emplace_back([&, p] {
      for (int i = 0; i < per_producer; ++i)
        w.async_send(std::string(size, static_cast<char>('a' + p)),
                     tr.wrap([&completed](error_code ec, std::size_t) {
                       if (!ec)
                         ++completed;
                     }));
    });
  for (auto& t : senders)
    t.join();
  std::promise<void> flushed;
  w.async_flush([&](error_code) { flushed.set_value(); });
  flushed.get_future().wait();
  stop = true;
  for (auto& t : readers)
    t.join();
  work.reset();
  for (auto& t : io)
    t.join();

  BOOST_TEST(bad_snapshots.load() == 0);
  BOOST_TEST(completed.load() == producers * per_producer);
  const serq::writer_stats s = w.stats();
  BOOST_TEST(s.messages == std::uint64_t{producers} * per_producer);
  BOOST_TEST(s.bytes == std::uint64_t{producers} * per_producer * size);
  BOOST_TEST(s.pending_bytes == 0u);
  BOOST_TEST(s.write_calls >= s.bytes / 7);
  BOOST_TEST(peer.str().size() == s.bytes);
}

BOOST_AUTO_TEST_SUITE_END()
