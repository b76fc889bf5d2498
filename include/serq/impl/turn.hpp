//
// serq/impl/turn.hpp
//

#ifndef SERQ_IMPL_TURN_HPP
#define SERQ_IMPL_TURN_HPP

#include <serq/config.hpp>
#include <serq/detail/queue_core.hpp>

#include <type_traits>
#include <utility>

SERQ_NAMESPACE_BEGIN
namespace detail {

inline void erased_turn_handler::operator()(error_code ec, turn t) {
  // The impl frees itself before the upcall, as Asio wants of handler storage.
  std::exchange(impl_, nullptr)->invoke(ec, std::move(t));
}

template <class Handler>
void erased_turn_handler::impl<Handler>::invoke(error_code ec, turn t) {
  const auto storage = node_allocator(handler);  // read before the handler moves out
  Handler h = take_handler(storage);
  if constexpr (!own_executor) {
    deallocate_node(this, storage);
    std::move(h)(ec, std::move(t));  // no executor of its own: the queue's, where this runs
  } else {
    // The work is given back once the dispatch holds work of its own.
    const handler_work held(std::move(work));
    deallocate_node(this, storage);
    const auto ex = held.get_executor();
    const auto alloc = net::get_associated_allocator(h);
    net::dispatch(ex,
                  net::bind_allocator(alloc, [h = std::move(h), ec, t = std::move(t)]() mutable {
                    std::move(h)(ec, std::move(t));
                  }));
  }
}

}  // namespace detail

struct turn::initiate_untrigger {
  turn* self;

  template <class Handler>
  void operator()(Handler&& handler) const {
    if (!self->core_) {
      const auto ex = net::get_associated_executor(handler, net::system_executor());
      const auto alloc = net::get_associated_allocator(handler);
      net::post(ex, net::bind_allocator(alloc, [h = std::forward<Handler>(handler)]() mutable {
                  std::move(h)(error_code(net::error::invalid_argument), turn());
                }));
      return;
    }
    const detail::core_ref core = self->core_;
    detail::entry_base* e =
        self->untrigger_(core, detail::erased_turn_handler(std::forward<Handler>(handler)));
    switch (core->untrigger(e)) {
      case detail::queue_core::untrigger_result::done:
        // The entry waits at the head in the turn's place: *this is empty.
        self->core_.reset();
        self->untrigger_ = nullptr;
        break;
      case detail::queue_core::untrigger_result::refused:
        e->refuse();
        break;
      case detail::queue_core::untrigger_result::closed:
        e->abort();
        self->release();
        break;
    }
  }
};

template <class CompletionToken>
auto turn::async_untrigger(CompletionToken&& token) {
  return net::async_initiate<CompletionToken, void(error_code, turn)>(initiate_untrigger{this},
                                                                      token);
}

SERQ_NAMESPACE_END

#endif  // SERQ_IMPL_TURN_HPP
