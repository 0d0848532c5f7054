//! The training loop shared by single models and ensembles.
//!
//! Every member has its own training subset and its own shuffle per epoch (from its seed).
//! The loss is the sum over members of each member's mean cross-entropy, so each member's
//! gradient is exactly the gradient it would get alone; the optimizers work elementwise, so
//! each member's update is too.

use rand::seq::SliceRandom;
use tch::{Kind, Tensor};

use crate::data::Dataset;
use crate::error::{MlError, Result};
use crate::model::Model;
use crate::optim::{BatchedOptimizer, GradientReset};
use crate::recipe::Recipe;
use crate::seed;

/// Where a training run is, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Mean training loss over members in the last finished epoch, if any.
    pub last_epoch_loss: Option<f64>,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    /// Examples processed, counted over all members.
    pub examples: u64,
    /// Mean training loss of the last epoch, per member.
    pub final_loss: Vec<f64>,
}

/// Trains every member of `model` on its subset of the training split (`subsets[m]`, indices
/// into `0..n`). All subsets must have the same size so that members step together.
pub fn train(
    model: &mut Model,
    data: &Dataset,
    subsets: &[Vec<i64>],
    recipe: &Recipe,
    progress: &mut dyn FnMut(&TrainProgress),
) -> Result<TrainSummary> {
    recipe.validate()?;
    let members = model.members() as usize;
    check_subsets(subsets, members, data.num_train)?;
    model.check_samples(data, "training data")?;
    let device = model.device();
    let x_all = data.x.to_device(device);
    let y_all = data.y.to_device(device);
    let subset_len = subsets[0].len();
    let batch_size = recipe.batch_size.min(subset_len);
    let steps_per_epoch = subset_len.div_ceil(batch_size);
    // Networks with a hand-written backward pass skip autograd; the others need their
    // gradients cleared between steps.
    let (parameters, mut gradient_reset) = match model.manual_backward() {
        Some(network) => (network.parameters(), None),
        None => (
            model.vars.trainable_variables(),
            Some(GradientReset::new(&model.vars)?),
        ),
    };
    let mut optimizer = BatchedOptimizer::new(
        parameters.iter().map(Tensor::shallow_clone).collect(),
        recipe,
    );
    // One buffer for the gathered inputs of every step: a fresh multi-megabyte tensor per step
    // costs page faults comparable to the step's arithmetic on a CPU.
    let mut buffer_shape = vec![(members * batch_size) as i64];
    buffer_shape.extend_from_slice(&data.sample_shape);
    let x_batch = Tensor::zeros(buffer_shape.as_slice(), (x_all.kind(), device));
    let mut last_epoch_loss = None;
    let mut final_loss = vec![0.0; members];
    let mut steps = 0;
    let mut examples = 0u64;
    for epoch in 0..recipe.epochs {
        let orders: Vec<Vec<i64>> = subsets
            .iter()
            .zip(&model.member_seeds)
            .map(|(subset, member_seed)| {
                let mut order = subset.clone();
                order.shuffle(&mut seed::rng_for_epoch(*member_seed, epoch));
                order
            })
            .collect();
        let mut epoch_loss = Tensor::zeros([members as i64], (Kind::Float, device));
        for step in 0..steps_per_epoch {
            let start = step * batch_size;
            let end = (start + batch_size).min(subset_len);
            let batch = (end - start) as i64;
            let mut indices = Vec::with_capacity(members * batch as usize);
            for order in &orders {
                indices.extend_from_slice(&order[start..end]);
            }
            let index = Tensor::from_slice(&indices).to_device(device);
            let mut shape = vec![members as i64, batch];
            shape.extend_from_slice(&data.sample_shape);
            let x = x_all
                .f_index_select_out(&x_batch.narrow(0, 0, members as i64 * batch), 0, &index)?
                .view(shape.as_slice());
            let y = y_all.index_select(0, &index);
            let lr = recipe.lr_at(epoch, step, steps_per_epoch);
            let member_loss = match gradient_reset.as_mut() {
                None => {
                    let network = model
                        .manual_backward()
                        .expect("only networks with a manual backward pass skip autograd");
                    let (member_loss, gradients) = network.loss_and_gradients(&x, &y)?;
                    optimizer.step(lr, &gradients)?;
                    member_loss
                }
                Some(gradient_reset) => {
                    let logits = model.forward(&x, true)?;
                    let per_example = logits
                        .view([-1, model.num_classes])
                        .log_softmax(-1, Kind::Float)
                        .f_nll_loss(&y, None::<Tensor>, tch::Reduction::None, -100)?;
                    let member_loss =
                        per_example
                            .view([members as i64, batch])
                            .mean_dim(1, false, Kind::Float);
                    gradient_reset.zero_grad();
                    member_loss.sum(Kind::Float).backward();
                    let gradients: Vec<Tensor> = parameters.iter().map(Tensor::grad).collect();
                    optimizer.step(lr, &gradients)?;
                    member_loss
                }
            };
            epoch_loss += member_loss.detach();
            steps += 1;
            examples += (members as u64) * batch as u64;
            progress(&TrainProgress {
                epoch,
                epochs: recipe.epochs,
                step,
                steps_per_epoch,
                last_epoch_loss,
            });
        }
        final_loss =
            Vec::<f64>::try_from((epoch_loss / steps_per_epoch as f64).to_kind(Kind::Double))?;
        last_epoch_loss = Some(final_loss.iter().sum::<f64>() / members as f64);
    }
    Ok(TrainSummary {
        steps,
        examples,
        final_loss,
    })
}

fn check_subsets(subsets: &[Vec<i64>], members: usize, num_train: i64) -> Result<()> {
    if subsets.len() != members {
        return Err(MlError::spec(
            "training subsets",
            format!("{} subsets for {members} members", subsets.len()),
        ));
    }
    let len = subsets[0].len();
    if len == 0 {
        return Err(MlError::spec(
            "training subsets",
            "a member's training subset is empty",
        ));
    }
    for (member, subset) in subsets.iter().enumerate() {
        if subset.len() != len {
            return Err(MlError::spec(
                "training subsets",
                format!("member {member} has {} examples, member 0 has {len}: ensemble members need equal subset sizes", subset.len()),
            ));
        }
        if let Some(bad) = subset
            .iter()
            .find(|index| **index < 0 || **index >= num_train)
        {
            return Err(MlError::spec(
                "training subsets",
                format!(
                    "member {member} uses index {bad}, outside the training split 0..{num_train}"
                ),
            ));
        }
    }
    Ok(())
}
