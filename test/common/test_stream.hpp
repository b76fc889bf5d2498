//
// test/common/test_stream.hpp
//
// serq's in-memory stream for tests, in either Asio flavour (it replaces
// Boost.Beast's test::stream, which is Boost-only).
//
//   serq_test::fail_count fc(3);            // the 3rd operation and later fail
//   serq_test::test_stream a(ioc, fc), b(ioc);
//   a.connect(b);                           // a's writes arrive in b, b's in a
//   a.write_size(4);                        // at most 4 bytes per write_some
//   net::async_write(a, net::buffer(msg), handler);
//   ioc.run();
//   BOOST_TEST(b.str() == msg.substr(0, 8));  // what b received and did not read
//
// Every operation completes through net::post on the stream's executor (with
// the handler's associated executor, allocator and so on), never inside the
// initiating call. A write copies its bytes into the peer at once: the peer's
// str() shows them while the completion is still queued. A read takes what
// is there, waits for data otherwise, and gets eof once the peer closed and
// everything was read. A pending read honours per-operation cancellation (any
// type) and completes with operation_aborted.
//
// Errors: a write with no peer (never connected, peer destroyed, this end
// closed) fails with connection_reset; the fail_count's chosen operation
// fails with test_error::test_failure.
//
// Like a socket, a stream must go before its io_context. The two ends of a
// pair may be used from different threads; one end is not thread-safe.
//

#ifndef SERQ_TEST_COMMON_TEST_STREAM_HPP
#define SERQ_TEST_COMMON_TEST_STREAM_HPP

#include "common/net.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace serq_test {

// ---- the test error ------------------------------------------------------------------------

/// Errors a test stream reports on purpose.
enum class test_error { test_failure = 1 };

/// The category of test_error, derived from this build's error category type
/// (std::error_category or boost::system::error_category).
class test_error_category final
    : public std::remove_cvref_t<decltype(std::declval<const error_code&>().category())> {
 public:
  const char* name() const noexcept override { return "serq.test"; }
  std::string message(int ev) const override {
    return ev == static_cast<int>(test_error::test_failure) ? "test failure" : "serq.test error";
  }
};

inline const test_error_category& test_category() noexcept {
  static const test_error_category category{};
  return category;
}

inline error_code make_error_code(test_error e) noexcept {
  return error_code(static_cast<int>(e), test_category());
}

}  // namespace serq_test

// error_code(test_error::test_failure) and ec == test_error::test_failure, in both flavours
// (boost::system::error_code accepts the enums std::is_error_code_enum names).
template <>
struct std::is_error_code_enum<serq_test::test_error> : std::true_type {};

namespace serq_test {

// ---- fail_count ------------------------------------------------------------------------------

/// Counts the operations of the streams that share it: the n-th (from 1)
/// and every later one fail with `ec`, before doing anything else. Not
/// thread-safe: share one only between streams used from one thread.
class fail_count {
 public:
  explicit fail_count(std::size_t n, error_code ec = test_error::test_failure) : n_(n), ec_(ec) {}

  /// Counts one operation; true, with ec set, if it must fail.
  bool fail(error_code& ec) {
    if (i_ < n_)
      ++i_;
    if (i_ != n_)
      return false;
    ec = ec_;
    return true;
  }

 private:
  std::size_t n_;
  std::size_t i_ = 0;
  error_code ec_;
};

// ---- test_stream -----------------------------------------------------------------------------

/// One end of an in-memory connection: an AsyncReadStream and AsyncWriteStream.
class test_stream {
 public:
  using executor_type = net::any_io_executor;

  explicit test_stream(executor_type ex, fail_count* fc = nullptr)
      : s_(std::make_shared<state>(std::move(ex), fc)) {}
  explicit test_stream(net::io_context& ioc) : test_stream(ioc.get_executor()) {}
  test_stream(net::io_context& ioc, fail_count& fc) : test_stream(ioc.get_executor(), &fc) {}

