# Runs CMD with ARGS and checks the exit code (EXPECT_RC) and that stderr is exactly one line
# containing EXPECT_ERR. Used by tests of the "bad input -> one line, exit 2" contract.
#   cmake -DCMD=prog -DARGS="a;b" -DEXPECT_RC=2 -DEXPECT_ERR=text -P expect_exit.cmake
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL EXPECT_RC)
  message(FATAL_ERROR "exit code ${rc}, expected ${EXPECT_RC}\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${err}" "${EXPECT_ERR}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "stderr does not mention '${EXPECT_ERR}': ${err}")
endif()
string(STRIP "${err}" err_stripped)
string(FIND "${err_stripped}" "\n" nl)
if(NOT nl EQUAL -1)
  message(FATAL_ERROR "stderr is more than one line: ${err}")
endif()
