//
// serq/impl/queued_writer.hpp
//

#ifndef SERQ_IMPL_QUEUED_WRITER_HPP
#define SERQ_IMPL_QUEUED_WRITER_HPP

#include <serq/config.hpp>
#include <serq/detail/entries.hpp>
#include <serq/detail/handler_alloc.hpp>
#include <serq/detail/writer_core.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

SERQ_NAMESPACE_BEGIN
namespace detail {

// Calls f(net::const_buffer) for each buffer of seq, in order, while it
// returns true; returns false if f stopped it.
template <class ConstBufferSequence, class F>
bool for_each_buffer_of(const ConstBufferSequence& seq, F& f) {
  const auto end = net::buffer_sequence_end(seq);
  for (auto it = net::buffer_sequence_begin(seq); it != end; ++it)
    if (!f(net::const_buffer(*it)))
      return false;
  return true;
}

// A buffer sequence the caller owns and keeps alive.
template <class ConstBufferSequence>
struct borrowed_buffers {
  ConstBufferSequence seq;

  template <class F>
  bool for_each_buffer(F& f) const {
    return for_each_buffer_of(seq, f);
  }
};

// ---- owned messages (async_send) ----------------------------------------------
//
// An owned message is one of:
//  - a body: std::string, std::vector or std::array of char, unsigned char or
//    std::byte;
//  - a std::shared_ptr to an owned message (const or not; null is empty);
//  - a std::vector or std::array of owned messages;
//  - a std::pair or std::tuple of owned messages;
//  - an object whose data() const returns a const buffer sequence and refers
//    to storage the object owns (beast::flat_buffer, beast::multi_buffer).
// The writer keeps it in the request until the request completes, and
// recomputes its buffers whenever it cuts a window: moving a short
// std::string moves its bytes.

template <class T>
struct is_byte : std::bool_constant<std::is_same_v<T, char> || std::is_same_v<T, unsigned char> ||
                                    std::is_same_v<T, std::byte>> {};

template <class T>
struct is_message_body : std::false_type {};
template <>
struct is_message_body<std::string> : std::true_type {};
template <class T>
struct is_message_body<std::vector<T>> : is_byte<T> {};
template <class T, std::size_t N>
struct is_message_body<std::array<T, N>> : is_byte<T> {};

template <class T, class = void>
struct has_buffer_data : std::false_type {};
template <class T>
struct has_buffer_data<T, std::void_t<decltype(std::declval<const T&>().data())>>
    : net::is_const_buffer_sequence<std::decay_t<decltype(std::declval<const T&>().data())>> {};

template <class T>
struct is_owned_message;

template <class T>
struct is_owned_sequence : std::false_type {};
template <class T, class A>
struct is_owned_sequence<std::vector<T, A>> : is_owned_message<T> {};
template <class T, std::size_t N>
struct is_owned_sequence<std::array<T, N>> : is_owned_message<T> {};
template <class A, class B>
struct is_owned_sequence<std::pair<A, B>>
    : std::conjunction<is_owned_message<A>, is_owned_message<B>> {};
template <class... Ts>
struct is_owned_sequence<std::tuple<Ts...>> : std::conjunction<is_owned_message<Ts>...> {};
template <class T>
struct is_owned_sequence<std::shared_ptr<T>> : is_owned_message<std::remove_const_t<T>> {};

template <class T>
struct is_owned_message
    : std::disjunction<is_message_body<T>, is_owned_sequence<T>, has_buffer_data<T>> {};

template <class T, class F>
bool visit_owned_parts(const std::shared_ptr<T>& p, F& f);
template <class T, class F>
bool visit_owned_parts(const T& range, F& f);
template <class A, class B, class F>
bool visit_owned_parts(const std::pair<A, B>& p, F& f);
template <class... Ts, class F>
bool visit_owned_parts(const std::tuple<Ts...>& t, F& f);

// Visits the buffers of an owned message in order (see for_each_buffer_of).
template <class T, class F>
bool for_each_owned_buffer(const T& m, F& f) {
  if constexpr (is_message_body<T>::value) {
    return f(net::buffer(m));
  } else if constexpr (is_owned_sequence<T>::value) {
    return visit_owned_parts(m, f);
  } else {
    return for_each_buffer_of(m.data(), f);
  }
}

template <class T, class F>
bool visit_owned_parts(const std::shared_ptr<T>& p, F& f) {
  return !p || for_each_owned_buffer(*p, f);
}
template <class T, class F>
bool visit_owned_parts(const T& range, F& f) {  // std::vector, std::array
  for (const auto& part : range)
    if (!for_each_owned_buffer(part, f))
      return false;
  return true;
}
template <class A, class B, class F>
bool visit_owned_parts(const std::pair<A, B>& p, F& f) {
  return for_each_owned_buffer(p.first, f) && for_each_owned_buffer(p.second, f);
}
template <class... Ts, class F>
bool visit_owned_parts(const std::tuple<Ts...>& t, F& f) {
  return std::apply([&f](const auto&... parts) { return (for_each_owned_buffer(parts, f) && ...); },
                    t);
}

// A message the writer owns until it is written.
template <class Message>
struct owned_message {
  Message msg;

  template <class F>
  bool for_each_buffer(F& f) const {
    return for_each_owned_buffer(msg, f);
  }
};

template <class Message>
constexpr void check_owned_message() {
  static_assert(is_owned_message<Message>::value,
                "serq::queued_writer::async_send takes an owned message: std::string; "
                "std::vector or std::array of char, unsigned char or std::byte; a std::shared_ptr "
                "to an owned message; a std::vector or std::array of owned messages; a std::pair "
                "or std::tuple of owned messages; or an object whose data() const returns a const "
                "buffer sequence (beast::flat_buffer, beast::multi_buffer). For bytes that you "
                "keep alive yourself, use async_write");
}

// A flush or wait_writable request carries no bytes.
struct no_bytes {
  template <class F>
  bool for_each_buffer(F&) const noexcept {
    return true;
  }
};

// Outstanding work for a queued request's handler. A request always waits
// behind an operation that counts outstanding work on the writer's executor
// (a write_some or a closing operation in flight, a pump waiting in the
// writer's queue, an urgent lend's barrier), so a handler whose executor is
// the writer's needs none of its own: a handler without an associated
// executor holds nothing (not even a pointer), one whose executor compares
// equal to the writer's a null pointer, and only one on another executor a
// work guard, allocated with the handler's allocator.
template <class Handler, class Executor, bool = has_own_executor<Handler>::value>
class request_work {
 public:
  using handler_executor = net::associated_executor_t<Handler, Executor>;

  void start(const Handler&, const Executor&) noexcept {}
  void release(const Handler&) noexcept {}

  // Frees node (whose handler is h) and completes h with args, as mode says.
  template <class Node, class... Args>
  void deliver_request(Node* node, Handler& h, const writer_core& core, completion_mode mode,
                       Args... args) {
    const handler_executor ex = core.io_executor<Executor>();  // the core may go with the upcall
    free_then_deliver_after(node, h, ex, mode, nothing_then{}, args...);
  }
};

template <class Handler, class Executor>
class request_work<Handler, Executor, true> {
 public:
  using handler_executor = net::associated_executor_t<Handler, Executor>;
  using guard = work_guard<handler_executor>;

