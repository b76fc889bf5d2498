//
// src/serialized_queue.cpp: the non-template core of serialized_queue.
//

#include <serq/detail/entries.hpp>
#include <serq/detail/queue_core.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/turn.hpp>

#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

SERQ_NAMESPACE_BEGIN
namespace detail {

// ---- entry_base ------------------------------------------------------------

void entry_base::abandon() noexcept {
  queue_core* core = core_;
  destroy();
  core->trace_done(net::error::shut_down);
  core->finish();
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
    }
  }
  if (e) {
    // Still waiting: it leaves the queue and its operation never starts.
    if (core_->tracing())
      core_->trace_entry(trace_point::detach, *e, net::error::operation_aborted);
    e->abort();
    core_->release_work_if_idle();
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

launch_guard::launch_guard(entry_base& e) : entry_(e), outer_(launching) {
  if (canceller* c = e.cancel_state()) {
    lock_ = std::unique_lock<small_mutex>(c->mutex_);
    cancelled_ = c->pending_ != net::cancellation_type::none;
    c->launched_ = !cancelled_;
  }
  launching = this;
}

launch_guard::~launch_guard() {
  launching = outer_;
}

net::cancellation_slot launch_guard::slot_of(const entry_base& e) noexcept {
  canceller* c = e.cancel_state();
  return c ? c->inner_.slot() : net::cancellation_slot();
}

launch_guard* launch_guard::current(const entry_base* e) noexcept {
  return launching && &launching->entry_ == e ? launching : nullptr;
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
}  // namespace

queue_core::queue_core(std::string_view name) {
  if (name.size() > std::numeric_limits<std::uint32_t>::max())
    throw std::length_error("serq::serialized_queue: name too long");
  name_size_ = static_cast<std::uint32_t>(name.size());
  if (name.empty())
    return;
  for (std::string_view builtin : builtin_names) {
    if (name == builtin) {
      name_ = builtin.data();
      return;
    }
  }
  char* copy = new char[name.size()];
  name.copy(copy, name.size());
  name_ = copy;
  name_owned_ = true;
}

queue_core::~queue_core() {
  if (name_owned_)
    delete[] name_;
}

void queue_core::drop_work_locked(void* work_out) noexcept {
  if (!work_held_ || needs_work_locked())
    return;
  work_held_ = false;
  if (work_out)
    move_work_to(work_out);
  else
    work_finished();
}

void queue_core::release_work_if_idle() noexcept {
  std::lock_guard lock(mutex_);
  drop_work_locked(nullptr);
}

void queue_core::turn_granted(void* work_out) noexcept {
  std::lock_guard lock(mutex_);
  turn_held_ = true;
  drop_work_locked(work_out);
}

queue_core::clock::rep queue_core::waited_locked(const entry_base& e,
                                                 clock::rep now) const noexcept {
  const clock::rep before = &e == untriggered_ ? untriggered_waited_ : 0;
  return e.attach_ ? before + (now - e.attach_) : before;
}

void queue_core::count_wait_locked(clock::rep waited) noexcept {
  const clock::duration d(waited);
  stats_.total_wait += d;
  if (d > stats_.max_wait)
    stats_.max_wait = d;
}

void queue_core::activate_locked(entry_base* e, clock::rep now) noexcept {
  busy_ = true;
  active_triggered_ = false;
  if (tracing())
    active_kind_ = static_cast<unsigned char>(e->kind());  // for one that goes before its trigger
  active_tag_ = e->tag_;
  active_waited_ = waited_locked(*e, now);
  if (e->attach_)  // an untriggered turn's first wait was counted at its first trigger
    count_wait_locked(active_waited_ - (e == untriggered_ ? untriggered_waited_ : 0));
  if (e == untriggered_)
    untriggered_ = nullptr;
}

queue_core::add_result queue_core::add(entry_base* e, bool allow_inline) {
  std::lock_guard lock(mutex_);
  ++stats_.added;
  if (closed_) {
    ++stats_.aborted;
    return add_result::closed;
  }
  if (!work_held_) {
    work_started();
    work_held_ = true;
  }
  std::size_t depth = waiting_count_ + 1;
  if (running_ && !busy_ && waiting_.empty()) {
    activate_locked(e, 0);
    if (depth > stats_.peak_depth)
      stats_.peak_depth = depth;
    return allow_inline ? add_result::launch_inline : add_result::trigger;
  }
  // Wait times cost two clock reads per waiting entry: measured only once
  // someone looks (stats() called, or a hook installed).
  if (timing_.load(std::memory_order_relaxed) || tracing())
    e->attach_ = now_ticks();
  waiting_.push_back(e);
  ++waiting_count_;
  if (busy_)
    ++depth;
  if (depth > stats_.peak_depth)
    stats_.peak_depth = depth;
  if (e->canceller_)
    e->canceller_->waiting_ = e;
  return add_result::queued;
}

entry_base* queue_core::take_next_locked() noexcept {
  if (!running_ || closed_ || waiting_.empty())
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
  ++stats_.aborted;
  e.attach_ = waited_locked(e, now);  // from here on, its final wait
  count_wait_locked(e.attach_);
  if (&e == untriggered_)
    untriggered_ = nullptr;
}

void queue_core::trace_left(const entry_list& list, error_code result) noexcept {
  if (tracing())
    for (entry_base* e = list.front(); e; e = e->next_)
      trace_entry(trace_point::detach, *e, result);
}

entry_base* queue_core::finish_and_take_next(void* work_out) noexcept {
  entry_base* next = nullptr;
  core_ref last_ref;  // released with the lock, after it
  {
    std::lock_guard lock(mutex_);
    ++stats_.completed;
    turn_held_ = false;
    next = take_next_locked();
    if (!next) {
      busy_ = false;
      last_ref = std::move(orphan_ref_);
      drop_work_locked(work_out);
    }
  }
  return next;
}

void queue_core::finish() noexcept {
  if (entry_base* next = finish_and_take_next(nullptr))
    next->trigger();
}

queue_core::untrigger_result queue_core::untrigger(entry_base* e) noexcept {
  std::lock_guard lock(mutex_);
  if (closed_)
    return untrigger_result::closed;
  if (running_ || !busy_ || !turn_held_)
    return untrigger_result::refused;
  busy_ = false;
  turn_held_ = false;
  e->tag_ = active_tag_;
  e->attach_ = now_ticks();
  untriggered_ = e;
  untriggered_waited_ = active_waited_;
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
  timing_.store(true, std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  queue_stats s;
  s.added = stats_.added;
  s.completed = stats_.completed;
  s.aborted = stats_.aborted;
  s.depth = waiting_count_ + (busy_ ? 1 : 0);
  s.peak_depth = stats_.peak_depth;
  s.total_wait = stats_.total_wait;
  s.max_wait = stats_.max_wait;
  return s;
}

// ---- tracing -----------------------------------------------------------------

void queue_core::set_hook(trace_hook h) {
  std::shared_ptr<const trace_hook> p;
  if (h)
    p = std::make_shared<const trace_hook>(std::move(h));
  std::lock_guard lock(mutex_);
  std::swap(hook_, p);
  has_hook_.store(hook_ != nullptr, std::memory_order_relaxed);
}

void queue_core::call_hook(trace_point p, entry_info& info) noexcept {
  std::shared_ptr<const trace_hook> hook;
  {
    std::lock_guard lock(mutex_);
    hook = hook_;
  }
  if (!hook && default_hook_)
    hook = default_hook_->load();
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
  active_kind_ = static_cast<unsigned char>(k);
  entry_info info{active_tag_,
                  static_cast<entry_kind>(active_kind_),
                  name(),
                  clock::duration(active_waited_),
                  {}};
  call_hook(trace_point::before_trigger, info);
  active_tag_ = info.tag;
}

void queue_core::trace_done_slow(error_code result) noexcept {
  entry_info info{active_tag_, static_cast<entry_kind>(active_kind_), name(),
                  clock::duration(active_waited_), result};
  if (active_triggered_)
    call_hook(trace_point::after_complete, info);
  call_hook(trace_point::detach, info);
}

void queue_core::release_turn() noexcept {
  trace_done(error_code());
  finish();
}

namespace {
// Completes every entry of list with operation_aborted (each posts its
// handler, so this never runs user code inline).
std::size_t abort_all(entry_list list) {
  std::size_t n = 0;
  while (entry_base* e = list.pop_front()) {
    e->abort();
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
  }
  trace_left(list, net::error::operation_aborted);
  const std::size_t n = abort_all(std::move(list));
  release_work_if_idle();
  return n;
}

void queue_core::close(core_ref owner) {
  entry_list list;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    list = take_all_locked();
    if (busy_)
      orphan_ref_ = owner;  // a copy: owner keeps the core alive to the end of this call
  }
  trace_left(list, net::error::operation_aborted);
  abort_all(std::move(list));
  release_work_if_idle();
}

void queue_core::shutdown() noexcept {
  entry_list list;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
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
  switch (core.add(e, allow_inline)) {
    case queue_core::add_result::queued:
      break;
    case queue_core::add_result::trigger:
      e->trigger();
      break;
    case queue_core::add_result::launch_inline:
      e->launch();
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
  core.default_hook_ = default_hook_;
  if (!add(core))
    core.closed_ = true;  // the context has shut down: every entry is refused
}

void serialized_queue_service::destroy(detail::core_ref core) {
  remove(*core);
  detail::queue_core& c = *core;
  c.close(std::move(core));
}

bool serialized_queue_service::add(detail::service_member& m) {
  std::lock_guard lock(mutex_);
  if (shut_down_)
    return false;
  m.svc_next_ = first_;
  m.svc_prev_ = nullptr;
  if (first_)
    first_->svc_prev_ = &m;
  first_ = &m;
  m.registered_ = true;
  return true;
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
  // Pin every member (each stays alive while it shuts down: a queue core
  // until its unpin(), a writer until the loop ends), and call out with no
  // lock held: destroying handlers runs user code, which may destroy queues
  // and writers (unregistering them) or create new ones.
  struct pinned {
    detail::service_member* member;
    std::shared_ptr<void> owner;  // empty: the member holds a reference of its own
  };
  std::vector<pinned> members;
  {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (detail::service_member* m = first_; m; m = m->svc_next_)
      ++n;
    members.reserve(n);  // may throw, before anything is pinned or refused
    shut_down_ = true;
    for (detail::service_member* m = first_; m; m = m->svc_next_)
      members.push_back({m, m->pin()});
  }
  for (auto& p : members) {
    p.member->shutdown();
    if (!p.owner)
      p.member->unpin();  // may destroy it
  }
}

void set_default_trace_hook(net::execution_context& ctx, trace_hook hook) {
  net::use_service<serialized_queue_service>(ctx).default_hook_->store(std::move(hook));
}

SERQ_NAMESPACE_END
