//
// serq/detail/entries.hpp
//
// The typed entries a serialized_queue holds: an operation to launch, an
// acquire (hands out a turn), and a barrier. Each owns the user's handler,
// tracks outstanding work on both executors, and is allocated with the
// handler's associated allocator (the thread's slot for queue entries when
// that is std::allocator: handler_entry::storage_type), freed before the
// upcall.
//

#ifndef SERQ_DETAIL_ENTRIES_HPP
#define SERQ_DETAIL_ENTRIES_HPP

#include <serq/config.hpp>
#include <serq/detail/completion_mode.hpp>
#include <serq/detail/executor_ops.hpp>
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

// Whether Handler has an associated executor of its own (else the default
// given to get_associated_executor is its executor).
template <class Handler>
struct has_own_executor
    : std::bool_constant<!std::is_same_v<net::associated_executor_t<Handler, net::system_executor>,
                                         net::system_executor>> {};

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

template <class T>
struct is_strand : std::false_type {};
template <class Executor>
struct is_strand<net::strand<Executor>> : std::true_type {};

// Executors known not to serialize anything: an io_context's (plain,
// work-tracking, with any allocator) and the system executor.
// static_asserts below check that the patterns match Asio's types.
template <class T>
struct is_plain_executor : std::false_type {};
template <class Allocator, auto Bits>
struct is_plain_executor<net::io_context::basic_executor_type<Allocator, Bits>> : std::true_type {};
template <class Blocking, class Relationship, class Allocator>
struct is_plain_executor<net::basic_system_executor<Blocking, Relationship, Allocator>>
    : std::true_type {};
static_assert(is_plain_executor<net::io_context::executor_type>::value);
static_assert(is_plain_executor<net::system_executor>::value);
static_assert(is_plain_executor<work_counter<net::any_io_executor>::tracked_io_executor>::value);

// Whether trigger_inline may launch an operation on this thread: not when
// that would start it outside a strand that must serialize its steps. An
// executor of any other type might be a strand (the user's own, say): it
// launches in the call only if it says this thread runs it, and never if it
// cannot say. So does an any_io_executor whose target is neither an
// io_context executor (plain or work-tracking), the system executor nor a
// strand of a known type (a thread_pool's strand, say): it never launches
// in the call.
template <class Executor>
bool may_launch_here(const Executor& ex) noexcept {
  if constexpr (is_plain_executor<Executor>::value) {
    return true;
  } else if constexpr (is_strand<Executor>::value) {
    return ex.running_in_this_thread();
  } else if constexpr (std::is_same_v<Executor, net::any_io_executor>) {
    using io_executor = net::io_context::executor_type;
    using tracked_io_executor = work_counter<net::any_io_executor>::tracked_io_executor;
    if (ex.template target<io_executor>() || ex.template target<tracked_io_executor>() ||
        ex.template target<net::system_executor>())
      return true;
    if (const auto* s = ex.template target<net::strand<io_executor>>())
      return s->running_in_this_thread();
    if (const auto* s = ex.template target<net::strand<net::any_io_executor>>())
      return s->running_in_this_thread();
    return false;
  } else if constexpr (has_running_in_this_thread<Executor>::value) {
    return ex.running_in_this_thread();
  } else {
    return false;
  }
}

// Immediate completions that run inline (through an immediate executor) may
// start new operations that complete immediately too: past this depth on one
// thread, they are posted instead, so such a loop cannot exhaust the stack.
inline constexpr unsigned max_immediate_depth = 8;
inline thread_local unsigned immediate_depth = 0;

// Hands a bound completion to executor ex, as mode says. Immediate is
// handled by free_then_deliver / complete_immediately, which know the
// handler; here it means posted.
template <class Executor, class Completion>
void deliver(const Executor& ex, Completion&& c, completion_mode mode) {
  if (mode == completion_mode::invoke) {
    c();
  } else if (mode != completion_mode::dispatch) {
    post_to(ex, std::forward<Completion>(c));
  } else if (running_in(ex)) {
    c();
  } else {
    net::dispatch(ex, std::forward<Completion>(c));
  }
}