  void start(const Handler& h, const Executor& io_ex) {
    handler_executor ex = net::get_associated_executor(h, io_ex);
    if constexpr (std::is_same_v<handler_executor, Executor>) {
      if (ex == io_ex)
        return;
    }
    work_ = allocate_node<guard>(h, std::move(ex));
  }
  void release(const Handler& h) noexcept {
    if (guard* w = std::exchange(work_, nullptr))
      deallocate_node(w, node_allocator(h));
  }

  // Frees node (whose handler is h, and which derives from this) and
  // completes h with args, as mode says; the work is given back once the
  // completion is handed on. A handler on another executor than the
  // writer's is reached through the writer's (see free_then_deliver_via).
  template <class Node, class... Args>
  void deliver_request(Node* node, Handler& h, const writer_core& core, completion_mode mode,
                       Args... args) {
    const Executor io_ex = core.io_executor<Executor>();  // the core may go with the upcall
    const handler_executor ex = net::get_associated_executor(h, io_ex);
    const std::optional<guard> held = take(h);
    if (held) {
      free_then_deliver_via(node, h, io_ex, ex, mode, nothing_then{}, args...);
    } else {
      free_then_deliver_after(node, h, ex, mode, nothing_then{}, args...);
    }
  }

 private:
  // The guard moves out (to be released after the handler is handed on).
  std::optional<guard> take(const Handler& h) noexcept {
    std::optional<guard> held;
    if (guard* w = std::exchange(work_, nullptr)) {
      held.emplace(std::move(*w));
      deallocate_node(w, node_allocator(h));
    }
    return held;
  }

  guard* work_ = nullptr;
};

// A queued request: owns the user's handler and, for a write, (a view of)
// the bytes. Writes complete with (error_code, bytes); a flush or a
// wait_writable (Buffers = no_bytes) with an error_code only.
template <class Buffers, class Handler, class Executor>
class handler_node final : public writer_node, private request_work<Handler, Executor> {
  static constexpr bool carries_bytes = !std::is_same_v<Buffers, no_bytes>;
  using work = request_work<Handler, Executor>;

 public:
  template <class B, class H>
  handler_node(kind k, B&& b, H&& h, const Executor& ex, writer_ref<writer_core> core)
      : writer_node(&table, k, 0), buffers_(std::forward<B>(b)), handler_(std::forward<H>(h)) {
    std::size_t size = 0;
    auto add = [&size](net::const_buffer b) noexcept {
      size += b.size();
      return true;
    };
    buffers_.for_each_buffer(add);
    set_size(size);
    work::start(handler_, ex);
    try {
      attach_canceller(net::get_associated_cancellation_slot(handler_), std::move(core));
    } catch (...) {
      work::release(handler_);  // not held by a node that never was
      throw;
    }
  }

 private:
  static void do_complete(writer_node* b, const writer_core& core, error_code ec, std::size_t n,
                          completion_mode mode) {
    auto* self = static_cast<handler_node*>(b);
    if constexpr (carries_bytes)
      self->deliver_request(self, self->handler_, core, mode, ec, n);
    else
      self->deliver_request(self, self->handler_, core, mode, ec);
  }

  static void do_destroy(writer_node* b) noexcept {
    auto* self = static_cast<handler_node*>(b);
    self->release(self->handler_);
    deallocate_node(self, node_allocator(self->handler_));
  }

  static void do_fill(const writer_node* b, std::size_t offset, window_builder& w) noexcept {
    const auto* self = static_cast<const handler_node*>(b);
    auto take = [&offset, &w](net::const_buffer buf) noexcept {
      if (w.full())
        return false;
      if (offset >= buf.size()) {
        offset -= buf.size();
        return true;
      }
      buf += offset;
      offset = 0;
      w.append(buf);
      return true;
    };
    self->buffers_.for_each_buffer(take);
  }

  static constexpr ops table{&do_complete, &do_destroy, &do_fill};

  Buffers buffers_;
  Handler handler_;
};

template <class T, class = void>
struct has_lowest_layer : std::false_type {};
template <class T>
struct has_lowest_layer<T, std::void_t<decltype(std::declval<T&>().lowest_layer())>>
    : std::true_type {};

template <class T, class = void>
struct has_next_layer : std::false_type {};
template <class T>
struct has_next_layer<T, std::void_t<decltype(std::declval<T&>().next_layer())>> : std::true_type {
};

template <class T, class = void>
struct has_close_ec : std::false_type {};
template <class T>
struct has_close_ec<T, std::void_t<decltype(std::declval<T&>().close(std::declval<error_code&>()))>>
    : std::true_type {};

template <class T, class = void>
struct has_close : std::false_type {};
template <class T>
struct has_close<T, std::void_t<decltype(std::declval<T&>().close())>> : std::true_type {};

// What async_close(token) runs, by stream: a TLS-like stream's own shutdown
// (ssl::stream, beast::ssl_stream: async_shutdown), else a socket's
// shutdown(send), found through the stream's own lowest_layer() (a socket,
// beast::tcp_stream). Streams with a closing protocol of their own (a
// websocket) have no lowest_layer(): they pass their closing operation.
struct shutdown_probe {
  void operator()(error_code) const {}
};

template <class T, class = void>
struct has_async_shutdown : std::false_type {};
template <class T>
struct has_async_shutdown<
    T, std::void_t<decltype(std::declval<T&>().async_shutdown(std::declval<shutdown_probe>()))>>
    : std::true_type {};

template <class T, class = void>
struct has_shutdown_send : std::false_type {};
template <class T>
struct has_shutdown_send<T, std::void_t<decltype(std::declval<T&>().shutdown(
                                net::socket_base::shutdown_send, std::declval<error_code&>()))>>
    : std::true_type {};

template <class T, class = void>
struct is_socket_stream : std::false_type {};
template <class T>
struct is_socket_stream<T, std::enable_if_t<has_lowest_layer<T>::value>>
    : has_shutdown_send<std::remove_reference_t<decltype(std::declval<T&>().lowest_layer())>> {};

template <class T>
constexpr bool has_default_close = has_async_shutdown<T>::value || is_socket_stream<T>::value;

// The bottom of a stack of stream layers: what lowest_layer() names, else
// the bottom of next_layer(), else the stream itself.
template <class Stream>
auto& lowest_layer_of(Stream& s) noexcept {
  if constexpr (has_lowest_layer<Stream>::value)
    return s.lowest_layer();
  else if constexpr (has_next_layer<Stream>::value)
    return lowest_layer_of(s.next_layer());
  else
    return s;
}

// Closes the bottom layer, ignoring errors: what destroying a socket does,
// and what makes an operation in flight on any layer above return.
template <class Stream>
void close_lowest_layer(Stream& s) noexcept {
  auto& lowest = lowest_layer_of(s);
  using lowest_type = std::remove_reference_t<decltype(lowest)>;
  if constexpr (has_close_ec<lowest_type>::value) {
    error_code ignored;
    lowest.close(ignored);
  } else if constexpr (has_close<lowest_type>::value) {
    try {
      lowest.close();
    } catch (...) {
    }
  }
}

// The stream's own graceful shutdown (see has_default_close).
struct stream_closer {
  template <class Stream, class Done>
  static void launch(Stream& s, Done&& done) {
    if constexpr (has_async_shutdown<Stream>::value) {
      s.async_shutdown(std::forward<Done>(done));
    } else {
      // A socket's shutdown does not block: the peer reads what was sent,
      // then end of file; reads on this end go on.
      error_code ec;
      s.lowest_layer().shutdown(net::socket_base::shutdown_send, ec);
      std::forward<Done>(done)(ec);
    }
  }
};

// A closing operation given to async_close(op, token): a deferred operation.
template <class Op>
struct op_closer {
  Op op;

