//
// test/unit/test_stream.cpp: the test helper serq_test::test_stream itself
// (test/common/test_stream.hpp), so the tests built on it can trust it.
//

#include "common/test_stream.hpp"
#include "common/net.hpp"

#include <boost/test/unit_test.hpp>

#include <optional>
#include <string>
#include <utility>

using serq_test::fail_count;
using serq_test::test_error;
using serq_test::test_stream;

namespace {

using result = std::optional<std::pair<error_code, std::size_t>>;

auto store(result& r) {
  return [&r](error_code ec, std::size_t n) { r.emplace(ec, n); };
}

}  // namespace

BOOST_AUTO_TEST_SUITE(test_stream_helper)

BOOST_AUTO_TEST_CASE(writes_arrive_in_the_peer_at_once_and_complete_by_post) {
  net::io_context ioc;
  test_stream a(ioc), b(ioc);
  connect(a, b);
  a.write_size(3);
  const std::string msg = "hello";
  result r;
  a.async_write_some(net::buffer(msg), store(r));
  BOOST_TEST(!r.has_value());  // never inside the call
  BOOST_TEST(b.str() == "hel");
  BOOST_TEST(a.nwrite() == 1u);
  ioc.run();
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(!r->first);
  BOOST_TEST(r->second == 3u);

  // A whole async_write in pieces of write_size.
  result whole;
  net::async_write(a, net::buffer(msg), store(whole));
  ioc.restart();
  ioc.run();
  BOOST_TEST_REQUIRE(whole.has_value());
  BOOST_TEST(whole->second == msg.size());
  BOOST_TEST(b.str() == "hel" + msg);
  BOOST_TEST(a.nwrite() == 3u);
}

BOOST_AUTO_TEST_CASE(reads_take_what_is_there_up_to_read_size_then_wait_then_see_eof) {
  net::io_context ioc;
  test_stream a(ioc), b(ioc);
  a.connect(b);
  b.append("abcdef");
  b.read_size(4);
  char buf[16];
  result r1;
  b.async_read_some(net::buffer(buf), store(r1));
  BOOST_TEST(!r1.has_value());
  ioc.run();
  BOOST_TEST_REQUIRE(r1.has_value());
  BOOST_TEST(r1->second == 4u);
  BOOST_TEST(std::string(buf, 4) == "abcd");
  BOOST_TEST(b.str() == "ef");

  // Drain, then a read waits for the peer's write.
  result r2, r3, w;
  b.async_read_some(net::buffer(buf), store(r2));
  ioc.restart();
  ioc.run();
  BOOST_TEST_REQUIRE(r2.has_value());
  BOOST_TEST(r2->second == 2u);
  b.async_read_some(net::buffer(buf), store(r3));
  ioc.restart();
  ioc.poll();
  BOOST_TEST(!r3.has_value());
  const std::string more = "xyz";
  a.async_write_some(net::buffer(more), store(w));
  BOOST_TEST(!r3.has_value());  // completed by post, not inside the write
  ioc.poll();
  BOOST_TEST_REQUIRE(r3.has_value());
  BOOST_TEST(!r3->first);
  BOOST_TEST(std::string(buf, r3->second) == "xyz");

  // The peer closes: a waiting read gets eof.
  result r4;
  b.async_read_some(net::buffer(buf), store(r4));
  ioc.restart();
  ioc.poll();
  BOOST_TEST(!r4.has_value());
  a.close();
  ioc.poll();
  BOOST_TEST_REQUIRE(r4.has_value());
  BOOST_TEST(r4->first == net::error::eof);
}

BOOST_AUTO_TEST_CASE(a_pending_read_keeps_run_going_until_it_completes) {
  net::io_context ioc;
  test_stream a(ioc), b(ioc);
  a.connect(b);
  char c = 0;
  result r;
  b.async_read_some(net::buffer(&c, 1), store(r));
  BOOST_TEST(ioc.poll() == 0u);
  BOOST_TEST(!ioc.stopped());  // the pending read is outstanding work
  b.close_remote();
  ioc.run();
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->first == net::error::eof);
}

