//! The build's first step: the manifest, the output path, the signing key, the server binary
//! and (for CUDA images) the launcher, each checked before any model byte is read.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{BuildSettings, Session, sign};
use crate::export;
use crate::layers::plan::PlannedFile;
use crate::manifest::{Device, Manifest};
use crate::server_binary::{self, ServerBinary};
use crate::sign::Signer;

/// What the build packages besides the model, all found and checked.
pub struct Resolved {
    pub manifest: Manifest,
    pub output: PathBuf,
    /// `None` for a manifest without `[signing]`.
    pub signer: Option<Signer>,
    pub server: ServerBinary,
    /// The CUDA image's entrypoint.
    pub launcher: Option<PlannedFile>,
}

pub fn resolve(session: &Session) -> Result<Resolved> {
    let (settings, log) = (session.settings, session.log);
    let manifest = Manifest::load(&settings.manifest, settings.source_date_epoch.as_deref())?;
    let output = output_path(settings, &manifest)?;
    export::check_output(&output)?;
    // The key is decrypted first: a wrong password must fail before hours of hashing.
    let signer = match &manifest.signing {
        Some(signing) => Some(sign::load_signer(&signing.key, &settings.key_password)?),
        None => None,
    };

    let server_path = server_binary::locate(manifest.server.binary.as_deref(), &settings.exe_dir)?;
    let server = server_binary::inspect(&server_path)?;
    if manifest.server.device == Device::Cuda && !server.info.has_feature("cuda") {
        bail!(
            "`server.device = \"cuda\"` but `{}` was built without the `cuda` feature (features: [{}]); \
             build it with `cargo build --release -p appliance-server --features cuda` and set `server.binary`",
            server.path.display(),
            server.info.features.join(", ")
        );
    }
    if signer.is_some() && server.info.crates.is_empty() {
        log.step(&format!(
            "Warning: `{}` records no crate list (its build could not run `cargo tree`); the SBOM \
             will list the server without its dependencies",
            server.path.display()
        ));
    }
    let launcher = if manifest.server.device == Device::Cuda {
        Some(cuda_launcher(&manifest, &server)?)
    } else {
        None
    };
    log.step(&format!(
        "Server: {} {} ({})",
        server.path.display(),
        server.info.version,
        if server.info.features.is_empty() {
            "cpu".to_string()
        } else {
            server.info.features.join(", ")
        }
    ));
    Ok(Resolved {
        manifest,
        output,
        signer,
        server,
        launcher,
    })
}

/// `--output`, else `image.output`, else `dist/<name>-<tag>.tar`.
fn output_path(settings: &BuildSettings, manifest: &Manifest) -> Result<PathBuf> {
    let reference = &manifest.image.reference;
    let output = match (&settings.output, &manifest.image.output) {
        (Some(path), _) | (None, Some(path)) => path.clone(),
        (None, None) => PathBuf::from("dist").join(format!(
            "{}-{}.tar",
            reference.short_name(),
            reference.tag()
        )),
    };
    std::path::absolute(&output)
        .with_context(|| format!("Invalid output path `{}`", output.display()))
}

/// The launcher to pack as a CUDA image's entrypoint: `server.launcher`, else
/// `appliance-launcher` beside the server binary (scripts/build-cuda-server builds both into one
/// dir). The server must carry its CUDA build facts, which the launcher and the labels rely on.
fn cuda_launcher(manifest: &Manifest, server: &ServerBinary) -> Result<PlannedFile> {
    if server.info.cuda.is_none() {
        bail!(
            "`{}` has the `cuda` feature but no CUDA build facts in its build-info marker; rebuild \
             it with scripts/build-cuda-server",
            server.path.display()
        );
    }
    let path = match &manifest.server.launcher {
        Some(path) => path.clone(),
        None => server
            .path
            .parent()
            .map(|dir| dir.join("appliance-launcher"))
            .unwrap_or_default(),
    };
    let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file());
    let Some(meta) = meta else {
        bail!(
            "A `cuda` image needs `appliance-launcher` as its entrypoint, but `{}` does not exist; \
             build it with scripts/build-cuda-server (`cargo build --release -p \
             appliance-launcher`) or set `server.launcher`",
            path.display()
        );
    };
    Ok(PlannedFile {
        rel_path: "appliance-launcher".into(),
        host_path: path,
        size: meta.len(),
    })
}
