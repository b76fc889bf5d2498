//
// serq/detail/writer_core.hpp
//
// The non-template state machine behind queued_writer: the FIFOs of messages
// (normal and urgent), gathering them into one write window, attributing
// written bytes to messages, byte backpressure, the close, the stall
// deadline, and the error and cancellation policy. It does no I/O of its
// own (the stall timer only wakes it up); the templated pumps in
// impl/queued_writer.hpp feed it the results of write_some calls. Compiled
// once into libserq.
//

#ifndef SERQ_DETAIL_WRITER_CORE_HPP
#define SERQ_DETAIL_WRITER_CORE_HPP

#include <serq/config.hpp>
#include <serq/detail/back_linked_list.hpp>
#include <serq/detail/completion_mode.hpp>
#include <serq/detail/core_ref.hpp>
#include <serq/detail/handler_alloc.hpp>
#include <serq/detail/queue_core.hpp>
#include <serq/detail/small_mutex.hpp>
#include <serq/detail/work.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/turn.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

class writer_core;
class node_canceller;

// A counted reference to a writer's shared state. writer_core counts its
// own references (four bytes beside its lock) instead of being held by
// shared_ptr: no control block and no enable_shared_from_this in every
// writer. T is writer_core or a class derived from it; a state is made with
// make_writer_ref, which adopts the reference it starts with.
template <class T>
class writer_ref {
 public:
  writer_ref() noexcept = default;
  writer_ref(std::nullptr_t) noexcept {}
  writer_ref(const writer_ref& o) noexcept : p_(o.p_) {
    if (p_)
      p_->add_ref();
  }
  writer_ref(writer_ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  template <class U, std::enable_if_t<std::is_convertible_v<U*, T*>, int> = 0>
  writer_ref(const writer_ref<U>& o) noexcept : p_(o.get()) {
    if (p_)
      p_->add_ref();
  }
  template <class U, std::enable_if_t<std::is_convertible_v<U*, T*>, int> = 0>
  writer_ref(writer_ref<U>&& o) noexcept : p_(o.detach()) {}
  writer_ref& operator=(writer_ref o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~writer_ref() {
    if (p_)
      p_->drop_ref();
  }

  // Takes over the reference p holds (a new state's first).
  static writer_ref adopt(T* p) noexcept {
    writer_ref r;
    r.p_ = p;
    return r;
  }
  // One more reference to *p.
  static writer_ref share(T* p) noexcept {
    p->add_ref();
    return adopt(p);
  }

  T* get() const noexcept { return p_; }
  T* operator->() const noexcept { return p_; }
  T& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  std::uint32_t use_count() const noexcept { return p_ ? p_->use_count() : 0; }
  void swap(writer_ref& o) noexcept { std::swap(p_, o.p_); }
  // Lets go of the pointer without dropping its reference.
  T* detach() noexcept { return std::exchange(p_, nullptr); }

 private:
  T* p_ = nullptr;
};

template <class T, class... Args>
writer_ref<T> make_writer_ref(Args&&... args) {
  return writer_ref<T>::adopt(new T(std::forward<Args>(args)...));
}

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

// Where windows are cut: a few buffers inside the writer (a window of one
// message, the common case when nothing waits), and an array made when a
// window needs more, kept while the writer is busy and freed when it has
// nothing left to write (writer_core::release_window). A new array has the
// gather limit's size when that is at most direct_size buffers (the default
// limit); under a larger limit it starts at direct_size and doubles as
// windows need more, so a limit set high "to have none" costs only what the
// windows use. (An array kept from an earlier limit, or the thread's spare,
// may be larger, and is used as it is.)
class window_storage {
 public:
  static constexpr std::size_t inline_size = 4;
  static constexpr std::size_t direct_size = 64;

  // The array size a window of `capacity` buffers grows to under a limit of
  // max_buffers (> capacity).
  static std::size_t next_size(std::size_t capacity, std::size_t max_buffers) noexcept {
    if (max_buffers <= direct_size)
      return max_buffers;
    const std::size_t doubled = capacity < direct_size ? direct_size : 2 * capacity;
    return doubled < max_buffers ? doubled : max_buffers;
  }

  net::const_buffer* initial(std::size_t& capacity) noexcept;
  // Storage for up to `size` buffers holding the first `count` of `data`;
  // null if it cannot be allocated (the window stays as it is).
  net::const_buffer* grow(const net::const_buffer* data, std::size_t count,
                          std::size_t size) noexcept;
  void release() noexcept;
  std::size_t heap_bytes() const noexcept { return heap_size_ * sizeof(net::const_buffer); }
  std::size_t heap_size() const noexcept { return heap_size_; }

 private:
  net::const_buffer inline_[inline_size];
  std::unique_ptr<net::const_buffer[]> heap_;
  std::size_t heap_size_ = 0;
};

// Appends buffers to the window under construction, within its limits.
class window_builder {
 public:
  window_builder(window_storage& storage, std::size_t max_buffers, std::size_t max_bytes) noexcept
      : storage_(storage), max_buffers_(max_buffers), max_bytes_(max_bytes) {
    data_ = storage_.initial(capacity_);
  }

  bool full() const noexcept {
    return count_ == max_buffers_ || bytes_ == max_bytes_ || (count_ == capacity_ && stuck_);
  }
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t count() const noexcept { return count_; }

  // Appends up to the window's remaining room of b; returns what was taken.
  std::size_t append(net::const_buffer b) noexcept;

  buffer_window view() const noexcept;

 private:
  window_storage& storage_;
  net::const_buffer* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t max_buffers_;
  std::size_t max_bytes_;
  std::size_t count_ = 0;
  std::size_t bytes_ = 0;
  bool stuck_ = false;  // the storage could not grow: the window ends at its capacity
};

// The writer's two FIFOs. Each has its own pumps, each holding a turn of its
// own serialized queue: the normal one of the writer, the urgent one of a
// second queue that runs only while a holder of the normal queue's turn
// lends it the stream (see writer_core::next_step).
enum class lane : unsigned char { normal, urgent };

// Names a pump: its lane and the segment of that lane it writes. An early
// pump's first write_some was started by the call that found the writer idle
// (writer_core::add_write), usually before the pump held its turn: the turn's
// arrival and that write's completion meet, and the later of the two goes on.
// When the call took the idle queue's turn itself (take_idle_queue_turn), the
// turn's half of that meeting is in before the write starts.
struct pump_id {
  lane l = lane::normal;
  std::uint32_t segment = 0;
  bool early = false;
};

// What a pump does next (writer_core::next_step).
enum class step_action : unsigned char {
  write,    // a write_some was started
  drained,  // nothing left in its segment: release the turn
  lend,     // urgent items wait: the urgent queue was started; resume when it is quiet
  close,    // the close is due: run it
};

// The completion of the writer's stream operation (a write_some, or the
// closing operation) that arrived inside one of the writer's emits of its
// write or close signal: the stream's cancellation handler completed the
// operation right there, which Asio allows. The emit runs under the writer's
// lock, which the completion takes, so it is kept here and run by the emitter
// once it has released the lock (writer_core::resume_deferred), on the same
// thread: as if the signal had been emitted without the lock, and without a
// post (nothing to allocate).
struct deferred_completion {
  enum class kind : unsigned char { none, write, close };
  kind what = kind::none;
  pump_id id{};
  error_code ec;
  std::size_t n = 0;

  explicit operator bool() const noexcept { return what != kind::none; }
};

// A queued write, flush, close or wait_writable request, type-erased
// through a static table of functions. Four words: a request whose handler
// and bytes take up to five more (a one-pointer callback and a
// std::string) fits the 80-byte block of Asio's recycling allocator. What
// only the writer needs lives in the writer: the bytes written of a partly
// written message (only a lane's head can be one), the error a failed
// request reports (the writer's, which never changes once set), where the
// runs of writes between composed operations end (segment_mark nodes, one
// per boundary), the back link a cancelled request is unlinked by (in its
// canceller; only a request with a canceller leaves from the middle of a
// list at random), and the executor of handlers that have none of their own.
class writer_node {
 public:
  enum class kind : unsigned char { write, flush, waiter, close, mark };

  // The longest message: its length shares a word with the node's state.
  static constexpr std::uint64_t max_size = (std::uint64_t{1} << 48) - 1;

  struct ops {
    // Frees the node and invokes the handler with (ec, bytes) as mode says;
    // core is the writer the node was queued on (its executor is the
    // handler's unless the handler has one of its own).
    void (*complete)(writer_node*, const writer_core& core, error_code, std::size_t,
                     completion_mode mode);
    // Frees the node without invoking its handler.
    void (*destroy)(writer_node*) noexcept;
    // Appends the not yet written bytes, starting offset bytes in.
    void (*fill)(const writer_node*, std::size_t offset, window_builder&) noexcept;
  };

  writer_node(const writer_node&) = delete;
  writer_node& operator=(const writer_node&) = delete;

  kind node_kind() const noexcept { return static_cast<kind>(kind_); }

  // Installs the cancellation handler in the user's slot. Called from the
  // initiating function.
  void attach_canceller(net::cancellation_slot slot, writer_ref<writer_core> core);

  void destroy() noexcept { ops_->destroy(this); }

 protected:
  writer_node(const ops* o, kind k, std::size_t size) noexcept
      : ops_(o),
        size_(0),
        kind_(static_cast<unsigned char>(k)),
        place_(0),
        outcome_(0),
        started_(0),
        cancel_(0),
        too_long_(0) {
    set_size(size);
  }
  ~writer_node() = default;

  // A message longer than max_size is refused (net::error::message_size).
  void set_size(std::size_t s) noexcept {
    too_long_ = s > max_size;
    size_ = too_long_ ? 0 : s;
  }

 private:
  friend class writer_core;
  friend class node_list;
  friend class node_canceller;
  template <class>
  friend class back_linked_list;

  // Which list of the core holds the node.
  enum class place : unsigned char { none, normal, urgent, waiters, followers };
  // How a finished request ended: its error is derived from the writer's
  // state when it completes (writer_core::result_of).
  enum class outcome : unsigned char {
    success,
    aborted,
    shut_down,
    failed,
    close_result,
    too_long,
    no_memory  // the writer could not allocate its busy state
  };

  place where() const noexcept { return static_cast<place>(place_); }
  void set_place(place p) noexcept { place_ = static_cast<unsigned char>(p); }
  outcome result() const noexcept { return static_cast<outcome>(outcome_); }
  void set_outcome(outcome o) noexcept { outcome_ = static_cast<unsigned char>(o); }
  bool started() const noexcept { return started_ != 0; }
  void set_started(bool on) noexcept { started_ = on; }
  // The signals received while gathered into the write in flight
  // (terminal, partial, total: three bits).
  net::cancellation_type_t cancel_pending() const noexcept {
    return static_cast<net::cancellation_type_t>(cancel_);
  }
  void add_cancel_pending(net::cancellation_type_t t) noexcept {
    cancel_ = cancel_ | (static_cast<unsigned>(t) & 7u);
  }

  const ops* ops_;
  writer_node* next_ = nullptr;
  node_canceller* canceller_ = nullptr;  // while queued, if the handler has a slot
  // While queued: the message's length. Once finished: the bytes it wrote,
  // which its handler receives.
  std::uint64_t size_ : 48;
  std::uint64_t kind_ : 3;
  std::uint64_t place_ : 3;
  std::uint64_t outcome_ : 3;
  std::uint64_t started_ : 1;
  std::uint64_t cancel_ : 3;
  std::uint64_t too_long_ : 1;
};

// Where a composed operation divides a lane's writes: the writes after it
// (segment `segment`) belong to the pump queued after that operation. A pump
// drops the marks at the front that start its own segment or an earlier one
// and stops at the next.
class segment_mark final : public writer_node {
 public:
  explicit segment_mark(std::uint32_t segment) noexcept
      : writer_node(&table, kind::mark, 0), segment_(segment) {}

  std::uint32_t segment() const noexcept { return segment_; }

 private:
  static void do_complete(writer_node* n, const writer_core&, error_code, std::size_t,
                          completion_mode) {
    delete static_cast<segment_mark*>(n);
  }
  static void do_destroy(writer_node* n) noexcept { delete static_cast<segment_mark*>(n); }
  static void do_fill(const writer_node*, std::size_t, window_builder&) noexcept {}
  static constexpr ops table{&do_complete, &do_destroy, &do_fill};

  std::uint32_t segment_;
};

// A FIFO of writer nodes that owns them: nodes still in it when it is
// destroyed are destroyed without their handlers being invoked. cancel(),
// close() and failures walk their lists and unlink with the predecessor; a
// cancelled node has its back link in its canceller.
class node_list : public back_linked_list<writer_node> {
 public:
  node_list() = default;
  node_list(node_list&&) noexcept = default;
  // Swaps: the nodes this list held leave with o (and are destroyed with it).
  node_list& operator=(node_list&& o) noexcept {
    back_linked_list::operator=(std::move(o));
    return *this;
  }
  ~node_list();

  // Completes every node with its result, in order. core is the writer the
  // nodes were queued on; it must be alive.
  void complete_all(const writer_core& core, completion_mode mode);
};

// Lives in a request's cancellation slot: removes a queued request; forwards
// a terminal signal for a started write to the stream operation, and any
// signal for a started close to the closing operation.
class node_canceller {
 public:
  node_canceller(writer_ref<writer_core> core, writer_node* n) noexcept
      : core_(std::move(core)), node_(n) {}
  void operator()(net::cancellation_type_t type);

 private:
  friend class writer_core;
  template <class>
  friend class back_linked_list;
  writer_ref<writer_core> core_;
  writer_node* node_;            // guarded by core_->mutex_; null once completed
  writer_node* prev_ = nullptr;  // node_'s back link in its list (core_->mutex_)
};

// A composed operation whose turn came while urgent items were waiting. It
// runs in the urgent queue behind them, and its result is held here until
// that queue is quiet again: only then does the writer's queue move on.
class held_completion {
 public:
  held_completion(const held_completion&) = delete;
  held_completion& operator=(const held_completion&) = delete;

  // Frees this and invokes the held handler with the stored result.
  void finish() { finish_(this); }
  // Frees this without invoking the handler.
  void destroy() noexcept { destroy_(this); }

 protected:
  using finish_fn = void (*)(held_completion*);
  using destroy_fn = void (*)(held_completion*) noexcept;
  held_completion(finish_fn f, destroy_fn d) noexcept : finish_(f), destroy_(d) {}
  ~held_completion() = default;

 private:
  finish_fn finish_;
  destroy_fn destroy_;
};

// A snapshot of a writer's counters (queued_writer::stats()).
struct writer_counters {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::uint64_t write_calls = 0;
  std::size_t pending_bytes = 0;
  std::size_t peak_pending_bytes = 0;
  std::chrono::steady_clock::duration time_above_high_watermark{};
};

class writer_core : public service_member {
 public:
  static constexpr std::size_t default_low_watermark = 32 * 1024;
  static constexpr std::size_t default_high_watermark = 64 * 1024;
  static constexpr std::size_t default_max_buffers = 64;
  static constexpr std::size_t default_max_bytes = 256 * 1024;

  using clock = std::chrono::steady_clock;

  writer_core();
  ~writer_core();

  // Adds a write or a flush. If the writer has failed, closed or is closing,
  // the node is returned in `rejected` with its result set. When the current
  // segment has no pump yet, start_pump(segment) is called under the lock, so
  // pumps and composed operations reach the serialized queue in the order of
  // the calls.
  template <class StartPump>
  void add(writer_node* n, node_list& rejected, StartPump&& start_pump) {
    std::lock_guard lock(mutex_);
    const bool was_writable = writable_;
    bool needs_pump = false;
    if (add_locked(n, lane::normal, rejected, needs_pump) && needs_pump)
      start_pump_locked([&] { start_pump(segment_); }, n, lane::normal, was_writable, rejected);
  }

  // Adds a normal write as add() does. When the writer is idle (the segment
  // has no pump, no write_some is in flight, queue_idle() says the writer's
  // queue holds nothing, no urgent item or terminal cancellation is under
  // way) and the caller may use the stream now (write_now()), the message
  // does not wait for its pump's turn: start_pump(id) starts the pump,
  // marked early (it takes the idle queue's turn at once when nothing
  // observes the queue, take_idle_queue_turn(), else it queues an acquire as
  // usual), and its first window is cut and handed to start_write(window,
  // id) at once, under the lock. Otherwise start_pump(id) with a plain id, as
  // add() does. The queue cannot start anything else meanwhile: everything
  // reaches it under this lock, and the early pump holds its turn, or is its
  // active entry, from now on.
  //
  // Why: a pump's turn is posted. Behind that post every caller resumed in
  // the same loop turn (say, by a batch of replies) queues its message, so
  // the first write carries all of them, and a request/response peer then
  // only gets work in batches: client and server take turns instead of
  // working at the same time. Writing the first message at once, and
  // gathering what arrives while that write is in flight, keeps both busy.
  //
  // Returns true when an early write could not be started (start_write, or
  // arming the stall deadline, threw): the writer has failed (see
  // start_write_locked), and the early pump's rendezvous misses that
  // write's completion, which the caller must stand in for.
  template <class WriteNow, class QueueIdle, class StartPump, class StartWrite>
  bool add_write(writer_node* n, node_list& rejected, WriteNow&& write_now, QueueIdle&& queue_idle,
                 StartPump&& start_pump, StartWrite&& start_write) {
    std::lock_guard lock(mutex_);
    const bool was_writable = writable_;
    bool needs_pump = false;
    if (!add_locked(n, lane::normal, rejected, needs_pump) || !needs_pump)
      return false;
    const pump_id id{lane::normal, segment_, true};
    if (n->size_ == 0 || urgent_pending_ || lending_ || lender_queued_ || terminal_requested_ ||
        write_in_flight_ || !write_now() || !queue_idle()) {
      start_pump_locked(
          [&] {
            start_pump(pump_id{lane::normal, segment_, false});
          },
          n, lane::normal, was_writable, rejected);
      return false;
    }
    node_list done;
    writer_node* closing = nullptr;
    if (build_window_locked(id, done, closing) != step_action::write) {
      // Not expected: the segment holds this message alone. Whatever the
      // window finished completes as a rejection would; a plain pump does
      // the rest.
      while (writer_node* d = done.pop_front())
        rejected.push_back(d);
      start_pump(pump_id{lane::normal, segment_, false});
      return false;
    }
    // Before the write: its completion must find the pump's rendezvous reset.
    if (!start_pump_locked([&] { start_pump(id); }, n, lane::normal, was_writable, rejected))
      return false;
    // A write that cannot start fails its message inside its own call: as a
    // rejection, through `rejected`.
    return !start_write_locked([&] { start_write(busy_->window, id); }, rejected);
  }

  // Adds an urgent write: as add, on the urgent lane, whose pumps wait in the
  // urgent queue (start_pump(segment), under the lock). When nobody is lending
  // the stream to the urgent queue and no lender is queued yet,
  // start_lender() queues one in the writer's queue (under the lock).
  template <class StartPump, class StartLender>
  void add_urgent(writer_node* n, node_list& rejected, StartPump&& start_pump,
                  StartLender&& start_lender) {
    std::lock_guard lock(mutex_);
    const bool was_writable = writable_;
    bool needs_pump = false;
    if (!add_locked(n, lane::urgent, rejected, needs_pump))
      return;
    if (needs_pump && !start_pump_locked([&] { start_pump(urgent_segment_); }, n, lane::urgent,
                                         was_writable, rejected))
      return;
    if (note_urgent_locked()) {
      try {
        start_lender();
      } catch (...) {
        // Nobody may lend the stream to the urgent queue now: n leaves,
        // refused with no_memory. Its segment's pump stays queued; the
        // next urgent request queues a lender again.
        lender_queued_ = false;
        refuse_added_locked(n, was_writable, rejected);
      }
    }
  }

  // Orders a composed operation after every write added so far: calls
  // enqueue() under the lock unless the writer has failed, closed or is
  // closing, in which case it returns the error.
  template <class Enqueue>
  error_code add_operation(Enqueue&& enqueue) {
    std::lock_guard lock(mutex_);
    if (const error_code ec = refusal_locked())
      return ec;
    if (segment_has_pump_)
      mark_segment_locked(lane::normal);
    enqueue();
    return {};
  }

  // The same for an urgent composed operation: enqueue() puts it into the
  // urgent queue, in order with the urgent writes; start_lender() as for
  // add_urgent, but first: if the lender cannot be queued, the operation is
  // refused with no_memory before it reaches the urgent queue (behind it, it
  // would wait for a lender that no request queues). A lender queued for an
  // operation whose enqueue() then throws finds the urgent queue empty.
  template <class Enqueue, class StartLender>
  error_code add_urgent_operation(Enqueue&& enqueue, StartLender&& start_lender) {
    std::lock_guard lock(mutex_);
    if (const error_code ec = refusal_locked())
      return ec;
    if (urgent_segment_has_pump_)
      mark_segment_locked(lane::urgent);
    const bool was_pending = urgent_pending_;
    if (note_urgent_locked()) {
      try {
        start_lender();
      } catch (...) {
        lender_queued_ = false;
        urgent_pending_ = was_pending;
        return net::error::no_memory;
      }
    }
    enqueue();
    return {};
  }

  // Adds an async_close request. Returned in `rejected` (with its result set)
  // when it can complete at once: the first close has completed (its result),
  // or the writer has failed or closed. While another close is pending it
  // joins that one and completes with its result. Otherwise it is queued like
  // a flush and from now on every new request is refused with shut_down.
  // async_wait_writable requests already waiting stay: writable() is false
  // while the close is pending, so they complete with shut_down when it
  // completes, or as usual if it is cancelled before it starts.
  template <class StartPump>
  void add_close(writer_node* n, node_list& rejected, StartPump&& start_pump) {
    std::lock_guard lock(mutex_);
    if (add_close_locked(n, rejected))
      start_pump_locked([&] { start_pump(segment_); }, n, lane::normal, writable_, rejected);
  }

  // Adds an async_wait_writable request; returned in `ready` when it can
  // complete at once (writable, failed, closing or closed).
  void add_waiter(writer_node* n, node_list& ready);

  // A composed operation's turn has come. Returns launch_error() if there
  // is one (the operation must not start). Otherwise, if urgent items
  // wait, calls defer() under the lock, which must hand the operation to the
  // urgent queue (behind them, ahead of every urgent item queued later) and
  // start lending, and sets deferred.
  template <class Defer>
  error_code before_launch(Defer&& defer, bool& deferred) {
    std::lock_guard lock(mutex_);
    deferred = false;
    if (const error_code ec = launch_error_locked())
      return ec;
    if (urgent_pending_ && !lending_) {
      // The operation counts as started: an urgent write queued from now on
      // goes behind it, not into the segment of a pump ahead of it (urgent
      // composed operations queue behind it anyway). Before anything
      // changes: without memory for the mark, the operation never launches
      // and its handler gets no_memory.
      if (urgent_segment_has_pump_) {
        try {
          mark_segment_locked(lane::urgent);
        } catch (const std::bad_alloc&) {
          return net::error::no_memory;
        }
      }
      lending_ = true;
      held_state_ = held_state::running;
      defer();
      deferred = true;
    }
    return {};
  }

  // The lender queued by start_lender has the writer's queue's turn: if urgent
  // items wait, calls start_lending() under the lock and returns true.
  template <class StartLending>
  bool lender_turn(StartLending&& start_lending) {
    std::lock_guard lock(mutex_);
    lender_queued_ = false;
    if (!urgent_pending_ || lending_)
      return false;
    lending_ = true;
    start_lending();
    return true;
  }

  // The lender's acquire was aborted (the writer is gone).
  void lender_gone() noexcept;

  // The urgent queue has passed the barrier of a lend: returns true when it
  // holds entries still (urgent_size() > 0), and the lend goes on; otherwise
  // calls stop_urgent() under the lock, ends the lend and returns false.
  template <class Size, class Stop>
  bool keep_lending(Size&& urgent_size, Stop&& stop_urgent) {
    std::lock_guard lock(mutex_);
    if (urgent_size() != 0)
      return true;
    stop_urgent();
    lending_ = false;
    urgent_pending_ = false;
    return false;
  }

  // The result of the operation deferred by before_launch has arrived.
  // Finishes h now if the lend is over, else keeps it for release_held().
  void hold(held_completion* h);
  // The lend that before_launch started is over: finishes the held
  // operation if its result is in, else lets hold() finish it.
  void release_held();

  // The pump `id` has its queue's turn: builds the next window of its
  // segment and calls start_write(window) under the lock (step_action::write).
  // Nodes that completed without a write (zero-length, or failed) go to
  // `done`. For a normal pump, when urgent items wait and no message is
  // half written, calls start_lending() under the lock instead
  // (step_action::lend); when the close is due, sets `closing` to its node,
  // which the pump must run (step_action::close). step_action::drained: the
  // segment is empty, the pump must release its turn.
  template <class StartWrite, class StartLending>
  step_action next_step(pump_id id, node_list& done, StartWrite&& start_write,
                        StartLending&& start_lending, writer_node*& closing) {
    std::lock_guard lock(mutex_);
    step_action a = build_window_locked(id, done, closing);
    if (a == step_action::write) {
      if (!start_write_locked([&] { start_write(busy_->window); }, done))
        a = build_window_locked(id, done, closing);  // the writer has failed: drained
    } else if (a == step_action::lend) {
      start_lending();
    }
    return a;
  }

  // next_step for a normal pump that never meets urgent items nor a close.
  template <class StartWrite>
  bool next_write(std::uint32_t segment, node_list& done, StartWrite&& start_write) {
    writer_node* closing = nullptr;
    return next_step(
               pump_id{lane::normal, segment}, done, std::forward<StartWrite>(start_write), [] {},
               closing) == step_action::write;
  }

  // Attributes the result of one write_some to the messages in order.
  void on_written(const error_code& ec, std::size_t n, node_list& done);

  // The closing operation of the due close was launched (its cancellation
  // slot, close_slot(), is bound): signals the close received since it was
  // due are passed on now.
  void close_launched();

  // Launches the due close's operation: launch() hands it the close's
  // completion handler. Returns empty when it started (then close_launched()
  // has run) or completed inside the launch. If launch() threw before that
  // handler ran, or dropped it without throwing (which then must not shut
  // the writer down: see note_dropped_in_start), the close did not start:
  // returns the error the close reports, as start_write_locked does for a
  // write (std::bad_alloc: no_memory, ...), and the exception goes no
  // further. An exception from a handler that the close's completion ran
  // inside the launch propagates, as any handler's does. Called without the
  // lock.
  template <class Launch>
  error_code launch_close(Launch&& launch) {
    call_scope scope(this);
    try {
      launch();
    } catch (...) {
      if (scope.completed())
        throw;
      return error_of_current_exception();
    }
    if (scope.dropped())
      return net::error::operation_aborted;
    close_launched();
    return {};
  }
  // The closing operation started by a close's pump has finished with ec.
  // Returns false if there was no close to finish (the context shut down,
  // or it finished already).
  bool on_closed(const error_code& ec, node_list& done);

  // The stream operation's cancellation signal; emitted (under the lock)
  // by a terminal cancellation of a started write or by the stall deadline.
  // Only while a write is being started or is in flight.
  net::cancellation_slot write_slot() noexcept { return busy_->write_signal.slot(); }
  // The closing operation's cancellation signal; only while it runs.
  net::cancellation_slot close_slot() noexcept { return busy_->close_signal.slot(); }

  // Fails the writer with ec, as a write error would.
  void fail(const error_code& ec);

  // cancel, close and set_watermarks: see hold_work_locked for `work`.
  std::size_t cancel(node_list& done, net::any_io_executor& work);
  // The writer object is going away: queued requests abort; started writes
  // and a running close are completed by their operations' results.
  void close(node_list& done, net::any_io_executor& work);
  // The context shuts down: shutdown_requests(), and the writer's queue's
  // waiting entries are destroyed (queue_core::shutdown).
  void shutdown() noexcept override;
  // The writer's requests are destroyed unrun, and it takes no more: a
  // handler of its stream operation was dropped without being called.
  void shutdown_requests() noexcept;
  // The context's default trace hook serves the writer's queue too: every
  // core it makes from now on, and the one it holds now from the next time
  // the writer queues something in it.
  void use_default_hook(const std::shared_ptr<hook_slot>& slot) override;

  // ---- the writer's queue (pumps, lenders, composed operations) ----
  // Its core exists only while the writer uses it: made (or taken from this
  // thread's spare) when something is queued in it, and given back when the
  // queue is quiet again (queue_quiet); on any executor but a plain
  // io_context one, kept until the writer goes instead. Everything is queued under the
  // lock, so while the writer's lock is held the core can neither appear
  // nor go behind the caller's back; and while the writer holds the queue's
  // turn (its pump or lender is the active entry) the core is busy, so it
  // stays, and queue_ may be read without the lock.
  //
  // The core, made if there is none. Under the lock.
  queue_core& queue_locked() {
    if (!queue_) {
      queue_ = make_queue();
      queue_has_hook_ = false;
    }
    if (!queue_has_hook_ && queue_hooked_.load(std::memory_order_acquire)) {
      use_default_hook_locked();
      queue_has_hook_ = true;
    }
    return *queue_;
  }
  // Whether the queue holds nothing waiting. Under the lock.
  bool queue_empty_locked() const noexcept { return !queue_ || queue_->size() == 0; }
  // The writer took the turn of its own queue (t): the core it keeps stands
  // for it from now on, and release_queue_turn() ends it.
  void hold_queue_turn(turn& t) noexcept {
    turn_access::take_over(t);
    queue_turn_held_ = true;
  }
  // Takes the turn of the writer's own queue at once, when nothing waits or
  // runs there and nothing observes it (queue_core::take_idle_turn): no
  // acquire is queued, and no trigger posted. Under the lock.
  bool take_idle_queue_turn() {
    if (!queue_locked().take_idle_turn())
      return false;
    queue_turn_held_ = true;
    return true;
  }
  // Ends the turn of the writer's own queue (held by this thread's pump or
  // lender), then gives the queue's core back if it went quiet (see
  // queue_quiet).
  void release_queue_turn() noexcept {
    // Not held: an early pump whose acquire was aborted (the writer went)
    // before its turn came; the abort ended that entry.
    if (std::exchange(queue_turn_held_, false))
      queue_->release_turn();
    queue_quiet();
  }
  // Something the writer's queue ran has finished (a turn released, a
  // composed operation completed): if the queue is quiet, its core goes to
  // this thread's spare (or is freed) until the writer needs one again. A
  // core on any executor but a plain io_context one stays: no other writer
  // could take it over.
  void queue_quiet() noexcept;
  // The writer object is going away: the queue's waiting entries are
  // aborted, and an active one is not launched any more (queue_core::close).
  void close_queue();
  // The queue core the writer holds now, null if none (tests: it goes when
  // idle, and a spare serves the next writer).
  const void* queue_address() const noexcept;

  // Pinned by a reference of its own (see writer_ref).
  void pin() noexcept override { add_ref(); }
  void unpin() noexcept override { drop_ref(); }

  // The reference count (writer_ref). The last drop_ref deletes the core.
  void add_ref() const noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void drop_ref() const noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1)
      delete this;
  }
  std::uint32_t use_count() const noexcept { return refs_.load(std::memory_order_acquire); }

