// Compiled against a different Asio than the libserq it is linked with: must fail to link, naming
// serq's ABI namespace (see README: Supported versions).
#include <serq.hpp>

int main() {
  serq::net::io_context ioc;
  serq::serialized_queue q(ioc);
  return static_cast<int>(q.size());
}
