//! A client for the OCI distribution API, as much of it as pushing needs: the `/v2/` ping and
//! its auth challenge, blob `HEAD`, cross-repository mount, monolithic and chunked uploads, and
//! manifest `PUT`.
//!
//! Blocking ureq, like the Hub client: a push is one stream of bytes at a time from a file, and
//! the builder links no async runtime.

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appliance_common::Secret;
use ureq::http::Response;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use super::PushError;
use super::auth::{Challenge, Credentials};
use crate::digest::Sha256Digest;

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Verify the registry's certificate (off only with `--tls-verify=false`).
    pub tls_verify: bool,
    /// Extra trust: `*.crt` CA certificates, `*.cert` + `*.key` client certificate
    /// (the layout of `/etc/containers/certs.d/<host>/`).
    pub cert_dir: Option<PathBuf>,
    /// `http://` instead of `https://` (a registry on localhost without TLS).
    pub plain_http: bool,
}

enum Auth {
    None,
    Basic(Secret),
    Bearer { token: Secret, scope: String },
}

/// A connection to one repository of one registry, signed in.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    pub registry: String,
    pub repository: String,
    credentials: Option<Credentials>,
    /// Repositories blobs may be mounted from (their pull scope goes into bearer tokens).
    mount_from: Vec<String>,
    auth: RefCell<Auth>,
}

/// What a blob upload or mount did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    Mounted,
    /// The registry does not mount (or lacks the blob there); upload it.
    NotMounted,
}

impl Registry {
    /// Pings `/v2/` and signs in as its challenge asks.
    pub fn connect(
        registry: &str,
        repository: &str,
        credentials: Option<Credentials>,
        mount_from: Vec<String>,
        connection: &Connection,
    ) -> Result<Self, PushError> {
        let tls = tls_config(registry, connection)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(format!("appliance/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let scheme = if connection.plain_http {
            "http"
        } else {
            "https"
        };
        let this = Self {
            agent,
            base: format!("{scheme}://{registry}"),
            registry: registry.to_string(),
            repository: repository.to_string(),
            credentials,
            mount_from,
            auth: RefCell::new(Auth::None),
        };
        let ping = format!("{}/v2/", this.base);
        let response = this
            .agent
            .get(&ping)
            .call()
            .map_err(|e| this.http("reaching the registry", e))?;
        match response.status().as_u16() {
            200 => {}
            401 => {
                let challenge = challenge(&response).ok_or_else(|| PushError::Registry {
                    registry: registry.to_string(),
                    action: "reaching the registry".into(),
                    message:
                        "answered 401 without a challenge appliance can answer (Basic or Bearer)"
                            .into(),
                })?;
                this.sign_in(&challenge)?;
                // Basic credentials are only checked by a request that carries them.
                if matches!(*this.auth.borrow(), Auth::Basic(_)) {
                    let response =
                        this.send(|| this.request(this.agent.get(&ping)).call(), "signing in")?;
                    if response.status().as_u16() == 401 {
                        return Err(this.rejected());
                    }
                }
            }
            _ => return Err(status_error(registry, "reaching the registry", response)),
        }
        Ok(this)
    }

    fn http(&self, action: &str, e: ureq::Error) -> PushError {
        if e.to_string().contains("CaUsedAsEndEntity") {
            return PushError::Registry {
                registry: self.registry.clone(),
                action: action.to_string(),
                message: "the registry presents a CA certificate as its own (a self-signed \
                          certificate with CA:TRUE); give it a server certificate issued by \
                          that CA, or one made with basicConstraints=CA:FALSE"
                    .into(),
            };
        }
        PushError::Http {
            registry: self.registry.clone(),
            action: action.to_string(),
            source: Box::new(e),
        }
    }

    fn rejected(&self) -> PushError {
        PushError::Unauthorized {
            registry: self.registry.clone(),
            from: self.credentials.as_ref().map_or_else(
                || "no credentials".to_string(),
                |c| format!("the credentials from {}", c.from),
            ),
        }
    }

    fn sign_in(&self, challenge: &Challenge) -> Result<(), PushError> {
        match challenge {
            Challenge::Basic => {
                let credentials =
                    self.credentials
                        .as_ref()
                        .ok_or_else(|| PushError::NeedsCredentials {
                            registry: self.registry.clone(),
                        })?;
                *self.auth.borrow_mut() = Auth::Basic(Secret::new(credentials.basic_header()));
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut scopes = vec![format!("repository:{}:pull,push", self.repository)];
                for from in &self.mount_from {
                    scopes.push(format!("repository:{from}:pull"));
                }
                if let Some(asked) = scope
                    && !scopes.contains(asked)
                {
                    scopes.push(asked.clone());
                }
                let token = self.token(realm, service.as_deref(), &scopes)?;
                *self.auth.borrow_mut() = Auth::Bearer {
                    token,
                    scope: scopes.join(" "),
                };
            }
        }
        Ok(())
    }

    /// The token endpoint of the distribution auth spec: GET `realm?service=&scope=`, with
    /// Basic credentials when there are any (anonymous tokens otherwise).
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Secret, PushError> {
        let mut request = self.agent.get(realm);
        if let Some(service) = service {
            request = request.query("service", service);
        }
        for scope in scopes {
            request = request.query("scope", scope);
        }
        if let Some(credentials) = &self.credentials {
            request = request.header("Authorization", credentials.basic_header());
        }
        let mut response = request
            .call()
            .map_err(|e| self.http("asking the token service for a token", e))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => return Err(self.rejected()),
            _ => {
                return Err(status_error(
                    &self.registry,
                    "asking the token service for a token",
                    response,
                ));
            }
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| self.http("reading the token service's answer", e))?;
        // serde_json's message names a line and column, never the token text.
        let answer: Answer = serde_json::from_str(&text).map_err(|e| PushError::Registry {
            registry: self.registry.clone(),
            action: "asking the token service for a token".into(),
            message: format!("its answer is not the token JSON: {e}"),
        })?;
        answer
            .token
            .or(answer.access_token)
            .map(Secret::new)
            .ok_or_else(|| PushError::Registry {
                registry: self.registry.clone(),
                action: "asking the token service for a token".into(),
                message: "its answer has no `token`".into(),
            })
    }