  template <class Stream, class Done>
  void launch(Stream&, Done&& done) && {
    std::move(op)(std::forward<Done>(done));
  }
};

// A close request whose closing operation the writer's state (State) can
// start: type-erased like the other nodes, plus its launch function.
template <class State>
class close_request : public writer_node {
 public:
  // Starts the closing operation; done is invoked with its result. The node
  // may be gone when this returns.
  void launch(State& state, typename State::close_done done) {
    launch_(this, state, std::move(done));
  }

 protected:
  using launch_fn = void (*)(close_request*, State&, typename State::close_done);
  close_request(const ops* o, launch_fn l) noexcept : writer_node(o, kind::close, 0), launch_(l) {}
  ~close_request() = default;

 private:
  launch_fn launch_;
};

// An async_close request: the user's handler, and what closes the stream.
template <class Closer, class Handler, class Executor, class State>
class close_node final : public close_request<State>, private request_work<Handler, Executor> {
  using work = request_work<Handler, Executor>;

 public:
  template <class C, class H>
  close_node(C&& c, H&& h, const Executor& ex, writer_ref<writer_core> core)
      : close_request<State>(&table, &do_launch),
        closer_(std::forward<C>(c)),
        handler_(std::forward<H>(h)) {
    work::start(handler_, ex);
    try {
      this->attach_canceller(net::get_associated_cancellation_slot(handler_), std::move(core));
    } catch (...) {
      work::release(handler_);  // not held by a node that never was
      throw;
    }
  }

 private:
  using base = close_request<State>;

  static void do_complete(writer_node* b, const writer_core& core, error_code ec, std::size_t,
                          completion_mode mode) {
    auto* self = static_cast<close_node*>(b);
    self->deliver_request(self, self->handler_, core, mode, ec);
  }

  static void do_destroy(writer_node* b) noexcept {
    auto* self = static_cast<close_node*>(b);
    self->release(self->handler_);
    deallocate_node(self, node_allocator(self->handler_));
  }

  static void do_fill(const writer_node*, std::size_t, window_builder&) noexcept {}

  static void do_launch(base* b, State& state, typename State::close_done done) {
    // The closing operation may complete (and the node go) inside the launch.
    Closer closer(std::move(static_cast<close_node*>(b)->closer_));
    std::move(closer).launch(state.stream(), std::move(done));
  }

  static constexpr writer_node::ops table{&do_complete, &do_destroy, &do_fill};

  Closer closer_;
  Handler handler_;
};

// The result of a composed operation that ran in the urgent queue on behalf
// of the writer queue's entry whose handler this holds (see
// writer_core::before_launch).
template <class Handler, class Signature>
class held_box final : public held_completion {
 public:
  using result_type = decltype(queueable_signature<Signature>::aborted());

  template <class H>
  explicit held_box(H&& h)
      : held_completion(&do_finish, &do_destroy), handler_(std::forward<H>(h)) {}

  const Handler& handler() const noexcept { return handler_; }

  template <class... Args>
  void set_result(Args&&... args) {
    result_.emplace(std::forward<Args>(args)...);
  }

 private:
  static void do_finish(held_completion* b) {
    auto* self = static_cast<held_box*>(b);
    const auto alloc = node_allocator(self->handler_);
    Handler h(std::move(self->handler_));
    result_type r(std::move(*self->result_));
    deallocate_node(self, alloc);
    std::apply(std::move(h), std::move(r));
  }

  static void do_destroy(held_completion* b) noexcept {
    auto* self = static_cast<held_box*>(b);
    deallocate_node(self, node_allocator(self->handler_));
  }

  Handler handler_;
  std::optional<result_type> result_;
};

// The handler of a deferred composed operation's entry in the urgent queue.
// It owns the box until invoked; every associator (executor, allocator,
// cancellation slot, immediate executor) is that of the held handler, so the
// operation runs as it would have from the writer's queue.
template <class Box, class State>
class held_handler {
 public:
  held_handler(Box* b, writer_ref<State> s) noexcept : box_(b), state_(std::move(s)) {}
  held_handler(held_handler&& o) noexcept
      : box_(std::exchange(o.box_, nullptr)), state_(std::move(o.state_)) {}
  held_handler& operator=(held_handler&&) = delete;
  ~held_handler() {
    if (box_)
      box_->destroy();  // destroyed unrun: the held handler goes unrun too
  }

  template <class... Args>
  void operator()(Args&&... args) {
    Box* b = std::exchange(box_, nullptr);
    b->set_result(std::forward<Args>(args)...);
    const writer_ref<State> s = std::move(state_);
    s->hold(b);
  }

  const Box* box() const noexcept { return box_; }

 private:
  Box* box_;
  writer_ref<State> state_;
};

// The handler a composed operation on the writer's stream is launched with:
// the queue's, and the writer's shared state, which owns the stream (an
// owned one) and so keeps it alive until the operation completes, even if
// the writer is destroyed meanwhile. Every associator is the queue
// handler's.
template <class Handler, class State>
class keeping_handler {
 public:
  template <class H>
  keeping_handler(H&& h, writer_ref<State> s)
      : handler_(std::forward<H>(h)), state_(std::move(s)) {}

  template <class... Args>
  void operator()(Args&&... args) {
    const writer_ref<State> keep = std::move(state_);  // let go after the upcall
    std::move(handler_)(std::forward<Args>(args)...);
    // The operation's entry has finished: it may have been the writer
    // queue's last.
    keep->queue_quiet();
  }

  const Handler& handler() const noexcept { return handler_; }

 private:
  Handler handler_;
  writer_ref<State> state_;
};

// What ends a lend of the stream to the urgent queue.
enum class lend_kind : unsigned char {
  pump,    // a pump between two windows: it goes on
  lender,  // a lender: it releases the writer queue's turn
  held,    // a deferred composed operation: its held result is delivered
};

// The writer's shared state: the state machine, the stream (owned, or
// referenced for queued_writer<S&>), the urgent queue, and the pumps that
// feed the state machine the stream's write_some results. One pump holds a
// turn at a time (of the writer's queue, or of the urgent queue while the
// holder of the writer queue's turn lends it the stream), so at most one
// write_some is ever in flight. An owned stream lives here, not in the
// writer object, so that it outlives the operation in flight whenever the
// writer is destroyed.
template <class Stream>
class writer_state final : public writer_core {
 public:
  using next_layer_type = std::remove_reference_t<Stream>;
  using executor_type = typename next_layer_type::executor_type;
  using queue_type = basic_serialized_queue<executor_type>;
  static constexpr bool owns_stream = !std::is_reference_v<Stream>;

