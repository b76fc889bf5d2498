//
// test/unit/lean_queue.cpp
//
// What keeps a serialized_queue's per-operation and idle cost small, and the
// rules that must survive it: the queue's own four-byte lock still excludes
// (contended, the sleeping path), the name is kept exactly without a heap
// block for serq's own names, the core stays within its measured size, and a
// completion on the queue's thread is invoked there (no extra post) while one
// from elsewhere still reaches the queue's executor; a queue whose executor is
// not an io_context's (a thread pool's, a strand on it) still serializes and
// releases its work.
//

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>

#include "common/counting_allocator.hpp"
#include "common/net.hpp"
#include "common/tracking_executor.hpp"

#include <boost/test/unit_test.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace d = serq::detail;

namespace {
// An operation that completes (with success) from a handler posted to ioc.
// With order given, *after_at records when that completion call returned:
// order's value then, which is incremented.
auto completes_from_post(net::io_context& ioc, int* order = nullptr, int* after_at = nullptr) {
  return [&ioc, order, after_at](auto handler) {
    net::post(ioc, [order, after_at, h = std::move(handler)]() mutable {
      std::move(h)(error_code());
      if (order)
        *after_at = (*order)++;
    });
  };
}
}  // namespace

BOOST_AUTO_TEST_SUITE(lean_queue)

BOOST_AUTO_TEST_CASE(small_mutex_excludes_under_contention) {
#if defined(__linux__)
  static_assert(sizeof(d::small_mutex) == 4);
#endif
  d::small_mutex m;
  std::size_t plain_counter = 0;  // no atomics: only the lock keeps it exact
  constexpr int threads = 4;
  constexpr int rounds = 200000;
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      for (int i = 0; i < rounds; ++i) {
        std::lock_guard lock(m);
        ++plain_counter;
        // Hold it a little, so that others spin out and sleep.
        if (i % 1024 == 0)
          std::this_thread::yield();
      }
    });
  for (auto& th : pool)
    th.join();
  BOOST_TEST(plain_counter == std::size_t(threads) * rounds);
}

BOOST_AUTO_TEST_CASE(small_mutex_try_lock) {
  d::small_mutex m;
  BOOST_TEST(m.try_lock());
  BOOST_TEST(!m.try_lock());
  bool other = true;
  std::thread([&] { other = m.try_lock(); }).join();
  BOOST_TEST(!other);
  m.unlock();
  BOOST_TEST(m.try_lock());
  m.unlock();
}

BOOST_AUTO_TEST_CASE(names_are_kept_exactly) {
  net::io_context ioc;
  std::string long_name(200, 'x');
  long_name[0] = 'a';
  long_name[199] = 'z';
  serq::serialized_queue named(ioc, long_name);
  long_name.assign(200, '?');  // the queue holds its own copy
  BOOST_TEST(named.name().size() == 200u);
  BOOST_TEST(named.name().front() == 'a');
  BOOST_TEST(named.name().back() == 'z');

  serq::serialized_queue unnamed(ioc);
  BOOST_TEST(unnamed.name().empty());

  // A name equal to one serq gives its writers' queues (shared, not copied)
  // reads back the same.
  std::string writer_name = "serq.queued_writer";
  serq::serialized_queue like_writer(ioc, writer_name);
  writer_name.clear();
  BOOST_TEST(like_writer.name() == "serq.queued_writer");

  // A moved-from queue is left with the same name, the moved-to one has it.
  serq::serialized_queue moved(std::move(named));
  BOOST_TEST(moved.name() == std::string(1, 'a') + std::string(198, 'x') + "z");
  BOOST_TEST(named.name() == moved.name());
}

// Only a handler whose executor is the queue's runs inline on the queue's
// thread: one bound to a strand (not equal to the queue's executor) runs
// inside its strand, one bound to another io_context runs there.
BOOST_AUTO_TEST_CASE(completion_for_another_executor_is_not_invoked_inline) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  auto strand = net::make_strand(ioc);
  bool in_strand = false;
  q.async_enqueue<void(error_code)>(
      completes_from_post(ioc),
      net::bind_executor(strand, [&](error_code) { in_strand = strand.running_in_this_thread(); }));
  ioc.run();
  BOOST_TEST(in_strand);  // dispatched through its strand, not run outside it

  net::io_context other;
  bool on_other = false;
  ioc.restart();
  q.async_enqueue<void(error_code)>(completes_from_post(ioc),
                                    net::bind_executor(other, [&](error_code) {
                                      on_other = other.get_executor().running_in_this_thread();
                                    }));
  ioc.run();
  BOOST_TEST(!on_other);  // not run on the queue's thread
  other.run();
  BOOST_TEST(on_other);
}

