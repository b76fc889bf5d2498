//
// test/fuzz/writer_harness.hpp
//
// Drives queued_writer's state machine (serq::detail::writer_core) from a
// byte script: messages of random sizes, flushes, composed operations,
// cancellations of every type, writer-wide cancel(), watermark changes,
// wait_writable requests, and a simulated stream that accepts random partial
// writes and fails at random points. No I/O, no io_context: the serialized
// queue is simulated by a FIFO of pumps and operations, as the real one runs
// them. After every step and at the end it checks the invariants that matter
// to users; a violation is reported through `fail`.
//

#ifndef SERQ_TEST_FUZZ_WRITER_HARNESS_HPP
#define SERQ_TEST_FUZZ_WRITER_HARNESS_HPP

#include <serq/detail/writer_core.hpp>

#include "common/net.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace serq_fuzz {

namespace d = serq::detail;

// Running totals, kept as handlers complete so each step checks in O(1).
struct totals {
  std::size_t uncompleted_write_bytes = 0;  // sizes of writes not yet completed
  std::size_t reported_bytes = 0;           // bytes reported by completed writes
  std::size_t waiting_waiters = 0;
  bool completed_twice = false;
};

struct record {
  totals* sum = nullptr;
  d::writer_node::kind kind = d::writer_node::kind::write;
  std::size_t size = 0;
  int completions = 0;
  int destroys = 0;
  error_code ec;
  std::size_t bytes = 0;
  std::uint64_t seq = 0;  // global completion order
};

class script_node final : public d::writer_node {
 public:
  script_node(kind k, std::string data, record* rec, std::uint64_t* clock)
      : d::writer_node(&table, k, 0), data_(std::move(data)), rec_(rec), clock_(clock) {
    set_size(data_.size());
  }

 private:
  static void do_complete(d::writer_node* b, const d::writer_core&, error_code ec, std::size_t n,
                          d::completion_mode) {
    auto* self = static_cast<script_node*>(b);
    record& r = *self->rec_;
    if (r.completions++ != 0)
      r.sum->completed_twice = true;
    if (r.kind == kind::write) {
      r.sum->uncompleted_write_bytes -= r.size;
      r.sum->reported_bytes += n;
    } else if (r.kind == kind::waiter) {
      --r.sum->waiting_waiters;
    }
    self->rec_->ec = ec;
    self->rec_->bytes = n;
    self->rec_->seq = ++*self->clock_;
    delete self;
  }
  static void do_destroy(d::writer_node* b) noexcept {
    auto* self = static_cast<script_node*>(b);
    self->rec_->destroys++;
    delete self;
  }
  // Splits the message into up to three buffers, to exercise the offsets.
  static void do_fill(const d::writer_node* b, std::size_t offset, d::window_builder& w) noexcept {
    const auto* self = static_cast<const script_node*>(b);
    const std::size_t n = self->data_.size();
    const std::size_t cuts[] = {0, n / 3, (2 * n) / 3, n};
    for (int i = 0; i < 3 && !w.full(); ++i) {
      std::size_t lo = cuts[i], hi = cuts[i + 1];
      if (offset >= hi)
        continue;
      if (offset > lo)
        lo = offset;
      w.append(net::const_buffer(self->data_.data() + lo, hi - lo));
    }
  }
  static constexpr ops table{&do_complete, &do_destroy, &do_fill};

  std::string data_;
  record* rec_;
  std::uint64_t* clock_;
};

class script {
 public:
  using fail_fn = std::function<void(const std::string&)>;

  script(const std::uint8_t* data, std::size_t size, fail_fn fail)
      : in_(data),
        left_(size),
        fail_(std::move(fail)),
        core_(d::make_writer_ref<d::writer_core>()) {}

  void run() {
    for (int steps = 0; left_ > 0 && steps < 2000; ++steps) {
      step(next() % 12);
      check_step();
    }
    finish();
  }

  // Totals across the run, for reports.
  std::size_t messages() const { return msgs_.size(); }
  std::size_t wire_bytes() const { return wire_.size(); }

 private:
  struct msg {
    d::writer_node::kind kind;
    std::string data;
    std::unique_ptr<record> rec = std::make_unique<record>();
    std::unique_ptr<net::cancellation_signal> signal;
    std::size_t ops_before = 0;  // composed operations added before it
  };
  struct item {
    bool is_op;
    std::uint64_t segment;
    std::size_t writes_before;  // for ops: messages added before it
  };

