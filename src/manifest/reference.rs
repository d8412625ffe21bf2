//! Defines `ImageRef`: an image name and tag validated by Docker's own reference grammar.
//!
//! Validation is delegated to `oci-spec`'s port of distribution/reference, so a name this
//! accepts is one `docker load`, skopeo and podman accept too.

use oci_spec::distribution::Reference;

/// A validated `name:tag`, with the fully-qualified form loaders disagree least about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    name: String,
    tag: String,
    full: String,
}

impl ImageRef {
    /// Errors carry the manifest field at fault, so the message can name it.
    pub fn new(name: &str, tag: &str) -> Result<Self, (&'static str, String)> {
        if name.is_empty() {
            return Err(("image.name", "must not be empty".into()));
        }
        if name.contains('@')
            || name
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
        {
            return Err((
                "image.name",
                format!("`{name}` must not carry a tag or digest; put the tag in `image.tag`"),
            ));
        }
        if !valid_tag(tag) {
            return Err((
                "image.tag",
                format!(
                    "invalid tag `{tag}`: up to 128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
                ),
            ));
        }
        let parsed = Reference::try_from(format!("{name}:{tag}")).map_err(|e| {
            (
                "image.name",
                format!(
                    "invalid image name `{name}`: {e} (lowercase path components separated by `/`, optionally after a registry host such as `registry.local:5000/`)"
                ),
            )
        })?;
        Ok(Self {
            name: name.to_string(),
            tag: tag.to_string(),
            full: parsed.whole(),
        })
    }

    /// The name as the user wrote it (`registry.local/llm/demo`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `name:tag` as written; what `docker images` shows and `manifest.json` carries.
    pub fn name_tag(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    /// Fully qualified (`docker.io/library/x:tag` for a bare `x`): podman and skopeo need it in
    /// `index.json`, where a short name would become `localhost/...`.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The last path component, used for the default output file name.
    pub fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

/// Docker's tag grammar: `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_paths_and_short_names() {
        let r = ImageRef::new("registry.local:5000/llm/qwen2.5-0.5b", "1.0").unwrap();
        assert_eq!(r.full(), "registry.local:5000/llm/qwen2.5-0.5b:1.0");
        assert_eq!(r.short_name(), "qwen2.5-0.5b");
        let r = ImageRef::new("demo", "latest").unwrap();
        assert_eq!(r.full(), "docker.io/library/demo:latest");
        assert_eq!(r.name_tag(), "demo:latest");
    }

    #[test]
    fn rejects_what_docker_rejects() {
        for (name, tag, field) in [
            ("Registry.local/UPPER", "1", "image.name"),
            ("demo", "-bad", "image.tag"),
            ("demo", "", "image.tag"),
            ("demo", "a b", "image.tag"),
            ("demo:1.0", "1.0", "image.name"),
            ("demo@sha256:00", "1", "image.name"),
            ("a//b", "1", "image.name"),
            ("", "1", "image.name"),
            ("demo", &"x".repeat(129), "image.tag"),
        ] {
            let err = ImageRef::new(name, tag).unwrap_err();
            assert_eq!(err.0, field, "{name}:{tag} -> {err:?}");
        }
    }
}
