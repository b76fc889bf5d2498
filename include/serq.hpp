//
// serq.hpp: the umbrella header.
//

#ifndef SERQ_HPP
#define SERQ_HPP

#include <serq/queued_writer.hpp>
#include <serq/serialized_queue.hpp>
#include <serq/serialized_queue_service.hpp>
#include <serq/trace.hpp>
#include <serq/turn.hpp>

#endif  // SERQ_HPP
