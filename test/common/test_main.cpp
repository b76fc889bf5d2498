// The one Boost.Test main shared by every test executable.
#define BOOST_TEST_MODULE serq
#ifndef BOOST_TEST_DYN_LINK  // normally defined by the build (test/CMakeLists.txt)
#define BOOST_TEST_DYN_LINK
#endif
#include <boost/test/unit_test.hpp>
