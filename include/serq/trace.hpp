//
// serq/trace.hpp
//
// What serq tells an observer about queued entries: trace hooks called at
// four points of an entry's life (tevent's queue trace callback), and the
// counters returned by serialized_queue::stats().
//

#ifndef SERQ_TRACE_HPP
#define SERQ_TRACE_HPP

#include <serq/config.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

SERQ_NAMESPACE_BEGIN

/// The points of an entry's life at which a trace hook is called.
enum class trace_point {
  /// The entry was added to its queue; nothing can trigger it yet. The hook
  /// may set `entry_info::tag` here; the queue keeps it for the later points.
  attach,
  /// The entry's turn has come: its operation is about to be launched, its
  /// turn handed out or its barrier passed, on the thread that does it. An
  /// untriggered turn sees this point again when it is granted anew.
  before_trigger,
  /// The triggered entry is over: its operation's result reached the queue,
  /// its turn was released, or its barrier passed; the next entry has not
  /// been started yet.
  after_complete,
  /// The entry is gone, however it went: completed, cancelled, removed by
  /// `cancel()`, aborted by the queue's destruction, or destroyed by its
  /// context's shutdown.
  detach,
};

/// What kind of entry a trace hook is called for.
enum class entry_kind {
  operation,  ///< Added by `async_enqueue` (a writer's composed operations included).
  acquire,    ///< Added by `async_acquire`: its trigger hands out a turn.
  barrier,    ///< Added by `async_wait`.
};

/// The entry a trace hook is called for.
/**
 * Passed by reference: a hook may change `tag`, and the queue keeps the new
 * value for the entry's later points. The other members are for reading.
 */
struct entry_info {
  /// Free for the hook: zero when the entry is added, then whatever a hook
  /// stored. Samba's winbindd keeps a request's trace id here.
  std::uint64_t tag;
  /// What added the entry.
  entry_kind kind;
  /// The name given to the queue; valid during the call only.
  std::string_view queue_name;
  /// How long the entry waited for its trigger: zero at attach, and for an
  /// entry that became active as it was added; final from before_trigger on
  /// (for an entry that never triggered, how long it waited before it went).
  std::chrono::steady_clock::duration waited;
  /// At after_complete and detach: how the entry ended. The operation's
  /// `error_code` when it completed (success for turns and barriers);
  /// `operation_aborted` when it was cancelled, removed by `cancel()` or
  /// aborted by the queue's destruction; `shut_down` when its context shut
  /// down and its handler was destroyed unrun. Empty at the other points.
  error_code result;
};

/// The type of a trace hook.
/**
 * A hook runs on the thread where the point happens, with no lock of serq
 * held: it may use the queue (add entries, read `stats()`), though adding
 * from `attach` adds entries behind the one being attached. The exception:
 * a `queued_writer` adds to its internal queues (a writer's messages are not
 * entries: one `acquire` entry, its pump, carries a run of them; composed
 * operations are `operation` entries) while it holds its own lock, so their
 * `attach` points (and the `detach` of a pump whose trigger cannot be
 * posted) come with that lock held, and a hook must not call that writer's
 * member functions from them. A hook must not
 * throw: an exception leaving a hook calls `std::terminate`, since serq
 * cannot undo the step it was reporting.
 */
using trace_hook = std::function<void(trace_point, entry_info&)>;

/// Installs the trace hook of every queue of `ctx` that has none of its own,
/// the internal queues of `queued_writer`s included. An empty function
/// removes it.
/**
 * Takes effect for points that happen after the call: an entry added before
 * it may be reported from a later point on only (the active entry, if its
 * trigger came before the call, not at all). It reaches every queue of
 * `ctx` alive then and every one created later. Two kinds of queue are
 * reached only if the context had a default hook before: one whose IO
 * object was already destroyed (its last operation still running), and one
 * created after the context shut down (which refuses every entry).
 *
 * Throws `std::bad_alloc` if the queues' trace state cannot be allocated.
 *
 * @par Thread safety
 * May be called from any thread, concurrently with the queues' work.
 */
void set_default_trace_hook(net::execution_context& ctx, trace_hook hook);

/// Counters of a serialized_queue, from `serialized_queue::stats()`.
/**
 * The counts cover the queue's whole life. An entry is `added` once, and
 * leaves either `completed` (it was triggered and is over) or `aborted` (it
 * left while waiting: cancelled, removed by `cancel()`, aborted by the
 * queue's destruction or by its context's shutdown, or refused because the
 * queue was closed). An entry cancelled after its trigger, before its
 * operation was launched, never runs either, but it was triggered: it
 * counts as `completed` (with `operation_aborted`, as its hook points say).
 * Wait times are those a trace hook sees as `entry_info::waited`, counted
 * when an entry is triggered or leaves without running.
 *
 * Measuring a wait takes two clock reads per entry that waits, so a queue
 * starts to measure them at its first `stats()` call (or while a trace hook
 * is installed): entries that started to wait before are not in `total_wait`
 * and `max_wait`. The counts are always kept.
 */
struct queue_stats {
  std::uint64_t added = 0;      ///< Entries added.
  std::uint64_t completed = 0;  ///< Entries that were triggered and are over.
  std::uint64_t aborted = 0;    ///< Entries that left without running.
  std::size_t depth = 0;        ///< Entries waiting now plus the active one (`size()`).
  std::size_t peak_depth = 0;   ///< The largest `depth` so far.
  std::chrono::steady_clock::duration total_wait{};  ///< Sum of the wait times.
  std::chrono::steady_clock::duration max_wait{};    ///< Longest wait time.
};

SERQ_NAMESPACE_END

#endif  // SERQ_TRACE_HPP
