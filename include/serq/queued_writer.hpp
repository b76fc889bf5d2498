//
// serq/queued_writer.hpp
//

#ifndef SERQ_QUEUED_WRITER_HPP
#define SERQ_QUEUED_WRITER_HPP

#include <serq/config.hpp>
#include <serq/detail/writer_core.hpp>
#include <serq/serialized_queue.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {
template <class Stream>
class writer_state;
struct writer_access;
}  // namespace detail

/// Counters of a queued_writer, from `queued_writer::stats()`.
/**
 * The counts cover the writer's whole life (a moved-to writer carries them
 * on). A message counts in `messages` when all its bytes were written, and
 * its bytes in `bytes` as the stream accepts them, whether or not the
 * message later completes; composed operations run with `async_enqueue`
 * count in none of them.
 */
struct writer_stats {
  std::uint64_t messages = 0;     ///< Messages written completely (empty ones included).
  std::uint64_t bytes = 0;        ///< Bytes the stream accepted from the writer's write_some calls.
  std::uint64_t write_calls = 0;  ///< write_some calls started.
  std::size_t pending_bytes = 0;  ///< Bytes queued and not yet written now (`pending_bytes()`).
  std::size_t peak_pending_bytes = 0;  ///< The largest `pending_bytes` so far.
  /// How long `pending_bytes` has been above the high watermark in all: from
  /// crossing it until dropping to the low watermark (the spells in which
  /// `writable()` was false for backpressure), the current spell included.
  std::chrono::steady_clock::duration time_above_high_watermark{};
};

/// Tag type of `serq::urgent`.
struct urgent_t {
  explicit urgent_t() = default;
};

/// Puts a write, a send or a composed operation into a writer's urgent lane:
/// `writer.async_write(serq::urgent, buffers, token)`. See
/// `queued_writer::async_write(urgent_t, ...)`.
inline constexpr urgent_t urgent{};

