//
// test/bench/harness.hpp
//
// Runs every variant of a case in the same process, interleaved round by round, keeps the medians,
// and prints them as a table and as JSON. Every comparison is a ratio of medians from one run: the
// machine is shared, so absolute times from different runs mean little.
//

#ifndef SERQ_BENCH_HARNESS_HPP
#define SERQ_BENCH_HARNESS_HPP

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace serq_bench {

using bench_clock = std::chrono::steady_clock;

inline double seconds_since(bench_clock::time_point t0) {
  return std::chrono::duration<double>(bench_clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// One contender in a case: a function that performs one measurement and returns its seconds.
struct variant {
  std::string name;
  std::function<double()> measure;
  std::vector<double> seconds;
  double median_s() const { return median(seconds); }
};

struct bench_case {
  std::string id;
  std::string title;
  double ops = 0;         // operations (or messages) per measurement
  double bytes = 0;       // bytes per measurement, 0 when not a byte stream
  std::string reference;  // the serq variant the "speed" column compares every row with
  std::vector<variant> variants;

  const variant& find(const std::string& name) const {
    for (const auto& v : variants)
      if (v.name == name)
        return v;
    throw std::logic_error("serq_bench: no variant " + name + " in case " + id);
  }

  // A warm-up measurement of each variant, then `rounds` rounds in which every variant is measured
  // once. The starting variant rotates from round to round so that none always runs first (after
  // another's frees) or last.
  void run(int warmups, int rounds) {
    for (int w = 0; w < warmups; ++w)
      for (auto& v : variants)
        v.measure();
    const std::size_t n = variants.size();
    for (int r = 0; r < rounds; ++r)
      for (std::size_t i = 0; i < n; ++i) {
        variant& v = variants[(i + static_cast<std::size_t>(r)) % n];
        v.seconds.push_back(v.measure());
      }
  }
};

// A steady-state allocation count (not a timing).
struct alloc_result {
  std::string id;
  std::string label;
  double per_op = 0;
  std::size_t allocations = 0;
  std::size_t ops = 0;
};

// One row of a depth table (cases 6a, 6b): the median time per operation of each variant with D
// entries kept waiting in the queue. floor_ns is 0 when the table has no floor variant.
struct depth_row {
  std::size_t depth = 0;
  double serq_ns = 0;
  double hand_ns = 0;
  double floor_ns = 0;
  double ratio() const { return serq_ns > 0 ? hand_ns / serq_ns : 0; }
};

struct depth_table {
  std::string id;
  std::string token;  // "callback" or "use_awaitable": the plot's series names
  std::vector<depth_row> rows;
  // serq's time at the deepest depth divided by its time at depth 1.
  double growth() const {
    return rows.empty() || rows.front().serq_ns <= 0 ? 0
                                                     : rows.back().serq_ns / rows.front().serq_ns;
  }
};

// Heap held per item (cases 7 and 8): snapshots before and after creating `items` items that stay
// alive (pending, waiting, or idle objects), divided by `items`. Not a timing.
struct memory_result {
  std::string id;
  std::string label;
  std::size_t items = 0;
  double malloc_bytes = 0;  // glibc mallinfo2(): uordblks + hblkhd (chunk sizes, headers included)
  double usable_bytes = 0;  // live malloc_usable_size() bytes (the bench's counting allocator)
  double allocations = 0;   // heap allocations (malloc family, operator new included)
  bool derived = false;     // a difference of two other rows, not a measurement of its own
};

// Appends r to rows under id and label (the rows of cases 5, 7 and 8); returns it.
template <class Result>
const Result& add_labelled(std::vector<Result>& rows, std::string id, std::string label, Result r) {
  r.id = std::move(id);
  r.label = std::move(label);
  rows.push_back(std::move(r));
  return rows.back();
}

// A target from the issue: either a speed ratio (peer time / serq time, higher is better) or an
// allocation count per operation (lower is better).
struct target {
  std::string label;
  double value = 0;
  double threshold = 0;
  bool at_least = true;  // value >= threshold passes; else value <= threshold passes
  bool pass() const { return at_least ? value >= threshold : value <= threshold; }
};

inline std::string fmt(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

inline std::string human_rate(double per_s, const char* unit) {
  const char* prefix = "";
  if (per_s >= 1e9) {
    per_s /= 1e9;
    prefix = "G";
  } else if (per_s >= 1e6) {
    per_s /= 1e6;
    prefix = "M";
  } else if (per_s >= 1e3) {
    per_s /= 1e3;
    prefix = "k";
  }
  return fmt(per_s, 2) + " " + prefix + unit;
}

inline void print_case(std::FILE* out, const bench_case& c) {
  std::fprintf(out, "\n%s  %s   [ref = %s]\n", c.id.c_str(), c.title.c_str(), c.reference.c_str());
  const double ref = c.find(c.reference).median_s();
  std::fprintf(out, "  %-34s %10s %10s %12s %12s %8s %9s\n", "variant", "median ms", "ns/op",
               "ops/s", c.bytes > 0 ? "bytes/s" : "", "spread", "ref x");
  for (const auto& v : c.variants) {
    const double m = v.median_s();
    const double lo = *std::min_element(v.seconds.begin(), v.seconds.end());
    const double hi = *std::max_element(v.seconds.begin(), v.seconds.end());
    const std::string speed = v.name == c.reference ? "(ref)" : fmt(m / ref, 2);
    std::fprintf(out, "  %-34s %10s %10s %12s %12s %7s%% %9s\n", v.name.c_str(),
                 fmt(m * 1e3, 2).c_str(), fmt(m * 1e9 / c.ops, 1).c_str(),
                 human_rate(c.ops / m, "").c_str(),
                 c.bytes > 0 ? human_rate(c.bytes / m, "B").c_str() : "",
                 fmt(m > 0 ? (hi - lo) / m * 100 : 0, 0).c_str(), speed.c_str());
  }
}

inline std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\')
      out += '\\';
    out += ch;
  }
  return out;
}

// The depth tables are written one row per line, in a fixed key order, so that
// scripts/bench_plot.sh can read them with awk alone.
inline void write_json(const std::string& path, const std::string& config_json,
                       const std::vector<bench_case>& cases,
                       const std::vector<alloc_result>& allocs,
                       const std::vector<depth_table>& depths,
                       const std::vector<memory_result>& memory,
                       const std::vector<target>& targets) {
  std::ofstream os(path);
  if (!os)
    throw std::runtime_error("serq_bench: cannot write " + path);
  os << std::setprecision(9);
  os << "{\n  \"config\": " << config_json << ",\n  \"cases\": [";
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const bench_case& c = cases[i];
    const double ref = c.find(c.reference).median_s();
    os << (i ? ",\n" : "\n") << "    {\"id\": \"" << json_escape(c.id) << "\", \"title\": \""
       << json_escape(c.title) << "\", \"ops\": " << c.ops << ", \"bytes\": " << c.bytes
       << ", \"reference\": \"" << json_escape(c.reference) << "\", \"variants\": [";
    for (std::size_t j = 0; j < c.variants.size(); ++j) {
      const variant& v = c.variants[j];
      const double m = v.median_s();
      os << (j ? ",\n" : "\n") << "      {\"name\": \"" << json_escape(v.name)
         << "\", \"median_s\": " << m << ", \"ns_per_op\": " << m * 1e9 / c.ops
         << ", \"ops_per_s\": " << c.ops / m;
      if (c.bytes > 0)
        os << ", \"bytes_per_s\": " << c.bytes / m;
      os << ", \"serq_speed_ratio\": " << m / ref << ", \"seconds\": [";
      for (std::size_t k = 0; k < v.seconds.size(); ++k)
        os << (k ? ", " : "") << v.seconds[k];
      os << "]}";
    }
    os << "]}";
  }
  os << "\n  ],\n  \"allocations\": [";
  for (std::size_t i = 0; i < allocs.size(); ++i) {
    const alloc_result& a = allocs[i];
    os << (i ? ",\n" : "\n") << "    {\"id\": \"" << json_escape(a.id) << "\", \"label\": \""
       << json_escape(a.label) << "\", \"per_op\": " << a.per_op
       << ", \"allocations\": " << a.allocations << ", \"ops\": " << a.ops << "}";
  }
  os << "\n  ],\n  \"depth\": [";
  bool first = true;
  for (const depth_table& t : depths)
    for (const depth_row& r : t.rows) {
      os << (first ? "\n" : ",\n") << "    {\"table\": \"" << json_escape(t.token)
         << "\", \"id\": \"" << json_escape(t.id) << "\", \"depth\": " << r.depth
         << ", \"serq_ns\": " << r.serq_ns << ", \"hand_ns\": " << r.hand_ns
         << ", \"floor_ns\": " << r.floor_ns << ", \"ratio\": " << r.ratio() << "}";
      first = false;
    }
  os << "\n  ],\n  \"memory\": [";
  for (std::size_t i = 0; i < memory.size(); ++i) {
    const memory_result& m = memory[i];
    os << (i ? ",\n" : "\n") << "    {\"id\": \"" << json_escape(m.id) << "\", \"label\": \""
       << json_escape(m.label) << "\", \"items\": " << m.items
       << ", \"malloc_bytes_per_item\": " << m.malloc_bytes
       << ", \"usable_bytes_per_item\": " << m.usable_bytes
       << ", \"allocations_per_item\": " << m.allocations
       << ", \"derived\": " << (m.derived ? "true" : "false") << "}";
  }
  os << "\n  ],\n  \"targets\": [";
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const target& t = targets[i];
    os << (i ? ",\n" : "\n") << "    {\"label\": \"" << json_escape(t.label)
       << "\", \"value\": " << t.value << ", \"threshold\": " << t.threshold << ", \"kind\": \""
       << (t.at_least ? "min" : "max") << "\", \"pass\": " << (t.pass() ? "true" : "false") << "}";
  }
  os << "\n  ]\n}\n";
}

}  // namespace serq_bench

#endif  // SERQ_BENCH_HARNESS_HPP
