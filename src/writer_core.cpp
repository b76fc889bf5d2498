//
// src/writer_core.cpp: queued_writer's state machine.
//

#include <serq/config.hpp>
#include <serq/detail/writer_core.hpp>

#include <algorithm>
#include <stdexcept>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

// ---- window_builder ----------------------------------------------------------

std::size_t window_builder::append(net::const_buffer b) noexcept {
  if (full() || b.size() == 0)
    return 0;
  const std::size_t take = std::min(b.size(), max_bytes_ - bytes_);
  storage_[count_++] = net::const_buffer(b.data(), take);
  bytes_ += take;
  return take;
}

buffer_window window_builder::view() const noexcept {
  buffer_window w;
  w.data_ = storage_.data();
  w.count_ = count_;
  return w;
}

// ---- node_list -----------------------------------------------------------------

node_list::~node_list() {
  while (writer_node* n = pop_front())
    n->destroy();
}

void node_list::complete_all(completion_mode mode) {
  while (writer_node* n = pop_front())
    n->complete(mode);
}

// ---- writer_node / node_canceller ------------------------------------------

void writer_node::attach_canceller(net::cancellation_slot slot, std::shared_ptr<writer_core> core) {
  if (slot.is_connected())
    canceller_ = &slot.template emplace<node_canceller>(std::move(core), nullptr);
}

void node_canceller::operator()(net::cancellation_type_t type) {
  node_list done;
  {
    std::lock_guard<std::mutex> lock(core_->mutex_);
    writer_node* n = node_;
    if (!n)
      return;  // completed already: a stale signal
    if (n->kind_ == writer_node::kind::close && n->started_) {
      // The closing operation runs: it decides, as the stream's rules say.
      core_->close_signal_.emit(type);
    } else if (!n->started_) {
      const bool queued_close =
          n->kind_ == writer_node::kind::close && n->place_ == writer_node::place::normal;
      core_->remove_queued_locked(n);
      n->result_ = net::error::operation_aborted;
      done.push_back(n);
      if (queued_close) {
        // Taken back before it started: the writer stays open, and the
        // calls that joined this close are aborted with it.
        core_->closing_ = false;
        while (writer_node* f = core_->followers_.front()) {
          f->result_ = net::error::operation_aborted;
          core_->finish_node_locked(f, done);
        }
      }
      core_->update_writable_locked(done);
    } else if (n->written_ == 0) {
      // Gathered into the write in flight, but none of its bytes accepted
      // yet: decided when that write returns. If the stream took none of
      // them, the message is removed; if it took some, it has started.
      n->cancel_pending_ = n->cancel_pending_ | type;
    } else if ((type & net::cancellation_type::terminal) != net::cancellation_type::none) {
      // A started message cannot be taken back: the stream's framing would
      // be lost. Terminal cancellation stops the stream operation instead,
      // which fails the writer.
      core_->terminal_requested_ = true;
      core_->write_signal_.emit(net::cancellation_type::terminal);
    }
  }
  done.complete_all(completion_mode::post);
}

// ---- writer_core -------------------------------------------------------------

// The stall timer's handler. It holds the core, which holds the timer: the
// timer is cancelled whenever the writer stops waiting on the stream, and
// when the writer object goes, so the cycle never outlives a wait.
struct writer_core::stall_check {
  std::shared_ptr<writer_core> core;
  std::uint64_t generation;

  void operator()(const error_code&) const { core->on_stall_timer(generation); }
};

writer_core::writer_core() : window_storage_(default_max_buffers) {}

writer_core::~writer_core() {
  if (closing_node_)
    closing_node_->destroy();
  if (held_)
    held_->destroy();
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
    n->result_ = closed_  ? error_code(net::error::operation_aborted)
                 : error_ ? error_
                          : error_code(net::error::shut_down);
    rejected.push_back(n);
    return false;
  }
  const bool urgent = l == lane::urgent;
  n->segment_ = urgent ? urgent_segment_ : segment_;
  n->place_ = urgent ? writer_node::place::urgent : writer_node::place::normal;
  if (n->canceller_)
    n->canceller_->node_ = n;
  list_of(l).push_back(n);
  if (n->kind_ == writer_node::kind::write) {
    pending_bytes_ += n->size_;
    ++pending_writes_;
    peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
    if (writable_ && pending_bytes_ > high_)
      set_writable_locked(false);
  }
  bool& has_pump = urgent ? urgent_segment_has_pump_ : segment_has_pump_;
  needs_pump = !has_pump;
  has_pump = true;
  return true;
}

