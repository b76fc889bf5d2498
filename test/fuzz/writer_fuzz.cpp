//
// test/fuzz/writer_fuzz.cpp: libFuzzer entry point for the writer harness.
//

#include "fuzz/writer_harness.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  serq_fuzz::script s(data, size, [](const std::string& what) {
    std::fprintf(stderr, "writer invariant violated: %s\n", what.c_str());
    std::abort();
  });
  s.run();
  return 0;
}