// Runs an immediate completion through the handler's immediate executor,
// within the depth bound; past it, posts to ex.
template <class ImmediateExecutor, class Executor, class Completion>
void deliver_immediate(const ImmediateExecutor& iex, const Executor& ex, Completion&& c) {
  if (immediate_depth >= max_immediate_depth) {
    post_to(ex, std::forward<Completion>(c));
    return;
  }
  struct depth_scope {
    depth_scope() noexcept { ++immediate_depth; }
    ~depth_scope() { --immediate_depth; }
  } scope;
  net::dispatch(iex, std::forward<Completion>(c));
}

// Runs deliver (which hands a completion on), then then(true); if deliver
// throws (a handler run inline threw), then(false) runs before the exception
// leaves.
template <class Then, class Deliver>
void deliver_then(Then& then, Deliver&& deliver) {
  try {
    deliver();
  } catch (...) {
    then(false);
    throw;
  }
  then(true);
}

// Completes a node's handler with args on executor ex (the handler's
// associated one) and frees the node first, as Asio requires (storage
// returned before the upcall). The handler is moved out, and args bound,
// before the node's memory goes. After the completion has been handed on,
// then(true) runs (the queue starts its next entry there); if the handler,
// run inline, throws, then(false) runs before the exception leaves.
template <class Node, class Handler, class Executor, class Then, class... Args>
void free_then_deliver_after(Node* node, Handler& handler, const Executor& ex, completion_mode mode,
                             Then&& then, Args&&... args) {
  const auto alloc = node_storage_of<Node>::get(handler);
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  if (mode == completion_mode::immediate) {
    const auto iex = net::get_associated_immediate_executor(handler, ex);
    auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
    deallocate_node(node, alloc);
    deliver_then(then, [&] { deliver_immediate(iex, ex, std::move(completion)); });
    return;
  }
#endif
  auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
  deallocate_node(node, alloc);
  deliver_then(then, [&] { deliver(ex, std::move(completion), mode); });
}

// As free_then_deliver_after, for a handler whose own executor ex is not
// io_ex, the I/O object's (the queue's, the writer's stream's). A completion
// that may run here is dispatched to ex; one that must not (posted,
// immediate) goes to io_ex, through the immediate executor Asio would choose
// for io_ex, and is dispatched from there to ex, as an Asio I/O object's
// completion is. Posting straight to ex is not the same: use_future's
// executor, for one, runs what is posted to it on a system_executor thread,
// outside the thread of io_ex that cancel_after's timer handler shares with
// the operation's handler as an implicit strand.
template <class Node, class Handler, class IoExecutor, class Executor, class Then, class... Args>
void free_then_deliver_via(Node* node, Handler& handler, const IoExecutor& io_ex,
                           const Executor& ex, completion_mode mode, Then&& then, Args&&... args) {
  const auto alloc = node_storage_of<Node>::get(handler);
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  if (mode == completion_mode::immediate) {
    const auto iex = net::get_associated_immediate_executor(handler, io_ex);
    auto completion =
        net::bind_executor(ex, bind_completion(std::move(handler), std::forward<Args>(args)...));
    deallocate_node(node, alloc);
    deliver_then(then, [&] { deliver_immediate(iex, io_ex, std::move(completion)); });
    return;
  }
#endif
  auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
  deallocate_node(node, alloc);
  deliver_then(then, [&] {
    if (mode == completion_mode::dispatch || mode == completion_mode::invoke)
      deliver(ex, std::move(completion), mode);
    else
      post_to(io_ex, net::bind_executor(ex, std::move(completion)));
  });
}

