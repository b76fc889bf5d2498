//
// test/unit/owned_messages.cpp
//
// queued_writer::async_send with every form of owned message: strings and
// byte vectors and arrays, shared pointers to them, vectors, arrays, pairs
// and tuples of owned messages, and objects whose data() is a const buffer
// sequence (a test type here, and Beast's flat_buffer and multi_buffer in the
// Boost flavour). Each is written byte-exact through a stream that takes a
// few bytes per write_some, gathered with other messages; its storage lives
// until its bytes are written and is freed when the request completes (or is
// aborted). The lifetime checks are meant for the ASan build as well: a
// write from freed storage is a report there.
//

#include <serq/queued_writer.hpp>

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#if SERQ_TEST_WITH_BEAST  // Boost flavour only (test/CMakeLists.txt)
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/multi_buffer.hpp>
#endif

#include <boost/test/unit_test.hpp>

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using serq_test::test_stream;

namespace {

using shared_string = std::shared_ptr<const std::string>;

shared_string share(std::string s) {
  return std::make_shared<const std::string>(std::move(s));
}

// An object that owns its bytes in pieces and shows them through data(), as a
// Beast dynamic buffer does: a flavour-neutral stand-in for those. It counts
// its live instances that still own bytes.
class chunked_body {
 public:
  explicit chunked_body(std::vector<std::string> pieces, int* alive = nullptr)
      : pieces_(std::move(pieces)), alive_(alive) {
    if (alive_)
      ++*alive_;
  }
  chunked_body(chunked_body&& o) noexcept
      : pieces_(std::move(o.pieces_)), alive_(std::exchange(o.alive_, nullptr)) {}
  chunked_body& operator=(chunked_body&&) = delete;
  ~chunked_body() {
    if (alive_)
      --*alive_;
  }

  std::vector<net::const_buffer> data() const {
    std::vector<net::const_buffer> out;
    for (const auto& p : pieces_)
      out.push_back(net::buffer(p));
    return out;
  }

 private:
  std::vector<std::string> pieces_;
  int* alive_;
};

struct result {
  error_code ec;
  std::size_t bytes = 0;
  int calls = 0;
};

// A writer over a test stream whose every write_some takes at most
// `write_size` bytes, and its peer.
struct fixture {
  serq_test::handler_tracker
      tr;  // checks, when destroyed last, that every handler was accounted for
  net::io_context ioc;
  test_stream peer{ioc};
  serq::queued_writer<test_stream> writer{ioc};

  explicit fixture(std::size_t write_size = 5) {
    writer.next_layer().connect(peer);
    writer.next_layer().write_size(write_size);
  }

  // Queues msg, recording its completion in r.
  template <class Message>
  void send(Message msg, result& r) {
    writer.async_send(std::move(msg), tr.wrap([&r](error_code ec, std::size_t n) {
      r.ec = ec;
      r.bytes = n;
      ++r.calls;
    }));
  }
};

// Sends `msg` between two plain messages and checks that the peer received
// exactly before + expected + after, each message complete and successful.
template <class Message>
void check_byte_exact(Message msg, const std::string& expected) {
  fixture f;
  const std::string before = "<before>";
  const std::string after = "<after>";
  result r0, r1, r2;
  f.send(before, r0);
  f.send(std::move(msg), r1);
  f.send(after, r2);
  f.ioc.run();
  BOOST_TEST(f.peer.str() == before + expected + after);
  for (const result* r : {&r0, &r1, &r2}) {
    BOOST_TEST(!r->ec);
    BOOST_TEST(r->calls == 1);
  }
  BOOST_TEST(r1.bytes == expected.size());
  BOOST_TEST(f.writer.next_layer().nwrite() > 3u);  // partial writes, as asked
}

}  // namespace

BOOST_AUTO_TEST_SUITE(owned_messages)

