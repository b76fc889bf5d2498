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
    if (!n->started_) {
      core_->remove_queued_locked(n);
      n->result_ = net::error::operation_aborted;
      done.push_back(n);
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

writer_core::writer_core() : window_storage_(default_max_buffers) {}

writer_core::~writer_core() = default;

bool writer_core::add_locked(writer_node* n, node_list& rejected) {
  if (closed_ || error_) {
    n->result_ = closed_ ? error_code(net::error::operation_aborted) : error_;
    rejected.push_back(n);
    return false;
  }
  n->segment_ = segment_;
  n->queued_ = true;
  if (n->canceller_)
    n->canceller_->node_ = n;
  nodes_.push_back(n);
  if (n->kind_ == writer_node::kind::write) {
    pending_bytes_ += n->size_;
    ++pending_writes_;
    if (writable_ && pending_bytes_ > high_)
      writable_ = false;
  }
  if (segment_has_pump_)
    return false;
  segment_has_pump_ = true;
  return true;
}

void writer_core::add_waiter(writer_node* n, node_list& ready) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_ || error_ || writable_) {
    n->result_ = closed_  ? error_code(net::error::operation_aborted)
                 : error_ ? error_
                          : error_code();
    ready.push_back(n);
    return;
  }
  n->queued_ = true;
  if (n->canceller_)
    n->canceller_->node_ = n;
  waiters_.push_back(n);
}

void writer_core::remove_queued_locked(writer_node* n) {
  if (n->kind_ == writer_node::kind::waiter) {
    waiters_.unlink(n);
  } else {
    // A node that carries no bytes (a flush, an empty message) can be
    // aborted from the middle of the window in flight: keep the window's
    // count, which on_written walks from the front, exact.
    std::size_t i = 0;
    for (writer_node* m = nodes_.front(); m && i < window_nodes_; m = m->next_, ++i) {
      if (m == n) {
        --window_nodes_;
        break;
      }
    }
    nodes_.unlink(n);
    if (n->kind_ == writer_node::kind::write) {
      pending_bytes_ -= n->size_ - n->written_;
      --pending_writes_;
    }
  }
  n->queued_ = false;
  if (n->canceller_)
    n->canceller_->node_ = nullptr;
}

void writer_core::finish_node_locked(writer_node* n, node_list& done) {
  remove_queued_locked(n);
  done.push_back(n);
}

void writer_core::update_writable_locked(node_list& done) {
  if (!writable_ && pending_bytes_ <= low_) {
    writable_ = true;
    while (writer_node* w = waiters_.front()) {
      w->result_ = {};
      finish_node_locked(w, done);
    }
  } else if (writable_ && pending_bytes_ > high_) {
    writable_ = false;
  }
}

void writer_core::fail_locked(const error_code& ec, node_list& done) {
  if (!error_)
    error_ = ec;
  // Each started message reports the bytes it actually wrote; the others 0.
  while (writer_node* n = nodes_.front()) {
    n->result_ = error_;
    finish_node_locked(n, done);
  }
  while (writer_node* w = waiters_.front()) {
    w->result_ = error_;
    finish_node_locked(w, done);
  }
  window_nodes_ = 0;
}

bool writer_core::build_window_locked(std::uint64_t segment, node_list& done) {
  if (terminal_requested_ && !error_)
    fail_locked(net::error::operation_aborted, done);
  if (closed_ && !nodes_.empty())
    fail_locked(net::error::operation_aborted, done);
  if (error_ || closed_)
    return false;

  // Whatever has nothing left to write at the head is done: a flush whose
  // predecessors are all written, a zero-length message.
  while (writer_node* n = nodes_.front()) {
    if (n->segment_ != segment || n->written_ != n->size_)
      break;
    n->result_ = {};
    finish_node_locked(n, done);
  }

  if (window_storage_.size() < max_buffers_)
    window_storage_.resize(max_buffers_);
  window_builder builder(window_storage_, max_buffers_, max_bytes_);
  window_nodes_ = 0;
  for (writer_node* n = nodes_.front(); n && n->segment_ == segment && !builder.full();
       n = n->next_) {
    ++window_nodes_;
    if (n->written_ != n->size_) {
      // Only a message whose bytes are handed to the stream has started; a
      // flush or an empty message in the window stays cancellable.
      n->started_ = true;
      n->ops_->fill(n, n->written_, builder);
      if (!gathering_)
        break;
    }
  }
  if (builder.bytes() == 0) {
    // The segment is drained: the pump hands its turn on. A later write to
    // this segment needs a new pump.
    for (writer_node* n = nodes_.front(); n && window_nodes_ > 0; n = n->next_, --window_nodes_)
      n->started_ = false;
    window_nodes_ = 0;
    if (segment == segment_)
      segment_has_pump_ = false;
    return false;
  }
  window_ = builder.view();
  return true;
}

void writer_core::on_written(const error_code& ec, std::size_t n, node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Messages complete strictly in order: once one is left unfinished, the
  // rest of the window (even zero-length ones) waits for the next write.
  bool blocked = false;
  writer_node* node = nodes_.front();
  // Finishing nodes below must not shrink the count being walked.
  const std::size_t window_nodes = std::exchange(window_nodes_, 0);
  for (std::size_t i = 0; i < window_nodes && node; ++i) {
    writer_node* next = node->next_;
    if (!blocked) {
      const std::size_t take = std::min(n, node->size_ - node->written_);
      node->written_ += take;
      pending_bytes_ -= take;
      n -= take;
      // A message all of whose bytes went out succeeded, even if the same
      // write_some then reported an error for what followed.
      if (node->written_ == node->size_) {
        node->result_ = {};
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
    } else if (node->queued_ && (node->cancel_pending_ & net::cancellation_type::terminal) !=
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
  update_writable_locked(done);
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
  for (writer_node* n = nodes_.front(); n;) {
    writer_node* next = n->next_;
    if (!n->started_ && n->kind_ == writer_node::kind::write) {
      n->result_ = net::error::operation_aborted;
      finish_node_locked(n, done);
      ++count;
    }
    n = next;
  }
  update_writable_locked(done);
  return count;
}

void writer_core::close(node_list& done) {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  for (writer_node* n = nodes_.front(); n;) {
    writer_node* next = n->next_;
    if (!n->started_) {
      n->result_ = net::error::operation_aborted;
      finish_node_locked(n, done);
    }
    n = next;
  }
  while (writer_node* w = waiters_.front()) {
    w->result_ = net::error::operation_aborted;
    finish_node_locked(w, done);
  }
}

void writer_core::shutdown() noexcept {
  node_list doomed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    while (writer_node* n = nodes_.front())
      finish_node_locked(n, doomed);
    while (writer_node* w = waiters_.front())
      finish_node_locked(w, doomed);
    window_nodes_ = 0;
  }
  // doomed's destructor destroys the handlers, outside the lock.
}

void writer_core::set_watermarks(std::size_t low, std::size_t high, node_list& done) {
  if (low > high)
    throw std::invalid_argument("serq::queued_writer::set_watermarks: low exceeds high");
  std::lock_guard<std::mutex> lock(mutex_);
  low_ = low;
  high_ = high;
  if (pending_bytes_ > high_)
    writable_ = false;
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
  return writable_ && !error_ && !closed_;
}

error_code writer_core::error() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

}  // namespace detail
SERQ_NAMESPACE_END