/// A per-stream writer: any number of callers, whole messages, in order.
/**
 * Any number of coroutines or threads call `async_write` (or `async_send`)
 * at once; each message's bytes are fully written, with as many
 * `write_some` calls as the stream needs, before the next message starts, so
 * messages never interleave on the wire. Messages queued behind an active
 * write are gathered into one vectored `write_some`. Other composed
 * operations on the stream (an HTTP serializer, a TLS shutdown) take their
 * turn between messages through `async_enqueue`.
 *
 * @par The first write
 * A writer with nothing to write, called from a thread that runs the
 * stream's executor (for a strand: from inside it), hands the message to the
 * stream's `async_write_some` inside the call, provided no composed
 * operation, urgent item or close is queued. Messages queued while that
 * write is in flight are gathered into the next one. Called from elsewhere,
 * or with anything else queued, the message waits for its turn, which is
 * posted. Either way the completion handler never runs inside the call.
 * Request/response protocols need this: a write that waited for the posted
 * turn would carry every request queued in that turn of the event loop, and
 * client and server would take turns instead of working at once.
 *
 * The writer models AsyncWriteStream and AsyncReadStream, so it can stand in
 * for the stream: `net::async_write(writer, ...)` queues its data (as one
 * write up to 64 KiB; above that, Asio's `async_write` hands it over in
 * pieces, each one queued write: see `async_write_some`), and reads go
 * straight to the next layer.
 *
 * @par Error policy
 * A write error fails the writer: the message(s) being written complete
 * with the error and the bytes each actually wrote, every queued message with
 * the error and 0, and every later call completes with it at once (never
 * inside the call). `error()` returns it. Every call gets exactly one
 * completion.
 *
 * @par Cancellation policy
 * A queued message whose cancellation slot is emitted (any type), or that
 * `cancel()` aborts, is removed: it completes with `operation_aborted` and 0,
 * and none of its bytes reach the stream. A message gathered into the
 * `write_some` in flight, none of whose bytes the stream has accepted yet, is
 * removed the same way when that call returns, if the stream took none of
 * them. A message that has started (the stream accepted some of its bytes)
 * cannot be half-cancelled: `total` and `partial` cancellation are ignored;
 * `terminal` cancellation cancels the stream operation, which fails the
 * writer, since the stream's framing is then unknown (between two
 * `write_some` calls there is no operation to cancel: the writer fails at
 * its next step, and the finished operation's cancellation handler is not
 * called). A stream (or closing)
 * operation may complete inside the cancellation handler the writer's signal
 * runs, as Asio allows: the writer then handles that result once the emit
 * has returned, on the same thread. One slot serves one request at a time:
 * binding it to another operation before the request completed destroys the
 * handler the writer installed there, which the request still uses
 * (undefined behaviour).
 *
 * Operations run with `async_enqueue` report their own results; an error
 * they report does not fail the writer.
 *
 * @par Urgent lane
 * `async_write(serq::urgent, ...)`, `async_send(serq::urgent, ...)` and
 * `async_enqueue(serq::urgent, ...)` queue into a second FIFO that goes ahead
 * of every normal message and composed operation not yet started: an urgent
 * item runs after the message the stream is writing (which is never
 * interrupted) and before anything normal after it. Urgent items run in the
 * order they were queued, writes and composed operations alike. Urgent
 * messages count in `pending_bytes()`, `size()` and the watermarks like any
 * other; no write ever waits for the watermarks. A normal composed operation
 * whose turn comes while urgent items are queued counts as started: it runs
 * in the urgent lane behind them and ahead of every urgent item queued after
 * its turn came, and completes once the urgent lane is empty; nothing normal
 * starts before that.
 *
 * @par Closing
 * `async_close` is queued behind everything already queued (as a flush is),
 * then runs the stream's graceful shutdown. From the call on, every new
 * request (writes, sends, flushes, composed operations, urgent ones,
 * `async_wait_writable`) completes at once with `net::error::shut_down` and
 * never reaches the stream; `writable()` is false. Once the close has
 * completed, `error()` returns `net::error::shut_down` (or the closing
 * operation's error, if it failed). A write error before the close fails the
 * close with that error. A close still queued behind writes can be
 * cancelled: the writer then stays open. Once it is due, signals go to the
 * closing operation (one that arrives before that operation starts reaches
 * it when it starts).
 *
 * @par Stall deadline
 * With `set_stall_timeout(d)`, a `write_some` of the writer that the stream
 * has not completed for `d` fails the writer with `net::error::timed_out`:
 * that `write_some` is cancelled and every request completes exactly once
 * with the error. Each completed `write_some` (progress of any size)
 * restarts the clock. Time the stream spends in composed operations or in a
 * close does not count. Off by default.
 *
 * @par Backpressure
 * `pending_bytes()` counts the bytes queued and not yet written.
 * `writable()` turns false when it exceeds the high watermark and true again
 * when it drops to the low one or below (defaults 32 KiB / 64 KiB).
 *
 * @par Executor
 * The writer's executor is the stream's. Completion handlers run on their
 * associated executor (default: the writer's), never inside the initiating
 * call. A completion that must not run where it arises (a request cancelled
 * while queued, or refused inside its call) is posted to the writer's
 * executor (or handed to the immediate executor Asio picks for it) and
 * dispatched from there to the handler's own, as an Asio I/O object's is: a
 * `use_future` handler runs on a thread that runs the stream's executor.
 *
 * @par Memory
 * A pending request is one allocation from its handler's associated
 * allocator (by default Asio's per-thread recycling allocator): four
 * pointers of bookkeeping plus the handler and the buffer sequence (or the
 * owned message). Outstanding work is counted by the writer's own operations
 * on the stream's executor; only a handler whose associated executor is a
 * different one gets a work guard of its own (one more allocation). A
 * message of 2^48 bytes or more completes with `net::error::message_size`
 * and is never written. What only a busy writer needs (its request lists,
 * the window being written, the stream's and the close's cancellation
 * signals) is one block, made when a request is queued and given back when
 * nothing is queued, being written or closing; the gather array (taken when
 * a `write_some` gathers more than four buffers) goes back at the same time.
 * Each thread keeps the last block and array given back, for the next writer
 * on that thread that needs one, so a writer that drains between messages
 * allocates nothing for them; what a thread keeps is freed when it ends (a
 * writer used later still, from the destructor of a `thread_local` or, on
 * the main thread, of a static, allocates and frees its own; only a main
 * thread that first keeps a block during static destruction keeps it until
 * the process exits). A request that
 * finds no memory for the block completes with `net::error::no_memory` and
 * the writer goes on; a window that finds none for the array writes the four
 * buffers it holds inline. The writer's own queue (which orders its writes
 * with composed operations) holds its state the same way: made, or taken
 * from the thread's spare, when something is queued in it, and given back
 * once nothing waits or runs in it (after a composed operation that was
 * cancelled, refused, or completed inside its launch or on another
 * executor, when the writer's next write has drained). That holds for a
 * stream on a plain `io_context` executor; on any other (a strand, or an
 * `any_io_executor` wrapping one) the writer keeps its queue's state while
 * idle, since no other writer could take it over: about 128 bytes, and a
 * block for the executor, instead of an allocation every time the writer
 * goes from idle to busy. The writer's own operations (a pump's entry in
 * its queue, the stream's write operation) take their blocks from a slot of
 * one block per thread for each kind, else from the recycling allocator,
 * so that a writer that goes idle between messages leaves that allocator's
 * blocks to its handlers. An idle writer holds none of the rest, nor
 * a stall timer before `set_stall_timeout`, nor an urgent queue before the
 * first urgent request. A request whose pump (or, urgent, its lender)
 * cannot be queued in the writer's queue (allocating or posting it throws)
 * completes with `net::error::no_memory` too, and the writer goes on.
 *
 * A stream whose `async_write_some` throws instead of starting the write
 * fails the writer as a failed write would, with the exception's error:
 * `no_memory` for `std::bad_alloc`, the code of a `system_error`,
 * `operation_not_supported` for anything else. Nothing of that write reached
 * the stream; the exception is not propagated (every request reports it).
 *
 * @par Object lifetimes
 * Destroying the writer aborts queued messages (`operation_aborted`, 0), and
 * composed operations and a close that have not started, even if their turn
 * has come (`operation_aborted`; they are never launched, as long as the
 * writer is destroyed on its executor: from another thread, one whose turn
 * is being taken at that moment may still start). The `write_some`
 * in flight, if any, still returns; no further one starts, and a message it
 * left partly written completes with `operation_aborted` and the bytes it
 * wrote. A composed operation or close in flight runs on to its completion.
 *
 * An owned stream (`queued_writer<S>`) is kept alive by the writer's shared
 * state until that `write_some` (or the composed operation or close in
 * flight) has returned, so destroying the writer is safe for every stream,
 * `ssl::stream` included. The destructor closes the stream's
 * lowest layer (`lowest_layer()`, else the bottom of `next_layer()`, with
 * `close()`), from the stream's executor, so that the write in flight returns
 * at once with an error; the stream is destroyed when it has. With nothing in
 * flight, the stream is destroyed (and so closed) inside the destructor,
 * unless the cancellation slot of an earlier request still holds the
 * writer's canceller (Asio leaves a slot's handler in place until the slot
 * is reused or its signal destroyed): the canceller keeps the shared state,
 * so the stream is then closed by a dispatch to its executor and destroyed
 * when the slot lets go. A
 * referenced stream (`queued_writer<S&>`) is never closed by the writer, and
 * must outlive the write, composed operation or close in flight. A read in flight through
 * `async_read_some` does not keep the stream alive: finish it first.
 *
 * The writer is movable, not copyable.
 *
 * @par Thread safety
 * Distinct objects: safe. Shared objects: every member function except the
 * destructor and move assignment may be called concurrently from any
 * thread, though not while the writer is being moved from (the source of a
 * move construction or assignment). `next_layer()` gives unsynchronised
 * access to the stream, and
 * `async_read_some` calls the stream directly: where the stream is not safe
 * to read and write at once from two threads (`ssl::stream`), read on the
 * writer's executor (its strand), where its writes run. The writer starts
 * the stream's `async_write_some`, and emits cancellation to the stream's
 * and a closing operation's cancellation handlers, with its lock held: code
 * that runs inside those calls (a stream wrapper's initiation, a
 * cancellation handler) must not call this writer's member functions or
 * emit a signal bound to one of its requests, which would wait for that lock
 * on the thread that holds it. (A cancellation handler may complete the
 * operation, as Asio allows: see the cancellation policy.)
 *
 * @tparam Stream The stream type, owned (`queued_writer<tcp::socket>`) or
 * referenced (`queued_writer<tcp::socket&>`).
 */
