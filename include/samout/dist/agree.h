// Agreement on host values over MPI_COMM_WORLD: the control plane (start-up checks, the flags, the
// checkpoint to resume, a preemption request), beside the data plane of dist::Communicator. These
// run before any communicator exists, or at step boundaries where a collective on a GPU
// communicator would cost a device sync.
#pragma once

#include <string>

namespace samout::dist {

int min_over_ranks(int value);
int max_over_ranks(int value);
// Rank 0's `s` on every rank (any length).
std::string broadcast_from_root(std::string s);

}  // namespace samout::dist
