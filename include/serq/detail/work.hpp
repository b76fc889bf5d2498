//
// serq/detail/work.hpp
//
// Outstanding work held by a pending operation on an executor, like
// boost::asio::executor_work_guard, but without any_io_executor's
// type-erased prefer() when it wraps a plain io_context executor (the usual
// case): then the tracked executor is the concrete one.
//

#ifndef SERQ_DETAIL_WORK_HPP
#define SERQ_DETAIL_WORK_HPP

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>

#include <optional>
#include <utility>

namespace serq {
namespace detail {

template <class Executor>
class work_guard {
 public:
  explicit work_guard(const Executor& ex) : guard_(ex) {}
  Executor get_executor() const noexcept { return guard_.get_executor(); }

 private:
  boost::asio::executor_work_guard<Executor> guard_;
};

template <>
class work_guard<boost::asio::any_io_executor> {
  using io_executor = boost::asio::io_context::executor_type;
  using tracked_io_executor = std::decay_t<typename boost::asio::prefer_result<
      const io_executor&, boost::asio::execution::outstanding_work_t::tracked_t>::type>;

 public:
  explicit work_guard(const boost::asio::any_io_executor& ex) : ex_(ex) {
    if (const auto* e = ex.target<io_executor>())
      io_work_.emplace(boost::asio::prefer(*e, boost::asio::execution::outstanding_work.tracked));
    else
      other_work_.emplace(ex);
  }
  const boost::asio::any_io_executor& get_executor() const noexcept { return ex_; }

 private:
  boost::asio::any_io_executor ex_;
  std::optional<tracked_io_executor> io_work_;
  std::optional<boost::asio::executor_work_guard<boost::asio::any_io_executor>> other_work_;
};

}  // namespace detail
}  // namespace serq

#endif  // SERQ_DETAIL_WORK_HPP
