//! Unlearning: make a trained model behave as if it had been retrained without a forget set.
//!
//! Every method works in place on a member-batched [`Model`], so a request on one deployed
//! model (M = 1) and an audit's N independently trained originals (M = N) run the same code.
//!
//! - [`Method::Dmm`], Datamodel Matching: predict the retrained model's logits from the
//!   attribution index, ŷ = f_θ0 − m·Σ_{i∈F} β_i ([`targets`]), then fine-tune to match them
//!   on the forget set and a seeded sample of retained points ([`finetune`]);
//! - [`Method::Om`], Oracle Matching: the same fine-tune towards the mean logits of real
//!   oracles (the upper bound DMM approximates);
//! - baselines: [`Method::DoNothing`], [`Method::Retrain`] on S∖F (exact unlearning),
//!   [`Method::Ga`] (gradient ascent on F), [`Method::Gd`] (gradient descent on S∖F) and
//!   [`Method::Scrub`];
//! - [`confidence`]: how far a request's DMM targets can be trusted, before any fine-tune;
//! - [`lineage`]: sequential requests on a model version.

pub mod confidence;
pub mod finetune;
mod forget;
pub mod lineage;
mod methods;
pub mod targets;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};

pub use forget::{parse_indices, ForgetSet};
pub use methods::{
    request_confidence, unlearn, DmmSettings, MethodConfig, Resources, UnlearnSummary,
};

/// The unlearning methods a user can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    DoNothing,
    Retrain,
    Dmm,
    Om,
    Ga,
    Gd,
    Scrub,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::DoNothing,
        Method::Retrain,
        Method::Dmm,
        Method::Om,
        Method::Ga,
        Method::Gd,
        Method::Scrub,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::DoNothing => "do_nothing",
            Method::Retrain => "retrain",
            Method::Dmm => "dmm",
            Method::Om => "om",
            Method::Ga => "ga",
            Method::Gd => "gd",
            Method::Scrub => "scrub",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = MlError;

    fn from_str(text: &str) -> Result<Self> {
        let normalised = text.trim().to_ascii_lowercase().replace('-', "_");
        Method::ALL
            .into_iter()
            .find(|method| method.name() == normalised)
            .ok_or_else(|| {
                MlError::spec(
                    "unlearning method",
                    format!("unknown method `{text}`: expected dmm, om, retrain, ga, gd, scrub or do-nothing"),
                )
            })
    }
}
