// Barrier waits of two threads doing the same arithmetic between central spin barriers (the
// barrier of csrc/cpu/team.h, no OpenMP): the machine's own noise. g++ -O2 -march=native -pthread
// barrier_noise.cpp -o /tmp/barrier_noise && /tmp/barrier_noise ITERS N (20 4096: ~25 us phases).
#include <atomic>
#include <thread>
#include <cstdio>
#include <x86intrin.h>
#include <vector>
std::atomic<int> arrived{0}, generation{0};
unsigned long long waits[2];
void barrier(int me){
  auto c0=__rdtsc();
  int gen = generation.load(std::memory_order_acquire);
  if (arrived.fetch_add(1, std::memory_order_acq_rel)+1==2){ arrived.store(0,std::memory_order_relaxed); generation.fetch_add(1,std::memory_order_acq_rel); waits[me]+=__rdtsc()-c0; return;}
  while (generation.load(std::memory_order_acquire)==gen) _mm_pause();
  waits[me]+=__rdtsc()-c0;
}
volatile float sink;
void work(int iters, std::vector<float>& buf){
  float s=0; for(int i=0;i<iters;++i){ for (size_t j=0;j<buf.size();++j) buf[j]=buf[j]*0.999f+1.0f; } sink=buf[3];
}
int main(int argc, char** argv){
  int iters = atoi(argv[1]); size_t n = atoi(argv[2]); const int N=20000;
  auto run=[&](int me){ std::vector<float> buf(n,1.0f); for(int i=0;i<N;++i){ work(iters,buf); barrier(me);} };
  auto t0=__rdtsc();
  std::thread th(run,1); run(0); th.join();
  auto t1=__rdtsc();
  double per=(t1-t0)/double(N);
  printf("phase %.0f cycles (%.1f us); wait per barrier tid0 %.0f tid1 %.0f  (%.1f%% of phase)\n", per, per/2600, waits[0]/double(N), waits[1]/double(N), 100*(waits[0]+waits[1])/double(N)/2/per);
}