  /// The moved-from stream is a fresh, unconnected one.
  test_stream(test_stream&& other)
      : s_(std::exchange(other.s_, std::make_shared<state>(other.s_->ex, other.s_->fc))) {}
  test_stream& operator=(test_stream&& other) {
    if (this != &other) {
      close();
      s_ = std::exchange(other.s_, std::make_shared<state>(other.s_->ex, other.s_->fc));
    }
    return *this;
  }

  /// Closes this end (see close()).
  ~test_stream() { close(); }

  executor_type get_executor() const noexcept { return s_->ex; }

  /// Connects this end and `remote`: what one writes, the other reads.
  void connect(test_stream& remote) {
    std::scoped_lock lock(s_->m, remote.s_->m);
    s_->peer = remote.s_;
    remote.s_->peer = s_;
    s_->eof = remote.s_->eof = false;
  }
  friend void connect(test_stream& a, test_stream& b) { a.connect(b); }

  /// The most bytes one write_some (read_some) of this end transfers.
  void write_size(std::size_t n) { locked()->write_max = n; }
  void read_size(std::size_t n) { locked()->read_max = n; }

  /// What this end received and has not read yet.
  std::string str() const { return locked()->in; }
  /// Adds `s` to what this end has received.
  void append(std::string_view s) {
    auto st = locked();
    st->in.append(s);
    st->notify();
  }

  /// async_write_some (async_read_some) calls on this end so far.
  std::size_t nwrite() const { return locked()->nwrite; }
  std::size_t nread() const { return locked()->nread; }

  /// Closes this end: a pending read completes with operation_aborted, later
  /// writes fail with connection_reset, and the peer reads eof once it has
  /// read everything.
  void close() {
    std::shared_ptr<state> peer;
    {
      std::lock_guard lock(s_->m);
      s_->eof = true;
      if (s_->pending)
        s_->complete_pending(net::error::operation_aborted, 0, true);
      peer = s_->peer.lock();
      s_->peer.reset();
    }
    if (peer) {
      std::lock_guard lock(peer->m);
      peer->eof = true;
      peer->notify();
    }
  }

  /// Behaves as if the peer had closed: this end reads eof once it has read everything.
  void close_remote() {
    auto st = locked();
    st->eof = true;
    st->notify();
  }

  template <class ConstBufferSequence, class Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    return net::async_initiate<Token, void(error_code, std::size_t)>(
        [s = s_](auto handler, const auto& b) { s->start_write(b, std::move(handler)); }, token,
        buffers);
  }

