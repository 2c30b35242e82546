# Edgecomp.cmake: run the edgecomp compiler at build time and build its C output as a static library.
#
#   find_package(Python3 REQUIRED COMPONENTS Interpreter)   # optional; EDGECOMP_EXECUTABLE is found on PATH
#   list(APPEND CMAKE_MODULE_PATH "<output of: edgecomp cmake-module>")
#   include(Edgecomp)
#   edgecomp_add_model(TARGET mnist_model
#                      MODEL ${CMAKE_CURRENT_SOURCE_DIR}/mnist-8.onnx
#                      EDGECOMP_TARGET cortex-m4
#                      CALIBRATION ${CMAKE_CURRENT_SOURCE_DIR}/mnist_calib_1000.npz
#                      [QUANTIZE naive|qat] [EXTRA_ARGS --calibration-method entropy ...])
#   target_link_libraries(app PRIVATE mnist_model)
#
# Creates the static library TARGET from <model>.c and the kernel runtime (ec_*.c), with the
# generated folder as a PUBLIC include directory (so `#include "<model>.h"` works), and writes the
# compile report to <binary dir>/edgecomp_<TARGET>.json (`edgecomp compile --json`). The compiler
# reruns when the model, the calibration data or the target file changes. A model that does not
# fit the target's RAM or flash budget fails the build with edgecomp's message (exit code 8).
#
# <model> is the model file's stem as a C identifier: characters other than [0-9A-Za-z_] become
# '_', and a leading digit gets the prefix 'm_' (mnist-8.onnx -> mnist_8).

set(_EDGECOMP_RUNTIME_DIR "${CMAKE_CURRENT_LIST_DIR}/../runtime")

function(edgecomp_add_model)
  cmake_parse_arguments(EC "" "TARGET;MODEL;EDGECOMP_TARGET;CALIBRATION;QUANTIZE" "EXTRA_ARGS" ${ARGN})
  foreach(required TARGET MODEL EDGECOMP_TARGET)
    if(NOT EC_${required})
      message(FATAL_ERROR "edgecomp_add_model: ${required} is required")
    endif()
  endforeach()
  if(NOT EC_QUANTIZE)
    set(EC_QUANTIZE auto)
  endif()
  if(NOT EDGECOMP_EXECUTABLE)
    find_program(EDGECOMP_EXECUTABLE edgecomp REQUIRED)
  endif()

  get_filename_component(stem "${EC_MODEL}" NAME_WE)
  string(REGEX REPLACE "[^0-9A-Za-z_]" "_" ident "${stem}")
  if(ident MATCHES "^[0-9]")
    set(ident "m_${ident}")
  endif()

  set(out "${CMAKE_CURRENT_BINARY_DIR}/edgecomp_${EC_TARGET}")
  file(GLOB runtime_files RELATIVE "${_EDGECOMP_RUNTIME_DIR}" "${_EDGECOMP_RUNTIME_DIR}/ec_*.c" "${_EDGECOMP_RUNTIME_DIR}/ec_*.h")
  list(SORT runtime_files)
  set(generated "${out}/${ident}.c" "${out}/${ident}.h")
  foreach(file IN LISTS runtime_files)
    list(APPEND generated "${out}/${file}")
  endforeach()

  set(args compile "${EC_MODEL}" -t "${EC_EDGECOMP_TARGET}" -b c -q "${EC_QUANTIZE}" -o "${out}" --json)
  set(depends "${EC_MODEL}")
  if(EC_CALIBRATION)
    list(APPEND args --calibration "${EC_CALIBRATION}")
    list(APPEND depends "${EC_CALIBRATION}")
  endif()
  if(EXISTS "${EC_EDGECOMP_TARGET}")
    list(APPEND depends "${EC_EDGECOMP_TARGET}")
  endif()
  list(APPEND args ${EC_EXTRA_ARGS})

  add_custom_command(
    OUTPUT ${generated} "${CMAKE_CURRENT_BINARY_DIR}/edgecomp_${EC_TARGET}.json"
    COMMAND "${EDGECOMP_EXECUTABLE}" ${args} > "${CMAKE_CURRENT_BINARY_DIR}/edgecomp_${EC_TARGET}.json"
    DEPENDS ${depends}
    COMMENT "edgecomp: compiling ${stem} for ${EC_EDGECOMP_TARGET}"
    VERBATIM)

  set(sources "${out}/${ident}.c")
  foreach(file IN LISTS runtime_files)
    if(file MATCHES "\\.c$")
      list(APPEND sources "${out}/${file}")
    endif()
  endforeach()
  add_library(${EC_TARGET} STATIC ${sources})
  target_include_directories(${EC_TARGET} PUBLIC "${out}")
  set_target_properties(${EC_TARGET} PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
endfunction()