  void set_watermarks(std::size_t low, std::size_t high, node_list& done,
                      net::any_io_executor& work);
  void set_gathering(bool on) noexcept;
  void set_gather_limits(std::size_t max_buffers, std::size_t max_bytes);

  // The stall deadline: 0 (or less) turns it off. The timer (made on the
  // first deadline) runs on timer_executor.
  void set_stall_timeout(clock::duration timeout, const net::any_io_executor& timer_executor);

  // The executor of handlers that have none of their own: a copy of the
  // writer's, of type Executor (kept by the writer, io_executor_storage).
  template <class Executor>
  Executor io_executor() const noexcept {
    return static_cast<const stored_executor<Executor>*>(io_executor_storage())->get();
  }

  // The error of a finished request that ended as o: the writer's own
  // error and close result never change once set, so this is read after
  // the lock that finished the request was released.
  error_code result_of(writer_node::outcome o) const noexcept;

  std::size_t pending_bytes() const noexcept;
  std::size_t size() const noexcept;
  // Heap bytes the window storage holds now (tests: it goes when idle).
  std::size_t window_heap_bytes() const noexcept;
  // Whether the writer holds its busy state now (tests: it goes when idle).
  bool holds_busy_state() const noexcept;

  // A handler of this writer's write_some is destroyed unrun. Returns true
  // (and notes it) if this thread is inside the stream's async_write_some
  // for it: the call threw or dropped it, and start_write_locked (or
  // launch_close) handles that. Otherwise the context is shutting
  // down: the caller must shutdown_requests().
  bool note_dropped_in_start() const noexcept;
  // The due close's completion handler runs: if inside launch_close's
  // launch on this thread, notes it there.
  void note_completed_in_start() const noexcept;
  writer_counters counters() const noexcept;
  bool writable() const noexcept;
  error_code error() const noexcept;
  // Why an operation whose turn came must not start: the writer object is
  // gone (operation_aborted: it is aborted as a queued message would be),
  // or the writer's error. Empty when it may start.
  error_code launch_error() const noexcept;
  // The writer object is gone (close() was called).
  bool gone() const noexcept;

