//
// test/unit/lean_writer.cpp
//
// What keeps queued_writer's per-message and idle cost small, and the rules
// that must survive it: a pending request is five words plus its handler and
// buffers (the 80-byte block of Asio's recycling allocator for a one-pointer
// callback, borrowed or std::string); outstanding work is held for a handler
// on another executor only, and still held there; the gather window's array
// exists only while a window needs it and the writer is busy; the writer's
// busy state (request lists, window, cancellation signals) only while
// something is queued, written or closing (a request that finds no memory
// for it is refused with no_memory; a window that finds none for its gather
// array is cut shorter); the blocks a thread keeps for its next writer do not
// outlive the thread; the stall timer only once a deadline was set.
//

#include <serq/queued_writer.hpp>

#include "common/exactly_once.hpp"
#include "common/net.hpp"
#include "common/test_stream.hpp"

#include <boost/test/unit_test.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace d = serq::detail;
using serq_test::test_stream;

namespace {

// What a bare writer_core holds for posting aborts: nothing (it has no
// executor), so one empty executor serves every call.
net::any_io_executor no_work;

struct one_pointer_callback {
  int* count;
  void operator()(error_code, std::size_t) const { ++*count; }
};

// A bare request for driving writer_core directly: one buffer each (a write),
// or none (kind::close: an async_close).
struct completion {
  error_code ec;
  std::size_t bytes = 0;
};

class plain_node final : public d::writer_node {
 public:
  plain_node(std::string data, std::vector<completion>* results, kind k = kind::write)
      : d::writer_node(&table, k, 0), data_(std::move(data)), results_(results) {
    set_size(data_.size());
  }

 private:
  static void do_complete(d::writer_node* b, const d::writer_core&, error_code ec, std::size_t n,
                          d::completion_mode) {
    auto* self = static_cast<plain_node*>(b);
    self->results_->push_back({ec, n});
    delete self;
  }
  static void do_destroy(d::writer_node* b) noexcept { delete static_cast<plain_node*>(b); }
  static void do_fill(const d::writer_node* b, std::size_t offset, d::window_builder& w) noexcept {
    const auto* self = static_cast<const plain_node*>(b);
    w.append(net::buffer(self->data_) + offset);
  }
  static constexpr ops table{&do_complete, &do_destroy, &do_fill};

  std::string data_;
  std::vector<completion>* results_;
};

// Adds n one-byte messages to core, all in segment 0.
void add_messages(d::writer_core& core, std::size_t n, std::vector<completion>& results) {
  for (std::size_t i = 0; i < n; ++i) {
    d::node_list rejected;
    core.add(new plain_node("x", &results), rejected, [](std::uint32_t) {});
    BOOST_TEST_REQUIRE(rejected.empty());
  }
}

// Cuts the next window of segment 0 (the pump's step) and returns its buffer count.
std::size_t cut_window(d::writer_core& core) {
  d::node_list done;
  std::size_t buffers = 0;
  const bool wrote = core.next_write(0, done, [&](const d::buffer_window& w) {
    buffers = static_cast<std::size_t>(w.end() - w.begin());
  });
  BOOST_TEST_REQUIRE(wrote);
  BOOST_TEST_REQUIRE(done.empty());
  return buffers;
}

// Cuts the next window of `segment` and returns its bytes; nothing if the
// segment has nothing left to write (the pump would release its turn).
std::optional<std::string> next_window_bytes(d::writer_core& core, std::uint32_t segment = 0) {
  d::node_list done;
  std::string bytes;
  const bool wrote = core.next_write(segment, done, [&](const d::buffer_window& w) {
    for (const auto& b : w)
      bytes.append(static_cast<const char*>(b.data()), b.size());
  });
  BOOST_TEST_REQUIRE(done.empty());
  if (!wrote)
    return std::nullopt;
  return bytes;
}

void written(d::writer_core& core, std::size_t n) {
  d::node_list done;
  core.on_written(error_code(), n, done);
  done.complete_all(core, d::completion_mode::post);
}

// Nothrow allocations of exactly this many bytes fail on this thread (0:
// none). serq asks for two blocks that way, the writer's busy state and its
// gather array: the tests take them away with this.
thread_local std::size_t failing_nothrow_size = 0;

// Whether failing_nothrow_size takes effect: not where the program's
// allocator is replaced from outside (valgrind intercepts operator new).
// A precondition of the tests that rely on it, which are skipped otherwise.
struct nothrow_failure_injectable {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    constexpr std::size_t probe = 12345;
    failing_nothrow_size = probe;
    void* p = ::operator new(probe, std::nothrow);
    failing_nothrow_size = 0;
    ::operator delete(p);
    boost::test_tools::assertion_result r(p == nullptr);
    if (p)
      r.message() << "nothrow operator new is not this program's (valgrind?)";
    return r;
  }
};

// Sends ten one-letter messages, a to j, all queued before the writer runs,
// on a writer of its own; returns what the peer received and the writer's
// write_some calls. ok counts the messages that completed without error.
std::string send_ten(int& ok, std::uint64_t* write_calls = nullptr) {
  net::io_context ioc;
  test_stream peer(ioc);
  serq::queued_writer<test_stream> writer(ioc);
  writer.next_layer().connect(peer);
  for (char c = 'a'; c <= 'j'; ++c)
    writer.async_send(std::string(1, c), [&ok](error_code ec, std::size_t n) {
      if (!ec && n == 1)
        ++ok;
    });
  ioc.run();
  if (write_calls)
    *write_calls = writer.stats().write_calls;
  return peer.str();
}

// A writer owning a test_stream connected to peer, and a tracker that checks
// every handler ran once.
struct connected_writer {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer{ioc};
  serq::queued_writer<test_stream> writer{ioc};
  connected_writer() { writer.next_layer().connect(peer); }
};

}  // namespace

void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (n == failing_nothrow_size)
    return nullptr;
  try {
    return ::operator new(n);
  } catch (...) {
    return nullptr;
  }
}

void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  if (n == failing_nothrow_size)
    return nullptr;
  try {
    return ::operator new[](n);
  } catch (...) {
    return nullptr;
  }
}

