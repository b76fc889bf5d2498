//
// serq/serialized_queue.hpp
//

#ifndef SERQ_SERIALIZED_QUEUE_HPP
#define SERQ_SERIALIZED_QUEUE_HPP

#include <serq/config.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/trace.hpp>
#include <serq/turn.hpp>

#include <cstddef>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {
class queue_core;
}  // namespace detail

/// Tag type of @ref serq::trigger_inline "trigger_inline".
struct trigger_inline_t {
  explicit trigger_inline_t() = default;
};

/// Asks `async_enqueue` to launch the operation inside the call when the
/// queue is running and idle (tevent's `tevent_queue_add_optimize_empty`),
/// and the call is made where the queue's operations may run: for a queue on
/// a strand, only from inside that strand. A queue on an `any_io_executor`
/// launches in the call only when serq can see what it wraps: an
/// `io_context`'s executor (plain or work-tracking) or the system executor,
/// or (called inside it) a strand of an `io_context` executor or of an
/// `any_io_executor`; any other target (an executor with a custom allocator
/// included) might be a strand, so its entries are triggered as usual. A
/// queue on an executor type other than those (a user's own executor, a
/// `thread_pool`'s) launches in the call only when that executor's
/// `running_in_this_thread()` says the caller runs in it, and never if it
/// has no such member. Otherwise the entry waits as usual. The completion handler is still never
/// invoked from inside the call.
inline constexpr trigger_inline_t trigger_inline{};

template <class Stream>
class queued_writer;

/// A FIFO that serializes whole asynchronous operations.
/**
 * A strand keeps *handlers* from running concurrently; a serialized queue
 * keeps whole *operations* from overlapping. Each entry added with
 * `async_enqueue` waits for its turn; when the previous entry has completed,
 * the queue launches it (its *trigger*). When the operation completes, its
 * results are passed unchanged to the entry's completion handler and the
 * next entry is launched. This is Samba's `tevent_queue` for Asio.
 *
 * At most one entry is *active* at a time: an operation between its launch
 * and its completion, a @ref serq::turn "turn" handed out by `async_acquire`, or a barrier
 * being passed.
 *
 * @par Hand-off
 * An entry that becomes active when the queue was idle (added to an idle
 * queue, after `start()`, after a turn is released) is triggered by a
 * function posted to the queue's executor, never inside the call that made
 * it active (except with `trigger_inline`). One exception: the first entry
 * added to the queue from inside the completion handler of the operation
 * that left it idle, while that handler runs on the queue's executor within
 * the completion, is launched right after the handler returns, by that
 * completion, as an entry that waited would be (the usual pipeline, where
 * each completion submits the next operation, then takes no post per
 * operation); if the handler throws, the entry is posted. As a strand's
 * handler must not wait for a function it posted to its own strand, such a
 * handler must not wait for the entry it added (block on a future, or run
 * the context nested until it completes): that entry starts only after the
 * handler returns. An entry that becomes active because the previous
 * operation completed is launched right there, once that operation's handler
 * has been handed on (invoked or dispatched), when the completion runs on
 * the queue's executor, as `strand::dispatch` runs inline inside its strand;
 * otherwise it is posted. A run of entries that finish at once (barriers,
 * cancelled entries) is launched inline at most 16 deep on one thread, then
 * posted, so the stack stays bounded.
 *
 * @par Completion signatures
 * Queued operations must have a completion signature
 * `void(error_code, Ts...)`. An entry that never started (aborted by
 * `cancel()`, by its cancellation slot, or by the queue's destruction)
 * completes with `net::error::operation_aborted` and value-initialised
 * `Ts...`.
 *
 * @par Executor
 * Queued operations run on the queue's executor: each is launched there, and
 * the handler serq gives it has the queue's executor as its associated
 * executor, so every intermediate step of a composed operation runs there
 * too (for a queue on an `any_io_executor` that wraps an `io_context`
 * executor, the associated executor is that `io_context` executor itself: the
 * same executor, without type erasure in every step). A queue on a strand
 * therefore keeps a strand-protected object (a
 * websocket, an SSL stream) safe however many threads add to it, as a strand
 * would. Every completion handler then runs on its own associated executor,
 * which defaults to the queue's: invoked directly when the completing thread
 * already runs that executor, dispatched to it otherwise. No handler is ever
 * invoked from inside an initiating function. A completion that must not run
 * where it arises (an entry aborted by a signal, `cancel()` or the queue's
 * destruction, or refused inside its call) is posted to the queue's
 * executor (or handed to the immediate executor Asio picks for it) and
 * dispatched from there to the handler's own, as an Asio I/O object's is: a
 * `use_future` handler runs on a thread that runs the queue's executor,
 * never on a `system_executor` thread. While entries wait or an
 * operation is active, the queue counts as one unit of outstanding work on
 * its executor, however many entries it holds; an entry whose handler's
 * executor is not the queue's also counts as work on that executor. A held
 * turn is not outstanding work.
 *
 * @par Memory
 * An entry (the handler, the operation and six words) is allocated with the
 * handler's associated allocator. With the default `std::allocator`, each
 * thread keeps one block for queue entries: an entry of that block's very
 * size takes it, any other comes from Asio's recycling allocator, and a
 * finished entry's block goes back to it. What a thread keeps is freed when
 * the thread ends (a main thread that first keeps a block during static
 * destruction keeps it until the process exits).
 *
 * @par Object lifetimes
 * An operation's cancellation slot keeps serq's handler in it after the
 * operation completed (Asio leaves a slot's handler in place until the slot
 * is reused, cleared or its signal destroyed), and that handler holds the
 * queue's shared state. For a queue on a strand, destroy such a
 * `cancellation_signal` (or reuse its slot), and any `turn`, before the
 * queue's execution context: the state's last reference destroys its copy of
 * the strand, which must go before the strand's context. (On a plain
 * `io_context` executor they may outlive it.)
 *
 * @par Thread safety
 * Distinct objects: safe. Shared objects: every member function except the
 * destructor and move assignment may be called concurrently from any thread,
 * like a strand.
 *
 * @tparam Executor The executor on which triggers are posted and which is
 * the default for completion handlers.
 */