  std::uint8_t next() {
    if (left_ == 0)
      return 0;
    --left_;
    return *in_++;
  }

  void check(bool ok, const std::string& what) {
    if (!ok)
      fail_(what);
  }

  void add_message(d::writer_node::kind kind) {
    msg m;
    m.kind = kind;
    if (kind == d::writer_node::kind::write) {
      const std::uint8_t s = next();
      const std::size_t len = (s % 7 == 0) ? 0 : (s % 3 == 0 ? s * 97u : s % 40u);
      const std::size_t id = msgs_.size();
      // Each message's own byte, with its offsets stamped in every 61 bytes: an
      // interleaving, reordering or repeat changes the wire.
      m.data.assign(len, static_cast<char>(id * 31));
      for (std::size_t i = 0; i < len; i += 61)
        m.data[i] = static_cast<char>(i / 61);
    }
    m.signal = std::make_unique<net::cancellation_signal>();
    m.rec->sum = &sum_;
    m.rec->kind = kind;
    m.rec->size = m.data.size();
    if (kind == d::writer_node::kind::write)
      sum_.uncompleted_write_bytes += m.data.size();
    if (kind == d::writer_node::kind::waiter)
      ++sum_.waiting_waiters;
    m.ops_before = ops_added_;
    auto* n = new script_node(kind, m.data, m.rec.get(), &clock_);
    if (next() % 4 != 0)
      n->attach_canceller(m.signal->slot(), core_);
    d::node_list done;
    if (kind == d::writer_node::kind::waiter) {
      core_->add_waiter(n, done);
    } else {
      core_->add(n, done, [&](std::uint64_t seg) { queue_.push_back({false, seg, 0}); });
    }
    msgs_.push_back(std::move(m));
    done.complete_all(*core_, d::completion_mode::post);
  }

  void step(unsigned action) {
    d::node_list done;
    switch (action) {
      case 0:
      case 1:
      case 2:
        add_message(d::writer_node::kind::write);
        break;
      case 3:
        add_message(d::writer_node::kind::flush);
        break;
      case 4: {
        const std::size_t before = msgs_.size();
        const error_code ec = core_->add_operation([&] { queue_.push_back({true, 0, before}); });
        ++ops_added_;
        check(!ec || ec == core_->error() || ec == net::error::operation_aborted,
              "add_operation returned an unexpected error");
        break;
      }
      case 5:
        if (!msgs_.empty()) {
          msg& m = msgs_[next() % msgs_.size()];
          const auto types = {net::cancellation_type::terminal, net::cancellation_type::partial,
                              net::cancellation_type::total};
          m.signal->emit(*(types.begin() + next() % 3));
        }
        break;
      case 6:
        core_->cancel(done, no_work_);
        break;
      case 7: {
        std::size_t low = next() * 13u, high = next() * 29u;
        try {
          core_->set_watermarks(low, high, done, no_work_);
          check(low <= high, "set_watermarks accepted low > high");
          low_ = low;
          high_ = high;
        } catch (const std::invalid_argument&) {
          check(low > high, "set_watermarks threw for low <= high");
        }
        break;
      }
      case 8:
        add_message(d::writer_node::kind::waiter);
        break;
      default:
        progress(done);
        break;
    }
    done.complete_all(*core_, d::completion_mode::dispatch);
  }

  // Advances the simulated queue and stream by one move.
  void progress(d::node_list& done) {
    if (!active_) {
      if (queue_.empty())
        return;
      item it = queue_.front();
      queue_.pop_front();
      if (it.is_op) {
        for (std::size_t i = 0; i < it.writes_before; ++i)
          check(msgs_[i].kind == d::writer_node::kind::waiter || msgs_[i].rec->completions == 1,
                "a composed operation ran before a message queued ahead of it completed");
        return;
      }
      active_ = it.segment;
    }
    if (!in_flight_) {
      const bool writing = core_->next_write(*active_, done, [&](const d::buffer_window& w) {
        window_.clear();
        for (const auto& b : w)
          window_.append(static_cast<const char*>(b.data()), b.size());
        stream_cancelled_ = false;
        core_->write_slot().assign([this](net::cancellation_type_t) { stream_cancelled_ = true; });
      });
      if (writing) {
        check(!window_.empty(), "next_write started an empty write");
        in_flight_ = true;
      } else {
        active_.reset();
      }
      return;
    }
    // The stream's write_some completes.
    const std::uint8_t r = next();
    error_code ec;
    std::size_t n = 1 + r % window_.size();
    if (stream_cancelled_) {
      ec = net::error::operation_aborted;
      n = 0;
    } else if (r % 17 == 0) {
      ec = net::error::broken_pipe;
      n = (r & 0x20) ? n / 2 : 0;
    }
    wire_.append(window_, 0, n);
    in_flight_ = false;
    core_->on_written(ec, n, done);
  }

