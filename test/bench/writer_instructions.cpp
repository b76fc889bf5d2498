//
// test/bench/writer_instructions.cpp
//
// A queued_writer on a local socket pair writes N 64-byte messages, one at a
// time, for counting instructions per message under callgrind (a count the
// machine's noise does not move; see README.md here):
//
//   serq_writer_instructions idle N   each message is queued from a posted
//                                     function, after the previous one's pump
//                                     drained: the writer goes idle between
//                                     messages (its busy block and its
//                                     queue's core come and go every time)
//   serq_writer_instructions chain N  each message is queued from the previous
//                                     one's handler: one pump carries them all
//
// The difference between two values of N divided by their difference is the
// cost of one message, start-up excluded.
//

#include "common/net.hpp"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string_view>

int main(int argc, char** argv) {
  if (argc != 3 || (std::string_view(argv[1]) != "idle" && std::string_view(argv[1]) != "chain")) {
    std::fprintf(stderr, "usage: serq_writer_instructions idle|chain N\n");
    return 2;
  }
  const bool idle = std::string_view(argv[1]) == "idle";
  const long n = std::atol(argv[2]);
  using socket = net::local::stream_protocol::socket;
  net::io_context ioc;
  socket a(ioc), b(ioc);
  net::local::connect_pair(a, b);
  serq::queued_writer<socket&> writer(a);
  static const char message[64] = {};
  static char sink[1 << 16];

  long left = n;
  std::function<void(error_code, std::size_t)> next;
  auto write = [&] { writer.async_write(net::buffer(message), next); };
  next = [&](error_code ec, std::size_t) {
    if (ec || --left <= 0)
      return;
    if (idle)
      net::post(ioc, write);
    else
      write();
  };
  std::size_t received = 0;
  std::function<void(error_code, std::size_t)> read = [&](error_code ec, std::size_t k) {
    received += k;
    if (!ec && received < static_cast<std::size_t>(n) * sizeof message)
      b.async_read_some(net::buffer(sink), read);
  };
  b.async_read_some(net::buffer(sink), read);
  if (n > 0)
    write();
  ioc.run();
  std::printf("%zu bytes received\n", received);
  return received == static_cast<std::size_t>(n) * sizeof message ? 0 : 1;
}
