//! Defines `HubClient`: the Hub's HTTP API (revision metadata, `resolve` downloads) with
//! retries, `Retry-After`, manual redirects and the token kept to the Hub's own host.

use std::time::Duration;

use appliance_common::Secret;
use serde::Deserialize;
use ureq::http::Response;

use super::error::HubError;
use crate::digest::Sha256Digest;

/// How often and how patiently to retry 408/429/5xx and dropped connections.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; doubled each retry, capped at [`MAX_DELAY`]. Tests set it to a
    /// millisecond so fault injection stays fast without timing assertions.
    pub base: Duration,
}

/// The longest wait between attempts, `Retry-After` included: a server asking for an hour is
/// answered with an error rather than a build that looks hung.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            base: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_else(|| self.base.saturating_mul(1u32 << retry.min(16)))
            .min(MAX_DELAY)
    }
}

/// A file of a commit as the Hub describes it.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// The git blob sha1 of the file (for LFS files: of its pointer).
    pub blob_id: String,
    /// The content's sha256, for LFS files.
    pub lfs_sha256: Option<Sha256Digest>,
}

impl RemoteFile {
    /// The cache blob name: what the Hub sends as ETag (`X-Linked-Etag` for LFS).
    pub fn etag(&self) -> String {
        match &self.lfs_sha256 {
            Some(d) => d.hex(),
            None => self.blob_id.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RevisionInfo {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

#[derive(Deserialize)]
struct RawRevision {
    sha: String,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    sha256: String,
    size: u64,
}

/// A `resolve` response ready to stream.
pub struct Opened {
    pub response: Response<ureq::Body>,
    /// `X-Repo-Commit` of the Hub's own answer (before any CDN redirect).
    pub commit: Option<String>,
}

/// Why an attempt failed: worth retrying (with the server's `Retry-After`), or not.
pub enum AttemptError {
    Retry {
        after: Option<Duration>,
        cause: std::io::Error,
    },
    Fatal(HubError),
}

pub struct HubClient {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<Secret>,
    pub retry: RetryPolicy,
}

impl HubClient {
    pub fn new(endpoint: &str, token: Option<Secret>, retry: RetryPolicy) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed by hand: the Hub's own answer carries `X-Repo-Commit`, and
            // the token must not follow a redirect to another host.
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .user_agent(format!("appliance/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            retry,
        }
    }

    /// `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit a revision resolves to
    /// and every file's size and hashes.
    pub fn revision_info(&self, repo: &str, revision: &str) -> Result<RevisionInfo, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            encode_segment(revision)
        );
        let what = format!("{repo}@{revision}");
        let mut retry = 0;
        let mut response = loop {
            let failure = match self.get(&url, None) {
                Ok(opened) => {
                    let status = opened.response.status().as_u16();
                    match status {
                        200..=299 => break opened.response,
                        401 | 403 => {
                            return Err(HubError::Unauthorized {
                                repo: repo.into(),
                                status,
                            });
                        }
                        404 => {
                            return Err(HubError::RevisionNotFound {
                                repo: repo.into(),
                                revision: revision.into(),
                            });
                        }
                        s if retryable(s) => (status, retry_after(&opened.response)),
                        _ => {
                            return Err(HubError::Status {
                                what,
                                status,
                                attempts: retry + 1,
                            });
                        }
                    }
                }
                Err(e) if transient(&e) => (0, None),
                Err(e) => {
                    return Err(HubError::Connect {
                        url,
                        source: Box::new(e),
                    });
                }
            };
            if retry >= self.retry.retries {
                return Err(HubError::Status {
                    what,
                    status: failure.0,
                    attempts: retry + 1,
                });
            }
            std::thread::sleep(self.retry.delay(retry, failure.1));
            retry += 1;
        };
        let bad = |message: String| HubError::BadResponse {
            what: format!("{repo}@{revision}"),
            message,
        };
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| bad(e.to_string()))?;
        let raw: RawRevision = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if !is_commit(&raw.sha) {
            return Err(bad(format!("`sha` is `{}`, not a 40-hex commit", raw.sha)));
        }
        let mut files = Vec::new();
        for s in raw.siblings {
            let lfs_sha256 = match &s.lfs {
                Some(lfs) => Some(Sha256Digest::parse(&lfs.sha256).map_err(&bad)?),
                None => None,
            };
            let size = s.lfs.as_ref().map(|l| l.size).or(s.size).ok_or_else(|| {
                bad(format!(
                    "no size for `{}` (is `?blobs=true` supported?)",
                    s.rfilename
                ))
            })?;
            let blob_id = s
                .blob_id
                .ok_or_else(|| bad(format!("no `blobId` for `{}`", s.rfilename)))?;
            files.push(RemoteFile {
                path: s.rfilename,
                size,
                blob_id,
                lfs_sha256,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(RevisionInfo {
            commit: raw.sha,
            files,
        })
    }

    /// One attempt at `GET /{repo}/resolve/{commit}/{file}` from byte `offset`, classified.
    pub fn open_file(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        offset: u64,
    ) -> Result<Opened, AttemptError> {
        let url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.endpoint,
            file.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let opened = match self.get(&url, (offset > 0).then_some(offset)) {
            Ok(o) => o,
            Err(e) if transient(&e) => {
                return Err(AttemptError::Retry {
                    after: None,
                    cause: std::io::Error::other(e),
                });
            }
            Err(e) => {
                return Err(AttemptError::Fatal(HubError::Connect {
                    url,
                    source: Box::new(e),
                }));
            }
        };
        let status = opened.response.status().as_u16();
        match status {
            200..=299 => Ok(opened),
            401 | 403 => Err(AttemptError::Fatal(HubError::Unauthorized {
                repo: repo.into(),
                status,
            })),
            404 => Err(AttemptError::Fatal(HubError::FileNotFound {
                repo: repo.into(),
                commit: commit.into(),
                file: file.into(),
            })),
            s if retryable(s) => Err(AttemptError::Retry {
                after: retry_after(&opened.response),
                cause: std::io::Error::other(format!("HTTP {s}")),
            }),
            _ => Err(AttemptError::Fatal(HubError::Status {
                what: file.into(),
                status,
                attempts: 1,
            })),
        }
    }

    /// GET with the token for the Hub's host only, following up to 5 redirects by hand.
    fn get(&self, url: &str, range_from: Option<u64>) -> Result<Opened, ureq::Error> {
        let mut url = url.to_string();
        let mut commit = None;
        for _ in 0..=5 {
            let mut req = self.agent.get(&url);
            if let Some(from) = range_from {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(token) = &self.token
                && same_origin(&url, &self.endpoint)
            {
                req = req.header("Authorization", format!("Bearer {}", token.expose()));
            }
            let response = req.call()?;
            if commit.is_none() {
                commit = header(&response, "x-repo-commit");
            }
            if !response.status().is_redirection() {
                return Ok(Opened { response, commit });
            }
            let Some(location) = header(&response, "location") else {
                return Ok(Opened { response, commit });
            };
            url = if location.starts_with('/') {
                format!("{}{location}", origin(&self.endpoint))
            } else {
                location
            };
        }
        Err(ureq::Error::TooManyRedirects)
    }
}

pub fn header<B>(response: &Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Dropped connections and timeouts are worth another attempt; a bad URL or TLS is not.
fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    )
}

/// `Retry-After` in seconds (the HTTP-date form falls back to exponential backoff).
fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    header(response, "retry-after")?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

/// Percent-encodes one path segment (revisions like `refs/pr/1` become one segment).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks that a `206` starts where we asked.
pub fn content_range_start<B>(response: &Response<B>) -> Option<u64> {
    let value = header(response, "content-range")?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_honours_retry_after_and_is_capped() {
        let p = RetryPolicy {
            retries: 5,
            base: Duration::from_millis(100),
        };
        assert_eq!(p.delay(0, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, None), Duration::from_millis(800));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(p.delay(0, Some(Duration::from_secs(7200))), MAX_DELAY);
    }

    #[test]
    fn token_only_goes_to_the_hub_origin() {
        assert!(same_origin(
            "https://huggingface.co/a/b",
            "https://huggingface.co"
        ));
        assert!(!same_origin(
            "https://cdn-lfs.hf.co/x",
            "https://huggingface.co"
        ));
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
