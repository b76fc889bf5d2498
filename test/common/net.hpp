//
// test/common/net.hpp
//
// What every test, helper and benchmark takes from Asio, in the flavour serq
// was built with (Boost.Asio, or standalone Asio when the build defines
// SERQ_ASIO_STANDALONE), plus <serq.hpp>. This is the one file under test/
// that looks at the flavour; everything else says
//
//   net::io_context, net::async_write, net::error::eof, ...
//   error_code, serq::system_error
//
// and specializes Asio's traits through the alias: `struct net::associator<...>`.
//
// Asio's SSL support (net::ssl), which needs OpenSSL at link time, comes only
// to a file that defines SERQ_TEST_NET_SSL before including this header.
//

#ifndef SERQ_TEST_COMMON_NET_HPP
#define SERQ_TEST_COMMON_NET_HPP

#include <serq.hpp>

#if defined(SERQ_ASIO_STANDALONE)
#include <asio.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/parallel_group.hpp>
#else
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#endif

/// The Asio namespace of this build: `::asio` or `::boost::asio`.
namespace net = serq::net;
/// `std::error_code` or `boost::system::error_code`.
using serq::error_code;

#endif  // SERQ_TEST_COMMON_NET_HPP

// Outside the include guard: a later inclusion with SERQ_TEST_NET_SSL defined still brings it.
#if defined(SERQ_TEST_NET_SSL) && !defined(SERQ_TEST_COMMON_NET_SSL_INCLUDED)
#define SERQ_TEST_COMMON_NET_SSL_INCLUDED
#if defined(SERQ_ASIO_STANDALONE)
#include <asio/ssl.hpp>
#else
#include <boost/asio/ssl.hpp>
#endif
#endif
