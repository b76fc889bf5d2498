//
// src/writer_core.cpp: queued_writer's state machine.
//

#include <serq/config.hpp>
#include <serq/detail/writer_core.hpp>

#include <algorithm>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <system_error>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// ---- window_builder ----------------------------------------------------------

net::const_buffer* window_storage::initial(std::size_t& capacity) noexcept {
  if (heap_) {
    capacity = heap_size_;
    return heap_.get();
  }
  capacity = inline_size;
  return inline_;
}

namespace {

// What a thread keeps for the next writer on it that needs one: the last
// busy state and the largest gather array given back, so that a writer that
// drains between messages or bursts does not allocate for them (as Asio's
// recycling allocator does for operations; its per-thread cache takes no
// block of these sizes); and the own_block slots, of the writer's own
// operations and of queue entries (handler_alloc.hpp).
//
// A writer may give its blocks back while the thread's thread_local objects
// are destroyed, or, on the main thread, while the program's statics are (a
// static io_context whose handlers hold writers): after the reaper below.
// So the slots are trivially destructible, usable to the thread's very end,
// and the reaper, made when the thread first keeps a block, frees what they
// hold at thread exit and closes them: a block given back later is freed.
struct thread_spares {
  writer_core::busy_state* busy = nullptr;
  queue_core* queue = nullptr;  // one reference, recycled (queue_core::recycle)
  net::const_buffer* window = nullptr;
  std::size_t window_size = 0;
  // The own_block slots (a writer's own operations, queue entries), each
  // block from the recycling allocator for `size` bytes.
  struct block_slot {
    void* block = nullptr;
    std::size_t size = 0;
  } own[own_block_kinds];
  bool closed = false;  // the reaper ran
};
thread_local thread_spares spares;

net::detail::recycling_allocator<unsigned char, net::detail::thread_info_base::default_tag>
recycling_blocks() noexcept {
  return {};
}

struct spare_reaper {
  spare_reaper() = default;
  spare_reaper(const spare_reaper&) = delete;
  spare_reaper& operator=(const spare_reaper&) = delete;
  ~spare_reaper() {
    delete spares.busy;
    delete[] spares.window;
    if (spares.queue)
      core_release(spares.queue);
    for (auto& slot : spares.own)
      if (slot.block)
        recycling_blocks().deallocate(static_cast<unsigned char*>(slot.block), slot.size);
    spares = thread_spares{};
    spares.closed = true;
  }
};

// Whether this thread may keep a block given back now.
bool may_keep_spare() noexcept {
  if (spares.closed)
    return false;
  thread_local spare_reaper reaper;  // made once per thread, before the first block is kept
  return true;
}

}  // namespace

void* allocate_own_block(own_block kind, std::size_t size) {
  auto& slot = spares.own[static_cast<std::size_t>(kind)];
  // The very size only: the recycling allocator reads a block's size back
  // from the size it was asked for.
  if (slot.block && slot.size == size)
    return std::exchange(slot.block, nullptr);
  return recycling_blocks().allocate(size);
}

void deallocate_own_block(own_block kind, void* p, std::size_t size) noexcept {
  auto& slot = spares.own[static_cast<std::size_t>(kind)];
  // The slot keeps the last size given back: a block of another size (an
  // earlier writer's, of another stream type) goes to make room.
  if ((!slot.block || slot.size != size) && may_keep_spare()) {
    if (slot.block)
      recycling_blocks().deallocate(static_cast<unsigned char*>(slot.block), slot.size);
    slot.block = p;
    slot.size = size;
    return;
  }
  recycling_blocks().deallocate(static_cast<unsigned char*>(p), size);
}

net::const_buffer* window_storage::grow(const net::const_buffer* data, std::size_t count,
                                        std::size_t size) noexcept {
  if (heap_size_ < size) {
    std::unique_ptr<net::const_buffer[]> bigger;
    std::size_t bigger_size = size;
    if (spares.window && spares.window_size >= size) {
      bigger.reset(std::exchange(spares.window, nullptr));
      bigger_size = std::exchange(spares.window_size, 0);
    } else {
      bigger.reset(new (std::nothrow) net::const_buffer[size]);
      if (!bigger)
        return nullptr;
    }
    std::copy(data, data + count, bigger.get());
    heap_ = std::move(bigger);
    heap_size_ = bigger_size;
  } else if (data != heap_.get()) {
    std::copy(data, data + count, heap_.get());
  }
  return heap_.get();
}

void window_storage::release() noexcept {
  if (!heap_)
    return;
  if (heap_size_ > spares.window_size && may_keep_spare()) {
    delete[] spares.window;
    spares.window = heap_.release();
    spares.window_size = heap_size_;
  }
  heap_.reset();
  heap_size_ = 0;
}

std::size_t window_builder::append(net::const_buffer b) noexcept {
  if (full() || b.size() == 0)
    return 0;
  if (count_ == capacity_) {
    net::const_buffer* bigger =
        storage_.grow(data_, count_, window_storage::next_size(capacity_, max_buffers_));
    if (!bigger) {
      stuck_ = true;  // out of memory: this window is as long as it gets
      return 0;
    }
    data_ = bigger;
    capacity_ = storage_.heap_size();
  }
  const std::size_t take = std::min(b.size(), max_bytes_ - bytes_);
  data_[count_++] = net::const_buffer(b.data(), take);
  bytes_ += take;
  return take;
}

buffer_window window_builder::view() const noexcept {
  buffer_window w;
  w.data_ = data_;
  w.count_ = count_;
  return w;
}

// ---- node_list -----------------------------------------------------------------

