// A thread team that lives for a whole layer call: the CPU analogue of the persistent CUDA
// kernel. Each member owns a fixed slice of the recurrent weights (packed once, hot in its
// cache) and a fixed slice of rows / columns for the per-step passes; steps are separated by
// spin barriers instead of an OpenMP fork/join per pass (which cost ~15% of a step in spin
// waits, and forced each step's small passes onto one thread to amortize it).
//
// The team is started with at::parallel_for over n "member" indices, grain 1. ATen normally
// runs one member per thread, but a runtime may hand one thread several members (fewer threads
// than asked, or a nested call that runs inline): a participant therefore owns a range of
// members, `mine()`, and runs every phase for each of them; barriers count participants.
// Rules for the body: every participant reaches every barrier, and nothing should throw. If a
// participant throws anyway, the team is aborted: the others leave their barriers with
// TeamAborted and run_team rethrows the first participant's error (never a hang).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "recurrent_gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUSEDRNN_PAUSE() _mm_pause()
#else
#define FUSEDRNN_PAUSE() ((void)0)
#endif

// MKL (statically linked into the x86-64 torch wheels) would start a nested team of its own for
// each member's GEMM slice; members run it single-threaded. This torch exports only the
// Fortran-convention entry (argument by pointer; every spelling aliases it). Weak: absent
// without MKL.
extern "C" int MKL_SET_NUM_THREADS_LOCAL(const int* n) __attribute__((weak));

namespace fusedrnn {
namespace cpu {

// [lo, hi) of part `i` of `parts` near-equal parts of [0, n), boundaries rounded to `align`.
inline std::pair<int64_t, int64_t> split(int64_t n, int64_t parts, int64_t i, int64_t align = 1) {
  auto edge = [&](int64_t k) {
    if (k >= parts) return n;
    int64_t e = (n * k / parts + align / 2) / align * align;
    return std::min(e, n);
  };
  return {edge(i), edge(i + 1)};
}

// Spins (with pause) while `busy()`: up to ~1 ms, about what libgomp spins before it sleeps; a
// step's phase takes tens of microseconds, and a thread that yields early can lose its core for
// a whole time slice on a loaded machine. Past that it yields, so an oversubscribed machine
// (more runnable threads than cores) still makes progress.
template <typename F>
inline void spin_while(F busy) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(1);
  bool spinning = true;
  for (int64_t spins = 1; busy(); ++spins) {
    if (spinning) {
      FUSEDRNN_PAUSE();
      if (spins % 256 == 0) spinning = clock::now() < deadline;
    } else {
      std::this_thread::yield();
    }
  }
}

struct TeamAborted : std::exception {
  const char* what() const noexcept override { return "fusedrnn: another member of the thread team failed"; }
};

class Team {
 public:
  struct State {
    explicit State(int64_t n) : members(n) {}
    const int64_t members;
    std::atomic<int64_t> covered{0};
    std::atomic<int> participants{0}, arrived{0}, generation{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;  // the first participant's, written once under `failed`
  };

  Team(State& s, int64_t lo, int64_t hi) : s_(s), lo_(lo), hi_(hi), size_(s.participants.load()) {}

  int64_t members() const { return s_.members; }
  std::pair<int64_t, int64_t> mine() const { return {lo_, hi_}; }

