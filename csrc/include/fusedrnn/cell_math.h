// fusedrnn cell math: per-element forward and backward of every cell, and the normalization
// primitives, written once for the CPU (g++) and CUDA (nvcc) kernels.
//
// Shape legend (also in fusedrnn/spec.py):
//   T steps, B batch, I input size, H hidden size, G gates present, GH = G * H,
//   P peephole rows present, S = max_bn_steps (batch-norm running-statistics slots).
//
// Everything here is framework-free: no ATen, no std:: containers, no exceptions, so the
// same functions compile as __host__ __device__ code. `acc` below is the accumulation type
// (float for float/half on CUDA, double on the CPU for the statistics if the caller wants).
//
// Conventions (as fusedrnn/reference.py): gate order i, f, g, o (LSTM) and r, z, n (GRU);
// normalizations use the biased variance plus eps; peephole and full-gate-recurrence terms
// are added after normalization, on the raw cell state c.
#pragma once

#include <math.h>

#ifdef __CUDACC__
#define FUSEDRNN_HD __host__ __device__
#else
#define FUSEDRNN_HD
#endif

namespace fusedrnn {

// ----------------------------------------------------------------------------- enums

// Normalization of a cell; values are the `norm` int of every op schema.
enum NormKind : int { kNormNone = 0, kNormLayer = 1, kNormLayerPerGate = 2, kNormBatch = 3 };

// LSTM variants; values are the `variant` int of the lstm op schemas (order of spec.LSTM_VARIANTS).
enum LstmVariant : int {
  kVanilla = 0, kPeephole = 1, kNIG = 2, kNFG = 3, kNOG = 4, kNIAF = 5, kNOAF = 6, kCIFG = 7, kFGR = 8
};

// Families of the rnn ops: `kind` int of rnn_fwd/rnn_bwd.
enum RnnKind : int { kRnnTanh = 0, kRnnRelu = 1 };

// ----------------------------------------------------------------------------- LSTM flags

// What an LSTM variant computes; a small runtime struct. Branches on it are uniform across a
// step, but they keep a compiler from vectorizing the unit loops: the CPU kernels fix the
// variant at compile time for float (cpu/units.h with_variant).
// Gate offsets are row blocks of the gate vector (units of H): -1 when the gate is absent.
// Peephole rows index w_peep [P, H]: -1 when that peephole is absent.
struct LstmFlags {
  int gi, gf, gg, go;   // gate block of i, f, g, o in the GH gate vector (-1 = absent)
  int pi, pf, po;       // peephole row of i, f, o in w_peep (-1 = absent)
  int num_gates;        // G
  int num_peep;         // P
  bool input_act;       // false for NIAF: g is the raw pre-activation
  bool output_act;      // false for NOAF: h = o * c (or o * norm(c))
  bool cifg;            // f = 1 - i
  bool fgr;             // i, f, o pre-activations add w_fgr @ (previous i, f, o)
  int variant;          // the LstmVariant these flags describe
};

// Flags of a variant (numbering of LstmVariant). Mirrors CellSpec.gates / CellSpec.peepholes.
FUSEDRNN_HD inline LstmFlags lstm_flags(int variant) {
  LstmFlags f;
  // gates present: all but nig (no i), nfg and cifg (no f), nog (no o)
  bool has_i = variant != kNIG;
  bool has_f = variant != kNFG && variant != kCIFG;
  bool has_o = variant != kNOG;
  int k = 0;
  f.gi = has_i ? k++ : -1;
  f.gf = has_f ? k++ : -1;
  f.gg = k++;
  f.go = has_o ? k++ : -1;
  f.num_gates = k;
  // peepholes: every variant but vanilla has those of its gates; cifg drops f's (no f gate)
  bool peep = variant != kVanilla;
  k = 0;
  f.pi = (peep && has_i) ? k++ : -1;
  f.pf = (peep && has_f) ? k++ : -1;
  f.po = (peep && has_o) ? k++ : -1;
  f.num_peep = k;
  f.input_act = variant != kNIAF;
  f.output_act = variant != kNOAF;
  f.cifg = variant == kCIFG;
  f.fgr = variant == kFGR;
  f.variant = variant;
  return f;
}

// ----------------------------------------------------------------------------- activations
//
// sigmoid and tanh of every cell. double: libm. float on the device: CUDA's expf/tanhf.
// float on the host (the CPU kernels): branch-free Cephes-style polynomials (max error ~2 ulp
// measured against double), about 10x cheaper than glibc's scalar tanhf and vectorizable by
// the compiler. NaN propagates; +-inf saturate to the exact limits.

#ifndef __CUDA_ARCH__
// e^x for float: x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-6 polynomial, times 2^n.
inline float host_expf(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;  // comparisons keep NaN
  x = x < -87.3365447504f ? -87.3365447504f : x;
  float fx = x * 1.44269504088896341f + 0.5f;
  int n = static_cast<int>(fx);
  n -= (static_cast<float>(n) > fx);  // floor
  float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int bits = (n + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float host_tanhf(float x) {
  float a = x < 0.0f ? -x : x;
  // |x| < 0.625: odd polynomial (no cancellation near 0); else 1 - 2 / (e^{2|x|} + 1)
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = x + x * z * p;
  float big = 1.0f - 2.0f / (host_expf(2.0f * a) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}
#endif

template <typename T>
FUSEDRNN_HD inline T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

template <typename T>
FUSEDRNN_HD inline T tanh_(T x) {
  return tanh(x);
}

FUSEDRNN_HD inline float sigmoid(float x) {
#ifdef __CUDA_ARCH__
  return 1.0f / (1.0f + expf(-x));
#else
  return 1.0f / (1.0f + host_expf(-x));
#endif
}

FUSEDRNN_HD inline float tanh_(float x) {
#ifdef __CUDA_ARCH__
  return tanhf(x);
#else
  return host_tanhf(x);
#endif
}

// ----------------------------------------------------------------------------- LSTM

// Forward of one LSTM hidden unit, phase A (everything up to the new cell state).
//   pre_*:  gate pre-activations after normalization, biases and FGR terms (absent gate: ignored)
//   c_prev: c_{t-1};  p_*: peephole weights of this unit (absent: ignored)
// Outputs the activations i, f, g, o (1 for an absent gate, f = 1 - i for CIFG) and c_new.
// The output gate's peephole looks at the raw c_new.
template <typename T>
FUSEDRNN_HD inline void lstm_cell_fwd(const LstmFlags& fl, T pre_i, T pre_f, T pre_g, T pre_o,
                                      T c_prev, T p_i, T p_f, T p_o,
                                      T* i, T* f, T* g, T* o, T* c_new) {
  T ii = fl.gi >= 0 ? sigmoid(pre_i + (fl.pi >= 0 ? p_i * c_prev : T(0))) : T(1);
  T ff;
  if (fl.cifg) ff = T(1) - ii;
  else ff = fl.gf >= 0 ? sigmoid(pre_f + (fl.pf >= 0 ? p_f * c_prev : T(0))) : T(1);
  T gg = fl.input_act ? tanh_(pre_g) : pre_g;
  T cn = ff * c_prev + ii * gg;
  T oo = fl.go >= 0 ? sigmoid(pre_o + (fl.po >= 0 ? p_o * cn : T(0))) : T(1);
  *i = ii; *f = ff; *g = gg; *o = oo; *c_new = cn;
}

// Forward phase B: h = o * act(cn), cn = c_new or its normalization.
template <typename T>
FUSEDRNN_HD inline T lstm_out_fwd(const LstmFlags& fl, T o, T cn) {
  return o * (fl.output_act ? tanh_(cn) : cn);
}

// Backward of phase B. dh: gradient of h. Returns d_o (gradient of the o activation) and
// d_cn (gradient of cn, to be pushed through the cell norm if any).
template <typename T>
FUSEDRNN_HD inline void lstm_out_bwd(const LstmFlags& fl, T dh, T o, T cn, T* d_o, T* d_cn) {
  if (fl.output_act) {
    T a = tanh_(cn);
    *d_o = dh * a;
    *d_cn = dh * o * (T(1) - a * a);
  } else {
    *d_o = dh * cn;
    *d_cn = dh * o;
  }
}

// Backward of phase A for one hidden unit.
//   d_o:   gradient of the o activation (from lstm_out_bwd, plus FGR's da_o)
//   dc:    gradient of c_new (through the cell norm / output, plus the carry from step t+1)
//   da_i, da_f: FGR's gradient of the i, f activations carried back from step t+1 (0 otherwise)
//   i, f, g, o, c_prev, c_new: saved forward values; p_*: peephole weights
// Outputs the gate pre-activation gradients (0 for absent gates), dc_prev and the
// peephole-weight gradient contributions dp_* of this unit.
template <typename T>
FUSEDRNN_HD inline void lstm_cell_bwd(const LstmFlags& fl, T d_o, T dc, T da_i, T da_f,
                                      T i, T f, T g, T o, T c_prev, T c_new,
                                      T p_i, T p_f, T p_o,
                                      T* dpre_i, T* dpre_f, T* dpre_g, T* dpre_o, T* dc_prev,
                                      T* dp_i, T* dp_f, T* dp_o) {
  T dpo = fl.go >= 0 ? d_o * o * (T(1) - o) : T(0);
  if (fl.po >= 0) dc += dpo * p_o;
  T d_i = dc * g + da_i;
  T d_f = dc * c_prev + da_f;
  T d_g = dc * i;
  T dcp = dc * f;
  if (fl.cifg) d_i -= d_f;  // f = 1 - i
  T dpi = fl.gi >= 0 ? d_i * i * (T(1) - i) : T(0);
  T dpf = fl.gf >= 0 ? d_f * f * (T(1) - f) : T(0);
  T dpg = fl.input_act ? d_g * (T(1) - g * g) : d_g;
  if (fl.pi >= 0) dcp += dpi * p_i;
  if (fl.pf >= 0) dcp += dpf * p_f;
  *dpre_i = dpi; *dpre_f = dpf; *dpre_g = dpg; *dpre_o = dpo; *dc_prev = dcp;
  *dp_i = fl.pi >= 0 ? dpi * c_prev : T(0);
  *dp_f = fl.pf >= 0 ? dpf * c_prev : T(0);
  *dp_o = fl.po >= 0 ? dpo * c_new : T(0);
}

// ----------------------------------------------------------------------------- GRU

// Forward of one GRU unit (torch.nn.GRU): x* = normalized W_ih x + b_ih, h* = normalized
// W_hh h + b_hh, per gate r, z, n. Returns r, z, n and the new h.
template <typename T>
FUSEDRNN_HD inline void gru_cell_fwd(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev,
                                     T* r, T* z, T* n, T* h_new) {
  T rr = sigmoid(xr + hr);
  T zz = sigmoid(xz + hz);
  T nn = tanh_(xn + rr * hn);
  *r = rr; *z = zz; *n = nn;
  *h_new = (T(1) - zz) * nn + zz * h_prev;
}

// Backward of one GRU unit. dh: gradient of h_new; hn: the saved h* of gate n.
// Outputs gradients of x* (dxr, dxz, dxn), of h* (dhr, dhz, dhn; dhr = dxr, dhz = dxz) and
// the direct part of dh_prev (dh * z; the W_hh part is a GEMM done by the caller).
template <typename T>
FUSEDRNN_HD inline void gru_cell_bwd(T dh, T r, T z, T n, T hn, T h_prev,
                                     T* dxr, T* dxz, T* dxn, T* dhn, T* dh_prev_direct) {
  T dn = dh * (T(1) - z);
  T dz = dh * (h_prev - n);
  T dpn = dn * (T(1) - n * n);
  T dr = dpn * hn;
  *dxr = dr * r * (T(1) - r);
  *dxz = dz * z * (T(1) - z);
  *dxn = dpn;
  *dhn = dpn * r;
  *dh_prev_direct = dh * z;
}

// ----------------------------------------------------------------------------- Elman RNN

// relu as torch.relu: NaN propagates (`pre < 0` is false for NaN).
template <typename T>
FUSEDRNN_HD inline T rnn_cell_fwd(int kind, T pre) {
  return kind == kRnnTanh ? tanh_(pre) : (pre < T(0) ? T(0) : pre);
}

// Gradient of the pre-activation from dh and the saved output h (relu: torch's h > 0 rule).
template <typename T>
FUSEDRNN_HD inline T rnn_cell_bwd(int kind, T dh, T h) {
  return kind == kRnnTanh ? dh * (T(1) - h * h) : (h > T(0) ? dh : T(0));
}

// ----------------------------------------------------------------------------- norms
//
// Both layer norm (statistics over features of one sample) and batch norm (statistics over
// the active samples of one feature) are y = (v - mean) * rstd * gain + bias with
// rstd = 1 / sqrt(var + eps), var biased. Backward through the statistics, with
// dyg = dy * gain and vhat = (v - mean) * rstd, over the n values sharing the statistics:
//   dv = rstd * (dyg - mean(dyg) - vhat * mean(dyg * vhat))
// When the statistics are constants (batch norm in eval mode): dv = rstd * dyg.

template <typename T, typename A>
FUSEDRNN_HD inline T norm_rstd(A var, A eps) {
  return T(A(1) / sqrt(var + eps));
}

// Normalized value times gain plus bias (pass bias 0 for a gain-only norm).
template <typename T>
FUSEDRNN_HD inline T norm_apply(T v, T mean, T rstd, T gain, T bias) {
  return (v - mean) * rstd * gain + bias;
}

// Gradient of v through a norm whose statistics depend on v. dyg = dy * gain;
// mean_dyg = mean(dyg), mean_dyg_vhat = mean(dyg * vhat) over the values sharing the statistics.
template <typename T>
FUSEDRNN_HD inline T norm_bwd(T dyg, T vhat, T rstd, T mean_dyg, T mean_dyg_vhat) {
  return rstd * (dyg - mean_dyg - vhat * mean_dyg_vhat);
}

// norm_bwd of one column's elements as dv = a dy + b (v - mean) + e (dy before the gain): its
// coefficients from the column's rstd, gain and the two means. The same terms, rstd * gain * dy -
// rstd^2 mean_dyg_vhat (v - mean) - rstd mean_dyg, each rounded once more or less. Eval (the
// running statistics, no means): a = rstd * gain, b = e = 0.
template <typename T>
struct NormBwdCoefs {
  T a, b, e;
};
template <typename T>
FUSEDRNN_HD inline NormBwdCoefs<T> norm_bwd_coefs(T rstd, T gain, T mean_dyg, T mean_dyg_vhat) {
  return {rstd * gain, -(rstd * rstd) * mean_dyg_vhat, -rstd * mean_dyg};
}

// Partial sums of a row reduction: 8 interleaved independent chains, combined at the end. The
// chains let a compiler keep the sums in vector registers without reassociating floating-point
// additions (which it may not do without fast-math), instead of one latency-bound chain.
template <typename A>
struct LaneSum {
  A p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  FUSEDRNN_HD A total() const { return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])); }
};

// Statistics of n values with stride `stride` (two-pass, accumulated in A): mean and biased var.
template <typename T, typename A>
FUSEDRNN_HD inline void moments(const T* v, int n, int stride, A* mean, A* var) {
  LaneSum<A> s, q;
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) s.p[l] += A(v[(long)(k + l) * stride]);
  for (; k < n; ++k) s.p[k % 8] += A(v[(long)k * stride]);  // tail: at most 7 values
  A m = s.total() / A(n);
  for (k = 0; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) {
      A d = A(v[(long)(k + l) * stride]) - m;
      q.p[l] += d * d;
    }
  for (; k < n; ++k) {
    A d = A(v[(long)k * stride]) - m;
    q.p[k % 8] += d * d;
  }
  *mean = m;
  *var = q.total() / A(n);
}