// A handler whose executor is an any_io_executor (a coroutine's), or the
// io_context executor itself, is compared with the queue's through the
// io_context executors both wrap. One around the queue's own is the queue's:
// no work of its own is allocated (its handler's allocator sees as many
// allocations as a handler without an executor: the entry and its posted
// trigger) and it runs inside the completion on the queue's thread. One
// around another io_context is not: it holds work there (one allocation
// more) and runs there.
BOOST_AUTO_TEST_CASE(type_erased_handler_executor_is_compared_by_its_target) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);

  // What a handler with no executor of its own allocates.
  std::size_t plain = 0;
  {
    const auto counter = std::make_shared<serq_test::allocation_counter>();
    q.async_enqueue<void(error_code)>(
        completes_from_post(ioc),
        net::bind_allocator(serq_test::counting_allocator<void>(counter), [](error_code) {}));
    plain = counter->allocations.load();
    ioc.run();
    BOOST_TEST(plain >= 1u);
  }

  const auto run_inline_case = [&](auto bound_executor) {
    const auto counter = std::make_shared<serq_test::allocation_counter>();
    const serq_test::counting_allocator<void> alloc(counter);
    int order = 0;
    int handler_at = -1;
    int after_at = -1;
    q.async_enqueue<void(error_code)>(
        completes_from_post(ioc, &order, &after_at),
        net::bind_executor(bound_executor,
                           net::bind_allocator(alloc, [&](error_code) { handler_at = order++; })));
    BOOST_TEST(counter->allocations.load() == plain);  // no work of its own
    ioc.restart();
    ioc.run();
    BOOST_TEST(handler_at == 0);  // the queue's executor: run inside the completion
    BOOST_TEST(after_at == 1);
    BOOST_TEST(counter->outstanding() == 0u);
  };
  run_inline_case(net::any_io_executor(ioc.get_executor()));
  run_inline_case(ioc.get_executor());

  net::io_context other;
  bool on_other = false;
  bool other_done = false;
  const auto counter = std::make_shared<serq_test::allocation_counter>();
  const serq_test::counting_allocator<void> alloc(counter);
  ioc.restart();
  q.async_enqueue<void(error_code)>(
      completes_from_post(ioc),
      net::bind_executor(net::any_io_executor(other.get_executor()),
                         net::bind_allocator(alloc, [&](error_code) {
                           on_other = other.get_executor().running_in_this_thread();
                           other_done = true;
                         })));
  BOOST_TEST(counter->allocations.load() == plain + 1);  // and its work on `other`
  BOOST_TEST(other.poll() == 0u);
  BOOST_TEST(!other.stopped());  // the entry counts work on the handler's context
  ioc.run();
  BOOST_TEST(!other_done);  // not run on the queue's thread
  other.run();
  BOOST_TEST(other_done);
  BOOST_TEST(on_other);
  BOOST_TEST(counter->outstanding() == 0u);
}

// The measured layout (x86-64, Boost.Asio or standalone): the core a queue
// on any_io_executor allocates. Pinned so that it cannot grow unnoticed.
BOOST_AUTO_TEST_CASE(core_size_is_pinned) {
  constexpr std::size_t core = sizeof(d::basic_queue_core<net::any_io_executor>);
  BOOST_TEST_MESSAGE("basic_queue_core<any_io_executor>: " << core << " bytes");
  if constexpr (sizeof(void*) == 8)
    BOOST_TEST(core <= 120u);
}