  void check_step() {
    // pending_bytes is exactly what was queued and not yet put on the wire.
    check(wire_.size() >= sum_.reported_bytes, "more bytes reported than written");
    const std::size_t in_progress = wire_.size() - sum_.reported_bytes;
    check(core_->pending_bytes() + in_progress == sum_.uncompleted_write_bytes,
          "pending_bytes() is off");
    const std::size_t pending = core_->pending_bytes();
    if (!core_->error()) {
      if (pending > high_)
        check(!core_->writable(), "writable() above the high watermark");
      if (pending <= low_)
        check(core_->writable(), "not writable() at or below the low watermark");
    }
    if (core_->writable())
      check(sum_.waiting_waiters == 0, "a wait_writable request still waits while writable()");
    check(!sum_.completed_twice, "a handler completed twice");
  }

  void finish() {
    // The writer goes away: close, then the stream's outstanding write
    // completes as a destroyed socket's would.
    d::node_list done;
    core_->close(done, no_work_);
    done.complete_all(*core_, d::completion_mode::post);
    for (int guard = 0; (active_ || !queue_.empty()) && guard < 100000; ++guard) {
      if (in_flight_) {
        in_flight_ = false;
        core_->on_written(net::error::operation_aborted, 0, done);
        done.complete_all(*core_, d::completion_mode::dispatch);
        continue;
      }
      progress(done);
      done.complete_all(*core_, d::completion_mode::dispatch);
    }
    check(!active_ && queue_.empty(), "the pumps did not drain after close()");

    std::string expected;
    std::uint64_t last_success = 0;
    bool stopped_mid_message = false;
    for (const msg& m : msgs_) {
      const record& r = *m.rec;
      check(r.completions == 1 && r.destroys == 0, "a handler was not completed exactly once");
      if (m.kind != d::writer_node::kind::write)
        continue;
      check(r.bytes <= m.data.size(), "a message reported more bytes than it has");
      if (!r.ec) {
        check(r.bytes == m.data.size(), "a successful message reported a short count");
        check(r.seq > last_success, "successful messages completed out of order");
        last_success = r.seq;
      }
      // Once the stream stopped inside a message, nothing after it was written.
      if (r.bytes != 0)
        check(!stopped_mid_message, "bytes written after a message cut short");
      if (r.bytes != 0 && r.bytes < m.data.size())
        stopped_mid_message = true;
      expected.append(m.data, 0, r.bytes);
    }
    check(wire_ == expected, "the wire is not the concatenation of the reported bytes in order");
    for (std::size_t i = 0; i < msgs_.size(); ++i) {
      const msg& f = msgs_[i];
      if (f.kind != d::writer_node::kind::flush || f.rec->ec)
        continue;
      for (std::size_t j = 0; j < i; ++j)
        if (msgs_[j].kind == d::writer_node::kind::write)
          check(msgs_[j].rec->seq < f.rec->seq,
                "a flush completed before a write queued ahead of it");
    }
    msgs_.clear();  // drops the cancellers, and with them the last references to the core
    check(core_.use_count() == 1,
          "the writer state is still referenced after everything completed");
  }

  const std::uint8_t* in_;
  std::size_t left_;
  fail_fn fail_;
  totals sum_;
  d::writer_ref<d::writer_core> core_;
  net::any_io_executor no_work_;  // a bare writer_core holds no work for its aborts
  std::vector<msg> msgs_;
  std::deque<item> queue_;
  std::optional<std::uint64_t> active_;
  bool in_flight_ = false;
  bool stream_cancelled_ = false;
  std::string window_;
  std::string wire_;
  std::uint64_t clock_ = 0;
  std::size_t ops_added_ = 0;
  std::size_t low_ = d::writer_core::default_low_watermark;
  std::size_t high_ = d::writer_core::default_high_watermark;
};

}  // namespace serq_fuzz

#endif  // SERQ_TEST_FUZZ_WRITER_HARNESS_HPP
