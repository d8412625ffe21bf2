#!/usr/bin/env python3
"""Build the tiny random-weight Qwen3 reference fixture.

    scripts/make-qwen3-fixture.py OUT_DIR [--seed N] [--tokenizer-from DIR]

Writes, in Hugging Face layout, the same files as the checkpoints in
shared/fixtures/models (see shared/fixtures/README.md):

    config.json generation_config.json model.safetensors
    tokenizer.json tokenizer_config.json chat_template.jinja
    reference.json README.md

The model is a Qwen3ForCausalLM (2 layers, hidden 64, 4 heads / 2 KV heads,
explicit head_dim 32 != hidden/heads, q_norm/k_norm, tied embeddings, RoPE
theta 1e6) with weights drawn from a fixed seed.  The RMSNorm weights
(input/post-attention/final norms and the per-head q_norm/k_norm) are drawn
as 1 + 0.2 * N(0, 1) instead of the all-ones init, so a runtime that skips a
norm's weight, or loads q_norm where k_norm belongs, gets different ids.

The tokenizer (byte-level BPE, 512 tokens) and its ChatML template are copied
unchanged from the qwen2-tied fixture.  reference.json holds the same prompts
as qwen2-tied's, with transformers' float32 greedy continuations.

Needs torch and transformers (with Qwen3ForCausalLM, i.e. >= 4.51); runs on
the CPU in a few seconds.  Exits non-zero if any case's smallest top-2 logit
margin is under MIN_MARGIN (then pick another --seed).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

DEFAULT_SEED = 4
MAX_NEW_TOKENS = 24
MIN_MARGIN = 4e-3
NORM_JITTER = 0.2
EOS_ID = 3  # <|im_end|>
BOS_ID = 0  # <|begin_of_text|>

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = REPO.parent / "shared" / "fixtures" / "models" / "qwen2-tied"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]

NOTE = (
    "greedy argmax, float32 math, stops before eos_token_id (finish_reason stop) "
    "or after max_new_tokens (length)"
)

# The same cases as shared/fixtures/models/qwen2-tied/reference.json.
CASES = [
    ("completion", "Docker images for LLM inference"),
    ("completion", "The NVIDIA Container Toolkit"),
    ("chat", [{"role": "user", "content": "How do I pin a model revision?"}]),
    (
        "chat",
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is a KV cache?"},
        ],
    ),
]


def qwen3_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=512,
        initializer_range=0.2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        attention_bias=False,
        use_sliding_window=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        dtype="float32",
    )


def build_model(seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config()).to(torch.float32)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_JITTER * torch.randn(p.shape, generator=gen))
    model.eval()
    return model


def prompt_ids(tok, kind, prompt) -> list[int]:
    if kind == "completion":
        return tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in transformers 5
        ids = ids["input_ids"]
    return list(ids)


@torch.no_grad()
def greedy(model, ids: list[int]):
    """Greedy decode recomputing the whole sequence each step (no KV cache)."""
    seq = list(ids)
    out, margins, first = [], [], None
    finish = "length"
    for _ in range(MAX_NEW_TOKENS):
        logits = model(torch.tensor([seq])).logits[0, -1].to(torch.float32)
        if first is None:
            first = logits.clone()
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        if nxt == EOS_ID:
            finish = "stop"
            break
        out.append(nxt)
        seq.append(nxt)
    return out, finish, first, min(margins)


@torch.no_grad()
def greedy_generate(model, ids: list[int]) -> list[int]:
    """The same continuation through model.generate (KV cache), as a cross-check."""
    res = model.generate(
        torch.tensor([ids]),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    out = res[0, len(ids):].tolist()
    if EOS_ID in out:
        out = out[: out.index(EOS_ID)]
    return out


def reference(model, tok, name: str):
    cases = []
    for kind, prompt in CASES:
        ids = prompt_ids(tok, kind, prompt)
        out, finish, first, margin = greedy(model, ids)
        cached = greedy_generate(model, ids)
        if cached != out:
            sys.exit(f"{kind} {prompt!r}: generate() {cached} != no-cache loop {out}")
        top5 = torch.topk(first, 5)
        cases.append(
            {
                "kind": kind,
                "prompt": prompt,
                "input_ids": ids,
                "output_ids": out,
                "output_text": tok.decode(out, skip_special_tokens=False),
                "finish_reason": finish,
                "first_logits_top5": {
                    "ids": [int(i) for i in top5.indices],
                    "values": [round(float(v), 5) for v in top5.values],
                },
                "min_top2_margin": round(margin, 5),
            }
        )
    return {"model": name, "max_new_tokens": MAX_NEW_TOKENS, "note": NOTE, "cases": cases}


def rewrite_config(path: Path):
    """Classic (transformers 4.x / hub) layout, as the other fixtures have:
    top-level rope_theta and torch_dtype.  transformers 5 reads both."""
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    assert rope.get("rope_type", "default") == "default", rope
    out = {}
    for k, v in cfg.items():
        if k == "dtype":
            continue
        out[k] = v
    out["rope_theta"] = rope.get("rope_theta", 1e6)
    out["torch_dtype"] = "float32"
    out = dict(sorted(out.items()))
    path.write_text(json.dumps(out, indent=2) + "\n")


def write_readme(out_dir: Path, seed: int, ref):
    margins = "\n".join(
        f"| {i} | {c['kind']} | {c['finish_reason']} | {c['min_top2_margin']} |"
        for i, c in enumerate(ref["cases"])
    )
    (out_dir / "README.md").write_text(
        f"""# qwen3 reference fixture