node_list::~node_list() {
  while (writer_node* n = pop_front())
    n->destroy();
}

void node_list::complete_all(const writer_core& core, completion_mode mode) {
  // A handler run inline through its immediate executor may destroy the
  // writer, and the core with it, while more nodes wait here.
  writer_ref<const writer_core> keep;
  if (mode == completion_mode::immediate && front() && front()->next_)
    keep = writer_ref<const writer_core>::share(&core);
  while (writer_node* n = pop_front())
    n->ops_->complete(n, core, core.result_of(n->result()), n->size_, mode);
}

// ---- writer_node / node_canceller ------------------------------------------

void writer_node::attach_canceller(net::cancellation_slot slot, writer_ref<writer_core> core) {
  if (slot.is_connected())
    canceller_ = &slot.template emplace<node_canceller>(std::move(core), nullptr);
}

void node_canceller::operator()(net::cancellation_type_t type) {
  node_list done;
  // Keeps the core while its done list completes (the signal's owner may
  // let go of this canceller meanwhile), and the executor's work until then.
  const writer_ref<writer_core> core = core_;
  net::any_io_executor work;  // declared first: released after the posts
  deferred_completion deferred;
  {
    std::lock_guard lock(core->mutex_);
    writer_node* n = node_;
    if (!n)
      return;  // completed already: a stale signal
    if (n->node_kind() == writer_node::kind::close && n->started()) {
      // The closing operation runs: it decides, as the stream's rules say.
      // Until it is launched (what finished before it completes first) the
      // signal waits in the node, for close_launched to pass on.
      if (core->close_launched_)
        core->emit_locked(core->busy_->close_signal, type, deferred);
      else
        n->add_cancel_pending(type);
    } else if (!n->started()) {
      const bool queued_close =
          n->node_kind() == writer_node::kind::close && n->where() == writer_node::place::normal;
      core->finish_node_locked(n, writer_node::outcome::aborted, done);
      if (queued_close) {
        // Taken back before it started: the writer stays open, and the
        // calls that joined this close are aborted with it. Waiters that
        // only the close kept waiting (writable() was false for it alone)
        // are released.
        core->closing_ = false;
        while (writer_node* f = core->busy_->followers.front())
          core->finish_node_locked(f, writer_node::outcome::aborted, done, nullptr, true);
        if (core->writable_ && !core->error_)
          core->release_waiters_locked(done);
      }
      core->update_writable_locked(done);
    } else if (core->written_of(n) == 0) {
      // Gathered into the write in flight, but none of its bytes accepted
      // yet: decided when that write returns. If the stream took none of
      // them, the message is removed; if it took some, it has started.
      n->add_cancel_pending(type);
    } else if ((type & net::cancellation_type::terminal) != net::cancellation_type::none) {
      // A started message cannot be taken back: the stream's framing would
      // be lost. Terminal cancellation stops the stream operation instead,
      // which fails the writer. Between two write_some calls (a handler run
      // by the write that started this message, say) there is none to stop:
      // the slot still holds the finished operation's handler, which must
      // not be called; the writer fails at its next step.
      core->terminal_requested_ = true;
      if (core->write_in_flight_)
        core->emit_locked(core->busy_->write_signal, net::cancellation_type::terminal, deferred);
    }
    core->hold_work_locked(done, work);
  }
  done.complete_all(*core, completion_mode::post);
  if (deferred)
    core->resume_deferred(deferred);
}

// ---- writer_core -------------------------------------------------------------

// The stall timer's handler. It holds the core, which holds the timer: the
// timer is cancelled whenever the writer stops waiting on the stream, and
// when the writer object goes, so the cycle never outlives a wait.
struct writer_core::stall_check {
  writer_ref<writer_core> core;
  std::uint64_t generation;

  void operator()(const error_code&) const { core->on_stall_timer(generation); }
};

// The stall deadline's state. The timer is armed only while a write_some is
// in flight, and re-armed from its own handler for the remainder, not per
// write_some.
struct writer_core::stall_state {
  explicit stall_state(const net::any_io_executor& ex) : timer(ex) {}

  clock::duration timeout{};
  clock::time_point write_started{};
  net::steady_timer timer;
  std::uint64_t generation = 0;
  bool armed = false;
};

writer_core::busy_state::~busy_state() {
  if (closing_node)
    closing_node->destroy();
  // The node lists destroy the nodes still in them.
}

bool writer_core::make_busy_locked() noexcept {
  if (busy_)
    return true;
  if (spares.busy)
    busy_ = std::exchange(spares.busy, nullptr);
  else
    busy_ = new (std::nothrow) busy_state;
  return busy_ != nullptr;
}

bool writer_core::busy_or_reject_locked(writer_node* n, node_list& rejected) noexcept {
  if (make_busy_locked())
    return true;
  reject_locked(n, writer_node::outcome::no_memory, rejected);
  return false;
}

void writer_core::release_busy_locked() noexcept {
  if (!busy_ || write_in_flight_ || !busy_->idle())
    return;
  busy_state* b = std::exchange(busy_, nullptr);
  // Asio leaves an operation's cancellation handler in the slot when the
  // operation completes; it refers to this writer's stream. The next writer
  // to use the block (the spare is per thread) must not emit into it.
  b->write_signal.slot().clear();
  b->close_signal.slot().clear();
  b->storage.release();
  b->head_written[0] = b->head_written[1] = 0;
  b->pending_bytes = b->pending_writes = 0;
  b->window = buffer_window();
  b->window_lane = lane::normal;
  if (!spares.busy && may_keep_spare())
    spares.busy = b;
  else
    delete b;
}

