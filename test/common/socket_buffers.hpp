//
// test/common/socket_buffers.hpp
//
// Tests whose peer does not read rely on a large message (hundreds of KiB
// and more) not fitting into the kernel's socket buffers, so that its write
// stays in flight. How much a connection buffers is the host's choice
// (net.core.wmem_default for a socketpair, TCP's autotuning on loopback), so
// such tests cap it themselves: 16 KiB asked for each way, which Linux
// doubles to about 32 KiB, whatever the host's defaults and maxima.
//

#ifndef SERQ_TEST_COMMON_SOCKET_BUFFERS_HPP
#define SERQ_TEST_COMMON_SOCKET_BUFFERS_HPP

#include "common/net.hpp"

namespace serq_test {

inline constexpr int small_socket_buffer = 16 * 1024;

/// Caps the send and receive buffers of each socket (set before the socket
/// is moved into a writer: the option belongs to the descriptor).
template <class... Sockets>
void shrink_socket_buffers(Sockets&... sockets) {
  (sockets.set_option(net::socket_base::send_buffer_size(small_socket_buffer)), ...);
  (sockets.set_option(net::socket_base::receive_buffer_size(small_socket_buffer)), ...);
}

/// `net::local::connect_pair(a, b)` with both ends' buffers capped.
template <class Socket>
void connect_small_pair(Socket& a, Socket& b) {
  net::local::connect_pair(a, b);
  shrink_socket_buffers(a, b);
}

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_SOCKET_BUFFERS_HPP