template <class Stream>
class queued_writer {
 public:
  /// The type of the wrapped stream.
  using next_layer_type = std::remove_reference_t<Stream>;

  /// The type of the executor associated with the object.
  using executor_type = typename next_layer_type::executor_type;

  /// Default lower watermark, in bytes.
  static constexpr std::size_t default_low_watermark = detail::writer_core::default_low_watermark;
  /// Default upper watermark, in bytes.
  static constexpr std::size_t default_high_watermark = detail::writer_core::default_high_watermark;
  /// Default limit of buffers per `write_some` (Asio's sockets take 64).
  static constexpr std::size_t default_max_buffers = detail::writer_core::default_max_buffers;
  /// Default limit of bytes per `write_some`.
  static constexpr std::size_t default_max_bytes = detail::writer_core::default_max_bytes;

  /// Constructs the stream from `args` (e.g. a moved socket, or an
  /// executor), or, for `queued_writer<S&>`, binds the given stream.
  template <class... Args,
            std::enable_if_t<std::is_constructible_v<Stream, Args&&...> &&
                                 !(sizeof...(Args) == 1 &&
                                   (std::is_same_v<std::decay_t<Args>, queued_writer> || ...)),
                             int> = 0>
  explicit queued_writer(Args&&... args);

  /// Move constructor: the new writer takes over `other`'s stream, messages
  /// and settings.
  /**
   * `other` is left without a stream and failed: every operation on it
   * completes with `net::error::bad_descriptor`, as on a failed writer
   * (never inside the call), `error()` returns
   * that, and `next_layer()` must not be called. It may be assigned to or
   * destroyed.
   */
  queued_writer(queued_writer&& other);