// free_then_deliver_after for completion_mode::invoke, which needs no
// executor: the node holds no work of its own (see handler_entry::refine).
template <class Node, class Handler, class Then, class... Args>
void free_then_invoke(Node* node, Handler& handler, Then&& then, Args&&... args) {
  const auto alloc = node_storage_of<Node>::get(handler);
  auto completion = bind_completion(std::move(handler), std::forward<Args>(args)...);
  deallocate_node(node, alloc);
  deliver_then(then, [&] { completion(); });
}

struct nothing_then {
  void operator()(bool) const noexcept {}
};

// Completes a handler that never became a node, from inside its initiating
// function: through the immediate executor Asio picks for io_ex (Asio 1.28
// and later), else posted to io_ex. A handler with an executor of its own is
// dispatched to it from there (see free_then_deliver_via).
template <class Handler, class IoExecutor, class... Args>
void complete_immediately(Handler&& handler, const IoExecutor& io_ex, Args&&... args) {
  auto bind = [&] {
    if constexpr (has_own_executor<std::decay_t<Handler>>::value) {
      // Read before the handler moves out (a coroutine's executor lives in
      // its frame, which the move takes).
      auto ex = net::get_associated_executor(handler, io_ex);
      return net::bind_executor(std::move(ex), bind_completion(std::forward<Handler>(handler),
                                                               std::forward<Args>(args)...));
    } else {
      return bind_completion(std::forward<Handler>(handler), std::forward<Args>(args)...);
    }
  };
#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  const auto iex = net::get_associated_immediate_executor(handler, io_ex);
  deliver_immediate(iex, io_ex, bind());
#else
  post_to(io_ex, bind());
#endif
}

// Entries launched inline from the completion of the one before (a queue
// draining on its own executor) nest on one thread's stack: past this depth
// the next launch is posted instead.
inline constexpr unsigned max_handoff_depth = 16;
inline thread_local unsigned handoff_depth = 0;

// Starts the entry that has just become active, after the previous one
// completed and its handler was handed on: launched here when that
// completion ran on the queue's executor (as strand::dispatch runs inline
// inside the strand), otherwise triggered (posted to the queue's executor).
inline void hand_off(entry_base* next, bool launch_here) {
  if (!launch_here || handoff_depth >= max_handoff_depth) {
    next->trigger();
    return;
  }
  struct depth_scope {
    depth_scope() noexcept { ++handoff_depth; }
    ~depth_scope() { --handoff_depth; }
  } scope;
  next->launch();
}

// What an entry that finished does once its handler is handed on.
// Without a waiting entry, the one the handler added to the idle queue, if
// any (lingering_work).
struct start_next {
  entry_base* next;
  bool on_queue_executor;
  lingering_work* linger = nullptr;
  void operator()(bool inline_ok) const {
    entry_base* n = next ? next : linger ? linger->take_deferred() : nullptr;
    if (n)
      hand_off(n, inline_ok && on_queue_executor);
  }
};

// The execution context of executor ex.
template <class Executor>
net::execution_context& context_of(const Executor& ex) noexcept {
  if constexpr (net::execution::is_executor<Executor>::value)
    return net::query(ex, net::execution::context);
  else
    return ex.context();
}

#if defined(SERQ_HANDLER_TRACKING)
// With Asio's handler tracking on, an entry is a tracked handler: created by
// its initiating function, invoked at its trigger and, for an operation,
// created again as the operation is launched and invoked at its completion.
using tracked_entry = net::detail::handler_tracking::tracked_handler;
#else
struct tracked_entry {};
#endif

inline const char* tracking_name(entry_kind k) noexcept {
  return k == entry_kind::operation ? "async_enqueue"
         : k == entry_kind::acquire ? "async_acquire"
                                    : "async_wait";
}