BOOST_AUTO_TEST_SUITE(lean_writer)

// What an idle writer holds besides its queue's core (case 8 of the
// benchmark): its shared state, which malloc keeps in a 256-byte chunk when
// it asks for at most 248 bytes (it was 376 and make_shared's control block).
BOOST_AUTO_TEST_CASE(an_idle_writers_shared_state_fits_a_256_byte_block) {
  BOOST_TEST(sizeof(d::writer_state<net::local::stream_protocol::socket&>) <= 248u);
  BOOST_TEST(sizeof(d::writer_state<test_stream&>) <= 248u);
}

BOOST_AUTO_TEST_CASE(a_pending_message_with_a_one_pointer_callback_fits_an_80_byte_block) {
  using io_executor = net::any_io_executor;
  using borrowed =
      d::handler_node<d::borrowed_buffers<net::const_buffer>, one_pointer_callback, io_executor>;
  using owned = d::handler_node<d::owned_message<std::string>, one_pointer_callback, io_executor>;
  BOOST_TEST(sizeof(d::writer_node) == 4 * sizeof(void*));
  // Asio's recycling allocator asks for the size rounded up to 4, plus one
  // byte, rounded up to 16 (the default alignment): up to 72 bytes make an
  // 80-byte request, which malloc keeps in a 96-byte chunk.
  BOOST_TEST(sizeof(borrowed) <= 72u);
  BOOST_TEST(sizeof(owned) <= 72u);
}

BOOST_FIXTURE_TEST_CASE(a_message_longer_than_2_to_the_48_bytes_is_refused_and_the_writer_goes_on,
                        connected_writer) {
  // Never read: the message is refused before its bytes are looked at.
  static const char byte = 'x';
  const std::array<net::const_buffer, 3> huge = {net::const_buffer(&byte, std::size_t{1} << 47),
                                                 net::const_buffer(&byte, std::size_t{1} << 47),
                                                 net::const_buffer(&byte, std::size_t{1} << 47)};
  error_code refused;
  std::size_t refused_bytes = 1;
  writer.async_write(huge, tr.wrap([&](error_code ec, std::size_t n) {
    refused = ec;
    refused_bytes = n;
  }));
  BOOST_TEST(writer.pending_bytes() == 0u);
  writer.async_send(std::string("after"), tr.wrap([](error_code ec, std::size_t n) {
    BOOST_TEST(!ec);
    BOOST_TEST(n == 5u);
  }));
  ioc.run();
  BOOST_TEST(refused == net::error::message_size);
  BOOST_TEST(refused_bytes == 0u);
  BOOST_TEST(!writer.error());
  BOOST_TEST(peer.str() == "after");
}

BOOST_AUTO_TEST_CASE(a_handler_on_another_io_context_keeps_it_running_and_completes_there) {
  serq_test::handler_tracker tr;
  net::io_context ioc, handler_ioc;
  test_stream peer(ioc);
  serq::queued_writer<test_stream> writer(ioc);
  writer.next_layer().connect(peer);

  bool done = false;
  writer.async_send(std::string("hello"),
                    net::bind_executor(handler_ioc, tr.wrap([&](error_code ec, std::size_t n) {
                      BOOST_TEST(!ec);
                      BOOST_TEST(n == 5u);
                      done = true;
                    })));
  // Nothing is ready there yet, but the pending write is work on it: poll()
  // does not find the context out of work (which would stop it).
  BOOST_TEST(handler_ioc.poll() == 0u);
  BOOST_TEST(!handler_ioc.stopped());
  ioc.run();
  BOOST_TEST(peer.str() == "hello");
  BOOST_TEST(!done);  // its completion went to handler_ioc
  BOOST_TEST(handler_ioc.run() == 1u);
  BOOST_TEST(done);
  BOOST_TEST(handler_ioc.stopped());  // and the work went with it
}

BOOST_AUTO_TEST_CASE(messages_waiting_behind_a_stalled_operation_keep_run_from_returning) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  test_stream peer(ioc);
  std::optional<serq::queued_writer<test_stream>> writer(std::in_place, ioc);
  writer->next_layer().connect(peer);

  // An operation of the writer's that keeps its handler and holds no work
  // of its own (a stream operation waiting on something outside Asio), and
  // messages behind it, all on the writer's own executor: only the writer
  // keeps the context from running out of work.
  std::optional<std::function<void(error_code)>> stalled;
  bool op_done = false;
  writer->async_enqueue<void(error_code)>(
      [&](auto handler) {
        stalled.emplace([h = std::make_shared<decltype(handler)>(std::move(handler))](
                            error_code ec) mutable { std::move (*h)(ec); });
      },
      tr.wrap([&](error_code ec) {
        BOOST_TEST(!ec);
        op_done = true;
      }));
  int completed = 0;
  for (int i = 0; i < 3; ++i)
    writer->async_write(net::buffer("abc", 3),
                        tr.wrap([&](error_code, std::size_t) { ++completed; }));
  ioc.poll();
  BOOST_TEST_REQUIRE(stalled.has_value());
  BOOST_TEST(!ioc.stopped());  // poll() found work outstanding
  BOOST_TEST(completed == 0);
  BOOST_TEST(peer.str().empty());

  (*stalled)(error_code());
  stalled.reset();
  ioc.restart();
  ioc.run();  // returns: nothing left
  BOOST_TEST(op_done);
  BOOST_TEST(completed == 3);
  BOOST_TEST(peer.str() == "abcabcabc");
  BOOST_TEST(ioc.stopped());
}

BOOST_AUTO_TEST_CASE(a_window_of_a_few_buffers_uses_no_heap_storage) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  add_messages(*core, d::window_storage::inline_size, results);
  BOOST_TEST(cut_window(*core) == d::window_storage::inline_size);
  BOOST_TEST(core->window_heap_bytes() == 0u);
  written(*core, d::window_storage::inline_size);
  BOOST_TEST(results.size() == d::window_storage::inline_size);
}