bool writer_core::add_close_locked(writer_node* n, node_list& rejected) {
  if (close_done_ || closed_ || error_) {
    n->result_ = close_done_ ? close_result_
                 : closed_   ? error_code(net::error::operation_aborted)
                             : error_;
    rejected.push_back(n);
    return false;
  }
  if (n->canceller_)
    n->canceller_->node_ = n;
  if (closing_) {
    n->place_ = writer_node::place::followers;
    followers_.push_back(n);
    return false;
  }
  closing_ = true;
  n->segment_ = segment_;
  n->place_ = writer_node::place::normal;
  nodes_.push_back(n);
  const bool needs_pump = !segment_has_pump_;
  segment_has_pump_ = true;
  return needs_pump;
}

bool writer_core::note_urgent_locked() noexcept {
  urgent_pending_ = true;
  if (lending_ || lender_queued_)
    return false;  // the lend in progress, or the queued lender, will serve it
  lender_queued_ = true;
  return true;
}

void writer_core::lender_gone() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  lender_queued_ = false;
}

void writer_core::hold(held_completion* h) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
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
    std::lock_guard<std::mutex> lock(mutex_);
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
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_ || error_ || closing_ || writable_) {
    n->result_ = closed_    ? error_code(net::error::operation_aborted)
                 : error_   ? error_
                 : closing_ ? error_code(net::error::shut_down)
                            : error_code();
    ready.push_back(n);
    return;
  }
  n->place_ = writer_node::place::waiters;
  if (n->canceller_)
    n->canceller_->node_ = n;
  waiters_.push_back(n);
}

void writer_core::remove_queued_locked(writer_node* n) {
  switch (n->place_) {
    case writer_node::place::waiters:
      waiters_.unlink(n);
      break;
    case writer_node::place::followers:
      followers_.unlink(n);
      break;
    case writer_node::place::normal:
    case writer_node::place::urgent: {
      const lane l = n->place_ == writer_node::place::urgent ? lane::urgent : lane::normal;
      node_list& list = list_of(l);
      if (l == window_lane_) {
        // A node that carries no bytes (a flush, an empty message) can be
        // aborted from the middle of the window in flight: keep the
        // window's count, which on_written walks from the front, exact.
        std::size_t i = 0;
        for (writer_node* m = list.front(); m && i < window_nodes_; m = m->next_, ++i) {
          if (m == n) {
            --window_nodes_;
            break;
          }
        }
      }
      list.unlink(n);
      if (n->kind_ == writer_node::kind::write) {
        pending_bytes_ -= n->size_ - n->written_;
        --pending_writes_;
      }
      break;
    }
    case writer_node::place::none:
      break;
  }
  n->place_ = writer_node::place::none;
  if (n->canceller_)
    n->canceller_->node_ = nullptr;
}

void writer_core::finish_node_locked(writer_node* n, node_list& done) {
  remove_queued_locked(n);
  done.push_back(n);
}

void writer_core::update_writable_locked(node_list& done) {
  if (!writable_ && pending_bytes_ <= low_) {
    set_writable_locked(true);
    while (writer_node* w = waiters_.front()) {
      w->result_ = {};
      finish_node_locked(w, done);
    }
  } else if (writable_ && pending_bytes_ > high_) {
    set_writable_locked(false);
  }
  if (pending_bytes_ == 0)
    disarm_stall_timer_locked();
}

void writer_core::fail_list_locked(node_list& list, std::size_t keep, node_list& done) {
  writer_node* n = list.front();
  for (std::size_t i = 0; i < keep && n; ++i)
    n = n->next_;
  while (n) {
    writer_node* next = n->next_;
    if (n->kind_ == writer_node::kind::close) {
      // A close still queued fails with the error that came first.
      close_done_ = true;
      close_result_ = error_;
      closing_ = false;
    }
    n->result_ = error_;
    finish_node_locked(n, done);
    n = next;
  }
}