  // Outstanding work on the writer's executor, or an empty executor (none,
  // or it could not be had). See hold_work_locked.
  virtual net::any_io_executor tracked_executor() const noexcept { return {}; }

  // A completion handler of the writer's stream operation runs: if this
  // thread is inside one of this writer's emits (emit_locked), the result is
  // kept for the emitter (see deferred_completion) and true returned; the
  // caller then does nothing more.
  bool defer_in_emit(deferred_completion::kind what, pump_id id, const error_code& ec,
                     std::size_t n) const noexcept;
  // Runs a completion that defer_in_emit kept, as its handler would have.
  // Called without the lock, by the emitter.
  virtual void resume_deferred(const deferred_completion&) {}
  // Completes done (dispatched), then resumes d if it holds a completion. A
  // handler that throws must lose neither the rest nor d: they go on from a
  // continuation posted before the exception leaves.
  virtual void complete_then_resume(node_list& done, const deferred_completion&) {
    done.complete_all(*this, completion_mode::dispatch);
  }
  // Posts the resumption of d to the writer's executor: the emit that took
  // it threw, and its emitter will not resume it.
  virtual void resume_later(const deferred_completion&) {}

 protected:
  // The writer's stored_executor<Executor>, Executor being the type the
  // handler nodes of this writer read it back as (io_executor). A virtual
  // function rather than a pointer kept in every writer.
  virtual const void* io_executor_storage() const noexcept { return nullptr; }
  // A core for the writer's queue: this thread's spare if it fits the
  // writer's executor, else a new one (writer_state). The base class has
  // no executor: it makes none (a bare core in tests never queues).
  virtual core_ref make_queue() { throw std::logic_error("serq: writer_core has no queue"); }
  // A recycled core of some writer's queue (queue_core::quiet), given back:
  // kept as this thread's spare, in place of the one it kept before.
  static void keep_spare_queue(core_ref q) noexcept;
  // This thread's spare queue core, if it has one (its one reference passes
  // to the caller, who puts it back with keep_spare_queue if it does not fit).
  static core_ref take_spare_queue() noexcept;
  // Hands the context's default hook to the core held now (virtual: the
  // base class has no executor to find the service by). Under the lock.
  virtual void use_default_hook_locked() {}
  // The writer queue's core (null while the writer does not use it). Under
  // the lock, or while the writer holds its turn.
  const core_ref& queue_ref() const noexcept { return queue_; }