// State shared by every typed entry: the user's handler. The queue's
// executor is its core's; outstanding work on it is counted once per queue.
// Only a handler whose associated executor is not the queue's needs work of
// its own, allocated with the handler's allocator then.
template <class Handler, class QueueExecutor>
class handler_entry : public entry_base, public tracked_entry {
 public:
  using handler_executor_type = net::associated_executor_t<Handler, QueueExecutor>;
  using allocator_type = node_allocator_t<Handler>;
  using core_type = basic_queue_core<QueueExecutor>;
  // The entry's own storage (node_storage_of): for a handler with the
  // default allocator, the thread's slot for queue entries, which keeps the
  // entry out of the recycling allocator's two-block cache (a queue on a
  // strand took two allocations an operation when the entry competed there
  // with the strand's operations); otherwise the handler's allocator. What
  // the entry posts (its trigger) uses allocator_type.
  using storage_type =
      std::conditional_t<std::is_same_v<net::associated_allocator_t<Handler>, std::allocator<void>>,
                         own_block_allocator<void, own_block::queue_entry>, allocator_type>;
  static storage_type storage_of(const Handler& h) noexcept {
    if constexpr (std::is_same_v<storage_type, allocator_type>)
      return node_allocator(h);
    else
      return {};
  }

  const core_type& typed_core() const noexcept { return static_cast<const core_type&>(core()); }
  // A reference, but on an any_io_executor queue a copy (see basic_queue_core):
  // never bind what get_associated_executor(h, queue_executor()) returns to a
  // reference, which may refer to that temporary.
  decltype(auto) queue_executor() const noexcept { return typed_core().executor(); }
  handler_executor_type handler_executor() const noexcept {
    return net::get_associated_executor(handler_, queue_executor());
  }
  allocator_type get_allocator() const noexcept { return node_allocator(handler_); }

 protected:
  // Held only by an entry whose handler's executor is not the queue's:
  // outstanding work on the handler's executor, and the queue's executor,
  // through which a posted completion goes (see free_then_deliver_via),
  // copied while the core is alive (it may be gone when the entry finishes).
  struct handler_work {
    handler_work(const handler_executor_type& ex, const QueueExecutor& queue_ex)
        : work(ex), io(queue_ex) {}
    work_guard<handler_executor_type> work;
    QueueExecutor io;
  };

  template <class H>
  handler_entry(func_type f, const core_ref& core, H&& h, entry_kind kind)
      : entry_base(f, *core), handler_(std::forward<H>(h)) {
    track_creation(tracking_name(kind));
    // A handler without an associated executor of its own has the queue's:
    // no comparison needed (on any_io_executor it is a type-erased call).
    if constexpr (has_own_executor<Handler>::value) {
      handler_executor_type ex = handler_executor();
      if (!same_executor(ex))
        work_ = allocate_node<handler_work>(handler_, ex, queue_executor());
    }
    // Last: what a derived entry's constructor cannot make undoes it
    // (undo_construction).
    try {
      attach_canceller(net::get_associated_cancellation_slot(handler_), core);
    } catch (...) {
      release_work();
      throw;
    }
  }

  // The derived entry's constructor failed after this one had finished:
  // gives back the handler's work and the user's cancellation slot.
  void undo_construction() noexcept {
    release_work();
    detach_canceller(net::get_associated_cancellation_slot(handler_));
  }

  // Whether ex, the handler's executor, is the queue's. On a queue whose
  // any_io_executor wraps an io_context executor, an any_io_executor (a
  // coroutine's) is compared through its target, without the type-erased
  // call, and that io_context executor itself is the queue's too. Executors
  // of any other type are not the queue's.
  bool same_executor(const handler_executor_type& ex) const noexcept {
    constexpr bool any_io_queue = std::is_same_v<QueueExecutor, net::any_io_executor>;
    if constexpr (std::is_same_v<handler_executor_type, QueueExecutor>) {
      if constexpr (any_io_queue) {
        if (const auto* q = typed_core().io_target()) {
          const auto* h = ex.template target<net::io_context::executor_type>();
          return h && *h == *q;
        }
      }
      return ex == queue_executor();
    } else if constexpr (any_io_queue &&
                         std::is_same_v<handler_executor_type, net::io_context::executor_type>) {
      const auto* q = typed_core().io_target();
      return q && ex == *q;
    } else {
      return false;
    }
  }

