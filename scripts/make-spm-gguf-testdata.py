#!/usr/bin/env python3
"""Write a tiny Llama GGUF with a SentencePiece ("llama") vocabulary, for the runtime's tokenizer tests.

    scripts/make-spm-gguf-testdata.py [OUT.gguf]      (default: runtime/tests/data/gguf/spm-tiny.gguf)

Why: the runtime rebuilds a GGUF's tokenizer from its metadata when the model directory has no
tokenizer.json (runtime/src/checkpoint/gguf_tokenizer.rs). The reference fixtures are all byte-level
BPE ("gpt2" vocabularies); this file is the SentencePiece case, laid out the way llama.cpp's
convert_hf_to_gguf.py writes a Llama-2-style model, and small enough to commit (about 75 KB). It is a
loadable model (random weights), so llama.cpp's llama-server can tokenize with it:
scripts/record-llamacpp-tokenize.py records the ids llama.cpp gives, which the tests compare with.

How:
  * a SentencePiece BPE model (sentencepiece 0.2.x) is trained on CORPUS below with Llama 2's
    trainer settings that matter for tokenization: byte_fallback, split_digits,
    allow_whitespace_only_pieces, no normalization, no whitespace collapsing, a dummy prefix;
    unk/bos/eos at 0/1/2, `<|im_start|>` and `<|im_end|>` as control symbols; one thread.
  * the vocabulary goes into the GGUF as conversion/base.py _create_vocab_sentencepiece does
    (piece, score, token type from the SentencePiece flags), plus `<think>` as a non-special added
    token (USER_DEFINED, score -1000), which the converter writes for an added_tokens_decoder entry
    that is not special; then tokenizer.ggml.model "llama", pre "default", bos/eos/unk ids and
    add_bos_token true / add_eos_token false (Llama 2's tokenizer_config.json).
  * weights: one "llama" block, n_embd 32, 2 heads, n_ff 64, from numpy's PCG64 with a fixed seed;
    norms F32, matrices F16; no output.weight (tied to token_embd).

The output is byte-for-byte deterministic for the same sentencepiece, gguf-py (0.19) and numpy;
the recorded llama.cpp ids carry the file's sha256, so a regenerated file that differs is caught.
Needs: pip install sentencepiece gguf==0.19.0 numpy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import gguf
    import sentencepiece as spm
except ImportError as e:  # pragma: no cover
    sys.exit(f"make-spm-gguf-testdata: {e.name} is required (pip install sentencepiece gguf==0.19.0)")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runtime" / "tests" / "data" / "gguf" / "spm-tiny.gguf"

VOCAB_SIZE = 600
CONTROL = ["<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<think>"

CORPUS = """\
The appliance packs a language model, its inference server and a minimal userland into one image.
Sites without network access load the tarball with docker load, podman load or skopeo copy.
The server answers the OpenAI chat completions API and streams tokens as server-sent events.
A tokenizer turns text into token ids, and the model turns token ids into the next token.
Sentencepiece treats the input as a raw stream of characters, spaces included, and writes a space as a lower one-eighth block.
Byte fallback spells every character that has no piece of its own as the bytes of its UTF-8 encoding.
Numbers are split into single digits: 2024, 3.14159, 1,000,000 and 42 all become one piece per digit.
Don't forget that we'll need the weights, the tokenizer and the chat template; they're all in the model directory.
Quantized weights (Q8_0, Q4_K, Q6_K) keep the memory footprint small enough for a laptop.
def generate(prompt, max_tokens=16):
    ids = tokenizer.encode(prompt)
    for _ in range(max_tokens):
        ids.append(model.step(ids))
    return tokenizer.decode(ids)
Caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e and a na\u00efve r\u00e9sum\u00e9: accents are characters like any other.
Gr\u00fc\u00dfe aus M\u00fcnchen! \u00a1Hola, se\u00f1or! \u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435, \u043c\u0438\u0440.
  Two leading spaces, a tab\there, and trailing spaces   
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump!
In the beginning the model knows nothing; training on text teaches it which token comes next.
Greedy decoding always picks the most likely token, sampling draws one from the distribution.
The key-value cache keeps the attention keys and values of earlier tokens so they are not recomputed.
Continuous batching adds new requests to the running batch as soon as others finish.
"""


def train(workdir: Path) -> spm.SentencePieceProcessor:
    corpus = workdir / "corpus.txt"
    corpus.write_text(CORPUS * 4, encoding="utf-8")
    prefix = workdir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=CONTROL,
        user_defined_symbols=[USER_DEFINED],
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor()
    sp.Load(str(prefix) + ".model")
    return sp


def vocabulary(sp: spm.SentencePieceProcessor) -> tuple[list[bytes], list[float], list[int]]:
    """conversion/base.py _create_vocab_sentencepiece, plus USER_DEFINED as an added token."""
    t = gguf.TokenType
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        piece = sp.IdToPiece(i)
        kind = t.NORMAL
        if sp.IsUnknown(i):
            kind = t.UNKNOWN
        elif sp.IsControl(i):
            kind = t.CONTROL
        elif sp.IsUnused(i):
            kind = t.UNUSED
        elif sp.IsByte(i):
            kind = t.BYTE
        score = sp.GetScore(i)
        if piece == USER_DEFINED:
            # tokenizer_config.json added_tokens_decoder, "special": false
            kind, score = t.USER_DEFINED, -1000.0
        tokens.append(piece.encode("utf-8"))
        scores.append(score)
        types.append(int(kind))
    return tokens, scores, types


def write(out: Path, sp: spm.SentencePieceProcessor) -> None:
    tokens, scores, types = vocabulary(sp)
    n_vocab, n_embd, n_head, n_ff = len(tokens), 32, 2, 64
    writer = gguf.GGUFWriter(path=None, arch="llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("spm-tiny")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    rng = np.random.Generator(np.random.PCG64(20240601))

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.2).astype(np.float16)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd, dtype=np.float32)).astype(np.float32)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("blk.0.attn_norm.weight", norm())
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", matrix(n_embd, n_embd))
    writer.add_tensor("blk.0.ffn_norm.weight", norm())
    writer.add_tensor("blk.0.ffn_gate.weight", matrix(n_ff, n_embd))
    writer.add_tensor("blk.0.ffn_up.weight", matrix(n_ff, n_embd))
    writer.add_tensor("blk.0.ffn_down.weight", matrix(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    # no output.weight: llama.cpp (and the runtime) then reuse token_embd, as for tied embeddings

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT, help=f"GGUF to write (default {DEFAULT_OUT})")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sp = train(Path(d))
    write(args.out, sp)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {sp.vocab_size()} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