 private:
  friend class node_canceller;
  struct stall_check;
  struct stall_state;

 public:
  // The busy state (see busy_). Public for the per-thread spare only.
  struct busy_state {
    busy_state() = default;
    busy_state(const busy_state&) = delete;
    busy_state& operator=(const busy_state&) = delete;
    ~busy_state();

    // Nothing queued, nothing in a window, no close running.
    bool idle() const noexcept {
      return nodes.empty() && urgent_nodes.empty() && waiters.empty() && followers.empty() &&
             !closing_node && window_nodes == 0;
    }

    node_list nodes;                      // writes, flushes and the close, in order
    node_list urgent_nodes;               // urgent writes, in order
    node_list waiters;                    // async_wait_writable
    node_list followers;                  // async_close calls made while a close is pending
    writer_node* closing_node = nullptr;  // the close whose operation runs
    window_storage storage;
    buffer_window window;
    // The bytes written of each lane's head message (normal, urgent): the
    // only message of its lane that can be partly written.
    std::size_t head_written[2] = {0, 0};
    std::size_t window_nodes = 0;    // nodes (from the front of window_lane) the window touches
    std::size_t pending_bytes = 0;   // of the writes queued and not yet written
    std::size_t pending_writes = 0;  // writes queued and not finished
    lane window_lane = lane::normal;
    net::cancellation_signal write_signal;
    net::cancellation_signal close_signal;
  };

