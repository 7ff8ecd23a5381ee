// Planted errors for .ci/sanitizers.sh: a plain shared library (no torch) built with the same
// sanitizer flags as the extension and called through ctypes from the same Python environment
// (preloaded runtimes, same ASAN_OPTIONS/UBSAN_OPTIONS). The clean call must pass; each planted
// call must stop the process with a sanitizer report, or the sanitizer job proves nothing.
#include <climits>
#include <cstdlib>

extern "C" {

// In bounds: sums n ints of a heap array. Must run clean.
int clean_sum(int n) {
  int* a = static_cast<int*>(std::malloc(sizeof(int) * n));
  for (int i = 0; i < n; ++i) a[i] = i;
  int s = 0;
  for (int i = 0; i < n; ++i) s += a[i];
  std::free(a);
  return s;
}

// Off by one: reads a[n] of an n-int heap array (AddressSanitizer: heap-buffer-overflow).
int heap_overflow_read(int n) {
  int* a = static_cast<int*>(std::malloc(sizeof(int) * n));
  for (int i = 0; i < n; ++i) a[i] = i;
  int s = 0;
  for (int i = 0; i <= n; ++i) s += a[i];
  std::free(a);
  return s;
}

// Signed overflow (UndefinedBehaviorSanitizer: signed integer overflow); x comes from Python
// so the compiler cannot fold it away.
int signed_overflow(int x) { return x + INT_MAX; }

}