BOOST_AUTO_TEST_CASE(accepted_forms_are_recognised_and_others_are_not) {
  using serq::detail::is_owned_message;
  static_assert(is_owned_message<std::string>::value);
  static_assert(is_owned_message<std::vector<char>>::value);
  static_assert(is_owned_message<std::vector<unsigned char>>::value);
  static_assert(is_owned_message<std::vector<std::byte>>::value);
  static_assert(is_owned_message<std::array<char, 4>>::value);
  static_assert(is_owned_message<shared_string>::value);
  static_assert(is_owned_message<std::shared_ptr<std::string>>::value);
  static_assert(is_owned_message<std::vector<std::string>>::value);
  static_assert(is_owned_message<std::vector<shared_string>>::value);
  static_assert(is_owned_message<std::array<shared_string, 3>>::value);
  static_assert(is_owned_message<std::pair<std::string, shared_string>>::value);
  static_assert(is_owned_message<std::tuple<std::string, shared_string, std::vector<char>>>::value);
  static_assert(is_owned_message<std::shared_ptr<const std::vector<std::string>>>::value);
  static_assert(is_owned_message<chunked_body>::value);
  static_assert(is_owned_message<std::pair<std::string, chunked_body>>::value);
  // Views and borrowed buffers are not owned: async_write takes those.
  static_assert(!is_owned_message<std::string_view>::value);
  static_assert(!is_owned_message<const char*>::value);
  static_assert(!is_owned_message<net::const_buffer>::value);
  static_assert(!is_owned_message<std::vector<net::const_buffer>>::value);
  static_assert(!is_owned_message<std::vector<std::string_view>>::value);
  static_assert(!is_owned_message<std::vector<int>>::value);
  static_assert(!is_owned_message<std::pair<std::string, int>>::value);
  static_assert(!is_owned_message<std::shared_ptr<int>>::value);
#if SERQ_TEST_WITH_BEAST
  static_assert(is_owned_message<boost::beast::flat_buffer>::value);
  static_assert(is_owned_message<boost::beast::multi_buffer>::value);
#endif
  // The single-string request holds the string and nothing more for it.
  static_assert(sizeof(serq::detail::owned_message<std::string>) == sizeof(std::string));
  BOOST_TEST(true);
}

BOOST_AUTO_TEST_CASE(a_vector_of_strings_is_written_byte_exact) {
  // Short strings (moved with their bytes) and long ones, and an empty one.
  check_byte_exact(std::vector<std::string>{"GET", "", " /index.html ", std::string(300, 'x')},
                   "GET /index.html " + std::string(300, 'x'));
}

BOOST_AUTO_TEST_CASE(an_array_and_a_vector_of_shared_strings_are_written_byte_exact) {
  const shared_string payload = share(std::string(100, 'p'));
  check_byte_exact(std::array<shared_string, 3>{share("head:"), payload, share(":tail")},
                   "head:" + *payload + ":tail");
  // A null pointer is an empty part.
  check_byte_exact(std::vector<shared_string>{payload, nullptr, share("!")}, *payload + "!");
}

BOOST_AUTO_TEST_CASE(a_pair_and_a_tuple_of_header_and_shared_payload_are_written_byte_exact) {
  const shared_string payload = share(std::string(64, 'b'));
  check_byte_exact(std::pair<std::string, shared_string>{"$64\r\n", payload}, "$64\r\n" + *payload);
  check_byte_exact(
      std::tuple<std::string, shared_string, std::vector<char>>{"hdr", payload,
                                                                std::vector<char>{'\r', '\n'}},
      "hdr" + *payload + "\r\n");
}

BOOST_AUTO_TEST_CASE(nested_owned_messages_are_written_byte_exact) {
  auto parts = std::make_shared<const std::vector<std::string>>(
      std::vector<std::string>{"one,", "two,", "three"});
  check_byte_exact(std::pair<std::array<char, 3>, decltype(parts)>{{'[', '1', ']'}, parts},
                   "[1]one,two,three");
}

BOOST_AUTO_TEST_CASE(an_object_whose_data_is_a_buffer_sequence_is_written_byte_exact) {
  check_byte_exact(chunked_body({"chunk one|", "", "chunk two|", std::string(40, 'z')}),
                   "chunk one|chunk two|" + std::string(40, 'z'));
}

#if SERQ_TEST_WITH_BEAST
BOOST_AUTO_TEST_CASE(beast_dynamic_buffers_are_written_byte_exact) {
  const std::string text = std::string(1000, 'f') + "end";
  boost::beast::flat_buffer flat;
  flat.commit(net::buffer_copy(flat.prepare(text.size()), net::buffer(text)));
  check_byte_exact(std::move(flat), text);

  boost::beast::multi_buffer multi;
  for (int i = 0; i < 4; ++i) {
    const std::string part(300, static_cast<char>('a' + i));
    multi.commit(net::buffer_copy(multi.prepare(part.size()), net::buffer(part)));
  }
  std::string expected;
  for (int i = 0; i < 4; ++i)
    expected += std::string(300, static_cast<char>('a' + i));
  check_byte_exact(std::move(multi), expected);
}
#endif