void writer_core::keep_spare_queue(core_ref q) noexcept {
  if (!may_keep_spare())
    return;  // q is released
  // The last core given back serves the writers this thread runs now: a
  // spare of another executor (an earlier writer's, perhaps of a context
  // that is gone) makes room, and is released.
  core_ref old = core_ref::adopt(std::exchange(spares.queue, q.detach()));
}

core_ref writer_core::take_spare_queue() noexcept {
  return core_ref::adopt(std::exchange(spares.queue, nullptr));
}

void writer_core::queue_quiet() noexcept {
  core_ref q;
  bool recycled = false;
  {
    std::lock_guard lock(mutex_);
    // A core on any executor but a plain io_context one stays with its
    // writer: it could serve no other writer (a strand compares equal only
    // to itself), and may not outlive its context in a thread's spare (a
    // strand's state locks its service when it goes). Keeping it costs the
    // idle writer the core's bytes, and saves an allocation per busy period.
    if (queue_ && queue_->plain_io() && queue_->quiet(recycled)) {
      q = std::move(queue_);
      queue_has_hook_ = false;
    }
  }
  if (recycled)
    keep_spare_queue(std::move(q));
  // else q, if any, is released
}

void writer_core::close_queue() {
  core_ref q;
  {
    std::lock_guard lock(mutex_);
    q = queue_;
  }
  if (q)
    q->close();
}

const void* writer_core::queue_address() const noexcept {
  std::lock_guard lock(mutex_);
  return queue_.get();
}

void writer_core::use_default_hook(const std::shared_ptr<hook_slot>&) {
  // Called under the service's lock: taking the writer's here could
  // deadlock against a writer that makes its urgent queue (registered with
  // the service) under its own. The writer's queue gets the hook from
  // queue_locked(), when the writer next queues something.
  queue_hooked_.store(true, std::memory_order_release);
}

writer_core::writer_core() = default;

writer_core::~writer_core() {
  if (queue_turn_held_)
    queue_->release_turn();
  delete busy_;
  if (held_)
    held_->destroy();
}

error_code writer_core::result_of(writer_node::outcome o) const noexcept {
  switch (o) {
    case writer_node::outcome::success:
      break;
    case writer_node::outcome::aborted:
      return net::error::operation_aborted;
    case writer_node::outcome::shut_down:
      return net::error::shut_down;
    case writer_node::outcome::failed:
      return error_;
    case writer_node::outcome::close_result:
      return close_result_;
    case writer_node::outcome::too_long:
      return net::error::message_size;
    case writer_node::outcome::no_memory:
      return net::error::no_memory;
  }
  return {};
}

writer_node::outcome writer_core::refusal_outcome_locked() const noexcept {
  return closed_  ? writer_node::outcome::aborted
         : error_ ? writer_node::outcome::failed
                  : writer_node::outcome::shut_down;
}

void writer_core::reject_locked(writer_node* n, writer_node::outcome o,
                                node_list& rejected) noexcept {
  n->canceller_ = nullptr;  // never queued: its canceller's node_ stays null
  n->set_outcome(o);
  n->size_ = 0;
  rejected.push_back(n);
}

error_code writer_core::refusal_locked() const noexcept {
  if (error_)
    return error_;
  if (closed_)
    return net::error::operation_aborted;
  if (closing_)
    return net::error::shut_down;
  return {};
}

bool writer_core::add_locked(writer_node* n, lane l, node_list& rejected, bool& needs_pump) {
  if (closed_ || error_ || closing_) {
    reject_locked(n, refusal_outcome_locked(), rejected);
    return false;
  }
  if (n->too_long_) {
    // Longer than any stream could take: refused, the writer stays as it is.
    reject_locked(n, writer_node::outcome::too_long, rejected);
    return false;
  }
  if (!busy_or_reject_locked(n, rejected))
    return false;
  const bool urgent = l == lane::urgent;
  n->set_place(urgent ? writer_node::place::urgent : writer_node::place::normal);
  if (n->canceller_)
    n->canceller_->node_ = n;
  list_of(l).push_back(n);
  if (n->node_kind() == writer_node::kind::write) {
    busy_->pending_bytes += n->size_;
    ++busy_->pending_writes;
    peak_pending_bytes_ = std::max(peak_pending_bytes_, busy_->pending_bytes);
    if (writable_ && busy_->pending_bytes > high_)
      set_writable_locked(false);
  }
  bool& has_pump = urgent ? urgent_segment_has_pump_ : segment_has_pump_;
  needs_pump = !has_pump;
  has_pump = true;
  return true;
}

bool writer_core::add_close_locked(writer_node* n, node_list& rejected) {
  if (close_done_ || closed_ || error_) {
    reject_locked(n,
                  close_done_ ? writer_node::outcome::close_result
                  : closed_   ? writer_node::outcome::aborted
                              : writer_node::outcome::failed,
                  rejected);
    return false;
  }
  if (!busy_or_reject_locked(n, rejected))
    return false;
  if (n->canceller_)
    n->canceller_->node_ = n;
  if (closing_) {
    n->set_place(writer_node::place::followers);
    busy_->followers.push_back(n);
    return false;
  }
  closing_ = true;
  n->set_place(writer_node::place::normal);
  busy_->nodes.push_back(n);
  const bool needs_pump = !segment_has_pump_;
  segment_has_pump_ = true;
  return needs_pump;
}

void writer_core::release_waiters_locked(node_list& done) {
  while (writer_node* w = busy_ ? busy_->waiters.front() : nullptr)
    finish_node_locked(w, writer_node::outcome::success, done, nullptr, true);
}

