// Cache of the kernels' large CPU buffers (the [T, B, ...] activations, saved projections and
// gate gradients). glibc serves requests above its mmap threshold (at most 32 MiB) with a fresh
// mmap that is unmapped again on free, so every call of a long-sequence layer page-faulted its
// hundreds of megabytes back in: on pixel MNIST (T=784, B=64, H=100) an LN-LSTM forward+backward
// faulted ~700 MB per call and spent about half its time in the kernel's page-fault path. Blocks
// freed here stay mapped and are handed to the next request of a fitting size, like PyTorch's
// CUDA caching allocator. New blocks are 2 MiB aligned and advised as transparent huge pages.
//
// FUSEDRNN_CPU_CACHE_MB caps the bytes kept in free blocks (default 1024; 0 turns the cache off
// and every buffer comes from c10's CPU allocator; builds with AddressSanitizer default to 0 so
// that it still sees every buffer). Requests under 1 MiB always go to c10's allocator.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <pthread.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fusedrnn {
namespace cpu {

#if defined(__SANITIZE_ADDRESS__)
#define FUSEDRNN_CACHE_DEFAULT_MB 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUSEDRNN_CACHE_DEFAULT_MB 0
#endif
#endif
#ifndef FUSEDRNN_CACHE_DEFAULT_MB
#define FUSEDRNN_CACHE_DEFAULT_MB 1024
#endif

class BlockCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kGrain = size_t(2) << 20;  // one transparent huge page

  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive static teardown
    return *cache;
  }

  BlockCache() {
    // fork() while another thread holds the lock (e.g. a DataLoader forking its workers while
    // a training thread allocates) would leave the child's lock held forever: hold it across fork.
    pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().mu_.unlock(); });
  }

  // Cap on cached free bytes from FUSEDRNN_CPU_CACHE_MB, read at every large request.
  static size_t cap_bytes() {
    const char* s = std::getenv("FUSEDRNN_CPU_CACHE_MB");
    if (!s || !*s) return size_t(FUSEDRNN_CACHE_DEFAULT_MB) << 20;
    char* end = nullptr;
    long long mb = std::strtoll(s, &end, 10);
    TORCH_CHECK(end && *end == '\0' && mb >= 0, "FUSEDRNN_CPU_CACHE_MB must be a non-negative integer (MiB), got '",
                s, "'");
    return size_t(mb) << 20;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t cap = cap_bytes();
    if (cap == 0) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = (n + kGrain - 1) / kGrain * kGrain;
    Block b = take(size);
    if (!b.ptr) b = {map(size), size};
    return {b.ptr, new Block(b), &BlockCache::give_back, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  // {bytes in free blocks, bytes handed out and not yet returned, cap}
  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(cached_), int64_t(in_use_), int64_t(cap_bytes())};
  }

  // Unmaps every free block (buffers still held by tensors return to the cache when freed).
  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    evict_locked(0);
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  // A free block of at least `size` and at most 1.25x it, or {nullptr, 0}.
  Block take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) return {nullptr, 0};
    Block b{it->second, it->first};
    free_.erase(it);
    cached_ -= b.size;
    in_use_ += b.size;
    return b;
  }

  void* map(size_t size) {
    void* p = map_aligned(size);
    if (!p) {  // give the cached blocks back to the system and try once more
      release();
      p = map_aligned(size);
    }
    TORCH_CHECK(p, "fusedrnn: out of memory: could not map ", size, " bytes for a CPU buffer");
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ += size;
    return p;
  }

  static void* map_aligned(size_t size) {
    const size_t span = size + kGrain;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (base + kGrain - 1) / kGrain * kGrain;
    if (start > base) munmap(raw, start - base);
    const size_t tail = base + span - (start + size);
    if (tail) munmap(reinterpret_cast<void*>(start + size), tail);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(start);
  }

  static void give_back(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    get().put(b->ptr, b->size);
    delete b;
  }

  void put(void* p, size_t size) {
    const size_t cap = [] {
      try {
        return cap_bytes();
      } catch (...) {  // a deleter must not throw; a bad value was already reported at allocation
        return size_t(0);
      }
    }();
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= size;
    free_.emplace(size, p);
    cached_ += size;
    evict_locked(cap);
  }

  // Unmaps free blocks, largest first, until at most `limit` bytes stay cached.
  void evict_locked(size_t limit) {
    while (cached_ > limit && !free_.empty()) {
      auto it = std::prev(free_.end());
      munmap(it->second, it->first);
      cached_ -= it->first;
      free_.erase(it);
    }
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, in_use_ = 0;
};

// Uninitialized tensor whose storage comes from the block cache (at::empty semantics).
inline at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::detail::empty_generic(sizes, &BlockCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   opts.dtype().toScalarType(), c10::nullopt);
}

// t itself if contiguous, else a contiguous copy in a cached buffer. The weight gradients cut
// out of one [GH, I + R] product are returned to autograd and freed after accumulation; from
// c10's allocator their 7 MB buffers (PTB shape) were page-faulted back in on most calls:
// torch.profiler, PTB backward, mean of 6: the two copies 1.2-1.3 ms against 3.7-4.1.
inline at::Tensor cached_contiguous(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  at::Tensor out = cached_empty(t.sizes(), t.options());
  out.copy_(t);
  return out;
}

}  // namespace cpu
}  // namespace fusedrnn
