# cmake -DINPUT=<file> -DOUTPUT=<header> -DNAME=<identifier> -P embed_page.cmake
#
# Writes a C++ header that defines `inline constexpr std::string_view <NAME>` holding the bytes of
# <file>, so a program can serve the file without finding it on disk. The bytes go in raw string
# literals of at most 4000 bytes each (MSVC limits the length of one literal), cut after a newline
# where there is one, so that no UTF-8 character is split between two literals.

file(READ ${INPUT} content)
set(delimiter "embed")
string(FIND "${content}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains )${delimiter}\", which would end the raw string literal")
endif()

string(LENGTH "${content}" length)
set(chunks "")
set(offset 0)
while(offset LESS length)
  string(SUBSTRING "${content}" ${offset} 4000 chunk)
  string(LENGTH "${chunk}" size)
  string(FIND "${chunk}" "\n" last_newline REVERSE)
  if(size EQUAL 4000 AND last_newline GREATER 0)
    math(EXPR size "${last_newline} + 1")
    string(SUBSTRING "${chunk}" 0 ${size} chunk)
  endif()
  string(APPEND chunks "    R\"${delimiter}(${chunk})${delimiter}\"\n")
  math(EXPR offset "${offset} + ${size}")
endwhile()

cmake_path(GET INPUT FILENAME source)
file(WRITE ${OUTPUT}.tmp
     "// Generated from ${source} by embed_page.cmake; do not edit.\n"
     "#pragma once\n"
     "#include <string_view>\n"
     "inline constexpr std::string_view ${NAME} =\n"
     "${chunks};\n")
# Replaced only when different, so an unchanged page rebuilds nothing.
file(COPY_FILE ${OUTPUT}.tmp ${OUTPUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUTPUT}.tmp)
