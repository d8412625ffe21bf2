#!/usr/bin/env python3
"""Record what llama.cpp's `llama-quantize` writes for the test checkpoints, for gguf/tests/llama_quantize.rs.

    scripts/record-llamacpp-quantize.py [--llama-cpp-bin DIR] [--gguf-py DIR] [--out gguf/tests/data/llama-quantize]

Why: the builder quantizes safetensors checkpoints itself (gguf/src/convert.rs, gguf/src/quant.rs)
and promises the bytes `convert_hf_to_gguf.py --outtype f32` + `llama-quantize` (no importance
matrix) would write. This script runs llama.cpp once and records the result compactly, so the Rust
test can hold the builder to it on every `cargo test` without llama.cpp installed.

Cases (one JSON file each, <out>/<case>.json):
  * llama-gqa, mistral, qwen2-tied (shared/fixtures/models) and qwen3 (runtime/tests/fixtures): rows of
    64 (and 176) elements, too short for 256-element K-quant blocks, so they exercise llama-quantize's
    fallbacks: Q4_K -> Q5_0, Q6_K -> Q8_0, and F16 for 176-wide rows that are not whole 32-blocks;
  * wide-llama: a checkpoint generated here (and, bit for bit, by the Rust test) whose rows are
    multiples of 256, so real Q4_K and Q6_K blocks and the Q4_K_M layer mixture (attn_v/ffn_down of
    layers 0, 3, 6, 7 of 8 in Q6_K) are exercised, including an all-zero row and a constant row.

How: each checkpoint is converted to an F32 GGUF with scripts/fixture-to-gguf.py (llama.cpp's
converter without torch) running on llama.cpp's own gguf-py (--gguf-py, default the gguf-py/ of the
llama.cpp tree that holds --llama-cpp-bin): convert_hf_to_gguf.py puts that copy first on sys.path,
and it is newer than the gguf 0.19 on PyPI (its SpecialVocab writes tokenizer.ggml.add_bos_token and
add_eos_token = false for a ByteLevel post-processor, which PyPI's does not). Then
`llama-quantize F32.gguf OUT.gguf TYPE N` for Q4_K_M, Q6_K and Q8_0,
with 1 and with 3 threads (the outputs must be identical: llama.cpp's own determinism, which the
recording relies on). The output GGUF is read with gguf-py and recorded as:

    {"case", "generator", "llama_cpp": {"version", "built_with", "gguf_py"},
     "source": {"dir", "files": {name: sha256}, "safetensors_sha256"},
     "types": {"q4_k_m"|"q6_k"|"q8_0": {
         "metadata": {key: {"type": "u32", "value": 3} | {"type": "array[string]", "len": n, "sha256": ...}},
         "metadata_order": [key, ...],
         "tensors": [[name, ggml type, dims (ggml order), sha256 of the data bytes], ...]}}}

  * general.name and general.size_label are not recorded (they come from the directory name and the
    converter's parameter count; the builder writes its own name and no size label);
  * an array's sha256 is of json.dumps(list, ensure_ascii=False, separators=(",", ":")) in UTF-8,
    which serde_json::to_string reproduces exactly for strings, integers and booleans (both escape
    only '"', '\\' and control characters, with the same short forms and lower-case \\u00XX); float
    arrays would not round-trip between the two float printers and are refused;
  * float scalars are the exact f32 value as a JSON number (a double prints and parses back exactly);
  * "files": sha256 of every input file besides the weights that the converter reads;
  * "safetensors_sha256": over the weights' values, independent of how the safetensors header is laid
    out: for each model*.safetensors part (sorted) and each tensor in it (sorted by name), the UTF-8
    of f"{name} {dtype} {shape}\\n" (shape as Python prints a list, "[512, 256]") then its data bytes.
    The test recomputes both before comparing, and asks for a new recording when they differ.

Output is deterministic: sorted keys, two-space indentation, short lists on one line.
Exit status: 0; 1 when a llama.cpp tool or the converter fails; 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("record-llamacpp-quantize: gguf-py is required (pip install gguf)")

REPO = Path(__file__).resolve().parent.parent
CONVERTER = REPO / "scripts" / "fixture-to-gguf.py"
DEFAULT_BIN = Path("/var/cache/appliance-bench/llama.cpp/build/bin")
DEFAULT_OUT = REPO / "gguf" / "tests" / "data" / "llama-quantize"
SHARED_MODELS = REPO.parent / "shared" / "fixtures" / "models"

# case name -> checkpoint directory (None: generated, see write_wide_llama)
CASES: dict[str, Path | None] = {
    "llama-gqa": SHARED_MODELS / "llama-gqa",
    "mistral": SHARED_MODELS / "mistral",
    "qwen2-tied": SHARED_MODELS / "qwen2-tied",
    "qwen3": REPO / "runtime" / "tests" / "fixtures" / "qwen3",
    "wide-llama": None,
}

# builder spelling -> llama-quantize's type argument
TYPES = {"q4_k_m": "Q4_K_M", "q6_k": "Q6_K", "q8_0": "Q8_0"}

# keys that name the checkpoint rather than describe it (see the module docstring)
SKIPPED_KEYS = ("general.name", "general.size_label")

# input files besides the weights that the converters read (config, vocabulary, special tokens,
# chat template); those present are hashed
INPUT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")

VALUE_TYPES = {
    gguf.GGUFValueType.UINT8: "u8", gguf.GGUFValueType.INT8: "i8",
    gguf.GGUFValueType.UINT16: "u16", gguf.GGUFValueType.INT16: "i16",
    gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
    gguf.GGUFValueType.FLOAT32: "f32", gguf.GGUFValueType.BOOL: "bool",
    gguf.GGUFValueType.STRING: "string", gguf.GGUFValueType.UINT64: "u64",
    gguf.GGUFValueType.INT64: "i64", gguf.GGUFValueType.FLOAT64: "f64",
}

# ---------------------------------------------------------------------------------------------
# wide-llama: keep in step with `wide_llama` in gguf/tests/llama_quantize.rs

# config.json, byte for byte as the Rust test writes it (its sha256 is recorded)
WIDE_CONFIG = """{
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 256,
  "intermediate_size": 512,
  "max_position_embeddings": 512,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 8,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float32",
  "vocab_size": 512
}
"""
WIDE_COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
WIDE_FROM = SHARED_MODELS / "llama-gqa"


def wide_shapes() -> dict[str, tuple[int, ...]]:
    cfg = json.loads(WIDE_CONFIG)
    hidden, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = hidden // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (ff, hidden),
            p + "mlp.up_proj.weight": (ff, hidden),
            p + "mlp.down_proj.weight": (hidden, ff),
        })
    return shapes


def wide_values(t: int, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor number t (in name order): integer hashing, then conversions that are exact or round to
    nearest even in both numpy and Rust, so the two produce the same bits."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(t * 40503 + 12345)) & np.uint64(0xFFFF_FFFF)
    k = (h >> np.uint64(8)).astype(np.int64) - (1 << 23)
    if len(shape) == 1:
        return np.float32(1.0) + k.astype(np.float32) * np.float32(2.0 ** -30)
    row = (i // np.uint64(shape[1])).astype(np.int64)
    return ((k * (1 + row % 7)).astype(np.float32) * np.float32(2.0 ** -31)).reshape(shape)


def write_wide_llama(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text(WIDE_CONFIG, encoding="utf-8")
    for name in WIDE_COPIED:
        shutil.copyfile(WIDE_FROM / name, d / name)
    shapes = wide_shapes()
    names = sorted(shapes)
    tensors = {name: wide_values(t, shapes[name]) for t, name in enumerate(names)}
    tensors["model.layers.0.self_attn.o_proj.weight"][0, :] = 0.0  # all-zero blocks
    tensors["model.layers.1.mlp.up_proj.weight"][1, :] = 0.25  # blocks with max == min
    header, offset, blobs = {}, 0, []
    for name in names:
        raw = tensors[name].astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(d / "model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for raw in blobs:
            f.write(raw)


# ---------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_digest(d: Path) -> str:
    h = hashlib.sha256()
    for part in sorted(p for p in d.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors")):
        raw = part.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        for name in sorted(header):
            info = header[name]
            begin, end = info["data_offsets"]
            h.update(f"{name} {info['dtype']} {list(info['shape'])}\n".encode())
            h.update(raw[8 + n + begin:8 + n + end])
    return h.hexdigest()


def source_record(d: Path, shown: str) -> dict:
    return {
        "dir": shown,
        "files": {name: sha256((d / name).read_bytes()) for name in INPUT_FILES if (d / name).is_file()},
        "safetensors_sha256": safetensors_digest(d),
    }


def canonical_list(values: list) -> bytes:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def metadata_value(field) -> dict:
    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) != 2 or types[1] not in VALUE_TYPES:
            raise SystemExit(f"record-llamacpp-quantize: {field.name}: unsupported array type {types}")
        if types[1] in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
            raise SystemExit(f"record-llamacpp-quantize: {field.name}: float arrays have no canonical encoding here")
        values = field.contents()
        return {"type": f"array[{VALUE_TYPES[types[1]]}]", "len": len(values), "sha256": sha256(canonical_list(values))}
    return {"type": VALUE_TYPES[types[0]], "value": field.contents()}


def read_gguf(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    metadata, order = {}, []
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name in SKIPPED_KEYS:
            continue
        metadata[field.name] = metadata_value(field)
        order.append(field.name)
    tensors = [[t.name, t.tensor_type.name, [int(x) for x in t.shape], sha256(t.data.tobytes())] for t in r.tensors]
    return {"metadata": metadata, "metadata_order": order, "tensors": tensors}


def run(cmd: list, what: str, env: dict | None = None) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        print(f"record-llamacpp-quantize: {what} failed (exit {p.returncode})", file=sys.stderr)
        sys.exit(1)
    return p.stdout + p.stderr


def llama_cpp_build(log: str) -> dict:
    version = re.search(r"^version: (.*)$", log, re.M | re.I)
    built = re.search(r"^built with (.*)$", log, re.M | re.I)
    return {"version": version.group(1).strip() if version else "unknown",
            "built_with": built.group(1).strip() if built else "unknown"}


def nested(value) -> bool:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(isinstance(v, dict) or (isinstance(v, list) and nested(v)) for v in children)


def dump(value, indent: int = 0) -> str:
    """json.dumps(sort_keys=True, indent=2, ensure_ascii=False), except that an object or list with
    no object inside whose one-line form is short stays on one line (a tensor, a metadata value)."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    one_line = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if not value or not isinstance(value, (dict, list)) or (not nested(value) and len(one_line) <= 160):
        return one_line
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dump(value[k], indent + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    return "[\n" + ",\n".join(f"{inner}{dump(v, indent + 1)}" for v in value) + "\n" + pad + "]"


def gguf_py_version(gguf_py: Path | None) -> str:
    """gguf-py's version as pyproject.toml states it, and where it is."""
    if gguf_py is None:
        return f"{getattr(gguf, '__version__', 'installed')} (installed: {Path(gguf.__file__).parent})"
    m = re.search(r'^version\s*=\s*"([^"]+)"', (gguf_py / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return f"{m.group(1) if m else 'unknown'} (llama.cpp's gguf-py/)"


def record_case(case: str, src: Path | None, bin_dir: Path, gguf_py: Path | None, work: Path) -> dict:
    if src is None:
        src = work / case  # keep the case's name: fixture-to-gguf derives general.name from it
        write_wide_llama(src)
        shown = "generated: wide_llama in gguf/tests/llama_quantize.rs, write_wide_llama here"
    else:
        if not (src / "config.json").is_file():
            print(f"record-llamacpp-quantize: {src}: not a checkpoint directory", file=sys.stderr)
            sys.exit(2)
        shown = os.path.relpath(src.resolve(), REPO)
    f32 = work / f"{case}-f32.gguf"
    env = dict(os.environ)
    if gguf_py is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(gguf_py), env.get("PYTHONPATH")]))
    run([sys.executable, CONVERTER, src, f32, "--type", "f32"], f"fixture-to-gguf.py {src}", env)
    types, build = {}, {}
    for name, arg in TYPES.items():
        outs = []
        for threads in (1, 3):
            out = work / f"{case}-{name}-t{threads}.gguf"
            log = run([bin_dir / "llama-quantize", f32, out, arg, threads], f"llama-quantize {case} {arg}")
            build = {**llama_cpp_build(log), "gguf_py": gguf_py_version(gguf_py)}
            outs.append(read_gguf(out))
        if outs[0] != outs[1]:
            print(f"record-llamacpp-quantize: {case} {arg}: llama-quantize gave different files with 1 and 3 threads",
                  file=sys.stderr)
            sys.exit(1)
        types[name] = outs[0]
        print(f"{case} {arg}: {len(outs[0]['tensors'])} tensors, "
              f"{sorted({t[1] for t in outs[0]['tensors']})}", file=sys.stderr)
    return {
        "case": case,
        "generator": "scripts/record-llamacpp-quantize.py",
        "llama_cpp": build,
        "source": source_record(src, shown),
        "types": types,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp-bin", type=Path, default=DEFAULT_BIN,
                    help=f"directory holding llama-quantize (default {DEFAULT_BIN})")
    ap.add_argument("--gguf-py", type=Path, default=None,
                    help="gguf-py source directory for the converter (default: gguf-py/ of the llama.cpp tree "
                         "two levels above --llama-cpp-bin; 'installed' for the installed gguf)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for <case>.json")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="record only these cases")
    args = ap.parse_args()
    if not (args.llama_cpp_bin / "llama-quantize").is_file():
        print(f"record-llamacpp-quantize: no llama-quantize in {args.llama_cpp_bin}", file=sys.stderr)
        return 2
    gguf_py = args.gguf_py
    if gguf_py is None:
        tree = args.llama_cpp_bin.resolve().parent.parent / "gguf-py"
        gguf_py = tree if (tree / "gguf" / "__init__.py").is_file() else None
        if gguf_py is None:
            print(f"record-llamacpp-quantize: warning: no llama.cpp gguf-py at {tree}; converting with the "
                  "installed gguf, which may write different tokenizer keys", file=sys.stderr)
    elif str(gguf_py) == "installed":
        gguf_py = None
    elif not (gguf_py / "gguf" / "__init__.py").is_file():
        print(f"record-llamacpp-quantize: {gguf_py}: not a gguf-py source directory", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="record-llamacpp-quantize-") as tmp:
        for case in args.case or list(CASES):
            rec = record_case(case, CASES[case], args.llama_cpp_bin, gguf_py, Path(tmp))
            (args.out / f"{case}.json").write_text(dump(rec) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
