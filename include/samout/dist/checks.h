// Checked MPI and NCCL calls. A failed call fails the job, not one rank: the message names the
// call, file:line, host and rank, and MPI_Abort brings down every rank, so none waits forever.
#pragma once

#include <mpi.h>

#include <string>

namespace samout::dist {

// Logs "rank R on HOST: WHAT" and aborts MPI_COMM_WORLD with `code`. Never returns.
[[noreturn]] void abort_job(const std::string& what, int code = 1);

[[noreturn]] void fail_call(const char* call, const char* file, int line, const std::string& error);

}  // namespace samout::dist

#define SAMOUT_MPI_CHECK(call)                                                                     \
  do {                                                                                             \
    const int samout_rc_ = (call);                                                                 \
    if (samout_rc_ != MPI_SUCCESS) {                                                               \
      char samout_msg_[MPI_MAX_ERROR_STRING];                                                      \
      int samout_len_ = 0;                                                                         \
      MPI_Error_string(samout_rc_, samout_msg_, &samout_len_);                                     \
      ::samout::dist::fail_call(#call, __FILE__, __LINE__, std::string(samout_msg_, samout_len_)); \
    }                                                                                              \
  } while (0)

#define SAMOUT_NCCL_CHECK(call)                                                             \
  do {                                                                                      \
    const ncclResult_t samout_rc_ = (call);                                                 \
    if (samout_rc_ != ncclSuccess)                                                          \
      ::samout::dist::fail_call(#call, __FILE__, __LINE__, ncclGetErrorString(samout_rc_)); \
  } while (0)