  // Records, with handler tracking on, that this entry's next tracked
  // handler was created: by its initiating function, or by its launch.
  void track_creation([[maybe_unused]] const char* what) {
#if defined(SERQ_HANDLER_TRACKING)
    net::detail::handler_tracking::creation(context_of(queue_executor()), *this, "serialized_queue",
                                            &core(), 0, what);
#endif
  }

  // Posts the queue's trigger for this entry. The posted function owns the
  // entry: if it is destroyed unrun (the context shuts down), the entry is
  // abandoned and the queue's turn handed on.
  void post_trigger() {
    typed_core().post(trigger_function{this, get_allocator()});
  }

  // Frees this entry and completes the handler with args on ex (its
  // executor, read before the queue's turn was handed on: the core may be
  // gone since) as mode says, then runs then().
  template <class Derived, class Then, class... Args>
  static void complete_after(Derived* self, const handler_executor_type& ex, completion_mode mode,
                             Then&& then, Args&&... args) {
    // Two calls rather than one after an optional guard: an empty
    // std::optional<handler_work> here costs the hot path ~30 to 50
    // instructions (callgrind), and most handlers hold no work of their own.
    if constexpr (has_own_executor<Handler>::value) {
      if (handler_work* w = std::exchange(self->work_, nullptr)) {
        // The handler's work, held until its completion has been handed on.
        const handler_work held(std::move(*w));
        deallocate_node(w, self->get_allocator());
        free_then_deliver_via(self, self->handler_, held.io, ex, mode, std::forward<Then>(then),
                              std::forward<Args>(args)...);
        return;
      }
    }
    // The queue's own executor, or one equal to it: no work was taken.
    free_then_deliver_after(self, self->handler_, ex, mode, std::forward<Then>(then),
                            std::forward<Args>(args)...);
  }

  // Frees this entry, then completes the handler with args as mode says.
  // The queue's turn must already be handed on by the caller, if it held one.
  template <class Derived, class... Args>
  static void complete(Derived* self, completion_mode mode, Args&&... args) {
    complete_after(self, self->handler_executor(), mode, nothing_then{},
                   std::forward<Args>(args)...);
  }

  // A dispatched completion on a thread that runs the queue's executor is
  // invoked right away when the handler's executor is the queue's: it has
  // none of its own, or one equal to the queue's (then it holds no work).
  completion_mode refine(completion_mode mode, bool on_queue_executor) const noexcept {
    return mode == completion_mode::dispatch && on_queue_executor && work_ == nullptr
               ? completion_mode::invoke
               : mode;
  }

  // An entry aborted by cancel() or a signal is posted; one refused inside
  // its initiating call (the queue is closed) completes immediately.
  static completion_mode mode_of(entry_base::action a) noexcept {
    return a == entry_base::action::reject ? completion_mode::immediate : completion_mode::post;
  }

  template <class Derived>
  static void deallocate(Derived* self) noexcept {
    if (handler_work* w = std::exchange(self->work_, nullptr))
      deallocate_node(w, self->get_allocator());
    deallocate_node(self, storage_of(self->handler_));
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

  void release_work() noexcept {
    if (handler_work* w = std::exchange(work_, nullptr))
      deallocate_node(w, get_allocator());
  }

  handler_work* work_ = nullptr;  // only when the handler's executor is not the queue's
};

// The handler serq gives the queued operation. It owns its entry: destroyed
// without being invoked (its context shut down), it abandons the entry so the
// queue moves on and nothing leaks. Its associated executor is the queue's,
// so every step of a composed operation runs where the queue runs it (on a
// strand, inside the strand), as a strand-protected object needs; its
// allocator, cancellation slot and immediate executor are the user handler's.
// For a queue on an any_io_executor that wraps an io_context executor, the
// executor is that io_context executor itself (Executor): the same executor,
// without the type erasure in every step an operation posts or dispatches.
template <class Entry, class Executor = typename Entry::queue_executor_type>
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