  // Constructs (or, for a reference, binds) the stream from args.
  template <class... Args>
  explicit writer_state(std::in_place_t, Args&&... args)
      : stream_(make_storage(std::forward<Args>(args)...)), executor_(stream_->get_executor()) {}

  // The state a moved-from writer is left with: no stream, failed.
  explicit writer_state(const executor_type& ex) : executor_(ex) {
    fail(net::error::bad_descriptor);
  }

  executor_type get_executor() const noexcept { return executor_.get(); }

  bool has_stream() const noexcept { return static_cast<bool>(stream_); }

  const void* io_executor_storage() const noexcept override { return &executor_; }

  net::any_io_executor tracked_executor() const noexcept override {
    if constexpr (std::is_convertible_v<executor_type, net::any_io_executor>) {
      try {
        return net::prefer(net::any_io_executor(executor_.get()),
                           net::execution::outstanding_work.tracked);
      } catch (...) {
        return {};  // a target too big for the small buffer, and no memory
      }
    } else {
      return {};
    }
  }
  next_layer_type& stream() noexcept { return *stream_; }
  const next_layer_type& stream() const noexcept { return *stream_; }

  // A core for the writer's queue (writer_core::queue_locked, which also
  // hands it the default hook): this thread's spare if it keeps the
  // writer's executor, else a new one. Under the lock.
  core_ref make_queue() override {
    using core_type = basic_queue_core<executor_type>;
    core_ref q = take_spare_queue();
    if (q &&
        (q->executor_tag() != core_type::tag() || !static_cast<core_type&>(*q).serves(executor_))) {
      keep_spare_queue(std::move(q));  // another executor's: it stays this thread's spare
      q = nullptr;
    }
    if (!q)
      q = core_ref(new core_type(executor_.get(), "serq.queued_writer"));
    return q;
  }

  void use_default_hook_locked() override {
    queue_ref()->use_default_hook(queue_service(executor_.get()).default_hook_slot());
  }

  // Queues an acquire of the writer queue's turn, whose handler is h (a
  // pump_start or lender_start). Under the lock.
  template <class Handler>
  void acquire_locked(Handler&& h) {
    queue_locked();
    submit_new_entry<turn_entry<std::decay_t<Handler>, executor_type, true>>(
        queue_ref(), false, std::forward<Handler>(h));
  }

  // Queues a composed operation in the writer's queue, as the queue's
  // async_enqueue would with the handler given. Under the lock.
  template <class Signature, class Launcher, class Handler>
  void enqueue_locked(Launcher&& launcher, Handler&& h) {
    queue_locked();
    using entry = op_entry<std::decay_t<Launcher>, std::decay_t<Handler>, executor_type, Signature>;
    submit_new_entry<entry>(queue_ref(), false, std::forward<Handler>(h),
                            std::forward<Launcher>(launcher));
  }

  // The urgent lane's queue, created stopped on first use. Called under the
  // core's lock (from its callbacks); elsewhere only once the lock has shown
  // that urgent items were queued.
  queue_type& urgent_queue() {
    if (!urgent_) {
      urgent_ = std::make_unique<urgent_lane>(executor_.get());
      urgent_->queue.stop();
    }
    return urgent_->queue;
  }

  // The writer object is going away: urgent entries that have not started
  // are aborted, as the writer queue's are by close_queue().
  void abort_urgent() {
    if (urgent_)
      urgent_->queue.cancel();
  }

  // The writer owning the stream is gone. Closes the stream's bottom layer so
  // that a write_some in flight returns now; the stream itself goes when the
  // last reference to this state (that write's handler) does. The close runs
  // on the stream's executor, as every other use of the stream does.
  static void close_owned_stream(writer_ref<writer_state> self) {
    if constexpr (owns_stream) {
      if (!self->has_stream() || self.use_count() == 1)
        return;  // nothing in flight: the stream is destroyed (and closed) with self
      const executor_type ex = self->executor_.get();
      net::dispatch(ex, [self = std::move(self)] { close_lowest_layer(self->stream()); });
    }
  }

  // A pump's turn has come (async_acquire's handler, on the writer's queue
  // or the urgent one).
  struct pump_start {
    writer_ref<writer_state> self;
    pump_id id;

    using allocator_type = own_block_allocator<void, own_block::pump_entry>;
    allocator_type get_allocator() const noexcept { return {}; }

    void operator()(const error_code& ec, turn t) {
      if (ec) {
        // The writer is gone: its messages were aborted. An early write may
        // still be in flight: the second of it and this finishes the pump,
        // with no turn to release.
        if (id.early && self->early_meet())
          step(std::move(self), pump_id{id.l, id.segment, false}, node_list());
        return;
      }
      self->hold_turn(id.l, t);
      if (id.early && !self->early_meet())
        return;  // the early write_some is in flight: its completion goes on
      step(std::move(self), pump_id{id.l, id.segment, false}, node_list());
    }
  };

  // The first write_some of an early pump (writer_core::add_write) is
  // started, with the pump's turn on its way: whichever of the two ends
  // second carries the pump on.
  void reset_early() noexcept { early_meetings_.store(0, std::memory_order_relaxed); }
  // The early pump took its turn at once (take_idle_queue_turn): the turn's
  // half of the rendezvous is in, and the write's completion carries on.
  void early_turn_in() noexcept { early_meetings_.store(1, std::memory_order_relaxed); }

  void start_early_write(writer_ref<writer_state> self, const buffer_window& window, pump_id id) {
    stream_->async_write_some(
        window, net::bind_cancellation_slot(write_slot(), write_done(std::move(self), id)));
  }

  bool early_meet() noexcept {
    return early_meetings_.fetch_add(1, std::memory_order_acq_rel) == 1;
  }

  // Hands the writer queue's turn on (held by the pump this thread stands in for).
  void release_turn() noexcept { release_queue_turn(); }

  // A lender's turn of the writer's queue has come: it lends the stream to
  // the urgent queue if urgent items wait there.
  struct lender_start {
    writer_ref<writer_state> self;

    void operator()(const error_code& ec, turn t) {
      if (ec) {
        self->lender_gone();
        return;
      }
      writer_state& s = *self;
      s.hold_queue_turn(t);
      if (!s.lender_turn([&] { s.begin_lending(self, lend_kind::lender, pump_id{}); }))
        s.release_queue_turn();
    }
  };

  // The urgent queue has passed a lend's barrier: another barrier while it
  // holds entries, else the lend is over.
  struct lend_resume {
    writer_ref<writer_state> self;
    lend_kind kind;
    pump_id id;