    fn authorization(&self) -> Option<String> {
        match &*self.auth.borrow() {
            Auth::None => None,
            Auth::Basic(header) => Some(header.expose().to_string()),
            Auth::Bearer { token, .. } => Some(format!("Bearer {}", token.expose())),
        }
    }

    /// Runs `call` (which builds the request through [`Self::request`]); on a 401 with a
    /// bearer challenge for a scope the token lacks, fetches a new token and runs it again.
    fn send(
        &self,
        call: impl Fn() -> Result<Response<ureq::Body>, ureq::Error>,
        action: &str,
    ) -> Result<Response<ureq::Body>, PushError> {
        let response = call().map_err(|e| self.http(action, e))?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let renewable = match (challenge(&response), &*self.auth.borrow()) {
            (Some(c @ Challenge::Bearer { .. }), Auth::Bearer { .. } | Auth::None) => Some(c),
            (Some(Challenge::Basic), Auth::None) => Some(Challenge::Basic),
            _ => None,
        };
        let Some(challenge) = renewable else {
            return Err(self.rejected());
        };
        if let (
            Challenge::Bearer {
                scope: Some(asked), ..
            },
            Auth::Bearer { scope, .. },
        ) = (&challenge, &*self.auth.borrow())
            && scope.split(' ').any(|s| s == asked)
        {
            // The token already holds what was asked and was still refused.
            return Err(self.rejected());
        }
        self.sign_in(&challenge)?;
        let response = call().map_err(|e| self.http(action, e))?;
        if response.status().as_u16() == 401 {
            return Err(self.rejected());
        }
        Ok(response)
    }

    fn request<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match self.authorization() {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Resolves an upload `Location` (absolute or relative) and adds `query`.
    fn location(
        &self,
        response: &Response<ureq::Body>,
        query: &str,
        action: &str,
    ) -> Result<String, PushError> {
        let location = header(response, "location").ok_or_else(|| PushError::Registry {
            registry: self.registry.clone(),
            action: action.to_string(),
            message: "its answer has no `Location` to upload to".into(),
        })?;
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(query);
        }
        Ok(url)
    }

