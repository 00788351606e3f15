// Rotary + KV-cache write, and causal GQA attention over an f16 KV cache.
//
// Attention is split along the sequence (flash-decoding): block (s, h, t)
// handles query t of head h against cache positions [s*kSplit, (s+1)*kSplit)
// and writes an unnormalised partial (o_s = sum_p e^(x_p - m_s) v_p, m_s, l_s);
// a second kernel combines the splits with the usual rescaling
// o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s. Without the split a decode
// step at 2048 tokens would run H = 32 blocks on 132 SMs; with it, 256 blocks
// each reading 256 rows x hd x 2 B x 2 (K and V) = 128 KiB at hd = 128.
// The grid covers max_seq_len (blocks past the query's length exit at once),
// so the launch shape does not depend on the position and a captured decode
// graph stays valid for every step.
//
// Scores are (q . k) * shape.ScoreScale() (1/sqrt(hd) for most families, Gemma
// 3's query_pre_attn_scalar^-0.5). On a sliding layer (shape.window = W > 0) a
// query at position p reads keys max(0, p - W + 1) .. p: splits wholly
// before that range exit at once, as those after p do, and the split that
// holds its first key starts there.
//
// Each token carries its own (sequence, position) (TokenPlaces): a prefill
// chunk is one sequence at consecutive positions, a batched decode step one
// token of each of several sequences. Sequence s's rows start at row
// s * max_seq_len of the layer's cache.
//
// Bytes: a decode step at context T reads 2 * T * KV * hd * 2 B per layer
// (Llama-2-7B, T = 2048: 32 MiB per layer, 1 GiB per token, vs 3.5 GiB of
// int4 weights), so K and V rows are read with 16-byte loads, each once.
#include <cfloat>
#include <string>

#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kSplit = 256;    // cache positions per block = threads per block
constexpr int kThreads = kSplit;
static_assert(kMaxHeadDim / 8 <= kThreads, "a thread per 8 columns of a row");

__device__ __forceinline__ float BlockReduce(float v, float* shared, bool is_max) {
  v = is_max ? WarpMax(v) : WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous reduction
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = shared[0];
  for (int i = 1; i < kThreads / 32; ++i) r = is_max ? fmaxf(r, shared[i]) : r + shared[i];
  return r;
}

// First cache row of token t's sequence, in rows of KV * hd.
__device__ __forceinline__ size_t SequenceRow(const AttentionParams& params, TokenPlaces places, int t) {
  return static_cast<size_t>(places.sequence[t]) * params.max_seq_len;
}

// The first key a query at `position` reads: 0, or its window's first
// (AttentionShape::FirstKey on the device).
__device__ __forceinline__ int FirstKey(const AttentionParams& params, int position) {
  const int window = params.shape.window;
  return window > 0 ? max(0, position - window + 1) : 0;
}

// One block per token; threads stride over (head, i < hd/2) rotation pairs of
// q and k, then over v.
__global__ void RopeWriteCacheKernel(AttentionParams params, const float* __restrict__ rope_cos,
                                     const float* __restrict__ rope_sin, TokenPlaces places,
                                     float* q, const float* __restrict__ k,
                                     const float* __restrict__ v, __half* k_cache,
                                     __half* v_cache) {
  const int t = blockIdx.x;
  const int p = places.position[t];
  const size_t row = SequenceRow(params, places, t) + p;
  const int hd = params.shape.head_dim, half = hd / 2;
  const int q_width = params.shape.num_heads * hd, kv_width = params.shape.num_kv_heads * hd;
  const float* cos_row = rope_cos + static_cast<size_t>(p) * half;
  const float* sin_row = rope_sin + static_cast<size_t>(p) * half;
  float* qt = q + static_cast<size_t>(t) * q_width;
  for (int pair = threadIdx.x; pair < q_width / 2; pair += blockDim.x) {
    const int i = pair % half, base = (pair / half) * hd + i;
    const float a = qt[base], b = qt[base + half];
    qt[base] = a * cos_row[i] - b * sin_row[i];
    qt[base + half] = b * cos_row[i] + a * sin_row[i];
  }
  const float* kt = k + static_cast<size_t>(t) * kv_width;
  __half* kc = k_cache + row * kv_width;
  for (int pair = threadIdx.x; pair < kv_width / 2; pair += blockDim.x) {
    const int i = pair % half, base = (pair / half) * hd + i;
    const float a = kt[base], b = kt[base + half];
    kc[base] = __float2half_rn(a * cos_row[i] - b * sin_row[i]);
    kc[base + half] = __float2half_rn(b * cos_row[i] + a * sin_row[i]);
  }
  const float* vt = v + static_cast<size_t>(t) * kv_width;
  __half* vc = v_cache + row * kv_width;
  for (int c = threadIdx.x; c < kv_width; c += blockDim.x) vc[c] = __float2half_rn(vt[c]);
}

