//
// test/thread_safety/serialized_queue_stress.cpp
//
// Several producer threads feed one serialized_queue while several threads
// run its io_context. Meant for ThreadSanitizer: the operations keep their
// bookkeeping in plain (non-atomic) variables and rely on the queue alone to
// order them, so a missing happens-before edge in the queue is a TSan report,
// and an overlap or reordering is a test failure.
//

#include <serq/serialized_queue.hpp>

#include "common/exactly_once.hpp"
#include "common/io_threads.hpp"
#include "common/net.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

// Futures carry the error code as a value: a plain use_future error would
// cross threads as an exception_ptr, whose reference count lives in the
// uninstrumented libstdc++ and so reads as a data race to TSan.
auto use_future() {
  return net::use_future([](error_code ec, auto... v) { return std::make_tuple(ec, v...); });
}

namespace {

constexpr int producers = 4;
constexpr int per_producer = 1500;
constexpr int runner_threads = 3;

// What the operations see. Everything but `active` is plain data, touched
// only by operations (serialized by the queue) or after every thread joined.
struct shared_state {
  std::atomic<int> active{0};
  std::atomic<int> max_active{0};
  std::atomic<int> inline_launches{0};
  std::vector<int> last_launched = std::vector<int>(producers, -1);
  int fifo_violations = 0;
  // Per entry: launched by the queue, and completions observed.
  std::vector<char> launched = std::vector<char>(producers * per_producer, 0);
  std::unique_ptr<std::atomic<int>[]> completions =
      std::make_unique<std::atomic<int>[]>(producers * per_producer);
  std::atomic<int> wrong_outcome{0};

  void enter() {
    const int now = ++active;
    int seen = max_active.load();
    while (now > seen && !max_active.compare_exchange_weak(seen, now)) {
    }
  }

  // Launch bookkeeping of entry `seq` of `producer`, inside the operation.
  void launch(int producer, int seq) {
    enter();
    if (seq <= last_launched[producer])
      ++fifo_violations;
    last_launched[producer] = seq;
    launched[producer * per_producer + seq] = 1;
  }
};

// A raw initiation of void(error_code, int) completing with seq, posted to
// the context like a conforming operation; every fifth completes inline
// (non-conforming) to exercise that path too.
auto make_op(shared_state& s, net::io_context& ioc, int producer, int seq) {
  return [&s, &ioc, producer, seq](auto handler) {
    s.launch(producer, seq);
    if (seq % 5 == 4) {
      --s.active;
      std::move(handler)(error_code(), seq);
      return;
    }
    net::post(ioc, [&s, seq, h = std::move(handler)]() mutable {
      --s.active;  // the operation completes here, before its handler runs
      std::move(h)(error_code(), seq);
    });
  };
}

}  // namespace

BOOST_AUTO_TEST_SUITE(test_serialized_queue_stress)

