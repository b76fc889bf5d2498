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
#include <serq/detail/back_linked_list.hpp>
#include <serq/detail/core_ref.hpp>
#include <serq/detail/executor_ops.hpp>
#include <serq/detail/small_mutex.hpp>
#include <serq/detail/work.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/trace.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

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
    refuse,   // an untrigger that is not allowed: invalid_argument (posted)
    kind,     // report the entry's kind (returned), do nothing
  };

  entry_base(const entry_base&) = delete;
  entry_base& operator=(const entry_base&) = delete;

  void trigger() { func_(this, action::trigger); }
  void launch() { func_(this, action::launch); }
  void abort() { func_(this, action::abort); }
  void reject() { func_(this, action::reject); }
  void destroy() noexcept { func_(this, action::destroy); }
  void refuse() { func_(this, action::refuse); }
  entry_kind kind() noexcept { return static_cast<entry_kind>(func_(this, action::kind)); }
  std::uint64_t tag() const noexcept { return tag_; }

  // Frees an active entry whose handler was destroyed without being invoked
  // and hands the queue's turn on, so a lost handler cannot wedge the queue.
  void abandon() noexcept;

  queue_core& core() const noexcept { return *core_; }
  canceller* cancel_state() const noexcept { return canceller_; }

 protected:
  // Returns the entry's kind for action::kind, and 0 otherwise.
  using func_type = int (*)(entry_base*, action);

  // No reference count per entry: a waiting entry is owned by its queue's
  // list (the queue aborts or destroys it before the core can go), and the
  // active one by the queue's busy reference, held until finish().
  entry_base(func_type f, queue_core& core) noexcept : func_(f), core_(&core) {}
  ~entry_base() = default;

  // Installs the forwarding cancellation handler into the user's slot. Called
  // from the initiating function, where emplacing into the slot is allowed.
  void attach_canceller(net::cancellation_slot slot, const core_ref& core);
  // Undoes attach_canceller for an entry whose construction failed: slot
  // is the one given to it.
  void detach_canceller(net::cancellation_slot slot) noexcept {
    if (canceller_) {
      slot.clear();
      canceller_ = nullptr;
    }
  }

 private:
  friend class queue_core;
  template <class>
  friend class back_linked_list;
  friend void submit(queue_core&, entry_base*, bool);

  // Six words in all, which keeps an entry whose handler and operation hold
  // a pointer each (plus the handler's work pointer) within the 80-byte
  // block Asio's recycling allocator hands out. The list's back links live
  // in the cancellers: only an entry with one can leave from the middle.
  func_type func_;
  queue_core* core_;
  canceller* canceller_ = nullptr;
  entry_base* next_ = nullptr;
  std::uint64_t tag_ = 0;  // entry_info::tag
  // steady_clock time (in its ticks) at which the entry started to wait;
  // set only for an entry that waits.
  std::chrono::steady_clock::rep attach_ = 0;
};

// The queue's FIFO of waiting entries. Only an entry with a canceller leaves
// from the middle (its back link lives there).
using entry_list = back_linked_list<entry_base>;

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
  explicit canceller(core_ref core) noexcept : core_(std::move(core)) {}
  canceller(const canceller&) = delete;
  canceller& operator=(const canceller&) = delete;

  void operator()(net::cancellation_type_t type);

 private:
  friend class queue_core;
  template <class>
  friend class back_linked_list;
  friend class launch_guard;
  friend void wait_launch_done(entry_base& e) noexcept;

  core_ref core_;
  entry_base* waiting_ = nullptr;  // guarded by core_->mutex_
  entry_base* prev_ = nullptr;     // waiting_'s back link in the queue (core_->mutex_)
  small_mutex mutex_;              // guards everything below
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
  net::cancellation_slot slot() noexcept { return slot_of(entry_); }

  // The slot handed to e's operation: empty when e's handler has none.
  static net::cancellation_slot slot_of(const entry_base& e) noexcept;

  // The guard of e's launch, if the calling thread is inside it.
  static launch_guard* current(const entry_base* e) noexcept;

  // Whether the calling thread is inside the launch of the entry whose
  // canceller is c (that launch's guard then holds c's mutex).
  static bool inside_launch_of(const canceller* c) noexcept;

  // The operation completed inside its own launch: the entry defers its
  // completion until the launch has returned and this guard is gone, since
  // the final handler may destroy the signal that holds the canceller.
  void set_completed_inline() noexcept { completed_inline_ = true; }
  bool completed_inline() const noexcept { return completed_inline_; }

  // The entry's handler was dropped inside its launch (an initiation that
  // threw, or an operation that gave its handler up): the entry is
  // abandoned once the launch is over and this guard's lock released, for
  // the user handler's destructor may destroy the signal that holds the
  // canceller, or emit it.
  void set_abandoned() noexcept { abandoned_ = true; }

 private:
  entry_base& entry_;
  canceller* canceller_;  // entry_'s (null if it has none), taken when the launch begins
  launch_guard* outer_;
  std::unique_lock<small_mutex> lock_;
  bool cancelled_ = false;
  bool completed_inline_ = false;
  bool abandoned_ = false;
};

