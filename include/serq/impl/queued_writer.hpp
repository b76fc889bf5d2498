//
// serq/impl/queued_writer.hpp
//

#ifndef SERQ_IMPL_QUEUED_WRITER_HPP
#define SERQ_IMPL_QUEUED_WRITER_HPP

#include <serq/config.hpp>
#include <serq/detail/entries.hpp>
#include <serq/detail/handler_alloc.hpp>
#include <serq/detail/writer_core.hpp>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

SERQ_NAMESPACE_BEGIN
namespace detail {

// A buffer sequence the caller owns and keeps alive.
template <class ConstBufferSequence>
struct borrowed_buffers {
  ConstBufferSequence seq;
  const ConstBufferSequence& sequence() const noexcept { return seq; }
};

template <class T>
struct is_message_body : std::false_type {};
template <>
struct is_message_body<std::string> : std::true_type {};
template <>
struct is_message_body<std::vector<char>> : std::true_type {};
template <>
struct is_message_body<std::vector<unsigned char>> : std::true_type {};
template <>
struct is_message_body<std::vector<std::byte>> : std::true_type {};

template <class T>
struct is_message : is_message_body<T> {};
template <class T>
struct is_message<std::shared_ptr<T>> : is_message_body<std::remove_const_t<T>> {};

// A message the writer owns until it is written.
template <class Message>
struct owned_message {
  Message msg;

  template <class T>
  static net::const_buffer view(const T& body) noexcept {
    return net::buffer(body);
  }
  template <class T>
  static net::const_buffer view(const std::shared_ptr<T>& p) noexcept {
    return p ? net::buffer(*p) : net::const_buffer();
  }
  // Recomputed on use: moving a short std::string moves its bytes.
  net::const_buffer sequence() const noexcept { return view(msg); }
};

// A flush or wait_writable request carries no bytes.
struct no_bytes {
  net::const_buffer sequence() const noexcept { return {}; }
};

// A queued request: owns the user's handler and, for a write, (a view of)
// the bytes. Writes complete with (error_code, bytes); a flush or a
// wait_writable (Buffers = no_bytes) with an error_code only.
template <class Buffers, class Handler, class Executor>
class handler_node final : public writer_node {
  static constexpr bool carries_bytes = !std::is_same_v<Buffers, no_bytes>;

 public:
  template <class B, class H>
  handler_node(kind k, B&& b, H&& h, const Executor& ex, const std::shared_ptr<writer_core>& core)
      : writer_node(&table, k, 0),
        buffers_(std::forward<B>(b)),
        handler_(std::forward<H>(h)),
        work_(net::get_associated_executor(handler_, ex)) {
    set_size(net::buffer_size(buffers_.sequence()));
    attach_canceller(net::get_associated_cancellation_slot(handler_), core);
  }

 private:
  using handler_executor = net::associated_executor_t<Handler, Executor>;

  static void do_complete(writer_node* b, error_code ec, std::size_t n, completion_mode mode) {
    auto* self = static_cast<handler_node*>(b);
    if constexpr (carries_bytes)
      free_then_deliver(self, self->handler_, self->work_, mode, ec, n);
    else
      free_then_deliver(self, self->handler_, self->work_, mode, ec);
  }

  static void do_destroy(writer_node* b) noexcept {
    auto* self = static_cast<handler_node*>(b);
    deallocate_node(self, node_allocator(self->handler_));
  }

  static void do_fill(const writer_node* b, std::size_t offset, window_builder& w) noexcept {
    const auto* self = static_cast<const handler_node*>(b);
    const auto& seq = self->buffers_.sequence();
    auto it = net::buffer_sequence_begin(seq);
    const auto end = net::buffer_sequence_end(seq);
    for (; it != end && !w.full(); ++it) {
      net::const_buffer buf(*it);
      if (offset >= buf.size()) {
        offset -= buf.size();
        continue;
      }
      buf += offset;
      offset = 0;
      w.append(buf);
    }
  }

  static constexpr ops table{&do_complete, &do_destroy, &do_fill};

  Buffers buffers_;
  Handler handler_;
  work_guard<handler_executor> work_;
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

// The writer's shared state: the state machine, the stream (owned, or
// referenced for queued_writer<S&>) and the pump that feeds the state
// machine the stream's write_some results. One pump holds the serialized
// queue's turn at a time, so at most one write_some is ever in flight. An
// owned stream lives here, not in the writer object, so that it outlives
// the operation in flight whenever the writer is destroyed.
template <class Stream>
class writer_state final : public writer_core {
 public:
  using next_layer_type = std::remove_reference_t<Stream>;
  using executor_type = typename next_layer_type::executor_type;
  static constexpr bool owns_stream = !std::is_reference_v<Stream>;

  // Constructs (or, for a reference, binds) the stream from args.
  template <class... Args>
  explicit writer_state(std::in_place_t, Args&&... args)
      : stream_(make_storage(std::forward<Args>(args)...)), executor_(stream_->get_executor()) {}

  // The state a moved-from writer is left with: no stream, failed.
  explicit writer_state(const executor_type& ex) : executor_(ex) {
    fail(net::error::bad_descriptor);
  }

