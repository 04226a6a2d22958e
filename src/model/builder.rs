//! Small helpers that add one PyTorch-style module to a graph, asking the weight source for its
//! tensors under the module's state_dict names.

use super::weights::{ParamKind, WeightSource};
use crate::graph::{BatchNorm, Conv2d, ConvAlgo, ConvTranspose2d, Graph, NodeId, Op, UpsampleMode};

pub struct Builder<'a> {
    pub g: Graph,
    src: &'a mut dyn WeightSource,
    eps: f64,
    /// Trainable values taken so far (PyTorch's parameter count: batch-norm running statistics
    /// are buffers, not parameters).
    pub trainable: usize,
}

impl<'a> Builder<'a> {
    pub fn new(in_channels: usize, src: &'a mut dyn WeightSource, eps: f64) -> Self {
        Builder { g: Graph::new(in_channels), src, eps, trainable: 0 }
    }

    /// A tensor from the source, counted unless it is a batch-norm running statistic.
    fn take(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let v = self.src.take(name, shape, kind);
        if !matches!(kind, ParamKind::BnMean | ParamKind::BnVar) {
            self.trainable += v.len();
        }
        v
    }

    pub fn input(&self) -> NodeId {
        0
    }

    pub fn conv(&mut self, prefix: &str, x: NodeId, cin: usize, cout: usize, k: usize, bias: bool) -> NodeId {
        let weight =
            self.take(&format!("{prefix}.weight"), &[cout, cin, k, k], ParamKind::ConvWeight { fan_in: cin * k * k });
        let bias =
            if bias { self.take(&format!("{prefix}.bias"), &[cout], ParamKind::Bias) } else { self.src.zeros(cout) };
        self.g.add(
            prefix,
            Op::Conv2d(Conv2d { cin, cout, k, weight, bias, relu: false, pre: None, algo: ConvAlgo::Direct }),
            &[x],
        )
    }

    pub fn conv_transpose(&mut self, prefix: &str, x: NodeId, cin: usize, cout: usize, k: usize) -> NodeId {
        let weight = self.take(
            &format!("{prefix}.weight"),
            &[cin, cout, k, k],
            ParamKind::ConvWeight { fan_in: cin * k * k / 4 },
        );
        let bias = self.take(&format!("{prefix}.bias"), &[cout], ParamKind::Bias);
        self.g.add(prefix, Op::ConvTranspose2d(ConvTranspose2d { cin, cout, k, weight, bias }), &[x])
    }

    pub fn batch_norm(&mut self, prefix: &str, x: NodeId, c: usize) -> NodeId {
        let mut t = |s: &str, kind| self.take(&format!("{prefix}.{s}"), &[c], kind);
        let (gamma, beta) = (t("weight", ParamKind::BnGamma), t("bias", ParamKind::BnBeta));
        let (mean, var) = (t("running_mean", ParamKind::BnMean), t("running_var", ParamKind::BnVar));
        let bn = BatchNorm { gamma, beta, mean, var, eps: self.eps };
        self.g.add(prefix, Op::BatchNorm(bn), &[x])
    }

    pub fn op(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> NodeId {
        self.g.add(name, op, inputs)
    }

    pub fn relu(&mut self, name: &str, x: NodeId) -> NodeId {
        self.g.add(name, Op::Relu, &[x])
    }

    pub fn upsample(&mut self, name: &str, x: NodeId, mode: UpsampleMode) -> NodeId {
        self.g.add(name, Op::Upsample2(mode), &[x])
    }
}