  /// Move assignment: closes this writer as its destructor does, then takes
  /// over `other`'s stream, messages and settings as the move constructor
  /// does.
  queued_writer& operator=(queued_writer&& other);

  queued_writer(const queued_writer&) = delete;
  queued_writer& operator=(const queued_writer&) = delete;

  /// Aborts queued messages; see the class's object lifetimes.
  ~queued_writer();

  /// Returns the stream's executor.
  executor_type get_executor() const noexcept { return state_->get_executor(); }

  /// Returns the wrapped stream. Not on a moved-from writer, which has none.
  next_layer_type& next_layer() noexcept { return state_->stream(); }
  /// Returns the wrapped stream. Not on a moved-from writer, which has none.
  const next_layer_type& next_layer() const noexcept { return state_->stream(); }

  /// Queues one message; completes when all its bytes are written.
  /**
   * @param buffers The message. The caller keeps the memory valid until the
   * handler runs, as with `net::async_write`. Copied (the sequence,
   * not the bytes).
   * @param token The completion token.
   *
   * @par Handler signature
   * `void(error_code, std::size_t bytes_written)`.
   *
   * @par Executor
   * The handler's associated executor (default: the writer's), never inside
   * this call. The write itself may start inside this call (see the class's
   * "The first write"): an idle writer called from its stream's executor
   * hands the message to the stream at once.
   *
   * @par Per-operation cancellation
   * All types while queued (`operation_aborted`, 0 bytes, nothing written).
   * Once started, only `terminal`, which fails the writer. A message the
   * call handed to the stream at once has started.
   *
   * @par Errors
   * The stream's error (with the bytes this message wrote), the writer's
   * sticky error, or `operation_aborted`. An empty message completes with
   * success and 0 bytes in its turn; one of 2^48 bytes or more at once with
   * `net::error::message_size` and 0 (the writer goes on).
   */
  template <class ConstBufferSequence,
            class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<ConstBufferSequence, urgent_t>, int> = 0>
  auto async_write(const ConstBufferSequence& buffers, CompletionToken&& token = CompletionToken());

