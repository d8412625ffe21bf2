#!/usr/bin/env python3
"""Convert a Hugging Face fixture checkpoint to GGUF the way llama.cpp's convert_hf_to_gguf.py does.

    scripts/fixture-to-gguf.py HF_DIR OUT.gguf --type f32|f16|q8_0

Why: the runtime loads GGUF files, and its tests need GGUFs of the tiny fixture checkpoints
(shared/fixtures/models/*) that are laid out exactly like the ones people download: same tensor
names, the same q/k row permutation, the same metadata keys and tokenizer arrays, the same per-tensor
types. llama.cpp's converter needs torch and transformers; this script needs only gguf-py (0.19),
numpy and the checkpoint's files, and reproduces the converter's decisions for the architectures the
runtime serves:

    LlamaForCausalLM, MistralForCausalLM -> "llama"  (q_proj/k_proj rows permuted, LlamaModel.permute)
    Qwen2ForCausalLM                     -> "qwen2"  (q/k/v biases; no permutation)
    Qwen3ForCausalLM                     -> "qwen3"  (q_norm/k_norm -> attn_q_norm/attn_k_norm)

How (mirrors llama.cpp conversion/base.py ModelBase.write, llama.py LlamaModel, qwen.py Qwen2Model):
  * tensors in name order (model*.safetensors parts, sorted; names sorted within a part), mapped
    with gguf.TensorNameMap; ".rotary_emb.inv_freq" and similar buffers are skipped; tensors that
    are neither F16 nor F32 (e.g. BF16) are widened to F32 first.
  * types: 1-D tensors and "*_norm.weight" are always F32; non-".weight" tensors (biases) are F32;
    everything else (token_embd and output included) is F32 / F16 / Q8_0 per --type. Q8_0 blocks are 32 wide along the row, so a
    2-D weight whose row length (column count) is not a multiple of 32 cannot be Q8_0:
    gguf.quants.quantize raises QuantError and llama.cpp's converter catches it, logs
    "..., falling back to F16" and writes that tensor as F16. This script does the same.
    (llama-quantize agrees: its tensor_type_fallback has no smaller block than 32 for Q8_0 and
    turns such tensors into F16. The fixtures' q8_0 files are tensor-for-tensor byte-identical to
    `llama-quantize <the f32 file> Q8_0`.)
  * metadata keys in the converter's order: general.architecture, general.type, general.name
    (gguf.Metadata heuristics on the directory, e.g. "Llama Gqa"), general.size_label,
    {arch}.block_count, context_length, embedding_length, feed_forward_length,
    attention.head_count, attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon,
    attention.key_length/value_length (only when config.json has head_dim), general.file_type,
    ({arch}.vocab_size and rope.dimension_count for "llama"), general.quantization_version, then
    the tokenizer: tokenizer.ggml.model "gpt2", .pre, .tokens, .token_type, .merges, bos/eos/padding
    ids and tokenizer.chat_template (gguf.SpecialVocab reads config.json, tokenizer_config.json,
    tokenizer.json and chat_template.jinja exactly as the converter does).

Deliberate differences from convert_hf_to_gguf.py:
  * tokenizer.ggml.pre: the converter hashes the tokenization of a probe string and refuses
    tokenizers it has never seen (the fixtures' freshly trained 512-token BPE is one). This script
    derives the name from tokenizer.json instead: a lone ByteLevel pre-tokenizer with use_regex
    (the GPT-2 split regex) and no prefix space is llama.cpp's "gpt-2" pre-tokenizer, whose regex
    is the same (llama-server tokenizes llama.cpp's own probe string to HF's ids with "gpt-2", not
    with "default"); anything else must be named with --pre.
  * with tie_word_embeddings an lm_head.weight in the checkpoint is dropped (no output.weight;
    llama.cpp then reuses token_embd). transformers never saves a tied lm_head, so the converter
    sees none either.

The output is deterministic: same input files and --type give the same bytes (general.name comes
from the directory name, so keep the fixture's directory name when comparing hashes).
Exits 2 with a message for bad input (missing files, unsupported architecture or tokenizer).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("fixture-to-gguf: gguf-py is required (pip install gguf)")


class InputError(Exception):
    """Bad or unsupported input; reported without a traceback."""


# HF architecture -> (gguf arch, undo_permute like llama.cpp's LlamaModel)
ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
    "Qwen3ForCausalLM": (gguf.MODEL_ARCH.QWEN3, False),
}

FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

# tensor types the converter always keeps in F32 (conversion/base.py prepare_tensors)
ALWAYS_F32 = (
    gguf.MODEL_TENSOR.FFN_GATE_INP,
    gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
    gguf.MODEL_TENSOR.POS_EMBD,
    gguf.MODEL_TENSOR.TOKEN_TYPES,
    gguf.MODEL_TENSOR.SSM_CONV1D,
)

SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

log = logging.getLogger("fixture-to-gguf")


def load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def find_hparam(hparams: dict, keys: list[str], optional: bool = False):
    for k in keys:
        if k in hparams:
            return hparams[k]
    if optional:
        return None
    raise InputError(f"config.json has none of {keys}")


# ---------------------------------------------------------------------------------------------
# tensors


def safetensors_parts(model_dir: Path) -> list[Path]:
    # ModelBase.get_model_part_names(dir, "model", ".safetensors"), sorted
    parts = sorted(p for p in os.listdir(model_dir) if p.startswith("model") and p.endswith(".safetensors"))
    if not parts:
        raise InputError(f"{model_dir}: no model*.safetensors (only safetensors checkpoints are supported)")
    return [model_dir / p for p in parts]


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_tensors(model_dir: Path):
    """Yield (name, float16/float32 array) in the converter's order."""
    # the converter keeps F16 and F32 and turns every other dtype into F32
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    for part in safetensors_parts(model_dir):
        try:
            st = gguf.utility.SafetensorsLocal(part)  # sorts names like safetensors' safe_open
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise InputError(f"{part}: cannot read safetensors header ({e})") from None
        size = part.stat().st_size
        with st as tensors:
            for name, t in tensors.items():
                if t.dtype not in dtypes:
                    raise InputError(f"{part}: tensor {name} has unsupported dtype {t.dtype}")
                r = t.data_range
                shape = tuple(t.shape)
                want = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtypes[t.dtype]).itemsize
                if r.size != want:
                    raise InputError(f"{part}: tensor {name} has {r.size} bytes, shape {shape} {t.dtype} needs {want}")
                if r.offset + r.size > size:
                    raise InputError(f"{part}: tensor {name} lies past the end of the file (truncated?)")
                data = t.mmap_bytes().view(dtypes[t.dtype]).reshape(shape)
                if t.dtype == "BF16":
                    data = bf16_to_f32(data)
                elif t.dtype not in ("F32", "F16"):
                    data = data.astype(np.float32)
                yield name, data


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp LlamaModel.permute: HF stores each head's rotary pairs as (first half, second half);
    llama.cpp's "llama" graph uses interleaved (even, odd) pairs, so rows of q_proj/k_proj are
    reordered per head from [h][2][d/2] to [h][d/2][2]."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    if weights.shape[0] % (n_head * 2) != 0:
        raise InputError(f"cannot permute a tensor of shape {weights.shape} for {n_head} heads")
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def matches(arch: gguf.MODEL_ARCH, new_name: str, key: gguf.MODEL_TENSOR, bid: int | None) -> bool:
    # ModelBase.match_model_tensor_name
    if key not in gguf.MODEL_TENSORS[arch]:
        return False
    key_name = gguf.TENSOR_NAMES[key]
    if "{bid}" in key_name:
        if bid is None:
            return False
        key_name = key_name.format(bid=bid)
    elif bid is not None:
        return False
    return new_name == key_name + ".weight"