BOOST_AUTO_TEST_CASE(a_gathered_window_has_heap_storage_only_while_the_writer_is_busy) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  add_messages(*core, 100, results);
  BOOST_TEST(cut_window(*core) == d::writer_core::default_max_buffers);
  BOOST_TEST(core->window_heap_bytes() ==
             d::writer_core::default_max_buffers * sizeof(net::const_buffer));
  // Half of it written: still busy, the storage stays for the next window.
  written(*core, 32);
  BOOST_TEST(core->window_heap_bytes() > 0u);
  BOOST_TEST(cut_window(*core) == 64u);  // the 32 left of the first window, and 32 more
  BOOST_TEST(core->window_heap_bytes() > 0u);
  written(*core, 64);
  BOOST_TEST(cut_window(*core) == 4u);
  written(*core, 4);
  // Nothing left to write: the storage is gone.
  BOOST_TEST(results.size() == 100u);
  BOOST_TEST(core->pending_bytes() == 0u);
  BOOST_TEST(core->window_heap_bytes() == 0u);
}

// A limit set high "to have none" costs what the windows use: the array
// starts at 64 buffers and doubles, instead of taking the limit's size at
// once (2^32 - 1 buffers, 64 GiB: the allocation failed and every window
// stopped at the four inline buffers).
BOOST_AUTO_TEST_CASE(a_huge_gather_limit_grows_the_array_as_windows_need_it) {
  // On a thread of its own: the 128-buffer array given back at the end
  // stays there as that thread's spare, not as this one's, where the other
  // tests expect one of at most 64 buffers.
  std::size_t rejected = 0;
  std::size_t window = 0;
  std::size_t heap_while_busy = 0;
  std::size_t heap_when_idle = 1;
  std::vector<completion> results;
  std::thread([&] {
    auto core = d::make_writer_ref<d::writer_core>();
    core->set_gather_limits(std::numeric_limits<std::size_t>::max(),
                            std::numeric_limits<std::size_t>::max());
    for (int i = 0; i < 100; ++i) {
      d::node_list refused;
      core->add(new plain_node("x", &results), refused, [](std::uint32_t) {});
      rejected += refused.empty() ? 0 : 1;
    }
    d::node_list done;
    core->next_write(0, done, [&](const d::buffer_window& w) {
      window = static_cast<std::size_t>(w.end() - w.begin());
    });
    heap_while_busy = core->window_heap_bytes();
    written(*core, window);
    heap_when_idle = core->window_heap_bytes();
  }).join();
  BOOST_TEST(rejected == 0u);
  BOOST_TEST(window == 100u);
  BOOST_TEST(heap_while_busy == 128 * sizeof(net::const_buffer));
  BOOST_TEST(results.size() == 100u);
  BOOST_TEST(heap_when_idle == 0u);
}

// The limits are kept in 32 bits: a larger one counts as the largest, never
// as what is left of it (2^32 + 1 would be a one-byte window).
// (Where size_t has 32 bits, no limit is larger.)
BOOST_AUTO_TEST_CASE(a_gather_limit_above_32_bits_counts_as_the_largest) {
  constexpr std::uint64_t two_to_32 = std::uint64_t{1} << 32;
  if constexpr (sizeof(std::size_t) < sizeof(std::uint64_t))
    return;
  auto core = d::make_writer_ref<d::writer_core>();
  core->set_gather_limits(8, static_cast<std::size_t>(two_to_32 + 1));
  std::vector<completion> results;
  add_messages(*core, 8, results);
  BOOST_TEST(cut_window(*core) == 8u);
  written(*core, 8);
  BOOST_TEST(results.size() == 8u);
  core->set_gather_limits(static_cast<std::size_t>(two_to_32 + 2), 3);
  add_messages(*core, 8, results);
  BOOST_TEST(cut_window(*core) == 3u);  // max_bytes
  written(*core, 3);
  BOOST_TEST(cut_window(*core) == 3u);
  written(*core, 3);
  BOOST_TEST(cut_window(*core) == 2u);
  written(*core, 2);
  BOOST_TEST(results.size() == 16u);
}

BOOST_AUTO_TEST_CASE(a_partly_written_head_resumes_at_its_offset_and_reports_its_bytes) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  d::node_list rejected;
  core->add(new plain_node("abcdef", &results), rejected, [](std::uint32_t) {});
  add_messages(*core, 2, results);
  BOOST_TEST(cut_window(*core) == 3u);
  written(*core, 4);  // "abcd" of the head
  BOOST_TEST(results.empty());
  BOOST_TEST(core->pending_bytes() == 4u);  // "ef", and the two others
  // The next window starts at the head's offset.
  BOOST_TEST(next_window_bytes(*core).value_or("(drained)") == "efxx");
  // The stream fails without taking a byte: each message reports what it
  // wrote, the head its four bytes.
  d::node_list done;
  core->on_written(net::error::broken_pipe, 0, done);
  done.complete_all(*core, d::completion_mode::post);
  BOOST_TEST_REQUIRE(results.size() == 3u);
  BOOST_TEST(results[0].ec == net::error::broken_pipe);
  BOOST_TEST(results[0].bytes == 4u);
  for (std::size_t i = 1; i < 3; ++i) {
    BOOST_TEST(results[i].ec == net::error::broken_pipe);
    BOOST_TEST(results[i].bytes == 0u);
  }
  BOOST_TEST(core->pending_bytes() == 0u);
  BOOST_TEST(core->window_heap_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(the_head_finishing_after_a_partial_write_resets_the_offset_for_the_next) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  d::node_list rejected;
  core->add(new plain_node("abc", &results), rejected, [](std::uint32_t) {});
  core->add(new plain_node("defg", &results), rejected, [](std::uint32_t) {});
  BOOST_TEST(cut_window(*core) == 2u);
  written(*core, 4);  // "abc" whole, "d" of the next
  BOOST_TEST_REQUIRE(results.size() == 1u);
  BOOST_TEST(results[0].bytes == 3u);
  BOOST_TEST(next_window_bytes(*core).value_or("(drained)") == "efg");
  written(*core, 3);
  BOOST_TEST_REQUIRE(results.size() == 2u);
  BOOST_TEST(!results[1].ec);
  BOOST_TEST(results[1].bytes == 4u);
}

