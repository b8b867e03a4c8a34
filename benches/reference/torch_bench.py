"""PyTorch reference for `ponder bench`: the same Llama-style transformer (RMSNorm, rotary
positions, SwiGLU, tied embeddings), the same shapes and the same measurements, so that the
two can be compared side by side in one run on one machine.

Usage: torch_bench.py CONFIG_JSON SECONDS THREADS
CONFIG_JSON holds vocab_size, d_model, n_layers, n_heads, ffn_hidden, max_seq_len, rms_eps,
rope_theta, batch, context, gen_tokens. Prints one JSON line with tokens per second.
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
seconds = float(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)


class Block(torch.nn.Module):
    def __init__(self, d, heads, ffn, eps):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.attn_norm = torch.nn.Parameter(torch.ones(d))
        self.mlp_norm = torch.nn.Parameter(torch.ones(d))
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.gate_up = torch.nn.Linear(d, 2 * ffn, bias=False)
        self.down = torch.nn.Linear(ffn, d, bias=False)

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def forward(self, x, cos, sin, cache=None):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm(x, self.attn_norm)).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            if cache[0] is not None:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        causal = cache is None or t > 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
        g, u = self.gate_up(self.norm(x, self.mlp_norm)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = torch.nn.Embedding(c["vocab_size"], c["d_model"])
        self.blocks = torch.nn.ModuleList(
            Block(c["d_model"], c["n_heads"], c["ffn_hidden"], c["rms_eps"]) for _ in range(c["n_layers"])
        )
        self.final_norm = torch.nn.Parameter(torch.ones(c["d_model"]))
        self.eps = c["rms_eps"]
        dh = c["d_model"] // c["n_heads"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, dh, 2).float() / dh))
        angles = torch.outer(torch.arange(c["max_seq_len"]).float(), inv)
        self.cos, self.sin = angles.cos(), angles.sin()

    def forward(self, tokens, caches=None, start=0):
        t = tokens.shape[1]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i])
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.final_norm
        return x @ self.embed.weight.T


def timed(step, seconds):
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 2:
            return count, elapsed


model = Model(cfg)
params = sum(p.numel() for p in model.parameters())
batch, context, vocab = cfg["batch"], cfg["context"], cfg["vocab_size"]
optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.randint(0, vocab, (batch, context + 1))


def train_step():
    logits = model(data[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, vocab), data[:, 1:].reshape(-1))
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()


steps, elapsed = timed(train_step, seconds)
result = {"params": params, "train_tokens_per_s": steps * batch * context / elapsed}


@torch.no_grad()
def generate(n):
    caches = [[None, None] for _ in model.blocks]
    tokens = torch.randint(0, vocab, (n, 4))
    logits = model(tokens, caches, 0)
    position = tokens.shape[1]
    for _ in range(cfg["gen_tokens"]):
        probs = torch.softmax(logits[:, -1], dim=-1)
        nxt = torch.multinomial(probs, 1)
        logits = model(nxt, caches, position)
        position += 1


for n in (1, 32):
    runs, elapsed = timed(lambda: generate(n), seconds)
    result[f"generate_b{n}_tokens_per_s"] = runs * n * cfg["gen_tokens"] / elapsed

print(json.dumps(result))