  bool has_stream() const noexcept { return static_cast<bool>(stream_); }
  next_layer_type& stream() noexcept { return *stream_; }
  const next_layer_type& stream() const noexcept { return *stream_; }

  // The writer owning the stream is gone. Closes the stream's bottom layer so
  // that a write_some in flight returns now; the stream itself goes when the
  // last reference to this state (that write's handler) does. The close runs
  // on the stream's executor, as every other use of the stream does.
  static void close_owned_stream(std::shared_ptr<writer_state> self) {
    if constexpr (owns_stream) {
      if (!self->has_stream() || self.use_count() == 1)
        return;  // nothing in flight: the stream is destroyed (and closed) with self
      const executor_type ex = self->executor_;
      net::dispatch(ex, [self = std::move(self)] { close_lowest_layer(self->stream()); });
    }
  }

  // The pump's turn has come (async_acquire's handler).
  struct pump_start {
    std::shared_ptr<writer_state> self;
    std::uint64_t segment;

    void operator()(const error_code& ec, turn t) {
      if (ec)
        return;  // the writer is gone: its messages were aborted
      self->turn_ = std::move(t);
      step(std::move(self), segment, node_list());
    }
  };

  // One write_some finished. Destroyed unrun only when the context shuts
  // down; the messages it was carrying are then destroyed too.
  class write_done {
   public:
    write_done(std::shared_ptr<writer_state> s, std::uint64_t segment) noexcept
        : self_(std::move(s)), segment_(segment) {}
    write_done(write_done&&) noexcept = default;
    write_done& operator=(write_done&&) = delete;
    ~write_done() {
      if (self_)
        self_->shutdown();
    }

    void operator()(const error_code& ec, std::size_t n) {
      std::shared_ptr<writer_state> self = std::move(self_);
      node_list done;
      self->on_written(ec, n, done);
      step(std::move(self), segment_, std::move(done));
    }

   private:
    std::shared_ptr<writer_state> self_;
    std::uint64_t segment_;
  };

  static void step(std::shared_ptr<writer_state> self, std::uint64_t segment, node_list done) {
    // Complete first: the callers resumed here queue their next messages
    // before the next window is cut, so it gathers them too.
    complete(self, &segment, done);
    writer_state& s = *self;
    const std::shared_ptr<writer_state> keep = self;
    const bool writing = s.next_write(segment, done, [&](const buffer_window& window) {
      s.stream_->async_write_some(
          window,
          net::bind_cancellation_slot(s.write_slot(), write_done(std::move(self), segment)));
    });
    if (!writing)
      s.turn_.release();
    complete(keep, nullptr, done);
  }

  // Completes done in order. A handler that throws propagates out of run(),
  // as in Asio, but must not lose the others nor stall the writer: the rest
  // complete, and the pump goes on (when resume is set), from a continuation
  // posted before the exception leaves.
  static void complete(const std::shared_ptr<writer_state>& self, const std::uint64_t* resume,
                       node_list& done) {
    try {
      done.complete_all(completion_mode::dispatch);
    } catch (...) {
      const bool go_on = resume != nullptr;
      const std::uint64_t segment = go_on ? *resume : 0;
      // Not through stream_: the handler that threw may have destroyed the
      // writer, and the stream with it.
      net::post(self->executor_, [self, go_on, segment, rest = std::move(done)]() mutable {
        if (go_on)
          step(std::move(self), segment, std::move(rest));
        else
          complete(self, nullptr, rest);
      });
      throw;
    }
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

  storage stream_{};
  const executor_type executor_;
  turn turn_;  // touched only by the active pump
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
    : state_(std::make_shared<state_type>(std::in_place, std::forward<Args>(args)...)),
      queue_(state_->stream().get_executor(), "serq.queued_writer") {
  if (!detail::queue_service(queue_.get_executor()).add(*state_)) {
    detail::node_list none;
    state_->close(none);
  }
}

template <class Stream>
queued_writer<Stream>::queued_writer(queued_writer&& other)
    : state_(
          std::exchange(other.state_, std::make_shared<state_type>(other.queue_.get_executor()))),
      queue_(std::move(other.queue_)) {}

template <class Stream>
queued_writer<Stream>& queued_writer<Stream>::operator=(queued_writer&& other) {
  if (this != &other) {
    close_state();
    state_ = std::exchange(other.state_, std::make_shared<state_type>(other.queue_.get_executor()));
    queue_ = std::move(other.queue_);
  }
  return *this;
}

template <class Stream>
queued_writer<Stream>::~queued_writer() {
  close_state();
}

template <class Stream>
void queued_writer<Stream>::close_state() {
  detail::queue_service(queue_.get_executor()).remove(*state_);
  detail::node_list done;
  state_->close(done);
  done.complete_all(detail::completion_mode::post);
  state_type::close_owned_stream(std::move(state_));  // state_ is reassigned or gone next
}

template <class Stream>
void queued_writer<Stream>::add_node(detail::writer_node* n) {
  detail::node_list rejected;
  state_->add(n, rejected, [this](std::uint64_t segment) {
    queue_.async_acquire(typename state_type::pump_start{state_, segment});
  });
  rejected.complete_all(detail::completion_mode::immediate);  // still inside the initiating call
}

template <class Stream>
struct queued_writer<Stream>::initiate_write {
  queued_writer* self;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->queue_.get_executor(); }

  template <class Handler, class Buffers>
  void operator()(Handler&& handler, Buffers&& buffers) const {
    using node_type =
        detail::handler_node<std::decay_t<Buffers>, std::decay_t<Handler>, executor_type>;
    detail::writer_node* n = detail::allocate_node<node_type>(
        handler, detail::writer_node::kind::write, std::forward<Buffers>(buffers),
        std::forward<Handler>(handler), get_executor(), self->state_);
    self->add_node(n);
  }
};

template <class Stream>
struct queued_writer<Stream>::initiate_signal {
  queued_writer* self;
  detail::writer_node::kind kind;  // flush or waiter

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->queue_.get_executor(); }

