#!/usr/bin/env python3
"""Compare two GGUF files tensor by tensor and key by key.

    scripts/compare-gguf.py A.gguf B.gguf [--ignore-key general.name ...]

Why: build-time quantization must write what llama.cpp's `convert_hf_to_gguf.py` +
`llama-quantize` would; this prints every tensor whose type, shape or bytes differ and every
metadata key whose value differs, and exits 1 if anything does. Needs gguf-py.
"""
import argparse
import hashlib
import sys

import gguf


def load(path):
    r = gguf.GGUFReader(path)
    kv = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        kv[f.name] = f.contents()
    tensors = {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), hashlib.sha256(t.data.tobytes()).hexdigest())
               for t in r.tensors}
    order = [t.name for t in r.tensors]
    return kv, tensors, order


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore-key", action="append", default=[])
    args = ap.parse_args()
    ka, ta, oa = load(args.a)
    kb, tb, ob = load(args.b)
    bad = 0
    for k in sorted(set(ka) | set(kb)):
        if k in args.ignore_key:
            continue
        if ka.get(k) != kb.get(k):
            bad += 1
            va, vb = repr(ka.get(k))[:100], repr(kb.get(k))[:100]
            print(f"key {k}: {va} != {vb}")
    for n in sorted(set(ta) | set(tb)):
        if ta.get(n) != tb.get(n):
            bad += 1
            print(f"tensor {n}: {ta.get(n)} != {tb.get(n)}")
    if oa != ob:
        bad += 1
        print("tensor order differs")
    same = sum(1 for n in ta if ta.get(n) == tb.get(n))
    print(f"{same}/{len(ta)} tensors identical, {bad} differences")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
