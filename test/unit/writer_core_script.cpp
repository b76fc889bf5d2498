//
// test/unit/writer_core_script.cpp
//
// Runs the fuzz harness (test/fuzz/writer_harness.hpp) over the committed
// corpus and a few thousand seeded pseudo-random scripts, so every build,
// with either compiler, checks the writer's invariants without libFuzzer.
//

#include "fuzz/writer_harness.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

namespace {

void run_script(const std::vector<std::uint8_t>& bytes, const std::string& name) {
  serq_fuzz::script s(bytes.data(), bytes.size(),
                      [&](const std::string& what) { BOOST_ERROR(name << ": " << what); });
  s.run();
}

// 3000 seeded scripts, or SERQ_SCRIPT_COUNT (scripts/memcheck.sh runs fewer under valgrind).
int script_count() {
  if (const char* v = std::getenv("SERQ_SCRIPT_COUNT"))
    return std::max(1, std::atoi(v));
  return 3000;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(writer_core_script)

BOOST_AUTO_TEST_CASE(random_scripts_keep_every_writer_invariant) {
  std::mt19937 rng(20261124);
  const int count = script_count();
  for (int i = 0; i < count; ++i) {
    std::vector<std::uint8_t> bytes(1 + rng() % 600);
    for (auto& b : bytes)
      b = static_cast<std::uint8_t>(rng());
    run_script(bytes, "seed script " + std::to_string(i));
  }
}

BOOST_AUTO_TEST_CASE(committed_corpus_keeps_every_writer_invariant) {
  const std::filesystem::path dir = SERQ_FUZZ_CORPUS_DIR;
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    run_script(bytes, entry.path().filename().string());
    ++files;
  }
  BOOST_TEST(files > 0u);
}

BOOST_AUTO_TEST_SUITE_END()
