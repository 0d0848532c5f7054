//! What an operation's result is built from: the reports and artifacts of its succeeded
//! tasks, and the model version a deletion run wrote. The coordinator names the task kinds
//! each operation kind's result comes from; the store only reads them back, typed.

use lethe_proto::lethe::v1::TaskReport;
use prost::Message;
use sqlx::Row;
use uuid::Uuid;

use crate::deletions::{hash, version_row, VERSION_SELECT};
use crate::{ModelVersion, Store, StoreError, StoredRef};

/// A succeeded task, with its report and the objects it wrote (by name).
#[derive(Clone, Debug)]
pub struct ReportedTask {
    pub id: Uuid,
    pub kind: String,
    pub report: Option<TaskReport>,
    pub artifacts: Vec<(String, StoredRef)>,
}

impl ReportedTask {
    pub fn artifact(&self, name: &str) -> Option<&StoredRef> {
        self.artifacts
            .iter()
            .find(|(artifact, _)| artifact == name)
            .map(|(_, object)| object)
    }
}

/// A stored `tasks.report`, decoded.
pub(crate) fn decode_report(bytes: Option<Vec<u8>>) -> Result<Option<TaskReport>, StoreError> {
    bytes
        .map(|bytes| TaskReport::decode(bytes.as_slice()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("a task's report: {e}")))
}

impl Store {
    /// The succeeded tasks of `job_id` whose kind is one of `kinds`, in creation order.
    pub async fn reported_tasks(
        &self,
        job_id: Uuid,
        kinds: &[&str],
    ) -> Result<Vec<ReportedTask>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.kind, t.report, \
                    coalesce(array_agg(a.name ORDER BY a.name) FILTER (WHERE a.id IS NOT NULL), '{}') AS names, \
                    coalesce(array_agg(a.uri ORDER BY a.name) FILTER (WHERE a.id IS NOT NULL), '{}') AS uris, \
                    coalesce(array_agg(a.sha256 ORDER BY a.name) FILTER (WHERE a.id IS NOT NULL), '{}') AS hashes, \
                    coalesce(array_agg(a.size_bytes ORDER BY a.name) FILTER (WHERE a.id IS NOT NULL), '{}') AS sizes \
             FROM tasks t LEFT JOIN artifacts a ON a.task_id = t.id \
             WHERE t.job_id = $1 AND t.state = 'succeeded' AND t.kind = ANY($2) \
             GROUP BY t.id ORDER BY t.id",
        )
        .bind(job_id)
        .bind(kinds)
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|row| {
                let names: Vec<String> = row.try_get("names")?;
                let uris: Vec<String> = row.try_get("uris")?;
                let hashes: Vec<Option<Vec<u8>>> = row.try_get("hashes")?;
                let sizes: Vec<Option<i64>> = row.try_get("sizes")?;
                let artifacts = names
                    .into_iter()
                    .zip(uris)
                    .zip(hashes.into_iter().zip(sizes))
                    .map(|((name, uri), (sha256, size_bytes))| {
                        Ok((
                            name,
                            StoredRef {
                                uri,
                                sha256: hash(sha256)?,
                                size_bytes,
                            },
                        ))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let report = decode_report(row.try_get("report")?)?;
                Ok(ReportedTask {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    report,
                    artifacts,
                })
            })
            .collect()
    }

    /// The model version a deletion run wrote, once it succeeded.
    pub async fn version_of_run(&self, run_id: Uuid) -> Result<Option<ModelVersion>, StoreError> {
        sqlx::query(&format!("{VERSION_SELECT} WHERE v.run_id = $1"))
            .bind(run_id)
            .fetch_optional(&self.reads)
            .await?
            .as_ref()
            .map(version_row)
            .transpose()
    }
}