// Waits until no thread is inside launch_guard for this entry's canceller:
// called before handing the result to the user, whose handler may destroy
// the cancellation signal that holds the canceller.
void wait_launch_done(entry_base& e) noexcept;

// A trace hook shared between its setter and the points that call it: the
// flag lets a queue without hooks skip the lock, one relaxed load per point.
class hook_slot {
 public:
  bool set() const noexcept { return set_.load(std::memory_order_relaxed); }
  void store(trace_hook h);
  std::shared_ptr<const trace_hook> load() const;

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const trace_hook> hook_;
  std::atomic<bool> set_{false};
};

// What a queue needs only once someone observes it or names it: its trace
// hook and the context's, the active entry's trace state, the untriggered
// head's, the wait times of its stats, and a name given by the user. A queue
// that is only used allocates none of it, which keeps an idle queue's core
// within Asio-sized bounds. Allocated once, on first need, and kept until
// the core goes (readers hold no lock).
struct core_extras {
  using clock = std::chrono::steady_clock;

  bool tracing() const noexcept {
    if (has_hook.load(std::memory_order_relaxed))
      return true;
    const hook_slot* d = default_slot.load(std::memory_order_acquire);
    return d && d->set();
  }

  std::atomic<bool> has_hook{false};                    // hook != nullptr, read without the lock
  std::atomic<bool> timing{false};                      // measure waits: stats() was called
  std::atomic<const hook_slot*> default_slot{nullptr};  // default_owner.get()
  std::shared_ptr<const trace_hook> hook;               // guarded by the core's mutex_
  std::shared_ptr<hook_slot> default_owner;             // the context's, once it had one (mutex_)

  // The active entry's trace state: written when it becomes active (under
  // the lock), then used by the thread that runs it (its trigger was posted
  // or launched after the write).
  std::uint64_t active_tag = 0;
  clock::rep active_waited = 0;
  // The head entry put back by untrigger(), and what it had waited before.
  const entry_base* untriggered = nullptr;
  clock::rep untriggered_waited = 0;
  clock::duration total_wait{};
  clock::duration max_wait{};

  std::string name;  // a name given by the user (not serq's own)
};

// What a queue's completion leaves for its handler, while that handler runs
// on this thread (it is invoked inline, or dispatched and run inline):
// - The outstanding work the queue gave up as it went idle
//   (finish_and_take_next's *work_out). A queue of the same executor that
//   gets its first entry from inside the handler takes this unit instead of
//   counting one more on the executor: in the usual pipeline, where every
//   completion submits the next operation, the queue's work count goes on
//   without an atomic update in between. Whatever is not taken is released
//   by *work's owner, as before.
// - When the completion runs on the queue's executor, the queue that went
//   idle itself: the first entry the handler adds to it becomes active at
//   once but is launched only after the handler returns, by the completion
//   (take_deferred, see start_next), as a waiting entry would be, instead of
//   through a posted trigger. Never inside async_enqueue.
// Like Asio's call stack, the thread's chain of these assumes handlers nest:
// a handler must not switch stacks (a fiber) while one of these is current.
class lingering_work {
 public:
  // tag: basic_queue_core<Executor>::tag(); work: a work_counter<Executor>
  // that outlives this object; idle_core: the queue that went idle, when
  // the completion runs on its executor, else null.
  lingering_work(const void* tag, void* work, queue_core* idle_core) noexcept;
  // An entry deferred and not taken (the completion never got so far) is
  // triggered, as it would have been.
  ~lingering_work();
  lingering_work(const lingering_work&) = delete;
  lingering_work& operator=(const lingering_work&) = delete;