// A completion that arrives on the queue's thread runs its handler there and
// then, with no post in between (as a dispatch would); one that arrives on a
// foreign thread still runs the handler on the queue's executor.
BOOST_AUTO_TEST_CASE(completion_on_the_queue_thread_is_invoked_there) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int order = 0;
  int handler_at = -1;
  int after_at = -1;
  q.async_enqueue<void(error_code)>(
      // Completes from a handler that runs on the queue's executor: the
      // user's handler runs inside it, before the line after the call.
      completes_from_post(ioc, &order, &after_at), [&](error_code ec) {
        BOOST_TEST(!ec);
        handler_at = order++;
      });
  ioc.run();
  BOOST_TEST(handler_at == 0);
  BOOST_TEST(after_at == 1);

  // From a foreign thread: the handler is not run there.
  ioc.restart();
  std::atomic<bool> ran_on_io_thread{false};
  const auto io_thread = std::this_thread::get_id();
  auto guard = net::make_work_guard(ioc);
  std::thread foreign;
  q.async_enqueue<void(error_code)>(
      [&](auto handler) {
        foreign = std::thread([h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [&](error_code) {
        ran_on_io_thread = std::this_thread::get_id() == io_thread;
        guard.reset();
      });
  ioc.run();
  foreign.join();
  BOOST_TEST(ran_on_io_thread.load());
}

// The handler a queued operation gets has the queue's executor: for a queue on
// an any_io_executor around an io_context executor, that executor itself (no
// type erasure in the operation's steps); around anything else (a strand),
// the any_io_executor.
BOOST_AUTO_TEST_CASE(launched_handler_executor_is_the_queue_executor) {
  net::io_context ioc;
  serq::serialized_queue plain(ioc);
  bool plain_concrete = false;
  bool plain_equal = false;
  plain.async_enqueue<void(error_code)>(
      [&](auto handler) {
        auto ex = net::get_associated_executor(handler);
        plain_concrete = std::is_same_v<decltype(ex), net::io_context::executor_type>;
        plain_equal = ex == ioc.get_executor();
        net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [](error_code) {});

  serq::serialized_queue stranded(net::make_strand(ioc));
  bool strand_erased = false;
  bool strand_inside = false;
  stranded.async_enqueue<void(error_code)>(
      [&](auto handler) {
        auto ex = net::get_associated_executor(handler);
        strand_erased = std::is_same_v<decltype(ex), net::any_io_executor>;
        strand_inside = ex == stranded.get_executor();
        net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
      },
      [](error_code) {});
  ioc.run();
  BOOST_TEST(plain_concrete);
  BOOST_TEST(plain_equal);
  BOOST_TEST(strand_erased);
  BOOST_TEST(strand_inside);
}

// A queue on an any_io_executor whose target is not an io_context executor
// (a thread_pool's, and a strand on it) keeps that executor and its work in a
// block of its own. Used the way a program with a pool does: four foreign
// threads submit, half of them waiting on use_future, the operations run on
// the pool's threads. Every operation runs alone, every one completes, and
// the pool's join() returns (the queue's work was released, not leaked).
BOOST_AUTO_TEST_CASE(queue_on_a_thread_pool_executor) {
  for (const bool on_strand : {false, true}) {
    net::thread_pool pool(4);
    serq::serialized_queue q(on_strand ? net::any_io_executor(net::make_strand(pool))
                                       : net::any_io_executor(pool.get_executor()));
    BOOST_TEST(!q.get_executor().target<net::io_context::executor_type>());
    std::atomic<int> active{0};
    std::atomic<bool> overlapped{false};
    std::atomic<int> ran{0};
    std::atomic<int> completed{0};
    const auto op = [&](auto handler) {
      if (active.fetch_add(1) != 0)
        overlapped = true;
      ++ran;
      // Completes from another of the pool's threads, later.
      net::post(pool, [&, h = std::move(handler)]() mutable {
        active.fetch_sub(1);
        std::move(h)(error_code());
      });
    };
    constexpr int threads = 4;
    constexpr int per_thread = 250;
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t)
      submitters.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          if (t % 2 == 0) {
            q.async_enqueue<void(error_code)>(op, [&](error_code ec) {
              if (!ec)
                ++completed;
            });
          } else {
            std::future<void> f = q.async_enqueue<void(error_code)>(op, net::use_future);
            f.get();  // throws system_error on an error
            ++completed;
          }
        }
      });
    for (auto& th : submitters)
      th.join();
    pool.join();  // returns once the queue holds no work
    BOOST_TEST(!overlapped.load());
    BOOST_TEST(ran.load() == threads * per_thread);
    BOOST_TEST(completed.load() == threads * per_thread);
    BOOST_TEST(q.size() == 0u);
  }
}