// Dynamic shared memory: q [hd] | e [kSplit] | partial sums [2048] | reduce [8].
__global__ void __launch_bounds__(kThreads)
    AttentionPartialKernel(AttentionParams params, float scale, TokenPlaces places,
                           const float* __restrict__ q, const __half* __restrict__ k_cache,
                           const __half* __restrict__ v_cache, float* __restrict__ scratch) {
  const int split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
  // The token reads keys [first, end): causal up to its own position, from
  // its window's first key on a sliding layer. This split covers [begin,
  // begin + kSplit) of them; the splits wholly before `first` exit too.
  const int position = places.position[t];
  const int first = FirstKey(params, position), end = position + 1;
  const int begin = max(split * kSplit, first);
  if (begin >= end || split * kSplit + kSplit <= first) return;
  const int count = min(split * kSplit + kSplit, end) - begin;
  const AttentionShape& shape = params.shape;
  const int hd = shape.head_dim;
  const int kv_width = shape.num_kv_heads * hd;
  const int kv_off = (h / (shape.num_heads / shape.num_kv_heads)) * hd;
  const size_t first_row = SequenceRow(params, places, t);

  extern __shared__ float smem[];
  float* qs = smem;            // [hd], pre-scaled by the scores' scale
  float* e = qs + hd;          // [kSplit]
  float* part = e + kSplit;    // [groups, hd] with groups * hd <= 8 * kThreads
  float* red = part + 8 * kThreads;
  const float* qt = q + (static_cast<size_t>(t) * shape.num_heads + h) * hd;
  for (int c = threadIdx.x; c < hd; c += kThreads) qs[c] = qt[c] * scale;
  __syncthreads();

  // Scores: thread j takes position begin + j, reading its key row (hd halves)
  // in 16-byte pieces; the block has kSplit rows of loads in flight.
  const int j = threadIdx.x;
  float score = -FLT_MAX;
  if (j < count) {
    const uint4* row = reinterpret_cast<const uint4*>(
        k_cache + (first_row + begin + j) * kv_width + kv_off);
    float dot = 0.f;
    for (int c8 = 0; c8 < hd / 8; ++c8) {
      const uint4 raw = __ldg(row + c8);
      const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h2[i]);
        dot = fmaf(f.x, qs[8 * c8 + 2 * i], dot);
        dot = fmaf(f.y, qs[8 * c8 + 2 * i + 1], dot);
      }
    }
    score = dot;
  }
  const float m = BlockReduce(score, red, true);
  const float ej = j < count ? __expf(score - m) : 0.f;
  e[j] = ej;
  const float l = BlockReduce(ej, red, false);  // its barriers also publish e[]

  // Values: thread (group, chunk) accumulates 8 dims of rows group, group +
  // groups, ...; a warp reads whole 16-byte-aligned rows, coalesced.
  const int chunks = hd / 8;  // <= kThreads (hd <= kMaxHeadDim)
  const int groups = kThreads / chunks;
  const int chunk = threadIdx.x % chunks, group = threadIdx.x / chunks;
  if (group < groups) {
    float acc[8] = {};
    for (int p = group; p < count; p += groups) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(
          v_cache + (first_row + begin + p) * kv_width + kv_off) + chunk);
      const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
      const float w = e[p];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h2[i]);
        acc[2 * i] = fmaf(w, f.x, acc[2 * i]);
        acc[2 * i + 1] = fmaf(w, f.y, acc[2 * i + 1]);
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) part[group * hd + chunk * 8 + i] = acc[i];
  }
  __syncthreads();
  const int splits = gridDim.x;
  float* out = scratch + ((static_cast<size_t>(t) * shape.num_heads + h) * splits + split) * (hd + 2);
  for (int c = threadIdx.x; c < hd; c += kThreads) {
    float sum = 0.f;
    for (int g = 0; g < groups; ++g) sum += part[g * hd + c];
    out[c] = sum;
  }
  if (threadIdx.x == 0) {
    out[hd] = m;
    out[hd + 1] = l;
  }
}

