//! The build's third step: the userland the server needs and the layers the image will have,
//! decided before the tarball is opened.

use anyhow::{Result, bail};

use super::{Fetched, Resolved, Session};
use crate::layers::LayerSpec;
use crate::layers::plan::{self, Account, PlanInput, PlannedFile};
use crate::userland::{self, Userland};

/// Where the packaged files go, for the steps after the layers are written.
pub struct Planned {
    /// Its `entries` are moved into the layer plan; the rest describes the image.
    pub userland: Userland,
    /// `<models root>/<served model name>`, without a leading `/`.
    pub model_dir: String,
}

pub fn plan(
    session: &Session,
    resolved: &Resolved,
    fetched: &Fetched,
) -> Result<(Planned, Vec<LayerSpec>)> {
    let log = session.log;
    let Resolved {
        manifest,
        server,
        launcher,
        ..
    } = resolved;
    let mut executables = vec![server.path.clone()];
    executables.extend(launcher.iter().map(|l| l.host_path.clone()));
    let mut userland = userland::resolve(&manifest.runtime.base, &executables)?;
    if !userland.library_path.is_empty() {
        log.step(&format!(
            "Userland: libraries found through ld.so.conf; the image sets LD_LIBRARY_PATH={}",
            userland.library_path.join(":")
        ));
    }
    if !userland.files.is_empty() {
        log.step(&format!(
            "Userland: {} files from the build host",
            userland.files.len()
        ));
    }
    if let Some(base) = &userland.base {
        let arch = server.info.oci_architecture();
        if base.architecture != arch {
            bail!(
                "The base image `{}` is for `{}`, but the server is built for `{arch}`",
                base.label(),
                base.architecture
            );
        }
        log.step(&format!(
            "Userland: base image {} ({} layers, verified; it has every library the server needs)",
            base.label(),
            base.layers.len()
        ));
    }

    let model_dir = format!(
        "{}/{}",
        plan::MODELS_ROOT,
        manifest.server.served_model_name
    );
    let specs = plan::plan(PlanInput {
        account: &Account {
            user: manifest.runtime.user.clone(),
            uid: manifest.runtime.uid,
            gid: manifest.runtime.gid,
        },
        model_dir: &model_dir,
        model_files: &fetched.model.files,
        tokenizer: fetched.tokenizer.as_ref().map(|t| plan::TokenizerFiles {
            source: t.origin.label(),
            files: &t.files,
        }),
        userland: std::mem::take(&mut userland.entries),
        server: PlannedFile {
            rel_path: "appliance-server".into(),
            host_path: server.path.clone(),
            size: server.size,
        },
        launcher: launcher.clone(),
        compression: manifest.image.compression,
    });
    Ok((
        Planned {
            userland,
            model_dir,
        },
        specs,
    ))
}