  // The entry the handler added to the idle queue, now active, for the
  // caller to launch (or trigger); null if none.
  entry_base* take_deferred() noexcept { return std::exchange(deferred_, nullptr); }

 private:
  friend class queue_core;
  const void* tag_;
  void* work_;
  queue_core* idle_core_;
  entry_base* deferred_ = nullptr;
  lingering_work* outer_;  // the one this one hides, if any
};

class queue_core : public service_member {
 public:
  // deferred: e is active, to be launched by the completion whose handler
  // added it (lingering_work).
  enum class add_result { queued, trigger, launch_inline, deferred, closed };
  enum class untrigger_result { done, refused, closed };
  using clock = std::chrono::steady_clock;

  queue_core(const queue_core&) = delete;
  queue_core& operator=(const queue_core&) = delete;

  // Adds e. When the queue is running and idle e becomes active at once: the
  // caller must then launch it inline (allow_inline) or trigger it.
  add_result add(entry_base* e, bool allow_inline);

  // The active entry (or turn) is done: the next waiting entry, if any,
  // becomes active and is triggered (posted).
  void finish() noexcept;

  // The active entry is done: returns the next waiting entry, now active, for
  // the caller to launch or trigger; null when there is none. When the queue
  // becomes empty, its outstanding work moves into *work_out (a
  // work_counter of the core's executor type), for the caller to release
  // after it has handed its completion on. The caller must not touch the
  // core afterwards when it returns null (it may be gone).
  entry_base* finish_and_take_next(void* work_out) noexcept;

  // The active entry became a held turn, which is not outstanding work (like
  // a strand, a turn only orders work): the queue's work moves into
  // *work_out unless entries wait behind the turn.
  void turn_granted(void* work_out) noexcept;

  // The held turn goes back: e (a fresh acquire entry carrying the turn's
  // tag) takes the head of the queue, to be granted at the next start().
  // Only while the queue is stopped and a turn is held.
  untrigger_result untrigger(entry_base* e) noexcept;

  void start();
  void stop() noexcept;
  bool running() const noexcept;
  // The IO object is gone (or the context shut down): an entry whose turn
  // came is not launched any more, but aborted. Read without the lock by
  // the launch; a close racing it on another thread lands either side.
  bool closed() const noexcept { return closed_.load(std::memory_order_relaxed); }
  std::size_t size() const noexcept;
  std::size_t cancel();
  std::string_view name() const noexcept;
  queue_stats stats() const noexcept;

  // ---- tracing: each point is reported only when a hook is installed ----
  void set_hook(trace_hook h);
  // One load when nothing observes the queue (no extras).
  bool tracing() const noexcept {
    const core_extras* x = extras();
    return x && x->tracing();
  }
  // The context's default hook (once it had one) serves this queue too.
  void use_default_hook(const std::shared_ptr<hook_slot>& slot) override;
  // The point of an entry that is not active: attach, or its detach when it
  // leaves unrun (after left_locked, or refused by a closed queue).
  void trace_entry(trace_point p, entry_base& e, error_code result) noexcept;
  // The active entry (of kind k) is triggered: its before_trigger point.
  void trace_trigger(entry_kind k) noexcept {
    active_triggered_ = true;  // read only when tracing
    if (tracing())
      trace_trigger_slow(k);
  }
  // The active entry is over (result): after_complete if it was triggered,
  // then detach. Before the turn is handed on.
  void trace_done(error_code result) noexcept {
    if (tracing())
      trace_done_slow(result);
  }
  // A turn handed out is released (after_complete, detach), then finish().
  void release_turn() noexcept;
  // A writer's own queue: when the queue is running, idle and unobserved (no
  // extras, so no trace point or wait time is owed), its turn is taken here
  // and now, as an acquire's would be once granted, and held until
  // release_turn(). Returns false, leaving the queue as it was, otherwise.
  // The caller queues an acquire then. Saves the acquire's entry and its
  // trigger's post. A core once observed keeps its extras: so do the cores
  // of a context that had a default hook, even after it was removed.
  bool take_idle_turn() noexcept;

  // The IO object is gone: abort waiting entries; the active one runs on if
  // launched (one not launched yet is aborted at its launch: closed()), and
  // the core keeps a reference to itself until it is done. The caller holds
  // a reference throughout.
  void close();
  // The execution context is shutting down: destroy waiting entries
  // without invoking them; later additions are aborted (posted into the
  // dying context, which destroys them).
  void shutdown() noexcept override;
  void pin() noexcept override { core_add_ref(this); }
  void unpin() noexcept override { core_release(this); }