  /// Queues one message in the urgent lane: it is written next after the
  /// message the stream is writing, ahead of every normal one not started.
  /**
   * Urgent messages are written in the order they were queued, in turn with
   * urgent composed operations. Each is still written whole; the message in
   * flight is never interrupted. Urgent and normal messages are not
   * gathered into one `write_some`.
   *
   * @param buffers The message, kept valid by the caller until the handler
   * runs.
   * @param token The completion token.
   *
   * @par Handler signature
   * `void(error_code, std::size_t bytes_written)`.
   *
   * @par Executor
   * The handler's associated executor (default: the writer's), never inside
   * this call. On a failed or closing writer it completes at once: through
   * the handler's associated immediate executor (Asio 1.28 and later), else
   * posted.
   *
   * @par Per-operation cancellation
   * As `async_write`: all types while queued; once started, only
   * `terminal`, which fails the writer.
   *
   * @par Errors
   * As `async_write`; `net::error::shut_down` once `async_close` was called.
   *
   * @par Backpressure
   * Counted in `pending_bytes()`, `size()` and the watermarks like any
   * message; it does not wait for them (no write does).
   */
  template <class ConstBufferSequence,
            class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_write(urgent_t, const ConstBufferSequence& buffers,
                   CompletionToken&& token = CompletionToken());

  /// Queues one message that the writer owns until it is written.
  /**
   * `Message` is an owned message, one of:
   * - a body: `std::string`; `std::vector` or `std::array` of `char`,
   *   `unsigned char` or `std::byte`;
   * - a `std::shared_ptr` to an owned message, const or not (one broadcast
   *   buffer shared by many writers without a copy; a null pointer is an
   *   empty part);
   * - a `std::vector` or `std::array` of owned messages
   *   (`std::vector<std::string>`,
   *   `std::array<std::shared_ptr<const std::string>, 3>`);
   * - a `std::pair` or `std::tuple` of owned messages (a header and a shared
   *   payload: `std::pair<std::string, std::shared_ptr<const std::string>>`);
   * - an object whose `data() const` returns a const buffer sequence into
   *   storage it owns (`beast::flat_buffer`, `beast::multi_buffer`).
   *
   * The parts are written in order, as one message: whole, never
   * interleaved with another. Anything else fails to compile with a
   * `static_assert` that lists these forms; bytes the caller keeps alive go
   * to `async_write`.
   *
   * @par Object lifetimes
   * The writer keeps `msg` in the request until the request completes (or is
   * aborted, or destroyed with the `io_context`), and frees it before the
   * handler runs, as every intermediate storage. Its buffers are taken
   * afresh each time a `write_some` is cut from it, so a short
   * `std::string` may be moved with its bytes. The object itself is not
   * modified while the writer holds it; what a `shared_ptr` part points to
   * must not change until the handler runs.
   *
   * @par Memory
   * The request holds `msg` itself (a `std::string` adds nothing but its
   * own 32 bytes to the request), allocated with the handler's associated
   * allocator like every request.
   *
   * Otherwise as `async_write`.
   */
  template <class Message, class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<Message, urgent_t>, int> = 0>
  auto async_send(Message msg, CompletionToken&& token = CompletionToken());

