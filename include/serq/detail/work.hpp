//
// serq/detail/work.hpp
//
// Outstanding work held by a pending operation on an executor, like
// net::executor_work_guard, but without any_io_executor's
// type-erased prefer() when it wraps a plain io_context executor (the usual
// case): then the tracked executor is the concrete one.
//

#ifndef SERQ_DETAIL_WORK_HPP
#define SERQ_DETAIL_WORK_HPP

#include <new>
#include <optional>
#include <serq/config.hpp>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

template <class Executor>
class work_guard {
 public:
  explicit work_guard(const Executor& ex) : guard_(ex) {}
  Executor get_executor() const noexcept { return guard_.get_executor(); }

 private:
  net::executor_work_guard<Executor> guard_;
};

template <>
class work_guard<net::any_io_executor> {
  using io_executor = net::io_context::executor_type;
  using tracked_io_executor = std::decay_t<typename net::prefer_result<
      const io_executor&, net::execution::outstanding_work_t::tracked_t>::type>;

 public:
  explicit work_guard(const net::any_io_executor& ex) : ex_(ex) {
    if (const auto* e = ex.target<io_executor>())
      io_work_.emplace(net::prefer(*e, net::execution::outstanding_work.tracked));
    else
      other_work_.emplace(ex);
  }
  const net::any_io_executor& get_executor() const noexcept { return ex_; }

 private:
  net::any_io_executor ex_;
  std::optional<tracked_io_executor> io_work_;
  std::optional<net::executor_work_guard<net::any_io_executor>> other_work_;
};

// Outstanding work on an executor that the owner stores itself: started and
// finished many times, holding nothing but the tracked state in between.
template <class Executor>
class work_counter {
 public:
  void start(const Executor& ex) { work_.emplace(ex); }
  void finish() noexcept { work_.reset(); }
  void move_to(work_counter& other) noexcept {
    if (work_)
      other.work_.emplace(std::move(*work_));
    work_.reset();
  }
  // Whether this holds a unit of work on ex.
  bool holds(const Executor& ex) const noexcept { return work_ && work_->get_executor() == ex; }

 private:
  std::optional<net::executor_work_guard<Executor>> work_;
};

// Outstanding work an any_io_executor queue's core has handed over (see
// basic_queue_core<any_io_executor>::move_work_to), released when this goes.
template <>
class work_counter<net::any_io_executor> {
 public:
  using io_executor = net::io_context::executor_type;
  using tracked_io_executor = std::decay_t<typename net::prefer_result<
      const io_executor&, net::execution::outstanding_work_t::tracked_t>::type>;

  work_counter() noexcept {}
  ~work_counter() { finish(); }
  work_counter(const work_counter&) = delete;
  work_counter& operator=(const work_counter&) = delete;

  void adopt(tracked_io_executor&& w) noexcept {
    finish();
    new (&io_) tracked_io_executor(std::move(w));
    held_ = held::io;
  }
  void adopt(net::any_io_executor&& w) noexcept {
    finish();
    new (&other_) net::any_io_executor(std::move(w));
    held_ = held::other;
  }
  // Moves the work held on ex's io_context into the uninitialized storage
  // `into`: false, and nothing moved, if this holds no such work.
  bool take_io(const io_executor& ex, void* into) noexcept {
    if (held_ != held::io ||
        &net::query(io_, net::execution::context) != &net::query(ex, net::execution::context))
      return false;
    new (into) tracked_io_executor(std::move(io_));
    finish();
    return true;
  }
  void finish() noexcept {
    if (held_ == held::io)
      io_.~tracked_io_executor();
    else if (held_ == held::other)
      other_.~any_io_executor();
    held_ = held::none;
  }

 private:
  // One of the two, as held_ says: a plain io_context's work needs no type
  // erasure, any other executor's goes through any_io_executor.
  union {
    tracked_io_executor io_;
    net::any_io_executor other_;
  };
  enum class held : unsigned char { none, io, other } held_ = held::none;
};

// An executor its owner keeps for good: as itself, except that an
// any_io_executor wrapping a plain io_context executor (the usual case) is
// kept as that executor, in sixteen bytes instead of fifty-six, and any other
// target in a heap block of its own. get() hands out a copy.
template <class Executor>
class stored_executor {
 public:
  explicit stored_executor(const Executor& ex) : ex_(ex) {}
  const Executor& get() const noexcept { return ex_; }
  // The plain io_context executor kept, if that is what it is.
  const net::io_context::executor_type* io_target() const noexcept {
    if constexpr (std::is_same_v<Executor, net::io_context::executor_type>)
      return &ex_;
    else
      return nullptr;
  }

 private:
  Executor ex_;
};

template <>
class stored_executor<net::any_io_executor> {
  using io_executor = net::io_context::executor_type;

 public:
  explicit stored_executor(const net::any_io_executor& ex) {
    if (const io_executor* t = ex.target<io_executor>()) {
      new (&io_) io_executor(*t);
    } else {
      other_ = new net::any_io_executor(ex);
      is_other_ = true;
    }
  }
  stored_executor(const stored_executor&) = delete;
  stored_executor& operator=(const stored_executor&) = delete;
  ~stored_executor() {
    if (is_other_)
      delete other_;
    else
      io_.~io_executor();
  }

  net::any_io_executor get() const noexcept {
    return is_other_ ? *other_ : net::any_io_executor(io_);
  }
  // The io_context executor the any_io_executor wraps; null for any other.
  const io_executor* io_target() const noexcept { return is_other_ ? nullptr : &io_; }

 private:
  union {
    io_executor io_;
    net::any_io_executor* other_;
  };
  bool is_other_ = false;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_WORK_HPP
