"""The torch fp16 eager peer of tools/gpu_bench.cpp, for tools/gpu_check.sh.

Prints, on the same GPU in the same run:
- dense f16 torch.matmul TFLOP/s at 8192^3 (the tensor-core throughput the
  int4 GEMM's TFLOP/s is compared with);
- a Llama-2-7B-shape model (random f16 weights, 13.5 GB) in eager torch with a
  static f16 KV cache: prefill tok/s at 2048, batch-1 decode tok/s at contexts
  64 and 2048, batch-8 decode tok/s at 64, and the peak memory.
Exits 0 with a one-line reason when torch or its CUDA device is missing.
"""
from __future__ import annotations

import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch peer: torch is not installed")
    sys.exit(0)
if not torch.cuda.is_available():
    print("torch peer: torch sees no CUDA device")
    sys.exit(0)

DEV, HALF = "cuda", torch.float16
D, FFN, LAYERS, HEADS, VOCAB, EPS = 4096, 11008, 32, 32, 32000, 1e-5
HD = D // HEADS
MAX_LEN = 2048 + 64


def seconds(fn, iters: int = 1) -> float:
    fn()  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def matmul_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device=DEV, dtype=HALF)
    b = torch.randn(n, n, device=DEV, dtype=HALF)
    return 2 * n**3 / seconds(lambda: a @ b, 20) / 1e12


class Llama7BShape:
    """Eager forward with a static KV cache [layers, batch, heads, MAX_LEN, hd]."""

    def __init__(self, batch: int):
        def weight(*shape):  # ~unit-variance outputs for unit-variance inputs
            return torch.randn(*shape, device=DEV, dtype=HALF) / shape[-1] ** 0.5

        self.embed = weight(VOCAB, D)
        self.layers = [(weight(3 * D, D), weight(D, D), weight(2 * FFN, D), weight(D, FFN))
                       for _ in range(LAYERS)]
        self.lm_head = weight(VOCAB, D)
        self.k = torch.zeros(LAYERS, batch, HEADS, MAX_LEN, HD, device=DEV, dtype=HALF)
        self.v = torch.zeros_like(self.k)
        inv = 10000.0 ** (-torch.arange(0, HD, 2, device=DEV, dtype=torch.float32) / HD)
        angles = torch.arange(MAX_LEN, device=DEV, dtype=torch.float32)[:, None] * inv
        self.cos, self.sin = angles.cos().to(HALF), angles.sin().to(HALF)  # [MAX_LEN, hd/2]

    def rope(self, x: torch.Tensor, pos: int) -> torch.Tensor:  # x: [B, H, T, hd]
        cos = self.cos[pos:pos + x.shape[2]].repeat(1, 2)
        sin = self.sin[pos:pos + x.shape[2]].repeat(1, 2)
        half = torch.cat((-x[..., HD // 2:], x[..., :HD // 2]), dim=-1)
        return x * cos + half * sin

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, pos: int) -> torch.Tensor:  # ids: [B, T]
        batch, tokens = ids.shape
        h = self.embed[ids]
        for i, (wqkv, wo, wgu, wd) in enumerate(self.layers):
            a = F.rms_norm(h, (D,), eps=EPS)
            q, k, v = (a @ wqkv.T).view(batch, tokens, 3, HEADS, HD).permute(2, 0, 3, 1, 4)
            q, k = self.rope(q, pos), self.rope(k, pos)
            self.k[i, :, :, pos:pos + tokens] = k
            self.v[i, :, :, pos:pos + tokens] = v
            o = F.scaled_dot_product_attention(q, self.k[i, :, :, :pos + tokens], self.v[i, :, :, :pos + tokens],
                                               is_causal=tokens > 1)
            h = h + o.transpose(1, 2).reshape(batch, tokens, D) @ wo.T
            gate, up = (F.rms_norm(h, (D,), eps=EPS) @ wgu.T).chunk(2, dim=-1)
            h = h + (F.silu(gate) * up) @ wd.T
        return F.rms_norm(h[:, -1], (D,), eps=EPS) @ self.lm_head.T


def decode_tok_s(model: Llama7BShape, batch: int, context: int, steps: int = 32) -> float:
    ids = torch.randint(0, VOCAB, (batch, context), device=DEV)
    model.forward(ids, 0)
    token = ids[:, -1:]
    per_step = seconds(lambda: model.forward(token, context), steps)  # rewrites one cache row
    return batch / per_step


def main() -> None:
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"dense f16 torch.matmul 8192^3: {matmul_tflops():.0f} TFLOP/s")
    print("| torch fp16 eager, 7B shape | tok/s |\n|---|---|")
    model = Llama7BShape(batch=1)
    prompt = torch.randint(0, VOCAB, (1, 2048), device=DEV)
    print(f"| prefill 2048 | {2048 / seconds(lambda: model.forward(prompt, 0), 3):.0f} |")
    for context in (64, 2048):
        print(f"| decode b1, context {context} | {decode_tok_s(model, 1, context):.1f} |")
    del model
    torch.cuda.empty_cache()
    print(f"| decode b8, context 64 | {decode_tok_s(Llama7BShape(batch=8), 8, 64):.1f} |")
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