namespace {
using recycling =
    net::detail::recycling_allocator<unsigned char, net::detail::thread_info_base::default_tag>;
void free_recycling_block(unsigned char* p, std::size_t size) {
  recycling().deallocate(p, size);
}

// Whether the thread's slot for queue entries holds seed (a block of `size`
// bytes), which it then keeps. Had seed been freed instead, the blocks of its
// size taken from the recycling allocator first would get its memory back
// (glibc hands a freed chunk to the next requests of its size class), so the
// slot's answer cannot be seed by chance.
bool slot_holds(void* seed, std::size_t size) {
  std::array<unsigned char*, 16> guards{};
  for (auto& g : guards)
    g = recycling().allocate(size);
  void* again = d::allocate_own_block(d::own_block::queue_entry, size);
  for (auto* g : guards)
    free_recycling_block(g, size);
  const bool held = again == seed;
  d::deallocate_own_block(d::own_block::queue_entry, again, size);
  return held;
}

struct keep_turn {
  bool* granted;
  void operator()(error_code ec, serq::turn) const { *granted = !ec; }
};
}  // namespace

// An entry whose handler has the default allocator lives in the thread's
// slot for queue entries (own_block::queue_entry), away from the recycling
// allocator's two-block cache that a strand's operations compete for (a
// queue on a strand took two allocations an operation): it takes the block
// the slot holds, and gives it back there when it completes. A handler with
// an allocator of its own keeps using it. On a thread of its own, whose
// slots nothing else touched.
BOOST_AUTO_TEST_CASE(an_entry_with_the_default_allocator_lives_in_the_threads_entry_slot) {
  bool granted = false, took = false, back = false;
  std::thread([&] {
    using entry = d::turn_entry<keep_turn, net::any_io_executor, true>;
    constexpr std::size_t size = sizeof(entry);
    void* seed = d::allocate_own_block(d::own_block::queue_entry, size);
    d::deallocate_own_block(d::own_block::queue_entry, seed, size);  // the slot holds seed now
    net::io_context ioc;
    serq::serialized_queue q(ioc);
    q.async_acquire(keep_turn{&granted});
    // The entry took seed: a block of its size asked now is another one.
    void* other = d::allocate_own_block(d::own_block::queue_entry, size);
    took = other != seed;
    free_recycling_block(static_cast<unsigned char*>(other), size);  // not into the slot
    ioc.run();  // the turn is granted and dropped: the entry is freed into the slot
    back = slot_holds(seed, size);
  }).join();
  BOOST_TEST(granted);
  BOOST_TEST(took);
  BOOST_TEST(back);
  using bound = decltype(net::bind_allocator(std::declval<serq_test::counting_allocator<void>>(),
                                             std::declval<keep_turn>()));
  BOOST_TEST((std::is_same_v<d::turn_entry<bound, net::any_io_executor, true>::storage_type,
                             d::node_allocator_t<bound>>));
}

namespace {
struct post_success {
  net::io_context* ioc;
  template <class Handler>
  void operator()(Handler&& h) const {
    net::post(*ioc, [h = std::forward<Handler>(h)]() mutable { std::move(h)(error_code()); });
  }
};
struct note_done {
  bool* done;
  void operator()(error_code ec) const { *done = !ec; }
};

// On a thread of its own: seeds the slot for queue entries with a block of
// op_entry's size, then runs body(ioc, q) with a queue on a fresh
// io_context, which must leave one such entry allocated, and finish(ioc),
// which must free it (ioc is destroyed after finish). Reports whether the
// entry took the seed and gave it back to the slot.
template <class Finish>
void seed_then_enqueue(bool& took, bool& back, Finish finish) {
  std::thread([&] {
    using entry = d::op_entry<post_success, note_done, net::any_io_executor, void(error_code)>;
    constexpr std::size_t size = sizeof(entry);
    void* seed = d::allocate_own_block(d::own_block::queue_entry, size);
    d::deallocate_own_block(d::own_block::queue_entry, seed, size);
    bool done = false;
    {
      net::io_context ioc;
      serq::serialized_queue q(ioc);
      q.async_enqueue<void(error_code)>(post_success{&ioc}, note_done{&done});
      void* other = d::allocate_own_block(d::own_block::queue_entry, size);
      took = other != seed;
      free_recycling_block(static_cast<unsigned char*>(other), size);
      finish(ioc);
    }
    back = slot_holds(seed, size);
  }).join();
}
}  // namespace

// The same for an operation's entry, freed when its operation completes
// (invoked on the queue's thread) and when its trigger is destroyed unrun
// with the context.
BOOST_AUTO_TEST_CASE(an_operations_entry_gives_its_block_back_to_the_slot_however_it_ends) {
  bool took = false, back = false;
  seed_then_enqueue(took, back, [](net::io_context& ioc) { ioc.run(); });
  BOOST_TEST(took);
  BOOST_TEST(back);
  took = back = false;
  seed_then_enqueue(took, back, [](net::io_context&) {});  // destroyed with the context
  BOOST_TEST(took);
  BOOST_TEST(back);
}

