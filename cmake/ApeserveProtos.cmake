# apeserve_proto_library(TARGET ROOT dir PROTOS a.proto... [GRPC])
# Generates C++ for PROTOS (paths relative to ROOT, which is also the import root)
# into the build folder and compiles them into the static library TARGET. With GRPC,
# service stubs too. Generated headers are included as SYSTEM: they never warn.
function(apeserve_proto_library target)
  cmake_parse_arguments(ARG "GRPC" "ROOT" "PROTOS" ${ARGN})
  set(gen_dir "${CMAKE_CURRENT_BINARY_DIR}/gen")
  set(srcs)
  foreach(proto IN LISTS ARG_PROTOS)
    get_filename_component(dir "${proto}" DIRECTORY)
    get_filename_component(name "${proto}" NAME_WE)
    set(base "${gen_dir}/${dir}/${name}")
    set(out "${base}.pb.cc" "${base}.pb.h")
    set(grpc_args)
    if(ARG_GRPC)
      list(APPEND out "${base}.grpc.pb.cc" "${base}.grpc.pb.h")
      set(grpc_args --grpc_out=${gen_dir}
                    --plugin=protoc-gen-grpc=${APESERVE_GRPC_CPP_PLUGIN})
    endif()
    add_custom_command(
      OUTPUT ${out}
      COMMAND ${CMAKE_COMMAND} -E make_directory "${gen_dir}"
      COMMAND protobuf::protoc --proto_path=${ARG_ROOT} --cpp_out=${gen_dir} ${grpc_args}
              ${proto}
      DEPENDS "${ARG_ROOT}/${proto}" protobuf::protoc
      COMMENT "protoc ${proto}"
      VERBATIM)
    list(APPEND srcs ${out})
  endforeach()
  add_library(${target} STATIC ${srcs})
  target_include_directories(${target} SYSTEM PUBLIC "${gen_dir}")
  target_link_libraries(${target} PUBLIC protobuf::libprotobuf)
  if(ARG_GRPC)
    target_link_libraries(${target} PUBLIC gRPC::grpc++)
  endif()
endfunction()
