//
// test/unit/bad_input.cpp
//
// Each kind of odd or wrong input gets a defined, documented result: empty
// messages and buffer sequences, sequences of many pieces, a message of
// hundreds of MiB, inverted watermarks, zero gather limits, and every call
// after the writer has failed.
//

#include <serq/queued_writer.hpp>

#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

BOOST_AUTO_TEST_SUITE(bad_input)

BOOST_AUTO_TEST_CASE(empty_messages_complete_in_order_with_zero_bytes) {
  net::io_context ioc;
  serq_test::test_stream a(ioc), b(ioc);
  a.connect(b);
  serq::queued_writer<serq_test::test_stream&> w(a);
  std::vector<std::pair<int, std::size_t>> done;
  const std::string x = "x", y = "yy";
  auto record = [&done](int id) {
    return [&done, id](error_code ec, std::size_t n) {
      BOOST_TEST(!ec);
      done.emplace_back(id, n);
    };
  };
  w.async_write(net::buffer(x), record(0));
  w.async_write(std::vector<net::const_buffer>{}, record(1));  // empty sequence
  w.async_write(net::const_buffer(), record(2));               // zero-length buffer
  w.async_send(std::string(), record(3));                      // empty owned message
  w.async_write(net::buffer(y), record(4));
  BOOST_TEST(done.empty());  // never inside the call, even with nothing to write
  ioc.run();
  BOOST_TEST_REQUIRE(done.size() == 5u);
  const std::size_t sizes[] = {1, 0, 0, 0, 2};
  for (int i = 0; i < 5; ++i) {
    BOOST_TEST(done[i].first == i);
    BOOST_TEST(done[i].second == sizes[i]);
  }
  BOOST_TEST(b.str() == "xyy");
}

BOOST_AUTO_TEST_CASE(buffer_sequences_of_many_pieces_are_written_exactly) {
  for (std::size_t pieces : {65u, 100u, 1024u, 3000u}) {
    net::io_context ioc;
    serq_test::test_stream a(ioc), b(ioc);
    a.connect(b);
    serq::queued_writer<serq_test::test_stream&> w(a);
    std::vector<std::string> storage;
    std::vector<net::const_buffer> seq;
    std::string expected;
    for (std::size_t i = 0; i < pieces; ++i)
      storage.push_back(std::to_string(i) + ",");
    for (const auto& s : storage) {
      seq.push_back(net::buffer(s));
      expected += s;
    }
    std::size_t reported = 0;
    w.async_write(seq, [&](error_code ec, std::size_t n) {
      BOOST_TEST(!ec);
      reported = n;
    });
    const std::string tail = "|end";
    w.async_write(net::buffer(tail), [](error_code ec, std::size_t) { BOOST_TEST(!ec); });
    ioc.run();
    BOOST_TEST_CONTEXT("pieces=" << pieces) {
      BOOST_TEST(reported == expected.size());
      BOOST_TEST(b.str() == expected + tail);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_message_of_hundreds_of_mib_is_written_whole) {
  // 320 MiB through a socketpair, drained and checked by a reader thread.
  const std::size_t size = std::size_t(320) << 20;
  std::string big(size, '\0');
  for (std::size_t i = 0; i < size; i += 4096)
    big[i] = static_cast<char>(i >> 12);
  const std::string after = "after";

  net::io_context ioc;
  net::local::stream_protocol::socket s1(ioc), s2(ioc);
  net::local::connect_pair(s1, s2);
  serq::queued_writer<net::local::stream_protocol::socket&> w(s1);

  std::size_t received = 0;
  bool content_ok = true;
  std::string trailer;
  std::thread reader([&] {
    std::vector<char> buf(1 << 20);
    error_code ec;
    while (received < size + after.size()) {
      const std::size_t n = s2.read_some(net::buffer(buf), ec);
      if (ec)
        break;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t pos = received + i;
        if (pos >= size)
          trailer.push_back(buf[i]);
        else if (pos % 4096 == 0 && buf[i] != static_cast<char>(pos >> 12))
          content_ok = false;
      }
      received += n;
    }
  });
  std::size_t big_n = 0, after_n = 0;
  w.async_write(net::buffer(big), [&](error_code ec, std::size_t n) {
    BOOST_CHECK(!ec);
    big_n = n;
  });
  w.async_write(net::buffer(after), [&](error_code ec, std::size_t n) {
    BOOST_CHECK(!ec);
    after_n = n;
  });
  ioc.run();
  reader.join();
  BOOST_TEST(big_n == size);
  BOOST_TEST(after_n == after.size());
  BOOST_TEST(received == size + after.size());
  BOOST_TEST(content_ok);
  BOOST_TEST(trailer == after);
}

BOOST_AUTO_TEST_CASE(inverted_watermarks_and_zero_gather_limits_throw_and_change_nothing) {
  net::io_context ioc;
  serq_test::test_stream a(ioc);
  serq::queued_writer<serq_test::test_stream&> w(a);
  w.set_watermarks(10, 20);
  BOOST_CHECK_THROW(w.set_watermarks(21, 20), std::invalid_argument);
  BOOST_CHECK_THROW(w.set_gather_limits(0, 100), std::invalid_argument);
  BOOST_CHECK_THROW(w.set_gather_limits(8, 0), std::invalid_argument);
  // The earlier settings still hold: 21 bytes pending is above high = 20.
  const std::string msg(21, 'm');
  w.async_write(net::buffer(msg), [](error_code, std::size_t) {});
  BOOST_TEST(!w.writable());
  w.set_watermarks(0, 100);           // low == 0 is allowed; high above pending
  BOOST_TEST(w.writable() == false);  // not yet at or below low
  w.set_watermarks(21, 100);
  BOOST_TEST(w.writable());
  w.set_watermarks(5, 5);  // low == high is allowed
}

BOOST_AUTO_TEST_CASE(every_call_after_the_writer_failed_completes_with_its_error_not_inline) {
  net::io_context ioc;
  serq_test::fail_count fc(1);
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  serq::queued_writer<serq_test::test_stream&> w(a);
  const std::string msg = "doomed";
  error_code first;
  w.async_write(net::buffer(msg), [&](error_code ec, std::size_t n) {
    first = ec;
    BOOST_TEST(n == 0u);
  });
  ioc.run();
  BOOST_TEST_REQUIRE(first == error_code(serq_test::test_error::test_failure));
  BOOST_TEST(w.error() == first);
  BOOST_TEST(!w.writable());

  int calls = 0;
  auto expect_sticky2 = [&](error_code ec, std::size_t n) {
    ++calls;
    BOOST_TEST(ec == first);
    BOOST_TEST(n == 0u);
  };
  auto expect_sticky1 = [&](error_code ec) {
    ++calls;
    BOOST_TEST(ec == first);
  };
  w.async_write(net::buffer(msg), expect_sticky2);
  w.async_send(std::string("owned"), expect_sticky2);
  w.async_write_some(net::buffer(msg), expect_sticky2);
  w.async_flush(expect_sticky1);
  w.async_wait_writable(expect_sticky1);
  w.async_enqueue(net::async_write(a, net::buffer(msg), net::deferred), expect_sticky2);
  w.async_enqueue<void(error_code)>(
      [](auto) { BOOST_ERROR("an operation was launched on a failed writer"); }, expect_sticky1);
  BOOST_TEST(calls == 0);
  ioc.restart();
  ioc.run();
  BOOST_TEST(calls == 7);
  BOOST_TEST(b.str().empty());
  BOOST_TEST(w.cancel() == 0u);
  BOOST_TEST(w.size() == 0u);
  BOOST_TEST(w.pending_bytes() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
