# The Asio flavour of this build (SERQ_ASIO, SERQ_ASIO_INCLUDE_DIR; see the root CMakeLists.txt).
# Defines serq_link_asio(<target>), which gives a target that Asio, its compile definitions and, in
# the Boost flavour, Boost itself, as PUBLIC usage requirements that the installed package keeps.

# Reads the version number an Asio version.hpp defines (ASIO_VERSION or BOOST_ASIO_VERSION).
function(serq_read_asio_version header macro out)
  file(STRINGS ${header} line REGEX "#define ${macro} [0-9]+")
  string(REGEX MATCH "[0-9]+" number "${line}")
  set(${out} ${number} PARENT_SCOPE)
endfunction()

function(serq_format_asio_version number out)
  math(EXPR major "${number} / 100000")
  math(EXPR minor "${number} / 100 % 1000")
  math(EXPR patch "${number} % 100")
  set(${out} ${major}.${minor}.${patch} PARENT_SCOPE)
endfunction()

if(SERQ_ASIO STREQUAL "standalone")
  if(NOT SERQ_ASIO_INCLUDE_DIR)
    find_path(SERQ_ASIO_FOUND_DIR asio/version.hpp DOC "standalone Asio include directory")
    if(NOT SERQ_ASIO_FOUND_DIR)
      message(FATAL_ERROR "serq: SERQ_ASIO=standalone, but no asio/version.hpp was found. Set "
                          "SERQ_ASIO_INCLUDE_DIR to the folder that holds asio.hpp.")
    endif()
    set(SERQ_ASIO_INCLUDE_DIR ${SERQ_ASIO_FOUND_DIR} CACHE PATH "" FORCE)
  endif()
  set(version_header ${SERQ_ASIO_INCLUDE_DIR}/asio/version.hpp)
  if(NOT EXISTS ${version_header})
    message(FATAL_ERROR "serq: SERQ_ASIO_INCLUDE_DIR=${SERQ_ASIO_INCLUDE_DIR} holds no "
                        "asio/version.hpp")
  endif()
  serq_read_asio_version(${version_header} ASIO_VERSION SERQ_ASIO_VERSION_NUMBER)
  serq_format_asio_version(${SERQ_ASIO_VERSION_NUMBER} SERQ_ASIO_VERSION)
  if(SERQ_ASIO_VERSION_NUMBER LESS 102600)
    message(FATAL_ERROR "serq: standalone Asio ${SERQ_ASIO_VERSION} in ${SERQ_ASIO_INCLUDE_DIR} is "
                        "too old; serq needs Asio 1.26 or later (Debian 12's libasio-dev is 1.22). "
                        "Point SERQ_ASIO_INCLUDE_DIR at a newer Asio's include folder.")
  endif()
elseif(SERQ_ASIO STREQUAL "boost")
  find_package(Boost 1.81 REQUIRED CONFIG)
  if(SERQ_ASIO_INCLUDE_DIR)
    set(version_header ${SERQ_ASIO_INCLUDE_DIR}/boost/asio/version.hpp)
    if(NOT EXISTS ${version_header})
      message(FATAL_ERROR "serq: SERQ_ASIO_INCLUDE_DIR=${SERQ_ASIO_INCLUDE_DIR} holds no "
                          "boost/asio/version.hpp")
    endif()
  else()
    set(version_header ${Boost_INCLUDE_DIRS}/boost/asio/version.hpp)
  endif()
  serq_read_asio_version(${version_header} BOOST_ASIO_VERSION SERQ_ASIO_VERSION_NUMBER)
  serq_format_asio_version(${SERQ_ASIO_VERSION_NUMBER} SERQ_ASIO_VERSION)
else()
  message(FATAL_ERROR "serq: SERQ_ASIO must be 'boost' or 'standalone', not '${SERQ_ASIO}'")
endif()
message(STATUS "serq: ${SERQ_ASIO} Asio ${SERQ_ASIO_VERSION} "
               "(headers: ${version_header})")

function(serq_link_asio target)
  if(SERQ_ASIO_INCLUDE_DIR)
    # In front of everything else, so that it wins over an older Asio inside Boost's folder.
    target_include_directories(${target} BEFORE PUBLIC $<BUILD_INTERFACE:${SERQ_ASIO_INCLUDE_DIR}>
                                                       $<INSTALL_INTERFACE:${SERQ_ASIO_INCLUDE_DIR}>)
  endif()
  if(SERQ_ASIO STREQUAL "standalone")
    target_compile_definitions(${target} PUBLIC SERQ_ASIO_STANDALONE ASIO_NO_DEPRECATED)
  else()
    target_link_libraries(${target} PUBLIC Boost::headers)
    target_compile_definitions(${target} PUBLIC BOOST_ASIO_NO_DEPRECATED)
  endif()
endfunction()