 private:
  enum class held_state : unsigned char { none, running, ready, released };

  error_code refusal_locked() const noexcept;
  error_code launch_error_locked() const noexcept {
    return closed_ ? error_code(net::error::operation_aborted) : error_;
  }
  // Queues n on lane l, or rejects it; needs_pump: its segment has no pump.
  bool add_locked(writer_node* n, lane l, node_list& rejected, bool& needs_pump);
  bool add_close_locked(writer_node* n, node_list& rejected);
  // Completes every async_wait_writable request waiting with success.
  void release_waiters_locked(node_list& done);
  // A call that took requests out into `done` under the lock posts their
  // completions after it. Meanwhile another thread may finish the writer's
  // last operation; were that the io_context's last work, the context would
  // stop first, and run() return without running them. So, under the lock,
  // such a call takes outstanding work on the writer's executor into `work`,
  // released after the posts (which then hold work of their own). Only when
  // `done` has something: taking and releasing work on an idle io_context
  // stops it.
  void hold_work_locked(const node_list& done, net::any_io_executor& work) const noexcept {
    if (!done.empty() && !work)
      work = tracked_executor();
  }
  bool note_urgent_locked() noexcept;
  // A composed operation ends lane l's current segment, which has a pump:
  // a segment_mark goes behind its writes and the next segment begins.
  void mark_segment_locked(lane l);
  // Drops the marks at the front of pump id's lane that begin its segment
  // or an earlier one: the pump's writes start behind them.
  void drop_passed_marks_locked(pump_id id);
  // Pump id's segment has no pump any more: a later write needs a new one.
  void end_segment_locked(pump_id id) noexcept;
  node_list& list_of(lane l) noexcept {
    return l == lane::urgent ? busy_->urgent_nodes : busy_->nodes;
  }
  // The bytes queued and not yet written (kept in the busy state: none
  // while idle).
  std::size_t pending_bytes_locked() const noexcept { return busy_ ? busy_->pending_bytes : 0; }
  // Makes the busy state if there is none; false if it cannot be allocated.
  bool make_busy_locked() noexcept;
  // The same for a request about to be queued: if there is no memory for
  // the busy state, n is refused (into rejected) with no_memory.
  bool busy_or_reject_locked(writer_node* n, node_list& rejected) noexcept;
  // Gives the busy state back once nothing is queued, written or closing.
  void release_busy_locked() noexcept;
  step_action build_window_locked(pump_id id, node_list& done, writer_node*& closing);
  void fail_locked(const error_code& ec, node_list& done, bool keep_window = false);
  void fail_list_locked(node_list& list, std::size_t keep, node_list& done);
  void end_close_locked(const error_code& ec, node_list& done);
  // The bytes of n written so far: only a lane's head can have some.
  std::size_t written_of(const writer_node* n) const noexcept;
  // Takes n out of the list it is queued in (prev: its predecessor there,
  // if the caller knows it), ending its pending bytes and its canceller's
  // hold; from now on n->size_ is what it wrote.
  void remove_queued_locked(writer_node* n, writer_node* prev = nullptr, bool prev_known = false);
  // Removes n (as above) and puts it into done, ended as o.
  void finish_node_locked(writer_node* n, writer_node::outcome o, node_list& done,
                          writer_node* prev = nullptr, bool prev_known = false);
  // Refuses n, never queued, inside its initiating call: into rejected, as o.
  void reject_locked(writer_node* n, writer_node::outcome o, node_list& rejected) noexcept;
  // The outcome of a request refused by a failed, closed or closing writer.
  writer_node::outcome refusal_outcome_locked() const noexcept;
  // Frees the window's heap storage once nothing is left to write.
  void release_window_locked() noexcept;
  void update_writable_locked(node_list& done);
  // Every change of writable_ goes through here: it times the spells above
  // the high watermark.
  void set_writable_locked(bool on) noexcept;
  void cancel_node(writer_node* n, net::cancellation_type_t type);

