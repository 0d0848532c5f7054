//! The human summary of a done operation, from its typed response: where a deletion's model
//! version is and its audit as a table (KLoM and accuracy per split, against retrains); an
//! index build's index and figures; a noop's tasks.

use lethe_proto::lethe::v1::{
    AuditFigures, AuditReport, DeletionMethod, DeletionResult, IndexBuildResult, IndexEstimator,
    NoopResult, SplitAudit,
};
use prost_types::Any;

/// Lines describing an operation's response; a type this client does not know is named.
pub(crate) fn response(any: &Any) -> Vec<String> {
    if let Ok(result) = any.to_msg::<DeletionResult>() {
        return deletion(&result);
    }
    if let Ok(result) = any.to_msg::<IndexBuildResult>() {
        return index_build(&result);
    }
    if let Ok(result) = any.to_msg::<NoopResult>() {
        return vec![format!(
            "{} no-op tasks ran, {} artifact bytes written",
            result.tasks, result.artifact_bytes
        )];
    }
    vec![format!("a response of type {}", any.type_url)]
}

pub(crate) fn deletion(result: &DeletionResult) -> Vec<String> {
    let version = result.version.clone().unwrap_or_default();
    let retrained = result.method() == DeletionMethod::Retrain;
    let mut lines = vec![format!(
        "version {} (from version {}): {} examples forgotten in all{}",
        version.version,
        result.from_version,
        version.forgotten_count,
        if retrained {
            " (retrained from scratch: a new anchor)"
        } else {
            ""
        }
    )];
    lines.push(format!(
        "  model: {} at {} ({} bytes, sha256 {}); `lethe download {0} --out FILE` fetches it",
        version.name,
        version.uri,
        version.size_bytes,
        hex::encode(&version.sha256)
    ));
    if let Some(line) = confidence(result) {
        lines.push(line);
    }
    if let Some(audit) = &result.audit {
        lines.extend(audit_lines(audit));
    }
    lines
}

/// The confidence the run had in its predicted targets, and what the request's minimum made
/// of it.
fn confidence(result: &DeletionResult) -> Option<String> {
    if let Some(retrain) = &result.retrain {
        let (confidence, minimum) = (retrain.confidence.as_ref()?, retrain.min_confidence?);
        return Some(format!(
            "  confidence in the predicted targets {:.3}, below the request's minimum \
             {minimum}: retrained from scratch instead of DMM",
            confidence.confidence
        ));
    }
    let matching = result.matching.as_ref()?;
    let confidence = matching.confidence.as_ref()?.confidence;
    Some(match matching.min_confidence {
        Some(minimum) => format!(
            "  confidence in the predicted targets {confidence:.3} (the request's minimum: {minimum})"
        ),
        None => format!("  confidence in the predicted targets {confidence:.3}"),
    })
}

fn audit_lines(report: &AuditReport) -> Vec<String> {
    let (oracles, held_out) = (report.oracles, report.held_out_oracles);
    let mut lines = Vec::new();
    match (report.method(), &report.result) {
        (DeletionMethod::Dmm, Some(result)) => lines.push(format!(
            "  audit: DMM applied to {} originals, against {oracles} retrains without the \
             forgotten examples ({held_out} more held out for the noise floor)",
            result.models
        )),
        _ => lines.push(format!(
            "  audit: a retrain from scratch is exact; {oracles} retrains and {held_out} held \
             out measure the noise floor"
        )),
    }
    lines.push(
        "  |                            | forget KLoM P95 | retain KLoM P95 | val KLoM P95 | forget acc | retain acc | val acc |"
            .into(),
    );
    lines.push(
        "  |----------------------------|-----------------|-----------------|--------------|------------|------------|---------|"
            .into(),
    );
    for (figures, name) in [
        (&report.result, "DMM"),
        (&report.do_nothing, "do nothing (originals)"),
        (&report.noise_floor, "retrain (held-out oracles)"),
    ] {
        if let Some(row) = figures.as_ref().and_then(|f| row(name, f)) {
            lines.push(row);
        }
    }
    if let Some(closure) = report.gap_closure {
        lines.push(format!(
            "  gap closure on the forget set: {closure:.2} (0: no better than doing nothing, \
             1: as close to the retrains as they are to each other)"
        ));
    }
    if let Some(forget) = report.version.as_ref().and_then(|v| v.forget.as_ref()) {
        lines.push(format!(
            "  this version's forget-set margins: mean distance to the retrains' {:.3} \
             before, {:.3} after",
            forget.margin_gap_before, forget.margin_gap_after
        ));
    }
    lines
}

fn row(name: &str, figures: &AuditFigures) -> Option<String> {
    let split = |split: &Option<SplitAudit>| -> Option<(f64, f64)> {
        let split = split.as_ref()?;
        Some((split.klom.as_ref()?.p95, split.accuracy))
    };
    let (forget, retain, val) = (
        split(&figures.forget)?,
        split(&figures.retain)?,
        split(&figures.val)?,
    );
    Some(format!(
        "  | {name:<26} | {:>15.3} | {:>15.3} | {:>12.3} | {:>10.3} | {:>10.3} | {:>7.3} |",
        forget.0, retain.0, val.0, forget.1, retain.1, val.1
    ))
}