template <class Executor = net::any_io_executor>
class basic_serialized_queue {
 public:
  /// The type of the executor associated with the object.
  using executor_type = Executor;

  /// Rebinds the queue type to another executor.
  template <class Executor1>
  struct rebind_executor {
    /// The queue type when rebound to the specified executor.
    using other = basic_serialized_queue<Executor1>;
  };

  /// Constructs a running, empty queue whose triggers are posted to `ex`.
  /**
   * @param ex The queue's executor.
   * @param name A name for diagnostics; copied.
   */
  explicit basic_serialized_queue(const executor_type& ex, std::string_view name = {});

  /// Constructs a running, empty queue using `ctx.get_executor()`.
  template <
      class ExecutionContext,
      std::enable_if_t<std::is_convertible_v<ExecutionContext&, net::execution_context&>, int> = 0>
  explicit basic_serialized_queue(ExecutionContext& ctx, std::string_view name = {})
      : basic_serialized_queue(executor_type(ctx.get_executor()), name) {}

  /// Move constructor. `other`'s entries stay with the moved-to object;
  /// `other` is left as if newly constructed with the same executor and name.
  basic_serialized_queue(basic_serialized_queue&& other);

  /// Move assignment: aborts this queue's entries that have not started (as
  /// the destructor does), then takes over `other`'s as the move constructor
  /// does.
  basic_serialized_queue& operator=(basic_serialized_queue&& other);

  basic_serialized_queue(const basic_serialized_queue&) = delete;
  basic_serialized_queue& operator=(const basic_serialized_queue&) = delete;

  /// Destroys the queue.
  /**
   * Every waiting entry completes with `operation_aborted` (posted), and so
   * does an entry whose turn has come but that was not launched yet (its
   * trigger is posted, or the handler of the operation before it destroys
   * the queue): its operation is never launched, and a turn is not handed
   * out. An operation already launched runs to completion normally; nothing
   * it holds refers to the destroyed object.
   */
  ~basic_serialized_queue();

  /// Returns the queue's executor.
  executor_type get_executor() const noexcept { return executor_; }

  /// Returns the name given at construction.
  std::string_view name() const noexcept;

