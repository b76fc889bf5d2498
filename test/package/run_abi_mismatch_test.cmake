# Builds test/package/abi_mismatch.cpp against OTHER_ASIO_INCLUDE_DIR (a Boost.Asio of another version
# than this build's) and links it with this build's libserq. The link must fail, and the linker must
# name the missing symbols in serq's inline namespace of the program's Asio (EXPECTED_TAG), so that
# the mistake is visible instead of a silent hang.
# Run by ctest: cmake -DCXX_COMPILER=... -DSOURCE=... -DSERQ_INCLUDE_DIR=... -DOTHER_ASIO_INCLUDE_DIR=...
#   -DLIBRARY=... -DEXPECTED_TAG=... -DOUTPUT=... -P run_abi_mismatch_test.cmake
cmake_minimum_required(VERSION 3.25)

execute_process(
  COMMAND ${CXX_COMPILER} -std=c++17 -pthread -I${OTHER_ASIO_INCLUDE_DIR} -I${SERQ_INCLUDE_DIR}
          ${SOURCE} ${LIBRARY} -o ${OUTPUT}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "abi mismatch: the program linked, but it was compiled against another Asio "
                      "than ${LIBRARY}")
endif()
string(FIND "${err}${out}" "serq::${EXPECTED_TAG}::" found)
if(found EQUAL -1)
  message(FATAL_ERROR "abi mismatch: the build failed, but not by naming serq::${EXPECTED_TAG}:\n"
                      "${err}${out}")
endif()
string(REGEX MATCH "undefined reference to [^\n]*" first "${err}${out}")
message(STATUS "abi mismatch: link failed as it must: ${first}")