void writer_core::mark_segment_locked(lane l) {
  const bool urgent = l == lane::urgent;
  std::uint32_t& segment = urgent ? urgent_segment_ : segment_;
  auto* m = new segment_mark(segment + 1);  // before anything changes: it may throw
  if (!make_busy_locked()) {
    delete m;
    throw std::bad_alloc();
  }
  m->set_place(urgent ? writer_node::place::urgent : writer_node::place::normal);
  list_of(l).push_back(m);
  ++segment;
  (urgent ? urgent_segment_has_pump_ : segment_has_pump_) = false;
}

void writer_core::drop_passed_marks_locked(pump_id id) {
  node_list& list = list_of(id.l);
  node_list dropped;
  while (writer_node* n = list.front()) {
    if (n->node_kind() != writer_node::kind::mark)
      break;
    // Segments wrap around; two live ones are never 2^31 apart (every
    // boundary is an entry in a queue).
    const auto ahead =
        static_cast<std::int32_t>(static_cast<segment_mark*>(n)->segment() - id.segment);
    if (ahead > 0)
      break;  // the end of this pump's segment: its writes were all taken back
    remove_queued_locked(n, nullptr, true);
    dropped.push_back(n);
  }
  // dropped's destructor frees them.
}

bool writer_core::note_urgent_locked() noexcept {
  urgent_pending_ = true;
  if (lending_ || lender_queued_)
    return false;  // the lend in progress, or the queued lender, will serve it
  lender_queued_ = true;
  return true;
}

void writer_core::lender_gone() noexcept {
  std::lock_guard lock(mutex_);
  lender_queued_ = false;
}

void writer_core::hold(held_completion* h) {
  {
    std::lock_guard lock(mutex_);
    if (held_state_ != held_state::released) {
      held_ = h;
      held_state_ = held_state::ready;
      return;
    }
    held_state_ = held_state::none;
  }
  h->finish();
}

void writer_core::release_held() {
  held_completion* h = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (held_state_ == held_state::ready) {
      h = std::exchange(held_, nullptr);
      held_state_ = held_state::none;
    } else {
      held_state_ = held_state::released;
    }
  }
  if (h)
    h->finish();
}

void writer_core::add_waiter(writer_node* n, node_list& ready) {
  std::lock_guard lock(mutex_);
  if (closed_ || error_ || closing_ || writable_) {
    reject_locked(
        n, closed_ || error_ || closing_ ? refusal_outcome_locked() : writer_node::outcome::success,
        ready);
    return;
  }
  if (!busy_or_reject_locked(n, ready))
    return;
  n->set_place(writer_node::place::waiters);
  if (n->canceller_)
    n->canceller_->node_ = n;
  busy_->waiters.push_back(n);
}

std::size_t writer_core::written_of(const writer_node* n) const noexcept {
  switch (n->where()) {
    case writer_node::place::normal:
      return n == busy_->nodes.front() ? busy_->head_written[0] : 0;
    case writer_node::place::urgent:
      return n == busy_->urgent_nodes.front() ? busy_->head_written[1] : 0;
    default:
      return 0;
  }
}

void writer_core::remove_queued_locked(writer_node* n, writer_node* prev, bool prev_known) {
  std::size_t written = 0;
  auto unlink = [&](node_list& list) {
    if (prev_known)
      list.unlink(n, prev);
    else
      list.unlink(n);
  };
  switch (n->where()) {
    case writer_node::place::waiters:
      unlink(busy_->waiters);
      break;
    case writer_node::place::followers:
      unlink(busy_->followers);
      break;
    case writer_node::place::normal:
    case writer_node::place::urgent: {
      const lane l = n->where() == writer_node::place::urgent ? lane::urgent : lane::normal;
      node_list& list = list_of(l);
      if (l == busy_->window_lane) {
        // A node that carries no bytes (a flush, an empty message) can be
        // aborted from the middle of the window in flight: keep the
        // window's count, which on_written walks from the front, exact.
        std::size_t i = 0;
        for (writer_node* m = list.front(); m && i < busy_->window_nodes; m = m->next_, ++i) {
          if (m == n) {
            --busy_->window_nodes;
            break;
          }
        }
      }
      written = written_of(n);
      if (n == list.front())
        busy_->head_written[l == lane::urgent ? 1 : 0] = 0;
      unlink(list);
      if (n->node_kind() == writer_node::kind::write) {
        busy_->pending_bytes -= n->size_ - written;
        --busy_->pending_writes;
      }
      break;
    }
    case writer_node::place::none:
      break;
  }
  n->set_place(writer_node::place::none);
  n->size_ = written;
  if (n->canceller_) {
    n->canceller_->node_ = nullptr;
    n->canceller_ = nullptr;
  }
}

void writer_core::finish_node_locked(writer_node* n, writer_node::outcome o, node_list& done,
                                     writer_node* prev, bool prev_known) {
  remove_queued_locked(n, prev, prev_known);
  n->set_outcome(o);
  done.push_back(n);
}

void writer_core::release_window_locked() noexcept {
  if (busy_ && busy_->pending_bytes == 0 && !write_in_flight_)
    busy_->storage.release();
  release_busy_locked();
}

void writer_core::update_writable_locked(node_list& done) {
  if (!writable_ && pending_bytes_locked() <= low_) {
    set_writable_locked(true);
    // writable() stays false while a close is pending: its waiters get its
    // outcome (shut_down once it completes), or are released if it is taken
    // back before it starts.
    if (!closing_)
      release_waiters_locked(done);
  } else if (writable_ && pending_bytes_locked() > high_) {
    set_writable_locked(false);
  }
  if (pending_bytes_locked() == 0)
    disarm_stall_timer_locked();
  release_window_locked();
}

