//
// serq/detail/entries.hpp
//
// The typed entries a serialized_queue holds: an operation to launch, an
// acquire (hands out a turn), and a barrier. Each owns the user's handler,
// tracks outstanding work on both executors, and is allocated with the
// handler's associated allocator (Asio's recycling allocator when that is
// std::allocator), freed before the upcall.
//

#ifndef SERQ_DETAIL_ENTRIES_HPP
#define SERQ_DETAIL_ENTRIES_HPP

#include <serq/config.hpp>
#include <serq/detail/completion_mode.hpp>
#include <serq/detail/handler_alloc.hpp>
#include <serq/detail/queue_core.hpp>
#include <serq/detail/work.hpp>
#include <serq/turn.hpp>

#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// Completion signatures serq can queue: void(error_code, Ts...).
template <class Signature>
struct queueable_signature : std::false_type {};

template <class... Ts>
struct queueable_signature<void(error_code, Ts...)> : std::true_type {
  // What an operation that never ran completes with.
  static std::tuple<error_code, std::decay_t<Ts>...> failed(error_code ec) {
    return {ec, std::decay_t<Ts>{}...};
  }
  static std::tuple<error_code, std::decay_t<Ts>...> aborted() {
    return failed(net::error::operation_aborted);
  }
};

template <class... Ts>
struct queueable_signature<void(const error_code&, Ts...)>
    : queueable_signature<void(error_code, Ts...)> {};

// A handler bound to its arguments. Keeps the handler's associated allocator;
// the executor is chosen by whoever posts or dispatches it.
template <class Handler, class... Args>
class bound_completion {
 public:
  template <class H, class... A>
  explicit bound_completion(H&& h, A&&... args)
      : handler_(std::forward<H>(h)), args_(std::forward<A>(args)...) {}

  void operator()() { std::apply(std::move(handler_), std::move(args_)); }

  using allocator_type = net::associated_allocator_t<Handler>;
  allocator_type get_allocator() const noexcept { return net::get_associated_allocator(handler_); }

 private:
  Handler handler_;
  std::tuple<Args...> args_;
};

template <class Handler, class... Args>
bound_completion<std::decay_t<Handler>, std::decay_t<Args>...> bind_completion(Handler&& h,
                                                                               Args&&... args) {
  return bound_completion<std::decay_t<Handler>, std::decay_t<Args>...>(
      std::forward<Handler>(h), std::forward<Args>(args)...);
}

template <class T, class = void>
struct has_running_in_this_thread : std::false_type {};
template <class T>
struct has_running_in_this_thread<
    T, std::void_t<decltype(std::declval<const T&>().running_in_this_thread())>> : std::true_type {
};

// True when the calling thread may run ex's functions inline, which is what
// dispatch would find out, minus the type erasure and function wrapping it
// costs on any_io_executor. False when it cannot tell.
template <class Executor>
bool running_in(const Executor& ex) noexcept {
  if constexpr (has_running_in_this_thread<Executor>::value) {
    return ex.running_in_this_thread();
  } else if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    using io_executor = net::io_context::executor_type;
    if (const auto* e = ex.template target<io_executor>())
      return e->running_in_this_thread();
    if (const auto* s = ex.template target<net::strand<io_executor>>())
      return s->running_in_this_thread();
    return false;
  } else {
    return false;
  }
}

template <class T>
struct is_strand : std::false_type {};
template <class Executor>
struct is_strand<net::strand<Executor>> : std::true_type {};

// Whether trigger_inline may launch an operation on this thread: not when
// that would start it outside a strand that must serialize its steps.
template <class Executor>
bool may_launch_here(const Executor& ex) noexcept {
  if constexpr (is_strand<Executor>::value) {
    return ex.running_in_this_thread();
  } else if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    if (const auto* s = ex.template target<net::strand<net::io_context::executor_type>>())
      return s->running_in_this_thread();
    if (const auto* s = ex.template target<net::strand<net::any_io_executor>>())
      return s->running_in_this_thread();
    return true;
  } else {
    return true;
  }
}

// asio::post, minus any_io_executor's type-erased require/prefer chain when
// it wraps a plain io_context executor (the usual case): about a fifth of a
// one-step operation's cost in the queue benchmark.
template <class Executor, class Function>
void post_to(const Executor& ex, Function&& f) {
  if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    if (const auto* e = ex.template target<net::io_context::executor_type>()) {
      net::post(*e, std::forward<Function>(f));
      return;
    }
  }
  net::post(ex, std::forward<Function>(f));
}

