//! `audit`: a method applied to N originals at once, judged by KLoM against oracles.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use lethe_ml::audit::{Audit, MethodAudit, OracleReference, Splits};
use lethe_ml::ensemble::{load_members, read_manifest, EnsembleResults};
use lethe_ml::outputs::Outputs;
use lethe_ml::unlearn::{unlearn, ForgetSet, Method, Resources};
use serde_json::json;
use tch::Kind;

use super::options::DataArgs;
use super::unlearn::{check_oracles_forget, ForgetArgs, MethodArgs};

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The originals: an ensemble trained on the whole training split with --alpha 1
    /// --keep-weights. The method is applied to every member.
    #[arg(long)]
    originals: PathBuf,
    /// The oracles: an ensemble trained with --alpha 1 and --exclude-file set to the forget set.
    #[arg(long)]
    oracles: PathBuf,
    /// Oracles (the last ones) held out from the comparison to measure the noise floor.
    #[arg(long, default_value_t = 0)]
    held_out: usize,
    /// The forget set (by default, the examples the oracles were trained without).
    #[command(flatten)]
    forget: ForgetArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Write the audit as JSON here (and a Markdown summary next to it, `.md`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Below this many models or oracles, per-point margin distributions are too coarse for a
/// reported KLoM figure (docs/DESIGN.md §1.7).
const STABLE_SAMPLE: i64 = 80;

fn row(name: &str, audited: &Audit) -> String {
    format!(
        "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        audited.forget.klom.p95,
        audited.retain.klom.p95,
        audited.val.klom.p95,
        audited.forget.accuracy,
        audited.retain.accuracy,
        audited.val.accuracy
    )
}

pub(crate) fn run(args: AuditArgs) -> anyhow::Result<()> {
    let device = args.data.device()?;
    let data = args.data.load()?;
    let forget_indices = match args.forget.indices()? {
        Some(indices) => indices,
        None => {
            read_manifest(&args.oracles)
                .with_context(|| format!("read oracles {}", args.oracles.display()))?
                .spec
                .exclude
        }
    };
    if forget_indices.is_empty() {
        bail!("the oracles were trained on every example; give the forget set with --forget or --forget-file");
    }
    let forget = ForgetSet::new(forget_indices, data.num_train)?;
    check_oracles_forget(&args.oracles, &forget)?;
    let method = args.method.method()?;
    let originals_manifest = read_manifest(&args.originals)
        .with_context(|| format!("read originals {}", args.originals.display()))?;
    if originals_manifest.spec.alpha != 1.0 || !originals_manifest.spec.exclude.is_empty() {
        bail!(
            "the originals in {} were not trained on the whole training split (alpha {}, {} excluded)",
            args.originals.display(),
            originals_manifest.spec.alpha,
            originals_manifest.spec.exclude.len()
        );
    }
    let index = args.method.open_index(method)?;
    let config = args.method.config(
        &originals_manifest.spec.model,
        Some(&originals_manifest.spec.recipe),
        index.as_ref(),
    )?;
    let oracle_results = EnsembleResults::load(&args.oracles)
        .with_context(|| format!("load oracles {}", args.oracles.display()))?;
    let total_oracles = oracle_results.seeds.len();
    if args.held_out >= total_oracles {
        bail!(
            "--held-out {} leaves no oracle of {total_oracles} to compare with",
            args.held_out
        );
    }
    let compared = (total_oracles - args.held_out) as i64;
    let oracle_logits = oracle_results.logits.to_kind(Kind::Float);
    // OM's targets default to the held-out oracles, which the comparison does not use.
    let om_targets = match (method, &args.method.target_oracles, args.held_out) {
        (Method::Om, None, held_out) if held_out > 0 => {
            Some(oracle_logits.narrow(0, compared, held_out as i64).mean_dim(
                [0].as_slice(),
                false,
                Kind::Float,
            ))
        }
        _ => args.method.oracle_logits(method, &forget)?,
    };
    let splits = Splits::new(forget.indices(), data.num_train, data.num_val);
    let oracles = OracleReference::new(&oracle_logits, &data.y, args.held_out, splits)?;

    let original_logits = EnsembleResults::load(&args.originals)
        .with_context(|| format!("load originals {}", args.originals.display()))?
        .logits;
    let mut models = load_members(&args.originals, &data, device)
        .with_context(|| format!("load originals {}", args.originals.display()))?;
    let resources = Resources {
        index: index.as_ref(),
        oracle_logits: om_targets.as_ref(),
        ..Resources::new(&data)
    };
    if models.members() < STABLE_SAMPLE || compared < STABLE_SAMPLE {
        eprintln!(
            "note: {} models against {compared} oracles: KLoM needs at least {STABLE_SAMPLE} of each for figures that do not move with the sample",
            models.members()
        );
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "{method} on {} originals for {} forgotten examples",
        models.members(),
        forget.len()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let summary = unlearn(&mut models, &config, &forget, &resources, args.method.seed)?;
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let logits = Outputs::compute(&mut models, &data, &targets)?.logits;
    let MethodAudit {
        do_nothing,
        result: audited,
        gap_closure: closure,
    } = oracles.method(&original_logits, &logits)?;
    let floor = oracles.noise_floor.clone();
    spinner.finish_and_clear();
    println!(
        "KLoM of {method} on {} models against {compared} oracles ({} forgotten):",
        audited.models,
        forget.len()
    );
    let mut table = vec![
        "| | forget P95 | retain P95 | val P95 | forget acc | retain acc | val acc |".to_owned(),
        "|---|---|---|---|---|---|---|".to_owned(),
        row(method.name(), &audited),
    ];
    if method != Method::DoNothing {
        table.push(row("do_nothing", &do_nothing));
    }
    if let Some(floor) = &floor {
        table.push(row("noise_floor", floor));
    }
    for line in &table {
        println!("{line}");
    }
    match (closure, &summary.confidence) {
        (Some(closure), Some(trusted)) => println!(
            "gap closure {closure:.3} (the request's confidence beforehand: {:.3})",
            trusted.confidence
        ),
        (Some(closure), None) => println!("gap closure {closure:.3}"),
        (None, Some(trusted)) => println!(
            "confidence {:.3} (hold oracles out with --held-out for the gap closure it predicts)",
            trusted.confidence
        ),
        (None, None) => {}
    }
    println!(
        "{:.0} example passes per model in {:.1} s",
        summary.examples as f64 / audited.models as f64,
        summary.seconds
    );
    if let Some(out) = &args.out {
        let report = json!({
            "method": method,
            "config": config,
            "forget": forget.indices(),
            "models": audited.models,
            "oracles": compared,
            "held_out_oracles": args.held_out,
            "result": audited,
            "do_nothing": do_nothing,
            "noise_floor": floor,
            "gap_closure": closure,
            "confidence": summary.confidence,
            "examples_per_model": summary.examples as f64 / audited.models as f64,
            "seconds": summary.seconds,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", out.display()))?;
        let markdown = format!(
            "# KLoM audit: {method}\n\n{} models against {compared} oracles, {} forgotten examples, {} held-out oracles for the noise floor.\n\n{}\n",
            audited.models,
            forget.len(),
            args.held_out,
            table.join("\n")
        );
        let markdown_path = out.with_extension("md");
        std::fs::write(&markdown_path, markdown)
            .with_context(|| format!("write {}", markdown_path.display()))?;
        println!("wrote {} and {}", out.display(), markdown_path.display());
    }
    Ok(())
}
