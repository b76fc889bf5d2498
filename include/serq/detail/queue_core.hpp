//
// serq/detail/queue_core.hpp
//
// The non-template heart of serialized_queue: the FIFO of entries, the "one
// active at a time" bookkeeping and the cancellation hand-over. Everything
// here is compiled once into libserq (src/serialized_queue.cpp); the templates
// in entry.hpp only supply type-erased entries.
//

#ifndef SERQ_DETAIL_QUEUE_CORE_HPP
#define SERQ_DETAIL_QUEUE_CORE_HPP

#include <serq/config.hpp>
#include <serq/detail/intrusive_list.hpp>
#include <serq/serialized_queue_service.hpp>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

SERQ_NAMESPACE_BEGIN
class serialized_queue_service;
namespace detail {

class queue_core;
class canceller;

// One queued request, type-erased through a single function pointer (the
// shape of Asio's scheduler_operation): no vtable, no RTTI, and the derived
// template owns its own storage and allocator.
class entry_base {
 public:
  enum class action : unsigned char {
    trigger,  // its turn has come: post its launch to the queue's executor
    launch,   // start the work now (from the posted trigger, or inline)
    abort,    // never started: complete with operation_aborted (posted)
    reject,   // refused inside its initiating call: operation_aborted, immediately
    destroy,  // free without invoking anything (shutdown, abandoned handlers)
  };

  entry_base(const entry_base&) = delete;
  entry_base& operator=(const entry_base&) = delete;

  void trigger() { func_(this, action::trigger); }
  void launch() { func_(this, action::launch); }
  void abort() { func_(this, action::abort); }
  void reject() { func_(this, action::reject); }
  void destroy() noexcept { func_(this, action::destroy); }

  // Frees an active entry whose handler was destroyed without being invoked
  // and hands the queue's turn on, so a lost handler cannot wedge the queue.
  void abandon() noexcept;

  queue_core& core() const noexcept { return *core_; }
  canceller* cancel_state() const noexcept { return canceller_; }

 protected:
  using func_type = void (*)(entry_base*, action);

  entry_base(func_type f, std::shared_ptr<queue_core> core) noexcept
      : func_(f), core_(std::move(core)) {}
  ~entry_base() = default;

  // Installs the forwarding cancellation handler into the user's slot. Called
  // from the initiating function, where emplacing into the slot is allowed.
  void attach_canceller(net::cancellation_slot slot);

  std::shared_ptr<queue_core> release_core() noexcept { return std::move(core_); }

 private:
  friend class queue_core;
  template <class>
  friend class intrusive_list;

  func_type func_;
  std::shared_ptr<queue_core> core_;
  canceller* canceller_ = nullptr;
  entry_base* next_ = nullptr;
  entry_base* prev_ = nullptr;
};

// The queue's FIFO of waiting entries.
using entry_list = intrusive_list<entry_base>;

// The handler serq installs into an operation's cancellation slot.
//
// While the entry waits, an emitted signal unlinks it from the queue. Once the
// entry is triggered, signals are forwarded to the slot that was handed to the
// running operation (inner_). inner_ lives here, in memory owned by the user's
// cancellation signal, so it outlives the operation as a slot must; and the
// mutex makes the operation's first emplace (on the queue's executor) and a
// forwarded emit (on the caller's) safe to race.
class canceller {
 public:
  explicit canceller(std::shared_ptr<queue_core> core) noexcept : core_(std::move(core)) {}
  canceller(const canceller&) = delete;
  canceller& operator=(const canceller&) = delete;

  void operator()(net::cancellation_type_t type);

 private:
  friend class queue_core;
  friend class launch_guard;
  friend void wait_launch_done(entry_base& e) noexcept;

  std::shared_ptr<queue_core> core_;
  entry_base* waiting_ = nullptr;  // guarded by core_->mutex_
  std::mutex mutex_;               // guards everything below
  bool launched_ = false;
  net::cancellation_type_t pending_ = net::cancellation_type::none;
  net::cancellation_signal inner_;
};

// Held by an entry while it starts its operation. It decides whether the
// entry was cancelled between being triggered and being launched, provides
// the slot to give the operation, and marks the current thread as "inside
// this entry's launch" so a non-conforming operation that completes inline
// is detected instead of recursing into the caller.
class launch_guard {
 public:
  explicit launch_guard(entry_base& e);
  ~launch_guard();
  launch_guard(const launch_guard&) = delete;
  launch_guard& operator=(const launch_guard&) = delete;

  bool cancelled() const noexcept { return cancelled_; }
  net::cancellation_slot slot() noexcept;

  // The guard of e's launch, if the calling thread is inside it.
  static launch_guard* current(const entry_base* e) noexcept;

  // The operation completed inside its own launch: the entry defers its
  // completion until the launch has returned and this guard is gone, since
  // the final handler may destroy the signal that holds the canceller.
  void set_completed_inline() noexcept { completed_inline_ = true; }
  bool completed_inline() const noexcept { return completed_inline_; }

 private:
  entry_base& entry_;
  launch_guard* outer_;
  std::unique_lock<std::mutex> lock_;
  bool cancelled_ = false;
  bool completed_inline_ = false;
};

// Waits until no thread is inside launch_guard for this entry's canceller:
// called before handing the result to the user, whose handler may destroy
// the cancellation signal that holds the canceller.
void wait_launch_done(entry_base& e) noexcept;

class queue_core final : public service_member {
 public:
  enum class add_result { queued, trigger, launch_inline, closed };

  explicit queue_core(std::string_view name);
  queue_core(const queue_core&) = delete;
  queue_core& operator=(const queue_core&) = delete;
  ~queue_core();

  // Adds e. When the queue is running and idle e becomes active at once: the
  // caller must then launch it inline (allow_inline) or trigger it.
  add_result add(entry_base* e, bool allow_inline);

  // The active entry (or turn) is done: the next waiting entry, if any,
  // becomes active and is triggered.
  void finish() noexcept;

  void start();
  void stop() noexcept;
  bool running() const noexcept;
  std::size_t size() const noexcept;
  std::size_t cancel();
  std::string_view name() const noexcept { return name_; }

  // The IO object is gone: abort waiting entries; the active one runs on.
  void close();
  // The execution context is shutting down: destroy waiting entries
  // without invoking them; later additions are aborted (posted into the
  // dying context, which destroys them).
  void shutdown() noexcept override;

 private:
  friend class canceller;
  friend class ::serq::serialized_queue_service;

  entry_base* take_next_locked() noexcept;
  void unlink_locked(entry_base* e) noexcept;
  entry_list take_all_locked() noexcept;

  mutable std::mutex mutex_;
  entry_list waiting_;
  std::size_t waiting_count_ = 0;
  bool busy_ = false;
  bool running_ = true;
  bool closed_ = false;
  const std::string name_;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_QUEUE_CORE_HPP
