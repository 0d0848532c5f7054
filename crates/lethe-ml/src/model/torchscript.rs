//! User models exported with `torch.jit.script` or `torch.jit.trace`, trained in place.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, CModule, Tensor};

use super::Network;
use crate::error::{MlError, Result};

pub(crate) struct TorchScriptNet {
    module: CModule,
    training: bool,
}

impl TorchScriptNet {
    /// Loads the module and registers its parameters in `root` under their PyTorch names with
    /// dots replaced by `__`, returning the net and the map back to PyTorch names.
    pub(crate) fn load(
        path: &Path,
        root: nn::Path<'_>,
    ) -> Result<(Self, BTreeMap<String, String>)> {
        if !path.is_file() {
            return Err(MlError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such TorchScript file"),
            ));
        }
        let mut module = CModule::load_on_device(path, root.device()).map_err(|err| {
            MlError::malformed(path, format!("not a loadable TorchScript module: {err}"))
        })?;
        module.set_train();
        let mut names = BTreeMap::new();
        for (name, tensor) in module.named_parameters()? {
            let store_name = name.replace('.', "__");
            let _registered = root.add(&store_name, tensor, true);
            names.insert(store_name, name);
        }
        if names.is_empty() {
            return Err(MlError::malformed(
                path,
                "the TorchScript module has no parameters to train",
            ));
        }
        Ok((
            TorchScriptNet {
                module,
                training: true,
            },
            names,
        ))
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        Ok(self.module.save(path)?)
    }
}

impl Network for TorchScriptNet {
    /// TorchScript modules hold one model: the member dimension must be 1.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.size()[0] != 1 {
            return Err(MlError::spec(
                "model",
                "a TorchScript model cannot be trained as an ensemble",
            ));
        }
        if train != self.training {
            if train {
                self.module.set_train();
            } else {
                self.module.set_eval();
            }
            self.training = train;
        }
        let logits = self.module.forward_ts(&[x.f_squeeze_dim(0)?])?;
        Ok(logits.f_unsqueeze(0)?)
    }
}
