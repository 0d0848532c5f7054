//! The ML engine's figures as the task reports of `lethe.v1` carry them.

use lethe_ml::audit::{Audit, KlomStats as MlKlom, SplitAudit as MlSplit};
use lethe_ml::unlearn::confidence::TargetConfidence as MlConfidence;
use lethe_ml::unlearn::finetune::{MatchingConfig, MatchingOptimizer};
use lethe_proto::lethe::v1::{
    AuditFigures, KlomStats, MatchingSettings, SplitAudit, TargetConfidence,
};

pub(super) fn confidence(confidence: &MlConfidence) -> TargetConfidence {
    TargetConfidence {
        confidence: confidence.confidence,
        reach_p95: confidence.reach_p95,
        moved_targets: confidence.moved_targets as u64,
    }
}

pub(super) fn matching(config: &MatchingConfig) -> MatchingSettings {
    let (optimizer, momentum) = match config.optimizer {
        MatchingOptimizer::Adam => ("adam", 0.0),
        MatchingOptimizer::Sgd { momentum } => ("sgd", momentum),
    };
    MatchingSettings {
        optimizer: optimizer.to_owned(),
        momentum,
        forget_repeats: config.forget_repeats as u32,
        forget_weight: config.forget_weight,
        retain_per_forget: config.retain_per_forget as u32,
        lr: config.lr,
        lr_decay: config.lr_decay,
        epochs: config.epochs as u32,
        batch_size: config.batch_size as u32,
        head_penalty: config.head_penalty,
    }
}

pub(super) fn audit(audit: &Audit) -> AuditFigures {
    let split = |split: &MlSplit| SplitAudit {
        klom: Some(klom(&split.klom)),
        accuracy: split.accuracy,
    };
    AuditFigures {
        models: audit.models as u32,
        oracles: audit.oracles as u32,
        forget: Some(split(&audit.forget)),
        retain: Some(split(&audit.retain)),
        val: Some(split(&audit.val)),
    }
}

fn klom(stats: &MlKlom) -> KlomStats {
    KlomStats {
        points: stats.points as u64,
        p95: stats.p95,
        p99: stats.p99,
        mean: stats.mean,
    }
}
