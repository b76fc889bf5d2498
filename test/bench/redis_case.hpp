//
// test/bench/redis_case.hpp
//
// Case 9: request/response pipelining against a real redis-server. The serq client of
// example/redis_pipeline.hpp (32 coroutines, one command in flight each, SET/GET of 3-byte
// values, requests through a queued_writer with its defaults, one reader matching replies FIFO)
// beside the reference client, `redis-benchmark -c 1 -P 32 -t set,get -d 3 -q`, against one
// redis-server that this case starts on a free loopback port and stops. Both do the same number
// of commands per measurement, half SET and half GET; redis-benchmark's time is what it reports
// (commands / its requests per second, per test), so its process start is not counted against it.
//

#ifndef SERQ_BENCH_REDIS_CASE_HPP
#define SERQ_BENCH_REDIS_CASE_HPP

#include "harness.hpp"
#include "redis_pipeline.hpp"  // example/

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace serq_bench {

// The full path of `name` on PATH, or "" when there is none.
inline std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t colon = dirs.find(':', start);
    const std::string dir =
        dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string::npos)
      break;
    start = colon + 1;
  }
  return {};
}

// A redis-server of our own on 127.0.0.1 and a port the kernel reported free, without
// persistence. Ready when constructed (it answers a connection), stopped when destroyed.
class redis_server {
 public:
  explicit redis_server(const std::string& program) {
    {
      net::io_context ioc;
      net::ip::tcp::acceptor probe(ioc, {net::ip::address_v4::loopback(), 0});
      port_ = probe.local_endpoint().port();
    }
    const std::string port = std::to_string(port_);
    std::vector<std::string> args = {
        program,        "--port", port,        "--bind",    "127.0.0.1",   "--save", "",
        "--appendonly", "no",     "--logfile", "/dev/null", "--daemonize", "no"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (::posix_spawn(&pid_, program.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start " + program);
    // Ready when it accepts a connection and answers PING; polled, up to 10 s.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      if (ping())
        return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("redis-server exited at start (port " + port + " taken?)");
      }
      if (std::chrono::steady_clock::now() > deadline) {
        stop();
        throw std::runtime_error("redis-server did not answer within 10 s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;
  ~redis_server() { stop(); }

  unsigned short port() const noexcept { return port_; }

 private:
  bool ping() const {
    try {
      net::io_context ioc;
      net::ip::tcp::socket s(ioc);
      s.connect({net::ip::address_v4::loopback(), port_});
      net::write(s, net::buffer(std::string_view("PING\r\n")));
      char buf[7];
      net::read(s, net::buffer(buf));
      return std::string_view(buf, 7) == "+PONG\r\n";
    } catch (const std::exception&) {
      return false;
    }
  }

  void stop() noexcept {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

// The serq client: `clients` coroutines on one connection and one thread, `commands` commands in
// all (half SET, half GET), every reply checked. Returns the seconds from the first command to
// the last reply. `configure` may change the writer's settings (diagnostic variants).
inline double time_serq_redis(unsigned short port, std::size_t commands, std::size_t clients,
                              const std::function<void(redis_pipeline::client&)>& configure) {
  namespace rp = redis_pipeline;
  net::io_context ioc(1);
  rp::client c{net::ip::tcp::socket(ioc)};
  c.socket().connect({net::ip::address_v4::loopback(), port});
  c.socket().set_option(net::ip::tcp::no_delay(true));
  if (configure)
    configure(c);
  net::co_spawn(ioc, c.run(), net::detached);
  rp::verdict v;
  const std::size_t pairs = commands / 2 / clients;
  std::size_t left = clients;
  bench_clock::time_point t1;
  const auto t0 = bench_clock::now();
  for (std::size_t i = 0; i < clients; ++i)
    net::co_spawn(ioc, rp::set_get_loop(c, i, "serq:bench:" + std::to_string(i), pairs, v),
                  [&](std::exception_ptr e) {
                    if (e)
                      std::rethrow_exception(e);
                    if (--left == 0) {
                      t1 = bench_clock::now();
                      c.async_close(net::detached);
                    }
                  });
  ioc.run();
  if (v.wrong != 0 || v.commands != pairs * 2 * clients)
    throw std::runtime_error("redis case: " + std::to_string(v.wrong) + " wrong replies (" +
                             v.first_wrong + ")");
  return std::chrono::duration<double>(t1 - t0).count();
}

// redis-benchmark -c 1 -P <pipeline> -t set,get -d 3 -n <commands / 2> -q: the seconds it
// reports for the two tests together.
inline double time_redis_benchmark(const std::string& program, unsigned short port,
                                   std::size_t commands, std::size_t pipeline) {
  const std::size_t n = commands / 2;
  const std::string cmd = program + " -h 127.0.0.1 -p " + std::to_string(port) + " -c 1 -P " +
                          std::to_string(pipeline) + " -t set,get -d 3 -n " + std::to_string(n) +
                          " -q 2>&1";
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> p(::popen(cmd.c_str(), "r"), &::pclose);
  if (!p)
    throw std::runtime_error("cannot run " + program);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p.get()))
    out += buf;
  // -q prints "SET: 390625.00 requests per second, p50=..." per test; with a terminal it redraws
  // a progress line with \r first, so the last occurrence counts.
  double seconds = 0;
  for (const char* test : {"SET: ", "GET: "}) {
    const std::size_t at = out.rfind(test);
    if (at == std::string::npos)
      throw std::runtime_error("redis-benchmark printed no " + std::string(test) + "line: " + out);
    const double rps = std::strtod(out.c_str() + at + 5, nullptr);
    if (rps <= 0)
      throw std::runtime_error("redis-benchmark: cannot read " + out.substr(at, 40));
    seconds += static_cast<double>(n) / rps;
  }
  return seconds;
}

// Case 9, or nothing (with the reason in `why`) when redis-server or redis-benchmark is missing.
// The server lives as long as the case's variants.
inline std::optional<bench_case> redis_case(std::size_t commands, std::string& why) {
  const std::string server = find_program("redis-server");
  const std::string benchmark = find_program("redis-benchmark");
  if (server.empty() || benchmark.empty()) {
    why = "redis-server or redis-benchmark not found (scripts/setup.sh installs them)";
    return std::nullopt;
  }
  constexpr std::size_t clients = 32;
  commands = std::max<std::size_t>(clients * 2, commands / (clients * 2) * (clients * 2));
  auto srv = std::make_shared<redis_server>(server);
  const unsigned short port = srv->port();
  bench_case c;
  c.id = "9";
  c.title = "Redis pipelining, one connection to redis-server " + std::string("on 127.0.0.1, ") +
            std::to_string(commands) +
            " commands (SET/GET, 3 B values): serq client (32 coroutines, "
            "one command in flight each, writer defaults) vs redis-benchmark -c 1 -P 32";
  c.ops = static_cast<double>(commands);
  c.reference = "serq client, writer defaults";
  c.variants = {{"serq client, writer defaults",
                 [srv, port, commands] { return time_serq_redis(port, commands, clients, {}); },
                 {}},
                {"serq client, gather limit 16 buffers",
                 [srv, port, commands] {
                   return time_serq_redis(port, commands, clients, [](redis_pipeline::client& cl) {
                     cl.writer().set_gather_limits(16, 256 * 1024);
                   });
                 },
                 {}},
                {"redis-benchmark -c 1 -P 32",
                 [srv, port, commands, benchmark] {
                   return time_redis_benchmark(benchmark, port, commands, 32);
                 },
                 {}}};
  return c;
}

}  // namespace serq_bench

#endif  // SERQ_BENCH_REDIS_CASE_HPP