BOOST_AUTO_TEST_CASE(a_pump_whose_writes_were_all_taken_back_stops_where_the_next_segment_begins) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  std::vector<std::uint32_t> pumps;
  d::node_list rejected;
  auto start_pump = [&](std::uint32_t segment) { pumps.push_back(segment); };
  core->add(new plain_node("a", &results), rejected, start_pump);  // segment 0
  bool enqueued = false;
  BOOST_TEST(!core->add_operation([&] { enqueued = true; }));  // ends segment 0
  BOOST_TEST(enqueued);
  d::node_list done;
  BOOST_TEST(core->cancel(done, no_work) == 1u);  // "a" taken back
  done.complete_all(*core, d::completion_mode::post);
  core->add(new plain_node("b", &results), rejected, start_pump);  // segment 1
  BOOST_TEST_REQUIRE(pumps.size() == 2u);
  BOOST_TEST(pumps[0] != pumps[1]);

  // Segment 0's pump comes first: its segment is empty; "b" waits for the
  // operation and its own pump.
  BOOST_TEST(!next_window_bytes(*core, pumps[0]));
  BOOST_TEST(next_window_bytes(*core, pumps[1]).value_or("(drained)") == "b");
  written(*core, 1);
  BOOST_TEST_REQUIRE(results.size() == 2u);
  BOOST_TEST(results[0].ec == net::error::operation_aborted);
  BOOST_TEST(!results[1].ec);
  BOOST_TEST(core->size() == 0u);
}

BOOST_AUTO_TEST_CASE(the_busy_state_exists_only_while_something_is_queued_written_or_closing) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  BOOST_TEST(!core->holds_busy_state());  // fresh
  add_messages(*core, 3, results);
  BOOST_TEST(core->holds_busy_state());
  BOOST_TEST(cut_window(*core) == 3u);
  written(*core, 2);  // the third is still pending
  BOOST_TEST(core->holds_busy_state());
  BOOST_TEST(cut_window(*core) == 1u);
  written(*core, 1);
  BOOST_TEST(results.size() == 3u);
  BOOST_TEST(!core->holds_busy_state());  // drained

  // Taken back before it was written.
  add_messages(*core, 1, results);
  BOOST_TEST(core->holds_busy_state());
  d::node_list done;
  BOOST_TEST(core->cancel(done, no_work) == 1u);
  done.complete_all(*core, d::completion_mode::post);
  BOOST_TEST(!core->holds_busy_state());
  // Its pump's turn comes after the state is gone: nothing to write.
  BOOST_TEST(!next_window_bytes(*core));
  BOOST_TEST(!core->holds_busy_state());

  // A close: busy while it waits and while its operation runs, then idle
  // for good; the close's result stays (later closes get it).
  add_messages(*core, 1, results);
  d::node_list rejected;
  core->add_close(new plain_node("", &results, d::writer_node::kind::close), rejected,
                  [](std::uint32_t) {});
  BOOST_TEST_REQUIRE(rejected.empty());
  BOOST_TEST(cut_window(*core) == 1u);
  written(*core, 1);
  BOOST_TEST(core->holds_busy_state());  // the close is queued still
  d::writer_node* closing = nullptr;
  const d::step_action a = core->next_step(
      d::pump_id{}, done, [](const d::buffer_window&) {}, [] {}, closing);
  BOOST_TEST_REQUIRE((a == d::step_action::close));
  BOOST_TEST(core->holds_busy_state());  // its operation runs
  core->on_closed(net::error::broken_pipe, done);
  done.complete_all(*core, d::completion_mode::post);
  BOOST_TEST(!core->holds_busy_state());
  BOOST_TEST_REQUIRE(results.size() == 6u);
  BOOST_TEST(results.back().ec == net::error::broken_pipe);
  core->add_close(new plain_node("", &results, d::writer_node::kind::close), rejected,
                  [](std::uint32_t) {});
  BOOST_TEST_REQUIRE(!rejected.empty());
  rejected.complete_all(*core, d::completion_mode::post);
  BOOST_TEST(results.back().ec == net::error::broken_pipe);
  BOOST_TEST(!core->holds_busy_state());
}

BOOST_AUTO_TEST_CASE(a_writer_idle_after_a_composed_operation_gives_its_busy_state_back) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  add_messages(*core, 1, results);
  // A composed operation behind the write: a mark ends segment 0.
  BOOST_TEST(!core->add_operation([] {}));
  BOOST_TEST(cut_window(*core) == 1u);
  written(*core, 1);
  BOOST_TEST(results.size() == 1u);
  BOOST_TEST(!next_window_bytes(*core));  // segment 0's pump drains
  BOOST_TEST(!core->holds_busy_state());

  // The next segment's writes go out with a pump of their own.
  d::node_list rejected;
  core->add(new plain_node("y", &results), rejected, [](std::uint32_t) {});
  BOOST_TEST_REQUIRE(rejected.empty());
  BOOST_TEST((next_window_bytes(*core, 1) == std::optional<std::string>("y")));
  written(*core, 1);
  BOOST_TEST(!next_window_bytes(*core, 1));
  BOOST_TEST(results.size() == 2u);
  BOOST_TEST(!core->holds_busy_state());
}

BOOST_AUTO_TEST_CASE(a_failed_writer_gives_its_busy_state_back_and_keeps_its_error) {
  auto core = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  add_messages(*core, 2, results);
  BOOST_TEST(cut_window(*core) == 2u);
  d::node_list done;
  core->on_written(net::error::connection_reset, 1, done);
  done.complete_all(*core, d::completion_mode::post);
  BOOST_TEST_REQUIRE(results.size() == 2u);
  BOOST_TEST(!results[0].ec);
  BOOST_TEST(results[1].ec == net::error::connection_reset);
  BOOST_TEST(!core->holds_busy_state());
  // Later requests are refused with the error without making the state.
  d::node_list rejected;
  core->add(new plain_node("x", &results), rejected, [](std::uint32_t) {});
  BOOST_TEST_REQUIRE(!rejected.empty());
  rejected.complete_all(*core, d::completion_mode::post);
  BOOST_TEST(results.back().ec == net::error::connection_reset);
  BOOST_TEST(!core->holds_busy_state());
  BOOST_TEST(core->cancel(done, no_work) == 0u);
}