  // Every participant waits until all have arrived (sense-reversing central barrier).
  void barrier() {
    if (size_ == 1) return;
    const int gen = s_.generation.load(std::memory_order_acquire);
    if (s_.arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
      s_.arrived.store(0, std::memory_order_relaxed);
      s_.generation.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    spin_while([&] { return s_.generation.load(std::memory_order_acquire) == gen && !s_.failed.load(); });
    if (s_.generation.load(std::memory_order_acquire) == gen) throw TeamAborted();
  }

  // Runs f(member) for each member this participant owns.
  template <typename F>
  void each(F&& f) const {
    for (int64_t m = lo_; m < hi_; ++m) f(m);
  }

  // Runs f(member, lo, hi) for each member this participant owns, [lo, hi) being the member's
  // part of [0, n) (batch rows or columns of a step's pass).
  template <typename F>
  void each_part(int64_t n, F&& f) const {
    for (int64_t m = lo_; m < hi_; ++m) {
      const auto part = split(n, s_.members, m);
      f(m, part.first, part.second);
    }
  }

 private:
  State& s_;
  const int64_t lo_, hi_;
  const int size_;
};

// How many members for a step of `work` multiply-adds: one below ~64k (a barrier costs about as
// much as that much arithmetic), otherwise ATen's thread count; 1 inside another parallel region
// (the call runs inline there anyway). FUSEDRNN_CPU_TEAM=N forces N members (N >= 1, may exceed
// the thread count: a thread then plays several members; the tests use it at small shapes).
inline int64_t team_members(int64_t work) {
  if (const char* env = std::getenv("FUSEDRNN_CPU_TEAM")) {
    const int64_t forced = std::atoll(env);
    TORCH_CHECK(forced >= 1, "FUSEDRNN_CPU_TEAM must be a member count >= 1, got '", env, "'");
    return forced;
  }
  if (at::in_parallel_region() || work < (int64_t(1) << 16)) return 1;
  return std::max<int64_t>(1, at::get_num_threads());
}

// Runs body(team) on every participant of a team of `members` members.
template <typename Body>
void run_team(int64_t members, Body&& body) {
  Team::State state(members);
  at::parallel_for(0, members, 1, [&](int64_t lo, int64_t hi) {
    state.participants.fetch_add(1);
    state.covered.fetch_add(hi - lo);  // after the participant count: covered == members => count final
    spin_while([&] { return state.covered.load() < state.members; });
    Team team(state, lo, hi);
    const int one = 1;
    const int mkl_before = MKL_SET_NUM_THREADS_LOCAL ? MKL_SET_NUM_THREADS_LOCAL(&one) : 0;
    try {
      body(team);
    } catch (const TeamAborted&) {
    } catch (...) {
      if (!state.failed.exchange(true)) state.error = std::current_exception();
    }
    if (MKL_SET_NUM_THREADS_LOCAL) MKL_SET_NUM_THREADS_LOCAL(&mkl_before);
  });
  if (state.failed.load()) std::rethrow_exception(state.error);
}

// Packs every member's weight slice, each member its own (in parallel; a copy of W per member
// under the row split, in the member's own cache).
template <typename T>
void pack_members(std::vector<RecurrentGemm<T>>& g) {
  if (std::none_of(g.begin(), g.end(), [](const RecurrentGemm<T>& r) { return r.packs(); })) return;
  run_team(int64_t(g.size()), [&](Team& team) { team.each([&](int64_t m) { g[m].pack(); }); });
}

// One RecurrentGemm per team member: member m owns the m-th of n 16-aligned column slices of the
// output (forward: rows of W; backward: columns of W).
template <typename T>
std::vector<RecurrentGemm<T>> member_gemms(const at::Tensor& w, int64_t M, bool transposed, int64_t n) {
  std::vector<RecurrentGemm<T>> g;
  g.reserve(n);
  for (int64_t m = 0; m < n; ++m) {
    auto cols = split(transposed ? w.size(0) : w.size(1), n, m, 16);
    g.emplace_back(w, M, transposed, cols.first, cols.second);
  }
  pack_members(g);
  return g;
}

// How a team shares a step of the recurrence.
//  kColumns: member m owns a column slice of the recurrent product (its slice of W packed once),
//    then a part of the batch rows of the row passes, with barriers between the phases.
//  kRows: member m owns batch rows [lo, hi) for the whole time loop and multiplies them by the
//    whole W (packed once per member). Without batch norm the rows of a step never meet, so the
//    loop needs no barrier at all; batch norm reduces each member's rows and combines the
//    members' partial statistics after one barrier per norm (2 barriers per step forward, 2
//    backward, instead of 4 and 5). Chosen when W takes at most half a core's L2 (512 KiB) and
//    every member gets >= 16 rows. Measured in one process, alternating, fwd+bwd (rows / columns
//    time), without norm: pixel MNIST (H=100, W 160 KiB) 0.85-0.86, row MNIST (H=128, 256 KiB)
//    0.95-0.96, S1 (H=256, 1 MiB, not chosen) 0.99-1.01.
// FUSEDRNN_CPU_SPLIT=rows|columns forces either (tests, comparisons).
enum class TeamSplit { kColumns, kRows };

inline TeamSplit team_split(int64_t members, int64_t rows, int64_t w_bytes) {
  if (members <= 1) return TeamSplit::kColumns;
  if (const char* env = std::getenv("FUSEDRNN_CPU_SPLIT")) {
    const std::string v(env);
    TORCH_CHECK(v == "rows" || v == "columns", "FUSEDRNN_CPU_SPLIT must be 'rows' or 'columns', got '", v, "'");
    return v == "rows" ? TeamSplit::kRows : TeamSplit::kColumns;
  }
  return w_bytes <= (int64_t(1) << 19) && rows >= 16 * members ? TeamSplit::kRows : TeamSplit::kColumns;
}

// One RecurrentGemm per member for `split`: kColumns as member_gemms; kRows: member m multiplies
// its part of the M rows (Team::each_part's partition) by the whole W.
template <typename T>
std::vector<RecurrentGemm<T>> member_gemms(const at::Tensor& w, int64_t M, bool transposed, int64_t n,
                                           TeamSplit how) {
  if (how == TeamSplit::kColumns) return member_gemms<T>(w, M, transposed, n);
  std::vector<RecurrentGemm<T>> g;
  g.reserve(n);
  for (int64_t m = 0; m < n; ++m) {
    auto rows = split(M, n, m);
    g.emplace_back(w, rows.second - rows.first, transposed);
  }
  pack_members(g);
  return g;
}

}  // namespace cpu
}  // namespace fusedrnn