fn index_build(result: &IndexBuildResult) -> Vec<String> {
    let report = result.report.clone().unwrap_or_default();
    let estimator = match report.estimator() {
        IndexEstimator::Trak => "TRAK",
        _ => "subsample",
    };
    let index = result.index.clone().unwrap_or_default();
    let mut lines = vec![
        format!(
            "{estimator} index of {} training examples × {} targets, from {} models \
             ({} subset retrains, validation accuracy {:.3})",
            report.num_train,
            report.num_targets,
            report.estimation_models,
            report.members,
            report.subset_val_accuracy_mean
        ),
        format!(
            "  index: {} ({} bytes, sha256 {})",
            index.uri,
            index.size_bytes,
            hex::encode(&index.sha256)
        ),
    ];
    lines.push(match &result.noise_model {
        Some(noise) => format!("  noise model: {}", noise.uri),
        None => "  no noise model: deletion requests on it cannot ask for min_confidence".into(),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_proto::lethe::v1::{
        FullRetrainReport, KlomStats, MarginGap, MatchReport, ModelVersion, TargetConfidence,
        VersionMargins,
    };

    fn split(klom: f64, accuracy: f64) -> Option<SplitAudit> {
        Some(SplitAudit {
            klom: Some(KlomStats {
                points: 4,
                p95: klom,
                p99: klom,
                mean: klom,
            }),
            accuracy,
        })
    }

    fn audited(klom: f64) -> Option<AuditFigures> {
        Some(AuditFigures {
            models: 8,
            oracles: 8,
            forget: split(klom, 0.5),
            retain: split(0.1, 0.9),
            val: split(0.2, 0.8),
        })
    }

    fn version(retrained: bool) -> DeletionResult {
        DeletionResult {
            run: "operations/r".into(),
            version: Some(ModelVersion {
                name: "models/m/versions/1".into(),
                version: 1,
                uri: "file:///a/model-v1.safetensors".into(),
                sha256: vec![0xab],
                forgotten_count: 50,
                run: "operations/r".into(),
                size_bytes: 12,
            }),
            method: if retrained {
                DeletionMethod::Retrain
            } else {
                DeletionMethod::Dmm
            } as i32,
            ..DeletionResult::default()
        }
    }

    #[test]
    fn a_deletion_result_reads_as_a_version_and_an_audit_table() {
        let mut result = version(false);
        result.audit = Some(AuditReport {
            method: DeletionMethod::Dmm as i32,
            oracles: 8,
            held_out_oracles: 4,
            result: audited(2.5),
            do_nothing: audited(7.0),
            noise_floor: audited(1.0),
            gap_closure: Some(0.75),
            version: Some(VersionMargins {
                forget: Some(MarginGap {
                    points: 4,
                    margin_gap_before: 0.6,
                    margin_gap_after: 0.3,
                    gap_closed: 0.5,
                }),
                ..VersionMargins::default()
            }),
            ..AuditReport::default()
        });
        let lines = response(&Any::from_msg(&result).unwrap());
        assert!(lines[0].starts_with("version 1 (from version 0): 50 examples forgotten"));
        assert!(lines[1].contains("models/m/versions/1 at file:///a/model-v1.safetensors"));
        let dmm = lines.iter().find(|l| l.contains("| DMM")).unwrap();
        assert!(dmm.contains("2.500") && dmm.contains("0.900"), "{dmm}");
        assert!(lines
            .iter()
            .any(|l| l.contains("do nothing") && l.contains("7.000")));
        assert!(lines
            .iter()
            .any(|l| l.contains("gap closure") && l.contains("0.75")));
        assert!(lines
            .iter()
            .any(|l| l.contains("0.600 before, 0.300 after")));
    }

    #[test]
    fn the_confidence_is_shown_with_what_the_minimum_made_of_it() {
        let confidence = |value| {
            Some(TargetConfidence {
                confidence: value,
                ..TargetConfidence::default()
            })
        };
        let mut confident = version(false);
        confident.matching = Some(MatchReport {
            confidence: confidence(0.912),
            min_confidence: Some(0.5),
            ..MatchReport::default()
        });
        let lines = deletion(&confident);
        assert!(
            lines[2].contains("0.912") && lines[2].contains("minimum: 0.5"),
            "{lines:?}"
        );
        let mut retrained = version(true);
        retrained.retrain = Some(FullRetrainReport {
            confidence: confidence(0.3),
            min_confidence: Some(0.5),
            ..FullRetrainReport::default()
        });
        let lines = deletion(&retrained);
        assert!(
            lines[2].contains("retrained from scratch instead of DMM"),
            "{lines:?}"
        );
    }

    #[test]
    fn without_an_audit_only_the_version_is_shown() {
        let lines = deletion(&version(true));
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("a new anchor"));
        let noop = response(&Any::from_msg(&NoopResult::default()).unwrap());
        assert!(noop[0].contains("no-op tasks"), "{noop:?}");
    }
}
