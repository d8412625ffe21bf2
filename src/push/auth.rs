//! Registry credentials and the `WWW-Authenticate` challenges that ask for them.
//!
//! Credentials are looked up where the site's other tools keep them, in containers-auth.json(5)'s
//! order: `--creds`, then `REGISTRY_AUTH_FILE`, podman's `auth.json`, Docker's `config.json`
//! (its per-registry credential helper, its `credsStore`, then its inline `auth`). They live
//! in a [`Secret`] from the moment they are read, so no error or log line can show them;
//! errors say where the credentials came from instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use appliance_common::Secret;
use base64::Engine as _;
use serde::Deserialize;

/// A user name and password, and where they were found (for error messages).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    pub from: String,
}

impl Credentials {
    /// `--creds USER[:PASS]`.
    pub fn from_flag(
        value: &str,
        password: impl FnOnce() -> Result<Secret, String>,
    ) -> Result<Self, String> {
        let (username, password) = match value.split_once(':') {
            Some((user, pass)) => (user.to_string(), Secret::new(pass)),
            None => (value.to_string(), password()?),
        };
        if username.is_empty() {
            return Err("`--creds` has an empty user name".to_string());
        }
        Ok(Self {
            username,
            password,
            from: "--creds".to_string(),
        })
    }

    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The auth files to search, in order, from the environment.
pub fn auth_files() -> Vec<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        return vec![file];
    }
    let mut files = Vec::new();
    if let Some(run) = var("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    let home = var("HOME");
    if let Some(config) =
        var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")))
    {
        files.push(config.join("containers/auth.json"));
    }
    if let Some(docker) = var("DOCKER_CONFIG").or_else(|| home.map(|h| h.join(".docker"))) {
        files.push(docker.join("config.json"));
    }
    files
}

/// The credentials for `registry` from the first auth file that has any.
pub fn lookup(registry: &str, files: &[PathBuf]) -> Result<Option<Credentials>, String> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(format!(
                    "Failed to read the auth file `{}`: {e}",
                    file.display()
                ));
            }
        };
        let parsed: AuthFile = serde_json::from_str(&text).map_err(|e| {
            // serde_json's message gives line and column, never the text around them.
            format!("The auth file `{}` is not valid JSON: {e}", file.display())
        })?;
        if let Some(found) = from_file(registry, file, &parsed)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn from_file(
    registry: &str,
    file: &Path,
    parsed: &AuthFile,
) -> Result<Option<Credentials>, String> {
    if let Some(helper) = parsed.cred_helpers.get(registry) {
        return helper_get(helper, registry);
    }
    let entry = parsed
        .auths
        .iter()
        .find(|(key, _)| normalize(key) == registry)
        .map(|(_, entry)| entry);
    if let Some(store) = &parsed.creds_store
        && let Some(found) = helper_get(store, registry)?
    {
        return Ok(Some(found));
    }
    let Some(entry) = entry else { return Ok(None) };
    let from = format!("`{}`", file.display());
    if entry.identitytoken.is_some() {
        return Err(format!(
            "{from} holds an OAuth identity token for {registry}; appliance signs in with a user \
             name and password (or token): give `--creds`"
        ));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: username.clone(),
            password: Secret::new(password.clone()),
            from,
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            format!("{from}: the `auth` of {registry} is not base64 of `user:password`")
        })?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        format!("{from}: the `auth` of {registry} is not base64 of `user:password`")
    })?;
    Ok(Some(Credentials {
        username: username.to_string(),
        password: Secret::new(password),
        from,
    }))
}

/// `https://host:5000/v1/` and `host:5000` name the same registry in auth files.
fn normalize(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Asks `docker-credential-<helper> get`, as Docker does; "not found" is no credentials.
fn helper_get(helper: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{helper}");
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Err(format!(
                "Failed to run the credential helper `{program}`: {e}"
            ));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives a broken pipe; its status says the rest.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("Failed to run the credential helper `{program}`: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "The credential helper `{program}` failed for {registry} ({})",
            out.status
        ));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "The credential helper `{program}` gave an answer that is not its JSON for {registry}"
        )
    })?;
    Ok(Some(Credentials {
        username: answer.username,
        password: Secret::new(answer.secret),
        from: format!("the credential helper `{program}`"),
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses the first challenge of a header value (registries send one).
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        let params = params(rest);
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Self::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Self::Bearer {
                realm: get("realm")?,
                service: get("service"),
                scope: get("scope"),
            })
        } else {
            None
        }
    }
}

/// `key="quoted, value",key2=token` pairs (RFC 9110 auth-params).
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.site/token",service="registry.site",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.site/token".into(),
                service: Some("registry.site".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn auth_files_in_docker_and_podman_forms() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let podman = dir.path().join("auth.json");
        std::fs::write(
            &podman,
            format!(
                r#"{{"auths":{{"other:5000":{{"auth":"{}"}}}}}}"#,
                b64("o:p")
            ),
        )
        .unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths":{{"https://reg.site:5000/v1/":{{"auth":"{}"}}}}}}"#,
                b64("alice:s3:cret")
            ),
        )
        .unwrap();
        let files = [
            dir.path().join("missing.json"),
            podman.clone(),
            docker.clone(),
        ];
        let found = lookup("reg.site:5000", &files).unwrap().unwrap();
        assert_eq!(found.username, "alice");
        assert_eq!(found.password.expose(), "s3:cret");
        assert!(found.from.contains("config.json"));
        assert_eq!(lookup("other:5000", &files).unwrap().unwrap().username, "o");
        assert!(lookup("nowhere:1", &files).unwrap().is_none());

        std::fs::write(&docker, r#"{"auths":{"reg.site:5000":{"auth":"!!!"}}}"#).unwrap();
        let err = lookup("reg.site:5000", &files).unwrap_err();
        assert!(err.contains("not base64"), "{err}");
        std::fs::write(&docker, "{ not json hunter2").unwrap();
        let err = lookup("reg.site:5000", &files).unwrap_err();
        assert!(
            err.contains("config.json") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn creds_flag_splits_at_the_first_colon() {
        let c = Credentials::from_flag("bob:pa:ss", || unreachable!()).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("bob", "pa:ss"));
        let c = Credentials::from_flag("bob", || Ok(Secret::new("asked"))).unwrap();
        assert_eq!(c.password.expose(), "asked");
        assert!(format!("{c:?}").contains("****") && !format!("{c:?}").contains("asked"));
    }
}
