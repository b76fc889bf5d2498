// Uses serq's public API from C++17, exactly as a user of the installed package would.
#include <serq.hpp>

#include <boost/asio.hpp>

#include <chrono>

namespace asio = boost::asio;

int main() {
  asio::io_context ioc;
  serq::serialized_queue q(ioc.get_executor(), "consumer");
  asio::steady_timer t(ioc, std::chrono::seconds(0));
  int done = 0;
  q.async_enqueue(t.async_wait(asio::deferred), [&](boost::system::error_code ec) {
    if (!ec)
      ++done;
  });
  q.async_wait([&](boost::system::error_code ec) {
    if (!ec)
      ++done;
  });
  ioc.run();
  return done == 2 ? 0 : 1;
}