  /// Queues an asynchronous operation (tevent's `tevent_queue_add`).
  /**
   * When the entry's turn comes, the queue launches `op` by invoking it with
   * a completion handler; when `op` completes, `token` receives `op`'s
   * results unchanged and the next entry is launched (see Hand-off).
   *
   * @param op A deferred asynchronous operation, for example
   * `net::async_write(sock, buf, net::deferred)` or
   * `timer.async_wait(net::deferred)`. It is moved into the queue and
   * launched at most once.
   * @param token The completion token.
   *
   * @par Handler signature
   * The completion signature of `op`, which must be `void(error_code, Ts...)`.
   *
   * @par Executor
   * The operation is launched on the queue's executor: from a function posted
   * there, or from the completion of the previous entry running there. It is
   * given an intermediate handler whose associated executor is the
   * queue's, so its intermediate steps run there as well; the intermediate
   * handler's associated allocator, cancellation slot and (Asio 1.28 and
   * later) immediate executor are those of the final handler. When the
   * operation completes, the final handler runs on its own associated
   * executor (default: the queue's): directly if the completing thread
   * already runs that executor, otherwise dispatched to it; never inside this
   * call.
   *
   * @par Per-operation cancellation
   * All cancellation types. While the entry waits, a signal removes it: the
   * operation is never launched and the handler gets `operation_aborted`.
   * Once launched, signals are forwarded to the operation, which decides.
   * A waiting entry's signal may be emitted from any thread. A launched
   * operation's is forwarded on the emitting thread, so Asio's rule for a
   * slot applies: emit it where the operation's steps run (the queue's
   * executor; on a strand, inside it), since each step of a composed
   * operation installs its own handler in the slot. That includes the
   * operation's own initiation: a signal emitted there reaches the handler
   * the operation has installed by then (none yet: it is lost, as with any
   * slot). One slot serves one
   * entry at a time: binding it to another operation (of this queue or any
   * other) before this entry has completed destroys the handler serq
   * installed there, which this entry still uses: undefined behaviour. Use a
   * signal per operation (or a `cancellation_signal` per queued call).
   *
   * @par Errors
   * `operation_aborted` if the entry was cancelled before it started or the
   * queue was destroyed first; otherwise whatever `op` reports.
   *
   * @par Object lifetimes
   * The queue must outlive the call. Whatever `op` refers to (a socket, the
   * buffers) must stay valid until the handler runs.
   */
  template <class Op, class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<std::decay_t<Op>, trigger_inline_t>, int> = 0>
  auto async_enqueue(Op&& op, CompletionToken&& token = CompletionToken());

  /// Queues a raw initiation with the given completion `Signature`.
  /**
   * As the deferred-operation overload, but when the turn comes the queue
   * calls `init(handler)`. `init` starts the work and eventually calls
   * `handler` with arguments matching `Signature`, exactly once, as an
   * asynchronous operation would. If it calls `handler` from inside `init`
   * anyway, the final handler is posted rather than invoked inline; if it
   * calls it from a thread that is not running the final handler's
   * executor, the final handler is dispatched to that executor.
   */
  template <class Signature, class Initiation,
            class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<std::decay_t<Initiation>, trigger_inline_t>, int> = 0>
  auto async_enqueue(Initiation&& init, CompletionToken&& token = CompletionToken());

  /// Queues an operation, launching it inside this call if the queue is
  /// running and idle (`tevent_queue_add_optimize_empty`).
  /**
   * A queue on a strand launches inside the call only when the caller runs
   * inside that strand; other calls trigger the entry as usual (posted). So
   * does a queue on an `any_io_executor` whose target serq cannot tell from
   * a strand (see `serq::trigger_inline`).
   * Otherwise identical to `async_enqueue(op, token)`. The completion
   * handler is never invoked from inside this call, even when the operation
   * is launched in it.
   */
  template <class Op, class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_enqueue(trigger_inline_t, Op&& op, CompletionToken&& token = CompletionToken());

  /// Raw-initiation form of the inline-trigger overload.
  template <class Signature, class Initiation,
            class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_enqueue(trigger_inline_t, Initiation&& init,
                     CompletionToken&& token = CompletionToken());