  using executor_type = Executor;
  executor_type get_executor() const noexcept {
    if constexpr (std::is_same_v<Executor, typename Entry::queue_executor_type>)
      return e_->queue_executor();
    else
      return *e_->typed_core().io_target();
  }

  using allocator_type = typename Entry::user_allocator_type;
  allocator_type get_allocator() const noexcept { return e_->user_allocator(); }

  using cancellation_slot_type = net::cancellation_slot;
  cancellation_slot_type get_cancellation_slot() const noexcept { return e_->op_slot(); }

#if defined(SERQ_HAS_IMMEDIATE_EXECUTOR)
  using immediate_executor_type = typename Entry::immediate_executor_type;
  immediate_executor_type get_immediate_executor() const noexcept {
    return e_->immediate_executor();
  }
#endif

 private:
  Entry* e_;
};

// The results of an operation that completed inside its own launch, posted
// so that the entry completes once the launch has returned. Destroyed unrun
// (the context shuts down), it abandons the entry.
template <class Entry, class... Args>
class inline_completion {
 public:
  template <class... A>
  explicit inline_completion(Entry* e, A&&... args) : e_(e), args_(std::forward<A>(args)...) {}
  inline_completion(inline_completion&& o) noexcept(
      std::is_nothrow_move_constructible_v<std::tuple<Args...>>)
      : e_(std::exchange(o.e_, nullptr)), args_(std::move(o.args_)) {}
  inline_completion& operator=(inline_completion&&) = delete;
  ~inline_completion() {
    if (e_)
      e_->abandon();
  }

  void operator()() {
    std::apply([this](auto&&... a) { std::exchange(e_, nullptr)->finish_posted(std::move(a)...); },
               std::move(args_));
  }

  using allocator_type = typename Entry::allocator_type;
  allocator_type get_allocator() const noexcept { return e_->get_allocator(); }

 private:
  Entry* e_;
  std::tuple<Args...> args_;
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
  op_entry(const core_ref& core, L&& l, H&& h)
      : base(&op_entry::do_action, core, std::forward<H>(h), entry_kind::operation),
        launcher_(make_launcher(std::forward<L>(l))) {}

  user_allocator_type user_allocator() const noexcept {
    return net::get_associated_allocator(this->handler_);
  }

  // The slot the running operation was given: the canceller's inner one.
  net::cancellation_slot op_slot() const noexcept {
    return launch_guard::slot_of(*this);
  }

  template <class... Args>
  void finish_op(Args&&... args) {
    if (launch_guard::current(this)) {
      // A non-conforming operation completed inside its own launch: finish
      // from a posted function, once the launch has returned and its guard
      // is gone, since the final handler may destroy the signal that holds
      // the canceller.
      try {
        this->typed_core().post(
            inline_completion<op_entry, std::decay_t<Args>...>(this, std::forward<Args>(args)...));
      } catch (...) {
        // The result could not be kept (copying it threw) or posted: the
        // entry is abandoned once the launch is over (if the posted
        // function was made, its destructor asked for that already), and
        // the operation sees the exception.
        this->abandon();
        throw;
      }
      return;
    }
#if defined(SERQ_HANDLER_TRACKING)
    net::detail::handler_tracking::completion tracked(*this);
    tracked.invocation_begin();
    finish(completion_mode::dispatch, std::forward<Args>(args)...);
    tracked.invocation_end();
#else
    finish(completion_mode::dispatch, std::forward<Args>(args)...);
#endif
  }

  template <class... Args>
  void finish_posted(Args&&... args) {
    finish(completion_mode::post, std::forward<Args>(args)...);
  }

 private:
  template <class, class>
  friend class launched_handler;