    void operator()(const error_code&) {
      writer_state& s = *self;
      queue_type& u = s.urgent_->queue;
      if (s.keep_lending([&] { return u.size(); }, [&] { u.stop(); })) {
        u.async_wait(std::move(*this));
        return;
      }
      switch (kind) {
        case lend_kind::pump:
          step(std::move(self), id, node_list());
          break;
        case lend_kind::lender:
          s.release_queue_turn();
          break;
        case lend_kind::held:
          s.release_held();
          s.queue_quiet();  // the deferred operation's entry may have been the last
          break;
      }
    }
  };

  // Starts a lend: the urgent queue runs, and a barrier behind what it holds
  // resumes the lender. Called under the core's lock.
  void begin_lending(const writer_ref<writer_state>& self, lend_kind kind, pump_id id) {
    queue_type& u = urgent_queue();
    u.start();
    u.async_wait(lend_resume{self, kind, id});
  }

  // A composed operation launched from the writer's queue, in turn with the
  // writes. Unless the writer has failed (then the handler gets its error,
  // and op never starts) or is gone (operation_aborted) it starts now, or,
  // if urgent items wait (MayDefer), runs in the urgent queue behind them
  // (defer_op). The running operation holds the shared state.
  template <class Signature, class Launcher, bool MayDefer>
  struct guarded {
    Launcher launcher;
    writer_ref<writer_state> state;

    template <class Handler>
    void operator()(Handler&& handler) {
      bool deferred = false;
      error_code ec;
      if constexpr (MayDefer) {
        ec = state->before_launch(
            [&] {
              state->template defer_op<Signature>(state, std::move(launcher),
                                                  std::forward<Handler>(handler));
            },
            deferred);
      } else {
        ec = state->launch_error();
      }
      if (ec) {
        // Completed inside the launch: the queue detects it and posts.
        std::apply(std::forward<Handler>(handler), queueable_signature<Signature>::failed(ec));
        return;
      }
      if (!deferred) {
        std::move(launcher)(keeping_handler<std::decay_t<Handler>, writer_state>(
            std::forward<Handler>(handler), std::move(state)));
      }
    }
  };

  // Runs a composed operation whose turn came while urgent items waited in
  // the urgent queue, behind them; its result is held, and the writer's
  // queue moves on, when the urgent queue is quiet. handler is the writer
  // queue's: it is still inside that operation's launch, so the urgent
  // queue takes over its cancellation slot safely. Called under the lock.
  template <class Signature, class Launcher, class Handler>
  void defer_op(const writer_ref<writer_state>& self, Launcher&& launcher, Handler&& handler) {
    using box_type = held_box<std::decay_t<Handler>, Signature>;
    box_type* box = allocate_node<box_type>(handler, std::forward<Handler>(handler));
    urgent_queue().template async_enqueue<Signature>(
        guarded<Signature, std::decay_t<Launcher>, false>{std::forward<Launcher>(launcher), self},
        held_handler<box_type, writer_state>(box, self));
    begin_lending(self, lend_kind::held, pump_id{});
  }

  // One write_some finished. Destroyed unrun only when the context shuts
  // down (the messages it was carrying are then destroyed too) or when the
  // stream's async_write_some throws.
  class write_done {
   public:
    write_done(writer_ref<writer_state> s, pump_id id) noexcept : self_(std::move(s)), id_(id) {}
    write_done(write_done&&) noexcept = default;
    write_done& operator=(write_done&&) = delete;

    using allocator_type = own_block_allocator<void, own_block::stream_op>;
    allocator_type get_allocator() const noexcept { return {}; }
    ~write_done() {
      // Dropped by the async_write_some that was to run it (it threw): the
      // writer, whose lock is held, handles that (start_write_locked).
      if (self_ && !self_->note_dropped_in_start())
        self_->shutdown_requests();
    }

    void operator()(const error_code& ec, std::size_t n) {
      writer_ref<writer_state> self = std::move(self_);
      if (self->defer_in_emit(deferred_completion::kind::write, id_, ec, n))
        return;  // inside the writer's emit: resumed once it let go of its lock
      node_list done;
      self->on_written(ec, n, done);
      if (id_.early) {
        const pump_id next{id_.l, id_.segment, false};
        complete_then(std::move(self), done, [next](writer_ref<writer_state> s) {
          if (s->early_meet())
            advance(std::move(s), next);  // the turn is in: this is its pump now
        });
        return;
      }
      step(std::move(self), id_, std::move(done));
    }

   private:
    writer_ref<writer_state> self_;
    pump_id id_;
  };

  // The closing operation finished. Its executor is the stream's, and its
  // cancellation slot the close's (signals reach a running close). Destroyed
  // unrun only when the context shuts down, or when the operation's launch
  // throws (launch_close).
  class close_done {
   public:
    close_done(writer_ref<writer_state> s, pump_id id) noexcept : self_(std::move(s)), id_(id) {}
    close_done(close_done&&) noexcept = default;
    close_done& operator=(close_done&&) = delete;
    ~close_done() {
      // Dropped by the closing operation's launch: launch_close handles it.
      if (self_ && !self_->note_dropped_in_start())
        self_->shutdown_requests();
    }

    using executor_type = typename writer_state::executor_type;
    executor_type get_executor() const noexcept { return self_->executor_.get(); }

    using cancellation_slot_type = net::cancellation_slot;
    cancellation_slot_type get_cancellation_slot() const noexcept { return self_->close_slot(); }

    template <class... Ts>
    void operator()(const error_code& ec, Ts&&...) {
      writer_ref<writer_state> self = std::move(self_);
      if (self->defer_in_emit(deferred_completion::kind::close, id_, ec, 0))
        return;  // inside the writer's emit: resumed once it let go of its lock
      self->note_completed_in_start();
      node_list done;
      self->on_closed(ec, done);
      step(std::move(self), id_, std::move(done));
    }

   private:
    writer_ref<writer_state> self_;
    pump_id id_;
  };

  void resume_deferred(const deferred_completion& d) override {
    if (d.what == deferred_completion::kind::write)
      write_done(shared_self(), d.id)(d.ec, d.n);
    else
      close_done(shared_self(), d.id)(d.ec);
  }

  void complete_then_resume(node_list& done, const deferred_completion& d) override {
    complete_then(shared_self(), done, [d](writer_ref<writer_state> s) {
      if (d)
        s->resume_deferred(d);
    });
  }

  void resume_later(const deferred_completion& d) override {
    const executor_type ex = executor_.get();
    net::post(ex, [self = shared_self(), d] { self->resume_deferred(d); });
  }

  writer_ref<writer_state> shared_self() { return writer_ref<writer_state>::share(this); }

  static void step(writer_ref<writer_state> self, pump_id id, node_list done) {
    // Complete first: the callers resumed here queue their next messages
    // before the next window is cut, so it gathers them too.
    complete_then(std::move(self), done,
                  [id](writer_ref<writer_state> s) { advance(std::move(s), id); });
  }

