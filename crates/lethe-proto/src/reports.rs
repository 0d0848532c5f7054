//! Which task kind each [`TaskReport`] belongs to: the runner refuses to send a report of
//! another kind than its task, so that an operation's result is built only from the reports
//! its kind expects.

use crate::lethe::v1::task_report::Report;
use crate::lethe::v1::TaskReport;
use crate::tasks;

/// The noop task kind (lethe-runner's built-in handler).
pub const NOOP: &str = "noop";

impl Report {
    /// The task kind that writes this report.
    pub fn task_kind(&self) -> &'static str {
        match self {
            Report::Noop(_) => NOOP,
            Report::Retrain(_) => tasks::RETRAIN,
            Report::BuildIndex(_) => tasks::BUILD_INDEX,
            Report::TrakCheckpoints(_) => tasks::TRAK_CHECKPOINTS,
            Report::TrakShard(_) => tasks::TRAK_SHARD,
            Report::Predict(_) => tasks::PREDICT,
            Report::Match(_) => tasks::MATCH,
            Report::Audit(_) => tasks::AUDIT,
            Report::FullRetrain(_) => tasks::FULL_RETRAIN,
        }
    }
}

impl TaskReport {
    pub fn of(report: impl Into<Report>) -> Self {
        TaskReport {
            report: Some(report.into()),
        }
    }
}

macro_rules! report_from {
    ($($message:ident => $variant:ident),* $(,)?) => {
        $(impl From<crate::lethe::v1::$message> for Report {
            fn from(report: crate::lethe::v1::$message) -> Self {
                Report::$variant(report)
            }
        })*
    };
}

report_from! {
    NoopReport => Noop,
    RetrainReport => Retrain,
    IndexReport => BuildIndex,
    TrakCheckpointsReport => TrakCheckpoints,
    TrakShardReport => TrakShard,
    PredictReport => Predict,
    MatchReport => Match,
    AuditReport => Audit,
    FullRetrainReport => FullRetrain,
}
