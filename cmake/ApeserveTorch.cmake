# Locates libtorch inside the torch wheel of the project's Python environment and
# imports it with find_package(Torch).
#
# Inputs (cache variables, all optional):
#   APESERVE_VENV  the virtual environment made by deploy/setup.sh.
#                  Default: $APESERVE_VENV, else ${APESERVE_HOME}/venv.
#   Torch_DIR      a TorchConfig.cmake folder; overrides the search in the venv.
#
# The wheel is a CUDA build. Its CMake package would look for a system CUDA toolkit
# (nvcc, headers) only to define the imported target torch::cudart. We define that
# target ourselves from the CUDA runtime that the wheel's own dependencies installed
# (nvidia/cu13 in site-packages), the exact version torch was built against. So no
# CUDA toolkit is needed to build, every binary carries the CUDA path, and it is used
# wherever a GPU and driver exist; elsewhere libtorch simply reports no CUDA device.

set(APESERVE_VENV "${APESERVE_HOME}/venv" CACHE PATH
    "Python environment holding the torch wheel (made by deploy/setup.sh)")
if(DEFINED ENV{APESERVE_VENV})
  set(APESERVE_VENV "$ENV{APESERVE_VENV}" CACHE PATH "" FORCE)
endif()

file(GLOB _apeserve_site_packages "${APESERVE_VENV}/lib/python3*/site-packages")
if(NOT _apeserve_site_packages)
  message(FATAL_ERROR
    "No Python environment at APESERVE_VENV=${APESERVE_VENV}. "
    "Run deploy/setup.sh first, or pass -DAPESERVE_VENV=<venv> or -DTorch_DIR=<dir>.")
endif()
list(GET _apeserve_site_packages 0 APESERVE_SITE_PACKAGES)
set(APESERVE_PYTHON "${APESERVE_VENV}/bin/python" CACHE FILEPATH
    "Python interpreter of the environment (runs the Python-side tests)")

if(NOT Torch_DIR)
  set(Torch_DIR "${APESERVE_SITE_PACKAGES}/torch/share/cmake/Torch")
endif()

# torch::cudart from the wheel's CUDA runtime (see the comment at the top).
set(_apeserve_cuda_root "${APESERVE_SITE_PACKAGES}/nvidia/cu13")
find_library(APESERVE_CUDART_LIBRARY NAMES cudart libcudart.so.13
             PATHS "${_apeserve_cuda_root}/lib" NO_DEFAULT_PATH)
if(NOT APESERVE_CUDART_LIBRARY)
  message(FATAL_ERROR "The torch wheel's CUDA runtime is missing under "
                      "${_apeserve_cuda_root}/lib; re-run deploy/setup.sh.")
endif()
if(NOT TARGET torch::cudart)
  add_library(torch::cudart SHARED IMPORTED)
  set_target_properties(torch::cudart PROPERTIES
    IMPORTED_LOCATION "${APESERVE_CUDART_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${_apeserve_cuda_root}/include")
endif()

# TorchConfig looks for a separate libkineto, which the wheel links into libtorch_cpu;
# point it there so the search succeeds instead of warning on every configure.
find_library(kineto_LIBRARY torch_cpu PATHS "${APESERVE_SITE_PACKAGES}/torch/lib"
             NO_DEFAULT_PATH)

# Torch's config appends its own flags to CMAKE_CXX_FLAGS (the C++11 ABI switch);
# keep the variable as it was and apply TORCH_CXX_FLAGS only where torch is used.
set(_apeserve_saved_cxx_flags "${CMAKE_CXX_FLAGS}")
find_package(Torch CONFIG REQUIRED)
set(CMAKE_CXX_FLAGS "${_apeserve_saved_cxx_flags}")
message(STATUS "libtorch ${Torch_VERSION} from ${Torch_DIR}")

# The one target the project links to use libtorch: headers as SYSTEM (their warnings
# are not ours), the wheel's libraries with their run path baked in.
add_library(apeserve_torch INTERFACE)
target_link_libraries(apeserve_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(apeserve_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
separate_arguments(_apeserve_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(apeserve_torch INTERFACE ${_apeserve_torch_flags})
