# Compiler settings for the project's own targets (not for generated code or
# third-party headers, which are included as SYSTEM and so never warn).

option(APESERVE_WERROR "Treat warnings in project code as errors" ON)
set(APESERVE_SANITIZE "" CACHE STRING
    "Comma-separated sanitizers for every target, e.g. address,undefined")

# Sanitizers apply to the whole build so that every object agrees on the runtime.
if(APESERVE_SANITIZE)
  add_compile_options(-fsanitize=${APESERVE_SANITIZE} -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${APESERVE_SANITIZE})
endif()

# libFuzzer (tests/fuzz): coverage instrumentation for every object, so that the
# fuzzers see the edges of the libraries they call; the fuzzers alone link libFuzzer's
# runtime and main (-fsanitize=fuzzer). Clang only.
option(APESERVE_FUZZ "Build the libFuzzer targets of tests/fuzz (clang)" OFF)
if(APESERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "APESERVE_FUZZ needs clang (the fuzz preset sets it), not "
                        "${CMAKE_CXX_COMPILER_ID}")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

find_program(APESERVE_CCACHE ccache)
if(APESERVE_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER "${APESERVE_CCACHE}")
  set(CMAKE_CXX_COMPILER_LAUNCHER "${APESERVE_CCACHE}")
endif()

# Applies the project's warning policy to TARGET.
function(apeserve_target_defaults target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
    -Wcast-align -Wunused -Woverloaded-virtual -Wnull-dereference
    -Wimplicit-fallthrough
    $<$<BOOL:${APESERVE_WERROR}>:-Werror>)
endfunction()
