//! The human summary of a finished deletion request: where its model version is, and its
//! audit as a table (KLoM and accuracy per split, against retrains).

use serde_json::Value;

/// Lines describing a deletion request's result, or `None` for other results.
pub(crate) fn deletion(result: &Value) -> Option<Vec<String>> {
    let version = result.get("model_version")?.as_i64()?;
    let mut lines = vec![format!(
        "version {version}: {} examples forgotten in all{}",
        result["forgotten_total"],
        if result["retrained"] == true {
            " (retrained from scratch: a new anchor)"
        } else {
            ""
        }
    )];
    lines.push(format!(
        "  model: {} ({} bytes, sha256 {})",
        text(&result["model_uri"]),
        result["model_size_bytes"],
        text(&result["model_sha256"])
    ));
    let report = &result["report"];
    if let Some(line) = confidence(report) {
        lines.push(line);
    }
    if let Some(audit) = audit(report) {
        lines.extend(audit);
    }
    Some(lines)
}

/// The confidence the run had in its predicted targets, and what the request's minimum made
/// of it. The audit's report carries it beside the closure; without an audit, the match's.
fn confidence(report: &Value) -> Option<String> {
    let confidence = report["confidence"]["confidence"].as_f64()?;
    let minimum = report["min_confidence"].as_f64();
    Some(match minimum {
        Some(minimum) if report["retrained_instead"] == true => format!(
            "  confidence in the predicted targets {confidence:.3}, below the request's minimum \
             {minimum}: retrained from scratch instead of DMM"
        ),
        Some(minimum) => format!(
            "  confidence in the predicted targets {confidence:.3} (the request's minimum: {minimum})"
        ),
        None => format!("  confidence in the predicted targets {confidence:.3}"),
    })
}

fn audit(report: &Value) -> Option<Vec<String>> {
    let oracles = report.get("oracles")?.as_u64()?;
    let held_out = report["held_out_oracles"].as_u64().unwrap_or(0);
    let mut lines = Vec::new();
    match report["method"].as_str() {
        Some("dmm") => lines.push(format!(
            "  audit: DMM applied to {} originals, against {oracles} retrains without the \
             forgotten examples ({held_out} more held out for the noise floor)",
            report["models"]
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
    for (key, name) in [
        ("result", "DMM"),
        ("do_nothing", "do nothing (originals)"),
        ("noise_floor", "retrain (held-out oracles)"),
    ] {
        if let Some(row) = row(name, &report[key]) {
            lines.push(row);
        }
    }
    if let Some(closure) = report["gap_closure"].as_f64() {
        lines.push(format!(
            "  gap closure on the forget set: {closure:.2} (0: no better than doing nothing, \
             1: as close to the retrains as they are to each other)"
        ));
    }
    let version = &report["version"]["forget"];
    if let (Some(before), Some(after)) = (
        version["margin_gap_before"].as_f64(),
        version["margin_gap_after"].as_f64(),
    ) {
        lines.push(format!(
            "  this version's forget-set margins: mean distance to the retrains' {before:.3} \
             before, {after:.3} after"
        ));
    }
    Some(lines)
}

fn row(name: &str, audit: &Value) -> Option<String> {
    let klom = |split: &str| audit[split]["klom"]["p95"].as_f64();
    let accuracy = |split: &str| audit[split]["accuracy"].as_f64();
    Some(format!(
        "  | {name:<26} | {:>15.3} | {:>15.3} | {:>12.3} | {:>10.3} | {:>10.3} | {:>7.3} |",
        klom("forget")?,
        klom("retain")?,
        klom("val")?,
        accuracy("forget")?,
        accuracy("retain")?,
        accuracy("val")?
    ))
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(klom: f64, accuracy: f64) -> Value {
        json!({"klom": {"points": 4, "p95": klom, "p99": klom, "mean": klom}, "accuracy": accuracy})
    }

    fn audited(klom: f64) -> Value {
        json!({"models": 8, "oracles": 8, "forget": split(klom, 0.5),
               "retain": split(0.1, 0.9), "val": split(0.2, 0.8)})
    }

    #[test]
    fn a_deletion_result_reads_as_a_version_and_an_audit_table() {
        let result = json!({
            "run": "r", "model_version": 1, "model_uri": "file:///a/model-v1.safetensors",
            "model_sha256": "ab", "model_size_bytes": 12, "forgotten_total": 50,
            "retrained": false,
            "report": {
                "method": "dmm", "models": 8, "oracles": 8, "held_out_oracles": 4,
                "result": audited(2.5), "do_nothing": audited(7.0), "noise_floor": audited(1.0),
                "gap_closure": 0.75,
                "version": {"forget": {"margin_gap_before": 0.6, "margin_gap_after": 0.3}}
            }
        });
        let lines = deletion(&result).unwrap();
        assert!(lines[0].starts_with("version 1: 50 examples forgotten"));
        assert!(lines[1].contains("file:///a/model-v1.safetensors"));
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
        let confident = json!({"model_version": 1, "model_uri": "u", "model_sha256": "ab",
                               "model_size_bytes": 1, "forgotten_total": 3, "retrained": false,
                               "report": {"confidence": {"confidence": 0.912}, "min_confidence": 0.5}});
        let lines = deletion(&confident).unwrap();
        assert!(
            lines[2].contains("0.912") && lines[2].contains("minimum: 0.5"),
            "{lines:?}"
        );
        let retrained = json!({"model_version": 1, "model_uri": "u", "model_sha256": "ab",
                               "model_size_bytes": 1, "forgotten_total": 3, "retrained": true,
                               "report": {"confidence": {"confidence": 0.3}, "min_confidence": 0.5,
                                          "retrained_instead": true}});
        let lines = deletion(&retrained).unwrap();
        assert!(
            lines[2].contains("retrained from scratch instead of DMM"),
            "{lines:?}"
        );
    }

    #[test]
    fn without_an_audit_only_the_version_is_shown() {
        let result = json!({"model_version": 2, "model_uri": "u", "model_sha256": "ab",
                            "model_size_bytes": 1, "forgotten_total": 3, "retrained": true,
                            "report": {"version": 2}});
        let lines = deletion(&result).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("a new anchor"));
        assert!(deletion(&json!({"members": 4})).is_none());
    }
}
