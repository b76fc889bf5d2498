//
// src/serialized_queue.cpp: the non-template core of serialized_queue.
//

#include <serq/detail/entries.hpp>
#include <serq/detail/queue_core.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/turn.hpp>

#include <exception>
#include <iterator>
#include <memory>
#include <new>
#include <utility>
#include <vector>

SERQ_NAMESPACE_BEGIN
namespace detail {

// ---- entry_base ------------------------------------------------------------

namespace {
// The abandon running on this thread, if any, and the queues whose finish()
// the abandons nested in it left for it to run.
struct abandon_stack {
  bool running = false;
  std::size_t pending = 0;
  queue_core* cores[16];
};
thread_local abandon_stack abandoning;
}  // namespace

void entry_base::abandon() noexcept {
  if (launch_guard* guard = launch_guard::current(this)) {
    guard->set_abandoned();  // the guard abandons the entry once its lock is released
    return;
  }
  // A launch of this entry may still run on another thread (its operation
  // handed the handler to this thread, which dropped it): destroying the
  // user's handler may destroy the signal whose canceller that launch holds
  // locked, so wait for it to end, as a completion does.
  wait_launch_done(*this);
  queue_core* core = core_;
  destroy();
  core->trace_done(net::error::shut_down);
  // finish() triggers the next entry; an executor that is shut down (a
  // strand whose service went first) destroys that trigger inside the post,
  // which abandons the next entry here again, and so on for the whole queue.
  // A nested abandon leaves its finish() to the outermost one, which loops:
  // the stack does not grow with the queue. (The core stays alive until its
  // finish(): the active entry's reference is released there.)
  abandon_stack& a = abandoning;
  if (a.running) {
    if (a.pending < std::size(a.cores)) {
      a.cores[a.pending++] = core;
      return;
    }
    core->finish();  // sixteen queues pending at once (not seen): recurse
    return;
  }
  a.running = true;
  core->finish();
  while (a.pending != 0)
    a.cores[--a.pending]->finish();
  a.running = false;
}

void entry_base::attach_canceller(net::cancellation_slot slot, const core_ref& core) {
  if (slot.is_connected())
    canceller_ = &slot.template emplace<canceller>(core);
}

namespace {
std::chrono::steady_clock::rep now_ticks() noexcept {
  return std::chrono::steady_clock::now().time_since_epoch().count();
}
}  // namespace

// ---- hook_slot ----------------------------------------------------------------

void hook_slot::store(trace_hook h) {
  std::shared_ptr<const trace_hook> p;
  if (h)
    p = std::make_shared<const trace_hook>(std::move(h));
  std::shared_ptr<const trace_hook> old;
  {
    std::lock_guard lock(mutex_);
    old = std::exchange(hook_, std::move(p));
    set_.store(hook_ != nullptr, std::memory_order_relaxed);
  }
}

std::shared_ptr<const trace_hook> hook_slot::load() const {
  std::lock_guard lock(mutex_);
  return hook_;
}

// ---- canceller / launch_guard ----------------------------------------------

namespace {
thread_local launch_guard* launching = nullptr;
}

void canceller::operator()(net::cancellation_type_t type) {
  entry_base* e = nullptr;
  {
    std::lock_guard lock(core_->mutex_);
    e = waiting_;
    if (e) {
      core_->unlink_locked(e);
      core_->left_locked(*e, now_ticks());
      core_->begin_aborts_locked();
    }
  }
  if (e) {
    // Still waiting: it leaves the queue and its operation never starts.
    // Once its completion is posted, the handler may run on another thread
    // and destroy the signal that holds this canceller: nothing of this may
    // be used after the post, so the core is held here.
    const core_ref core = core_;
    if (core->tracing())
      core->trace_entry(trace_point::detach, *e, net::error::operation_aborted);
    try {
      e->abort();
    } catch (...) {
      // Its completion could not be posted: the entry is gone, its handler
      // destroyed unrun; the queue's work must not outlive it.
      core->end_aborts();
      throw;
    }
    core->end_aborts();
    return;
  }
  if (launch_guard::inside_launch_of(this)) {
    // Emitted on the thread that runs this entry's launch, from inside it
    // (the operation's initiation emits the signal bound to its own
    // handler, or calls code that does). That launch's guard holds mutex_,
    // and until it returns only this thread touches what mutex_ guards:
    // taking it here would deadlock. The operation installs its handler on
    // this thread too, so the signal reaches it if it already has. (A launch
    // whose guard found the entry cancelled runs no user code: launched_ is
    // true here.)
    inner_.emit(type);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    if (!launched_) {
      pending_ = pending_ | type;  // triggered, not yet launched: the launch aborts instead
      return;
    }
  }
  // Launched: holding the lock proved the launch (and the operation's
  // emplace into inner_) is over. Emit without it: an operation may complete
  // inside its cancellation handler, and finish_op then takes this mutex.
  inner_.emit(type);
}

launch_guard::launch_guard(entry_base& e)
    : entry_(e), canceller_(e.cancel_state()), outer_(launching) {
  // An entry whose turn came after its queue object was destroyed (its
  // trigger posted, or the handler of the operation before it destroyed
  // the queue) never started: it is aborted, as a waiting one was.
  cancelled_ = e.core().closed();
  if (canceller* c = canceller_) {
    lock_ = std::unique_lock<small_mutex>(c->mutex_);
    cancelled_ = cancelled_ || c->pending_ != net::cancellation_type::none;
    c->launched_ = !cancelled_;
  }
  launching = this;
}

launch_guard::~launch_guard() {
  launching = outer_;
  if (abandoned_) {
    if (lock_.owns_lock())
      lock_.unlock();
    entry_.abandon();
  }
}

net::cancellation_slot launch_guard::slot_of(const entry_base& e) noexcept {
  canceller* c = e.cancel_state();
  return c ? c->inner_.slot() : net::cancellation_slot();
}

bool launch_guard::inside_launch_of(const canceller* c) noexcept {
  for (launch_guard* g = launching; g; g = g->outer_)
    if (g->canceller_ == c)
      return true;
  return false;
}

launch_guard* launch_guard::current(const entry_base* e) noexcept {
  // Launches nest (an operation's initiation may launch another queue's
  // entry inline), and what happens inside the inner one may concern an
  // outer entry: its handler dropped, or its operation completed.
  for (launch_guard* g = launching; g; g = g->outer_)
    if (&g->entry_ == e)
      return g;
  return nullptr;
}

void wait_launch_done(entry_base& e) noexcept {
  if (canceller* c = e.cancel_state())
    std::lock_guard lock(c->mutex_);
}

// ---- queue_core ------------------------------------------------------------

void core_add_ref(queue_core* c) noexcept {
  c->refs_.fetch_add(1, std::memory_order_relaxed);
}

void core_release(queue_core* c) noexcept {
  if (c->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1)
    delete c;
}

namespace {
// The names serq gives the queues of its writers: shared, never copied.
constexpr std::string_view builtin_names[] = {"serq.queued_writer", "serq.queued_writer.urgent"};

constexpr unsigned char name_in_extras = std::size(builtin_names) + 1;
}  // namespace

queue_core::queue_core(std::string_view name) {
  if (name.empty())
    return;
  for (unsigned char i = 0; i < std::size(builtin_names); ++i) {
    if (name == builtin_names[i]) {
      name_kind_ = i + 1;
      return;
    }
  }
  auto x = std::make_unique<core_extras>();
  x->name = name;
  extras_.store(x.release(), std::memory_order_relaxed);
  name_kind_ = name_in_extras;
}

namespace {
thread_local lingering_work* lingering_top = nullptr;
}  // namespace

queue_core::~queue_core() {
  // A handler that destroyed its idle queue: no later queue at this address
  // is taken for it.
  for (lingering_work* l = lingering_top; l; l = l->outer_)
    if (l->idle_core_ == this)
      l->idle_core_ = nullptr;
  delete extras_.load(std::memory_order_acquire);
}

std::string_view queue_core::name() const noexcept {
  if (name_kind_ == 0)
    return {};
  if (name_kind_ == name_in_extras)
    return extras()->name;
  return builtin_names[name_kind_ - 1];
}

core_extras* queue_core::make_extras(bool nothrow) const {
  if (core_extras* x = extras_.load(std::memory_order_acquire))
    return x;
  std::unique_ptr<core_extras> fresh(nothrow ? new (std::nothrow) core_extras : new core_extras);
  if (!fresh)
    return nullptr;
  core_extras* seen = nullptr;
  if (extras_.compare_exchange_strong(seen, fresh.get(), std::memory_order_acq_rel))
    return fresh.release();
  return seen;  // another thread's came first
}

void queue_core::drop_work_locked(void* work_out) noexcept {
  if (!work_held_)
    return;
  if (needs_work_locked()) {
    // Idle but for aborts another thread is about to post (see
    // begin_aborts_locked): the queue keeps its work for them, and the
    // finishing thread gets a unit of its own for its completion, as it
    // would have got the queue's.
    if (work_out && aborts_posting_ != 0 && waiting_.empty() && !(busy_ && !turn_held_))
      add_work_to(work_out);
    return;
  }
  work_held_ = false;
  if (work_out)
    move_work_to(work_out);
  else
    work_finished();
}

lingering_work::lingering_work(const void* tag, void* work, queue_core* idle_core) noexcept
    : tag_(tag), work_(work), idle_core_(idle_core), outer_(lingering_top) {
  lingering_top = this;
}

lingering_work::~lingering_work() {
  lingering_top = outer_;
  if (entry_base* e = take_deferred()) {
    try {
      e->trigger();
    } catch (...) {
      // As in queue_core::finish: the entry was abandoned, the queue handed on.
    }
  }
}

bool queue_core::take_lingering_work() noexcept {
  const lingering_work* l = lingering_top;
  return l && l->tag_ == executor_tag() && take_work_from(l->work_);
}

void queue_core::release_work_if_idle() noexcept {
  std::lock_guard lock(mutex_);
  drop_work_locked(nullptr);
}

void queue_core::end_aborts() noexcept {
  std::lock_guard lock(mutex_);
  --aborts_posting_;
  drop_work_locked(nullptr);
}

void queue_core::turn_granted(void* work_out) noexcept {
  std::lock_guard lock(mutex_);
  turn_held_ = true;
  drop_work_locked(work_out);
}

// Only a queue with extras times waits, tags entries or untriggers, so
// without them every entry's attach_ and tag_ are zero.
queue_core::clock::rep queue_core::waited(const core_extras& x, const entry_base& e,
                                          clock::rep now) noexcept {
  const clock::rep before = &e == x.untriggered ? x.untriggered_waited : 0;
  return e.attach_ ? before + (now - e.attach_) : before;
}

void queue_core::count_wait(core_extras& x, clock::rep waited) noexcept {
  const clock::duration d(waited);
  x.total_wait += d;
  if (d > x.max_wait)
    x.max_wait = d;
}

void queue_core::activate_locked(entry_base* e, clock::rep now) noexcept {
  busy_ = true;
  active_triggered_ = false;
  core_extras* x = extras();
  // The kind, for the entry's later trace points: known only if it is traced
  // now (a hook installed before its trigger learns it there; one installed
  // later gets none of this entry's points rather than another entry's kind).
  if (!x || !x->tracing()) {
    active_kind_ = unknown_kind;
    if (!x)
      return;  // no one observes the queue: nothing to record
  } else {
    active_kind_ = static_cast<unsigned char>(e->kind());  // for one that goes before its trigger
  }
  const bool untriggered = e == x->untriggered;
  x->active_tag = e->tag_;
  x->active_waited = waited(*x, *e, now);
  if (e->attach_)  // an untriggered turn's first wait was counted at its first trigger
    count_wait(*x, x->active_waited - (untriggered ? x->untriggered_waited : 0));
  if (untriggered)
    x->untriggered = nullptr;
}

queue_core::add_result queue_core::add(entry_base* e, bool allow_inline) {
  std::lock_guard lock(mutex_);
  if (closed_.load(std::memory_order_relaxed)) {
    ++aborted_;
    return add_result::closed;
  }
  if (!work_held_) {
    if (!take_lingering_work())
      work_started();
    work_held_ = true;
  }
  std::size_t depth = waiting_count_ + 1;
  if (running_ && !busy_ && waiting_.empty()) {
    activate_locked(e, 0);
    if (depth > peak_depth_)
      peak_depth_ = depth;
    if (allow_inline)
      return add_result::launch_inline;
    // The completion launches the entry where it runs: only if that is this
    // queue's executor (idle_core_ may name a core gone since, whose address
    // a new queue took).
    if (lingering_work* l = lingering_top;
        l && l->idle_core_ == this && !l->deferred_ && runs_on_this_thread()) {
      l->deferred_ = e;
      return add_result::deferred;
    }
    return add_result::trigger;
  }
  // Wait times cost two clock reads per waiting entry: measured only once
  // someone looks (stats() called, or a hook installed).
  if (const core_extras* x = extras();
      x && (x->timing.load(std::memory_order_relaxed) || x->tracing()))
    e->attach_ = now_ticks();
  waiting_.push_back(e);
  ++waiting_count_;
  if (busy_)
    ++depth;
  if (depth > peak_depth_)
    peak_depth_ = depth;
  if (e->canceller_)
    e->canceller_->waiting_ = e;
  return add_result::queued;
}

entry_base* queue_core::take_next_locked() noexcept {
  if (!running_ || closed_.load(std::memory_order_relaxed) || waiting_.empty())
    return nullptr;
  entry_base* e = waiting_.pop_front();
  --waiting_count_;
  if (e->canceller_)
    e->canceller_->waiting_ = nullptr;
  activate_locked(e, e->attach_ ? now_ticks() : 0);
  return e;
}

void queue_core::unlink_locked(entry_base* e) noexcept {
  waiting_.unlink(e);
  --waiting_count_;
  if (e->canceller_)
    e->canceller_->waiting_ = nullptr;
}

entry_list queue_core::take_all_locked() noexcept {
  const clock::rep now = waiting_.empty() ? 0 : now_ticks();
  for (entry_base* e = waiting_.front(); e; e = e->next_) {
    if (e->canceller_)
      e->canceller_->waiting_ = nullptr;
    left_locked(*e, now);
  }
  waiting_count_ = 0;
  return waiting_.take();
}

void queue_core::left_locked(entry_base& e, clock::rep now) noexcept {
  ++aborted_;
  core_extras* x = extras();
  if (!x)
    return;                        // e.attach_ is zero: its wait was never measured
  e.attach_ = waited(*x, e, now);  // from here on, its final wait
  count_wait(*x, e.attach_);
  if (&e == x->untriggered)
    x->untriggered = nullptr;
}

void queue_core::trace_left(const entry_list& list, error_code result) noexcept {
  if (tracing())
    for (entry_base* e = list.front(); e; e = e->next_)
      trace_entry(trace_point::detach, *e, result);
}

entry_base* queue_core::finish_and_take_next(void* work_out) noexcept {
  entry_base* next = nullptr;
  bool orphan = false;
  {
    std::lock_guard lock(mutex_);
    ++completed_;
    turn_held_ = false;
    next = take_next_locked();
    if (!next) {
      busy_ = false;
      orphan = std::exchange(orphan_held_, false);
      drop_work_locked(work_out);
    }
  }
  if (orphan)
    core_release(this);  // after the lock: this may destroy the core
  return next;
}

void queue_core::finish() noexcept {
  if (entry_base* next = finish_and_take_next(nullptr)) {
    try {
      next->trigger();
    } catch (...) {
      // The executor could not take the trigger (std::bad_alloc): the
      // posted function that owned next was destroyed unrun, which
      // abandoned next (its handler destroyed, as at shutdown) and handed
      // the queue on. Nothing is lost; there is no caller to tell.
    }
  }
}

queue_core::untrigger_result queue_core::untrigger(entry_base* e) noexcept {
  std::lock_guard lock(mutex_);
  if (closed_.load(std::memory_order_relaxed))
    return untrigger_result::closed;
  if (running_ || !busy_ || !turn_held_)
    return untrigger_result::refused;
  busy_ = false;
  turn_held_ = false;
  if (core_extras* x = extras()) {  // without, the turn had no tag and no wait measured
    e->tag_ = x->active_tag;
    e->attach_ = now_ticks();
    x->untriggered = e;
    x->untriggered_waited = x->active_waited;
  }
  waiting_.push_front(e);
  ++waiting_count_;
  if (e->canceller_)
    e->canceller_->waiting_ = e;
  if (!work_held_) {
    work_started();  // noexcept in practice: a work count on an executor
    work_held_ = true;
  }
  return untrigger_result::done;
}

void queue_core::start() {
  entry_base* next = nullptr;
  {
    std::lock_guard lock(mutex_);
    running_ = true;
    if (!busy_)
      next = take_next_locked();
  }
  if (next)
    next->trigger();
}

void queue_core::stop() noexcept {
  std::lock_guard lock(mutex_);
  running_ = false;
}

bool queue_core::running() const noexcept {
  std::lock_guard lock(mutex_);
  return running_;
}

std::size_t queue_core::size() const noexcept {
  std::lock_guard lock(mutex_);
  return waiting_count_ + (busy_ ? 1 : 0);
}

queue_stats queue_core::stats() const noexcept {
  // Waits are measured from now on; if the extras cannot be had, they stay
  // unmeasured (zero) and the counts are still right.
  core_extras* x = make_extras(true);
  if (x)
    x->timing.store(true, std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  queue_stats s;
  s.completed = completed_;
  s.aborted = aborted_;
  s.depth = waiting_count_ + (busy_ ? 1 : 0);
  s.added = s.completed + s.aborted + s.depth;
  s.peak_depth = peak_depth_;
  if (x) {
    s.total_wait = x->total_wait;
    s.max_wait = x->max_wait;
  }
  return s;
}

// ---- tracing -----------------------------------------------------------------

void queue_core::set_hook(trace_hook h) {
  if (!h && !extras())
    return;  // no hook to remove, and nothing to allocate for that
  std::shared_ptr<const trace_hook> p;
  if (h)
    p = std::make_shared<const trace_hook>(std::move(h));
  core_extras* x = make_extras(false);
  std::lock_guard lock(mutex_);
  std::swap(x->hook, p);
  x->has_hook.store(x->hook != nullptr, std::memory_order_relaxed);
}

void queue_core::use_default_hook(const std::shared_ptr<hook_slot>& slot) {
  core_extras* x = make_extras(false);
  std::lock_guard lock(mutex_);
  if (x->default_owner)
    return;
  x->default_owner = slot;
  x->default_slot.store(slot.get(), std::memory_order_release);
}

void queue_core::call_hook(trace_point p, entry_info& info) noexcept {
  core_extras& x = *extras();  // tracing: there are extras
  std::shared_ptr<const trace_hook> hook;
  {
    std::lock_guard lock(mutex_);
    hook = x.hook;
  }
  if (const hook_slot* d = x.default_slot.load(std::memory_order_acquire); !hook && d)
    hook = d->load();
  if (hook)
    (*hook)(p, info);  // noexcept: a hook that throws terminates
}

void queue_core::trace_entry(trace_point p, entry_base& e, error_code result) noexcept {
  const clock::rep waited = p == trace_point::attach ? 0 : e.attach_;
  entry_info info{e.tag_, e.kind(), name(), clock::duration(waited), result};
  call_hook(p, info);
  e.tag_ = info.tag;
}

void queue_core::trace_trigger_slow(entry_kind k) noexcept {
  core_extras& x = *extras();  // tracing: there are extras
  active_kind_ = static_cast<unsigned char>(k);
  entry_info info{x.active_tag,
                  static_cast<entry_kind>(active_kind_),
                  name(),
                  clock::duration(x.active_waited),
                  {}};
  call_hook(trace_point::before_trigger, info);
  x.active_tag = info.tag;
}

void queue_core::trace_done_slow(error_code result) noexcept {
  const core_extras& x = *extras();  // tracing: there are extras
  if (active_kind_ == unknown_kind)
    return;  // the hook came after this entry's trigger
  entry_info info{x.active_tag, static_cast<entry_kind>(active_kind_), name(),
                  clock::duration(x.active_waited), result};
  if (active_triggered_)
    call_hook(trace_point::after_complete, info);
  call_hook(trace_point::detach, info);
}

bool queue_core::quiet(bool& recycled) noexcept {
  std::lock_guard lock(mutex_);
  recycled = false;
  if (busy_ || !waiting_.empty() || aborts_posting_ != 0 || work_held_)
    return false;
  if (refs_.load(std::memory_order_acquire) == 1 && !orphan_held_ && running_ &&
      !closed_.load(std::memory_order_relaxed) && !extras() && plain_io()) {
    completed_ = aborted_ = 0;
    peak_depth_ = 0;
    active_triggered_ = false;
    active_kind_ = unknown_kind;
    recycled = true;
  }
  return true;
}

bool queue_core::take_idle_turn() noexcept {
  std::lock_guard lock(mutex_);
  if (!running_ || busy_ || !waiting_.empty() || closed_.load(std::memory_order_relaxed) ||
      extras())
    return false;
  // As add() then turn_granted() leave a turn nothing waits behind: busy,
  // held, no outstanding work (a held turn only orders work), and the
  // active entry's trace state that of an untraced entry already triggered.
  busy_ = true;
  turn_held_ = true;
  active_triggered_ = true;
  active_kind_ = unknown_kind;
  if (peak_depth_ == 0)
    peak_depth_ = 1;
  return true;
}

void queue_core::release_turn() noexcept {
  trace_done(error_code());
  finish();
}

namespace {
// Completes every entry of list with operation_aborted (each posts its
// handler, so this never runs user code inline). An entry whose completion
// cannot be posted (std::bad_alloc from its executor) is freed before the
// exception leaves its abort(), and its handler destroyed unrun, as at the
// context's shutdown: the walk goes on, and the first such exception is
// returned.
std::size_t abort_all(entry_list list, std::exception_ptr& failure) noexcept {
  std::size_t n = 0;
  while (entry_base* e = list.pop_front()) {
    try {
      e->abort();
    } catch (...) {
      if (!failure)
        failure = std::current_exception();
    }
    ++n;
  }
  return n;
}
}  // namespace

std::size_t queue_core::cancel() {
  entry_list list;
  {
    std::lock_guard lock(mutex_);
    list = take_all_locked();
    begin_aborts_locked();
  }
  trace_left(list, net::error::operation_aborted);
  std::exception_ptr failure;
  const std::size_t n = abort_all(std::move(list), failure);
  end_aborts();
  if (failure)
    std::rethrow_exception(failure);
  return n;
}

void queue_core::close() {
  entry_list list;
  {
    std::lock_guard lock(mutex_);
    closed_.store(true, std::memory_order_relaxed);
    list = take_all_locked();
    begin_aborts_locked();
    if (busy_ && !orphan_held_) {
      core_add_ref(this);  // the caller's reference keeps it alive to the end of this call
      orphan_held_ = true;
    }
  }
  trace_left(list, net::error::operation_aborted);
  // The IO object is going away (this runs in its destructor): an entry
  // whose completion could not be posted was destroyed unrun, and nothing
  // is thrown.
  std::exception_ptr failure;
  abort_all(std::move(list), failure);
  end_aborts();
}

void queue_core::shutdown() noexcept {
  entry_list list;
  {
    std::lock_guard lock(mutex_);
    closed_.store(true, std::memory_order_relaxed);
    list = take_all_locked();
  }
  trace_left(list, net::error::shut_down);
  // Outside the lock: destroying a handler runs user destructors, which may
  // release a turn or destroy a queue and so call back in here.
  while (entry_base* e = list.pop_front())
    e->destroy();
  release_work_if_idle();
}

void submit(queue_core& core, entry_base* e, bool allow_inline) {
  if (core.tracing())
    core.trace_entry(trace_point::attach, *e, error_code());
  queue_core::add_result added;
  try {
    added = core.add(e, allow_inline);  // counting the queue's work may allocate
  } catch (...) {
    e->destroy();  // never queued: the exception leaves the initiating function
    throw;
  }
  switch (added) {
    case queue_core::add_result::queued:
      break;
    case queue_core::add_result::trigger:
      e->trigger();
      break;
    case queue_core::add_result::launch_inline:
      e->launch();
      break;
    case queue_core::add_result::deferred:
      break;
    case queue_core::add_result::closed:
      if (core.tracing())
        core.trace_entry(trace_point::detach, *e, net::error::operation_aborted);
      e->reject();
      break;
  }
}

}  // namespace detail

// ---- turn ------------------------------------------------------------------

void turn::release() noexcept {
  if (auto core = std::move(core_))
    core->release_turn();
}

// ---- serialized_queue_service ----------------------------------------------

net::execution_context::id serialized_queue_service::id;

serialized_queue_service::serialized_queue_service(net::execution_context& ctx)
    : net::execution_context::service(ctx), default_hook_(std::make_shared<detail::hook_slot>()) {}

serialized_queue_service::~serialized_queue_service() = default;

void serialized_queue_service::register_core(detail::queue_core& core) {
  std::lock_guard lock(mutex_);
  if (default_hook_used_)
    core.use_default_hook(default_hook_);
  if (shut_down_)
    core.closed_.store(
        true, std::memory_order_relaxed);  // the context has shut down: every entry is refused
  else
    link_locked(core);
}

void serialized_queue_service::hand_out_default_hook() {
  // Queues look at the slot only once it is handed to them: every live one
  // now, and every one created from now on.
  std::lock_guard lock(mutex_);
  if (default_hook_used_)
    return;  // handed out already
  for (detail::service_member* m = first_; m; m = m->svc_next_)
    m->use_default_hook(default_hook_);  // may throw: then the next call tries again
  default_hook_used_ = true;
}

void serialized_queue_service::destroy(detail::core_ref core) {
  remove(*core);
  core->close();
}

bool serialized_queue_service::add(detail::service_member& m) {
  std::lock_guard lock(mutex_);
  if (shut_down_)
    return false;
  if (default_hook_used_)
    m.use_default_hook(default_hook_);  // a writer's queue is traced as every queue is
  link_locked(m);
  return true;
}

void serialized_queue_service::link_locked(detail::service_member& m) noexcept {
  m.svc_next_ = first_;
  m.svc_prev_ = nullptr;
  if (first_)
    first_->svc_prev_ = &m;
  first_ = &m;
  m.registered_ = true;
}

void serialized_queue_service::remove(detail::service_member& m) noexcept {
  std::lock_guard lock(mutex_);
  if (!m.registered_)
    return;
  if (m.svc_prev_)
    m.svc_prev_->svc_next_ = m.svc_next_;
  else
    first_ = m.svc_next_;
  if (m.svc_next_)
    m.svc_next_->svc_prev_ = m.svc_prev_;
  m.svc_next_ = m.svc_prev_ = nullptr;
  m.registered_ = false;
}

void serialized_queue_service::shutdown() {
  // Pin every member (each stays alive while it shuts down, until its
  // unpin()), and call out with no lock held: destroying handlers runs user
  // code, which may destroy queues and writers (unregistering them) or
  // create new ones.
  std::vector<detail::service_member*> members;
  {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (detail::service_member* m = first_; m; m = m->svc_next_)
      ++n;
    members.reserve(n);  // may throw, before anything is pinned or refused
    shut_down_ = true;
    for (detail::service_member* m = first_; m; m = m->svc_next_) {
      m->pin();
      members.push_back(m);
    }
  }
  for (detail::service_member* m : members) {
    m->shutdown();
    m->unpin();  // may destroy it
  }
}

void set_default_trace_hook(net::execution_context& ctx, trace_hook hook) {
  auto& svc = net::use_service<serialized_queue_service>(ctx);
  if (hook)
    svc.hand_out_default_hook();
  svc.default_hook_->store(std::move(hook));
}

SERQ_NAMESPACE_END
