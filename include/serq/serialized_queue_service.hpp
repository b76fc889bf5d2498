//
// serq/serialized_queue_service.hpp
//

#ifndef SERQ_SERIALIZED_QUEUE_SERVICE_HPP
#define SERQ_SERIALIZED_QUEUE_SERVICE_HPP

#include <memory>
#include <mutex>
#include <serq/config.hpp>
#include <serq/detail/core_ref.hpp>
#include <serq/trace.hpp>
#include <string_view>

SERQ_NAMESPACE_BEGIN
class serialized_queue_service;
namespace detail {
class queue_core;
class hook_slot;

// Something a service tracks so that context shutdown can destroy its
// pending handlers: queues and writers.
class service_member {
 public:
  service_member(const service_member&) = delete;
  service_member& operator=(const service_member&) = delete;

  // Destroys every pending handler without invoking it, and refuses new work.
  virtual void shutdown() noexcept = 0;

  // Keeps this member alive while the service shuts it down: pin() (called
  // under the service's lock) takes a reference of its own, unpin() gives it
  // back (which may destroy the member).
  virtual void pin() noexcept = 0;
  virtual void unpin() noexcept = 0;

  // The context's default trace hook is (or was) installed: a queue keeps
  // the slot to consult it from then on. Called under the service's lock.
  virtual void use_default_hook(const std::shared_ptr<hook_slot>& slot) { (void)slot; }

 protected:
  service_member() = default;
  virtual ~service_member() = default;

 private:
  friend class serq::serialized_queue_service;
  service_member* svc_next_ = nullptr;
  service_member* svc_prev_ = nullptr;
  bool registered_ = false;
};
}  // namespace detail

/// The execution_context service behind every serq::basic_serialized_queue.
/**
 * Obtained with `net::use_service<serialized_queue_service>(ctx)`,
 * like Asio's own services. It keeps the list of live queues of its context
 * so that, when the context shuts down, every waiting entry's handler is
 * destroyed without being invoked, as Asio does for all pending operations.
 *
 * Applications do not normally use this class directly.
 *
 * @par Thread safety
 * Distinct objects: safe. Shared objects: safe.
 */
class serialized_queue_service final : public net::execution_context::service {
 public:
  /// The service's identifier within its execution context.
  static net::execution_context::id id;

  /// Constructs the service; called by `use_service`.
  explicit serialized_queue_service(net::execution_context& ctx);
  ~serialized_queue_service() override;

  /// Creates the state of one queue, whose operations run on `ex`, and
  /// registers it with the service.
  template <class Executor>
  detail::core_ref create(const Executor& ex, std::string_view name);

  /// Unregisters a queue whose IO object is being destroyed and aborts its
  /// entries that have not started (also one whose trigger is posted). An
  /// operation already launched runs to completion.
  void destroy(detail::core_ref core);

  /// Registers an object whose pending handlers must be destroyed at
  /// shutdown, handing it the context's default trace hook if one was
  /// installed. Returns false (and registers nothing) once the context has
  /// shut down.
  bool add(detail::service_member& m);

  /// Unregisters m; does nothing if it is not registered.
  void remove(detail::service_member& m) noexcept;

  /// The slot of the context's default trace hook, for the queues serq's
  /// writers make for themselves once the hook was handed to them.
  const std::shared_ptr<detail::hook_slot>& default_hook_slot() const noexcept {
    return default_hook_;
  }

 private:
  friend void set_default_trace_hook(net::execution_context& ctx, trace_hook hook);

  void register_core(detail::queue_core& core);
  void link_locked(detail::service_member& m) noexcept;
  void hand_out_default_hook();
  void shutdown() override;

  const std::shared_ptr<detail::hook_slot> default_hook_;
  std::mutex mutex_;
  detail::service_member* first_ = nullptr;
  bool shut_down_ = false;
  // A default hook was installed once: the queues alive then were handed
  // the slot, and every queue created from then on gets it too. Until then
  // no queue looks at the slot, which costs them nothing.
  bool default_hook_used_ = false;
};

SERQ_NAMESPACE_END

#endif  // SERQ_SERIALIZED_QUEUE_SERVICE_HPP