 private:
  using storage = std::conditional_t<owns_stream, std::optional<Stream>, next_layer_type*>;

  template <class... Args>
  static storage make_storage(Args&&... args) {
    if constexpr (owns_stream)
      return storage(std::in_place, std::forward<Args>(args)...);
    else
      return storage(&static_cast<next_layer_type&>(args)...);
  }

  // An urgent pump exists only once the urgent lane does (urgent_queue()).
  // A pump of lane l took its queue's turn (t).
  void hold_turn(lane l, turn& t) noexcept {
    if (l == lane::urgent)
      urgent_->held = std::move(t);
    else
      hold_queue_turn(t);
  }
  // The pump of lane l ends its queue's turn.
  void release_turn_of(lane l) noexcept {
    if (l == lane::urgent)
      urgent_->held.release();
    else
      release_queue_turn();
  }

  struct no_next {
    void operator()(const writer_ref<writer_state>&) const noexcept {}
  };

  // The pump `id` goes on: a write_some, a lend, a close, or the end of its
  // segment.
  static void advance(writer_ref<writer_state> self, pump_id id) {
    writer_state& s = *self;
    const writer_ref<writer_state> keep = self;
    node_list done;
    writer_node* closing = nullptr;
    const step_action a = s.next_step(
        id, done,
        [&](const buffer_window& window) {
          s.stream_->async_write_some(
              window, net::bind_cancellation_slot(s.write_slot(), write_done(std::move(self), id)));
        },
        [&] { s.begin_lending(keep, lend_kind::pump, id); }, closing);
    switch (a) {
      case step_action::write:
      case step_action::lend:
        complete_then(keep, done, no_next());
        break;
      case step_action::drained:
        s.release_turn_of(id.l);
        complete_then(keep, done, no_next());
        break;
      case step_action::close:
        // What finished before the close completes before it starts.
        complete_then(keep, done, [closing, id](writer_ref<writer_state> st) {
          const writer_ref<writer_state> state = st;
          close_done finished(std::move(st), id);
          if (state->gone()) {
            // A handler completed above destroyed the writer: the close is
            // aborted, never started.
            std::move(finished)(error_code(net::error::operation_aborted));
            return;
          }
          const error_code failed = state->launch_close([&] {
            static_cast<close_request<writer_state>*>(closing)->launch(*state, std::move(finished));
          });
          if (failed) {
            // The closing operation did not start: the close completes with
            // failed, as if the operation had, and the pump goes on.
            // (Unless the operation completed the close meanwhile, on
            // another thread, and that completion goes on from there.)
            node_list closed;
            if (state->on_closed(failed, closed))
              step(state, id, std::move(closed));
          }
        });
        break;
    }
  }

  // Completes done in order, then runs next(self). A handler that throws
  // propagates out of run(), as in Asio, but must not lose the others nor
  // stall the writer: the rest complete, and next runs, from a continuation
  // posted before the exception leaves.
  template <class Next>
  static void complete_then(writer_ref<writer_state> self, node_list& done, Next next) {
    try {
      done.complete_all(*self, completion_mode::dispatch);
    } catch (...) {
      // Not through stream_: the handler that threw may have destroyed the
      // writer, and the stream with it.
      const executor_type ex = self->executor_.get();
      net::post(ex,
                [self = std::move(self), next = std::move(next), rest = std::move(done)]() mutable {
                  complete_then(std::move(self), rest, std::move(next));
                });
      throw;
    }
    next(std::move(self));
  }

  storage stream_{};
  // The stream's executor (an any_io_executor on an io_context in 16 bytes).
  const stored_executor<executor_type> executor_;
  // The urgent lane: its queue, and the turn of it its active pump holds.
  // Made on the first urgent request.
  struct urgent_lane {
    explicit urgent_lane(const executor_type& ex) : queue(ex, "serq.queued_writer.urgent") {}
    turn held;
    queue_type queue;
  };
  std::unique_ptr<urgent_lane> urgent_;
};

// What tests may see of a writer's internals.
struct writer_access {
  // The core of the writer's queue, null while the writer holds none.
  template <class Stream>
  static const void* queue(const queued_writer<Stream>& w) noexcept {
    return w.state_->queue_address();
  }
};

}  // namespace detail

template <class Stream>
template <
    class... Args,
    std::enable_if_t<std::is_constructible_v<Stream, Args&&...> &&
                         !(sizeof...(Args) == 1 &&
                           (std::is_same_v<std::decay_t<Args>, queued_writer<Stream>> || ...)),
                     int>>
queued_writer<Stream>::queued_writer(Args&&... args)
    : state_(detail::make_writer_ref<state_type>(std::in_place, std::forward<Args>(args)...)) {
  if (!detail::queue_service(state_->get_executor()).add(*state_)) {
    detail::node_list none;
    net::any_io_executor no_work;  // nothing is queued yet: nothing to post
    state_->close(none, no_work);
  }
}

// What can throw (the moved-from writer's new state) comes first: if it
// does, both writers are as they were. Then the states change hands (with
// the writer's queue), throwing nothing.
template <class Stream>
queued_writer<Stream>::queued_writer(queued_writer&& other)
    : state_(detail::make_writer_ref<state_type>(other.get_executor())) {
  state_.swap(other.state_);
}

template <class Stream>
queued_writer<Stream>& queued_writer<Stream>::operator=(queued_writer&& other) {
  if (this != &other) {
    detail::writer_ref<state_type> fresh =
        detail::make_writer_ref<state_type>(other.get_executor());
    close_state();  // throws nothing; aborts the waiting pumps of this writer's queue
    state_ = std::exchange(other.state_, std::move(fresh));
  }
  return *this;
}

template <class Stream>
queued_writer<Stream>::~queued_writer() {
  close_state();
}

template <class Stream>
void queued_writer<Stream>::close_state() {
  net::any_io_executor work;  // declared first: released after the aborts are posted
  detail::queue_service(state_->get_executor()).remove(*state_);
  detail::node_list done;
  state_->close(done, work);
  // Runs in the destructor: an abort whose completion cannot be posted
  // (std::bad_alloc) destroys that handler unrun, as at shutdown, and the
  // others are still aborted; nothing is thrown.
  try {
    state_->abort_urgent();
  } catch (...) {
  }
  for (;;) {
    try {
      done.complete_all(*state_, detail::completion_mode::post);
      break;
    } catch (...) {
      // That one is gone (destroyed unrun); the rest go on.
    }
  }
  // Last, as the queue's destructor did when the writer kept one: the
  // waiting pumps, lenders and composed operations are aborted (the
  // aborted messages completed above).
  try {
    state_->close_queue();
  } catch (...) {
  }
  try {
    state_type::close_owned_stream(std::move(state_));  // state_ is reassigned or gone next
  } catch (...) {
    // The close could not be posted: a write in flight returns when the
    // stream lets it, as for a referenced stream.
  }
}

template <class Stream>
void queued_writer<Stream>::start_lender() {
  state_->acquire_locked(typename state_type::lender_start{state_});
}

