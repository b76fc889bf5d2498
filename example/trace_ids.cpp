//
// example/trace_ids.cpp: trace-id propagation through a serialized_queue with
// a trace hook, the way Samba's winbindd uses tevent_queue's trace callback.
//
// A server handles requests on several io_context threads. Each request has
// an id, kept in a thread-local "current request id" that the logger puts in
// front of every line. Requests share one backend connection, so each queues
// its backend call in a serialized_queue; the call runs later, when its turn
// comes, maybe on another thread, long after the request's own code returned.
// Its log lines must still say which request queued it. The queue's trace
// hook carries the id across that hop:
//
//   attach          (in the request's code)  tag = current request id
//   before_trigger  (where the call starts)  current request id = tag
//   detach          (the entry is gone)      clear it, if still ours
//
// Nothing else passes the id around: the backend call logs through the
// thread-local. The program checks that every line logged by a backend call
// carries the id of the request that queued it, and exits 0 when all do.
//

#include <serq.hpp>

// The Asio serq was built on (serq::serq defines SERQ_ASIO_STANDALONE for standalone Asio).
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#else
#include <boost/asio.hpp>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace net = serq::net;
using serq::error_code;

namespace {

// The request a thread is working for; 0 when none.
thread_local std::uint64_t current_request = 0;

// A logger that prefixes every line with the current request id, and keeps
// the lines so that main() can check them.
struct log_line {
  std::uint64_t logged_id;    // from the thread-local
  std::uint64_t expected_id;  // what the caller knows it works for
  std::thread::id thread;
};
std::mutex log_mutex;
std::vector<log_line> lines;

void log(std::uint64_t expected, const char* what) {
  std::lock_guard<std::mutex> lock(log_mutex);
  if (lines.size() < 12)
    std::printf("[request %llu] %s\n", static_cast<unsigned long long>(current_request), what);
  lines.push_back({current_request, expected, std::this_thread::get_id()});
}

// The hook: what winbindd does with tevent_queue's trace callback.
void propagate_request_id(serq::trace_point point, serq::entry_info& entry) {
  switch (point) {
    case serq::trace_point::attach:
      entry.tag = current_request;  // runs in the code that queues the entry
      break;
    case serq::trace_point::before_trigger:
      current_request = entry.tag;  // runs where the queued call starts
      break;
    case serq::trace_point::after_complete:
      break;
    case serq::trace_point::detach:
      if (current_request == entry.tag)
        current_request = 0;
      break;
  }
}

// The backend call: logs as it starts, then completes after a (simulated)
// round trip. It knows nothing of request ids but what the thread-local says;
// `expected` is only for the check in main().
auto backend_call(net::any_io_executor ex, std::uint64_t expected) {
  return [ex, expected](auto handler) {
    log(expected, "backend call starts");
    net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
  };
}

}  // namespace

int main() {
  constexpr std::uint64_t requests = 2000;
  constexpr int threads = 3;

  net::io_context ioc(threads);
  serq::serialized_queue backend(ioc, "backend");
  backend.set_trace_hook(propagate_request_id);

  // The threads run first; requests then arrive from outside, as from a
  // listener, and their backend calls complete on whichever thread is free.
  auto work = net::make_work_guard(ioc);
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&] { ioc.run(); });

  std::atomic<std::uint64_t> completed{0};
  std::promise<void> all_done;
  // Each request runs its own code with its id set, queues its backend call,
  // and returns.
  for (std::uint64_t id = 1; id <= requests; ++id) {
    net::post(ioc, [&, id] {
      current_request = id;
      backend.async_enqueue<void(error_code)>(backend_call(ioc.get_executor(), id),
                                              [&](error_code ec) {
                                                if (!ec && completed.fetch_add(1) + 1 == requests)
                                                  all_done.set_value();
                                              });
      current_request = 0;  // the request's own code is done
    });
  }
  all_done.get_future().wait();
  work.reset();
  for (auto& t : pool)
    t.join();

  std::size_t wrong = 0;
  std::set<std::thread::id> used;
  for (const auto& l : lines) {
    wrong += l.logged_id != l.expected_id;
    used.insert(l.thread);
  }
  std::printf(
      "...\n%zu backend log lines on %zu threads, %zu without their request's id; "
      "%llu of %llu calls completed\n",
      lines.size(), used.size(), wrong, static_cast<unsigned long long>(completed.load()),
      static_cast<unsigned long long>(requests));
  const bool ok = wrong == 0 && lines.size() == requests && completed.load() == requests;
  std::printf("%s\n", ok ? "every line carries the id of the request that queued it" : "FAILED");
  return ok ? 0 : 1;
}
