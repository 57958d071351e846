# Finds every third-party dependency once, for all modules.
#
# Debian provides gRPC, Protobuf, RocksDB, spdlog, abseil, GoogleTest, nlohmann-json
# xxhash, PCRE2 and jemalloc; libtorch comes from the PyPI torch wheel in the Python environment that
# deploy/setup.sh creates (see ApeserveTorch.cmake).

# Where deploy/setup.sh keeps the heavy things (deploy/lib.sh has the same default).
if(DEFINED ENV{APESERVE_HOME})
  set(_apeserve_home "$ENV{APESERVE_HOME}")
elseif(DEFINED ENV{XDG_CACHE_HOME})
  set(_apeserve_home "$ENV{XDG_CACHE_HOME}/apeserve")
else()
  set(_apeserve_home "$ENV{HOME}/.cache/apeserve")
endif()
set(APESERVE_HOME "${_apeserve_home}" CACHE PATH
    "Folder of the Python environment, models and compiler cache")
# The server's defaults for --model and --data_dir: the embedded model where
# deploy/setup.sh places it, and var/data in the checkout (deploy/lib.sh agrees).
set(APESERVE_DEFAULT_MODEL "${APESERVE_HOME}/models/SmolLM2-135M-Instruct.Q4_1.gguf" CACHE FILEPATH
    "The model apeserve serves when --model is not given")
set(APESERVE_DEFAULT_DATA_DIR "${PROJECT_SOURCE_DIR}/var/data" CACHE PATH
    "The data directory apeserve uses when --data_dir is not given")

find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
pkg_check_modules(xxhash REQUIRED IMPORTED_TARGET libxxhash)
pkg_check_modules(pcre2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(httplib REQUIRED IMPORTED_TARGET cpp-httplib)
# The server's allocator (server/allocator.h); a sanitizer replaces malloc itself.
if(NOT APESERVE_SANITIZE)
  pkg_check_modules(jemalloc REQUIRED IMPORTED_TARGET jemalloc)
endif()

find_program(APESERVE_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

include(ApeserveTorch)