template <class Stream>
void queued_writer<Stream>::add_node(detail::writer_node* n, bool urgent) {
  detail::node_list rejected;
  bool early_failed = false;
  if (urgent) {
    state_->add_urgent(
        n, rejected,
        [this](std::uint32_t segment) {
          state_->urgent_queue().async_acquire(
              typename state_type::pump_start{state_, {detail::lane::urgent, segment}});
        },
        [this] { start_lender(); });
  } else {
    early_failed = state_->add_write(
        n, rejected,
        [this] {
          // The caller runs the stream's executor (inside its strand, for a
          // strand), as a pump would.
          const executor_type ex = get_executor();
          return detail::running_in(ex) && detail::may_launch_here(ex);
        },
        [this] { return state_->queue_empty_locked(); },
        [this](detail::pump_id id) {
          if (id.early) {
            // The writer's queue is idle (queue_idle() above) and this thread
            // runs its executor: unless the queue is observed, the pump's
            // turn is taken now, with no entry and no post.
            if (state_->take_idle_queue_turn()) {
              state_->early_turn_in();
              return;
            }
            state_->reset_early();  // before the turn can arrive, on any thread
          }
          state_->acquire_locked(typename state_type::pump_start{state_, id});
        },
        [this](const detail::buffer_window& window, detail::pump_id id) {
          state_->start_early_write(state_, window, id);
        });
  }
  // The early write never started (the writer has failed): no completion
  // meets the pump's turn, so this call stands in for it. If the turn is
  // in already, its pump ends here; else the turn, when it comes, finds the
  // failed writer drained and hands itself on.
  if (early_failed && state_->early_meet())
    state_->release_turn();
  // Still inside the initiating call.
  rejected.complete_all(*state_, detail::completion_mode::immediate);
}

template <class Stream>
struct queued_writer<Stream>::initiate_write {
  queued_writer* self;
  bool urgent;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->get_executor(); }

  template <class Handler, class Buffers>
  void operator()(Handler&& handler, Buffers&& buffers) const {
    using node_type =
        detail::handler_node<std::decay_t<Buffers>, std::decay_t<Handler>, executor_type>;
    detail::writer_node* n = detail::allocate_node<node_type>(
        handler, detail::writer_node::kind::write, std::forward<Buffers>(buffers),
        std::forward<Handler>(handler), get_executor(), self->state_);
    self->add_node(n, urgent);
  }
};

template <class Stream>
struct queued_writer<Stream>::initiate_signal {
  queued_writer* self;
  detail::writer_node::kind kind;  // flush or waiter

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->get_executor(); }

  template <class Handler>
  void operator()(Handler&& handler) const {
    using node_type = detail::handler_node<detail::no_bytes, std::decay_t<Handler>, executor_type>;
    detail::writer_node* n = detail::allocate_node<node_type>(handler, kind, detail::no_bytes(),
                                                              std::forward<Handler>(handler),
                                                              get_executor(), self->state_);
    if (kind == detail::writer_node::kind::flush) {
      self->add_node(n, false);
    } else {
      detail::node_list ready;
      self->state_->add_waiter(n, ready);
      ready.complete_all(*self->state_, detail::completion_mode::immediate);
    }
  }
};

template <class Stream>
struct queued_writer<Stream>::initiate_read_some {
  queued_writer* self;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->get_executor(); }

  template <class Handler, class MutableBufferSequence>
  void operator()(Handler&& handler, const MutableBufferSequence& buffers) const {
    if (!self->state_->has_stream()) {  // moved from
      detail::complete_immediately(std::forward<Handler>(handler), get_executor(),
                                   error_code(net::error::bad_descriptor), std::size_t(0));
      return;
    }
    self->state_->stream().async_read_some(buffers, std::forward<Handler>(handler));
  }
};

template <class Stream>
struct queued_writer<Stream>::initiate_close {
  queued_writer* self;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->get_executor(); }

  template <class Handler, class Closer>
  void operator()(Handler&& handler, Closer&& closer) const {
    using node_type =
        detail::close_node<std::decay_t<Closer>, std::decay_t<Handler>, executor_type, state_type>;
    detail::writer_node* n = detail::allocate_node<node_type>(handler, std::forward<Closer>(closer),
                                                              std::forward<Handler>(handler),
                                                              get_executor(), self->state_);
    detail::node_list rejected;
    self->state_->add_close(n, rejected, [this](std::uint32_t segment) {
      self->state_->acquire_locked(
          typename state_type::pump_start{self->state_, {detail::lane::normal, segment}});
    });
    rejected.complete_all(*self->state_, detail::completion_mode::immediate);
  }
};

template <class Stream>
template <class Signature, bool Urgent>
struct queued_writer<Stream>::initiate_enqueue {
  queued_writer* self;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->get_executor(); }

  template <class Handler, class Launcher>
  void operator()(Handler&& handler, Launcher&& launcher) const {
    using launcher_type = std::decay_t<Launcher>;
    error_code ec;
    if constexpr (Urgent) {
      ec = self->state_->add_urgent_operation(
          [&] {
            self->state_->urgent_queue().template async_enqueue<Signature>(
                typename state_type::template guarded<Signature, launcher_type, false>{
                    std::forward<Launcher>(launcher), self->state_},
                std::forward<Handler>(handler));
          },
          [&] { self->start_lender(); });
    } else {
      ec = self->state_->add_operation([&] {
        self->state_->template enqueue_locked<Signature>(
            typename state_type::template guarded<Signature, launcher_type, true>{
                std::forward<Launcher>(launcher), self->state_},
            std::forward<Handler>(handler));
      });
    }
    if (ec) {
      std::apply(
          [&](auto&&... args) {
            detail::complete_immediately(std::forward<Handler>(handler), get_executor(),
                                         std::move(args)...);
          },
          detail::queueable_signature<Signature>::failed(ec));
    }
  }
};

template <class Stream>
template <class ConstBufferSequence, class CompletionToken,
          std::enable_if_t<!std::is_same_v<ConstBufferSequence, urgent_t>, int>>
auto queued_writer<Stream>::async_write(const ConstBufferSequence& buffers,
                                        CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this, false}, token, detail::borrowed_buffers<ConstBufferSequence>{buffers});
}

template <class Stream>
template <class ConstBufferSequence, class CompletionToken>
auto queued_writer<Stream>::async_write(urgent_t, const ConstBufferSequence& buffers,
                                        CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this, true}, token, detail::borrowed_buffers<ConstBufferSequence>{buffers});
}

template <class Stream>
template <class Message, class CompletionToken,
          std::enable_if_t<!std::is_same_v<Message, urgent_t>, int>>
auto queued_writer<Stream>::async_send(Message msg, CompletionToken&& token) {
  detail::check_owned_message<Message>();
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this, false}, token, detail::owned_message<Message>{std::move(msg)});
}

template <class Stream>
template <class Message, class CompletionToken>
auto queued_writer<Stream>::async_send(urgent_t, Message msg, CompletionToken&& token) {
  detail::check_owned_message<Message>();
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this, true}, token, detail::owned_message<Message>{std::move(msg)});
}