void writer_core::fail_list_locked(node_list& list, std::size_t keep, node_list& done) {
  writer_node* prev = nullptr;
  writer_node* n = list.front();
  for (std::size_t i = 0; i < keep && n; ++i) {
    prev = n;
    n = n->next_;
  }
  while (n) {
    writer_node* next = n->next_;
    if (n->node_kind() == writer_node::kind::close) {
      // A close still queued fails with the error that came first.
      close_done_ = true;
      close_result_ = error_;
      closing_ = false;
    }
    finish_node_locked(n, writer_node::outcome::failed, done, prev, true);
    n = next;
  }
}

void writer_core::fail_locked(const error_code& ec, node_list& done, bool keep_window) {
  if (!error_)
    error_ = ec;
  if (!busy_)
    return;  // nothing queued, nothing in flight
  // Each started message reports the bytes it actually wrote; the others 0.
  // With keep_window, the messages of the write in flight stay: they
  // complete when it returns, with the bytes it reports.
  const std::size_t keep = keep_window ? busy_->window_nodes : 0;
  fail_list_locked(busy_->nodes, busy_->window_lane == lane::normal ? keep : 0, done);
  fail_list_locked(busy_->urgent_nodes, busy_->window_lane == lane::urgent ? keep : 0, done);
  while (writer_node* w = busy_->waiters.front())
    finish_node_locked(w, writer_node::outcome::failed, done, nullptr, true);
  if (!busy_->closing_node) {
    // Calls that joined a close that never ran get the same error; those of
    // a running close wait for its result.
    while (writer_node* f = busy_->followers.front())
      finish_node_locked(f, writer_node::outcome::failed, done, nullptr, true);
  }
  if (!keep_window)
    busy_->window_nodes = 0;
  if (pending_bytes_locked() == 0)
    disarm_stall_timer_locked();
  // The requests that failed took their bytes with them: a spell above the
  // high watermark ends as it would if they had been written (stats()).
  if (!writable_ && pending_bytes_locked() <= low_)
    set_writable_locked(true);
  release_window_locked();
}

step_action writer_core::build_window_locked(pump_id id, node_list& done, writer_node*& closing) {
  if (terminal_requested_ && !error_)
    fail_locked(net::error::operation_aborted, done);
  if (closed_ && busy_ && (!busy_->nodes.empty() || !busy_->urgent_nodes.empty()))
    fail_locked(net::error::operation_aborted, done);
  if (error_ || closed_)
    return step_action::drained;

  if (busy_)
    drop_passed_marks_locked(id);
  // From here on the pump's segment is what precedes the first mark.
  auto in_segment = [](const writer_node* n) {
    return n && n->node_kind() != writer_node::kind::mark;
  };
  bool solo = false;
  if (id.l == lane::normal && urgent_pending_ && !lending_) {
    // Urgent items go next, but a message cannot be interrupted: finish the
    // one the stream has started, alone, then lend the stream.
    const writer_node* head = busy_ ? busy_->nodes.front() : nullptr;
    if (in_segment(head) && busy_->head_written[0] != 0) {
      solo = true;
    } else {
      lending_ = true;
      return step_action::lend;
    }
  }
  if (!busy_) {
    // Everything this pump's segment held was taken back, and the writer
    // went idle: nothing left to write.
    end_segment_locked(id);
    return step_action::drained;
  }
  node_list& list = list_of(id.l);

  // Whatever has nothing left to write at the head is done: a flush whose
  // predecessors are all written, a zero-length message.
  while (writer_node* n = list.front()) {
    if (!in_segment(n) || n->node_kind() == writer_node::kind::close || n->size_ != 0)
      break;  // (a head with bytes left: a head that wrote all of them has finished)
    if (n->node_kind() == writer_node::kind::write)
      ++messages_written_;  // an empty message
    finish_node_locked(n, writer_node::outcome::success, done, nullptr, true);
  }

  if (writer_node* head = list.front();
      in_segment(head) && head->node_kind() == writer_node::kind::close) {
    // Everything queued before the close is written: it runs now. It leaves
    // the list (cancel() and close() leave it alone) but keeps its
    // canceller, which forwards signals to the closing operation.
    list.unlink(head, nullptr);
    head->set_place(writer_node::place::none);
    head->set_started(true);
    busy_->closing_node = head;
    closing = head;
    busy_->window_nodes = 0;
    return step_action::close;
  }

  window_builder builder(busy_->storage, max_buffers_, max_bytes_);
  busy_->window_lane = id.l;
  busy_->window_nodes = 0;
  for (writer_node* n = list.front(); in_segment(n) && !builder.full(); n = n->next_) {
    if (n->node_kind() == writer_node::kind::close)
      break;  // written by this pump's next step, once the window before it is
    ++busy_->window_nodes;
    const std::size_t written = written_of(n);
    if (written != n->size_) {
      // Only a message whose bytes are handed to the stream has started; a
      // flush or an empty message in the window stays cancellable.
      n->set_started(true);
      n->ops_->fill(n, written, builder);
      if (!gathering_ || solo)
        break;
    }
  }
  if (builder.bytes() == 0) {
    // The segment is drained: the pump hands its turn on. A later write to
    // this segment needs a new pump.
    for (writer_node* n = list.front(); n && busy_->window_nodes > 0;
         n = n->next_, --busy_->window_nodes)
      n->set_started(false);
    busy_->window_nodes = 0;
    end_segment_locked(id);
    // The mark that begins the next segment, now at the front, has nothing
    // left to hold back: without it a writer idle after a composed operation
    // gives its busy state back (the next segment's pump, if one comes,
    // finds no mark to pass).
    drop_passed_marks_locked(pump_id{id.l, id.segment + 1, false});
    release_window_locked();
    return step_action::drained;
  }
  busy_->window = builder.view();
  return step_action::write;
}