  /// Waits for a turn and holds it (tevent's queue wait used as a lock).
  /**
   * Completes when everything queued before it has finished, with a
   * non-empty @ref serq::turn "turn": until that turn is destroyed or released the queue
   * triggers nothing else, so a coroutine can run several steps as one unit.
   *
   * @par Handler signature
   * `void(error_code, serq::turn)`.
   *
   * @par Executor
   * The handler's associated executor (default: the queue's), never inside
   * this call.
   *
   * @par Per-operation cancellation
   * All cancellation types, until the turn is handed out: the handler gets
   * `operation_aborted` and an empty turn. After that, signals are ignored.
   *
   * @par Errors
   * `operation_aborted`, with an empty turn, if cancelled or if the queue was
   * destroyed before the turn came.
   *
   * @par Object lifetimes
   * A turn may outlive the queue object.
   */
  template <class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_acquire(CompletionToken&& token = CompletionToken());

  /// Waits until every entry added before this call has finished
  /// (tevent's `tevent_queue_wait_send`).
  /**
   * The barrier is an entry like any other: it counts in `size()`, keeps its
   * place in FIFO order, and does not pass while the queue is stopped.
   *
   * @par Handler signature
   * `void(error_code)`.
   *
   * @par Executor
   * The handler's associated executor (default: the queue's), never inside
   * this call.
   *
   * @par Per-operation cancellation
   * All cancellation types: the handler gets `operation_aborted`.
   *
   * @par Errors
   * `operation_aborted` if cancelled or if the queue was destroyed first.
   */
  template <class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_wait(CompletionToken&& token = CompletionToken());

  /// Lets the queue trigger entries again (`tevent_queue_start`). If it is
  /// idle and has waiting entries, the first one is triggered (posted).
  void start();

  /// Stops triggering new entries (`tevent_queue_stop`). The active entry,
  /// if any, runs on; entries may still be added and wait. Called from a
  /// completion handler, it comes too late for the next entry, which became
  /// active when the completed one finished (before its handler ran): that
  /// one still runs (unlike `tevent_queue_stop` in a callback).
  void stop() noexcept;

  /// True unless `stop()` was called more recently than `start()`.
  bool running() const noexcept;

  /// Number of entries waiting plus the active one (`tevent_queue_length`).
  std::size_t size() const noexcept;

  /// True when `size() == 0`.
  bool empty() const noexcept { return size() == 0; }

  /// Aborts every entry not yet triggered.
  /**
   * Each completes with `operation_aborted` (posted, never inside this call).
   * The active entry is not affected.
   *
   * If a completion cannot be posted (the executor throws, e.g.
   * `std::bad_alloc`), that entry's handler is destroyed without being
   * invoked, as at the context's shutdown; the other entries are aborted
   * as usual, and then the first such exception is rethrown.
   *
   * @returns The number of entries aborted.
   */
  std::size_t cancel();

  /// Installs this queue's trace hook, replacing the context's default
  /// (`serq::set_default_trace_hook`) for it; an empty function removes it.
  /**
   * The hook is called at each @ref serq::trace_point "trace_point" of every
   * entry, exactly once per point: `attach` when the entry is added (before
   * anything can trigger it), `before_trigger` and `after_complete` only if
   * it was triggered (an untriggered turn sees `before_trigger` again), and
   * `detach` when it goes, however it goes. It runs with no serq lock held
   * (but see `serq::trace_hook` for a writer's internal queues), on the
   * thread where the point happens; it must not throw (an exception
   * leaving it calls `std::terminate`). Points that happen before the call
   * are not reported; the active entry, if its trigger came before the call,
   * is not reported at all.
   *
   * A queue nobody observes holds no state for it: the first hook (here or
   * the context's default, which reaches every queue of the context once
   * installed, even after it is removed), the first `stats()` call or a
   * name given at construction gives the queue one more heap block, kept
   * until it goes. Without a hook, a point costs one atomic load on a queue
   * without that block, and up to four with it.
   */
  void set_trace_hook(trace_hook hook);

  /// Returns the queue's counters (see @ref serq::queue_stats "queue_stats").
  /** May be called from any thread at any time. */
  queue_stats stats() const noexcept;

 private:
  struct initiate_enqueue;
  template <bool HandsOutTurn>
  struct initiate_turn_entry;

  executor_type executor_;
  serialized_queue_service* service_;
  detail::core_ref core_;
};

/// A serialized queue using the type-erased `net::any_io_executor`.
using serialized_queue = basic_serialized_queue<>;

SERQ_NAMESPACE_END

#include <serq/impl/serialized_queue.hpp>

#endif  // SERQ_SERIALIZED_QUEUE_HPP
