//! A real distribution registry (Debian's `docker-registry`, distribution 2.8) on 127.0.0.1,
//! with TLS from a self-signed certificate and either htpasswd (Basic) auth or token (Bearer)
//! auth backed by a small token service in this process.
//!
//! The token service is the distribution auth spec's: `GET realm?service=&scope=` with Basic
//! credentials answers `{"token": JWT}`, the JWT ES256-signed by a key whose certificate the
//! registry trusts (`x5c` header) and granting exactly the scopes asked for.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

use super::http::free_port;
use super::process::run_ok;
use super::tools::require_tool;

pub const USER: &str = "site-admin";
pub const PASSWORD: &str = "reg-pw-5d1e9b07-do-not-leak";

/// Which sign-in the registry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Htpasswd,
    Token,
}

pub struct Registry {
    dir: TempDir,
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Holds `ca.crt`: what `--cert-dir` (appliance, skopeo) takes.
    pub cert_dir: PathBuf,
    /// Scopes the token service was asked for, one entry per token issued.
    pub token_requests: Arc<Mutex<Vec<String>>>,
    pub auth: Auth,
    stop: Arc<AtomicBool>,
}

/// `openssl` with whitespace-separated `args`, in `dir`.
fn openssl(args: &str, dir: &Path) {
    run_ok(
        Command::new(require_tool("openssl"))
            .args(args.split_whitespace())
            .current_dir(dir),
        Duration::from_secs(60),
    );
}

impl Registry {
    pub fn start(auth: Auth) -> Self {
        let registry_bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cert_dir = d.join("certs");
        std::fs::create_dir(&cert_dir).unwrap();
        // A site CA and the registry's certificate issued by it, as sites run them.
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        openssl(
            &format!("req -x509 {EC} -keyout ca.key -out certs/ca.crt -days 2 -subj /CN=site-ca"),
            d,
        );
        openssl(
            &format!("req {EC} -keyout tls.key -out tls.csr -subj /CN=127.0.0.1"),
            d,
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            "x509 -req -in tls.csr -CA certs/ca.crt -CAkey ca.key -CAcreateserial -out tls.crt \
             -days 2 -extfile ext.cnf",
            d,
        );
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let stop = Arc::new(AtomicBool::new(false));
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let auth_yaml = match auth {
            Auth::Htpasswd => {
                let out = run_ok(
                    Command::new(require_tool("htpasswd")).args(["-Bbn", USER, PASSWORD]),
                    Duration::from_secs(60),
                );
                std::fs::write(d.join("htpasswd"), out).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: site\n    path: {}\n",
                    d.join("htpasswd").display()
                )
            }
            Auth::Token => {
                openssl(
                    &format!(
                        "req -x509 {EC} -keyout token.key -out token.crt -days 2 -subj /CN=token-issuer"
                    ),
                    d,
                );
                openssl("pkcs8 -topk8 -nocrypt -in token.key -out token.p8", d);
                openssl("x509 -in token.crt -outform DER -out token.der", d);
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let realm = format!("http://{}/token", listener.local_addr().unwrap());
                let issuer = TokenIssuer {
                    key: std::fs::read_to_string(d.join("token.p8")).unwrap(),
                    cert_der: std::fs::read(d.join("token.der")).unwrap(),
                    requests: token_requests.clone(),
                };
                let stop = stop.clone();
                std::thread::spawn(move || issuer.serve(listener, &stop));
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: site-registry\n    issuer: site-issuer\n    rootcertbundle: {}\n",
                    d.join("token.crt").display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: test-secret\n  tls:\n    certificate: {}\n    key: {}\n{auth_yaml}",
            d.join("data").display(),
            d.join("tls.crt").display(),
            d.join("tls.key").display(),
        );
        std::fs::write(d.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new(registry_bin)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            dir,
            child,
            host,
            cert_dir,
            token_requests,
            auth,
            stop,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&registry.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {} within 30 s:\n{}",
                registry.host,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests that carried blob bytes (`PATCH`/`PUT` on an upload), from the access log.
    pub fn blob_uploads(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                (l.contains("\"PATCH /v2/") || l.contains("\"PUT /v2/"))
                    && l.contains("/blobs/uploads/")
            })
            .count()
    }

    /// Blobs the registry has accepted whole (the `PUT ...?digest=` that completes an upload
    /// answered 201), from the access log.
    pub fn blobs_completed(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 201 ")
            })
            .count()
    }

    /// The manifest digest skopeo, signed in, reads for `reference`.
    pub fn skopeo_digest(&self, reference: &str) -> String {
        let out = run_ok(
            Command::new(require_tool("skopeo"))
                .arg("inspect")
                .arg("--cert-dir")
                .arg(&self.cert_dir)
                .args(["--creds", &format!("{USER}:{PASSWORD}")])
                .arg(format!("docker://{reference}")),
            Duration::from_secs(120),
        );
        let inspect: serde_json::Value = serde_json::from_str(&out).unwrap();
        inspect["Digest"].as_str().unwrap().to_string()
    }

    /// `curl` GET of a registry path with the htpasswd user, answering the body.
    pub fn get(&self, path: &str, accept: &str) -> Vec<u8> {
        assert_eq!(
            self.auth,
            Auth::Htpasswd,
            "Registry::get signs in with Basic only"
        );
        let url = format!("https://{}{path}", self.host);
        let mut cmd = Command::new(require_tool("curl"));
        cmd.args(["-fsSL", "--cacert"])
            .arg(self.cert_dir.join("ca.crt"))
            .args(["-H", &format!("Accept: {accept}")]);
        cmd.args(["-u", &format!("{USER}:{PASSWORD}")]).arg(&url);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TokenIssuer {
    key: String,
    cert_der: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TokenIssuer {
    fn serve(self, listener: TcpListener, stop: &AtomicBool) {
        listener.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    self.answer(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn answer(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_string());
            }
        }
        let target = request_line.split(' ').nth(1).unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            let mut out = Vec::new();
            let bytes = s.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(decode)
            .collect();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let mut stream = stream;
        if authorization.as_deref() != Some(expected.as_str()) {
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 29\r\nConnection: close\r\n\r\n{\"details\":\"bad credentials\"}",
            );
            return;
        }
        self.requests.lock().unwrap().push(scopes.join(" "));
        let body = format!("{{\"token\":\"{}\",\"expires_in\":300}}", self.jwt(&scopes));
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.flush();
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    }

    fn jwt(&self, scopes: &[String]) -> String {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::DecodePrivateKey as _;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = base64::engine::general_purpose::STANDARD;
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [b64.encode(&self.cert_der)],
        });
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": "site-issuer",
            "sub": USER,
            "aud": "site-registry",
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("{now}-{}", access.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url.encode(header.to_string()),
            b64url.encode(claims.to_string())
        );
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&self.key).unwrap();
        let signature: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url.encode(signature.to_bytes()))
    }
}