void writer_core::end_segment_locked(pump_id id) noexcept {
  if (id.l == lane::normal) {
    if (id.segment == segment_)
      segment_has_pump_ = false;
  } else if (id.segment == urgent_segment_) {
    urgent_segment_has_pump_ = false;
  }
}

void writer_core::on_written(const error_code& ec, std::size_t n, node_list& done) {
  std::lock_guard lock(mutex_);
  write_in_flight_ = false;
  node_list& list = list_of(busy_->window_lane);
  std::size_t& head_written = busy_->head_written[busy_->window_lane == lane::urgent ? 1 : 0];
  // Messages complete strictly in order: once one is left unfinished, the
  // rest of the window (even zero-length ones) waits for the next write.
  bool blocked = false;
  writer_node* node = list.front();
  // Finishing nodes below must not shrink the count being walked.
  const std::size_t window_nodes = std::exchange(busy_->window_nodes, 0);
  for (std::size_t i = 0; i < window_nodes && node; ++i) {
    writer_node* next = node->next_;
    if (!blocked) {
      // Every node before this one has finished: it is the head.
      const std::size_t take = std::min(n, node->size_ - head_written);
      head_written += take;
      busy_->pending_bytes -= take;
      bytes_written_ += take;
      n -= take;
      // A message all of whose bytes went out succeeded, even if the same
      // write_some then reported an error for what followed.
      if (head_written == node->size_) {
        if (node->node_kind() == writer_node::kind::write)
          ++messages_written_;
        finish_node_locked(node, writer_node::outcome::success, done, nullptr, true);
      } else {
        blocked = true;
      }
    }
    if (blocked && written_of(node) == 0) {
      node->set_started(false);  // none of it reached the stream: still cancellable
      if (node->cancel_pending() != net::cancellation_type::none)
        finish_node_locked(node, writer_node::outcome::aborted, done);
    } else if (node->where() != writer_node::place::none &&
               (node->cancel_pending() & net::cancellation_type::terminal) !=
                   net::cancellation_type::none) {
      // Cancelled while gathered, and now partly written: as for any
      // started message, terminal cancellation fails the writer.
      terminal_requested_ = true;
    }
    node = next;
  }
  busy_->window_nodes = 0;
  if (ec)
    fail_locked(ec, done);
  else if (error_)
    fail_locked(error_, done);  // failed while the write was in flight (stall)
  update_writable_locked(done);
}

void writer_core::close_launched() {
  deferred_completion deferred;
  {
    std::lock_guard lock(mutex_);
    writer_node* n = busy_ ? busy_->closing_node : nullptr;
    if (!n)
      return;  // it completed inside its launch
    close_launched_ = true;
    if (const net::cancellation_type_t t = n->cancel_pending(); t != net::cancellation_type::none)
      emit_locked(busy_->close_signal, t, deferred);
  }
  if (deferred)
    resume_deferred(deferred);
}

bool writer_core::on_closed(const error_code& ec, node_list& done) {
  std::lock_guard lock(mutex_);
  writer_node* n = busy_ ? std::exchange(busy_->closing_node, nullptr) : nullptr;
  if (!n)
    return false;  // the context shut down, destroying it
  close_launched_ = false;
  if (n->canceller_) {
    n->canceller_->node_ = nullptr;
    n->canceller_ = nullptr;
  }
  n->set_outcome(writer_node::outcome::close_result);
  done.push_back(n);
  close_done_ = true;
  close_result_ = ec;
  closing_ = false;
  while (writer_node* f = busy_->followers.front())
    finish_node_locked(f, writer_node::outcome::close_result, done, nullptr, true);
  // Closed, or failed by its closing operation: sticky either way.
  if (!error_)
    error_ = ec ? ec : error_code(net::error::shut_down);
  fail_locked(error_, done);
  return true;
}

void writer_core::fail(const error_code& ec) {
  node_list done;
  {
    std::lock_guard lock(mutex_);
    fail_locked(ec, done);
  }
  done.complete_all(*this, completion_mode::post);
}

std::size_t writer_core::cancel(node_list& done, net::any_io_executor& work) {
  std::lock_guard lock(mutex_);
  std::size_t count = 0;
  if (!busy_)
    return 0;
  for (node_list* list : {&busy_->nodes, &busy_->urgent_nodes}) {
    writer_node* prev = nullptr;
    for (writer_node* n = list->front(); n;) {
      writer_node* next = n->next_;
      if (!n->started() && n->node_kind() == writer_node::kind::write) {
        finish_node_locked(n, writer_node::outcome::aborted, done, prev, true);
        ++count;
      } else {
        prev = n;
      }
      n = next;
    }
  }
  update_writable_locked(done);
  hold_work_locked(done, work);
  return count;
}

void writer_core::close(node_list& done, net::any_io_executor& work) {
  std::lock_guard lock(mutex_);
  closed_ = true;
  if (busy_) {
    for (node_list* list : {&busy_->nodes, &busy_->urgent_nodes}) {
      writer_node* prev = nullptr;
      for (writer_node* n = list->front(); n;) {
        writer_node* next = n->next_;
        if (!n->started())
          finish_node_locked(n, writer_node::outcome::aborted, done, prev, true);
        else
          prev = n;
        n = next;
      }
    }
    for (node_list* list : {&busy_->waiters, &busy_->followers}) {
      while (writer_node* w = list->front())
        finish_node_locked(w, writer_node::outcome::aborted, done, nullptr, true);
    }
  }
  // Nothing may wait on the stream for a writer that is gone: the write in
  // flight, if any, returns when the stream is closed.
  disarm_stall_timer_locked();
  release_window_locked();
  hold_work_locked(done, work);
}