void writer_core::fail_locked(const error_code& ec, node_list& done, bool keep_window) {
  if (!error_)
    error_ = ec;
  // Each started message reports the bytes it actually wrote; the others 0.
  // With keep_window, the messages of the write in flight stay: they
  // complete when it returns, with the bytes it reports.
  const std::size_t keep = keep_window ? window_nodes_ : 0;
  fail_list_locked(nodes_, window_lane_ == lane::normal ? keep : 0, done);
  fail_list_locked(urgent_nodes_, window_lane_ == lane::urgent ? keep : 0, done);
  while (writer_node* w = waiters_.front()) {
    w->result_ = error_;
    finish_node_locked(w, done);
  }
  if (!closing_node_) {
    // Calls that joined a close that never ran get the same error; those of
    // a running close wait for its result.
    while (writer_node* f = followers_.front()) {
      f->result_ = error_;
      finish_node_locked(f, done);
    }
  }
  if (!keep_window)
    window_nodes_ = 0;
  if (pending_bytes_ == 0)
    disarm_stall_timer_locked();
}

step_action writer_core::build_window_locked(pump_id id, node_list& done, writer_node*& closing) {
  if (terminal_requested_ && !error_)
    fail_locked(net::error::operation_aborted, done);
  if (closed_ && (!nodes_.empty() || !urgent_nodes_.empty()))
    fail_locked(net::error::operation_aborted, done);
  if (error_ || closed_)
    return step_action::drained;

  node_list& list = list_of(id.l);
  bool solo = false;
  if (id.l == lane::normal && urgent_pending_ && !lending_) {
    // Urgent items go next, but a message cannot be interrupted: finish the
    // one the stream has started, alone, then lend the stream.
    const writer_node* head = nodes_.front();
    if (head && head->segment_ == id.segment && head->written_ != 0) {
      solo = true;
    } else {
      lending_ = true;
      return step_action::lend;
    }
  }

  // Whatever has nothing left to write at the head is done: a flush whose
  // predecessors are all written, a zero-length message.
  while (writer_node* n = list.front()) {
    if (n->segment_ != id.segment || n->kind_ == writer_node::kind::close ||
        n->written_ != n->size_)
      break;
    n->result_ = {};
    if (n->kind_ == writer_node::kind::write)
      ++messages_written_;  // an empty message
    finish_node_locked(n, done);
  }

  if (writer_node* head = list.front();
      head && head->segment_ == id.segment && head->kind_ == writer_node::kind::close) {
    // Everything queued before the close is written: it runs now. It leaves
    // the list (cancel() and close() leave it alone) but keeps its
    // canceller, which forwards signals to the closing operation.
    list.unlink(head);
    head->place_ = writer_node::place::none;
    head->started_ = true;
    closing_node_ = head;
    closing = head;
    window_nodes_ = 0;
    return step_action::close;
  }

  if (window_storage_.size() < max_buffers_)
    window_storage_.resize(max_buffers_);
  window_builder builder(window_storage_, max_buffers_, max_bytes_);
  window_lane_ = id.l;
  window_nodes_ = 0;
  for (writer_node* n = list.front(); n && n->segment_ == id.segment && !builder.full();
       n = n->next_) {
    if (n->kind_ == writer_node::kind::close)
      break;  // written by this pump's next step, once the window before it is
    ++window_nodes_;
    if (n->written_ != n->size_) {
      // Only a message whose bytes are handed to the stream has started; a
      // flush or an empty message in the window stays cancellable.
      n->started_ = true;
      n->ops_->fill(n, n->written_, builder);
      if (!gathering_ || solo)
        break;
    }
  }
  if (builder.bytes() == 0) {
    // The segment is drained: the pump hands its turn on. A later write to
    // this segment needs a new pump.
    for (writer_node* n = list.front(); n && window_nodes_ > 0; n = n->next_, --window_nodes_)
      n->started_ = false;
    window_nodes_ = 0;
    if (id.l == lane::normal) {
      if (id.segment == segment_)
        segment_has_pump_ = false;
    } else if (id.segment == urgent_segment_) {
      urgent_segment_has_pump_ = false;
    }
    return step_action::drained;
  }
  window_ = builder.view();
  return step_action::write;
}

