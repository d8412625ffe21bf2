//! A fake Hugging Face Hub on 127.0.0.1 (random port) with fault injection.
//!
//! It serves what real clients need (see `shared/notes/hf-hub.md`): the revision endpoint
//! (`/api/models/{repo}/revision/{rev}?blobs=true` with `sha` and `siblings[]` carrying
//! `size`, `blobId`, `lfs.sha256`), the tree endpoint (`/api/models/{repo}/tree/{rev}`, for
//! huggingface_hub's `snapshot_download`), and `GET`/`HEAD /{repo}/resolve/{rev}/{file}` with
//! `X-Repo-Commit`, a strong `ETag`, `X-Linked-Etag`/`X-Linked-Size` for LFS files and `Range`
//! (206 + `Content-Range`). Written on std sockets rather than an HTTP server crate because the
//! faults it injects (a body cut mid-file, a `Content-Length` that lies) are exactly what a
//! well-behaved server library refuses to produce. Every request is logged (method, path,
//! `Range`, `Authorization`, time) so tests can assert what the client did, or that it did
//! nothing at all.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Something to go wrong with a file's (or the API's, file `@api`) next responses.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds) instead of the content.
    Status { code: u16, retry_after: Option<u64> },
    /// Serve the content with one byte flipped (same length, same headers).
    FlipByte,
    /// Serve a shorter body with a `Content-Length` that matches it (a consistent but short file).
    Truncate,
    /// Announce the full length, send `n` bytes, then close the connection.
    DropAfter(u64),
    /// Claim another commit in `X-Repo-Commit`.
    WrongCommit,
    /// Wait this many milliseconds before sending the body (a slow transfer).
    Delay(u64),
}

impl Fault {
    /// An error status with no `Retry-After`.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    pub at: Instant,
}

#[derive(Clone)]
enum Content {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

#[derive(Clone)]
struct Entry {
    content: Content,
    size: u64,
    sha256: String,
    git_sha1: String,
    lfs: bool,
}

impl Entry {
    fn etag(&self) -> &str {
        if self.lfs {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

#[derive(Default)]
struct Repo {
    refs: BTreeMap<String, String>,
    commits: BTreeMap<String, BTreeMap<String, Entry>>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    faults: Vec<(String, Fault, usize)>,
    requests: Vec<LoggedRequest>,
    token: Option<String>,
}

pub struct FakeHub {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    counter: AtomicU64,
}

impl FakeHub {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake hub");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &st);
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            state,
            stop,
            addr,
            counter: AtomicU64::new(0),
        }
    }

    /// Adds a commit with `files` (path → bytes) and points `branch` at it; returns its id.
    pub fn commit(&self, repo: &str, branch: &str, files: &[(String, Vec<u8>)]) -> String {
        let entries = files
            .iter()
            .map(|(p, b)| (p.clone(), entry(p, Content::Bytes(Arc::new(b.clone())), b)))
            .collect();
        self.add(repo, branch, entries)
    }

    /// A commit of every file of `dir` (read into memory), e.g. a fixture checkpoint.
    pub fn commit_dir(&self, repo: &str, branch: &str, dir: &Path) -> String {
        let files: Vec<(String, Vec<u8>)> = list(dir)
            .into_iter()
            .map(|(rel, path)| (rel, std::fs::read(path).unwrap()))
            .collect();
        self.commit(repo, branch, &files)
    }

    /// A commit of every file of `dir`, streamed from disk on each request (for big files).
    pub fn commit_dir_on_disk(&self, repo: &str, branch: &str, dir: &Path) -> String {
        let mut entries = BTreeMap::new();
        for (rel, path) in list(dir) {
            let mut f = std::fs::File::open(&path).unwrap();
            let size = f.metadata().unwrap().len();
            let (mut sha, mut git) = (Sha256::new(), Sha1::new());
            git.update(format!("blob {size}\0").as_bytes());
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                sha.update(&buf[..n]);
                git.update(&buf[..n]);
            }
            entries.insert(
                rel.clone(),
                Entry {
                    content: Content::File(path),
                    size,
                    sha256: hex(&sha.finalize()),
                    git_sha1: hex(&git.finalize()),
                    lfs: is_lfs(&rel, size),
                },
            );
        }
        self.add(repo, branch, entries)
    }

