//
// serq/impl/serialized_queue.hpp
//

#ifndef SERQ_IMPL_SERIALIZED_QUEUE_HPP
#define SERQ_IMPL_SERIALIZED_QUEUE_HPP

#include <serq/config.hpp>
#include <serq/detail/entries.hpp>
#include <serq/detail/queue_core.hpp>

SERQ_NAMESPACE_BEGIN

namespace detail {

// The serialized_queue_service of ex's execution context.
template <class Executor>
serialized_queue_service& queue_service(const Executor& ex) {
  if constexpr (net::execution::is_executor<Executor>::value) {
    return net::use_service<serialized_queue_service>(net::query(ex, net::execution::context));
  } else {
    return net::use_service<serialized_queue_service>(ex.context());
  }
}

// Allocates an entry of type Entry for handler (from its associated
// allocator), made from the core, args and the handler, and submits it:
// what every initiation of a queue's entry does (the writer's own queue
// included).
template <class Entry, class Handler, class... Args>
void submit_new_entry(const core_ref& core, bool allow_inline, Handler&& handler, Args&&... args) {
  entry_base* e = allocate_node<Entry>(handler, core, std::forward<Args>(args)...,
                                       std::forward<Handler>(handler));
  submit(*core, e, allow_inline);
}

}  // namespace detail

template <class Executor>
detail::core_ref serialized_queue_service::create(const Executor& ex, std::string_view name) {
  detail::core_ref core(new detail::basic_queue_core<Executor>(ex, name));
  register_core(*core);
  return core;
}

template <class Executor>
basic_serialized_queue<Executor>::basic_serialized_queue(const executor_type& ex,
                                                         std::string_view name)
    : executor_(ex), service_(&detail::queue_service(ex)), core_(service_->create(ex, name)) {}

template <class Executor>
basic_serialized_queue<Executor>::basic_serialized_queue(basic_serialized_queue&& other)
    : executor_(other.executor_),
      service_(other.service_),
      core_(std::exchange(other.core_,
                          other.service_->create(other.executor_, other.core_->name()))) {}

template <class Executor>
basic_serialized_queue<Executor>& basic_serialized_queue<Executor>::operator=(
    basic_serialized_queue&& other) {
  if (this != &other) {
    // other's next core first: if making it throws, both queues stay as
    // they were. Nothing else throws until this queue's old core is closed
    // (executors copy without throwing), and by then both queues hold their
    // new cores: if closing it throws (posting an aborted entry's
    // completion), both stay usable.
    detail::core_ref fresh = other.service_->create(other.executor_, other.core_->name());
    detail::core_ref old = std::exchange(core_, std::exchange(other.core_, std::move(fresh)));
    serialized_queue_service* const old_service = std::exchange(service_, other.service_);
    executor_ = other.executor_;
    old_service->destroy(std::move(old));
  }
  return *this;
}

template <class Executor>
basic_serialized_queue<Executor>::~basic_serialized_queue() {
  service_->destroy(std::move(core_));
}

template <class Executor>
std::string_view basic_serialized_queue<Executor>::name() const noexcept {
  return core_->name();
}

template <class Executor>
void basic_serialized_queue<Executor>::start() {
  core_->start();
}

template <class Executor>
void basic_serialized_queue<Executor>::stop() noexcept {
  core_->stop();
}

template <class Executor>
bool basic_serialized_queue<Executor>::running() const noexcept {
  return core_->running();
}

template <class Executor>
std::size_t basic_serialized_queue<Executor>::size() const noexcept {
  return core_->size();
}

template <class Executor>
std::size_t basic_serialized_queue<Executor>::cancel() {
  return core_->cancel();
}

template <class Executor>
void basic_serialized_queue<Executor>::set_trace_hook(trace_hook hook) {
  core_->set_hook(std::move(hook));
}

template <class Executor>
queue_stats basic_serialized_queue<Executor>::stats() const noexcept {
  return core_->stats();
}

