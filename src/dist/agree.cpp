#include "samout/dist/agree.h"

#include <mpi.h>

#include <cstdint>

#include "samout/dist/checks.h"

namespace samout::dist {

namespace {
int reduce(int value, MPI_Op op) {
  int out = value;
  SAMOUT_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_INT, op, MPI_COMM_WORLD));
  return out;
}
}  // namespace

int min_over_ranks(int value) { return reduce(value, MPI_MIN); }
int max_over_ranks(int value) { return reduce(value, MPI_MAX); }

std::string broadcast_from_root(std::string s) {
  int64_t n = static_cast<int64_t>(s.size());
  SAMOUT_MPI_CHECK(MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD));
  s.resize(static_cast<size_t>(n));
  SAMOUT_MPI_CHECK(MPI_Bcast(s.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD));
  return s;
}

}  // namespace samout::dist