    fn add(&self, repo: &str, branch: &str, entries: BTreeMap<String, Entry>) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let commit = hex(&Sha1::digest(format!("{repo}/{branch}/{n}").as_bytes()));
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.commits.insert(commit.clone(), entries);
        r.refs.insert(branch.to_string(), commit.clone());
        commit
    }

    /// Makes the metadata of `file` at `commit` claim `size` bytes (and LFS), e.g. more than
    /// any disk holds.
    pub fn declare_size(&self, repo: &str, commit: &str, file: &str, size: u64) {
        let mut st = self.state.lock().unwrap();
        let e = st
            .repos
            .get_mut(repo)
            .and_then(|r| r.commits.get_mut(commit))
            .and_then(|c| c.get_mut(file))
            .expect("no such file");
        e.size = size;
        e.lfs = true;
    }

    /// From now on, requests without `Authorization: Bearer <token>` get 401.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    /// Injects `fault` into the next `times` responses for `file` (`@api` for the revision API).
    pub fn fault(&self, file: &str, fault: Fault, times: usize) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((file.to_string(), fault, times));
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn entry(path: &str, content: Content, bytes: &[u8]) -> Entry {
    let mut git = Sha1::new();
    git.update(format!("blob {}\0", bytes.len()).as_bytes());
    git.update(bytes);
    Entry {
        content,
        size: bytes.len() as u64,
        sha256: hex(&Sha256::digest(bytes)),
        git_sha1: hex(&git.finalize()),
        lfs: is_lfs(path, bytes.len() as u64),
    }
}

/// As on the Hub: weights (and anything big) are LFS, small text files are plain git blobs.
fn is_lfs(path: &str, size: u64) -> bool {
    path.ends_with(".safetensors") || size >= 10 << 20
}

fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Head {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Head {
        method,
        path,
        headers,
    }))
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut out = stream;
    let status = respond(&head, state, &mut out).unwrap_or(0);
    state.lock().unwrap().requests.push(LoggedRequest {
        method: head.method.clone(),
        path: head.path.clone(),
        range: head.headers.get("range").cloned(),
        authorization: head.headers.get("authorization").cloned(),
        status,
        at: Instant::now(),
    });
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn simple(out: &mut TcpStream, status: u16, extra: &str, body: &[u8]) -> std::io::Result<u16> {
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    out.write_all(body)?;
    Ok(status)
}

fn take_fault(st: &mut State, file: &str) -> Option<Fault> {
    let i = st.faults.iter().position(|(f, _, n)| f == file && *n > 0)?;
    st.faults[i].2 -= 1;
    Some(st.faults[i].1.clone())
}