BOOST_AUTO_TEST_CASE(an_owned_sequence_with_more_parts_than_a_window_holds_stays_whole) {
  // 150 parts: three windows of at most 64 buffers, and other messages on
  // either side that must not land between them.
  std::vector<std::string> parts;
  std::string expected;
  for (int i = 0; i < 150; ++i) {
    parts.push_back(std::to_string(i) + ";");
    expected += parts.back();
  }
  check_byte_exact(std::move(parts), expected);
}

BOOST_AUTO_TEST_CASE(urgent_owned_sequences_go_ahead_of_queued_normal_messages) {
  fixture f(1000);
  result r0, r1, r2;
  f.send(std::string("first"), r0);  // its pump is queued: nothing is written yet
  f.send(std::string("second"), r1);
  f.writer.async_send(serq::urgent, std::pair<std::string, shared_string>{"U:", share("rgent")},
                      f.tr.wrap([&r2](error_code ec, std::size_t n) {
                        r2.ec = ec;
                        r2.bytes = n;
                        ++r2.calls;
                      }));
  f.ioc.run();
  BOOST_TEST(f.peer.str() == "U:rgentfirstsecond");
  BOOST_TEST(r2.bytes == 7u);
  BOOST_TEST(!r2.ec);
}

BOOST_AUTO_TEST_CASE(the_payload_lives_until_its_last_byte_is_written_and_goes_at_completion) {
  fixture f(3);
  int alive = 0;
  std::weak_ptr<const std::string> payload;
  result r;
  {
    auto p = share(std::string(30, 'q'));
    payload = p;
    f.send(std::pair<chunked_body, shared_string>{chunked_body({"abc", "defgh"}, &alive),
                                                  std::move(p)},
           r);
  }
  BOOST_TEST(alive == 1);
  // One handler at a time: until the request completes, its storage is there
  // (38 bytes, 3 per write_some: 13 writes).
  while (r.calls == 0) {
    BOOST_TEST(!payload.expired());
    BOOST_TEST(alive == 1);
    if (f.ioc.run_one() == 0)
      break;
  }
  BOOST_TEST(r.calls == 1);
  BOOST_TEST(r.bytes == 38u);
  BOOST_TEST(f.peer.str() == "abcdefgh" + std::string(30, 'q'));
  // Freed before the handler ran, as every intermediate storage is.
  BOOST_TEST(payload.expired());
  BOOST_TEST(alive == 0);
}

BOOST_AUTO_TEST_CASE(aborted_owned_messages_free_their_storage) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer(ioc);
  int alive = 0;
  std::weak_ptr<const std::string> payload;
  result cancelled, destroyed;
  auto record = [&tr](result& r) {
    return tr.wrap([&r](error_code ec, std::size_t n) {
      r.ec = ec;
      r.bytes = n;
      ++r.calls;
    });
  };
  {
    serq::queued_writer<test_stream> writer(ioc);
    writer.next_layer().connect(peer);
    {
      auto p = share("never written");
      payload = p;
      writer.async_send(std::vector<shared_string>{std::move(p)}, record(cancelled));
    }
    BOOST_TEST(writer.cancel() == 1u);
    ioc.poll();  // the aborted completion; the pump finds nothing to write
    BOOST_TEST(cancelled.calls == 1);
    BOOST_TEST(cancelled.ec == net::error::operation_aborted);
    BOOST_TEST(payload.expired());

    writer.async_send(chunked_body({"queued", " and dropped"}, &alive), record(destroyed));
    BOOST_TEST(alive == 1);
  }  // destroyed before its pump ran
  ioc.restart();
  ioc.run();
  BOOST_TEST(alive == 0);
  BOOST_TEST(destroyed.calls == 1);
  BOOST_TEST(destroyed.ec == net::error::operation_aborted);
  BOOST_TEST(destroyed.bytes == 0u);
  BOOST_TEST(peer.str().empty());
}

BOOST_AUTO_TEST_SUITE_END()
