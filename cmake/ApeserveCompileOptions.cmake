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
