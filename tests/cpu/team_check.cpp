// The CPU kernels' thread team (csrc/cpu/team.h) alone, called through ctypes by
// tests/test_team.py from a python that imported torch (so ATen's OpenMP runtime is the one
// torch loaded). No tensors, no kernels: the barrier's ordering and the abort path.
#include <cstring>
#include <stdexcept>
#include <vector>

#include "team.h"

using fusedrnn::cpu::run_team;
using fusedrnn::cpu::Team;

// Every member writes the step number into its slot, barrier, then checks every slot holds
// this step (a barrier that lets a member through early shows up as a stale or future value),
// barrier. Returns the number of violations seen.
extern "C" long team_barrier_check(long members, long steps) {
  std::vector<long> slot(members, -1);
  std::vector<long> bad(members, 0);
  run_team(members, [&](Team& team) {
    for (long t = 0; t < steps; ++t) {
      team.each([&](int64_t m) { slot[m] = t; });
      team.barrier();
      team.each([&](int64_t m) {
        for (long q = 0; q < members; ++q) bad[m] += slot[q] != t;
      });
      team.barrier();
    }
  });
  long total = 0;
  for (long b : bad) total += b;
  return total;
}

// Member `fail_member` throws at step `fail_step` while the others wait at barriers. Returns 1
// and copies the exception's message into msg when run_team rethrows it, 0 if it returns normally.
extern "C" int team_abort_check(long members, long fail_member, long fail_step, char* msg, long msg_len) {
  try {
    run_team(members, [&](Team& team) {
      for (long t = 0; t < 100; ++t) {
        team.each([&](int64_t m) {
          if (m == fail_member && t == fail_step) throw std::runtime_error("planted failure in member " + std::to_string(m));
        });
        team.barrier();
      }
    });
  } catch (const std::exception& e) {
    std::strncpy(msg, e.what(), msg_len - 1);
    msg[msg_len - 1] = 0;
    return 1;
  }
  return 0;
}
