#!/usr/bin/env python3
"""Reference dequantization data for the GGML block types the server reads.

Why: `runtime/src/kernels/quant.rs` must turn each block type into exactly the
floats llama.cpp's own Python package (gguf-py, `gguf.quants.dequantize`)
gives. This script writes, per type, random blocks (`<TYPE>.blocks`, raw GGUF
bytes) and gguf-py's dequantization of them (`<TYPE>.f32`, little-endian f32);
the Rust test `dequantization_matches_gguf_py` compares bit for bit.

Blocks are random bytes with their f16 scale fields replaced by small finite
values (random bytes would give NaN/inf scales), so every quant, scale and
min bit pattern is exercised. Deterministic: a fixed seed.

    pip install gguf==0.19.0 numpy
    python3 scripts/make-quant-testdata.py runtime/tests/data/quants
"""
import argparse
import pathlib
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize
except ImportError:
    sys.exit("make-quant-testdata: needs gguf-py (pip install gguf==0.19.0)")

# type -> byte offsets of its f16 scale fields inside one block
SCALES = {
    "Q4_0": (Q.Q4_0, [0]),
    "Q8_0": (Q.Q8_0, [0]),
    "Q4_K": (Q.Q4_K, [0, 2]),
    "Q5_K": (Q.Q5_K, [0, 2]),
    "Q6_K": (Q.Q6_K, [208]),
}
BLOCKS = 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=pathlib.Path, help="directory for <TYPE>.blocks and <TYPE>.f32")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261205)
    for name, (qtype, scale_at) in SCALES.items():
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(BLOCKS, block_bytes), dtype=np.uint8)
        for at in scale_at:
            scales = rng.uniform(-0.05, 0.05, size=BLOCKS).astype(np.float16)
            raw[:, at:at + 2] = scales.view(np.uint8).reshape(BLOCKS, 2)
        values = dequantize(raw.reshape(-1), qtype).astype("<f4")
        assert values.size == BLOCKS * block_elems, (name, values.size)
        (args.out / f"{name}.blocks").write_bytes(raw.tobytes())
        (args.out / f"{name}.f32").write_bytes(values.tobytes())
        print(f"{name}: {BLOCKS} blocks, {values.size} values")


if __name__ == "__main__":
    main()