  // ---- a writer's own queue, kept only while the writer uses it (on a
  // plain io_context executor; see writer_core::queue_quiet) ----
  // Whether nothing waits, nothing is active and no abort is being posted:
  // once its owner (who alone adds entries, under a lock of its own) has
  // seen this, nothing runs in the core any more. A quiet core held by one
  // reference only, which nothing observes (no extras), which was never
  // closed and keeps a plain io_context executor is also readied to serve
  // another owner as new (its counters start again): `recycled` says so.
  bool quiet(bool& recycled) noexcept;
  // Identifies the derived core's executor type (see basic_queue_core).
  virtual const void* executor_tag() const noexcept = 0;
  // Whether the core keeps a plain io_context executor, which a spare core
  // may hold after its context is gone: nothing else is recycled.
  virtual bool plain_io() const noexcept = 0;

 protected:
  explicit queue_core(std::string_view name);
  ~queue_core() override;

  // Set by the derived core's constructor: which executor it keeps.
  unsigned char target_kind_ = 0;

  // Whether the queue counts outstanding work now (between work_started()
  // and the matching work_finished() or move_work_to()).
  bool work_held() const noexcept { return work_held_; }

  // The queue's executor counts one unit of outstanding work while the queue
  // holds entries (waiting or active), however many: called under the lock
  // when it gets its first entry and when it loses its last one.
  virtual void work_started() = 0;
  virtual void work_finished() noexcept = 0;
  virtual void move_work_to(void* out) noexcept = 0;
  // One more unit of work, into out (as move_work_to), the queue keeping
  // its own; nothing if it cannot be had (an executor that allocates for it).
  virtual void add_work_to(void* out) noexcept = 0;
  // Takes the unit of work *in (a work_counter of the core's executor type)
  // holds, if it is work on this queue's executor (on the same io_context,
  // for an io_context target): false, and nothing taken, otherwise.
  virtual bool take_work_from(void* in) noexcept = 0;
  // Whether the calling thread runs the queue's executor (running_here()).
  virtual bool runs_on_this_thread() const noexcept = 0;

 private:
  friend class canceller;
  friend class ::serq::serialized_queue_service;
  friend void core_add_ref(queue_core* c) noexcept;
  friend void core_release(queue_core* c) noexcept;

  const core_extras* extras() const noexcept { return extras_.load(std::memory_order_acquire); }
  core_extras* extras() noexcept { return extras_.load(std::memory_order_acquire); }
  // The extras, allocated if there are none yet (null if that fails with
  // nothrow).
  core_extras* make_extras(bool nothrow) const;

  entry_base* take_next_locked() noexcept;
  void unlink_locked(entry_base* e) noexcept;
  // Takes every waiting entry out, counted as left unrun.
  entry_list take_all_locked() noexcept;
  // e becomes the active entry: its trace state moves into the core.
  void activate_locked(entry_base* e, clock::rep now) noexcept;
  // How long e has waited by `now` (in clock ticks).
  static clock::rep waited(const core_extras& x, const entry_base& e, clock::rep now) noexcept;
  static void count_wait(core_extras& x, clock::rep waited) noexcept;
  // e leaves unrun: counted, and its attach_ becomes its final wait.
  void left_locked(entry_base& e, clock::rep now) noexcept;
  // Reports the detach of entries that left unrun (counted by take_all_locked).
  void trace_left(const entry_list& list, error_code result) noexcept;
  // Releases the outstanding work if the queue has no entry left. Called
  // after the completions of removed entries were posted, so that the
  // executor never sees its work run out before they are.
  void release_work_if_idle() noexcept;
  // Entries taken out of waiting_ under the lock have their aborts posted
  // after it: begin_aborts_locked() (with the removal) keeps the work held
  // meanwhile, even if another thread finishes the active entry and finds
  // the queue idle; end_aborts() (after the posts) lets it go.
  void begin_aborts_locked() noexcept { ++aborts_posting_; }
  void end_aborts() noexcept;
  bool needs_work_locked() const noexcept {
    return !waiting_.empty() || (busy_ && !turn_held_) || aborts_posting_ != 0;
  }
  // Stops counting work when nothing needs it: into *work_out when given.
  void drop_work_locked(void* work_out) noexcept;
  // Whether the queue took the unit a lingering_work of this thread offers.
  bool take_lingering_work() noexcept;
  void call_hook(trace_point p, entry_info& info) noexcept;
  void trace_trigger_slow(entry_kind k) noexcept;
  void trace_done_slow(error_code result) noexcept;

