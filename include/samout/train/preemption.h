// Preemption by signal: SLURM's --signal=B:USR1@N, a scheduler's SIGTERM, or a user's kill.
// The first SIGTERM or SIGUSR1 only sets a flag; the trainer checks it at every step boundary,
// the ranks agree on it, save a checkpoint together, and exit with 75 (EX_TEMPFAIL: resume me).
// A second SIGTERM means "now": the process exits at once with 128 + SIGTERM.
#pragma once

namespace samout::train {

void install_preemption_handlers();
int preemption_signal();  // the signal that asked, 0 if none

}  // namespace samout::train