void writer_core::shutdown() noexcept {
  core_ref queue;
  {
    std::lock_guard lock(mutex_);
    queue = queue_;
  }
  shutdown_requests();
  // The writer's queue is not the service's: its entries (pumps, lenders,
  // composed operations) are destroyed here, as a queue's are at shutdown.
  if (queue)
    queue->shutdown();
}

void writer_core::shutdown_requests() noexcept {
  node_list doomed;
  held_completion* held = nullptr;
  writer_node* closing = nullptr;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    if (busy_) {
      for (node_list* list :
           {&busy_->nodes, &busy_->urgent_nodes, &busy_->waiters, &busy_->followers}) {
        while (writer_node* n = list->front())
          finish_node_locked(n, writer_node::outcome::aborted, doomed, nullptr, true);
      }
      busy_->window_nodes = 0;
      if ((closing = std::exchange(busy_->closing_node, nullptr)) && closing->canceller_) {
        closing->canceller_->node_ = nullptr;
        closing->canceller_ = nullptr;
      }
    }
    held = std::exchange(held_, nullptr);
  }
  // Destroyed outside the lock: handlers' destructors run user code.
  if (closing)
    closing->destroy();
  if (held)
    held->destroy();
  // doomed's destructor destroys the rest.
}

void writer_core::set_watermarks(std::size_t low, std::size_t high, node_list& done,
                                 net::any_io_executor& work) {
  if (low > high)
    throw std::invalid_argument("serq::queued_writer::set_watermarks: low exceeds high");
  std::lock_guard lock(mutex_);
  low_ = low;
  high_ = high;
  if (writable_ && pending_bytes_locked() > high_)
    set_writable_locked(false);
  update_writable_locked(done);
  hold_work_locked(done, work);
}

void writer_core::set_gathering(bool on) noexcept {
  std::lock_guard lock(mutex_);
  gathering_ = on;
}

void writer_core::set_gather_limits(std::size_t max_buffers, std::size_t max_bytes) {
  if (max_buffers == 0 || max_bytes == 0)
    throw std::invalid_argument("serq::queued_writer::set_gather_limits: limits must be > 0");
  std::lock_guard lock(mutex_);
  // The storage grows when the next window is cut: a window in flight
  // points into it.
  constexpr std::size_t most = std::numeric_limits<std::uint32_t>::max();
  max_buffers_ = static_cast<std::uint32_t>(std::min(max_buffers, most));
  max_bytes_ = static_cast<std::uint32_t>(std::min(max_bytes, most));
}

// ---- the stall deadline --------------------------------------------------------

void writer_core::set_stall_timeout(clock::duration timeout,
                                    const net::any_io_executor& timer_executor) {
  timeout = timeout > clock::duration::zero() ? timeout : clock::duration::zero();
  std::lock_guard lock(mutex_);
  disarm_stall_timer_locked();
  if (!stall_) {
    if (timeout == clock::duration::zero() || !timer_executor)
      return;  // no deadline (or a state machine without a stream, in tests: nothing to time)
    stall_ = std::make_unique<stall_state>(timer_executor);
  }
  stall_->timeout = timeout;
  if (timeout != clock::duration::zero() && write_in_flight_) {
    // The write in flight gets the new deadline from now: it was not
    // watched, or watched for another timeout.
    stall_->write_started = clock::now();
    arm_stall_timer_locked(stall_->write_started + timeout);
  }
}

void writer_core::note_write_started_locked() {
  write_in_flight_ = true;
  ++write_calls_;
  if (!stall_ || stall_->timeout == clock::duration::zero())
    return;
  // Each write_some that returns has made progress (or failed): the clock
  // restarts with the next one. The timer already armed, if any, finds the
  // new start when it fires and waits for the remainder.
  stall_->write_started = clock::now();
  if (!stall_->armed)
    arm_stall_timer_locked(stall_->write_started + stall_->timeout);
}

writer_core::call_scope*& writer_core::call_scope::innermost() noexcept {
  thread_local call_scope* scope = nullptr;
  return scope;
}

template <class Pred>
writer_core::call_scope* writer_core::call_scope::find(Pred pred) noexcept {
  for (call_scope* s = innermost(); s; s = s->outer_)
    if (pred(*s))
      return s;
  return nullptr;
}

error_code writer_core::error_of_current_exception() noexcept {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return net::error::no_memory;
  } catch (const system_error& e) {
    return e.code() ? e.code() : error_code(net::error::operation_not_supported);
#if !defined(SERQ_ASIO_STANDALONE)
  } catch (const std::system_error& e) {
    return e.code() ? error_code(e.code()) : error_code(net::error::operation_not_supported);
#endif
  } catch (...) {
    return net::error::operation_not_supported;
  }
}

writer_core::call_scope::call_scope(const writer_core* core, deferred_completion* deferred) noexcept
    : core_(core), outer_(innermost()), deferred_(deferred) {
  innermost() = this;
}

writer_core::call_scope::~call_scope() {
  innermost() = outer_;
}

void writer_core::note_completed_in_start() const noexcept {
  if (call_scope* s =
          call_scope::find([this](const call_scope& c) { return c.core_ == this && !c.deferred_; }))
    s->completed_ = true;
}

bool writer_core::note_dropped_in_start() const noexcept {
  call_scope* s =
      call_scope::find([this](const call_scope& c) { return c.core_ == this && !c.deferred_; });
  if (s)
    s->dropped_ = true;
  return s != nullptr;
}