void writer_core::on_written(const error_code& ec, std::size_t n, node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  write_in_flight_ = false;
  node_list& list = list_of(window_lane_);
  // Messages complete strictly in order: once one is left unfinished, the
  // rest of the window (even zero-length ones) waits for the next write.
  bool blocked = false;
  writer_node* node = list.front();
  // Finishing nodes below must not shrink the count being walked.
  const std::size_t window_nodes = std::exchange(window_nodes_, 0);
  for (std::size_t i = 0; i < window_nodes && node; ++i) {
    writer_node* next = node->next_;
    if (!blocked) {
      const std::size_t take = std::min(n, node->size_ - node->written_);
      node->written_ += take;
      pending_bytes_ -= take;
      bytes_written_ += take;
      n -= take;
      // A message all of whose bytes went out succeeded, even if the same
      // write_some then reported an error for what followed.
      if (node->written_ == node->size_) {
        node->result_ = {};
        if (node->kind_ == writer_node::kind::write)
          ++messages_written_;
        finish_node_locked(node, done);
      } else {
        blocked = true;
      }
    }
    if (blocked && node->written_ == 0) {
      node->started_ = false;  // none of it reached the stream: still cancellable
      if (node->cancel_pending_ != net::cancellation_type::none) {
        node->result_ = net::error::operation_aborted;
        finish_node_locked(node, done);
      }
    } else if (node->place_ != writer_node::place::none &&
               (node->cancel_pending_ & net::cancellation_type::terminal) !=
                   net::cancellation_type::none) {
      // Cancelled while gathered, and now partly written: as for any
      // started message, terminal cancellation fails the writer.
      terminal_requested_ = true;
    }
    node = next;
  }
  window_nodes_ = 0;
  if (ec)
    fail_locked(ec, done);
  else if (error_)
    fail_locked(error_, done);  // failed while the write was in flight (stall)
  update_writable_locked(done);
}

void writer_core::on_closed(const error_code& ec, node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  writer_node* n = std::exchange(closing_node_, nullptr);
  if (!n)
    return;  // the context shut down, destroying it
  if (n->canceller_)
    n->canceller_->node_ = nullptr;
  n->result_ = ec;
  done.push_back(n);
  close_done_ = true;
  close_result_ = ec;
  closing_ = false;
  while (writer_node* f = followers_.front()) {
    f->result_ = ec;
    finish_node_locked(f, done);
  }
  // Closed, or failed by its closing operation: sticky either way.
  if (!error_)
    error_ = ec ? ec : error_code(net::error::shut_down);
  fail_locked(error_, done);
}

void writer_core::fail(const error_code& ec) {
  node_list done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_locked(ec, done);
  }
  done.complete_all(completion_mode::post);
}

std::size_t writer_core::cancel(node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::size_t count = 0;
  for (node_list* list : {&nodes_, &urgent_nodes_}) {
    for (writer_node* n = list->front(); n;) {
      writer_node* next = n->next_;
      if (!n->started_ && n->kind_ == writer_node::kind::write) {
        n->result_ = net::error::operation_aborted;
        finish_node_locked(n, done);
        ++count;
      }
      n = next;
    }
  }
  update_writable_locked(done);
  return count;
}

void writer_core::close(node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  for (node_list* list : {&nodes_, &urgent_nodes_}) {
    for (writer_node* n = list->front(); n;) {
      writer_node* next = n->next_;
      if (!n->started_) {
        n->result_ = net::error::operation_aborted;
        finish_node_locked(n, done);
      }
      n = next;
    }
  }
  for (node_list* list : {&waiters_, &followers_}) {
    while (writer_node* w = list->front()) {
      w->result_ = net::error::operation_aborted;
      finish_node_locked(w, done);
    }
  }
  // Nothing may wait on the stream for a writer that is gone: the write in
  // flight, if any, returns when the stream is closed.
  disarm_stall_timer_locked();
}

void writer_core::shutdown() noexcept {
  node_list doomed;
  held_completion* held = nullptr;
  writer_node* closing = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    for (node_list* list : {&nodes_, &urgent_nodes_, &waiters_, &followers_}) {
      while (writer_node* n = list->front())
        finish_node_locked(n, doomed);
    }
    window_nodes_ = 0;
    if ((closing = std::exchange(closing_node_, nullptr)) && closing->canceller_)
      closing->canceller_->node_ = nullptr;
    held = std::exchange(held_, nullptr);
  }
  // Destroyed outside the lock: handlers' destructors run user code.
  if (closing)
    closing->destroy();
  if (held)
    held->destroy();
  // doomed's destructor destroys the rest.
}

void writer_core::set_watermarks(std::size_t low, std::size_t high, node_list& done) {
  if (low > high)
    throw std::invalid_argument("serq::queued_writer::set_watermarks: low exceeds high");
  std::lock_guard<std::mutex> lock(mutex_);
  low_ = low;
  high_ = high;
  if (writable_ && pending_bytes_ > high_)
    set_writable_locked(false);
  update_writable_locked(done);
}

