//
// test/bench/peers.hpp
//
// What serq is measured against, each written the way a competent user writes it without serq:
// the best plain version, never tuned down. And the operation every queue benchmark serializes.
//

#ifndef SERQ_BENCH_PEERS_HPP
#define SERQ_BENCH_PEERS_HPP

#include "common/net.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <deque>
#include <functional>
#include <stdexcept>
#include <system_error>
#include <utility>
#include <vector>

namespace serq_bench {

// A one-step operation: a raw initiation that completes on the next turn of the loop, like a read
// whose data is already there. It completes on the handler's associated executor, as an Asio
// operation does, and never inside the initiating call.
struct one_step_op {
  net::any_io_executor ex;

  template <class Handler>
  void operator()(Handler&& handler) const {
    auto hex = net::get_associated_executor(handler, ex);
    net::post(hex, [h = std::forward<Handler>(handler)]() mutable { std::move(h)(error_code()); });
  }
};

// The same operation holding one pointer (an executor that outlives it): the operation every timed
// case and memory case runs, in serq, in the hand-rolled peers and bare ("an entry whose op
// captures one pointer", as an operation of a socket holds the socket). An operation queued in
// serq waits in its entry, so what it holds by value is held once per waiting entry; case 6a
// also times serq with one_step_op above (an any_io_executor by value, 56 B more per entry).
struct lean_step_op {
  const net::any_io_executor* ex;

  template <class Handler>
  void operator()(Handler&& handler) const {
    auto hex = net::get_associated_executor(handler, *ex);
    net::post(hex, [h = std::forward<Handler>(handler)]() mutable { std::move(h)(error_code()); });
  }
};

// The floor of the use_awaitable memory cases: an operation that parks its handler in storage
// reserved beforehand, so a coroutine suspended on it holds only what the coroutine itself needs
// (its frames, co_spawn's state). The first park of a handler type reserves `capacity` slots (do it
// once before measuring), and sets `release`, which posts every parked handler with success.
struct parking_lot {
  std::size_t capacity = 0;
  std::function<void()> release;
};

template <class Handler>
std::vector<Handler>& parked_handlers() {
  static std::vector<Handler> v;
  return v;
}

// Parks a handler of signature void(error_code, Extra...); released with success and
// value-initialised Extra....
template <class... Extra>
struct park_op {
  parking_lot* lot;

  template <class Handler>
  void operator()(Handler handler) const {
    auto& v = parked_handlers<Handler>();
    if (v.capacity() < lot->capacity)
      v.reserve(lot->capacity);
    if (!lot->release)
      lot->release = [&v] {
        for (auto& h : v) {
          auto ex = net::get_associated_executor(h);
          net::post(ex, [h = std::move(h)]() mutable { std::move(h)(error_code(), Extra{}...); });
        }
        v.clear();
      };
    v.push_back(std::move(handler));
  }
};

// The hand-rolled queue of Beast's chat example (websocket_session::send / on_send / on_write):
// every submission is posted to the executor (a strand when several threads run the loop), a
// deque holds the pending jobs, a busy flag says whether one is running, and the next job starts
// from the previous one's completion. The queue knows its operation (Beast's knows its
// async_write); a job is the caller's completion handler. Fn is std::function for callbacks, or
// any_completion_handler for move-only handlers such as use_awaitable's.
template <class Fn>
class hand_queue {
 public:
  explicit hand_queue(net::any_io_executor ex) : ex_(std::move(ex)) {}

  // For the memory cases only: mark the queue busy, as if a job were running, so submitted jobs
  // wait in the deque (what holding serq's turn does); release() starts them.
  void hold() { busy_ = true; }
  void release() {
    busy_ = false;
    if (!jobs_.empty())
      start();
  }

  template <class Token>
  auto async_enqueue(Token&& token) {
    return net::async_initiate<Token, void(error_code)>(
        [this](auto handler) {
          net::post(ex_,
                    [this, fn = Fn(std::move(handler))]() mutable { on_submit(std::move(fn)); });
        },
        token);
  }

 private:
  void on_submit(Fn fn) {
    jobs_.push_back(std::move(fn));
    if (!busy_)
      start();
  }

  void start() {
    busy_ = true;
    lean_step_op{&ex_}([this](error_code ec) { on_step(ec); });
  }

  void on_step(error_code ec) {
    Fn fn = std::move(jobs_.front());
    jobs_.pop_front();
    busy_ = false;
    if (!jobs_.empty())
      start();
    std::move(fn)(ec);
  }

  net::any_io_executor ex_;
  std::deque<Fn> jobs_;
  bool busy_ = false;
};

// The hand-rolled writer: a deque of messages, one async_write per message, the next started from
// the previous one's completion. Callers await their own message, so each entry keeps its
// completion handler. Used from the thread that runs the stream's (single-threaded) io_context.
template <class Stream>
class hand_writer {
 public:
  explicit hand_writer(Stream& s) : stream_(s) {}

  template <class Token>
  auto async_write(net::const_buffer buf, Token&& token) {
    return net::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, net::const_buffer b) {
          queue_.push_back(pending{b, std::move(handler)});
          if (queue_.size() == 1)
            start();
        },
        token, buf);
  }

 private:
  struct pending {
    net::const_buffer buf;
    net::any_completion_handler<void(error_code, std::size_t)> handler;
  };

  void start() {
    net::async_write(stream_, queue_.front().buf,
                     [this](error_code ec, std::size_t n) { on_write(ec, n); });
  }

  void on_write(error_code ec, std::size_t n) {
    auto handler = std::move(queue_.front().handler);
    queue_.pop_front();
    if (!queue_.empty())
      start();
    std::move(handler)(ec, n);
  }

  Stream& stream_;
  std::deque<pending> queue_;
};

// Limit (a): the whole payload as one contiguous buffer, written by a blocking thread.
inline void blocking_write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      throw std::system_error(errno, std::generic_category(), "write");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

// Limit (b): the separate messages through blocking writev, at most `per_call` buffers a call.
inline void blocking_writev_all(int fd, std::vector<iovec> iov, std::size_t per_call) {
  std::size_t i = 0;
  while (i < iov.size()) {
    const int count = static_cast<int>(std::min(per_call, iov.size() - i));
    ssize_t n = ::writev(fd, iov.data() + i, count);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      throw std::system_error(errno, std::generic_category(), "writev");
    }
    while (n > 0) {
      if (static_cast<std::size_t>(n) >= iov[i].iov_len) {
        n -= static_cast<ssize_t>(iov[i].iov_len);
        ++i;
      } else {
        iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + n;
        iov[i].iov_len -= static_cast<std::size_t>(n);
        n = 0;
      }
    }
  }
}

}  // namespace serq_bench

#endif  // SERQ_BENCH_PEERS_HPP
