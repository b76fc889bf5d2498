// Uses serq's public API from C++17, exactly as a user of the installed package would.
#include <serq.hpp>

// The Asio serq was built on: serq::serq passes SERQ_ASIO_STANDALONE to its users when that is
// standalone Asio.
#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#else
#include <boost/asio.hpp>
#endif

#include <chrono>

namespace net = serq::net;
using serq::error_code;

int main() {
  net::io_context ioc;
  serq::serialized_queue q(ioc.get_executor(), "consumer");
  net::steady_timer t(ioc, std::chrono::seconds(0));
  int done = 0;
  q.async_enqueue(t.async_wait(net::deferred), [&](error_code ec) {
    if (!ec)
      ++done;
  });
  q.async_wait([&](error_code ec) {
    if (!ec)
      ++done;
  });
  ioc.run();
  return done == 2 ? 0 : 1;
}