void writer_core::set_gathering(bool on) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  gathering_ = on;
}

void writer_core::set_gather_limits(std::size_t max_buffers, std::size_t max_bytes) {
  if (max_buffers == 0 || max_bytes == 0)
    throw std::invalid_argument("serq::queued_writer::set_gather_limits: limits must be > 0");
  std::lock_guard<std::mutex> lock(mutex_);
  // The storage grows when the next window is cut: a window in flight
  // points into it.
  max_buffers_ = max_buffers;
  max_bytes_ = max_bytes;
}

// ---- the stall deadline --------------------------------------------------------

void writer_core::set_timer_executor(const net::any_io_executor& ex) {
  std::lock_guard<std::mutex> lock(mutex_);
  timer_executor_ = ex;
}

void writer_core::set_stall_timeout(clock::duration timeout) {
  std::lock_guard<std::mutex> lock(mutex_);
  disarm_stall_timer_locked();
  stall_timeout_ = timeout > clock::duration::zero() ? timeout : clock::duration::zero();
  if (stall_timeout_ != clock::duration::zero() && write_in_flight_) {
    // The write in flight gets the new deadline from now: it was not
    // watched, or watched for another timeout.
    write_started_ = clock::now();
    arm_stall_timer_locked(write_started_ + stall_timeout_);
  }
}

void writer_core::note_write_started_locked() {
  write_in_flight_ = true;
  ++write_calls_;
  if (stall_timeout_ == clock::duration::zero())
    return;
  // Each write_some that returns has made progress (or failed): the clock
  // restarts with the next one. The timer already armed, if any, finds the
  // new start when it fires and waits for the remainder.
  write_started_ = clock::now();
  if (!timer_armed_)
    arm_stall_timer_locked(write_started_ + stall_timeout_);
}

void writer_core::arm_stall_timer_locked(clock::time_point deadline) {
  if (!stall_timer_) {
    if (!timer_executor_)
      return;  // a state machine without a stream (tests): nothing to time
    stall_timer_.emplace(timer_executor_);
  }
  stall_timer_->expires_at(deadline);
  timer_armed_ = true;
  stall_timer_->async_wait(
      stall_check{std::static_pointer_cast<writer_core>(shared_from_this()), ++timer_generation_});
}

void writer_core::disarm_stall_timer_locked() noexcept {
  if (!timer_armed_)
    return;
  timer_armed_ = false;
  ++timer_generation_;  // the cancelled wait's handler finds itself stale
  try {
    stall_timer_->cancel();
  } catch (...) {
    // The wait then completes at its deadline, stale, and does nothing.
  }
}

void writer_core::on_stall_timer(std::uint64_t generation) {
  node_list done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (generation != timer_generation_)
      return;  // cancelled or superseded
    timer_armed_ = false;
    if (stall_timeout_ == clock::duration::zero() || error_ || closed_ || !write_in_flight_)
      return;  // the next write_some arms it again
    const clock::time_point deadline = write_started_ + stall_timeout_;
    if (clock::now() < deadline) {
      arm_stall_timer_locked(deadline);
      return;
    }
    // The stream took nothing for the whole timeout. The writer fails; the
    // write in flight is cancelled and its messages complete when it
    // returns, with the bytes it reports; every other request now.
    fail_locked(net::error::timed_out, done, true);
    write_signal_.emit(net::cancellation_type::terminal);
  }
  done.complete_all(completion_mode::dispatch);
}

void writer_core::set_writable_locked(bool on) noexcept {
  writable_ = on;
  if (on)
    time_above_high_ += clock::now() - above_high_since_;
  else
    above_high_since_ = clock::now();
}

writer_counters writer_core::counters() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  writer_counters c;
  c.messages = messages_written_;
  c.bytes = bytes_written_;
  c.write_calls = write_calls_;
  c.pending_bytes = pending_bytes_;
  c.peak_pending_bytes = peak_pending_bytes_;
  c.time_above_high_watermark = time_above_high_;
  if (!writable_)
    c.time_above_high_watermark += clock::now() - above_high_since_;
  return c;
}

std::size_t writer_core::pending_bytes() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_bytes_;
}

std::size_t writer_core::size() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_writes_;
}

bool writer_core::writable() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return writable_ && !error_ && !closed_ && !closing_;
}

error_code writer_core::error() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

}  // namespace detail
SERQ_NAMESPACE_END