BOOST_AUTO_TEST_CASE(concurrent_producers_keep_fifo_no_overlap_and_exactly_once_completion) {
  serq_test::handler_tracker tr;
  shared_state s;
  // Signals live until every thread has joined: a slot must outlive its
  // operation.
  std::vector<std::unique_ptr<net::cancellation_signal>> signals(producers * per_producer);
  for (auto& sig : signals)
    sig = std::make_unique<net::cancellation_signal>();
  std::vector<std::vector<std::future<std::tuple<error_code, int>>>> futures(producers);
  std::atomic<int> turns_held{0};
  std::atomic<int> acquires_done{0};

  {
    net::io_context ioc(runner_threads);
    serq::serialized_queue q(ioc, "stress");
    auto work = net::make_work_guard(ioc);
    std::vector<std::thread> runners;
    for (int i = 0; i < runner_threads; ++i)
      runners.emplace_back([&] { ioc.run(); });

    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        for (int seq = 0; seq < per_producer; ++seq) {
          const int id = p * per_producer + seq;
          auto check = [&s, id, seq](error_code ec, int v) {
            ++s.completions[id];
            const bool ran = s.launched[id] != 0;
            const bool ok =
                ran ? (!ec && v == seq) : (ec == net::error::operation_aborted && v == 0);
            if (!ok)
              ++s.wrong_outcome;
          };
          switch (seq % 10) {
            case 3:  // a future, the rest callbacks
              futures[p].push_back(
                  q.async_enqueue<void(error_code, int)>(make_op(s, ioc, p, seq), use_future()));
              ++s.completions[id];  // checked through the future
              break;
            case 6:  // launched inside the call when the queue happens to be idle
              q.async_enqueue<void(error_code, int)>(serq::trigger_inline, make_op(s, ioc, p, seq),
                                                     tr.wrap(check));
              break;
            case 8: {  // cancelled by its own slot, racing its trigger and launch
              q.async_enqueue<void(error_code, int)>(
                  make_op(s, ioc, p, seq),
                  net::bind_cancellation_slot(signals[id]->slot(), tr.wrap(check)));
              signals[id]->emit(net::cancellation_type::terminal);
              break;
            }
            default:
              q.async_enqueue<void(error_code, int)>(make_op(s, ioc, p, seq), tr.wrap(check));
          }
          if (seq % 100 == 50) {
            // A turn is an active entry too.
            q.async_acquire(tr.wrap([&](error_code ec, serq::turn t) {
              if (ec)
                return;
              s.enter();
              ++turns_held;
              net::post(ioc, [&, t = std::move(t)]() mutable {
                --turns_held;
                --s.active;
                t.release();
                ++acquires_done;
              });
            }));
          }
          if (seq == per_producer / 2)
            q.cancel();  // races the producers and the runners
          if (seq % 64 == 63) {
            // A barrier keeps producers from running far ahead of the queue
            // (so cancel() aborts a few entries, not nearly all); another
            // producer's cancel() may abort it.
            auto [ec] = q.async_wait(use_future()).get();
            if (ec && ec != net::error::operation_aborted)
              ++s.wrong_outcome;
          }
        }
      });
    }
    for (auto& t : threads)
      t.join();
    for (int p = 0; p < producers; ++p)
      for (std::size_t i = 0; i < futures[p].size(); ++i) {
        const int seq = static_cast<int>(i) * 10 + 3;
        auto [ec, v] = futures[p][i].get();
        const bool ran = s.launched[p * per_producer + seq] != 0;
        const bool ok = ran ? (!ec && v == seq) : (ec == net::error::operation_aborted && v == 0);
        if (!ok)
          ++s.wrong_outcome;
      }

    work.reset();
    for (auto& t : runners)
      t.join();
    BOOST_TEST(q.empty());
  }

  BOOST_TEST(s.max_active.load() == 1);
  BOOST_TEST(s.active.load() == 0);
  BOOST_TEST(s.fifo_violations == 0);
  BOOST_TEST(s.wrong_outcome.load() == 0);
  int not_once = 0;
  int ran = 0;
  for (int i = 0; i < producers * per_producer; ++i) {
    if (s.completions[i].load() != 1)
      ++not_once;
    ran += s.launched[i];
  }
  BOOST_TEST(not_once == 0);
  BOOST_TEST(ran > 0);
  BOOST_TEST(turns_held.load() == 0);
  BOOST_TEST(acquires_done.load() > 0);
  BOOST_TEST(tr.invoked_twice() == 0u);
  BOOST_TEST(tr.pending() == 0u);
  BOOST_TEST_MESSAGE("entries launched: " << ran << " of " << producers * per_producer);
}

// The usual pipeline, on several io threads: on each of three queues a chain
// whose every completion submits the next operation from its handler (the
// queue, idle then, has that entry launched by the completion after the
// handler returns), while a foreign thread submits to every queue too and
// waits on futures. Once on the io_context, once with each queue on a strand
// of it. On each queue operations never overlap, both sources stay in order,
// and every entry completes once.
namespace {
void pipelines_on_several_threads(bool on_strand) {
  constexpr int queues = 3;
  constexpr int chain = 0, foreign_source = 1;  // the shared_state "producers" used
  std::vector<shared_state> states(queues);
  std::atomic<int> chains_done{0};
  {
    net::io_context ioc(runner_threads);
    std::vector<std::unique_ptr<serq::serialized_queue>> qs;
    for (int i = 0; i < queues; ++i)
      qs.push_back(std::make_unique<serq::serialized_queue>(
          on_strand ? net::any_io_executor(net::make_strand(ioc))
                    : net::any_io_executor(ioc.get_executor())));
    auto work = net::make_work_guard(ioc);
    std::function<void(int, int)> submit = [&](int i, int seq) {
      qs[i]->async_enqueue<void(error_code, int)>(
          make_op(states[i], ioc, chain, seq), [&, i, seq](error_code ec, int v) {
            ++states[i].completions[chain * per_producer + seq];
            if (ec || v != seq)
              ++states[i].wrong_outcome;
            if (seq + 1 < per_producer)
              submit(i, seq + 1);
            else
              ++chains_done;
          });
    };
    for (int i = 0; i < queues; ++i)
      net::post(qs[i]->get_executor(), [&submit, i] { submit(i, 0); });
    std::vector<std::thread> runners;
    for (int t = 0; t < runner_threads; ++t)
      runners.emplace_back([&] { ioc.run(); });
    std::thread foreign([&] {
      std::vector<std::future<std::tuple<error_code, int>>> futures;
      for (int seq = 0; seq < per_producer; ++seq) {
        for (int i = 0; i < queues; ++i)
          futures.push_back(qs[i]->async_enqueue<void(error_code, int)>(
              make_op(states[i], ioc, foreign_source, seq), use_future()));
        if (seq % 64 == 63)
          futures.back().wait();
      }
      for (std::size_t k = 0; k < futures.size(); ++k) {
        const int i = static_cast<int>(k % queues);
        const int seq = static_cast<int>(k / queues);
        auto [ec, v] = futures[k].get();
        ++states[i].completions[foreign_source * per_producer + seq];
        if (ec || v != seq)
          ++states[i].wrong_outcome;
      }
    });
    foreign.join();
    work.reset();
    for (auto& t : runners)
      t.join();
    for (auto& q : qs)
      BOOST_TEST(q->empty());
  }
  BOOST_TEST(chains_done.load() == queues);
  for (auto& st : states) {
    BOOST_TEST(st.max_active.load() == 1);
    BOOST_TEST(st.active.load() == 0);
    BOOST_TEST(st.fifo_violations == 0);
    BOOST_TEST(st.wrong_outcome.load() == 0);
    int not_once = 0;
    for (int i = 0; i < 2 * per_producer; ++i)
      if (st.completions[i].load() != 1 || !st.launched[i])
        ++not_once;
    BOOST_TEST(not_once == 0);
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(pipelines_submitted_from_their_handlers_on_several_threads) {
  pipelines_on_several_threads(false);
  pipelines_on_several_threads(true);
}

// A session object (its queue, say beside a socket) destroyed on one thread
// while the io_context's threads run the triggers it posted: an entry whose
// turn came is either launched (and completes with its result) or aborted
// and never launched; every handler runs once, and the queue's shared state
// outlives the triggers that refer to it.
BOOST_AUTO_TEST_CASE(queues_destroyed_while_other_threads_run_their_triggers) {
  constexpr int rounds = 2000;
  constexpr int per_round = 3;
  constexpr int total = rounds * per_round;
  serq_test::handler_tracker tr;
  const auto launched = std::make_unique<std::atomic<bool>[]>(total);
  std::atomic<int> ran{0}, wrong{0};
  serq_test::countdown done(total);

  net::io_context ioc(runner_threads);
  serq_test::io_threads io(ioc, runner_threads);
  for (int r = 0; r < rounds; ++r) {
    serq::serialized_queue q(ioc.get_executor());
    for (int k = 0; k < per_round; ++k) {
      const int id = r * per_round + k;
      q.async_enqueue<void(error_code, int)>(
          [&, id](auto handler) {
            launched[id] = true;
            net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code(), 1); });
          },
          tr.wrap([&, id](error_code ec, int v) {
            const bool was_launched = launched[id];
            ran += was_launched;
            if (was_launched ? (ec || v != 1) : (ec != net::error::operation_aborted || v != 0))
              ++wrong;
            done.arrive();
          }));
    }
  }  // each queue goes here, its first entry's trigger posted, maybe running
  done.wait();
  io.finish();
  BOOST_TEST(wrong.load() == 0);
  tr.check_all_accounted();
  BOOST_TEST_MESSAGE("entries launched: " << ran.load() << " of " << total);
}