    /// Whether the repository already has the blob.
    pub fn has_blob(&self, digest: &Sha256Digest) -> Result<bool, PushError> {
        let url = self.url(&format!("blobs/{}", digest.prefixed()));
        let action = format!("checking for blob {}", digest.prefixed());
        let response = self.send(|| self.request(self.agent.head(&url)).call(), &action)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(&self.registry, &action, response)),
        }
    }

    /// Asks the registry to link `digest` from repository `from` (no bytes move). A registry
    /// without mounts answers by opening an upload, which is cancelled here.
    pub fn mount(&self, digest: &Sha256Digest, from: &str) -> Result<Mount, PushError> {
        let url = format!(
            "{}?mount={}&from={from}",
            self.url("blobs/uploads/"),
            digest.prefixed()
        );
        let action = format!("mounting blob {} from {from}", digest.prefixed());
        let response = self.send(|| self.request(self.agent.post(&url)).send_empty(), &action)?;
        match response.status().as_u16() {
            201 => Ok(Mount::Mounted),
            202 => {
                if let Ok(upload) = self.location(&response, "", &action) {
                    // Leaving it open costs the registry a little until it expires it.
                    let _ = self.request(self.agent.delete(&upload)).call();
                }
                Ok(Mount::NotMounted)
            }
            _ => Err(status_error(&self.registry, &action, response)),
        }
    }

    /// Uploads `size` bytes read from `body` as blob `digest`: in one `PUT`, or in `PATCH`
    /// chunks of `chunk` bytes when given (for proxies that cap request bodies). The registry
    /// checks the bytes against the digest before it accepts them.
    pub fn upload(
        &self,
        digest: &Sha256Digest,
        size: u64,
        mut reader: impl Read,
        chunk: Option<u64>,
    ) -> Result<(), PushError> {
        let action = format!("uploading blob {}", digest.prefixed());
        let start = self.url("blobs/uploads/");
        let response = self.send(
            || self.request(self.agent.post(&start)).send_empty(),
            &action,
        )?;
        if response.status().as_u16() != 202 {
            return Err(status_error(&self.registry, &action, response));
        }
        let finish = format!("digest={}", digest.prefixed());
        let response = match chunk {
            None => {
                let url = self.location(&response, &finish, &action)?;
                self.request(self.agent.put(&url))
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Length", size.to_string())
                    .send(ureq::SendBody::from_reader(&mut reader))
                    .map_err(|e| self.http(&action, e))?
            }
            Some(chunk) => {
                let mut url = self.location(&response, "", &action)?;
                let mut offset = 0;
                while offset < size {
                    let len = chunk.min(size - offset);
                    let mut part = (&mut reader).take(len);
                    let response = self
                        .request(self.agent.patch(&url))
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Length", len.to_string())
                        .header("Content-Range", format!("{offset}-{}", offset + len - 1))
                        .send(ureq::SendBody::from_reader(&mut part))
                        .map_err(|e| self.http(&action, e))?;
                    if response.status().as_u16() != 202 {
                        return Err(status_error(&self.registry, &action, response));
                    }
                    url = self.location(&response, "", &action)?;
                    offset += len;
                }
                let url = format!("{url}{}{finish}", if url.contains('?') { '&' } else { '?' });
                self.request(self.agent.put(&url))
                    .header("Content-Length", "0")
                    .send_empty()
                    .map_err(|e| self.http(&action, e))?
            }
        };
        if response.status().as_u16() != 201 {
            return Err(status_error(&self.registry, &action, response));
        }
        Ok(())
    }

    /// `PUT`s a manifest under `reference` (a tag or its digest); checks the digest the
    /// registry computed is the one the tarball names.
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), PushError> {
        let url = self.url(&format!("manifests/{reference}"));
        let action = format!("putting the manifest as `{reference}`");
        let response = self.send(
            || {
                self.request(self.agent.put(&url))
                    .header("Content-Type", media_type)
                    .send(bytes)
            },
            &action,
        )?;
        if response.status().as_u16() != 201 {
            return Err(status_error(&self.registry, &action, response));
        }
        let ours = Sha256Digest::of(bytes).prefixed();
        if let Some(theirs) = header(&response, "docker-content-digest")
            && theirs != ours
        {
            return Err(PushError::Registry {
                registry: self.registry.clone(),
                action,
                message: format!("it stored the manifest as {theirs}, not {ours}"),
            });
        }
        Ok(())
    }
}

