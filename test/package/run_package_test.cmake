# Builds and runs the package consumer (test/package/main.cpp) against serq, in one of two ways:
#   MODE=install           install the build in SERQ_BUILD_DIR into a fresh prefix, then find_package(serq)
#   MODE=add_subdirectory  pull serq's sources in with add_subdirectory(SERQ_SOURCE_DIR)
# Run by ctest: cmake -DMODE=... -DWORK_DIR=... -DSERQ_SOURCE_DIR=... -DSERQ_BUILD_DIR=... -DCONFIG=...
#   -DGENERATOR=... -DMAKE_PROGRAM=... -DCXX_COMPILER=... -DCXX_FLAGS=... -DEXE_LINKER_FLAGS=...
#   -DSHARED_LINKER_FLAGS=... -DBUILD_SHARED=ON|OFF -DBOOST_DIR=... [-DSERQ_ASIO=boost|standalone]
#   [-DSERQ_ASIO_INCLUDE_DIR=...] -P run_package_test.cmake
# SERQ_ASIO and SERQ_ASIO_INCLUDE_DIR are the Asio flavour of the build under test: add_subdirectory
# mode configures serq with them; an installed package records them itself.
cmake_minimum_required(VERSION 3.25)

foreach(var MODE WORK_DIR SERQ_SOURCE_DIR SERQ_BUILD_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_package_test.cmake: ${var} is not set")
  endif()
endforeach()

function(run_step)
  list(JOIN ARGN " " pretty)
  message(STATUS "package test: ${pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test step failed (${rc}): ${pretty}")
  endif()
endfunction()

set(config_args)
set(build_type_arg)
if(NOT "${CONFIG}" STREQUAL "")
  set(config_args --config ${CONFIG})
  set(build_type_arg -DCMAKE_BUILD_TYPE=${CONFIG})
endif()

file(REMOVE_RECURSE ${WORK_DIR})

set(configure_args
    -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    ${build_type_arg}
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}"
    "-DCMAKE_SHARED_LINKER_FLAGS=${SHARED_LINKER_FLAGS}"
    -DCMAKE_RUNTIME_OUTPUT_DIRECTORY=${WORK_DIR}/bin)
if(NOT "${MAKE_PROGRAM}" STREQUAL "")
  list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(NOT "${BOOST_DIR}" STREQUAL "")
  list(APPEND configure_args -DBoost_DIR=${BOOST_DIR})
endif()

if(MODE STREQUAL "install")
  set(prefix ${WORK_DIR}/prefix)
  run_step(${CMAKE_COMMAND} --install ${SERQ_BUILD_DIR} --prefix ${prefix} ${config_args})
  set(source_dir ${CMAKE_CURRENT_LIST_DIR})
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${prefix})
elseif(MODE STREQUAL "add_subdirectory")
  set(source_dir ${CMAKE_CURRENT_LIST_DIR}/subdir)
  list(APPEND configure_args -DSERQ_SOURCE_DIR=${SERQ_SOURCE_DIR})
  if(NOT "${BUILD_SHARED}" STREQUAL "")
    list(APPEND configure_args -DBUILD_SHARED_LIBS=${BUILD_SHARED})
  endif()
  if(NOT "${SERQ_ASIO}" STREQUAL "")
    list(APPEND configure_args -DSERQ_ASIO=${SERQ_ASIO})
  endif()
  if(NOT "${SERQ_ASIO_INCLUDE_DIR}" STREQUAL "")
    list(APPEND configure_args -DSERQ_ASIO_INCLUDE_DIR=${SERQ_ASIO_INCLUDE_DIR})
  endif()
else()
  message(FATAL_ERROR "run_package_test.cmake: unknown MODE '${MODE}'")
endif()

run_step(${CMAKE_COMMAND} -S ${source_dir} -B ${WORK_DIR}/build ${configure_args})
run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/build ${config_args})

set(consumer ${WORK_DIR}/bin/consumer)
if(NOT EXISTS ${consumer} AND NOT "${CONFIG}" STREQUAL "")
  set(consumer ${WORK_DIR}/bin/${CONFIG}/consumer) # multi-config generators
endif()
run_step(${consumer})
