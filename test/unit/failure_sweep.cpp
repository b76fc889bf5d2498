//
// test/unit/failure_sweep.cpp
//
// Runs one scenario once for every possible failure point N: the stream's
// Nth write_some fails (serq_test::fail_count). For each N, every call
// must complete exactly once, the bytes reported must be exactly the bytes
// the peer received, in order, and a failed writer must fail later calls
// fast. The sweep ends at the first N that no longer fails anything.
//

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>

#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <array>
#include <string>
#include <vector>

namespace {

// One item of a scenario: its bytes, and what its completion reported.
struct item {
  explicit item(std::string d) : data(std::move(d)) {}
  std::string data;
  int completions = 0;
  error_code ec;
  std::size_t bytes = 0;
};

std::string pattern(std::size_t len, char tag) {
  std::string s(len, tag);
  for (std::size_t i = 0; i < len; i += 7)
    s[i] = static_cast<char>('0' + (i / 7) % 10);
  return s;
}

// The peer must hold exactly each item's reported prefix, in order.
std::string expected_wire(const std::vector<item>& items) {
  std::string out;
  for (const item& it : items)
    out.append(it.data, 0, it.bytes);
  return out;
}

struct sweep_result {
  bool any_failed = false;
};

sweep_result run_writer_scenario(std::size_t fail_at, bool gathering) {
  net::io_context ioc;
  serq_test::fail_count fc(fail_at);
  serq_test::test_stream a(ioc, fc), b(ioc);
  a.connect(b);
  a.write_size(5);  // partial writes: several write_some per message

  serq::queued_writer<serq_test::test_stream&> writer(a);
  writer.set_gathering(gathering);

  std::vector<item> items;
  for (std::size_t len : {11u, 0u, 23u, 1u, 40u})
    items.emplace_back(pattern(len, 'a'));
  items.emplace_back(pattern(17, 'o'));  // written by a composed operation, index 5
  for (std::size_t len : {9u, 31u})
    items.emplace_back(pattern(len, 'z'));
  int flushes = 0;
  error_code flush_ec;

  auto on_done = [&items](std::size_t i) {
    return [&items, i](error_code ec, std::size_t n) {
      ++items[i].completions;
      items[i].ec = ec;
      items[i].bytes = n;
    };
  };
  for (std::size_t i = 0; i < 5; ++i) {
    // A two-piece buffer sequence for the longer ones.
    const std::string& d = items[i].data;
    const std::size_t cut = d.size() / 2;
    std::array<net::const_buffer, 2> seq{net::buffer(d.data(), cut),
                                         net::buffer(d.data() + cut, d.size() - cut)};
    writer.async_write(seq, on_done(i));
  }
  writer.async_enqueue(net::async_write(a, net::buffer(items[5].data), net::deferred), on_done(5));
  writer.async_write(net::buffer(items[6].data), on_done(6));
  writer.async_flush([&](error_code ec) {
    ++flushes;
    flush_ec = ec;
  });
  writer.async_write(net::buffer(items[7].data), on_done(7));
  ioc.run();

  sweep_result r;
  for (std::size_t i = 0; i < items.size(); ++i) {
    BOOST_TEST_CONTEXT("fail_at=" << fail_at << " gathering=" << gathering << " item=" << i) {
      BOOST_TEST(items[i].completions == 1);
      BOOST_TEST(items[i].bytes <= items[i].data.size());
      if (!items[i].ec)
        BOOST_TEST(items[i].bytes == items[i].data.size());
      if (items[i].ec)
        r.any_failed = true;
    }
  }
  BOOST_TEST_CONTEXT("fail_at=" << fail_at << " gathering=" << gathering) {
    BOOST_TEST(flushes == 1);
    BOOST_TEST(b.str() == expected_wire(items));

    // A failed writer fails later calls fast with its sticky error, and
    // never from inside the call.
    const error_code sticky = writer.error();
    if (sticky) {
      BOOST_TEST(r.any_failed);
      int late = 0;
      error_code late_ec;
      std::size_t late_n = 99;
      const std::string late_msg = "late";
      writer.async_write(net::buffer(late_msg), [&](error_code ec, std::size_t n) {
        ++late;
        late_ec = ec;
        late_n = n;
      });
      BOOST_TEST(late == 0);
      ioc.restart();
      ioc.run();
      BOOST_TEST(late == 1);
      BOOST_TEST(late_ec == sticky);
      BOOST_TEST(late_n == 0u);
      BOOST_TEST(b.str() == expected_wire(items));
    }
  }
  return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(failure_sweep)

BOOST_AUTO_TEST_CASE(writer_accounts_for_every_byte_at_every_failure_point) {
  for (bool gathering : {true, false}) {
    std::size_t points = 0;
    for (std::size_t n = 1; n < 500; ++n) {
      if (!run_writer_scenario(n, gathering).any_failed)
        break;
      ++points;
    }
    BOOST_TEST_MESSAGE("writer failure points swept (gathering=" << gathering << "): " << points);
    // The scenario needs many write_some calls: a sweep of a handful would
    // mean the failures never reached the interesting states.
    BOOST_TEST(points >= 10u);
  }
}

BOOST_AUTO_TEST_CASE(queue_of_composed_writes_accounts_for_every_byte_at_every_failure_point) {
  std::size_t points = 0;
  for (std::size_t fail_at = 1; fail_at < 500; ++fail_at) {
    net::io_context ioc;
    serq_test::fail_count fc(fail_at);
    serq_test::test_stream a(ioc, fc), b(ioc);
    a.connect(b);
    a.write_size(4);
    serq::serialized_queue q(ioc.get_executor());

    std::vector<item> items;
    for (std::size_t len : {13u, 2u, 29u, 7u})
      items.emplace_back(pattern(len, 'q'));
    for (std::size_t i = 0; i < items.size(); ++i) {
      q.async_enqueue(net::async_write(a, net::buffer(items[i].data), net::deferred),
                      [&items, i](error_code ec, std::size_t n) {
                        ++items[i].completions;
                        items[i].ec = ec;
                        items[i].bytes = n;
                      });
    }
    ioc.run();

    bool any_failed = false;
    BOOST_TEST_CONTEXT("fail_at=" << fail_at) {
      for (const item& it : items) {
        BOOST_TEST(it.completions == 1);
        if (it.ec) {
          any_failed = true;
          BOOST_TEST(it.ec == error_code(serq_test::test_error::test_failure));
        } else {
          BOOST_TEST(it.bytes == it.data.size());
        }
      }
      // Each operation ran whole before the next began: the peer holds the
      // reported bytes of each, in queue order, never mixed.
      BOOST_TEST(b.str() == expected_wire(items));
      BOOST_TEST(q.empty());
    }
    if (!any_failed)
      break;
    ++points;
  }
  BOOST_TEST_MESSAGE("queue failure points swept: " << points);
  BOOST_TEST(points >= 10u);
}

BOOST_AUTO_TEST_SUITE_END()