  // The operation is over: the queue's turn goes to the next entry, which
  // starts once this entry's handler has been handed on. A queue left empty
  // releases its outstanding work only after that, too.
  template <class Arg0, class... Args>
  void finish(completion_mode mode, Arg0&& ec, Args&&... args) {
    const bool on_queue_executor = this->typed_core().running_here();
    mode = this->refine(mode, on_queue_executor);
    work_counter<QueueExecutor> idle_work;
    if (mode == completion_mode::invoke) {
      // Run right here: the handler's executor is not needed (on an
      // any_io_executor queue, making it is a type-erased construction).
      wait_launch_done(*this);
      this->core().trace_done(ec);
      queue_core& core = this->core();
      entry_base* next = core.finish_and_take_next(&idle_work);
      lingering_work linger(base::core_type::tag(), &idle_work,
                            next || !on_queue_executor ? nullptr : &core);
      free_then_invoke(this, this->handler_, start_next{next, on_queue_executor, &linger},
                       std::forward<Arg0>(ec), std::forward<Args>(args)...);
      return;
    }
    const auto ex = this->handler_executor();
    wait_launch_done(*this);
    this->core().trace_done(ec);
    queue_core& core = this->core();
    entry_base* next = core.finish_and_take_next(&idle_work);
    // A handler dispatched to its own executor runs here too when this
    // thread runs that executor (a coroutine resumed inline).
    lingering_work linger(base::core_type::tag(), &idle_work,
                          next || !on_queue_executor ? nullptr : &core);
    base::complete_after(this, ex, mode, start_next{next, on_queue_executor, &linger},
                         std::forward<Arg0>(ec), std::forward<Args>(args)...);
  }

  static int do_action(entry_base* b, entry_base::action a) {
    auto* self = static_cast<op_entry*>(b);
    switch (a) {
      case entry_base::action::kind:
        return static_cast<int>(entry_kind::operation);
      case entry_base::action::trigger:
        self->post_trigger();
        break;
      case entry_base::action::launch:
        self->do_launch();
        break;
      case entry_base::action::abort:
      case entry_base::action::reject:
      case entry_base::action::refuse:
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
    return 0;
  }

  void do_launch() {
#if defined(SERQ_HANDLER_TRACKING)
    net::detail::handler_tracking::completion tracked(*this);
    tracked.invocation_begin();
    this->track_creation("operation");
#endif
    this->core().trace_trigger(entry_kind::operation);
    bool cancelled = false;
    {
      launch_guard guard(*this);
      cancelled = guard.cancelled();
      if (!cancelled) {
        Launcher l = take_launcher();
        if constexpr (std::is_same_v<QueueExecutor, net::any_io_executor>) {
          if (this->typed_core().io_target())
            std::move(l)(launched_handler<op_entry, net::io_context::executor_type>(this));
          else
            std::move(l)(launched_handler<op_entry>(this));
        } else {
          std::move(l)(launched_handler<op_entry>(this));
        }
#if defined(SERQ_HANDLER_TRACKING)
        tracked.invocation_end();
#endif
        return;  // the entry may already be gone
      }
    }
#if defined(SERQ_HANDLER_TRACKING)
    tracked.invocation_end();
#endif
    // Cancelled after it was triggered but before it started: it never ran.
    std::apply([this](auto&&... args) { this->finish_posted(std::move(args)...); },
               queueable_signature<Signature>::aborted());
  }

  // Moves the operation out to launch it. A move that throws leaves no
  // handler to finish the entry: it is abandoned (once the launch is over)
  // and the queue moves on, as when an operation's initiation throws.
  Launcher take_launcher() {
    try {
      return Launcher(std::move(launcher_));
    } catch (...) {
      this->abandon();
      throw;
    }
  }

  // The operation, copied or moved in; if that throws, the entry gives back
  // what its base took before the exception leaves the initiating function.
  template <class L>
  Launcher make_launcher(L&& l) {
    try {
      return Launcher(std::forward<L>(l));
    } catch (...) {
      this->undo_construction();
      throw;
    }
  }

  Launcher launcher_;
};

template <class QueueExecutor>
entry_base* make_untrigger_entry(const core_ref& core, erased_turn_handler&& h);

// An entry whose only work is its turn. An acquire (HandsOutTurn) gives the
// turn itself to its handler, as a serq::turn that keeps the queue busy; a
// barrier (async_wait) completes as soon as everything before it is done.
template <class Handler, class QueueExecutor, bool HandsOutTurn>
class turn_entry final : public handler_entry<Handler, QueueExecutor> {
  using base = handler_entry<Handler, QueueExecutor>;