  /// Queues one message that the writer owns in the urgent lane: as
  /// `async_send`, in the order of `async_write(urgent_t, ...)`.
  template <class Message, class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_send(urgent_t, Message msg, CompletionToken&& token = CompletionToken());

  /// Completes when everything queued before it has been written.
  /**
   * @par Handler signature
   * `void(error_code)`.
   *
   * @par Per-operation cancellation
   * All types until the writes before it are done: `operation_aborted`.
   *
   * @par Errors
   * The writer's error if it fails first; `operation_aborted` if the writer
   * is destroyed first.
   */
  template <class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_flush(CompletionToken&& token = CompletionToken());

  /// Writes everything queued before this call, then shuts the stream down
  /// gracefully: `shutdown(shutdown_send)` on its `lowest_layer()` for a
  /// socket (or `beast::tcp_stream`), `async_shutdown` for a stream that has
  /// one (`ssl::stream`).
  /**
   * The close is queued like a flush: behind every message, composed
   * operation and urgent item already queued. From this call on, every new
   * request completes at once with `net::error::shut_down` and never reaches
   * the stream. Reads (`async_read_some`) are not affected: they go on until
   * the peer closes its side.
   *
   * For other streams (a websocket) pass the closing operation:
   * `async_close(op, token)`; this overload does not compile for them.
   *
   * @param token The completion token.
   *
   * @par Handler signature
   * `void(error_code)`.
   *
   * @par Executor
   * The handler's associated executor (default: the writer's), never inside
   * this call. When it completes at once (failed writer, or a close already
   * completed): through the handler's associated immediate executor (Asio
   * 1.28 and later), else posted.
   *
   * @par Per-operation cancellation
   * All types while the close is queued: it completes with
   * `operation_aborted`, the writer stays open (new requests are accepted
   * again), and the `async_close` calls that joined it are aborted too. Once
   * every write before it is done, signals are passed to the shutdown (one
   * that arrives while the completions of those writes are still being
   * delivered reaches it as soon as it starts): the stream's rules apply (a
   * socket's shutdown is instantaneous; a TLS shutdown honours every type).
   *
   * @par Errors
   * The first write error before the close (the writer's sticky error); the
   * shutdown's own error; `operation_aborted` if cancelled while queued or
   * if the writer is destroyed first. On a failed writer: its error, at once.
   * A second call while a close is pending completes with the first close's
   * result, when it has one; after the close has completed, at once with
   * that result.
   *
   * @par Object lifetimes
   * After the close completed, `error()` returns `net::error::shut_down`
   * (or the shutdown's error): the writer is closed, and every later request
   * completes with `net::error::shut_down` (a later `async_close`: with the
   * close's result, as above). The stream itself stays open for reading
   * until it is destroyed.
   */
  template <
      class CompletionToken = net::default_completion_token_t<executor_type>,
      std::enable_if_t<!net::is_async_operation<std::decay_t<CompletionToken>>::value, int> = 0>
  auto async_close(CompletionToken&& token = CompletionToken());

  /// As `async_close(token)`, running `op` as the closing operation.
  /**
   * @param op A deferred operation that closes the stream gracefully, for
   * example `ws.async_close(websocket::close_code::normal, net::deferred)`.
   * Its completion signature is `void(error_code, Ts...)`; the error becomes
   * the close's result. It is launched on the writer's executor when the
   * close's turn comes, with a handler whose cancellation slot receives the
   * close's signals; it is never launched if the close completes otherwise
   * (cancelled while queued, failed writer, second close, writer destroyed).
   * If launching it throws, the close completes with the exception's error
   * (`no_memory` for `std::bad_alloc`, as for a stream's `async_write_some`
   * that throws) and the exception goes no further.
   * @param token The completion token.
   */
  template <class Op, class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<net::is_async_operation<std::decay_t<Op>>::value, int> = 0>
  auto async_close(Op&& op, CompletionToken&& token = CompletionToken());