// The usual pipeline: every completion submits the next operation from its
// handler, on the queue's thread. The queue goes idle before the handler runs
// and gets its next entry inside it; it takes the unit of outstanding work it
// gave up instead of counting a new one (lingering_work). So the whole chain
// counts its work once, and the context still runs out of work at its end.
BOOST_AUTO_TEST_CASE(a_chain_submitted_from_its_completions_counts_its_work_once) {
  net::io_context ioc;
  const auto ex = serq_test::make_tracking_executor(ioc.get_executor());
  serq::basic_serialized_queue<serq_test::tracking_executor<>> q(ex);
  // Completes from a function posted through the queue's executor, so
  // that the completion finds itself on it.
  auto completes_on = [](const auto& on) {
    return [on](auto handler) {
      net::post(on, [h = std::move(handler)]() mutable { h(error_code()); });
    };
  };
  constexpr int chain = 16;
  int done = 0;
  std::function<void(error_code)> next = [&](error_code ec) {
    BOOST_TEST(!ec);
    if (++done < chain)
      q.async_enqueue<void(error_code)>(completes_on(ex), next);
  };
  q.async_enqueue<void(error_code)>(completes_on(ex), next);
  ioc.run();
  BOOST_TEST(done == chain);
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(ex.state()->work_started.load() == 1u);
  // One trigger posted (the first entry's, added to an idle queue from
  // outside), then each entry launched by the completion before it: the
  // other executions are the operations' own completions.
  BOOST_TEST(ex.state()->executions.load() == chain + 1u);

  // Not taken when the handler submits to a queue of another executor
  // of the same type: that one counts its own.
  net::io_context other;
  const auto other_ex = serq_test::make_tracking_executor(other.get_executor());
  serq::basic_serialized_queue<serq_test::tracking_executor<>> q2(other_ex);
  ioc.restart();
  bool submitted = false;
  q.async_enqueue<void(error_code)>(completes_on(ex), [&](error_code) {
    q2.async_enqueue<void(error_code)>(completes_on(other_ex), [&](error_code) {});
    submitted = true;
  });
  while (ioc.poll() != 0) {
  }
  BOOST_TEST(submitted);
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(ex.state()->work_started.load() == 2u);
  BOOST_TEST(other_ex.state()->work_started.load() == 1u);
  other.run();
  BOOST_TEST(other.stopped());
}

// The same on the usual any_io_executor queue of an io_context, where the
// unit is taken only by a queue on the same io_context: a queue on another
// context counts work there, and the first context still runs out of work.
BOOST_AUTO_TEST_CASE(a_completions_work_goes_only_to_a_queue_on_the_same_context) {
  net::io_context ioc, other;
  serq::serialized_queue q(ioc), same(ioc), elsewhere(other);
  // Operations that keep their handler and count no work: only the queues'
  // work keeps their contexts from running out.
  std::vector<std::function<void(error_code)>> kept;
  auto keeps = [&kept](auto handler) {
    kept.emplace_back([h = std::make_shared<decltype(handler)>(std::move(handler))](
                          error_code ec) mutable { std::move (*h)(ec); });
  };
  int done = 0;
  q.async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    elsewhere.async_enqueue<void(error_code)>(keeps, [&](error_code) { ++done; });
  });
  while (ioc.poll() != 0) {
  }
  BOOST_TEST(ioc.stopped());  // the unit did not go to other's queue
  other.poll();
  BOOST_TEST(kept.size() == 1u);
  BOOST_TEST(!other.stopped());  // elsewhere counts work on other
  kept.back()(error_code());
  other.run();
  BOOST_TEST(done == 1);
  BOOST_TEST(other.stopped());

  // From a completion to a queue on the same context: that queue holds the
  // context's work while its operation is pending.
  ioc.restart();
  q.async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    same.async_enqueue<void(error_code)>(keeps, [&](error_code) { ++done; });
  });
  while (ioc.poll() != 0) {
  }
  BOOST_TEST(kept.size() == 2u);
  BOOST_TEST(!ioc.stopped());
  kept.back()(error_code());
  ioc.run();
  BOOST_TEST(done == 2);
  BOOST_TEST(ioc.stopped());
}