// An operation may hand its handler to another thread that drops it (destroys
// it unrun) while the initiation still runs here. The queue then abandons the
// entry, destroying the user's handler, which may own the cancellation signal
// whose canceller the running launch holds locked: the abandon must wait for
// the launch to end, as a completion does. (It did not: the handler went at
// once, and the launch then unlocked freed memory.) The initiation gives the
// dropping thread up to 500 ms to destroy the handler before it returns; that
// bound only decides how long a correct queue keeps the dropper waiting.
BOOST_AUTO_TEST_CASE(a_handler_dropped_on_another_thread_during_its_launch_waits_for_it) {
  struct probe {
    std::atomic<bool> returned{false};
    std::mutex m;
    std::condition_variable cv;
    bool destroyed = false;
    bool destroyed_before_return = false;
  } p;
  // The user's handler owns the signal its slot belongs to.
  struct owning_handler {
    std::unique_ptr<net::cancellation_signal> sig;
    probe* p;
    owning_handler(std::unique_ptr<net::cancellation_signal> s, probe* pr)
        : sig(std::move(s)), p(pr) {}
    owning_handler(owning_handler&&) = default;
    ~owning_handler() {
      if (!sig)
        return;     // moved from
      sig.reset();  // the canceller serq installed goes with it
      std::lock_guard lock(p->m);
      p->destroyed_before_return = !p->returned.load();
      p->destroyed = true;
      p->cv.notify_all();
    }
    void operator()(error_code) { BOOST_ERROR("the dropped handler was invoked"); }
  };

  net::io_context ioc;
  serq::serialized_queue q(ioc);
  auto sig = std::make_unique<net::cancellation_signal>();
  const auto slot = sig->slot();
  std::thread dropper;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        dropper = std::thread([h = std::move(handler)]() mutable {
          auto gone = std::move(h);  // destroyed unrun at the end of this scope
        });
        std::unique_lock lock(p.m);
        p.cv.wait_for(lock, std::chrono::milliseconds(500), [&] { return p.destroyed; });
        p.returned = true;
      },
      net::bind_cancellation_slot(slot, owning_handler(std::move(sig), &p)));
  bool next_ran = false;
  q.async_enqueue<void(error_code)>(
      [](auto handler) {
        auto ex = net::get_associated_executor(handler);
        net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [&](error_code ec) {
        BOOST_TEST(!ec);
        next_ran = true;
      });
  ioc.run();  // returns once the queue is idle: after the abandon and the next entry
  dropper.join();
  BOOST_TEST(p.destroyed);
  BOOST_TEST(!p.destroyed_before_return);
  BOOST_TEST(next_ran);
}

BOOST_AUTO_TEST_SUITE_END()