fn header<B>(response: &Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn challenge<B>(response: &Response<B>) -> Option<Challenge> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Challenge::parse)
}

/// An unexpected status, with the registry's own error codes and messages when it sent them.
fn status_error(registry: &str, action: &str, mut response: Response<ureq::Body>) -> PushError {
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let errors = v["errors"].as_array()?;
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        })
        .unwrap_or_else(|| {
            body.chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string()
        });
    PushError::Registry {
        registry: registry.to_string(),
        action: action.to_string(),
        message: format!(
            "HTTP {status}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
    }
}

/// The system's CA bundle plus the registry's certificate directory, as Docker and podman
/// trust them; without any, Mozilla's roots.
fn tls_config(registry: &str, connection: &Connection) -> Result<TlsConfig, PushError> {
    if !connection.tls_verify {
        return Ok(TlsConfig::builder().disable_verification(true).build());
    }
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    for bundle in system_bundles() {
        if let Ok(pem) = std::fs::read(&bundle) {
            // A system bundle with an odd entry still serves the rest.
            roots.extend(pem_items(&pem).into_iter().filter_map(|item| match item {
                PemItem::Certificate(c) => Some(c),
                _ => None,
            }));
            break;
        }
    }
    let dirs: Vec<PathBuf> = match &connection.cert_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(PushError::Tls {
                    path: dir.clone(),
                    message: "is not a directory".into(),
                });
            }
            vec![dir.clone()]
        }
        None => ["/etc/containers/certs.d", "/etc/docker/certs.d"]
            .iter()
            .map(|d| Path::new(d).join(registry))
            .filter(|d| d.is_dir())
            .collect(),
    };
    let mut client = None;
    for dir in dirs {
        let (certs, cert) = read_cert_dir(&dir)?;
        roots.extend(certs);
        client = client.or(cert);
    }
    let builder = TlsConfig::builder().client_cert(client);
    Ok(if roots.is_empty() {
        builder.build()
    } else {
        builder
            .root_certs(RootCerts::new_with_certs(&roots))
            .build()
    })
}

fn system_bundles() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        out.push(PathBuf::from(file));
    }
    out.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    out
}

fn pem_items(pem: &[u8]) -> Vec<PemItem<'static>> {
    ureq::tls::parse_pem(pem).filter_map(Result::ok).collect()
}

/// `*.crt` are CAs; `NAME.cert` with `NAME.key` is the client certificate.
fn read_cert_dir(dir: &Path) -> Result<(Vec<Certificate<'static>>, Option<ClientCert>), PushError> {
    let tls = |path: &Path, message: String| PushError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| tls(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut roots = Vec::new();
    let mut client = None;
    for path in entries {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "crt" && ext != "cert" {
            continue;
        }
        let pem = std::fs::read(&path).map_err(|e| tls(&path, e.to_string()))?;
        let certs: Vec<Certificate<'static>> = pem_items(&pem)
            .into_iter()
            .filter_map(|item| match item {
                PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(tls(&path, "holds no PEM certificate".into()));
        }
        if ext == "crt" {
            roots.extend(certs);
        } else {
            let key_path = path.with_extension("key");
            let key_pem = std::fs::read(&key_path).map_err(|e| {
                tls(
                    &key_path,
                    format!("the client certificate's key cannot be read: {e}"),
                )
            })?;
            // The message is ours: a key parser's error could quote the key.
            let key = PrivateKey::from_pem(&key_pem)
                .map_err(|_| tls(&key_path, "is not a PEM private key".into()))?;
            client = Some(ClientCert::new_with_certs(&certs, key));
        }
    }
    Ok((roots, client))
}