  template <class MutableBufferSequence, class Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    return net::async_initiate<Token, void(error_code, std::size_t)>(
        [s = s_](auto handler, std::vector<net::mutable_buffer> b) {
          s->start_read(std::move(b), std::move(handler));
        },
        token,
        std::vector<net::mutable_buffer>(net::buffer_sequence_begin(buffers),
                                         net::buffer_sequence_end(buffers)));
  }

 private:
  using read_handler = net::any_completion_handler<void(error_code, std::size_t)>;

  struct read_op {
    std::vector<net::mutable_buffer> buffers;
    read_handler handler;
    net::cancellation_slot slot;
    std::uint64_t id;
    net::any_io_executor work;  // outstanding work while the read waits
  };

  // The receiving side of one end, and its settings.
  struct state : std::enable_shared_from_this<state> {
    state(executor_type e, fail_count* f) : ex(std::move(e)), fc(f) {}

    mutable std::mutex m;
    const executor_type ex;
    fail_count* const fc;
    std::weak_ptr<state> peer;  // where this end's writes go
    std::string in;             // received, not read yet
    bool eof = false;           // this end or its peer closed
    std::size_t read_max = std::numeric_limits<std::size_t>::max();
    std::size_t write_max = std::numeric_limits<std::size_t>::max();
    std::size_t nread = 0, nwrite = 0;
    std::optional<read_op> pending;
    std::uint64_t last_read_id = 0;

    template <class Handler>
    void complete(Handler&& h, error_code ec, std::size_t n) {
      net::post(ex, net::append(std::forward<Handler>(h), ec, n));
    }

    // m held: the result of reading into b now, or false if the read must wait.
    bool read_now(const std::vector<net::mutable_buffer>& b, error_code& ec, std::size_t& n) {
      if (net::buffer_size(b) == 0)
        return true;
      if (!in.empty()) {
        n = net::buffer_copy(b, net::buffer(in), read_max);
        in.erase(0, n);
        return true;
      }
      if (!eof)
        return false;
      ec = net::error::eof;
      return true;
    }

    // m held. Inside the slot's own emit() the slot must not be cleared.
    void complete_pending(error_code ec, std::size_t n, bool clear_slot) {
      read_op op = std::move(*pending);
      pending.reset();
      if (clear_slot && op.slot.is_connected())
        op.slot.clear();
      complete(std::move(op.handler), ec, n);
    }

    // m held: data or eof arrived.
    void notify() {
      error_code ec;
      std::size_t n = 0;
      if (pending && read_now(pending->buffers, ec, n))
        complete_pending(ec, n, true);
    }

    template <class Handler>
    void start_read(std::vector<net::mutable_buffer> b, Handler handler) {
      std::unique_lock lock(m);
      ++nread;
      error_code ec;
      std::size_t n = 0;
      if (!(fc && fc->fail(ec)) && !read_now(b, ec, n)) {
        if (pending)
          throw std::logic_error("test_stream: a read is already pending");
        // any_completion_handler puts its own cancellation state into the handler's
        // slot and gives out another: the one to install into.
        read_handler h(std::move(handler));
        auto slot = h.get_cancellation_slot();
        const std::uint64_t id = ++last_read_id;
        if (slot.is_connected()) {
          slot.assign([w = weak_from_this(), id](net::cancellation_type_t) {
            if (auto s = w.lock()) {
              std::lock_guard l(s->m);
              if (s->pending && s->pending->id == id)
                s->complete_pending(net::error::operation_aborted, 0, false);
            }
          });
        }
        pending.emplace(read_op{std::move(b), std::move(h), slot, id,
                                net::prefer(ex, net::execution::outstanding_work.tracked)});
        return;
      }
      lock.unlock();
      complete(std::move(handler), ec, n);
    }

    template <class ConstBufferSequence, class Handler>
    void start_write(const ConstBufferSequence& b, Handler handler) {
      error_code ec;
      std::size_t n = 0;
      std::shared_ptr<state> to;
      {
        std::lock_guard lock(m);
        ++nwrite;
        if (fc && fc->fail(ec))
          return complete(std::move(handler), ec, 0);
        n = std::min(net::buffer_size(b), write_max);
        to = peer.lock();
      }
      if (n == 0) {
        // Writing nothing succeeds, connected or not.
      } else if (!to) {
        ec = net::error::connection_reset;
        n = 0;
      } else {
        std::lock_guard lock(to->m);
        const std::size_t old = to->in.size();
        to->in.resize(old + n);
        net::buffer_copy(net::buffer(to->in.data() + old, n), b);
        to->notify();
      }
      complete(std::move(handler), ec, n);
    }
  };

  // The state, with its mutex held for the lifetime of the returned object.
  struct locked_state {
    std::unique_lock<std::mutex> lock;
    state* s;
    state* operator->() const noexcept { return s; }
  };
  locked_state locked() const { return {std::unique_lock(s_->m), s_.get()}; }

  std::shared_ptr<state> s_;
};

/// A closing operation for queued_writer::async_close(op, token) over a
/// test_stream, which has no shutdown of its own: closes the stream and
/// completes (posted to the handler's executor). Counts its runs.
struct close_test_stream {
  test_stream* stream;
  int* runs;

  template <class Token>
  auto operator()(Token&& token) && {
    return net::async_initiate<Token, void(error_code)>(
        [](auto handler, test_stream* s, int* runs) {
          ++*runs;
          s->close();
          auto ex = net::get_associated_executor(handler, s->get_executor());
          net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
        },
        token, stream, runs);
  }
};

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_TEST_STREAM_HPP
