//! `bench/results/reliability.json` is written by several campaigns: the fault campaign
//! (`lethe-worker/tests/chaos.rs`), the bad-input suite (`lethe-coordinator/tests/bad_input.rs`),
//! the overload tests and the malformed-objects test. Each merges its keys into the file and keeps
//! the others'.

use std::path::Path;

/// Writes `report`'s keys into the JSON object at `path`, keeping the keys already there, and
/// sums the campaigns' crash counts into `crashes`.
pub fn merge_into(path: &Path, report: &serde_json::Value) {
    let mut merged: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    for (key, value) in report.as_object().expect("a report is a JSON object") {
        merged.insert(key.clone(), value.clone());
    }
    let crashes: u64 = [
        "chaos_crashes",
        "bad_input_crashes",
        "malformed_objects_worker_crashes",
    ]
    .iter()
    .filter_map(|key| merged.get(*key).and_then(|v| v.as_u64()))
    .sum();
    merged.insert("crashes".into(), crashes.into());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the results directory");
    }
    let text =
        serde_json::to_string_pretty(&serde_json::Value::Object(merged)).expect("JSON serialises");
    std::fs::write(path, text + "\n").expect("write the reliability figures");
}
