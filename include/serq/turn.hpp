//
// serq/turn.hpp
//

#ifndef SERQ_TURN_HPP
#define SERQ_TURN_HPP

#include <memory>
#include <serq/config.hpp>

SERQ_NAMESPACE_BEGIN
namespace detail {
class queue_core;
template <class Handler, class QueueExecutor, bool HandsOutTurn>
class turn_entry;
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
  turn(turn&& other) noexcept = default;

  /// Releases the turn held by `*this`, if any, then takes `other`'s.
  turn& operator=(turn&& other) noexcept {
    if (this != &other) {
      release();
      core_ = std::move(other.core_);
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

 private:
  template <class Handler, class QueueExecutor, bool HandsOutTurn>
  friend class detail::turn_entry;

  explicit turn(std::shared_ptr<detail::queue_core> core) noexcept : core_(std::move(core)) {}

  std::shared_ptr<detail::queue_core> core_;
};

SERQ_NAMESPACE_END

#endif  // SERQ_TURN_HPP