  /// Runs a composed operation on the stream in turn with the writes.
  /**
   * Same contract as `serialized_queue::async_enqueue`: `op` is launched
   * after every message queued before this call is written and before any
   * message queued after it. If the writer has failed, the handler gets the
   * writer's error (and value-initialised other arguments) and `op` is never
   * launched.
   */
  template <class Op, class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<std::decay_t<Op>, urgent_t>, int> = 0>
  auto async_enqueue(Op&& op, CompletionToken&& token = CompletionToken());

  /// Raw-initiation form of `async_enqueue`, with an explicit `Signature`.
  template <class Signature, class Initiation,
            class CompletionToken = net::default_completion_token_t<executor_type>,
            std::enable_if_t<!std::is_same_v<std::decay_t<Initiation>, urgent_t>, int> = 0>
  auto async_enqueue(Initiation&& init, CompletionToken&& token = CompletionToken());

  /// Runs a composed operation on the stream in the urgent lane.
  /**
   * `op` is launched after the message the stream is writing, before any
   * normal message or composed operation not yet started, and in order with
   * the other urgent items. Otherwise the contract of `async_enqueue`: the
   * handler gets `op`'s results; `op` runs on the writer's executor;
   * cancellation removes it while it waits and is forwarded once it runs;
   * on a failed writer the handler gets the writer's error (at once, through
   * its immediate executor where Asio has them, else posted) and `op` is
   * never launched; `net::error::shut_down` once `async_close` was called.
   */
  template <class Op, class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_enqueue(urgent_t, Op&& op, CompletionToken&& token = CompletionToken());

  /// Raw-initiation form of the urgent `async_enqueue`.
  template <class Signature, class Initiation,
            class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_enqueue(urgent_t, Initiation&& init, CompletionToken&& token = CompletionToken());

  /// AsyncWriteStream: one whole queued write of `buffers`.
  /**
   * Completes only when all of `buffers` is written (or on error). Note that
   * `net::async_write(writer, ...)` hands at most 64 KiB (and 16
   * buffers) to each `async_write_some`, so a larger message goes out as
   * several queued writes, between which other callers' messages may land.
   * Use `async_write` or `async_send` for messages that must stay whole.
   */
  template <class ConstBufferSequence,
            class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_write_some(const ConstBufferSequence& buffers,
                        CompletionToken&& token = CompletionToken()) {
    return async_write(buffers, std::forward<CompletionToken>(token));
  }

  /// AsyncReadStream: forwarded to the next layer's `async_read_some`.
  /**
   * The next layer's rules for reads apply (one read at a time). On a
   * moved-from writer it completes with `net::error::bad_descriptor` and 0,
   * as every operation does there (at once, through the handler's immediate
   * executor where Asio has them, else posted).
   */
  template <class MutableBufferSequence,
            class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_read_some(const MutableBufferSequence& buffers,
                       CompletionToken&& token = CompletionToken()) {
    return net::async_initiate<CompletionToken, void(error_code, std::size_t)>(
        initiate_read_some{this}, token, buffers);
  }

  /// Bytes queued and not yet written.
  std::size_t pending_bytes() const noexcept { return state_->pending_bytes(); }

  /// Messages queued and not yet completely written.
  std::size_t size() const noexcept { return state_->size(); }

  /// Returns the writer's counters (see `writer_stats`).
  /**
   * @par Thread safety
   * May be called from any thread, at any time, concurrently with the
   * writer's work: the counters are kept under the lock the writer takes
   * anyway where they change, and read as one consistent snapshot.
   */
  writer_stats stats() const noexcept;

  /// Sets the backpressure watermarks (bytes).
  /**
   * @throws std::invalid_argument if `low > high`.
   */
  void set_watermarks(std::size_t low, std::size_t high);

  /// False while `pending_bytes()` is above the high watermark and has not
  /// yet dropped to the low one, once `async_close` was called, and once the
  /// writer has failed.
  bool writable() const noexcept { return state_->writable(); }