  template <class Handler>
  void operator()(Handler&& handler) const {
    using node_type = detail::handler_node<detail::no_bytes, std::decay_t<Handler>, executor_type>;
    detail::writer_node* n = detail::allocate_node<node_type>(handler, kind, detail::no_bytes(),
                                                              std::forward<Handler>(handler),
                                                              get_executor(), self->state_);
    if (kind == detail::writer_node::kind::flush) {
      self->add_node(n);
    } else {
      detail::node_list ready;
      self->state_->add_waiter(n, ready);
      ready.complete_all(detail::completion_mode::immediate);
    }
  }
};

template <class Stream>
template <class Signature>
struct queued_writer<Stream>::initiate_enqueue {
  queued_writer* self;

  using executor_type = typename queued_writer::executor_type;
  executor_type get_executor() const noexcept { return self->queue_.get_executor(); }

  // Launches the user's operation unless the writer failed while it waited.
  template <class Launcher>
  struct guarded {
    Launcher launcher;
    std::shared_ptr<detail::writer_core> state;

    template <class Handler>
    void operator()(Handler&& handler) {
      if (const error_code ec = state->error()) {
        // Completed inside the launch: the queue detects it and posts.
        std::apply(std::forward<Handler>(handler),
                   detail::queueable_signature<Signature>::failed(ec));
        return;
      }
      std::move(launcher)(std::forward<Handler>(handler));
    }
  };

  template <class Handler, class Launcher>
  void operator()(Handler&& handler, Launcher&& launcher) const {
    const error_code ec = self->state_->add_operation([&] {
      self->queue_.template async_enqueue<Signature>(
          guarded<std::decay_t<Launcher>>{std::forward<Launcher>(launcher), self->state_},
          std::forward<Handler>(handler));
    });
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
template <class ConstBufferSequence, class CompletionToken>
auto queued_writer<Stream>::async_write(const ConstBufferSequence& buffers,
                                        CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this}, token, detail::borrowed_buffers<ConstBufferSequence>{buffers});
}

template <class Stream>
template <class Message, class CompletionToken>
auto queued_writer<Stream>::async_send(Message msg, CompletionToken&& token) {
  static_assert(detail::is_message<Message>::value,
                "serq::queued_writer::async_send takes std::string, std::vector<char>, "
                "std::vector<unsigned char>, std::vector<std::byte>, or a std::shared_ptr to one");
  return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
      initiate_write{this}, token, detail::owned_message<Message>{std::move(msg)});
}

template <class Stream>
template <class CompletionToken>
auto queued_writer<Stream>::async_flush(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code)>(
      initiate_signal{this, detail::writer_node::kind::flush}, token);
}

template <class Stream>
template <class CompletionToken>
auto queued_writer<Stream>::async_wait_writable(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code)>(
      initiate_signal{this, detail::writer_node::kind::waiter}, token);
}

template <class Stream>
template <class Op, class CompletionToken>
auto queued_writer<Stream>::async_enqueue(Op&& op, CompletionToken&& token) {
  using signature = detail::op_signature_t<Op>;
  detail::check_queueable<signature>();
  return net::async_initiate<CompletionToken, signature>(initiate_enqueue<signature>{this}, token,
                                                         std::forward<Op>(op));
}

template <class Stream>
template <class Signature, class Initiation, class CompletionToken>
auto queued_writer<Stream>::async_enqueue(Initiation&& init, CompletionToken&& token) {
  detail::check_queueable<Signature>();
  return net::async_initiate<CompletionToken, Signature>(initiate_enqueue<Signature>{this}, token,
                                                         std::forward<Initiation>(init));
}

template <class Stream>
void queued_writer<Stream>::set_watermarks(std::size_t low, std::size_t high) {
  detail::node_list done;
  state_->set_watermarks(low, high, done);
  done.complete_all(detail::completion_mode::post);
}

template <class Stream>
std::size_t queued_writer<Stream>::cancel() {
  detail::node_list done;
  const std::size_t n = state_->cancel(done);
  done.complete_all(detail::completion_mode::post);
  return n;
}

SERQ_NAMESPACE_END

#endif  // SERQ_IMPL_QUEUED_WRITER_HPP