// y = norm(v) * gain (+ bias if non-null) over a row of n values whose mean m and rstd r are known.
template <typename T>
FUSEDRNN_HD inline void layer_norm_row_apply(const T* v, int n, const T* gain, const T* bias, T m, T r, T* y) {
  if (bias)
    for (int k = 0; k < n; ++k) y[k] = norm_apply(v[k], m, r, gain[k], bias[k]);
  else
    for (int k = 0; k < n; ++k) y[k] = norm_apply(v[k], m, r, gain[k], T(0));
}

// Mean and rstd of a row layer norm over n contiguous values (statistics in A).
template <typename T, typename A>
FUSEDRNN_HD inline void layer_norm_row_stats(const T* v, int n, A eps, T* mean_out, T* rstd_out) {
  A mean, var;
  moments<T, A>(v, n, 1, &mean, &var);
  *mean_out = T(mean);
  *rstd_out = norm_rstd<T, A>(var, eps);
}

// Row layer norm forward over n contiguous values: y = norm(v) * gain (+ bias if non-null).
// Writes mean and rstd of the row. y may alias v.
template <typename T, typename A>
FUSEDRNN_HD inline void layer_norm_row_fwd(const T* v, int n, const T* gain, const T* bias, A eps,
                                           T* y, T* mean_out, T* rstd_out) {
  T m, r;
  layer_norm_row_stats<T, A>(v, n, eps, &m, &r);
  layer_norm_row_apply(v, n, gain, bias, m, r, y);
  *mean_out = m;
  *rstd_out = r;
}