  /// Completes when `writable()` is true: at once (but never inside this
  /// call) if it already is.
  /**
   * @par Handler signature
   * `void(error_code)`.
   *
   * @par Per-operation cancellation
   * All types: `operation_aborted`.
   *
   * @par Errors
   * The writer's error if it has failed; `net::error::shut_down` once
   * `async_close` was called: at once for a request made after it; one
   * already waiting keeps waiting (`writable()` is false while the close is
   * pending) and gets `shut_down` when the close completes, or completes as
   * usual if the close is cancelled before it starts; `operation_aborted` if
   * the writer is destroyed first.
   */
  template <class CompletionToken = net::default_completion_token_t<executor_type>>
  auto async_wait_writable(CompletionToken&& token = CompletionToken());

  /// Turns gathering of several queued messages into one `write_some` on or
  /// off (default on). Off, each `write_some` carries one message at most.
  void set_gathering(bool on) noexcept { state_->set_gathering(on); }

  /// Sets the most buffers and bytes one `write_some` carries, from the
  /// next `write_some` on.
  /**
   * A limit above 2^32 - 1 counts as 2^32 - 1 (no system call writes more
   * at once). A high limit costs what the windows use: the array of buffers
   * a window is cut into takes the limit's size only up to 64 buffers, and
   * beyond that starts at 64 and doubles as windows need more. Each thread
   * keeps the largest array given back on it for the next busy writer,
   * until the thread ends.
   *
   * @throws std::invalid_argument if either is 0.
   */
  void set_gather_limits(std::size_t max_buffers, std::size_t max_bytes) {
    state_->set_gather_limits(max_buffers, max_bytes);
  }

  /// Sets the stall deadline: how long a `write_some` may go without the
  /// stream accepting any byte before the writer fails. Zero or negative
  /// turns it off (the default).
  /**
   * The deadline applies while bytes are pending and a `write_some` of the
   * writer is in flight; each `write_some` that completes has made progress
   * and restarts the clock. When it passes, the writer fails with
   * `net::error::timed_out` (sticky, as a write error): the `write_some` in
   * flight is cancelled (terminal), every message, flush and close not in it
   * completes at once with the error (a composed operation queued behind it
   * completes with the error when its turn comes, once that `write_some` has
   * returned), and the messages in it complete when it returns, with the
   * bytes each wrote. Time the stream spends in composed
   * operations or in a close does not count.
   *
   * One timer per writer at most, on the writer's executor, created on first
   * use and armed only while a `write_some` is in flight; it is re-armed
   * when it fires, not per `write_some`. Takes effect at once, also for the
   * `write_some` in flight (counted from this call).
   *
   * @par Thread safety
   * May be called from any thread, at any time.
   */
  template <class Rep, class Period>
  void set_stall_timeout(const std::chrono::duration<Rep, Period>& timeout);

  /// The sticky error, once the writer has failed or closed; empty before.
  /**
   * `net::error::shut_down` after `async_close` has completed;
   * `net::error::timed_out` after the stall deadline passed; otherwise the
   * error that failed the writer.
   */
  error_code error() const noexcept { return state_->error(); }

  /// Aborts every message not yet handed to the stream
  /// (`operation_aborted`, 0 bytes).
  /**
   * Messages gathered into the `write_some` in flight are not affected.
   *
   * @returns How many messages were aborted.
   */
  std::size_t cancel();

 private:
  void add_node(detail::writer_node* n, bool urgent);
  void start_lender();

  struct initiate_write;
  struct initiate_signal;
  struct initiate_read_some;
  struct initiate_close;
  template <class Signature, bool Urgent>
  struct initiate_enqueue;

  using state_type = detail::writer_state<Stream>;

  void close_state();

  friend struct detail::writer_access;

  // Holds the stream and, while the writer uses it (on a strand or any
  // other executor but a plain io_context one, from its first use on), the
  // core of the writer's queue.
  detail::writer_ref<state_type> state_;
};

SERQ_NAMESPACE_END

#include <serq/impl/queued_writer.hpp>

#endif  // SERQ_QUEUED_WRITER_HPP