fn respond(head: &Head, state: &Mutex<State>, out: &mut TcpStream) -> std::io::Result<u16> {
    let path = head.path.split('?').next().unwrap_or_default().to_string();
    let mut st = state.lock().unwrap();
    if let Some(token) = &st.token
        && head.headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        drop(st);
        return simple(out, 401, "", b"{\"error\":\"Invalid credentials\"}");
    }
    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let segs: Vec<&str> = rest.splitn(4, '/').collect();
        if segs.len() != 4 || (segs[2] != "revision" && segs[2] != "tree") {
            drop(st);
            return simple(out, 404, "", b"{}");
        }
        if let Some(Fault::Status { code, retry_after }) = take_fault(&mut st, "@api") {
            drop(st);
            let extra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            return simple(out, code, &extra, b"{}");
        }
        let repo = format!("{}/{}", segs[0], segs[1]);
        let rev = decode(segs[3]);
        let Some(r) = st.repos.get(&repo) else {
            drop(st);
            return simple(out, 404, "", b"{\"error\":\"Repository not found\"}");
        };
        let commit = r.refs.get(&rev).cloned().unwrap_or(rev);
        let Some(files) = r.commits.get(&commit) else {
            drop(st);
            return simple(out, 404, "", b"{\"error\":\"Revision not found\"}");
        };
        if segs[2] == "tree" {
            // huggingface_hub's snapshot_download lists files here (one page, no `Link`).
            let tree: Vec<serde_json::Value> = files
                .iter()
                .map(|(p, e)| {
                    let mut v = serde_json::json!({"type": "file", "path": p, "size": e.size, "oid": e.git_sha1});
                    if e.lfs {
                        v["lfs"] = serde_json::json!({"oid": e.sha256, "size": e.size, "pointerSize": 134});
                    }
                    v
                })
                .collect();
            drop(st);
            let body = serde_json::Value::Array(tree).to_string();
            return simple(
                out,
                200,
                "Content-Type: application/json\r\n",
                body.as_bytes(),
            );
        }
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, e)| {
                let mut v =
                    serde_json::json!({"rfilename": p, "size": e.size, "blobId": e.git_sha1});
                if e.lfs {
                    v["lfs"] =
                        serde_json::json!({"sha256": e.sha256, "size": e.size, "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = serde_json::json!({"id": repo, "sha": commit, "siblings": siblings}).to_string();
        drop(st);
        return simple(
            out,
            200,
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() != 5 || segs[2] != "resolve" {
        drop(st);
        return simple(out, 404, "", b"");
    }
    let repo = format!("{}/{}", segs[0], segs[1]);
    let rev = decode(segs[3]);
    let file = decode(segs[4]);
    let found = st.repos.get(&repo).and_then(|r| {
        let commit = r.refs.get(&rev).cloned().unwrap_or(rev.clone());
        let e = r.commits.get(&commit)?.get(&file)?.clone();
        Some((commit, e))
    });
    let Some((commit, e)) = found else {
        drop(st);
        return simple(
            out,
            404,
            "X-Error-Code: EntryNotFound\r\n",
            b"Entry not found",
        );
    };
    let fault = take_fault(&mut st, &file);
    drop(st);
    if let Some(Fault::Status { code, retry_after }) = &fault {
        let extra = retry_after
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default();
        return simple(out, *code, &extra, b"");
    }
    let served_commit = match fault {
        Some(Fault::WrongCommit) => "f".repeat(40),
        _ => commit,
    };
    let (mut start, mut end) = (0u64, e.size.saturating_sub(1));
    let mut status = 200;
    if let Some(range) = head
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
    {
        let (s, t) = range.split_once('-').unwrap_or((range, ""));
        start = s.parse().unwrap_or(0);
        if let Ok(t) = t.parse::<u64>() {
            end = t.min(e.size.saturating_sub(1));
        }
        if start >= e.size {
            return simple(
                out,
                416,
                &format!("Content-Range: bytes */{}\r\n", e.size),
                b"",
            );
        }
        status = 206;
    }
    let mut len = if e.size == 0 { 0 } else { end - start + 1 };
    let mut send = len;
    match fault {
        Some(Fault::Truncate) => {
            len -= len / 4 + 1;
            send = len;
        }
        Some(Fault::DropAfter(n)) => send = n.min(len),
        _ => {}
    }
    let mut headers = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n\
         X-Repo-Commit: {served_commit}\r\nETag: \"{}\"\r\n",
        e.etag()
    );
    if e.lfs {
        headers += &format!(
            "X-Linked-Etag: \"{}\"\r\nX-Linked-Size: {}\r\n",
            e.sha256, e.size
        );
    }
    if status == 206 {
        headers += &format!("Content-Range: bytes {start}-{end}/{}\r\n", e.size);
    }
    headers += "\r\n";
    out.write_all(headers.as_bytes())?;
    if head.method == "HEAD" {
        return Ok(status);
    }
    if let Some(Fault::Delay(ms)) = fault {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let flip_at = matches!(fault, Some(Fault::FlipByte)).then_some(e.size / 2);
    match &e.content {
        Content::Bytes(b) => {
            let mut chunk = b[start as usize..(start + send) as usize].to_vec();
            if let Some(at) = flip_at
                && at >= start
                && at < start + send
            {
                chunk[(at - start) as usize] ^= 0xff;
            }
            out.write_all(&chunk)?;
        }
        Content::File(p) => {
            let mut f = std::fs::File::open(p)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
            std::io::copy(&mut f.take(send), out)?;
        }
    }
    Ok(status)
}