 public:
  static constexpr entry_kind kind = HandsOutTurn ? entry_kind::acquire : entry_kind::barrier;

  template <class H>
  turn_entry(const core_ref& core, H&& h)
      : base(&turn_entry::do_action, core, std::forward<H>(h), kind) {}

 private:
  static int do_action(entry_base* b, entry_base::action a) {
    auto* self = static_cast<turn_entry*>(b);
    const error_code aborted(net::error::operation_aborted);
    switch (a) {
      case entry_base::action::kind:
        return static_cast<int>(kind);
      case entry_base::action::trigger:
        self->post_trigger();
        break;
      case entry_base::action::launch: {
#if defined(SERQ_HANDLER_TRACKING)
        net::detail::handler_tracking::completion tracked(*self);
        tracked.invocation_begin();
#endif
        self->core().trace_trigger(kind);
        bool cancelled = false;
        {
          launch_guard guard(*self);
          cancelled = guard.cancelled();
        }
        queue_core& core = self->core();
        const auto ex = self->handler_executor();
        if (cancelled || !HandsOutTurn) {
          const bool on_queue_executor = self->typed_core().running_here();
          core.trace_done(cancelled ? aborted : error_code());
          work_counter<QueueExecutor> idle_work;
          entry_base* next = core.finish_and_take_next(&idle_work);
          finish_with(self, ex,
                      cancelled ? completion_mode::post
                                : self->refine(completion_mode::dispatch, on_queue_executor),
                      start_next{next, on_queue_executor}, cancelled ? aborted : error_code(),
                      nullptr);
        } else {
          core_ref held(&core);
          work_counter<QueueExecutor> idle_work;
          core.turn_granted(&idle_work);
          finish_with(self, ex, completion_mode::dispatch, nothing_then{}, error_code(),
                      std::move(held));
        }
#if defined(SERQ_HANDLER_TRACKING)
        tracked.invocation_end();
#endif
        break;
      }
      case entry_base::action::abort:
      case entry_base::action::reject:
        finish_with(self, self->handler_executor(), base::mode_of(a), nothing_then{}, aborted,
                    nullptr);
        break;
      case entry_base::action::refuse:
        finish_with(self, self->handler_executor(), completion_mode::post, nothing_then{},
                    error_code(net::error::invalid_argument), nullptr);
        break;
      case entry_base::action::destroy:
        base::deallocate(self);
        break;
    }
    return 0;
  }

  // Completes the handler; an acquire also gets the turn (empty unless held).
  template <class Then>
  static void finish_with(turn_entry* self, const typename base::handler_executor_type& ex,
                          completion_mode mode, Then&& then, error_code ec, core_ref held) {
    if constexpr (HandsOutTurn)
      base::complete_after(
          self, ex, mode, std::forward<Then>(then), ec,
          held ? turn(std::move(held), &make_untrigger_entry<QueueExecutor>) : turn());
    else
      base::complete_after(self, ex, mode, std::forward<Then>(then), ec);
  }
};

// The entry that waits, at the head of the queue, for an untriggered turn's
// new grant: an acquire whose handler is the async_untrigger's.
template <class QueueExecutor>
entry_base* make_untrigger_entry(const core_ref& core, erased_turn_handler&& h) {
  using entry = turn_entry<erased_turn_handler, QueueExecutor, true>;
  return allocate_node<entry>(h, core, std::move(h));
}

// Adds a freshly allocated entry to its queue and acts on the answer.
void submit(queue_core& core, entry_base* e, bool allow_inline);

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_ENTRIES_HPP