template <class Stream>
template <class CompletionToken>
auto queued_writer<Stream>::async_flush(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code)>(
      initiate_signal{this, detail::writer_node::kind::flush}, token);
}

template <class Stream>
template <class CompletionToken,
          std::enable_if_t<!net::is_async_operation<std::decay_t<CompletionToken>>::value, int>>
auto queued_writer<Stream>::async_close(CompletionToken&& token) {
  static_assert(detail::has_default_close<next_layer_type>,
                "serq::queued_writer::async_close(token) closes sockets (shutdown of the send "
                "side) and streams with async_shutdown (TLS); for another stream pass its "
                "closing operation: async_close(op, token)");
  return net::async_initiate<CompletionToken, void(error_code)>(initiate_close{this}, token,
                                                                detail::stream_closer());
}

template <class Stream>
template <class Op, class CompletionToken,
          std::enable_if_t<net::is_async_operation<std::decay_t<Op>>::value, int>>
auto queued_writer<Stream>::async_close(Op&& op, CompletionToken&& token) {
  detail::check_queueable<detail::op_signature_t<Op>>();
  return net::async_initiate<CompletionToken, void(error_code)>(
      initiate_close{this}, token, detail::op_closer<std::decay_t<Op>>{std::forward<Op>(op)});
}

template <class Stream>
template <class CompletionToken>
auto queued_writer<Stream>::async_wait_writable(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code)>(
      initiate_signal{this, detail::writer_node::kind::waiter}, token);
}

template <class Stream>
template <class Op, class CompletionToken,
          std::enable_if_t<!std::is_same_v<std::decay_t<Op>, urgent_t>, int>>
auto queued_writer<Stream>::async_enqueue(Op&& op, CompletionToken&& token) {
  using signature = detail::op_signature_t<Op>;
  detail::check_queueable<signature>();
  return net::async_initiate<CompletionToken, signature>(initiate_enqueue<signature, false>{this},
                                                         token, std::forward<Op>(op));
}

template <class Stream>
template <class Signature, class Initiation, class CompletionToken,
          std::enable_if_t<!std::is_same_v<std::decay_t<Initiation>, urgent_t>, int>>
auto queued_writer<Stream>::async_enqueue(Initiation&& init, CompletionToken&& token) {
  detail::check_queueable<Signature>();
  return net::async_initiate<CompletionToken, Signature>(initiate_enqueue<Signature, false>{this},
                                                         token, std::forward<Initiation>(init));
}

template <class Stream>
template <class Op, class CompletionToken>
auto queued_writer<Stream>::async_enqueue(urgent_t, Op&& op, CompletionToken&& token) {
  using signature = detail::op_signature_t<Op>;
  detail::check_queueable<signature>();
  return net::async_initiate<CompletionToken, signature>(initiate_enqueue<signature, true>{this},
                                                         token, std::forward<Op>(op));
}

template <class Stream>
template <class Signature, class Initiation, class CompletionToken>
auto queued_writer<Stream>::async_enqueue(urgent_t, Initiation&& init, CompletionToken&& token) {
  detail::check_queueable<Signature>();
  return net::async_initiate<CompletionToken, Signature>(initiate_enqueue<Signature, true>{this},
                                                         token, std::forward<Initiation>(init));
}

template <class Stream>
void queued_writer<Stream>::set_watermarks(std::size_t low, std::size_t high) {
  net::any_io_executor work;  // declared first: released after the waiters are posted
  detail::node_list done;
  state_->set_watermarks(low, high, done, work);
  done.complete_all(*state_, detail::completion_mode::post);
}

template <class Stream>
template <class Rep, class Period>
void queued_writer<Stream>::set_stall_timeout(const std::chrono::duration<Rep, Period>& timeout) {
  static_assert(std::is_convertible_v<executor_type, net::any_io_executor>,
                "serq::queued_writer::set_stall_timeout: the stall timer runs on the stream's "
                "executor, which must convert to any_io_executor");
  using clock_duration = detail::writer_core::clock::duration;
  clock_duration d = clock_duration::zero();
  if (timeout > timeout.zero()) {
    // About 95 years: past that the deadline would overflow the clock.
    constexpr double longest = 3.0e9;
    if (std::chrono::duration<double>(timeout).count() >= longest)
      d = std::chrono::duration_cast<clock_duration>(std::chrono::duration<double>(longest));
    else
      d = std::chrono::ceil<clock_duration>(timeout);
  }
  state_->set_stall_timeout(d, net::any_io_executor(get_executor()));
}

template <class Stream>
writer_stats queued_writer<Stream>::stats() const noexcept {
  const detail::writer_counters c = state_->counters();
  writer_stats s;
  s.messages = c.messages;
  s.bytes = c.bytes;
  s.write_calls = c.write_calls;
  s.pending_bytes = c.pending_bytes;
  s.peak_pending_bytes = c.peak_pending_bytes;
  s.time_above_high_watermark = c.time_above_high_watermark;
  return s;
}

template <class Stream>
std::size_t queued_writer<Stream>::cancel() {
  net::any_io_executor work;  // declared first: released after the aborts are posted
  detail::node_list done;
  const std::size_t n = state_->cancel(done, work);
  done.complete_all(*state_, detail::completion_mode::post);
  return n;
}

SERQ_NAMESPACE_END

// Every associator of a deferred composed operation's handler in the urgent
// queue is that of the writer queue's handler it holds.
template <template <class, class> class Associator, class Box, class State, class DefaultCandidate>
struct serq::net::associator<Associator, serq::detail::held_handler<Box, State>, DefaultCandidate> {
  using handler_type = std::decay_t<decltype(std::declval<const Box&>().handler())>;
  using type = typename Associator<handler_type, DefaultCandidate>::type;

  static type get(const serq::detail::held_handler<Box, State>& h) noexcept {
    return Associator<handler_type, DefaultCandidate>::get(h.box()->handler());
  }

  static auto get(const serq::detail::held_handler<Box, State>& h,
                  const DefaultCandidate& c) noexcept
      -> decltype(Associator<handler_type, DefaultCandidate>::get(h.box()->handler(), c)) {
    return Associator<handler_type, DefaultCandidate>::get(h.box()->handler(), c);
  }
};

// Every associator of a composed operation's handler is the queue's
// handler's.
template <template <class, class> class Associator, class Handler, class State,
          class DefaultCandidate>
struct serq::net::associator<Associator, serq::detail::keeping_handler<Handler, State>,
                             DefaultCandidate> {
  using type = typename Associator<Handler, DefaultCandidate>::type;

  static type get(const serq::detail::keeping_handler<Handler, State>& h) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.handler());
  }

  static auto get(const serq::detail::keeping_handler<Handler, State>& h,
                  const DefaultCandidate& c) noexcept
      -> decltype(Associator<Handler, DefaultCandidate>::get(h.handler(), c)) {
    return Associator<Handler, DefaultCandidate>::get(h.handler(), c);
  }
};

#endif  // SERQ_IMPL_QUEUED_WRITER_HPP
