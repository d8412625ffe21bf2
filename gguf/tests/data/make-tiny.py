#!/usr/bin/env python3
"""Writes tiny.gguf with gguf-py (0.19) and what gguf-py's own reader sees in it, tiny.json.

    python3 gguf/tests/data/make-tiny.py

Why: the Rust reader is checked against an independent writer and reader, on a file that holds
every metadata value type and tensors of several block types (the tensor bytes are arbitrary:
only the header matters). Deterministic: same gguf-py, same bytes.
"""

import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V

HERE = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(HERE, "tiny.gguf")

w = gguf.GGUFWriter(path, "llama")
w.add_name("Tiny")
w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
w.add_uint32("llama.context_length", 128)
w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
w.add_key_value("t.u8", 7, V.UINT8)
w.add_key_value("t.i8", -7, V.INT8)
w.add_key_value("t.u16", 700, V.UINT16)
w.add_key_value("t.i16", -700, V.INT16)
w.add_key_value("t.i32", -70000, V.INT32)
w.add_key_value("t.u64", 1 << 40, V.UINT64)
w.add_key_value("t.i64", -(1 << 40), V.INT64)
w.add_key_value("t.f64", 0.25, V.FLOAT64)
w.add_key_value("t.bool", True, V.BOOL)
w.add_key_value("t.bools", [True, False, True], V.ARRAY, sub_type=V.BOOL)
w.add_key_value("t.u8s", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
w.add_key_value("t.f64s", [0.5, -1.5], V.ARRAY, sub_type=V.FLOAT64)
w.add_token_list(["<s>", "</s>", "héllo", "▁world"])
w.add_token_types([3, 3, 1, 1])
w.add_token_scores([0.0, 0.0, -1.0, -2.5])
w.add_chat_template("{{ messages }}")


def raw(ty, rows, cols, fill):
    block, size = gguf.GGML_QUANT_SIZES[ty]
    # gguf-py takes quantized tensors as bytes, shaped (rows, bytes per row).
    data = np.full((rows, cols // block * size), fill, dtype=np.uint8)
    w.add_tensor(f"{ty.name.lower()}.weight", data, raw_dtype=ty)


w.add_tensor("token_embd.weight", np.arange(256 * 2, dtype=np.float16).reshape(2, 256))
raw(T.Q4_K, 4, 256, 1)
raw(T.Q6_K, 2, 256, 2)
raw(T.Q8_0, 3, 64, 3)
raw(T.IQ4_XS, 1, 256, 4)
w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

r = gguf.GGUFReader(path)
fields = []  # a list: file order matters
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    ty = f.types[0].name if len(f.types) == 1 else f"{f.types[0].name}[{f.types[1].name}]"
    fields.append({"key": name, "type": ty, "len": len(f.data)})
tensors = [
    {
        "name": t.name,
        "dims": [int(d) for d in t.shape],
        "type": t.tensor_type.name,
        "data_offset": int(t.data_offset),
        "n_bytes": int(t.n_bytes),
    }
    for t in r.tensors
]
with open(os.path.join(HERE, "tiny.json"), "w") as out:
    # gguf-py's (block size, bytes per block) table, to check ours against.
    sizes = {t.name: list(v) for t, v in gguf.GGML_QUANT_SIZES.items()}
    doc = {"size": os.path.getsize(path), "fields": fields, "tensors": tensors, "quant_sizes": sizes}
    json.dump(doc, out, indent=1)
    out.write("\n")