  // The small fields first, packed beside the four-byte lock and the
  // service links' flag. Guarded by mutex_, but active_triggered_ and
  // active_kind_ (written by the thread that runs the active entry) and
  // name_kind_ and target_kind_ (set by the constructors).
  bool busy_ = false;
  bool turn_held_ = false;  // the active entry is a turn handed out
  bool work_held_ = false;  // == needs_work_locked(), updated lazily
  mutable small_mutex mutex_;
  std::atomic<std::uint32_t> refs_{0};  // core_ref's count
  bool running_ = true;
  std::atomic<bool> closed_{false};  // written under mutex_; closed() reads it without
  // The IO object went while an entry was active: the core holds one
  // reference to itself, released when the queue goes idle.
  bool orphan_held_ = false;
  bool active_triggered_ = false;
  // The active entry's kind (an entry_kind in one byte), for its trace
  // points; unknown_kind if it was not traced when it became active.
  static constexpr unsigned char unknown_kind = 0xff;
  unsigned char active_kind_ = unknown_kind;
  // The name: none, one of serq's own (a literal, nothing stored), or the
  // extras' copy of the user's.
  unsigned char name_kind_ = 0;
  // Threads posting the aborts of entries they removed (see
  // begin_aborts_locked): one count per removing call, not per entry.
  std::uint16_t aborts_posting_ = 0;

  entry_list waiting_;
  std::size_t waiting_count_ = 0;
  // What stats() reports but `added` (completed + aborted + depth: every
  // entry added leaves one way or the other) and depth, which it computes.
  std::uint64_t completed_ = 0;
  std::uint64_t aborted_ = 0;
  std::size_t peak_depth_ = 0;
  mutable std::atomic<core_extras*> extras_{nullptr};
};

// A queue's core with its executor: what entries post their triggers to,
// the default executor of their handlers, and where the queue counts its
// outstanding work.
template <class Executor>
class basic_queue_core final : public queue_core {
 public:
  basic_queue_core(const Executor& ex, std::string_view name) : queue_core(name), executor_(ex) {}

  static const void* tag() noexcept { return &tag_; }
  const void* executor_tag() const noexcept override { return tag(); }
  bool plain_io() const noexcept override {
    return std::is_same_v<Executor, net::io_context::executor_type>;
  }
  // Whether a recycled core can serve a queue on ex.
  bool serves(const stored_executor<Executor>& ex) const noexcept { return executor_ == ex.get(); }

  const Executor& executor() const noexcept { return executor_; }
  // Only the any_io_executor core has one (see below).
  const net::io_context::executor_type* io_target() const noexcept { return nullptr; }

  // Whether the calling thread runs the queue's executor (false when it
  // cannot tell).
  bool running_here() const noexcept { return running_in(executor_); }
  bool runs_on_this_thread() const noexcept override { return running_here(); }

  // Posts f to the queue's executor.
  template <class Function>
  void post(Function&& f) const {
    net::post(executor_, std::forward<Function>(f));
  }

 private:
  void work_started() override { work_.start(executor_); }
  void work_finished() noexcept override { work_.finish(); }
  void move_work_to(void* out) noexcept override {
    work_.move_to(*static_cast<work_counter<Executor>*>(out));
  }
  void add_work_to(void* out) noexcept override {
    try {
      static_cast<work_counter<Executor>*>(out)->start(executor_);
    } catch (...) {
    }
  }
  // The comparison copies the counted executor (a strand's: a reference
  // count up and down), still less than counting work afresh on it.
  bool take_work_from(void* in) noexcept override {
    auto& from = *static_cast<work_counter<Executor>*>(in);
    if (!from.holds(executor_))
      return false;
    from.move_to(work_);
    return true;
  }

  // Writable, so that no linker folds the tags of two specializations
  // (identical read-only constants may be merged): a tag names a type.
  static inline char tag_ = 0;
  const Executor executor_;
  work_counter<Executor> work_;
};

