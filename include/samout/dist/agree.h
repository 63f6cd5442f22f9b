// Agreement on host values over MPI_COMM_WORLD (flags, the checkpoint to resume, a preemption
// request): before any communicator exists, or where a GPU collective would cost a device sync.
#pragma once

#include <string>

namespace samout::dist {

int min_over_ranks(int value);
int max_over_ranks(int value);
// Rank 0's `s` on every rank (any length).
std::string broadcast_from_root(std::string s);

}  // namespace samout::dist
