#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora, fuzz/corpus/<target>/, from the repository's own
fixtures: manifests/*.toml and manifest snippets; the tiny tarballs in fuzz/data/ (built by
`appliance build`, see fuzz/README.md) and tamper cases made from them (the cases of
tests/integration/sign.rs' tamper matrix); safetensors headers of ../shared/fixtures/models/* (header and a
few data bytes, never the weights); the GGUF test files; the signed tarball's cosign documents.

Deterministic: rerunning it rewrites the same files (named by content hash). Run by
`scripts/fuzz --seed`.
"""

import hashlib
import io
import json
import os
import struct
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
CORPUS = os.path.join(FUZZ, "corpus")
FIXTURES = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "models")


def put(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- manifest -------------------------------------------------------------------------------

MANIFESTS = [
    '[image]\nname = "registry.local/llm/demo"\ntag = "0.1.0"\n[model]\npath = "model"\n',
    """[image]
name = "registry.local/llm/qwen"
tag = "1.2.3"
created = "2025-06-01T00:00:00Z"
output = "dist/x.tar"
compression = "zstd"
[image.labels]
"org.opencontainers.image.vendor" = "x"
[model]
hf = "Qwen/Qwen2.5-0.5B-Instruct"
revision = "7ae557604adf67be50417f59c2c2f167def9a775"
files = ["config.json", "*.safetensors"]
require_pins = true
quantize = "Q4_K_M"
[model.sha256]
"config.json" = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
[model.tokenizer]
hf = "Qwen/Qwen2.5-0.5B-Instruct"
revision = "main"
files = ["tokenizer.json"]
[server]
port = 8080
served_model_name = "qwen"
max_model_len = 4096
device = "cuda"
args = ["--max-num-seqs", "8"]
binary = "bin/appliance-server"
launcher = "bin/launcher"
[server.healthcheck]
interval = "30s"
timeout = "5s"
start_period = "2m"
retries = 5
[runtime]
user = "svc"
uid = 1000
gid = 1000
base = { image = "base.tar", digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111" }
[signing]
key = "keys/site.key"
[[eval]]
name = "hello"
messages = [{ role = "user", content = "Say hello" }]
max_tokens = 8
regex = "(?i)hello"
[[eval]]
prompt = "2+2="
equals = "4"
temperature = 0.0
seed = 7
[[eval]]
prompt = "json"
json_schema = { type = "object", properties = { a = { type = "integer" } }, required = ["a"] }
[[eval]]
prompt = "ids"
token_ids = [1, 2, 3]
[evals]
file = "evals.jsonl"
min_pass_rate = 0.9
""",
    """[image]
name = "r/m"
tag = "t"
[model]
synthetic = { arch = "qwen2", seed = 3, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1, max_position_embeddings = 64, dtype = "f16", merges = 4 }
[runtime]
base = "scratch"
[[eval]]
prompt = "x"
contains = "y"
""",
]


def manifest_seeds():
    for name in sorted(os.listdir(os.path.join(ROOT, "manifests"))):
        if name.endswith(".toml"):
            put("manifest", read(os.path.join(ROOT, "manifests", name)))
    for text in MANIFESTS:
        put("manifest", text)


# --- tarballs -------------------------------------------------------------------------------


def members(path):
    """(TarInfo, bytes) of every entry, in order."""
    out = []
    with tarfile.open(path) as t:
        for m in t.getmembers():
            out.append((m, t.extractfile(m).read() if m.isfile() else b""))
    return out


def write_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in entries:
            m = tarfile.TarInfo(m.name) if isinstance(m, str) else m
            if m.isfile() or m.type == tarfile.REGTYPE:
                m.size = len(data)
            t.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return buf.getvalue()


def docs(entries):
    return {m.name: d for m, d in entries if m.isfile()}


def tarball_seeds():
    signed = os.path.join(FUZZ, "data", "signed-tiny.tar")
    unsigned = os.path.join(FUZZ, "data", "unsigned-tiny-zstd.tar")
    put("tarball", read(signed))
    put("tarball", read(unsigned))
    entries = members(unsigned)
    by_name = docs(entries)
    index = json.loads(by_name["index.json"])
    manifest_hex = index["manifests"][0]["digest"][7:]
    manifest = json.loads(by_name["blobs/sha256/" + manifest_hex])
    config_hex = manifest["config"]["digest"][7:]
    layers = [l["digest"][7:] for l in manifest["layers"]]
    big = max(layers, key=lambda h: len(by_name["blobs/sha256/" + h]))

    def variant(change):
        e = [(m, d) for m, d in entries]
        e = change(e)
        put("tarball", write_tar(e))

    def flip(name, at):
        def change(e):
            out = []
            for m, d in e:
                if m.name == name:
                    d = bytearray(d)
                    d[min(at, len(d) - 1)] ^= 1
                    d = bytes(d)
                out.append((m, d))
            return out

        return change

    # The tamper matrix of tests/integration/sign.rs, on the unsigned tarball.
    variant(flip("blobs/sha256/" + big, len(by_name["blobs/sha256/" + big]) // 2))
    variant(flip("blobs/sha256/" + config_hex, 40))
    variant(flip("blobs/sha256/" + manifest_hex, 30))
    variant(lambda e: [(m, d) for m, d in e if m.name != "blobs/sha256/" + layers[0]])
    variant(
        lambda e: [
            (m, by_name["blobs/sha256/" + layers[0]] if m.name == "blobs/sha256/" + big else d)
            for m, d in e
        ]
    )
    # Documents only (no layer blobs): small, every parser still reached.
    variant(lambda e: [(m, d) for m, d in e if m.name[13:] not in layers])
    # `docker save` layout: manifest.json and the config only.
    put(
        "tarball",
        write_tar(
            [
                (tarfile.TarInfo("manifest.json"), by_name["manifest.json"]),
                (tarfile.TarInfo("blobs/sha256/" + config_hex), by_name["blobs/sha256/" + config_hex]),
            ]
        ),
    )
    # Hostile entries: a link, `..`, an absolute path, a duplicate.
    link = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    put("tarball", write_tar([(tarfile.TarInfo("oci-layout"), by_name["oci-layout"]), (link, b"")]))
    put("tarball", write_tar([(tarfile.TarInfo("../index.json"), by_name["index.json"])]))
    put("tarball", write_tar([(tarfile.TarInfo("/index.json"), by_name["index.json"])]))
    put(
        "tarball",
        write_tar([(tarfile.TarInfo("index.json"), by_name["index.json"])] * 2),
    )
    raw = read(unsigned)
    put("tarball", raw[: len(raw) // 3])  # truncated
    put("tarball", raw + b"trailing")  # data after the end-of-archive marker


# --- verify_documents -----------------------------------------------------------------------


def verify_documents_seeds():
    """[slot, flags, document]: the slots are the signed tarball's JSON documents and JSON blobs
    in name order (as the target lists them), then the public key."""
    entries = members(os.path.join(FUZZ, "data", "signed-tiny.tar"))
    named = {}
    for m, d in entries:
        if not m.isfile():
            continue
        if m.name.startswith("blobs/sha256/"):
            if d.lstrip()[:1] in (b"{", b"["):
                named[m.name] = d
        else:
            named[m.name] = d
    slots = sorted(named)
    for i, name in enumerate(slots):
        for flags in (0, 1):
            put("verify_documents", bytes([i, flags]) + named[name])
    put("verify_documents", bytes([255, 0]) + read(os.path.join(FUZZ, "data", "signed-tiny.pub")))


# --- safetensors_header ---------------------------------------------------------------------


def safetensors(tensors, metadata=None):
    header, data, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        data += bytes(n)
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    if os.path.isdir(FIXTURES):
        for model in sorted(os.listdir(FIXTURES)):
            path = os.path.join(FIXTURES, model, "model.safetensors")
            if os.path.exists(path):
                raw = read(path)
                (n,) = struct.unpack("<Q", raw[:8])
                put("safetensors_header", raw[: 8 + n + 64])
    put(
        "safetensors_header",
        safetensors(
            [
                ("model.embed_tokens.weight", "BF16", [4, 2]),
                ("model.layers.0.self_attn.q_proj.weight", "F32", [2, 2]),
                ("model.norm.weight", "F16", [2]),
            ],
            {"format": "pt"},
        ),
    )
    put("safetensors_header", safetensors([("lm_head.weight", "I8", [2, 3])]))


# --- gguf_header ----------------------------------------------------------------------------


def gguf_seeds():
    put("gguf_header", read(os.path.join(ROOT, "gguf", "tests", "data", "tiny.gguf")))
    spm = read(os.path.join(ROOT, "runtime", "tests", "data", "gguf", "spm-tiny.gguf"))
    put("gguf_header", spm)


def main():
    manifest_seeds()
    tarball_seeds()
    verify_documents_seeds()
    safetensors_seeds()
    gguf_seeds()
    for target in sorted(os.listdir(CORPUS)):
        d = os.path.join(CORPUS, target)
        files = os.listdir(d)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
        print(f"{target}: {len(files)} seeds, {size} bytes", file=sys.stderr)


main()
