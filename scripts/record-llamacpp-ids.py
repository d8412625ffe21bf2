#!/usr/bin/env python3
"""Greedy token ids from llama.cpp's llama-server for GGUFs of the reference fixtures.

    scripts/record-llamacpp-ids.py [--type q8_0] [--out-dir runtime/tests/data/gguf] [FIXTURE ...]
    scripts/record-llamacpp-ids.py --type f32 --type f16 --check-only --require-match

Why: the runtime's GGUF loader must agree with llama.cpp. For f32 and f16 GGUFs the fixtures'
reference.json (transformers, float32) is the truth, and llama.cpp reproducing it proves that
scripts/fixture-to-gguf.py writes llama.cpp's conventions (names, q/k permutation, metadata). For
q8_0 there is no transformers reference, so llama.cpp's own greedy ids are recorded as the reference
the runtime's Q8_0 path is compared with: runtime/tests/data/gguf/<fixture>-q8_0.llamacpp.json

    {"gguf_sha256": ..., "generator": "scripts/fixture-to-gguf.py --type q8_0",
     "llama_cpp": "<llama-server --version>", "cases": [{"input_ids": [...], "output_ids": [...]}, ...]}

How: for each fixture (a directory with reference.json under --fixtures, default
<repo>/../shared/fixtures/models) and each --type, the GGUF is written to a temporary directory
with fixture-to-gguf.py, `llama-server -m GGUF --port P -t 2 -np 1 -c 512 SERVER_ARGS` is started,
and every case of reference.json (completion and chat alike: their input_ids are sent as a token array, so
no tokenizer or template is involved) is requested from POST /completion with
{"prompt": ids, "n_predict": N, "temperature": 0, "top_k": 1, "samplers": ["top_k"],
 "cache_prompt": false, "return_tokens": true}, N being reference.json's max_new_tokens.

SERVER_ARGS (--server-args) defaults to "-fa off -ctk f32 -ctv f32": llama-server's defaults (flash
attention on for the CPU backend, F16 KV cache) round attention to F16, which moves logits by a few
1e-3 and flips the closest greedy choices of the fixtures (reference.json's min_top2_margin goes down
to 4.7e-3; llama-gqa's f32 GGUF then differs in 2 of 4 cases). With F32 attention, llama.cpp's
logit gaps agree with reference.json's to about 1e-5. Pass --server-args "" for llama-server's
defaults. The arguments used are recorded as "llama_server_args".

End of generation: reference.json stops only before eos_token_id (generation_config.json).
llama-server stops at any end-of-generation token, and llama.cpp marks every token whose text is
<|end_of_text|>, <|im_end|>, <|eot_id|>, ... as one (src/llama-vocab.cpp), so it can stop earlier
(the mistral fixture greedily emits <|end_of_text|> mid-sequence). The returned tokens include the
stopping token; when it is not an eos_token_id the request is repeated with prompt = input_ids +
the ids so far, which continues the same greedy sequence. An eos_token_id ends the output and is
not included, exactly like reference.json's output_ids.

Prints one line per case (match / first differing position against reference.json) and a summary.
Exit status: 0; 1 when --require-match and any case differs, or llama-server fails; 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONVERTER = REPO / "scripts" / "fixture-to-gguf.py"
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "models"
DEFAULT_SERVER = Path("/var/cache/appliance-bench/llama.cpp/build/bin/llama-server")
DEFAULT_OUT = REPO / "runtime" / "tests" / "data" / "gguf"
TYPES = ("f32", "f16", "q8_0")


class InputError(Exception):
    pass


class ServerError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(server: Path) -> dict:
    env = dict(os.environ)
    lib = str(server.parent)
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def llama_cpp_version(server: Path) -> str:
    try:
        p = subprocess.run([str(server), "--version"], env=server_env(server), capture_output=True, text=True,
                           timeout=60)
    except OSError as e:
        raise InputError(f"{server}: cannot run ({e})") from None
    for line in (p.stdout + p.stderr).splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    raise InputError(f"{server} --version printed no 'version:' line (rc {p.returncode})")


def eos_ids(fixture: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = fixture / name
        if path.is_file():
            v = json.loads(path.read_text()).get("eos_token_id")
            if v is not None:
                ids.update(v if isinstance(v, list) else [v])
                break
    if not ids:
        raise InputError(f"{fixture}: no eos_token_id in generation_config.json or config.json")
    return ids


def load_reference(fixture: Path) -> dict:
    path = fixture / "reference.json"
    try:
        ref = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    cases = ref.get("cases")
    if not isinstance(cases, list) or not cases:
        raise InputError(f"{path}: no cases")
    for i, c in enumerate(cases):
        if not isinstance(c.get("input_ids"), list) or not isinstance(c.get("output_ids"), list):
            raise InputError(f"{path}: case {i} lacks input_ids/output_ids")
    if not isinstance(ref.get("max_new_tokens"), int):
        raise InputError(f"{path}: no integer max_new_tokens")
    return ref


class LlamaServer:
    def __init__(self, server: Path, gguf: Path, log_path: Path, startup_s: float, extra: list[str]):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "wb")
        cmd = [str(server), "-m", str(gguf), "--port", str(self.port), "--host", "127.0.0.1",
               "-t", "2", "-np", "1", "-c", "512", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=server_env(server))
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                self.close()
                raise ServerError(f"llama-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise ServerError(f"llama-server not healthy after {startup_s}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def completion(self, prompt: list[int], n_predict: int) -> dict:
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "top_k": 1, "samplers": ["top_k"],
                "cache_prompt": False, "return_tokens": True, "stream": False}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ServerError(f"/completion: HTTP {e.code}: {e.read()[:500]!r}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise ServerError(f"/completion failed: {e}\n{self.log_tail()}") from None

    def greedy(self, input_ids: list[int], max_new: int, eos: set[int]) -> tuple[list[int], int]:
        """Greedy ids up to max_new, stopping before an eos id; continues past other EOG tokens.
        Returns (ids, number of continuations)."""
        out: list[int] = []
        restarts = 0
        while len(out) < max_new:
            res = self.completion(input_ids + out, max_new - len(out))
            toks = res.get("tokens")
            if not isinstance(toks, list):
                raise ServerError(f"/completion returned no 'tokens' (keys: {sorted(res)})")
            for t in toks:
                if t in eos:
                    return out, restarts
                out.append(t)
            if res.get("stop_type") != "eos" or not toks:
                break
            restarts += 1  # stopped at an EOG token that is not eos_token_id: continue after it
        return out[:max_new], restarts

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def render_record(record: dict) -> str:
    # one case per line keeps diffs of re-recordings readable
    head = {k: v for k, v in record.items() if k != "cases"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "cases": [')
    cases = [json.dumps(c, separators=(", ", ": ")) for c in record["cases"]]
    lines.append(",\n".join("    " + c for c in cases))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    server = args.llama_server
    if not server.is_file():
        raise InputError(f"{server}: llama-server not found (--llama-server)")
    if not args.fixtures.is_dir():
        raise InputError(f"{args.fixtures}: fixtures directory not found (--fixtures)")
    if args.fixture:
        fixtures = [args.fixtures / f for f in args.fixture]
        for f in fixtures:
            if not (f / "reference.json").is_file():
                raise InputError(f"{f}: no reference.json")
    else:
        fixtures = sorted(p for p in args.fixtures.iterdir() if (p / "reference.json").is_file())
        if not fixtures:
            raise InputError(f"{args.fixtures}: no fixture with a reference.json")
    types = args.type or ["q8_0"]
    server_args = shlex.split(args.server_args)
    version = llama_cpp_version(server)
    print(f"llama.cpp: {version}", flush=True)

    mismatched = 0
    summary = []
    with tempfile.TemporaryDirectory(prefix="llamacpp-ids-") as tmp:
        tmpdir = Path(tmp)
        for fixture in fixtures:
            ref = load_reference(fixture)
            eos = eos_ids(fixture)
            for typ in types:
                gguf_path = tmpdir / f"{fixture.name}-{typ}.gguf"
                p = subprocess.run([sys.executable, str(CONVERTER), str(fixture), str(gguf_path), "--type", typ],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise InputError(f"fixture-to-gguf.py failed for {fixture.name} {typ}:\n{p.stderr.strip()}")
                digest = sha256_file(gguf_path)
                srv = LlamaServer(server, gguf_path, tmpdir / f"{fixture.name}-{typ}.log", args.startup_timeout,
                                  server_args)
                cases = []
                n_match = 0
                n_diff_ids = 0
                try:
                    for i, case in enumerate(ref["cases"]):
                        got, restarts = srv.greedy(case["input_ids"], ref["max_new_tokens"], eos)
                        want = case["output_ids"]
                        d = first_diff(got, want)
                        n_diff_ids += sum(1 for x, y in zip(got, want) if x != y) + abs(len(got) - len(want))
                        note = f" (continued past {restarts} non-eos EOG token(s))" if restarts else ""
                        if d is None:
                            n_match += 1
                            print(f"{fixture.name} {typ} case {i} ({case.get('kind')}): match, "
                                  f"{len(got)} ids{note}", flush=True)
                        else:
                            print(f"{fixture.name} {typ} case {i} ({case.get('kind')}): DIFFERS from position {d} "
                                  f"({len(got)} ids){note}\n  llama.cpp: {got}\n  reference: {want}", flush=True)
                        cases.append({"input_ids": case["input_ids"], "output_ids": got})
                finally:
                    srv.close()
                total = len(ref["cases"])
                mismatched += total - n_match
                summary.append(f"{fixture.name} {typ}: {n_match}/{total} cases equal reference.json, "
                               f"{n_diff_ids} ids differ; gguf sha256 {digest}")
                if not args.check_only:
                    record = {
                        "gguf_sha256": digest,
                        "generator": f"scripts/fixture-to-gguf.py --type {typ}",
                        "llama_cpp": version,
                        "llama_server_args": " ".join(["-t 2 -np 1 -c 512", *map(shlex.quote, server_args)]),
                        "cases": cases,
                    }
                    args.out_dir.mkdir(parents=True, exist_ok=True)
                    out = args.out_dir / f"{fixture.name}-{typ}.llamacpp.json"
                    out.write_text(render_record(record))
                    print(f"wrote {out}", flush=True)
    print("\n".join(summary))
    if args.require_match and mismatched:
        print(f"record-llamacpp-ids: {mismatched} case(s) differ from reference.json", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for the request and the end-of-generation rule.")
    ap.add_argument("fixture", nargs="*", help="fixture names under --fixtures (default: all with a reference.json)")
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help=f"default {DEFAULT_FIXTURES}")
    ap.add_argument("--type", action="append", choices=TYPES,
                    help="GGUF type(s) to run, repeatable (default: q8_0)")
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help=f"where <fixture>-<type>.llamacpp.json go "
                                                                       f"(default {DEFAULT_OUT})")
    ap.add_argument("--check-only", action="store_true", help="compare with reference.json, write nothing")
    ap.add_argument("--require-match", action="store_true",
                    help="exit 1 when any case differs from reference.json (use for f32/f16)")
    ap.add_argument("--server-args", default="-fa off -ctk f32 -ctv f32",
                    help='extra llama-server arguments, one string (--server-args="..."; default "%(default)s": F32 attention, see above)')
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = ap.parse_args()
    try:
        return run(args)
    except InputError as e:
        print(f"record-llamacpp-ids: error: {e}", file=sys.stderr)
        return 2
    except ServerError as e:
        print(f"record-llamacpp-ids: llama-server: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