Tiny random-weight `Qwen3ForCausalLM` with transformers' float32 greedy generations, in the
format of `shared/fixtures/models/*` (see `shared/fixtures/README.md`).

Regenerate (byte-identical files for the same library versions), with a Python that has
torch and transformers (e.g. a venv: `pip install torch transformers=={transformers.__version__}`):

    python scripts/make-qwen3-fixture.py runtime/tests/fixtures/qwen3 --seed {seed}

- seed: {seed} (`torch.manual_seed`; norm weights from a generator seeded {seed} + 1000003)
- torch {torch.__version__}, transformers {transformers.__version__}, CPU, float32
- 2 layers, hidden 64, 4 heads / 2 KV heads, head_dim 32 (explicit, != hidden/heads),
  intermediate 128, vocab 512, tied embeddings, RoPE theta 1e6 (default rope), rms_norm_eps 1e-6,
  max_position_embeddings 512, initializer_range 0.2, no attention bias
- q_norm / k_norm: per-head RMSNorm over head_dim on q and k, before RoPE
  (`model.layers.N.self_attn.{{q,k}}_norm.weight`, shape [32]).
- All RMSNorm weights are 1 + {NORM_JITTER} * N(0, 1), not the all-ones init, so each norm weight matters.
- Tokenizer and ChatML template (`chat_template.jinja`) copied from `qwen2-tied`; eos `<|im_end|>` (3).

Per-case smallest top-2 logit margin along the generation (all > {MIN_MARGIN}):

| case | kind | finish | min_top2_margin |
| --- | --- | --- | --- |
{margins}
"""
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--tokenizer-from", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--name", default="qwen3")
    args = ap.parse_args()

    torch.set_num_threads(1)  # deterministic reductions
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        src = args.tokenizer_from / f
        if src.is_file():
            shutil.copyfile(src, out_dir / f)
    tok = AutoTokenizer.from_pretrained(out_dir)

    model = build_model(args.seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    rewrite_config(out_dir / "config.json")

    ref = reference(model, tok, args.name)
    (out_dir / "reference.json").write_text(json.dumps(ref, indent=1))
    write_readme(out_dir, args.seed, ref)
    for f in out_dir.iterdir():  # save_pretrained leaves model.safetensors 0600
        f.chmod(0o644)

    worst = min(c["min_top2_margin"] for c in ref["cases"])
    for c in ref["cases"]:
        print(f"{c['kind']:10} {c['finish_reason']:6} margin {c['min_top2_margin']:.5f} "
              f"in {len(c['input_ids'])} out {len(c['output_ids'])}")
    if worst < MIN_MARGIN:
        sys.exit(f"seed {args.seed}: min margin {worst} < {MIN_MARGIN}; try another --seed")
    print(f"wrote {out_dir} (seed {args.seed}, min margin {worst})")


if __name__ == "__main__":
    main()