// One block per (head, token): rescales and sums the splits that ran, those
// holding keys first .. position (AttentionPartialKernel).
__global__ void AttentionCombineKernel(AttentionParams params, int splits, TokenPlaces places,
                                       const float* __restrict__ scratch, float* __restrict__ out) {
  const int h = blockIdx.x, t = blockIdx.y, hd = params.shape.head_dim;
  const int position = places.position[t];
  const int first_split = FirstKey(params, position) / kSplit, end_split = position / kSplit + 1;
  const float* base = scratch + (static_cast<size_t>(t) * params.shape.num_heads + h) * splits * (hd + 2);
  float m = -FLT_MAX;
  for (int s = first_split; s < end_split; ++s) m = fmaxf(m, base[s * (hd + 2) + hd]);
  float l = 0.f;
  for (int s = first_split; s < end_split; ++s) l += __expf(base[s * (hd + 2) + hd] - m) * base[s * (hd + 2) + hd + 1];
  const float inv_l = 1.f / l;  // l >= 1: the maximum's own term is e^0
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    float o = 0.f;
    for (int s = first_split; s < end_split; ++s) o += __expf(base[s * (hd + 2) + hd] - m) * base[s * (hd + 2) + c];
    out[(static_cast<size_t>(t) * params.shape.num_heads + h) * hd + c] = o * inv_l;
  }
}

}  // namespace

int AttentionSplits(int max_seq_len) { return (max_seq_len + kSplit - 1) / kSplit; }

size_t AttentionScratchFloats(const AttentionParams& params, int n) {
  return static_cast<size_t>(n) * params.shape.num_heads * AttentionSplits(params.max_seq_len) *
         (params.shape.head_dim + 2);
}

DeviceBuffer UploadRopeTable(const RopeTable& table) {
  const size_t floats = table.cos_table().size();
  DeviceBuffer buffer(2 * floats * sizeof(float));
  AWQ_CUDA_CHECK(cudaMemcpy(buffer.as<float>(), table.cos_table().data(), floats * sizeof(float),
                            cudaMemcpyHostToDevice));
  AWQ_CUDA_CHECK(cudaMemcpy(buffer.as<float>() + floats, table.sin_table().data(), floats * sizeof(float),
                            cudaMemcpyHostToDevice));
  return buffer;
}

void RopeWriteCache(const AttentionParams& params, const float* rope_cos, const float* rope_sin,
                    TokenPlaces places, int n, float* q, const float* k, const float* v,
                    __half* k_cache, __half* v_cache, cudaStream_t stream) {
  if (n == 0) return;
  RopeWriteCacheKernel<<<n, 256, 0, stream>>>(params, rope_cos, rope_sin, places, q, k, v, k_cache,
                                              v_cache);
  AWQ_CUDA_LAUNCH_CHECK();
}

void Attention(const AttentionParams& params, TokenPlaces places, int n, const float* q,
               const __half* k_cache, const __half* v_cache, float* scratch, float* out,
               cudaStream_t stream) {
  if (n == 0) return;
  const AttentionShape& shape = params.shape;
  if (shape.head_dim % 8 != 0 || shape.head_dim > kMaxHeadDim) {
    throw Error("Attention: head_dim " + std::to_string(shape.head_dim) +
                " is not supported (a multiple of 8, at most " + std::to_string(kMaxHeadDim) + ")");
  }
  const int splits = AttentionSplits(params.max_seq_len);
  const size_t smem = (shape.head_dim + kSplit + 8 * kThreads + kThreads / 32) * sizeof(float);
  AttentionPartialKernel<<<dim3(splits, shape.num_heads, n), kThreads, smem, stream>>>(
      params, shape.ScoreScale(), places, q, k_cache, v_cache, scratch);
  AWQ_CUDA_LAUNCH_CHECK();
  const int threads = shape.head_dim < 128 ? shape.head_dim : 128;
  AttentionCombineKernel<<<dim3(shape.num_heads, n), threads, 0, stream>>>(params, splits, places,
                                                                           scratch, out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