  void note_write_started_locked();
  // Starts the write of the window just cut: start_write() calls the
  // stream's async_write_some. Returns false if that, or arming the stall
  // deadline, threw: nothing was handed to the stream, and no completion
  // will come. The writer then fails as if the write had failed with the
  // exception's error (std::bad_alloc: no_memory, std::system_error: its
  // code, anything else: operation_not_supported), its requests end in
  // `done`, and the exception goes no further: each request's handler
  // reports it instead.
  template <class StartWrite>
  bool start_write_locked(StartWrite&& start_write, node_list& done) {
    error_code ec;
    try {
      note_write_started_locked();
      call_scope scope(this);
      start_write();
      if (!scope.dropped())
        return true;
      // The stream dropped the handler without throwing: no completion
      // will come either.
      ec = net::error::operation_aborted;
    } catch (...) {
      ec = error_of_current_exception();
    }
    write_not_started_locked(ec, done);
    return false;
  }
  // Queues the pump of the segment that n, just added, begins:
  // start_pump() queues the pump (acquire_locked). If that throws (it could
  // not allocate its entry, or post the pump's trigger), n leaves again and
  // is refused with no_memory into `rejected`, as when the writer cannot
  // make its busy state; the writer is as before n came, and the exception
  // goes no further. Returns whether the pump was queued.
  // was_writable: writable() before n was added.
  template <class StartPump>
  bool start_pump_locked(StartPump&& start_pump, writer_node* n, lane l, bool was_writable,
                         node_list& rejected) {
    try {
      start_pump();
      return true;
    } catch (...) {
      // n began its segment, which has no other node: without a pump the
      // segment is empty again.
      (l == lane::urgent ? urgent_segment_has_pump_ : segment_has_pump_) = false;
      refuse_added_locked(n, was_writable, rejected);
      return false;
    }
  }
  // Takes n, added under this lock, out again, refused with no_memory; the
  // writer is left as it was before n came (writable() was was_writable).
  void refuse_added_locked(writer_node* n, bool was_writable, node_list& rejected) noexcept;
  // The write start_write_locked tried did not start: ec fails the writer.
  void write_not_started_locked(const error_code& ec, node_list& done) noexcept;
  // The error a write reports when starting it threw the current exception.
  static error_code error_of_current_exception() noexcept;
  // Marks the calling thread as inside one of this writer's calls into
  // its stream: start_write or launch_close (note_dropped_in_start(),
  // note_completed_in_start()), or, with `deferred`, an emit under the lock
  // (defer_in_emit()). Scopes nest; each lookup finds the innermost of its
  // kind for its writer.
  class call_scope {
   public:
    explicit call_scope(const writer_core* core, deferred_completion* deferred = nullptr) noexcept;
    ~call_scope();
    call_scope(const call_scope&) = delete;
    call_scope& operator=(const call_scope&) = delete;