// The hand-off rule for an entry added to the idle queue from the handler of
// the entry that just completed there: it becomes active at once and is
// launched once that handler has returned, by the completion, as a waiting
// entry would be: never inside async_enqueue, and before anything the
// handler posted.
BOOST_AUTO_TEST_CASE(an_entry_its_predecessors_handler_adds_launches_when_that_handler_returns) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  std::vector<std::string> order;
  bool in_call = false;
  auto op = [&](auto handler) {
    order.push_back(in_call ? "launched in the call" : "launched");
    net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
  };
  q.async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    net::post(ioc, [&] { order.push_back("posted by the handler"); });
    in_call = true;
    q.async_enqueue<void(error_code)>(op, [&](error_code ec) {
      BOOST_TEST(!ec);
      order.push_back("second done");
    });
    in_call = false;
    order.push_back("handler returns");
  });
  ioc.run();
  const std::vector<std::string> expected{"handler returns", "launched", "posted by the handler",
                                          "second done"};
  BOOST_TEST(order == expected, boost::test_tools::per_element());
  BOOST_TEST(ioc.stopped());
}

// A handler that adds the next entry and then throws: the entry is
// triggered (posted) instead, and runs on the next run of the context.
BOOST_AUTO_TEST_CASE(an_entry_added_by_a_handler_that_throws_still_runs) {
  net::io_context ioc;
  serq::serialized_queue q(ioc);
  int done = 0;
  q.async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    q.async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code ec) {
      BOOST_TEST(!ec);
      ++done;
    });
    throw std::runtime_error("handler");
  });
  BOOST_CHECK_THROW(ioc.run(), std::runtime_error);
  BOOST_TEST(done == 0);
  ioc.restart();
  while (ioc.poll() != 0) {
  }
  BOOST_TEST(done == 1);
  BOOST_TEST(ioc.stopped());
  BOOST_TEST(q.size() == 0u);
}

// A handler that adds the next entry and then destroys the queue: the entry,
// active but not launched, completes with operation_aborted, as a triggered
// one does (its core lives on for it, so a queue made afterwards is at
// another address and goes through its own trigger; the freed-address case
// is the next test's).
BOOST_AUTO_TEST_CASE(an_entry_added_by_a_handler_that_destroys_its_queue_is_aborted) {
  net::io_context ioc;
  auto q = std::make_unique<serq::serialized_queue>(ioc);
  error_code got;
  int done = 0;
  bool launched = false;
  q->async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    q->async_enqueue<void(error_code)>(
        [&](auto handler) {
          launched = true;
          net::post(ioc, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
        },
        [&](error_code ec) {
          got = ec;
          ++done;
        });
    q.reset();
    q = std::make_unique<serq::serialized_queue>(ioc);
    q->async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code ec) {
      BOOST_TEST(!ec);
      ++done;
    });
  });
  while (ioc.poll() != 0) {
  }
  BOOST_TEST(done == 2);
  BOOST_TEST(!launched);
  BOOST_TEST(got == net::error::operation_aborted);
  BOOST_TEST(ioc.stopped());
}

// A queue destroyed while its operation runs: the completion frees its core
// before the handler runs. A queue the handler makes then (on a strand of the
// same context, likely at the freed core's address) is not taken for the one
// that went idle: its entry is launched on its own executor, inside the
// strand, through its trigger.
BOOST_AUTO_TEST_CASE(
    a_queue_made_by_the_handler_of_a_destroyed_queue_launches_on_its_own_executor) {
  net::io_context ioc;
  auto q = std::make_unique<serq::serialized_queue>(ioc);
  std::unique_ptr<serq::serialized_queue> q2;
  const auto strand = net::make_strand(ioc);
  int done = 0;
  bool in_strand = false;
  q->async_enqueue<void(error_code)>(completes_from_post(ioc), [&](error_code) {
    q2 = std::make_unique<serq::serialized_queue>(strand);
    q2->async_enqueue<void(error_code)>(
        [&](auto handler) {
          in_strand = strand.running_in_this_thread();
          net::post(strand, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
        },
        [&](error_code ec) {
          BOOST_TEST(!ec);
          ++done;
        });
  });
  BOOST_TEST(ioc.run_one() == 1u);  // the trigger: the operation is in flight
  q.reset();                        // its core lives until the operation completes
  ioc.run();
  BOOST_TEST(done == 1);
  BOOST_TEST(in_strand);
}

BOOST_AUTO_TEST_SUITE_END()
