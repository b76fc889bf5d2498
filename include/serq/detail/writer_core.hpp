//
// serq/detail/writer_core.hpp
//
// The non-template state machine behind queued_writer: the FIFO of
// messages, gathering them into one write window, attributing written bytes
// to messages, byte backpressure, and the error and cancellation policy. It
// does no I/O; the templated pump in impl/queued_writer.hpp feeds it the
// results of write_some calls. Compiled once into libserq.
//

#ifndef SERQ_DETAIL_WRITER_CORE_HPP
#define SERQ_DETAIL_WRITER_CORE_HPP

#include <serq/config.hpp>
#include <serq/detail/completion_mode.hpp>
#include <serq/detail/intrusive_list.hpp>
#include <serq/serialized_queue_service.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

SERQ_NAMESPACE_BEGIN
namespace detail {

class writer_core;
class node_canceller;

// A bounded run of buffers handed to one write_some call. A view, so the
// stream's operation copies two pointers, not a container.
class buffer_window {
 public:
  using value_type = net::const_buffer;
  using const_iterator = const net::const_buffer*;

  const_iterator begin() const noexcept { return data_; }
  const_iterator end() const noexcept { return data_ + count_; }

 private:
  friend class writer_core;
  friend class window_builder;
  const net::const_buffer* data_ = nullptr;
  std::size_t count_ = 0;
};

// Appends buffers to the window under construction, within its limits.
class window_builder {
 public:
  window_builder(std::vector<net::const_buffer>& storage, std::size_t max_buffers,
                 std::size_t max_bytes) noexcept
      : storage_(storage), max_buffers_(max_buffers), max_bytes_(max_bytes) {}

  bool full() const noexcept { return count_ == max_buffers_ || bytes_ == max_bytes_; }
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t count() const noexcept { return count_; }

  // Appends up to the window's remaining room of b; returns what was taken.
  std::size_t append(net::const_buffer b) noexcept;

  buffer_window view() const noexcept;

 private:
  std::vector<net::const_buffer>& storage_;
  std::size_t max_buffers_;
  std::size_t max_bytes_;
  std::size_t count_ = 0;
  std::size_t bytes_ = 0;
};

// A queued write, flush or wait_writable request, type-erased through a
// static table of functions.
class writer_node {
 public:
  enum class kind : unsigned char { write, flush, waiter };

  struct ops {
    // Frees the node and invokes the handler with (ec, bytes) as mode says.
    void (*complete)(writer_node*, error_code, std::size_t, completion_mode mode);
    // Frees the node without invoking its handler.
    void (*destroy)(writer_node*) noexcept;
    // Appends the not yet written bytes, starting offset bytes in.
    void (*fill)(const writer_node*, std::size_t offset, window_builder&) noexcept;
  };

  writer_node(const writer_node&) = delete;
  writer_node& operator=(const writer_node&) = delete;

  kind node_kind() const noexcept { return kind_; }
  std::size_t size() const noexcept { return size_; }

  // Installs the cancellation handler in the user's slot. Called from the
  // initiating function.
  void attach_canceller(net::cancellation_slot slot, std::shared_ptr<writer_core> core);

  void complete(completion_mode mode) { ops_->complete(this, result_, written_, mode); }
  void destroy() noexcept { ops_->destroy(this); }

 protected:
  writer_node(const ops* o, kind k, std::size_t size) noexcept : ops_(o), size_(size), kind_(k) {}
  ~writer_node() = default;

  void set_size(std::size_t s) noexcept { size_ = s; }

 private:
  friend class writer_core;
  template <class>
  friend class intrusive_list;
  friend class node_canceller;

  const ops* ops_;
  std::size_t size_;
  std::size_t written_ = 0;
  std::uint64_t segment_ = 0;
  error_code result_;
  net::cancellation_type_t cancel_pending_ = net::cancellation_type::none;
  node_canceller* canceller_ = nullptr;
  writer_node* next_ = nullptr;
  writer_node* prev_ = nullptr;
  kind kind_;
  bool started_ = false;
  bool queued_ = false;
};

// A list of writer nodes that owns them: nodes still in it when it is
// destroyed are destroyed without their handlers being invoked.
class node_list : public intrusive_list<writer_node> {
 public:
  node_list() = default;
  node_list(node_list&&) noexcept = default;
  // The nodes this list held leave with o (and are destroyed with it).
  node_list& operator=(node_list&& o) noexcept {
    intrusive_list::operator=(std::move(o));
    return *this;
  }
  ~node_list();

