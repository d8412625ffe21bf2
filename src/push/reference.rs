//! `REGISTRY/REPO[:TAG]`, the one form `push` takes: the registry is always named, since a
//! site's registry is never Docker Hub and guessing one would upload weights to the wrong place.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// Where to push: registry host (with port), repository path, optional tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
}

/// The distribution spec's repository name grammar.
static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("valid regex")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("valid regex"));
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
        .expect("valid regex")
});

impl Target {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('@') {
            return Err(format!(
                "`{text}`: give a tag or none, not a digest: the image is always pushed by \
                 digest as well, and its digest is the tarball's"
            ));
        }
        let Some((registry, rest)) = text.split_once('/') else {
            return Err(format!(
                "`{text}` names no registry: give REGISTRY/REPO[:TAG], e.g. \
                 `registry.site.internal:5000/models/llama`"
            ));
        };
        // Docker's rule: the first component is a registry only if it looks like a host.
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost")
            || !HOST.is_match(registry)
        {
            return Err(format!(
                "`{text}`: `{registry}` is not a registry host; give REGISTRY/REPO[:TAG] with the \
                 registry's host name (and port), e.g. `registry.site.internal:5000/{rest}`"
            ));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (rest, None),
        };
        if !REPOSITORY.is_match(repository) {
            return Err(format!(
                "`{text}`: `{repository}` is not a repository name (lowercase letters, digits \
                 and `._-` separators, in `/`-separated parts)"
            ));
        }
        if let Some(tag) = tag
            && !TAG.is_match(tag)
        {
            return Err(format!(
                "`{text}`: `{tag}` is not a tag (letters, digits, `_.-`, at most 128, not \
                 starting with `.` or `-`)"
            ));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    /// `registry/repository` without a tag.
    pub fn repository_reference(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// The tag part of an image reference such as `appliance/demo:1.0` (what `index.json` records).
pub fn tag_of(reference: &str) -> Option<&str> {
    let (_, tag) = reference.rsplit_once(':')?;
    (!tag.contains('/') && TAG.is_match(tag)).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_repository_and_tag() {
        let t = Target::parse("registry.site:5000/models/llama-3.1:v2").unwrap();
        assert_eq!(t.registry, "registry.site:5000");
        assert_eq!(t.repository, "models/llama-3.1");
        assert_eq!(t.tag.as_deref(), Some("v2"));
        assert_eq!(t.to_string(), "registry.site:5000/models/llama-3.1:v2");
        let t = Target::parse("127.0.0.1:5000/demo").unwrap();
        assert_eq!((t.registry.as_str(), t.tag), ("127.0.0.1:5000", None));
        assert_eq!(Target::parse("localhost/a/b").unwrap().repository, "a/b");
    }

    #[test]
    fn what_is_refused_says_why() {
        for (text, why) in [
            ("models/llama:1", "is not a registry host"),
            ("llama", "names no registry"),
            ("r.site/Llama", "is not a repository name"),
            ("r.site/llama:-x", "is not a tag"),
            ("r.site/llama@sha256:00", "not a digest"),
            ("r.site/", "is not a repository name"),
        ] {
            let err = Target::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn tag_of_a_reference() {
        assert_eq!(tag_of("appliance/demo:1.0"), Some("1.0"));
        assert_eq!(tag_of("host:5000/demo"), None);
        assert_eq!(tag_of("demo"), None);
    }
}
