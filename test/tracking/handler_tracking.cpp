//
// With Asio's handler tracking on, a queued operation shows up as tracked
// handlers: the entry is created by async_enqueue and invoked at its trigger;
// the operation's completion is created by that trigger (its parent) and
// invoked when the operation completes. handlerviz draws that as the queue
// hop. Built with serq's sources compiled in, since the whole program must
// agree on handler tracking; a plain program (no test framework) that exits
// non-zero when a check fails.
//

#include <serq.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#if !defined(SERQ_HANDLER_TRACKING)
#error "this test must be built with Asio's handler tracking on"
#endif

namespace net = serq::net;
using serq::error_code;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stdout, "FAILED: %s\n", what);
    ++failures;
  }
}

struct creation {
  std::string parent;
  std::string what;  // "<object type>@<address>.<operation>"
};

}  // namespace

int main() {
  // Asio writes its tracking lines to file descriptor 2: send them to a file.
  char path[] = "/tmp/serq_tracking_XXXXXX";
  const int fd = ::mkstemp(path);
  const int saved_stderr = ::dup(2);
  if (fd < 0 || saved_stderr < 0 || ::dup2(fd, 2) < 0) {
    std::perror("redirecting stderr");
    return 2;
  }
  {
    net::io_context ioc;
    serq::serialized_queue q(ioc, "tracked");
    error_code result(net::error::would_block);
    q.async_enqueue<void(error_code)>(
        [ex = ioc.get_executor()](auto handler) {
          net::post(ex, [h = std::move(handler)]() mutable { std::move(h)(error_code()); });
        },
        [&](error_code ec) { result = ec; });
    bool turned = false;
    q.async_acquire([&](error_code ec, serq::turn t) { turned = !ec && t; });
    ioc.run();
    check(!result, "the queued operation completed");
    check(turned, "the turn was granted");
  }
  ::fflush(stderr);
  ::dup2(saved_stderr, 2);
  ::close(saved_stderr);
  ::close(fd);

  std::ifstream in(path);
  std::map<std::string, creation> created;  // id -> creation
  std::vector<std::string> invoked;         // ids, in order of invocation
  std::string line;
  std::size_t lines = 0;
  while (std::getline(in, line)) {
    if (line.rfind("@asio|", 0) != 0)
      continue;
    ++lines;
    std::vector<std::string> fields;
    std::stringstream ss(line);
    for (std::string f; std::getline(ss, f, '|');)
      fields.push_back(f);
    if (fields.size() < 3)
      continue;
    const std::string& ids = fields[2];
    if (const auto star = ids.find('*'); star != std::string::npos && fields.size() > 3)
      created[ids.substr(star + 1)] = {ids.substr(0, star), fields[3]};
    else if (!ids.empty() && ids[0] == '>')
      invoked.push_back(ids.substr(1));
  }
  if (std::getenv("SERQ_KEEP_TRACKING_LOG"))
    std::printf("tracking log kept in %s\n", path);
  else
    std::remove(path);
  check(lines > 0, "handler tracking wrote lines");

  auto find_created = [&](const std::string& parent_id, const std::string& op) {
    for (const auto& [id, c] : created)
      if (c.what.rfind("serialized_queue@", 0) == 0 && c.what.size() > op.size() &&
          c.what.compare(c.what.size() - op.size(), op.size(), op) == 0 &&
          (parent_id.empty() || c.parent == parent_id))
        return id;
    return std::string();
  };
  auto position = [&](const std::string& id) -> long {
    for (std::size_t i = 0; i < invoked.size(); ++i)
      if (invoked[i] == id)
        return static_cast<long>(i);
    return -1;
  };

  const std::string enqueue = find_created("", ".async_enqueue");
  check(!enqueue.empty(), "async_enqueue created a tracked serialized_queue handler");
  check(position(enqueue) >= 0, "the entry's trigger was invoked");
  const std::string op = find_created(enqueue, ".operation");
  check(!op.empty(), "the trigger created the operation's completion as its child");
  check(position(op) > position(enqueue), "the completion was invoked after the trigger");
  const std::string acquire = find_created("", ".async_acquire");
  check(!acquire.empty() && position(acquire) > position(op),
        "the acquire's trigger was invoked after the operation completed");

  if (failures == 0)
    std::printf("handler tracking: %zu lines, queue hop %s -> %s, all checks passed\n", lines,
                enqueue.c_str(), op.c_str());
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