BOOST_AUTO_TEST_CASE(a_busy_state_given_back_keeps_no_cancellation_handler_of_its_stream) {
  // X stays busy throughout: it holds whatever spare this thread had, so the
  // block A gives back is the one B takes.
  auto x = d::make_writer_ref<d::writer_core>();
  std::vector<completion> results;
  add_messages(*x, 1, results);

  // A's stream operation installs its cancellation handler in the write
  // signal's slot and leaves it there when it completes, as Asio's do.
  bool a_stream_cancelled = false;
  auto a = d::make_writer_ref<d::writer_core>();
  add_messages(*a, 1, results);
  d::node_list done;
  BOOST_TEST_REQUIRE(a->next_write(0, done, [&](const d::buffer_window&) {
    a->write_slot().assign([&](net::cancellation_type_t) { a_stream_cancelled = true; });
  }));
  written(*a, 1);
  BOOST_TEST_REQUIRE(!a->holds_busy_state());

  // B's stream installs none. A terminal cancellation of B's partly written
  // head is forwarded to B's write signal: it must not reach A's stream.
  // (The user's signal outlives B, whose head, still queued at the end,
  // unlinks itself from the signal's canceller when B goes.)
  net::cancellation_signal user;
  auto b = d::make_writer_ref<d::writer_core>();
  auto* head = new plain_node("abcdef", &results);
  head->attach_canceller(user.slot(), b);
  d::node_list rejected;
  failing_nothrow_size = sizeof(d::writer_core::busy_state);  // B can only get A's block
  b->add(head, rejected, [](std::uint32_t) {});
  failing_nothrow_size = 0;
  BOOST_TEST_REQUIRE(rejected.empty());
  BOOST_TEST_REQUIRE(b->next_write(0, done, [](const d::buffer_window&) {}));
  written(*b, 2);
  user.emit(net::cancellation_type::terminal);
  BOOST_TEST(!a_stream_cancelled);
}

BOOST_AUTO_TEST_CASE(a_request_that_finds_no_memory_for_the_busy_state_completes_with_no_memory,
                     *boost::unit_test::precondition(nothrow_failure_injectable())) {
  serq_test::handler_tracker tr;
  net::io_context ioc;
  // X stays busy until run(): it holds whatever busy state this thread
  // kept, so the writer under test has to allocate its own.
  test_stream x_peer(ioc);
  serq::queued_writer<test_stream> x(ioc);
  x.next_layer().connect(x_peer);
  x.async_send(std::string("x"), tr.wrap([](error_code ec, std::size_t) { BOOST_TEST(!ec); }));

  test_stream peer(ioc);
  serq::queued_writer<test_stream> writer(ioc);
  writer.next_layer().connect(peer);
  error_code send_ec, close_ec;
  std::size_t send_bytes = 1;
  failing_nothrow_size = sizeof(d::writer_core::busy_state);
  writer.async_send(std::string("lost"), tr.wrap([&](error_code ec, std::size_t n) {
    send_ec = ec;
    send_bytes = n;
  }));
  int close_runs = 0;
  writer.async_close(serq_test::close_test_stream{&writer.next_layer(), &close_runs},
                     tr.wrap([&](error_code ec) { close_ec = ec; }));
  failing_nothrow_size = 0;
  BOOST_TEST(writer.pending_bytes() == 0u);

  // Refused, not failed: the writer goes on, and it did not start closing.
  writer.async_send(std::string("kept"), tr.wrap([](error_code ec, std::size_t n) {
    BOOST_TEST(!ec);
    BOOST_TEST(n == 4u);
  }));
  ioc.run();
  BOOST_TEST(send_ec == net::error::no_memory);
  BOOST_TEST(send_bytes == 0u);
  BOOST_TEST(close_ec == net::error::no_memory);
  BOOST_TEST(close_runs == 0);
  BOOST_TEST(!writer.error());
  BOOST_TEST(peer.str() == "kept");
  BOOST_TEST(x_peer.str() == "x");
}

BOOST_AUTO_TEST_CASE(a_window_that_cannot_get_its_gather_array_writes_four_buffers_a_call,
                     *boost::unit_test::precondition(nothrow_failure_injectable())) {
  // On a new thread, which keeps no gather array yet: the first run has to
  // allocate one, and cannot.
  int ok_limited = 0, ok_normal = 0;
  std::string limited, normal;
  std::uint64_t calls_limited = 0, calls_normal = 0;
  std::thread([&] {
    failing_nothrow_size = d::writer_core::default_max_buffers * sizeof(net::const_buffer);
    limited = send_ten(ok_limited, &calls_limited);
    failing_nothrow_size = 0;
    normal = send_ten(ok_normal, &calls_normal);
  }).join();
  BOOST_TEST(ok_limited == 10);
  BOOST_TEST(limited == "abcdefghij");
  BOOST_TEST(calls_limited >= 3u);  // ten buffers, at most the four inline ones a call
  BOOST_TEST(ok_normal == 10);
  BOOST_TEST(normal == "abcdefghij");
  BOOST_TEST(calls_normal <= 2u);  // gathered
}