// The core of a queue on an any_io_executor. One that wraps a plain
// io_context executor (the usual case) is kept as that executor, eight
// bytes, and used directly on every operation's path; any other target is
// kept with its work in a second heap block, allocated with the core.
template <>
class basic_queue_core<net::any_io_executor> final : public queue_core {
  using io_executor = net::io_context::executor_type;
  using tracked_io_executor = work_counter<net::any_io_executor>::tracked_io_executor;
  enum : unsigned char { io_target_kind = 0, other_target_kind = 1 };

 public:
  basic_queue_core(const net::any_io_executor& ex, std::string_view name) : queue_core(name) {
    if (const io_executor* target = ex.target<io_executor>()) {
      new (&io_) io_executor(*target);
    } else {
      other_ = new other_target(ex);
      target_kind_ = other_target_kind;
    }
  }
  ~basic_queue_core() override {
    if (other()) {
      delete other_;
      return;
    }
    if (work_held())
      io_work_.~tracked_io_executor();
    io_.~io_executor();
  }

  static const void* tag() noexcept { return &tag_; }
  const void* executor_tag() const noexcept override { return tag(); }
  bool plain_io() const noexcept override { return !other(); }
  // Whether a recycled core can serve a queue on ex: only one that keeps
  // the same io_context executor.
  bool serves(const stored_executor<net::any_io_executor>& ex) const noexcept {
    const io_executor* target = ex.io_target();
    return !other() && target && *target == io_;
  }

  // The queue's executor: a copy, made from the io_context executor kept.
  net::any_io_executor executor() const noexcept {
    if (!other())
      return net::any_io_executor(io_);
    return other_->executor;
  }
  // The io_context executor the queue's executor wraps; null for any other.
  const io_executor* io_target() const noexcept { return other() ? nullptr : &io_; }

  bool running_here() const noexcept {
    return !other() ? io_.running_in_this_thread() : running_in(other_->executor);
  }
  bool runs_on_this_thread() const noexcept override { return running_here(); }

  template <class Function>
  void post(Function&& f) const {
    if (!other())
      net::post(io_, std::forward<Function>(f));
    else
      net::post(other_->executor, std::forward<Function>(f));
  }

 private:
  static inline char tag_ = 0;  // writable: see basic_queue_core<Executor>::tag_

  struct other_target {
    explicit other_target(const net::any_io_executor& ex) : executor(ex) {}
    const net::any_io_executor executor;
    std::optional<net::any_io_executor> work;  // tracked, while the queue counts work
  };

  bool other() const noexcept { return target_kind_ == other_target_kind; }

  // Called under the core's lock as work_held() changes: io_work_ exists
  // exactly while work_held() on an io_context target.
  void work_started() override {
    if (!other())
      new (&io_work_)
          tracked_io_executor(net::prefer(io_, net::execution::outstanding_work.tracked));
    else
      other_->work.emplace(net::prefer(other_->executor, net::execution::outstanding_work.tracked));
  }
  void work_finished() noexcept override {
    if (!other())
      io_work_.~tracked_io_executor();
    else
      other_->work.reset();
  }
  void add_work_to(void* out) noexcept override {
    auto& to = *static_cast<work_counter<net::any_io_executor>*>(out);
    try {
      if (!other())
        to.adopt(net::prefer(io_, net::execution::outstanding_work.tracked));
      else
        to.adopt(net::prefer(other_->executor, net::execution::outstanding_work.tracked));
    } catch (...) {
    }
  }
  // Only an io_context target's work is taken: work on any other target
  // (a strand, a user's executor) is counted afresh.
  bool take_work_from(void* in) noexcept override {
    return !other() &&
           static_cast<work_counter<net::any_io_executor>*>(in)->take_io(io_, &io_work_);
  }
  void move_work_to(void* out) noexcept override {
    auto& to = *static_cast<work_counter<net::any_io_executor>*>(out);
    if (!other()) {
      to.adopt(std::move(io_work_));
      io_work_.~tracked_io_executor();
    } else if (other_->work) {
      to.adopt(std::move(*other_->work));
      other_->work.reset();
    }
  }

  // An io_context target is kept as itself (eight bytes), any other in a
  // block of its own; target_kind_ says which. Neither changes after
  // construction, so both are read without the lock.
  union {
    io_executor io_;
    other_target* other_;
  };
  union {
    tracked_io_executor io_work_;  // on io_, while work_held()
  };
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_QUEUE_CORE_HPP