// The rest of a row layer norm's backward once m1 = mean(dy * gain) and m2 = mean(dy * gain *
// vhat) are known: dv (may alias dy), dbias += dy (dbias may be null).
template <typename T>
FUSEDRNN_HD inline void layer_norm_row_bwd_finish(const T* v, const T* dy, int n, const T* gain, T mean, T rstd,
                                                  T m1, T m2, T* dv, T* dbias) {
  if (dbias)
    for (int k = 0; k < n; ++k) dbias[k] += dy[k];
  for (int k = 0; k < n; ++k) {
    T vhat = (v[k] - mean) * rstd;
    dv[k] = norm_bwd(dy[k] * gain[k], vhat, rstd, m1, m2);
  }
}

// Row layer norm backward over n contiguous values. v: the raw input, dy: gradient of the output.
// Writes dv (may alias dy) and accumulates dgain += dy * vhat, dbias += dy (dbias may be null).
template <typename T, typename A>
FUSEDRNN_HD inline void layer_norm_row_bwd(const T* v, const T* dy, int n, const T* gain, T mean,
                                           T rstd, T* dv, T* dgain, T* dbias) {
  LaneSum<A> s1, s2;
  auto term = [&](int k, int lane) {
    T vhat = (v[k] - mean) * rstd;
    T dyg = dy[k] * gain[k];
    s1.p[lane] += A(dyg);
    s2.p[lane] += A(dyg * vhat);
    dgain[k] += dy[k] * vhat;
  };
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) term(k + l, l);
  for (; k < n; ++k) term(k, k % 8);
  layer_norm_row_bwd_finish(v, dy, n, gain, mean, rstd, T(s1.total() / A(n)), T(s2.total() / A(n)), dv, dbias);
}

}  // namespace fusedrnn
