"""PyTorch reference for `ponder bench`: the same Llama-style transformer (RMSNorm, rotary
positions, SwiGLU, tied embeddings), the same shapes and the same measurements, so that the
two can be compared side by side in one run on one machine.

Usage: torch_bench.py CONFIG_JSON SECONDS THREADS
CONFIG_JSON holds vocab_size, d_model, n_layers, n_heads, ffn_hidden, max_seq_len, rms_eps,
rope_theta, batch, context, gen_tokens. Prints one JSON line with tokens per second
(params, train_tokens_per_s, generate_b1_tokens_per_s, generate_b32_tokens_per_s) and how
it got them: adamw ("fused" or "foreach") and the path of each measurement (train_path,
decode_b1_path, decode_b32_path: "compiled" for torch.compile, "eager" otherwise).

PyTorch gets its fastest CPU setup, so the comparison is against the best it can do:
training uses fused AdamW and a torch.compile'd forward and loss (with their backward);
decoding writes into a preallocated KV cache and attends over its filled prefix, with the
single-token step torch.compile'd. Each compiled path is kept only if it compiles and is
faster than eager in a short probe; compilation happens before any timing.
"""

import json
import sys
import time
import warnings

# Only the JSON line matters; PyTorch's and the compiler's warnings would just be noise.
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

cfg = json.loads(sys.argv[1])
seconds = float(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)


def rotate(x, cos, sin):
    """Rotary positions, rotate-half layout; `cos` and `sin` are `[t, head_dim / 2]`."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


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
        self.k_cache = self.v_cache = None

    def forward(self, x, cos, sin, pos=None):
        """`pos` None: a whole sequence (training). Otherwise the tokens at `pos..pos + t`,
        through the KV cache; `t > 1` only for the prompt, at position 0."""
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(F.rms_norm(x, (d,), self.attn_norm, self.eps)).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if pos is not None:
            self.k_cache[:, :, pos : pos + t] = k
            self.v_cache[:, :, pos : pos + t] = v
            k, v = self.k_cache[:, :, : pos + t], self.v_cache[:, :, : pos + t]
        # Causal for a whole sequence or the prompt; one new token sees the whole prefix.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
        g, u = self.gate_up(F.rms_norm(x, (d,), self.mlp_norm, self.eps)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = torch.nn.Embedding(c["vocab_size"], c["d_model"])
        self.blocks = torch.nn.ModuleList(
            Block(c["d_model"], c["n_heads"], c["ffn_hidden"], c["rms_eps"]) for _ in range(c["n_layers"])
        )
        self.final_norm = torch.nn.Parameter(torch.ones(c["d_model"]))
        self.eps = c["rms_eps"]
        self.max_len = c["max_seq_len"]
        dh = c["d_model"] // c["n_heads"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, dh, 2).float() / dh))
        angles = torch.outer(torch.arange(c["max_seq_len"]).float(), inv)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def new_cache(self, batch):
        """A preallocated KV cache of `max_seq_len` positions for each block."""
        for block in self.blocks:
            shape = (batch, block.heads, self.max_len, block.qkv.in_features // block.heads)
            block.k_cache, block.v_cache = torch.zeros(shape), torch.zeros(shape)

    def forward(self, tokens, pos=None):
        t = tokens.shape[1]
        start = 0 if pos is None else pos
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin, pos)
        x = F.rms_norm(x, (x.shape[-1],), self.final_norm, self.eps)
        return x @ self.embed.weight.T  # tied output head


def timed(step, seconds):
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 2:
            return count, elapsed


# A short probe picks the faster of the compiled and eager paths; each runs once first, so
# compilation is never timed. A compile that fails leaves eager.
probe = min(1.0, max(0.25, seconds / 5))


def fastest(make_step):
    """(path, step) for the faster of make_step(True) (compiled) and make_step(False)."""
    eager = make_step(False)
    try:
        compiled = make_step(True)
        compiled()  # compile now
    except Exception as e:  # noqa: BLE001 - any failure to compile leaves eager
        print(f"torch_bench: torch.compile failed, eager instead: {e!r}"[:300], file=sys.stderr)
        return "eager", eager
    rates = {}
    for path, step in (("eager", eager), ("compiled", compiled)):
        runs, elapsed = timed(step, probe)
        rates[path] = runs / elapsed
    path = max(rates, key=rates.get)
    return path, compiled if path == "compiled" else eager


model = Model(cfg)
params = sum(p.numel() for p in model.parameters())
batch, context, vocab = cfg["batch"], cfg["context"], cfg["vocab_size"]
result = {"params": params}

# Training: next-token cross-entropy, gradient clipping at 1 and AdamW with ponder's settings.
# The fused CPU kernel where this PyTorch has one, else the multi-tensor (foreach) one.
adamw = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
try:
    optim = torch.optim.AdamW(model.parameters(), **adamw, fused=True)
    result["adamw"] = "fused"
except (RuntimeError, TypeError):
    optim = torch.optim.AdamW(model.parameters(), **adamw, foreach=True)
    result["adamw"] = "foreach"
data = torch.randint(0, vocab, (batch, context + 1))
inputs, targets = data[:, :-1], data[:, 1:].reshape(-1)


def loss_of(tokens, targets):
    return F.cross_entropy(model(tokens).reshape(-1, vocab), targets)


def make_train_step(compiled):
    loss_fn = torch.compile(loss_of) if compiled else loss_of

    def step():
        loss = loss_fn(inputs, targets)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optim.step()

    return step


result["train_path"], train_step = fastest(make_train_step)
steps, elapsed = timed(train_step, seconds)
result["train_tokens_per_s"] = steps * batch * context / elapsed

# Decoding: a 4-token prompt, then exactly gen_tokens sampled tokens per sequence (no
# end-of-sequence stop), each from the full softmax at temperature 1.
# Dynamic shapes: one compiled graph serves every position (not one graph per position).
decode_compiled = torch.compile(model, dynamic=True)


def make_generate(n, compiled):
    decode = decode_compiled if compiled else model

    @torch.inference_mode()
    def generate():
        tokens = torch.randint(0, vocab, (n, 4))
        logits = model(tokens, 0)  # the prompt (eager on both paths: one call per sequence)
        position = tokens.shape[1]
        for _ in range(cfg["gen_tokens"]):
            nxt = torch.multinomial(torch.softmax(logits[:, -1], dim=-1), 1)
            logits = decode(nxt, position)
            position += 1

    return generate


for n in (1, 32):
    model.new_cache(n)
    result[f"decode_b{n}_path"], generate = fastest(lambda compiled: make_generate(n, compiled))
    runs, elapsed = timed(generate, seconds)
    result[f"generate_b{n}_tokens_per_s"] = runs * n * cfg["gen_tokens"] / elapsed

print(json.dumps(result))