    bool dropped() const noexcept { return dropped_; }
    bool completed() const noexcept { return completed_; }

   private:
    friend class writer_core;
    static call_scope*& innermost() noexcept;
    // The innermost scope on this thread for which pred holds.
    template <class Pred>
    static call_scope* find(Pred pred) noexcept;
    const writer_core* core_;
    call_scope* outer_;
    deferred_completion* deferred_;  // an emit's; null for a start's
    bool dropped_ = false;
    bool completed_ = false;
  };
  // Emits s (the write or the close signal) under the lock. A completion
  // that the stream's cancellation handler runs inside the emit lands in
  // `deferred`, for the caller to resume_deferred once it has let go of
  // the lock.
  void emit_locked(net::cancellation_signal& s, net::cancellation_type_t type,
                   deferred_completion& deferred);
  void arm_stall_timer_locked(clock::time_point deadline);
  void disarm_stall_timer_locked() noexcept;
  void on_stall_timer(std::uint64_t generation);

  // Ordered for size: the small fields first fill the tail of
  // service_member (its flag leaves seven bytes), then the words.
  bool segment_has_pump_ = false;
  bool urgent_segment_has_pump_ = false;
  bool gathering_ = true;
  mutable small_mutex mutex_;
  mutable std::atomic<std::uint32_t> refs_{1};  // writer_ref
  std::uint32_t segment_ = 0;
  std::uint32_t urgent_segment_ = 0;
  bool writable_ = true;
  bool closed_ = false;   // the writer object is gone
  bool closing_ = false;  // async_close was called and has not completed
  bool close_done_ = false;
  bool terminal_requested_ = false;
  bool close_launched_ = false;  // the due close's operation has its slot
  // Urgent items were queued and the urgent queue may hold some: every
  // holder of the writer queue's turn lends it the stream first.
  bool urgent_pending_ = false;
  bool lending_ = false;        // the urgent queue runs
  bool lender_queued_ = false;  // a lender waits in the writer's queue
  bool write_in_flight_ = false;
  held_state held_state_ = held_state::none;