def add_tensors(writer: gguf.GGUFWriter, model_dir: Path, hparams: dict, arch: gguf.MODEL_ARCH,
                undo_permute: bool, ftype: gguf.LlamaFileType) -> None:
    block_count = find_hparam(hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
    tensor_map = gguf.get_tensor_name_map(arch, block_count)
    n_head = find_hparam(hparams, ["n_heads", "num_attention_heads"])
    n_kv_head = find_hparam(hparams, ["n_kv_heads", "num_key_value_heads"], optional=True)
    if n_kv_head is None:
        n_kv_head = n_head
    tied = bool(hparams.get("tie_word_embeddings", False))
    default_qtype = {
        gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
        gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
        gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
    }[ftype]

    seen = 0
    for name, data in read_tensors(model_dir):
        if name.endswith(SKIPPED_SUFFIXES):
            continue
        if tied and name == "lm_head.weight":
            log.info("tie_word_embeddings: dropping lm_head.weight (llama.cpp reuses token_embd)")
            continue

        bid = None
        for part in name.split("."):
            if part.isdecimal():
                bid = int(part)
                break

        if undo_permute:
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute(data, n_head, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute(data, n_head, n_kv_head)

        new_name = tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise InputError(f"tensor {name!r} has no llama.cpp name for architecture "
                             f"{gguf.MODEL_ARCH_NAMES[arch]!r}")

        n_dims = len(data.shape)
        qtype: gguf.GGMLQuantizationType | None = None
        # "Most of the codebase that takes in 1D tensors or norms only handles F32 tensors"
        if n_dims <= 1 or new_name.endswith("_norm.weight"):
            qtype = gguf.GGMLQuantizationType.F32
        if qtype is None and (any(matches(arch, new_name, k, bid) for k in ALWAYS_F32)
                              or new_name[-7:] not in (".weight", ".lora_a", ".lora_b")):
            qtype = gguf.GGMLQuantizationType.F32
        if qtype is None:
            qtype = default_qtype

        try:
            out = gguf.quants.quantize(data, qtype)
        except gguf.QuantError as e:
            # convert_hf_to_gguf.py: logger.warning("%s, %s", e, "falling back to F16")
            log.warning("%s, falling back to F16", e)
            qtype = gguf.GGMLQuantizationType.F16
            out = gguf.quants.quantize(data, qtype)

        shape = gguf.quant_shape_from_byte_shape(out.shape, qtype) if out.dtype == np.uint8 else out.shape
        log.info("%-32s %s --> %s, shape = {%s}", new_name + ",", data.dtype, qtype.name,
                 ", ".join(str(n) for n in reversed(shape)))
        writer.add_tensor(new_name, out, raw_dtype=qtype)
        seen += 1

    if seen == 0:
        raise InputError(f"{model_dir}: no tensors")


# ---------------------------------------------------------------------------------------------
# metadata


def rope_parameters(hparams: dict) -> dict:
    # TextModel.__init__: rope_parameters / rope_scaling, with rope_theta mirrored into it
    params = dict(hparams.get("rope_parameters", hparams.get("rope_scaling")) or {})
    rope_theta = find_hparam(hparams, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                                       "rotary_emb_base"], optional=True)
    if "full_attention" not in params and "sliding_attention" not in params:
        if "rope_theta" not in params and rope_theta is not None:
            params["rope_theta"] = rope_theta
        if "rope_type" not in params and (rope_type := params.get("type")) is not None:
            params["rope_type"] = rope_type
    return params.get("full_attention", params)


def add_model_parameters(writer: gguf.GGUFWriter, hparams: dict, arch: gguf.MODEL_ARCH,
                         ftype: gguf.LlamaFileType) -> None:
    # TextModel.set_gguf_parameters, in its order
    writer.add_block_count(find_hparam(hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"]))
    if (n_ctx := find_hparam(hparams, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                       "max_sequence_length", "model_max_length"], optional=True)) is not None:
        writer.add_context_length(n_ctx)
    if (n_embd := find_hparam(hparams, ["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        writer.add_embedding_length(n_embd)
    if (n_ff := find_hparam(hparams, ["prefix_dense_intermediate_size", "dense_intermediate_size",
                                      "intermediate_size", "n_inner", "hidden_dim"], optional=True)) is not None:
        writer.add_feed_forward_length(n_ff)
    if (n_head := find_hparam(hparams, ["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        writer.add_head_count(n_head)
    if (n_head_kv := find_hparam(hparams, ["num_key_value_heads", "n_kv_heads"], optional=True)) is not None:
        writer.add_head_count_kv(n_head_kv)
    if hparams.get("is_causal") is False:
        raise InputError("config.json: is_causal=false is not a causal LM")

    rope = rope_parameters(hparams)
    rope_type = rope.get("rope_type")
    if rope_type not in (None, "default"):
        # linear/yarn/llama3/longrope scaling changes keys (and, for llama3, adds rope_freqs);
        # none of the fixtures use it, so refuse rather than write a subtly different file
        raise InputError(f"config.json: RoPE scaling {rope_type!r} is not supported by this script")
    if (rope_theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(rope_theta)
    if (eps := find_hparam(hparams, ["rms_norm_eps", "norm_eps"], optional=True)) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if find_hparam(hparams, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True) is not None:
        raise InputError("config.json: LayerNorm epsilon found; only RMSNorm models are supported")
    if find_hparam(hparams, ["num_local_experts", "num_experts", "n_routed_experts"], optional=True) is not None:
        raise InputError("config.json: mixture-of-experts models are not supported by this script")
    if (head_dim := hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(ftype)

    if arch == gguf.MODEL_ARCH.LLAMA:
        # LlamaModel.set_gguf_parameters
        writer.add_vocab_size(hparams["vocab_size"])
        rope_dim = hparams.get("head_dim")
        if rope_dim is None:
            rope_dim = hparams["hidden_size"] // hparams["num_attention_heads"]
        writer.add_rope_dimension_count(rope_dim)


def does_token_look_special(token: str) -> bool:
    # TextModel.does_token_look_special
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def bpe_pre_tokenizer(tok: dict) -> str:
    """The llama.cpp pre-tokenizer name for tokenizer.json's pre_tokenizer (see module docstring)."""
    pre = tok.get("pre_tokenizer")
    if tok.get("normalizer") is not None:
        raise InputError("tokenizer.json has a normalizer; llama.cpp's BPE pre-tokenizers do not normalize "
                         "(pass --pre NAME if you know the right llama.cpp pre-tokenizer)")
    if (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)):
        # HF ByteLevel's regex is GPT-2's; llama.cpp LLAMA_VOCAB_PRE_TYPE_GPT2 uses the same one
        return "gpt-2"
    raise InputError(f"tokenizer.json pre_tokenizer {json.dumps(pre)[:200]} is not recognised; "
                     "pass --pre NAME (a tokenizer.ggml.pre value llama.cpp accepts)")


def gpt2_vocab(model_dir: Path, hparams: dict, pre_override: str | None) -> tuple[list[str], list[int], str]:
    """TextModel.get_vocab_base without transformers: tokens, token types, pre-tokenizer name."""
    if (model_dir / "tokenizer.model").is_file():
        raise InputError(f"{model_dir}: tokenizer.model (SentencePiece) found; llama.cpp would write a "
                         "'llama' vocabulary, which this script does not support")
    tok = load_json(model_dir / "tokenizer.json")
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(f"tokenizer.json: model type {model.get('type')!r}, expected BPE")
    if model.get("byte_fallback", False):
        raise InputError("tokenizer.json: byte_fallback BPE is a Llama-2 style vocabulary, not GPT-2 byte-level")
    vocab: dict[str, int] = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise InputError("tokenizer.json: model.vocab is missing or empty")

    pre = pre_override if pre_override is not None else bpe_pre_tokenizer(tok)

    # tokenizer.vocab of a fast tokenizer: the model's vocabulary plus the added tokens
    added = {t["content"]: t for t in tok.get("added_tokens", [])}
    full = dict(vocab)
    for content, t in added.items():
        full[content] = t["id"]
    vocab_size = hparams.get("vocab_size", len(full))
    if max(full.values()) >= vocab_size:
        raise InputError(f"tokenizer.json has token id {max(full.values())} >= vocab_size {vocab_size}")
    reverse = {id_: text for text, id_ in full.items()}

    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            # (the converter re-encodes non-normalized added tokens through the HF tokenizer; with no
            # normalizer, which bpe_pre_tokenizer requires, that round trip returns the token unchanged)
            if added[token].get("special", False) or does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, toktypes, pre


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, hparams: dict, arch: gguf.MODEL_ARCH,
              pre_override: str | None) -> None:
    if arch == gguf.MODEL_ARCH.LLAMA:
        # LlamaModel.set_vocab writes add_space_prefix before the vocabulary
        tc_path = model_dir / "tokenizer_config.json"
        if tc_path.is_file():
            tc = load_json(tc_path)
            if (add_prefix_space := tc.get("add_prefix_space")) is not None:
                writer.add_add_space_prefix(add_prefix_space)
    tokens, toktypes, pre = gpt2_vocab(model_dir, hparams, pre_override)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True)
    if not special_vocab.merges:
        raise InputError(f"{model_dir}: no BPE merges found in tokenizer.json")
    special_vocab.add_to_gguf(writer, quiet=True)
    if arch == gguf.MODEL_ARCH.LLAMA and hparams.get("vocab_size", 32000) == 49152:
        writer.add_add_bos_token(False)  # LlamaModel.set_vocab: granite small models


# ---------------------------------------------------------------------------------------------


def convert(model_dir: Path, out: Path, type_name: str, pre_override: str | None) -> None:
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory")
    hparams = load_json(model_dir / "config.json")
    if "text_config" in hparams:
        hparams = {**hparams, **hparams["text_config"]}
    archs = hparams.get("architectures") or []
    if not archs:
        raise InputError(f"{model_dir}/config.json: no 'architectures'")
    if archs[0] not in ARCHITECTURES:
        raise InputError(f"{model_dir}/config.json: architecture {archs[0]!r} is not supported "
                         f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    if hparams.get("quantization_config"):
        raise InputError(f"{model_dir}/config.json: quantized checkpoints are not supported")
    arch, undo_permute = ARCHITECTURES[archs[0]]
    ftype = FILE_TYPES[type_name]

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])

    # ModelBase.write(): prepare_tensors, then prepare_metadata
    add_tensors(writer, model_dir, hparams, arch, undo_permute, ftype)

    total_params, shared_params, expert_params, expert_count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, None, total_params)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total_params > 0:
        metadata.size_label = gguf.size_label(total_params, shared_params, expert_params, expert_count)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)
    add_model_parameters(writer, hparams, arch, ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, model_dir, hparams, arch, pre_override)

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for the llama.cpp conventions reproduced.")
    ap.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint directory (config.json, model.safetensors, "
                                              "tokenizer.json, ...)")
    ap.add_argument("out", type=Path, help="GGUF file to write")
    ap.add_argument("--type", choices=sorted(FILE_TYPES), default="f32",
                    help="tensor type for weights (norms, biases and 1-D tensors stay F32; for q8_0, weights whose "
                         "row length is not a multiple of 32 are F16, as in llama.cpp)")
    ap.add_argument("--pre", default=None,
                    help="tokenizer.ggml.pre to write instead of deriving it from tokenizer.json")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every tensor")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="fixture-to-gguf: %(message)s")
    try:
        convert(args.hf_dir, args.out, args.type, args.pre)
    except InputError as e:
        print(f"fixture-to-gguf: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
