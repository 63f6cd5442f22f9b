#include "samout/train/preemption.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace samout::train {

namespace {
std::atomic<int> g_signal{0};
std::atomic<int> g_terms{0};

void on_signal(int sig) {  // async-signal-safe: atomics and _exit only
  if (sig == SIGTERM && g_terms.fetch_add(1) >= 1) _exit(128 + SIGTERM);
  int expected = 0;
  g_signal.compare_exchange_strong(expected, sig);
}
}  // namespace

void install_preemption_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

int preemption_signal() { return g_signal.load(); }

}  // namespace samout::train