void writer_core::refuse_added_locked(writer_node* n, bool was_writable,
                                      node_list& rejected) noexcept {
  if (n->node_kind() == writer_node::kind::close)
    closing_ = false;
  finish_node_locked(n, writer_node::outcome::no_memory, rejected);
  // Nobody can have waited for writable() since n came (the lock is held).
  if (was_writable && !writable_)
    set_writable_locked(true);
  release_window_locked();
}

void writer_core::write_not_started_locked(const error_code& ec, node_list& done) noexcept {
  write_in_flight_ = false;
  // Nothing of the window went out: its messages fail with what they wrote
  // before it.
  fail_locked(ec, done);
}

void writer_core::arm_stall_timer_locked(clock::time_point deadline) {
  stall_->timer.expires_at(deadline);
  stall_->timer.async_wait(stall_check{writer_ref<writer_core>::share(this), ++stall_->generation});
  stall_->armed = true;  // only once a wait is pending: if it threw, the next write arms it
}

void writer_core::disarm_stall_timer_locked() noexcept {
  if (!stall_ || !stall_->armed)
    return;
  stall_->armed = false;
  ++stall_->generation;  // the cancelled wait's handler finds itself stale
  try {
    stall_->timer.cancel();
  } catch (...) {
    // The wait then completes at its deadline, stale, and does nothing.
  }
}

void writer_core::on_stall_timer(std::uint64_t generation) {
  node_list done;
  deferred_completion deferred;
  std::exception_ptr emit_failure;
  {
    std::lock_guard lock(mutex_);
    if (generation != stall_->generation)
      return;  // cancelled or superseded
    stall_->armed = false;
    if (stall_->timeout == clock::duration::zero() || error_ || closed_ || !write_in_flight_)
      return;  // the next write_some arms it again
    const clock::time_point deadline = stall_->write_started + stall_->timeout;
    if (clock::now() < deadline) {
      arm_stall_timer_locked(deadline);
      return;
    }
    // The stream took nothing for the whole timeout. The writer fails; the
    // write in flight is cancelled and its messages complete when it
    // returns, with the bytes it reports; every other request now.
    fail_locked(net::error::timed_out, done, true);
    try {
      emit_locked(busy_->write_signal, net::cancellation_type::terminal, deferred);
    } catch (...) {
      // The stream's cancellation handler threw: what failed above still
      // completes before the exception leaves. A completion it ran inside
      // the emit was posted by emit_locked: not resumed here too.
      emit_failure = std::current_exception();
      deferred = deferred_completion();
    }
  }
  complete_then_resume(done, deferred);
  if (emit_failure)
    std::rethrow_exception(emit_failure);
}

// ---- emits under the lock ----------------------------------------------------

void writer_core::emit_locked(net::cancellation_signal& s, net::cancellation_type_t type,
                              deferred_completion& deferred) {
  call_scope scope(this, &deferred);
  try {
    s.emit(type);
  } catch (...) {
    // The cancellation handler threw after it completed the operation:
    // the emitter will not get to resume it.
    if (deferred) {
      try {
        resume_later(deferred);
      } catch (...) {
        // No memory to post it either: that completion is lost, and the
        // writer's requests wait until the writer or its context goes.
      }
    }
    throw;
  }
}

bool writer_core::defer_in_emit(deferred_completion::kind what, pump_id id, const error_code& ec,
                                std::size_t n) const noexcept {
  call_scope* s = call_scope::find(
      [this](const call_scope& c) { return c.core_ == this && c.deferred_ && !*c.deferred_; });
  if (!s)
    return false;
  s->deferred_->what = what;
  s->deferred_->id = id;
  s->deferred_->ec = ec;
  s->deferred_->n = n;
  return true;
}

void writer_core::set_writable_locked(bool on) noexcept {
  writable_ = on;
  if (on)
    time_above_high_ += clock::now() - above_high_since_;
  else
    above_high_since_ = clock::now();
}

writer_counters writer_core::counters() const noexcept {
  std::lock_guard lock(mutex_);
  writer_counters c;
  c.messages = messages_written_;
  c.bytes = bytes_written_;
  c.write_calls = write_calls_;
  c.pending_bytes = pending_bytes_locked();
  c.peak_pending_bytes = peak_pending_bytes_;
  c.time_above_high_watermark = time_above_high_;
  if (!writable_)
    c.time_above_high_watermark += clock::now() - above_high_since_;
  return c;
}

std::size_t writer_core::pending_bytes() const noexcept {
  std::lock_guard lock(mutex_);
  return pending_bytes_locked();
}

std::size_t writer_core::window_heap_bytes() const noexcept {
  std::lock_guard lock(mutex_);
  return busy_ ? busy_->storage.heap_bytes() : 0;
}

bool writer_core::holds_busy_state() const noexcept {
  std::lock_guard lock(mutex_);
  return busy_ != nullptr;
}

std::size_t writer_core::size() const noexcept {
  std::lock_guard lock(mutex_);
  return busy_ ? busy_->pending_writes : 0;
}

bool writer_core::writable() const noexcept {
  std::lock_guard lock(mutex_);
  return writable_ && !error_ && !closed_ && !closing_;
}

error_code writer_core::error() const noexcept {
  std::lock_guard lock(mutex_);
  return error_;
}

bool writer_core::gone() const noexcept {
  std::lock_guard lock(mutex_);
  return closed_;
}

error_code writer_core::launch_error() const noexcept {
  std::lock_guard lock(mutex_);
  return launch_error_locked();
}

}  // namespace detail
SERQ_NAMESPACE_END