// The writer's queue (its pumps, lenders and composed operations) has a
// core only while the writer uses it: an idle writer keeps its shared state
// alone, fresh and after each kind of request.
BOOST_FIXTURE_TEST_CASE(a_writer_holds_its_queue_core_only_while_it_uses_it, connected_writer) {
  BOOST_TEST(!d::writer_access::queue(writer));  // fresh
  int ok = 0;
  auto count = [&ok](error_code ec, auto&&...) {
    if (!ec)
      ++ok;
  };
  auto settle = [&] {
    ioc.restart();
    ioc.run();
    return d::writer_access::queue(writer);
  };

  writer.async_send(std::string("ab"), tr.wrap(count));
  BOOST_TEST(d::writer_access::queue(writer));  // its pump waits for its turn
  BOOST_TEST(!settle());

  // A composed operation, completing on the writer's executor.
  writer.async_enqueue<void(error_code)>(
      [&](auto handler) {
        net::post(ioc.get_executor(),
                  [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      tr.wrap(count));
  BOOST_TEST(d::writer_access::queue(writer));
  BOOST_TEST(!settle());

  // A flush, and an urgent write (whose lender waits in the writer's queue).
  writer.async_send(std::string("cd"), tr.wrap(count));
  writer.async_flush(tr.wrap(count));
  BOOST_TEST(!settle());
  writer.async_send(serq::urgent, std::string("ef"), tr.wrap(count));
  BOOST_TEST(!settle());

  // Two writes, the second queued while the first is in flight.
  writer.async_send(std::string("gh"), tr.wrap(count));
  ioc.restart();
  ioc.run_one();
  writer.async_send(std::string("ij"), tr.wrap(count));
  BOOST_TEST(!settle());
  BOOST_TEST(ok == 7);
  BOOST_TEST(peer.str() == "abcdefghij");

  // A close: the writer is done, and holds no queue.
  int close_runs = 0;
  writer.async_close(serq_test::close_test_stream{&writer.next_layer(), &close_runs},
                     tr.wrap(count));
  BOOST_TEST(!settle());
  BOOST_TEST(close_runs == 1);
  BOOST_TEST(ok == 8);
}

// A writer that goes idle gives its queue's core to its thread, where the
// next writer on the same io_context that needs one takes it (a writer that
// goes idle after every message allocates none); a writer on another
// io_context cannot use it and makes its own, whose core, given back last,
// takes the spare's place.
BOOST_AUTO_TEST_CASE(a_queue_core_given_back_serves_the_next_writer_on_the_thread) {
  const void* first = nullptr;
  const void* second = nullptr;
  const void* other = nullptr;
  const void* latest = nullptr;
  std::string received, received_other;
  std::thread([&] {  // a thread of its own: its spare is known
    net::io_context ioc, ioc2;
    test_stream peer(ioc), peer2(ioc2);
    serq::queued_writer<test_stream> a(ioc), b(ioc), c(ioc2);
    a.next_layer().connect(peer);
    b.next_layer().connect(peer);
    c.next_layer().connect(peer2);
    a.async_send(std::string("a"), [](error_code, std::size_t) {});
    first = d::writer_access::queue(a);
    ioc.run();  // a's core becomes the thread's spare
    // c, on another io_context, cannot use it: it makes its own.
    c.async_send(std::string("c"), [](error_code, std::size_t) {});
    other = d::writer_access::queue(c);
    // Had a's core been freed instead, this block of its size would take
    // its memory, and b's core could not have its address.
    const std::unique_ptr<char[]> same_size(
        new char[sizeof(d::basic_queue_core<net::any_io_executor>)]);
    b.async_send(std::string("b"), [](error_code, std::size_t) {});
    second = d::writer_access::queue(b);
    ioc.restart();
    ioc.run();   // b's core (a's) becomes the spare again
    ioc2.run();  // then c's takes its place: the last given back
    // So a writer on ioc2 takes c's core; had c's been freed instead, this
    // block would take its memory.
    const std::unique_ptr<char[]> same_size2(
        new char[sizeof(d::basic_queue_core<net::any_io_executor>)]);
    serq::queued_writer<test_stream> e(ioc2);
    e.next_layer().connect(peer2);
    e.async_send(std::string("e"), [](error_code, std::size_t) {});
    latest = d::writer_access::queue(e);
    ioc2.restart();
    ioc2.run();
    received = peer.str();
    received_other = peer2.str();
  })
      .join();
  BOOST_TEST(first != nullptr);
  BOOST_TEST(second == first);
  BOOST_TEST(other != nullptr);
  BOOST_TEST(other != first);
  BOOST_TEST(latest == other);
  BOOST_TEST(received == "ab");
  BOOST_TEST(received_other == "ce");
}

// A writer whose executor is not a plain io_context one (a strand, here in
// an any_io_executor as beast::tcp_stream keeps it) keeps its queue's core
// while idle: no other writer could use it, so giving it back would cost an
// allocation every time the writer goes from idle to busy.
BOOST_AUTO_TEST_CASE(a_writer_on_a_strand_keeps_its_queue_core_between_busy_periods) {
  net::io_context ioc;
  test_stream peer(ioc);
  serq::queued_writer<test_stream> writer(net::any_io_executor(net::make_strand(ioc)));
  writer.next_layer().connect(peer);
  int ok = 0;
  auto count = [&ok](error_code ec, std::size_t) {
    if (!ec)
      ++ok;
  };
  writer.async_send(std::string("a"), count);
  const void* core = d::writer_access::queue(writer);
  BOOST_TEST_REQUIRE(core != nullptr);
  ioc.run();
  BOOST_TEST(d::writer_access::queue(writer) == core);  // idle: kept
  writer.async_send(std::string("b"), count);
  BOOST_TEST(d::writer_access::queue(writer) == core);  // busy again: the same one
  ioc.restart();
  ioc.run();
  BOOST_TEST(d::writer_access::queue(writer) == core);
  BOOST_TEST(ok == 2);
  BOOST_TEST(peer.str() == "ab");
}

// The writer's own operations take their blocks from a slot of the thread
// kept for each kind: a block given back serves the next request of its very
// size and kind (the recycling allocator caches only when the thread runs an
// io_context; these slots always do), any other from the recycling
// allocator; the slot keeps the last size given back; what a slot holds goes
// when the thread ends (ASan's leak check).
BOOST_AUTO_TEST_CASE(an_own_block_given_back_serves_the_next_of_its_kind_and_size_on_the_thread) {
  bool reused = false, other_size = false, other_kind = false, kept = false, replaced = false;
  std::thread([&] {
    void* op = d::allocate_own_block(d::own_block::stream_op, 200);
    d::deallocate_own_block(d::own_block::stream_op, op, 200);
    void* again = d::allocate_own_block(d::own_block::stream_op, 200);
    reused = again == op;
    d::deallocate_own_block(d::own_block::stream_op, again, 200);
    void* smaller = d::allocate_own_block(d::own_block::stream_op, 100);
    other_size = smaller != op;
    void* entry = d::allocate_own_block(d::own_block::pump_entry, 200);
    other_kind = entry != op;
    void* last = d::allocate_own_block(d::own_block::stream_op, 200);
    kept = last == op;  // the slot kept it through the others
    d::deallocate_own_block(d::own_block::stream_op, last, 200);
    // A block of another size takes the slot: the last size given back is
    // the one the thread's writers use now.
    d::deallocate_own_block(d::own_block::stream_op, smaller, 100);
    // Had it been freed instead, its memory would go to the first block of
    // its size asked for the same way: this one.
    net::detail::recycling_allocator<unsigned char, net::detail::thread_info_base::default_tag>
        recycling;
    unsigned char* same_size = recycling.allocate(100);
    void* newest = d::allocate_own_block(d::own_block::stream_op, 100);
    recycling.deallocate(same_size, 100);
    replaced = newest == smaller;
    d::deallocate_own_block(d::own_block::stream_op, newest, 100);
    d::deallocate_own_block(d::own_block::pump_entry, entry, 200);
  }).join();
  BOOST_TEST(reused);
  BOOST_TEST(other_size);
  BOOST_TEST(other_kind);
  BOOST_TEST(kept);
  BOOST_TEST(replaced);
}

namespace {
// A stream that notes whether its write operation's handler allocates from
// the writer's own slot for stream operations.
struct allocator_probe_stream {
  using executor_type = net::any_io_executor;
  explicit allocator_probe_stream(net::io_context& ioc) : ex(ioc.get_executor()) {}
  executor_type get_executor() const { return ex; }
  template <class Buffers, class Token>
  auto async_write_some(const Buffers& buffers, Token&& token) {
    return net::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, std::size_t n) {
          own_blocks = std::is_same_v<net::associated_allocator_t<decltype(handler)>,
                                      d::own_block_allocator<void, d::own_block::stream_op>>;
          net::post(ex, [h = std::move(handler), n]() mutable { std::move(h)(error_code(), n); });
        },
        token, net::buffer_size(buffers));
  }
  executor_type ex;
  bool own_blocks = false;
};
}  // namespace

// A writer's write_some and the pump's entry in its queue take their blocks
// from those slots: a writer that goes idle between messages leaves the
// recycling allocator's two blocks to its user's handler and message (bench
// case 5: no allocation a message, where it took three).
BOOST_AUTO_TEST_CASE(a_writers_own_operations_allocate_from_its_threads_own_slots) {
  net::io_context ioc;
  allocator_probe_stream stream(ioc);
  serq::queued_writer<allocator_probe_stream&> writer(stream);
  std::size_t written = 0;
  writer.async_write(net::buffer("abc", 3), [&](error_code, std::size_t n) { written = n; });
  ioc.run();
  BOOST_TEST(written == 3u);
  BOOST_TEST(stream.own_blocks);
  using pump_start = d::writer_state<allocator_probe_stream&>::pump_start;
  BOOST_TEST((std::is_same_v<net::associated_allocator_t<pump_start>,
                             d::own_block_allocator<void, d::own_block::pump_entry>>));
}

namespace {
// A stream whose async_write_some keeps its handler until finish(n) posts it
// to the stream's executor with n bytes written, or drop() destroys it unrun
// (not at the context's shutdown).
struct holding_stream {
  using executor_type = net::any_io_executor;
  explicit holding_stream(net::io_context& ioc) : ex(ioc.get_executor()) {}
  explicit holding_stream(executor_type e) : ex(std::move(e)) {}
  executor_type get_executor() const { return ex; }
  template <class Buffers, class Token>
  auto async_write_some(const Buffers&, Token&& token) {
    return net::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler) {
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          held = h;
          finisher = [this, h](std::size_t n) {
            net::post(ex, [h, n] { std::move (*h)(error_code(), n); });
          };
        },
        token);
  }
  void finish(std::size_t n) {
    held.reset();
    std::exchange(finisher, nullptr)(n);
  }
  void drop() {
    held.reset();
    finisher = nullptr;
  }
  executor_type ex;
  std::shared_ptr<void> held;
  std::function<void(std::size_t)> finisher;
};
}  // namespace