BOOST_AUTO_TEST_CASE(a_pending_read_is_cancelled_through_its_slot_by_every_type) {
  for (auto type : {net::cancellation_type::terminal, net::cancellation_type::partial,
                    net::cancellation_type::total}) {
    net::io_context ioc;
    test_stream a(ioc), b(ioc);
    a.connect(b);
    net::cancellation_signal sig;
    char c = 0;
    result r;
    b.async_read_some(net::buffer(&c, 1), net::bind_cancellation_slot(sig.slot(), store(r)));
    ioc.poll();
    sig.emit(type);
    BOOST_TEST(!r.has_value());
    ioc.run();
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(r->first == net::error::operation_aborted);
    BOOST_TEST(r->second == 0u);
    // A later read with the same slot, and a stale emit, are unaffected.
    result r2;
    b.async_read_some(net::buffer(&c, 1), store(r2));
    sig.emit(type);
    b.append("z");
    ioc.restart();
    ioc.run();
    BOOST_TEST_REQUIRE(r2.has_value());
    BOOST_TEST(!r2->first);
    BOOST_TEST(c == 'z');
  }
}

BOOST_AUTO_TEST_CASE(fail_count_fails_the_nth_and_every_later_operation) {
  net::io_context ioc;
  fail_count fc(2);
  test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  const std::string msg = "x";
  result r1, r2, r3;
  a.async_write_some(net::buffer(msg), store(r1));
  a.async_write_some(net::buffer(msg), store(r2));
  a.async_write_some(net::buffer(msg), store(r3));
  ioc.run();
  BOOST_TEST(!r1->first);
  BOOST_TEST(r2->first == error_code(test_error::test_failure));
  BOOST_TEST(r2->second == 0u);
  BOOST_TEST(r3->first == test_error::test_failure);
  BOOST_TEST(r3->first != net::error::operation_aborted);
  BOOST_TEST(std::string(r3->first.category().name()) == "serq.test");
  BOOST_TEST(b.str() == "x");
}

BOOST_AUTO_TEST_CASE(writes_without_a_peer_fail_with_connection_reset) {
  net::io_context ioc;
  test_stream a(ioc);
  auto b = std::make_unique<test_stream>(ioc);
  a.connect(*b);
  const std::string msg = "x";
  result r1, r2, r3;
  b.reset();
  a.async_write_some(net::buffer(msg), store(r1));
  test_stream lonely(ioc);
  lonely.async_write_some(net::buffer(msg), store(r2));
  lonely.async_write_some(net::const_buffer(), store(r3));  // writing nothing succeeds
  ioc.run();
  BOOST_TEST(r1->first == net::error::connection_reset);
  BOOST_TEST(r2->first == net::error::connection_reset);
  BOOST_TEST(!r3->first);
}

BOOST_AUTO_TEST_CASE(closing_aborts_a_pending_read_of_this_end) {
  net::io_context ioc;
  test_stream a(ioc), b(ioc);
  a.connect(b);
  char c = 0;
  result r;
  a.async_read_some(net::buffer(&c, 1), store(r));
  a.close();
  BOOST_TEST(!r.has_value());
  ioc.run();
  BOOST_TEST(r->first == net::error::operation_aborted);
}

BOOST_AUTO_TEST_CASE(completions_run_on_the_handlers_associated_executor) {
  net::io_context ioc;
  auto strand = net::make_strand(ioc);
  test_stream a(ioc), b(ioc);
  a.connect(b);
  const std::string msg = "x";
  bool on_strand = false;
  a.async_write_some(net::buffer(msg), net::bind_executor(strand, [&](error_code, std::size_t) {
                       on_strand = strand.running_in_this_thread();
                     }));
  ioc.run();
  BOOST_TEST(on_strand);
}

BOOST_AUTO_TEST_SUITE_END()