  // Completes every node with its stored result, in order.
  void complete_all(completion_mode mode);
};

// Lives in a write's cancellation slot: removes a queued write; forwards a
// terminal signal for a started one to the stream operation.
class node_canceller {
 public:
  node_canceller(std::shared_ptr<writer_core> core, writer_node* n) noexcept
      : core_(std::move(core)), node_(n) {}
  void operator()(net::cancellation_type_t type);

 private:
  friend class writer_core;
  std::shared_ptr<writer_core> core_;
  writer_node* node_;  // guarded by core_->mutex_; null once completed
};

class writer_core : public service_member {
 public:
  static constexpr std::size_t default_low_watermark = 32 * 1024;
  static constexpr std::size_t default_high_watermark = 64 * 1024;
  static constexpr std::size_t default_max_buffers = 64;
  static constexpr std::size_t default_max_bytes = 256 * 1024;

  writer_core();
  ~writer_core();

  // Adds a write or a flush. If the writer has failed or closed, the node is
  // returned in `rejected` with its result set. When the current segment has
  // no pump yet, start_pump(segment) is called under the lock, so pumps and
  // composed operations reach the serialized queue in the order of the calls.
  template <class StartPump>
  void add(writer_node* n, node_list& rejected, StartPump&& start_pump) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (add_locked(n, rejected))
      start_pump(segment_);
  }

  // Orders a composed operation after every write added so far: calls
  // enqueue() under the lock unless the writer has failed, in which case it
  // returns the error.
  template <class Enqueue>
  error_code add_operation(Enqueue&& enqueue) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_)
      return error_;
    if (closed_)
      return net::error::operation_aborted;
    if (segment_has_pump_) {
      ++segment_;
      segment_has_pump_ = false;
    }
    enqueue();
    return {};
  }

  // Adds an async_wait_writable request; returned in `ready` when it can
  // complete at once (writable, failed or closed).
  void add_waiter(writer_node* n, node_list& ready);

  // The pump for `segment` has the queue's turn: builds the next window of
  // that segment and calls start_write(window) under the lock. Returns false
  // when the segment is drained (the pump must release its turn). Nodes that
  // completed without a write (zero-length, or failed) go to `done`.
  template <class StartWrite>
  bool next_write(std::uint64_t segment, node_list& done, StartWrite&& start_write) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!build_window_locked(segment, done))
      return false;
    start_write(window_);
    return true;
  }

  // Attributes the result of one write_some to the messages in order.
  void on_written(const error_code& ec, std::size_t n, node_list& done);

  // The stream operation's cancellation signal; emitted (under the lock)
  // by a terminal cancellation of a started write.
  net::cancellation_slot write_slot() noexcept { return write_signal_.slot(); }

  // Fails the writer with ec, as a write error would.
  void fail(const error_code& ec);

  std::size_t cancel(node_list& done);
  // The writer object is going away: queued requests abort; started writes
  // are completed by the outstanding write_some's result.
  void close(node_list& done);
  void shutdown() noexcept override;

  void set_watermarks(std::size_t low, std::size_t high, node_list& done);
  void set_gathering(bool on) noexcept;
  void set_gather_limits(std::size_t max_buffers, std::size_t max_bytes);

  std::size_t pending_bytes() const noexcept;
  std::size_t size() const noexcept;
  bool writable() const noexcept;
  error_code error() const noexcept;

 private:
  friend class node_canceller;

  bool add_locked(writer_node* n, node_list& rejected);
  bool build_window_locked(std::uint64_t segment, node_list& done);
  void fail_locked(const error_code& ec, node_list& done);
  void remove_queued_locked(writer_node* n);
  void finish_node_locked(writer_node* n, node_list& done);
  void update_writable_locked(node_list& done);
  void cancel_node(writer_node* n, net::cancellation_type_t type);

  mutable std::mutex mutex_;
  node_list nodes_;    // writes and flushes, in order
  node_list waiters_;  // async_wait_writable
  std::vector<net::const_buffer> window_storage_;
  buffer_window window_;
  std::size_t window_nodes_ = 0;  // nodes (from the front) the window touches
  std::size_t pending_bytes_ = 0;
  std::size_t pending_writes_ = 0;
  std::size_t low_ = default_low_watermark;
  std::size_t high_ = default_high_watermark;
  std::size_t max_buffers_ = default_max_buffers;
  std::size_t max_bytes_ = default_max_bytes;
  std::uint64_t segment_ = 0;
  bool segment_has_pump_ = false;
  bool gathering_ = true;
  bool writable_ = true;
  bool closed_ = false;
  bool terminal_requested_ = false;
  error_code error_;
  net::cancellation_signal write_signal_;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_WRITER_CORE_HPP
