#!/bin/sh
# verify-offline.sh IMAGE.tar KEY.pub
#
# Proves, with no network and without appliance, that an appliance image tarball is exactly
# what the holder of KEY signed: every blob's sha256 equals its name, index.json → manifest →
# config → layers (digests, sizes, diff_ids) and manifest.json agree, the cosign signature
# over the manifest digest and the DSSE-signed SBOM and provenance verify with KEY, and the
# model files inside the layers have the digests the signed SBOM lists, and a signed evaluation
# (test-result attestation) passed against exactly those files and server.
#
# Needs only: POSIX sh, tar, sha256sum, base64, openssl, python3 (for JSON; standard library
# only). Exit 0 only if everything checks; otherwise exit 1 naming the culprit.
set -eu

die() { echo "verify-offline: FAIL: $*" >&2; exit 1; }
[ $# -eq 2 ] || { echo "usage: $0 IMAGE.tar KEY.pub" >&2; exit 2; }
# Absolute paths: the checks run from inside the extraction directory.
case $1 in /*) tarball=$1 ;; *) tarball=$(pwd)/$1 ;; esac
case $2 in /*) pub=$2 ;; *) pub=$(pwd)/$2 ;; esac
[ -f "$tarball" ] || die "$tarball: no such file"
openssl pkey -pubin -in "$pub" -noout 2>/dev/null || die "$pub: not a PEM public key"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# 1. Refuse hostile archives before extracting anything (GNU tar exits non-zero on truncation).
tar -tvf "$tarball" > "$work/listing" 2> "$work/tar.err" || die "$tarball: unreadable or truncated archive: $(cat "$work/tar.err")"
tar -tf "$tarball" > "$work/names" 2>/dev/null || die "$tarball: unreadable archive"
while IFS= read -r line; do
    case $line in
        -*|d*) ;;
        *) die "$tarball: entry is not a regular file or directory: $line" ;;
    esac
done < "$work/listing"
while IFS= read -r name; do
    case $name in
        /*) die "$name: absolute path in the archive" ;;
        ..|../*|*/..|*/../*) die "$name: path escapes the archive" ;;
    esac
done < "$work/names"
dup=$(sed 's|/$||' "$work/names" | sort | uniq -d | head -n 1)
[ -z "$dup" ] || die "$dup: duplicate entry"
mkdir "$work/x"
tar -xf "$tarball" -C "$work/x" --no-same-owner --no-same-permissions 2> "$work/tar.err" || die "$tarball: extraction failed: $(cat "$work/tar.err")"
cd "$work/x"

# 2. Every blob's content hashes to its name.
count=0
for blob in blobs/sha256/*; do
    [ -f "$blob" ] || die "$blob: not a regular file"
    name=${blob#blobs/sha256/}
    actual=$(sha256sum < "$blob" | cut -c1-64)
    [ "$actual" = "$name" ] || die "$blob: content has sha256:$actual (modified or swapped)"
    count=$((count + 1))
done

# 3. Structure, payloads to verify and model files to hash, worked out from the JSON.
python3 - "$work" <<'PY' || exit 1
import base64, json, os, sys
work = sys.argv[1]
def die(culprit, msg):
    sys.stderr.write("verify-offline: FAIL: %s: %s\n" % (culprit, msg)); sys.exit(1)
def load(path, culprit=None):
    try:
        with open(path, "rb") as f: data = f.read()
    except OSError: die(culprit or path, "missing from the tarball")
    try: return json.loads(data), data
    except ValueError as e: die(culprit or path, "not valid JSON: %s" % e)
referenced = set()
def blob(desc, frm):
    d = str(desc.get("digest", ""))
    if not d.startswith("sha256:"): die(frm, "bad digest %r" % d)
    p = "blobs/sha256/" + d[7:]
    if not os.path.isfile(p): die(frm, "references %s, which is missing from the tarball" % d)
    if desc.get("size") != os.path.getsize(p): die(p, "size differs from %s's descriptor" % frm)
    referenced.add(p); return p
if load("oci-layout")[0].get("imageLayoutVersion") != "1.0.0": die("oci-layout", "not 1.0.0")
index = load("index.json")[0]
ms = index.get("manifests", [])
if len(ms) != 1: die("index.json", "lists %d manifests; expected exactly one" % len(ms))
mpath = blob(ms[0], "index.json"); mdigest = ms[0]["digest"]
manifest = load(mpath, "index.json")[0]
if "config" not in manifest or not isinstance(manifest.get("layers"), list):
    die("index.json", "points to %s, which is not an image manifest" % mdigest)
cpath = blob(manifest["config"], "manifest " + mdigest)
config = load(cpath)[0]
layers = [blob(l, "manifest " + mdigest) for l in manifest["layers"]]
diff_ids = config.get("rootfs", {}).get("diff_ids", [])
if len(diff_ids) != len(layers): die(cpath, "%d diff_ids for %d layers" % (len(diff_ids), len(layers)))
for i, (l, desc) in enumerate(zip(layers, manifest["layers"])):
    mt = desc.get("mediaType", "")
    if mt.endswith("+gzip") or mt.endswith("+zstd"):
        import gzip, hashlib
        if mt.endswith("+zstd"): die(l, "zstd layers need zstd to check their diff_id; not in this script's toolset")
        h = hashlib.sha256()
        with gzip.open(l, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
        actual = "sha256:" + h.hexdigest()
    else:
        actual = "sha256:" + os.path.basename(l)
    if diff_ids[i] != actual: die(cpath, "diff_id of layer %d is %s, the layer's uncompressed sha256 is %s" % (i + 1, diff_ids[i], actual))
docker = load("manifest.json")[0]
if not isinstance(docker, list) or len(docker) != 1: die("manifest.json", "expected exactly one image")
d = docker[0]
if d.get("Config") != cpath: die("manifest.json", "Config %s is not the signed manifest's config %s" % (d.get("Config"), cpath))
if d.get("Layers") != layers: die("manifest.json", "Layers differ from the signed manifest's layers")
tags = d.get("RepoTags") or []
if len(tags) != 1: die("manifest.json", "RepoTags must hold exactly one name")
ref = ms[0].get("annotations", {}).get("org.opencontainers.image.ref.name", "")
if ref not in (tags[0], "docker.io/library/" + tags[0], "docker.io/" + tags[0]):
    die("index.json", "reference %s differs from manifest.json's %s" % (ref, tags[0]))
name, _, tag = tags[0].rpartition(":")
repository = name if name and "/" not in tag else tags[0]
sigs = load("signatures/index.json", "signatures/index.json (the image is not signed)")[0]
def kind(k):
    for e in sigs.get("manifests", []):
        if e.get("annotations", {}).get("kind") == k: return e
    die("signatures/index.json", "has no %s entry" % k)
if kind("dev.cosignproject.cosign/image").get("digest") != mdigest:
    die("signatures/index.json", "is not about the image in index.json (%s)" % mdigest)
se = kind("dev.cosignproject.cosign/sigs")
spath = blob(se, "signatures/index.json"); sm = load(spath)[0]
blob(sm["config"], "signature manifest " + se["digest"])
sl = sm["layers"][0]
ppath = blob(sl, "signature manifest " + se["digest"])
payload = load(ppath)[0]
crit = payload.get("critical", {})
if crit.get("image", {}).get("docker-manifest-digest") != mdigest:
    die(ppath, "the signed payload names %s, but index.json points to %s" % (crit.get("image", {}).get("docker-manifest-digest"), mdigest))
if crit.get("identity", {}).get("docker-reference") != repository:
    die(ppath, "docker-reference is not the image name %s" % repository)
todo = open(os.path.join(work, "signatures.todo"), "w")
with open(os.path.join(work, "sig0.b64"), "w") as f: f.write(sl.get("annotations", {}).get("dev.cosignproject.cosign/signature", ""))
todo.write("%s\t%s\tsignature manifest %s (signature over %s)\n" % (ppath, os.path.join(work, "sig0.b64"), se["digest"], mdigest))
ae = kind("dev.cosignproject.cosign/atts")
apath = blob(ae, "signatures/index.json"); am = load(apath)[0]
blob(am["config"], "attestation manifest " + ae["digest"])
statements = {}
for i, l in enumerate(am.get("layers", [])):
    p = blob(l, "attestation manifest " + ae["digest"])
    pt = l.get("annotations", {}).get("predicateType", "")
    env = load(p)[0]
    body = base64.b64decode(env.get("payload", ""))
    ptype = env.get("payloadType", "").encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(body), body)
    with open(os.path.join(work, "pae%d" % i), "wb") as f: f.write(pae)
    with open(os.path.join(work, "sig%d.b64" % (i + 1)), "w") as f: f.write(env.get("signatures", [{}])[0].get("sig", ""))
    todo.write("%s\t%s\t%s (%s attestation)\n" % (os.path.join(work, "pae%d" % i), os.path.join(work, "sig%d.b64" % (i + 1)), p, pt))
    st = json.loads(body)
    if st.get("predicateType") != pt or not any(s.get("digest", {}).get("sha256") == mdigest[7:] for s in st.get("subject", [])):
        die(p + " (%s attestation)" % pt, "the statement is not about %s" % mdigest)
    statements[pt] = st
todo.close()
sbom = statements.get("https://cyclonedx.org/bom") or die(apath, "no CycloneDX SBOM attestation")
statements.get("https://slsa.dev/provenance/v1") or die(apath, "no SLSA provenance attestation")
model = [c for c in sbom["predicate"].get("components", []) if c.get("type") == "machine-learning-model"]
if not model: die(apath, "the SBOM has no machine-learning-model component")
with open(os.path.join(work, "files.todo"), "w") as f:
    for c in model[0].get("components", []):
        f.write("%s\t%s\n" % (c["hashes"][0]["content"], c["name"]))
# The release gate's results, when signed into the image: a passing result, its cases document
# intact, and every file it ran against (server, model files) with the digest the SBOM lists.
tr = statements.get("https://in-toto.io/attestation/test-result/v0.1")
evaluation = ""
if tr:
    pred = tr["predicate"]
    if pred.get("result") not in ("PASSED", "WARNED"):
        die(apath, "the test-result attestation says %s" % pred.get("result"))
    listed = {}
    def walk(cs):
        for c in cs:
            if c.get("hashes"):
                listed[c.get("name", "").lstrip("/")] = c["hashes"][0]["content"]
                for prop in c.get("properties", []):
                    if prop.get("name") == "appliance:path":
                        listed[prop.get("value", "").lstrip("/")] = c["hashes"][0]["content"]
            walk(c.get("components", []))
    walk(sbom["predicate"].get("components", []))
    import hashlib
    cases = None
    for d in pred.get("configuration", []):
        want = d.get("digest", {}).get("sha256")
        if d.get("name") == "appliance-eval.json":
            raw = base64.b64decode(d.get("content", ""))
            if hashlib.sha256(raw).hexdigest() != want: die(apath, "appliance-eval.json does not match its digest")
            cases = json.loads(raw)["cases"]
        elif listed.get(d.get("name")) != want:
            die(d.get("name"), "the evaluation ran against sha256 %s, the SBOM lists %s" % (want, listed.get(d.get("name"))))
    if cases is None: die(apath, "the test-result attestation has no appliance-eval.json")
    passed = sum(1 for c in cases if c["result"]["passed"])
    evaluation = ", evaluation %d of %d cases passed (%s)" % (passed, len(cases), pred["result"])
with open(os.path.join(work, "evaluation.txt"), "w") as f: f.write(evaluation)
with open(os.path.join(work, "layers.todo"), "w") as f:
    for l in layers: f.write(l + "\n")
for b in os.listdir("blobs/sha256"):
    if "blobs/sha256/" + b not in referenced: die("blobs/sha256/" + b, "is not referenced by the image or its signatures")
PY

# 4. Signatures: ECDSA-SHA256 over the simple-signing payload and the DSSE PAE encodings.
tab=$(printf '\t')
while IFS="$tab" read -r message sigb64 what; do
    base64 -d < "$sigb64" > "$sigb64.der" 2>/dev/null || die "$what: signature is not base64"
    openssl dgst -sha256 -verify "$pub" -signature "$sigb64.der" "$message" > /dev/null 2>&1 \
        || die "$what: does not verify with $pub (wrong key, or altered)"
done < "$work/signatures.todo"

# 5. Model files inside the layers have the digests the signed SBOM lists (streamed, never extracted).
while IFS="$tab" read -r want path; do
    found=""
    while IFS= read -r layer; do
        if tar -tf "$layer" 2>/dev/null | sed 's|^\./||' | grep -qxF "$path"; then
            found=$(tar -xOf "$layer" "$path" 2>/dev/null | sha256sum | cut -c1-64) || found=""
            [ -n "$found" ] || found=$(tar -xOf "$layer" "./$path" | sha256sum | cut -c1-64)
        fi
    done < "$work/layers.todo"
    [ -n "$found" ] || die "$path: listed in the SBOM but not in any layer"
    [ "$found" = "$want" ] || die "$path: sha256 in the layers is $found, the SBOM says $want"
done < "$work/files.todo"

echo "verify-offline: OK: $count blobs, signature and attestations verify with $pub, model files match the SBOM$(cat "$work/evaluation.txt")"
