// Compiled only to build the precompiled header the test executables share (test/CMakeLists.txt).