// An idle writer called on its executor takes its queue's turn at once: the
// message's first write_some starts inside async_write, and nothing is posted
// for the pump's turn (one post a message; on a strand, one strand operation
// and its allocations). A composed operation queued behind still waits for
// the pump, and runs once the pump has released the turn.
namespace {
void an_idle_writer_posts_nothing_for_its_turn(net::io_context& ioc,
                                               const net::any_io_executor& ex) {
  holding_stream stream(ex);
  serq::queued_writer<holding_stream&> writer(stream);
  std::size_t written = 0;
  net::post(ex, [&] {
    writer.async_write(net::buffer("abc", 3), [&](error_code, std::size_t n) { written = n; });
  });
  BOOST_TEST(ioc.run_one() == 1u);  // the call above
  BOOST_TEST_REQUIRE(stream.held);  // its write_some started inside it
  BOOST_TEST(ioc.poll() == 0u);     // and nothing was posted
  bool launched = false;
  writer.async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched = true;
        std::move(handler)(error_code());
      },
      [](error_code) {});
  ioc.restart();
  ioc.poll();
  BOOST_TEST(!launched);  // behind the pump, whose write is in flight
  stream.finish(3);
  ioc.restart();
  ioc.run();
  BOOST_TEST(written == 3u);
  BOOST_TEST(launched);
}
}  // namespace

BOOST_AUTO_TEST_CASE(an_idle_writer_called_on_its_executor_posts_nothing_for_its_turn) {
  {
    net::io_context ioc;
    an_idle_writer_posts_nothing_for_its_turn(ioc, ioc.get_executor());
  }
  {
    net::io_context ioc;
    an_idle_writer_posts_nothing_for_its_turn(ioc, net::make_strand(ioc));
  }
}

