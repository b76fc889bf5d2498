//
// test/common/io_threads.hpp
//
// For tests that run an io_context on several threads while others call in:
//
//   serq_test::io_threads io(ioc, 2);    // run() on 2 threads until finish()
//   serq_test::countdown done(total);    // done.arrive() in each handler
//   ...
//   done.wait();                         // every handler ran
//   io.finish();                         // the threads return and join
//

#ifndef SERQ_TEST_COMMON_IO_THREADS_HPP
#define SERQ_TEST_COMMON_IO_THREADS_HPP

#include "common/net.hpp"

#include <atomic>
#include <future>
#include <optional>
#include <thread>
#include <vector>

namespace serq_test {

// Runs ioc on n threads; a work guard keeps them in run() until finish(),
// which lets run() return once the work is done and joins them. Destroyed
// without finish() (a test left early by an exception), it stops ioc
// first, so the join cannot wait on operations that will never complete.
class io_threads {
 public:
  io_threads(net::io_context& ioc, int n) : ioc_(ioc), work_(net::make_work_guard(ioc)) {
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([&ioc] { ioc.run(); });
  }
  io_threads(const io_threads&) = delete;
  io_threads& operator=(const io_threads&) = delete;
  ~io_threads() {
    if (work_)
      ioc_.stop();
    finish();
  }

  void finish() {
    work_.reset();
    for (auto& t : threads_)
      if (t.joinable())
        t.join();
  }

 private:
  net::io_context& ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
};

// Counts completions from any thread; wait() returns once `total` arrived.
class countdown {
 public:
  explicit countdown(int total) : total_(total) {}

  // Returns how many have arrived, this one included.
  int arrive() {
    const int n = ++arrived_;
    if (n == total_)
      all_.set_value();
    return n;
  }
  void wait() { all_.get_future().wait(); }

 private:
  const int total_;
  std::atomic<int> arrived_{0};
  std::promise<void> all_;
};

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_IO_THREADS_HPP
