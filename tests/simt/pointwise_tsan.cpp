// Every pointwise kernel of csrc/cuda/pointwise.cuh launched once under the SIMT emulator, for
// a ThreadSanitizer build (tests/test_simt.py): random data, H = 40 so the row kernels run two
// warps with strided units, B = 3 with one padded row. TSan must report no data race, i.e.
// no kernel reads shared or global data another thread writes without a barrier in between.
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/cuda/pointwise.cuh"

using namespace fusedrnn;
using namespace fusedrnn::cuda;
using T = double;

static std::mt19937 rng(0);
struct Buf {
  std::vector<T> v;
  explicit Buf(size_t n) : v(n) {
    std::normal_distribution<double> d(0.0, 0.5);
    for (auto& x : v) x = d(rng);
  }
  T* p() { return v.data(); }
};

int main() {
  const int B = 3, H = 40, G4 = 4 * H, N = 8 * B * G4;
  const int64_t lengths[B] = {2, 1, 2};
  auto buf = [&] { return Buf(N); };
  Buf xw = buf(), hw = buf(), fgr = buf(), b1 = buf(), b2 = buf(), peep = buf(), g1 = buf(), g2 = buf();
  Buf gc = buf(), bc = buf(), gg = buf(), bg = buf(), rm = buf(), h = buf(), c = buf(), a = buf();
  Buf hn = buf(), cn = buf(), an = buf(), y = buf(), acts = buf(), v = buf(), st = buf();
  Buf dy = buf(), dh = buf(), dc = buf(), da = buf(), dpre = buf(), dxw = buf(), dhw = buf();
  Buf dhd = buf(), dcp = buf(), dad = buf(), wg = buf(), rv = buf();
  for (auto& x : rv.v) x = x * x + 0.5;
  int launches = 0;
  for (int variant : {kVanilla, kPeephole, kCIFG, kFGR}) {
    for (int norm = kNormNone; norm <= kNormBatch; ++norm) {
      for (int training : {1, 0}) {
        if (!training && norm != kNormBatch) continue;
        LstmStepFwd<T> f{};
        f.d = StepDims{B, H, variant, 1, training, 0, 1e-5, lengths};
        f.xw = xw.p(); f.hw = hw.p(); f.fgr = fgr.p(); f.b_ih = b1.p(); f.b_hh = b2.p(); f.w_peep = peep.p();
        f.g_ih = g1.p(); f.g_hh = g2.p(); f.g_cell = gc.p(); f.b_cell = bc.p(); f.g_gates = gg.p(); f.b_gates = bg.p();
        f.rm_ih = f.rm_hh = f.rm_cell = rm.p(); f.rv_ih = f.rv_hh = f.rv_cell = rv.p();
        f.h_prev = h.p(); f.c_prev = c.p(); f.a_prev = a.p(); f.h_next = hn.p(); f.c_next = cn.p(); f.a_next = an.p();
        f.y = y.p(); f.acts = acts.p(); f.v_out = norm == kNormLayerPerGate ? v.p() : nullptr; f.stats = st.p();
        lstm_step_fwd<T>(f, norm, nullptr);
        LstmStepBwd<T> b{};
        b.d = f.d;
        b.xw = norm == kNormLayerPerGate ? v.p() : xw.p(); b.hw = hw.p(); b.w_peep = peep.p();
        b.g_ih = g1.p(); b.g_hh = g2.p(); b.g_cell = gc.p(); b.b_cell = bc.p(); b.g_gates = gg.p(); b.b_gates = bg.p();
        b.c_prev = c.p(); b.acts = acts.p(); b.cs = cn.p(); b.stats = st.p();
        b.dy = dy.p(); b.dh = dh.p(); b.dc = dc.p(); b.da = da.p();
        b.dpre = dpre.p(); b.dxw = norm == kNormNone ? dpre.p() : dxw.p();
        b.dhw = norm == kNormNone ? dpre.p() : norm == kNormLayerPerGate ? dxw.p() : dhw.p();
        b.dh_direct = dhd.p(); b.dc_prev = dcp.p(); b.da_direct = dad.p(); b.wgrad = wg.p();
        lstm_step_bwd<T>(b, norm, nullptr);
        launches += 2;
      }
    }
  }
  for (int norm : {kNormNone, kNormLayer}) {
    GruStepFwd<T> f{};
    f.d = StepDims{B, H, 0, 1, 0, 0, 1e-5, lengths};
    f.xw = xw.p(); f.hw = hw.p(); f.b_ih = b1.p(); f.b_hh = b2.p(); f.g_ih = g1.p(); f.g_hh = g2.p();
    f.h_prev = h.p(); f.h_next = hn.p(); f.y = y.p(); f.acts = acts.p(); f.hn = cn.p(); f.stats = st.p();
    gru_step_fwd<T>(f, norm, nullptr);
    GruStepBwd<T> b{};
    b.d = f.d;
    b.xw = xw.p(); b.hw = hw.p(); b.g_ih = g1.p(); b.g_hh = g2.p(); b.h_prev = h.p(); b.acts = acts.p();
    b.hn = cn.p(); b.stats = st.p(); b.dy = dy.p(); b.dh = dh.p(); b.dxw = dxw.p(); b.dhw = dhw.p();
    b.dh_direct = dhd.p(); b.wgrad = wg.p();
    gru_step_bwd<T>(b, norm, nullptr);
    launches += 2;
  }
  RnnStepFwd<T> rf{StepDims{B, H, kRnnTanh, 1, 0, 0, 0.0, lengths}, xw.p(), hw.p(), b1.p(), b2.p(), h.p(), hn.p(), y.p()};
  rnn_step_fwd<T>(rf, nullptr);
  RnnStepBwd<T> rb{rf.d, y.p(), dy.p(), dh.p(), dpre.p(), dhd.p()};
  rnn_step_bwd<T>(rb, nullptr);
  BnUpdate<T> u{3, B, 2, 0, G4, H, 0.1, lengths, st.p(), rm.p(), rv.p(), dxw.p(), dhw.p(), dpre.p(), dcp.p()};
  bn_update<T>(u, nullptr);
  launches += 3;
  std::printf("launched %d kernels\n", launches);
  return 0;
}