// Immediate completions that run inline (through an immediate executor) may
// start new operations that complete immediately too: past this depth on one
// thread, they are posted instead, so such a loop cannot exhaust the stack.
inline constexpr unsigned max_immediate_depth = 8;
inline thread_local unsigned immediate_depth = 0;

// Hands a bound completion to its executor, as mode says. Immediate is
// handled by free_then_deliver / complete_immediately, which know the
// handler; here it means posted.
template <class Executor, class Completion>
void deliver(const work_guard<Executor>& work, Completion&& c, completion_mode mode) {
  if (mode != completion_mode::dispatch) {
    post_to(work.get_executor(), std::forward<Completion>(c));
  } else if (running_in(work.get_executor())) {
    c();
  } else {
    net::dispatch(work.get_executor(), std::forward<Completion>(c));
  }
}

// Runs an immediate completion through the handler's immediate executor,
// within the depth bound.
template <class ImmediateExecutor, class Executor, class Completion>
void deliver_immediate(const ImmediateExecutor& iex, const work_guard<Executor>& work,
                       Completion&& c) {
  if (immediate_depth >= max_immediate_depth) {
    post_to(work.get_executor(), std::forward<Completion>(c));
    return;
  }
  struct depth_scope {
    depth_scope() noexcept { ++immediate_depth; }
    ~depth_scope() { --immediate_depth; }
  } scope;
  net::dispatch(iex, std::forward<Completion>(c));
}

// Completes a node's handler with args and frees the node first, as Asio
// requires (storage returned before the upcall). The handler and the work are
// moved out, and args bound, before the node's memory goes.
template <class Node, class Handler, class Executor, class... Args>
void free_then_deliver(Node* node, Handler& handler, work_guard<Executor>& work,
                       completion_mode mode, Args&&... args) {
  const auto alloc = node_allocator(handler);
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  if (mode == completion_mode::immediate) {
    const auto iex = net::get_associated_immediate_executor(handler, work.get_executor());
    auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
    work_guard<Executor> held(std::move(work));
    deallocate_node(node, alloc);
    deliver_immediate(iex, held, std::move(completion));
    return;
  }
#endif
  auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
  work_guard<Executor> held(std::move(work));
  deallocate_node(node, alloc);
  deliver(held, std::move(completion), mode);
}

// Completes a handler that never became a node, from inside its initiating
// function: through its immediate executor where Asio has them, else posted
// to its associated executor (default: io_ex).
template <class Handler, class IoExecutor, class... Args>
void complete_immediately(Handler&& handler, const IoExecutor& io_ex, Args&&... args) {
  using executor_type = net::associated_executor_t<std::decay_t<Handler>, IoExecutor>;
  const work_guard<executor_type> work(net::get_associated_executor(handler, io_ex));
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  const auto iex = net::get_associated_immediate_executor(handler, work.get_executor());
  deliver_immediate(iex, work,
                    bind_completion(std::forward<Handler>(handler), std::forward<Args>(args)...));
#else
  post_to(work.get_executor(),
          bind_completion(std::forward<Handler>(handler), std::forward<Args>(args)...));
#endif
}

// State shared by every typed entry: the user's handler and the outstanding
// work it represents on the queue's and the handler's executors.
template <class Handler, class QueueExecutor>
class handler_entry : public entry_base {
 public:
  using handler_executor_type = net::associated_executor_t<Handler, QueueExecutor>;
  using allocator_type = node_allocator_t<Handler>;

  handler_executor_type handler_executor() const noexcept { return handler_work_.get_executor(); }

  // The executor the queue runs its entries' operations on.
  QueueExecutor queue_executor() const noexcept {
    if constexpr (std::is_same_v<handler_executor_type, QueueExecutor>) {
      if (!queue_work_)
        return handler_work_.get_executor();
    }
    return queue_work_->get_executor();
  }
  allocator_type get_allocator() const noexcept { return node_allocator(handler_); }

 protected:
  template <class H>
  handler_entry(func_type f, std::shared_ptr<queue_core> core, H&& h, const QueueExecutor& qex)
      : entry_base(f, std::move(core)),
        handler_(std::forward<H>(h)),
        handler_work_(net::get_associated_executor(handler_, qex)) {
    // One work guard when the handler runs on the queue's executor (the
    // usual case), two otherwise.
    if constexpr (std::is_same_v<handler_executor_type, QueueExecutor>) {
      if (!(handler_work_.get_executor() == qex))
        queue_work_.emplace(qex);
    } else {
      queue_work_.emplace(qex);
    }
    attach_canceller(net::get_associated_cancellation_slot(handler_));
  }

