//
// serq/config.hpp
//
// The one place that knows which Asio serq is built on. Everything else in
// serq says `net::` and `error_code` and includes this header, never an Asio
// header of its own.
//
// Flavours:
//  - Boost.Asio (default): namespace boost::asio, boost::system::error_code.
//  - standalone Asio: define SERQ_ASIO_STANDALONE (the CMake target
//    serq::serq of a build configured with -DSERQ_ASIO=standalone passes it
//    to its consumers): namespace ::asio, std::error_code.
//
// Everything serq declares lives in an inline namespace named after the
// flavour and the Asio version (serq::boost_asio_102600, serq::asio_103802),
// so a program compiled against one Asio and a libserq built against
// another fail to link instead of misbehaving at run time.
//

#ifndef SERQ_CONFIG_HPP
#define SERQ_CONFIG_HPP

#if defined(SERQ_ASIO_STANDALONE)

#include <asio/version.hpp>
#if ASIO_VERSION < 102600
#error "serq needs standalone Asio 1.26 or later"
#endif
#define SERQ_ASIO_VERSION ASIO_VERSION
#define SERQ_ABI_TAG_(v) asio_##v
#include <system_error>

#else

#include <boost/asio/version.hpp>
#if BOOST_ASIO_VERSION < 102600
#error "serq needs Boost.Asio 1.26 (Boost 1.81) or later"
#endif
#define SERQ_ASIO_VERSION BOOST_ASIO_VERSION
#define SERQ_ABI_TAG_(v) boost_asio_##v
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#endif

#define SERQ_ABI_TAG_EXPAND_(v) SERQ_ABI_TAG_(v)
/// The inline namespace that carries the flavour and version into every
/// mangled name of serq.
#define SERQ_ABI_NAMESPACE SERQ_ABI_TAG_EXPAND_(SERQ_ASIO_VERSION)

/// Opens serq's namespace (with its ABI tag).
#define SERQ_NAMESPACE_BEGIN \
  namespace serq {           \
  inline namespace SERQ_ABI_NAMESPACE {
/// Closes what SERQ_NAMESPACE_BEGIN opened.
#define SERQ_NAMESPACE_END \
  }                        \
  }

// What serq needs from Asio, in either flavour.
#if defined(SERQ_ASIO_STANDALONE)
#include <asio/any_io_executor.hpp>
#include <asio/associated_allocator.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_allocator.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/buffer.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/detail/recycling_allocator.hpp>
#include <asio/detail/thread_info_base.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>
#include <asio/execution/context.hpp>
#include <asio/execution/executor.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/execution_context.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/is_executor.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>
#include <asio/query.hpp>
#include <asio/socket_base.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/system_executor.hpp>
#if SERQ_ASIO_VERSION >= 102800
#include <asio/associated_immediate_executor.hpp>
#endif
#else
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/detail/recycling_allocator.hpp>
#include <boost/asio/detail/thread_info_base.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution/executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/is_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/socket_base.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/system_executor.hpp>
#if SERQ_ASIO_VERSION >= 102800
#include <boost/asio/associated_immediate_executor.hpp>
#endif
#endif

#if SERQ_ASIO_VERSION >= 102800
// Asio 1.28 (Boost 1.82): completions that happen at once go through the
// handler's associated immediate executor.
#define SERQ_HAS_IMMEDIATE_EXECUTOR 1
#endif

// Asio's handler tracking (BOOST_ASIO_ENABLE_HANDLER_TRACKING or
// ASIO_ENABLE_HANDLER_TRACKING, defined for the whole program): queued
// operations then show up as tracked handlers.
#if (defined(SERQ_ASIO_STANDALONE) && defined(ASIO_ENABLE_HANDLER_TRACKING)) || \
    (!defined(SERQ_ASIO_STANDALONE) && defined(BOOST_ASIO_ENABLE_HANDLER_TRACKING))
#define SERQ_HANDLER_TRACKING 1
#endif

/// serq: serialized asynchronous operations for Asio.
SERQ_NAMESPACE_BEGIN

#if defined(SERQ_ASIO_STANDALONE)
/// The Asio namespace serq is built on (`asio` or `boost::asio`).
namespace net = ::asio;
/// The error code type of that Asio (`std::error_code` or
/// `boost::system::error_code`).
using error_code = std::error_code;
/// The exception type that carries an `error_code`.
using system_error = std::system_error;
#else
/// The Asio namespace serq is built on (`asio` or `boost::asio`).
namespace net = ::boost::asio;
/// The error code type of that Asio (`std::error_code` or
/// `boost::system::error_code`).
using error_code = ::boost::system::error_code;
/// The exception type that carries an `error_code`.
using system_error = ::boost::system::system_error;
#endif

SERQ_NAMESPACE_END

#endif  // SERQ_CONFIG_HPP
