//! The build's last step: the tarball finished with its documents, then the lock and the
//! signature sidecars written beside it, so none of them exists without the others.

use anyhow::{Context, Result};

use super::sign::{self, StagedSidecars};
use super::{Assembled, BuildOutcome, Evaluated, Resolved, Written};
use crate::layers::Layer;
use crate::summary::{self, ImageSummary, LayerSummary};

pub fn commit(
    resolved: Resolved,
    written: Written,
    evaluated: Evaluated,
    assembled: Assembled,
    sidecars: Option<StagedSidecars>,
) -> Result<BuildOutcome> {
    let Written {
        writer,
        layers,
        lock_update,
        ..
    } = written;
    let output = &resolved.output;
    writer
        .finish(&assembled.docs)
        .with_context(|| format!("Failed to export the image to `{}`", output.display()))?;
    if let Some((lock, path)) = lock_update {
        lock.write(&path)?;
    }
    match sidecars {
        Some(sidecars) => sidecars.commit()?,
        None => sign::remove_stale_sidecars(output)?,
    }
    let tarball_size = std::fs::metadata(output)
        .with_context(|| format!("Failed to read `{}`", output.display()))?
        .len();
    let image = image_summary(&resolved, &layers, evaluated, assembled);
    Ok(BuildOutcome {
        output: resolved.output,
        tarball_size,
        image,
        delta: None,
    })
}

fn image_summary(
    resolved: &Resolved,
    layers: &[Layer],
    evaluated: Evaluated,
    assembled: Assembled,
) -> ImageSummary {
    let Assembled { model, run, docs } = assembled;
    ImageSummary {
        reference: resolved.manifest.image.reference.name_tag(),
        manifest_digest: docs.manifest.digest.prefixed(),
        config_digest: docs.config.digest.prefixed(),
        architecture: run.architecture,
        created: run.created,
        user: run.user,
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        env: run.env,
        exposed_ports: vec![format!("{}/tcp", resolved.manifest.server.port)],
        healthcheck: Some(run.healthcheck),
        labels: run.labels,
        layers: layers
            .iter()
            .map(|l| LayerSummary {
                digest: l.sums.digest.prefixed(),
                diff_id: l.sums.diff_id.prefixed(),
                size: l.sums.size,
                media_type: l.spec.media_type().to_string(),
                created_by: l.spec.description.clone(),
            })
            .collect(),
        model: Some(model),
        // What the image carries: results are in it only when signed.
        evaluation: evaluated
            .test_result
            .as_ref()
            .and_then(summary::EvaluationSummary::from_predicate),
        delta_bundle: false,
    }
}