 protected:
  // An early pump's turn and its first write_some's completion, arrived so
  // far (writer_state::start_early_write). Here for the layout's sake.
  std::atomic<unsigned char> early_meetings_{0};

 private:
  // The gather limits, at most 2^32 - 1 each (set_gather_limits clamps:
  // no write_some takes more).
  std::uint32_t max_buffers_ = default_max_buffers;
  std::uint32_t max_bytes_ = default_max_bytes;
  // What only a busy writer needs: made when the first request is queued,
  // given back (to a per-thread spare, see release_busy_locked) when the
  // writer has nothing queued, nothing in flight and no close running. A
  // writer that failed or closed keeps no more than an idle one.
  busy_state* busy_ = nullptr;
  std::size_t low_ = default_low_watermark;
  std::size_t high_ = default_high_watermark;
  held_completion* held_ = nullptr;
  error_code error_;
  error_code close_result_;

  // The stall deadline, made by the first set_stall_timeout with one: an
  // idle writer without a deadline carries no timer.
  std::unique_ptr<stall_state> stall_;

  // stats(): counted under mutex_, where the state they count changes.
  std::uint64_t messages_written_ = 0;
  std::uint64_t bytes_written_ = 0;
  std::uint64_t write_calls_ = 0;
  std::size_t peak_pending_bytes_ = 0;
  clock::duration time_above_high_{};
  clock::time_point above_high_since_{};  // while !writable_

  // The writer's queue's core, while the writer uses it (see queue_locked;
  // on any executor but a plain io_context one, from its first use on).
  core_ref queue_;
  // The context's default hook was handed to this writer: a core made
  // from now on uses it too, and the core held then gets it when the writer
  // next queues something in it. An atomic written without the writer's
  // lock: use_default_hook runs under the service's lock, which a writer
  // takes under its own (making its urgent queue).
  std::atomic<bool> queue_hooked_{false};
  // The core held now has the default hook. Under the lock.
  bool queue_has_hook_ = false;
  // The writer's pump or lender holds its queue's turn. Written and read by
  // the holder only (and by the destructor, which releases a turn still
  // held, as a turn object does when its holder goes: handlers destroyed
  // unrun at the context's shutdown). A turn taken in the call that found
  // the queue idle (take_idle_queue_turn) is written there, under the lock,
  // before the write whose completion carries the pump on is started.
  bool queue_turn_held_ = false;
};

}  // namespace detail
SERQ_NAMESPACE_END

#endif  // SERQ_DETAIL_WRITER_CORE_HPP
