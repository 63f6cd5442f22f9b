# FindNCCL: locates NVIDIA's NCCL (header nccl.h, library libnccl.so / libnccl.so.2).
# Defines NCCL_FOUND, NCCL_VERSION_STRING and the imported target NCCL::NCCL.
#
# Search order: NCCL_ROOT, then the NCCL of the pip wheel that torch itself loads
# (<site-packages>/nvidia/nccl, found through SAMOUT_PYTHON), and only then the CUDA toolkit and
# the system. Linking the wheel's copy means one process never holds two NCCLs: torch's
# libtorch_cuda.so and our code resolve the same libnccl.so.2.
set(_nccl_hints ${NCCL_ROOT} $ENV{NCCL_ROOT})
if(SAMOUT_PYTHON AND EXISTS "${SAMOUT_PYTHON}")
  execute_process(
    COMMAND "${SAMOUT_PYTHON}" -c "import nvidia.nccl as n; print(list(n.__path__)[0])"
    OUTPUT_VARIABLE _nccl_wheel OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
  if(_rc EQUAL 0 AND EXISTS "${_nccl_wheel}/include/nccl.h")
    list(APPEND _nccl_hints "${_nccl_wheel}")
  endif()
endif()
# First the hints alone, so that a system copy cannot shadow torch's.
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${_nccl_hints} PATH_SUFFIXES lib lib64
             NO_DEFAULT_PATH)
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR}
             PATH_SUFFIXES lib lib64)
if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_v REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*NCCL_MAJOR ([0-9]+).*NCCL_MINOR ([0-9]+).*NCCL_PATCH ([0-9]+).*"
                       "\\1.\\2.\\3" NCCL_VERSION_STRING "${_nccl_v}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
                                  VERSION_VAR NCCL_VERSION_STRING)
if(NCCL_FOUND AND NOT TARGET NCCL::NCCL)
  add_library(NCCL::NCCL UNKNOWN IMPORTED)
  set_target_properties(NCCL::NCCL PROPERTIES
    IMPORTED_LOCATION "${NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