  // Posts the queue's trigger for this entry. The posted function owns the
  // entry: if it is destroyed unrun (the context shuts down), the entry is
  // abandoned and the queue's turn handed on.
  void post_trigger() {
    if constexpr (std::is_same_v<handler_executor_type, QueueExecutor>) {
      if (!queue_work_) {
        post_to(handler_work_.get_executor(), trigger_function{this, get_allocator()});
        return;
      }
    }
    post_to(queue_work_->get_executor(), trigger_function{this, get_allocator()});
  }

  // Frees this entry, then completes the handler with args as mode says.
  // The queue's turn must already be handed on by the caller, if it held one.
  template <class Derived, class... Args>
  static void complete(Derived* self, completion_mode mode, Args&&... args) {
    free_then_deliver(self, self->handler_, self->handler_work_, mode, std::forward<Args>(args)...);
  }

  // An entry aborted by cancel() or a signal is posted; one refused inside
  // its initiating call (the queue is closed) completes immediately.
  static completion_mode mode_of(entry_base::action a) noexcept {
    return a == entry_base::action::reject ? completion_mode::immediate : completion_mode::post;
  }

  template <class Derived>
  static void deallocate(Derived* self) noexcept {
    deallocate_node(self, self->get_allocator());
  }

  Handler handler_;

 private:
  class trigger_function {
   public:
    trigger_function(handler_entry* e, const allocator_type& a) noexcept : e_(e), alloc_(a) {}
    trigger_function(trigger_function&& o) noexcept
        : e_(std::exchange(o.e_, nullptr)), alloc_(o.alloc_) {}
    trigger_function& operator=(trigger_function&&) = delete;
    ~trigger_function() {
      if (e_)
        e_->abandon();
    }
    void operator()() { std::exchange(e_, nullptr)->launch(); }

    using allocator_type = typename handler_entry::allocator_type;
    allocator_type get_allocator() const noexcept { return alloc_; }

   private:
    handler_entry* e_;
    allocator_type alloc_;
  };

  work_guard<handler_executor_type> handler_work_;
  std::optional<work_guard<QueueExecutor>> queue_work_;
};

// The handler serq gives the queued operation. It owns its entry: destroyed
// without being invoked (its context shut down), it abandons the entry so the
// queue moves on and nothing leaks. Its associated executor is the queue's,
// so every step of a composed operation runs where the queue runs it (on a
// strand, inside the strand), as a strand-protected object needs; its
// allocator, cancellation slot and immediate executor are the user handler's.
template <class Entry>
class launched_handler {
 public:
  explicit launched_handler(Entry* e) noexcept : e_(e) {}
  launched_handler(launched_handler&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  launched_handler& operator=(launched_handler&&) = delete;
  ~launched_handler() {
    if (e_)
      e_->abandon();
  }

  template <class... Args>
  void operator()(Args&&... args) {
    std::exchange(e_, nullptr)->finish_op(std::forward<Args>(args)...);
  }

  using executor_type = typename Entry::queue_executor_type;
  executor_type get_executor() const noexcept { return e_->queue_executor(); }

  using allocator_type = typename Entry::user_allocator_type;
  allocator_type get_allocator() const noexcept { return e_->user_allocator(); }

  using cancellation_slot_type = net::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return e_->op_slot_; }

#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  using immediate_executor_type = typename Entry::immediate_executor_type;
  immediate_executor_type get_immediate_executor() const noexcept {
    return e_->immediate_executor();
  }
#endif

 private:
  Entry* e_;
};

// An entry that launches an asynchronous operation when its turn comes.
// Launcher is a deferred operation or a raw initiation: either way it is
// invoked with the completion handler.
template <class Launcher, class Handler, class QueueExecutor, class Signature>
class op_entry final : public handler_entry<Handler, QueueExecutor> {
  using base = handler_entry<Handler, QueueExecutor>;

 public:
  using user_allocator_type = net::associated_allocator_t<Handler>;
  using queue_executor_type = QueueExecutor;
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  using immediate_executor_type = net::associated_immediate_executor_t<Handler, QueueExecutor>;
  immediate_executor_type immediate_executor() const noexcept {
    return net::get_associated_immediate_executor(this->handler_, this->queue_executor());
  }
#endif

  template <class L, class H>
  op_entry(std::shared_ptr<queue_core> core, L&& l, H&& h, const QueueExecutor& qex)
      : base(&op_entry::do_action, std::move(core), std::forward<H>(h), qex),
        launcher_(std::forward<L>(l)) {}

