//
// serq/turn.hpp
//

#ifndef SERQ_TURN_HPP
#define SERQ_TURN_HPP

#include <memory>
#include <serq/config.hpp>
#include <serq/detail/core_ref.hpp>
#include <serq/detail/handler_alloc.hpp>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
class turn;
namespace detail {
class queue_core;
class entry_base;
template <class Handler, class QueueExecutor, bool HandsOutTurn>
class turn_entry;
struct turn_access;

// The handler of an async_untrigger, with its type erased: the turn does not
// know its queue's executor type, the entry that waits for the new turn
// does. Invoked on the queue's executor; hands the result on to the user
// handler's own associated executor when it has one.
class erased_turn_handler {
 public:
  template <class Handler>
  explicit erased_turn_handler(Handler&& h)
      : slot_(net::get_associated_cancellation_slot(h)),
        impl_(allocate_node<impl<std::decay_t<Handler>>>(h, std::forward<Handler>(h))) {}
  erased_turn_handler(erased_turn_handler&& o) noexcept
      : slot_(o.slot_), impl_(std::exchange(o.impl_, nullptr)) {}
  erased_turn_handler& operator=(erased_turn_handler&&) = delete;
  ~erased_turn_handler() {
    if (impl_)
      impl_->destroy();
  }

  void operator()(error_code ec, turn t);

  using cancellation_slot_type = net::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return slot_; }

 private:
  // Kept in storage from the handler's associated allocator; frees itself.
  struct base {
    virtual void invoke(error_code ec, turn t) = 0;
    virtual void destroy() noexcept = 0;

   protected:
    ~base() = default;
  };
  template <class Handler>
  struct impl final : base {
    using handler_executor = net::associated_executor_t<Handler, net::system_executor>;
    static constexpr bool own_executor = !std::is_same_v<handler_executor, net::system_executor>;
    // The handler's own executor, when it has one, counts the wait as
    // outstanding work, as Asio's operations do until they complete.
    using handler_work =
        std::conditional_t<own_executor, net::executor_work_guard<handler_executor>, char>;

    template <class H>
    explicit impl(H&& h) : handler(std::forward<H>(h)), work(make_work(handler)) {}
    void invoke(error_code ec, turn t) override;
    void destroy() noexcept override { deallocate_node(this, node_allocator(handler)); }
    // Moves the handler out; if that throws, frees this (and its work).
    template <class Storage>
    Handler take_handler(const Storage& storage) {
      try {
        return Handler(std::move(handler));
      } catch (...) {
        deallocate_node(this, storage);
        throw;
      }
    }
    static handler_work make_work(const Handler& h) {
      if constexpr (own_executor)
        return handler_work(net::get_associated_executor(h));
      else
        return 0;
    }
    Handler handler;
    handler_work work;
  };

  net::cancellation_slot slot_;
  base* impl_;
};

// Creates the acquire entry, on the queue's executor type, that waits for
// an untriggered turn's new grant.
using untrigger_factory = entry_base* (*)(const core_ref&, erased_turn_handler&&);
}  // namespace detail

/// A held turn of a serialized_queue, obtained from `async_acquire`.
/**
 * While a non-empty `turn` exists, its queue triggers nothing else: the
 * holder runs any number of asynchronous steps as one serialized unit. The
 * turn ends when it is destroyed or `release()`d, and the next waiting entry
 * is then triggered (posted to the queue's executor).
 *
 * An acquire that was aborted yields an empty turn. A turn may outlive its
 * queue object; releasing it then does nothing but free the shared state.
 *
 * A held turn is not outstanding work of any executor (like a strand, it
 * only orders work): an `io_context` with nothing else to do returns from
 * `run()` while a turn is held. The operations its holder runs keep the
 * context running, as usual.
 *
 * @par Thread safety
 * Distinct objects: safe. Shared objects: unsafe.
 */
class turn {
 public:
  /// Constructs an empty turn.
  turn() noexcept = default;

  /// Move constructor: takes `other`'s turn, leaving `other` empty.
  turn(turn&& other) noexcept
      : core_(std::move(other.core_)), untrigger_(std::exchange(other.untrigger_, nullptr)) {}

  /// Releases the turn held by `*this`, if any, then takes `other`'s.
  turn& operator=(turn&& other) noexcept {
    if (this != &other) {
      release();
      core_ = std::move(other.core_);
      untrigger_ = std::exchange(other.untrigger_, nullptr);
    }
    return *this;
  }

  turn(const turn&) = delete;
  turn& operator=(const turn&) = delete;

  /// Releases the turn, if one is held.
  ~turn() { release(); }

  /// True when this object holds a turn of a queue.
  explicit operator bool() const noexcept { return core_ != nullptr; }

  /// Ends the turn now, letting the queue trigger its next entry. Does
  /// nothing on an empty turn; the turn is empty afterwards.
  void release() noexcept;

  /// Gives the turn back without losing its place (tevent's
  /// `tevent_queue_entry_untrigger`), to have it again at the next `start()`.
  /**
   * Allowed only while the queue is stopped and `*this` holds its turn: the
   * turn is given back, `*this` becomes empty, and the entry it came from
   * waits again at the head of the queue. The next `start()` grants it a new
   * turn, posted (never inside `start()`), before anything queued behind it;
   * that turn is what this operation completes with. Trace hooks see a
   * second `before_trigger` for the entry, with its tag. This is how
   * winbindd's domain queue steps back when every child is busy: stop the
   * queue, untrigger, and `start()` when a child frees up.
   *
   * Called while the queue runs or on an empty turn, it changes nothing and
   * completes at once (posted) with `net::error::invalid_argument` and an
   * empty turn. When the queue object has been destroyed, the turn is
   * released and the operation completes with `operation_aborted`.
   *
   * @par Handler signature
   * `void(error_code, serq::turn)`.
   *
   * @par Executor
   * The handler's associated executor; without one, the queue's (the
   * `system_executor` when the turn is empty). Never inside this call.
   * While the operation waits, a handler's own executor counts it as
   * outstanding work, as with any pending Asio operation; the queue's
   * executor counts it as one of the queue's entries.
   *
   * @par Per-operation cancellation
   * All cancellation types, while the entry waits for its new turn: it
   * completes with `operation_aborted` and an empty turn, and the next entry
   * of the queue gets through at the next `start()`.
   *
   * @par Errors
   * `invalid_argument` as above; `operation_aborted` if cancelled, if the
   * queue is destroyed (or its `cancel()` called) before the new turn came.
   */
  template <class CompletionToken = net::default_completion_token_t<net::any_io_executor>>
  auto async_untrigger(CompletionToken&& token = CompletionToken());

 private:
  template <class Handler, class QueueExecutor, bool HandsOutTurn>
  friend class detail::turn_entry;
  friend struct detail::turn_access;
  struct initiate_untrigger;

  turn(detail::core_ref core, detail::untrigger_factory untrigger) noexcept
      : core_(std::move(core)), untrigger_(untrigger) {}

  detail::core_ref core_;
  detail::untrigger_factory untrigger_ = nullptr;
};

namespace detail {
// For a holder that keeps its queue's core itself (a writer and its own
// queue): it takes the turn over, and ends it with the core's
// release_turn(), as turn::release() would.
struct turn_access {
  static void take_over(turn& t) noexcept {
    t.core_.reset();
    t.untrigger_ = nullptr;
  }
};
}  // namespace detail

SERQ_NAMESPACE_END

#include <serq/impl/turn.hpp>

#endif  // SERQ_TURN_HPP