// The turn taken in the call is released when the write is done: the
// writer's queue goes quiet, and a writer on a plain io_context gives its
// core back.
BOOST_AUTO_TEST_CASE(the_turn_an_idle_writer_takes_in_the_call_is_released_after_the_write) {
  net::io_context ioc;
  holding_stream stream(ioc);
  serq::queued_writer<holding_stream&> writer(stream);
  net::post(ioc,
            [&] { writer.async_write(net::buffer("abc", 3), [](error_code, std::size_t) {}); });
  ioc.run_one();
  BOOST_TEST_REQUIRE(stream.held);
  BOOST_TEST(d::writer_access::queue(writer) != nullptr);  // held by the turn's holder
  stream.finish(3);
  ioc.restart();
  ioc.run();
  BOOST_TEST(d::writer_access::queue(writer) == nullptr);
}

namespace {
// Lets a test shut an io_context down (as its destructor does) while objects
// using it are still alive.
struct shutdownable_io_context : net::io_context {
  using net::io_context::shutdown;
};
}  // namespace

// The context shuts down while an idle writer's first write is in flight,
// with the turn taken in the call: the write's handler, dropped afterwards,
// and the writer, destroyed last, end the turn and free everything (ASan's
// and valgrind's leak checks); the message's handler is never invoked.
BOOST_AUTO_TEST_CASE(a_context_shut_down_under_a_turn_taken_in_the_call_frees_everything) {
  auto watch = std::make_shared<int>(0);
  std::weak_ptr<int> watched = watch;
  bool invoked = false;
  {
    shutdownable_io_context ioc;
    holding_stream stream(ioc);
    std::optional<serq::queued_writer<holding_stream&>> writer(std::in_place, stream);
    net::post(ioc, [&, w = std::move(watch)] {
      writer->async_write(net::buffer("abc", 3),
                          [&invoked, w](error_code, std::size_t) { invoked = true; });
    });
    ioc.run_one();
    BOOST_TEST_REQUIRE(stream.held);
    ioc.shutdown();
    stream.drop();
    writer.reset();
  }
  BOOST_TEST(!invoked);
  BOOST_TEST(watched.expired());
}

// A writer whose queue is observed (here by the context's default trace
// hook) queues its pump's acquire as before, so the hook sees it.
BOOST_AUTO_TEST_CASE(an_observed_writer_queues_its_pumps_acquire_for_the_hook) {
  int acquires = 0;  // outlives the context, whose hook counts into it
  net::io_context ioc;
  serq::set_default_trace_hook(ioc, [&](serq::trace_point p, serq::entry_info& info) {
    if (p == serq::trace_point::attach && info.kind == serq::entry_kind::acquire)
      ++acquires;
  });
  holding_stream stream(ioc);
  serq::queued_writer<holding_stream&> writer(stream);
  std::size_t written = 0;
  net::post(ioc, [&] {
    writer.async_write(net::buffer("abc", 3), [&](error_code, std::size_t n) { written = n; });
  });
  BOOST_TEST(ioc.run_one() == 1u);
  BOOST_TEST_REQUIRE(stream.held);  // the early write started all the same
  BOOST_TEST(acquires == 1);
  BOOST_TEST(ioc.poll() == 1u);  // the pump's turn
  stream.finish(3);
  ioc.restart();
  ioc.run();
  BOOST_TEST(written == 3u);
}

// A write's handler dropped unrun outside the context's shutdown fails the
// writer's requests as shutdown would, but the composed operation waiting in
// the writer's queue is not destroyed: it completes (aborted) when the
// writer goes, as every queued operation of a destroyed writer does.
BOOST_AUTO_TEST_CASE(a_dropped_write_leaves_the_composed_operation_behind_it_to_complete) {
  net::io_context ioc;
  holding_stream stream(ioc);
  std::optional<serq::queued_writer<holding_stream&>> writer(std::in_place, stream);
  int op_calls = 0;
  error_code op_ec;
  bool launched = false;
  writer->async_write(net::buffer("abc", 3), [](error_code, std::size_t) {});
  writer->async_enqueue<void(error_code)>(
      [&](auto handler) {
        launched = true;
        std::move(handler)(error_code());
      },
      [&](error_code ec) {
        ++op_calls;
        op_ec = ec;
      });
  ioc.poll();
  BOOST_TEST_REQUIRE(stream.held != nullptr);  // the write is in flight
  stream.drop();
  ioc.poll();
  BOOST_TEST(op_calls == 0);  // still behind the write's pump
  writer.reset();
  ioc.restart();
  ioc.run();
  BOOST_TEST(op_calls == 1);
  BOOST_TEST(op_ec == net::error::operation_aborted);
  BOOST_TEST(!launched);
}

BOOST_AUTO_TEST_CASE(a_writer_used_while_its_thread_ends_leaves_no_block_behind) {
  // A thread_local made before the thread's first writer is destroyed after
  // the blocks this thread kept were freed: a writer it uses then must
  // neither take a freed block nor keep one that nobody frees any more
  // (ASan and its leak checker see either; a plain build cannot).
  struct late_user {
    int* ok = nullptr;
    std::string* received = nullptr;
    late_user() = default;
    late_user(const late_user&) = delete;
    late_user& operator=(const late_user&) = delete;
    ~late_user() {
      if (ok)
        *received = send_ten(*ok);
    }
  };
  int ok_early = 0, ok_late = 0;
  std::string early, late;
  std::thread([&] {
    thread_local late_user user;
    // Now this thread keeps a busy state, a gather array and a queue core.
    early = send_ten(ok_early);
    user.ok = &ok_late;
    user.received = &late;
  }).join();
  BOOST_TEST(ok_early == 10);
  BOOST_TEST(early == "abcdefghij");
  BOOST_TEST(ok_late == 10);
  BOOST_TEST(late == "abcdefghij");
}

BOOST_AUTO_TEST_SUITE_END()