  user_allocator_type user_allocator() const noexcept {
    return net::get_associated_allocator(this->handler_);
  }

  template <class... Args>
  void finish_op(Args&&... args) {
    if (launch_guard* guard = launch_guard::current(this)) {
      // A non-conforming operation completed inside its own launch: keep
      // the results; do_launch completes (posted) once the launch returns.
      inline_result_.emplace(std::forward<Args>(args)...);
      guard->set_completed_inline();
      return;
    }
    wait_launch_done(*this);
    this->release_core()->finish();
    base::complete(this, completion_mode::dispatch, std::forward<Args>(args)...);
  }

 private:
  template <class>
  friend class launched_handler;

  static void do_action(entry_base* b, entry_base::action a) {
    auto* self = static_cast<op_entry*>(b);
    switch (a) {
      case entry_base::action::trigger:
        self->post_trigger();
        break;
      case entry_base::action::launch:
        self->do_launch();
        break;
      case entry_base::action::abort:
      case entry_base::action::reject:
        std::apply(
            [self, a](auto&&... args) {
              base::complete(self, base::mode_of(a), std::move(args)...);
            },
            queueable_signature<Signature>::aborted());
        break;
      case entry_base::action::destroy:
        base::deallocate(self);
        break;
    }
  }

  void do_launch() {
    bool cancelled = false;
    {
      launch_guard guard(*this);
      cancelled = guard.cancelled();
      if (!cancelled) {
        op_slot_ = guard.slot();
        Launcher l(std::move(launcher_));
        std::move(l)(launched_handler<op_entry>(this));
        if (!guard.completed_inline())
          return;  // the entry may already be gone
      }
    }
    // Cancelled after it was triggered but before it started (it never ran),
    // or completed inside its launch: complete now, posted, with no guard held.
    this->release_core()->finish();
    std::apply(
        [this](auto&&... args) { base::complete(this, completion_mode::post, std::move(args)...); },
        cancelled ? queueable_signature<Signature>::aborted() : std::move(*inline_result_));
  }

  Launcher launcher_;
  std::optional<decltype(queueable_signature<Signature>::aborted())> inline_result_;
  net::cancellation_slot op_slot_;
};

// An entry whose only work is its turn. An acquire (HandsOutTurn) gives the
// turn itself to its handler, as a serq::turn that keeps the queue busy; a
// barrier (async_wait) completes as soon as everything before it is done.
template <class Handler, class QueueExecutor, bool HandsOutTurn>
class turn_entry final : public handler_entry<Handler, QueueExecutor> {
  using base = handler_entry<Handler, QueueExecutor>;

 public:
  template <class H>
  turn_entry(std::shared_ptr<queue_core> core, H&& h, const QueueExecutor& qex)
      : base(&turn_entry::do_action, std::move(core), std::forward<H>(h), qex) {}

 private:
  static void do_action(entry_base* b, entry_base::action a) {
    auto* self = static_cast<turn_entry*>(b);
    const error_code aborted(net::error::operation_aborted);
    switch (a) {
      case entry_base::action::trigger:
        self->post_trigger();
        break;
      case entry_base::action::launch: {
        bool cancelled = false;
        {
          launch_guard guard(*self);
          cancelled = guard.cancelled();
        }
        std::shared_ptr<queue_core> core = self->release_core();
        if (cancelled || !HandsOutTurn) {
          core->finish();
          finish_with(self, cancelled ? completion_mode::post : completion_mode::dispatch,
                      cancelled ? aborted : error_code(), nullptr);
        } else {
          finish_with(self, completion_mode::dispatch, error_code(), std::move(core));
        }
        break;
      }
      case entry_base::action::abort:
      case entry_base::action::reject:
        finish_with(self, base::mode_of(a), aborted, nullptr);
        break;
      case entry_base::action::destroy:
        base::deallocate(self);
        break;
    }
  }

  // Completes the handler; an acquire also gets the turn (empty unless held).
  static void finish_with(turn_entry* self, completion_mode mode, error_code ec,
                          std::shared_ptr<queue_core> held) {
    if constexpr (HandsOutTurn)
      base::complete(self, mode, ec, held ? turn(std::move(held)) : turn());
    else
      base::complete(self, mode, ec);
  }
};

// Adds a freshly allocated entry to its queue and acts on the answer.
void submit(queue_core& core, entry_base* e, bool allow_inline);

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_ENTRIES_HPP