template <class Executor>
struct basic_serialized_queue<Executor>::initiate_enqueue {
  basic_serialized_queue* self;
  bool allow_inline;

  using executor_type = Executor;
  executor_type get_executor() const noexcept { return self->executor_; }

  template <class Handler, class Launcher, class Signature>
  void operator()(Handler&& handler, Launcher&& launcher, Signature*) const {
    using entry =
        detail::op_entry<std::decay_t<Launcher>, std::decay_t<Handler>, Executor, Signature>;
    detail::submit_new_entry<entry>(
        self->core_, allow_inline && detail::may_launch_here(self->executor_),
        std::forward<Handler>(handler), std::forward<Launcher>(launcher));
  }
};

template <class Executor>
template <bool HandsOutTurn>
struct basic_serialized_queue<Executor>::initiate_turn_entry {
  basic_serialized_queue* self;

  using executor_type = Executor;
  executor_type get_executor() const noexcept { return self->executor_; }

  template <class Handler>
  void operator()(Handler&& handler) const {
    using entry = detail::turn_entry<std::decay_t<Handler>, Executor, HandsOutTurn>;
    detail::submit_new_entry<entry>(self->core_, false, std::forward<Handler>(handler));
  }
};

namespace detail {

template <class Signature>
constexpr void check_queueable() {
  static_assert(queueable_signature<Signature>::value,
                "serq: a queued operation's completion signature must be "
                "void(error_code, Ts...)");
}

template <class Op>
using op_signature_t = typename net::completion_signature_of<std::decay_t<Op>>::type;

}  // namespace detail

template <class Executor>
template <class Op, class CompletionToken,
          std::enable_if_t<!std::is_same_v<std::decay_t<Op>, trigger_inline_t>, int>>
auto basic_serialized_queue<Executor>::async_enqueue(Op&& op, CompletionToken&& token) {
  using signature = detail::op_signature_t<Op>;
  detail::check_queueable<signature>();
  return net::async_initiate<CompletionToken, signature>(
      initiate_enqueue{this, false}, token, std::forward<Op>(op), static_cast<signature*>(nullptr));
}

template <class Executor>
template <class Signature, class Initiation, class CompletionToken,
          std::enable_if_t<!std::is_same_v<std::decay_t<Initiation>, trigger_inline_t>, int>>
auto basic_serialized_queue<Executor>::async_enqueue(Initiation&& init, CompletionToken&& token) {
  detail::check_queueable<Signature>();
  return net::async_initiate<CompletionToken, Signature>(initiate_enqueue{this, false}, token,
                                                         std::forward<Initiation>(init),
                                                         static_cast<Signature*>(nullptr));
}

template <class Executor>
template <class Op, class CompletionToken>
auto basic_serialized_queue<Executor>::async_enqueue(trigger_inline_t, Op&& op,
                                                     CompletionToken&& token) {
  using signature = detail::op_signature_t<Op>;
  detail::check_queueable<signature>();
  return net::async_initiate<CompletionToken, signature>(
      initiate_enqueue{this, true}, token, std::forward<Op>(op), static_cast<signature*>(nullptr));
}

template <class Executor>
template <class Signature, class Initiation, class CompletionToken>
auto basic_serialized_queue<Executor>::async_enqueue(trigger_inline_t, Initiation&& init,
                                                     CompletionToken&& token) {
  detail::check_queueable<Signature>();
  return net::async_initiate<CompletionToken, Signature>(initiate_enqueue{this, true}, token,
                                                         std::forward<Initiation>(init),
                                                         static_cast<Signature*>(nullptr));
}

template <class Executor>
template <class CompletionToken>
auto basic_serialized_queue<Executor>::async_acquire(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code, turn)>(
      initiate_turn_entry<true>{this}, token);
}

template <class Executor>
template <class CompletionToken>
auto basic_serialized_queue<Executor>::async_wait(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code)>(initiate_turn_entry<false>{this},
                                                                token);
}

SERQ_NAMESPACE_END

#endif  // SERQ_IMPL_SERIALIZED_QUEUE_HPP
