//! FC-DenseNet (Jégou et al. 2017, "The One Hundred Layers Tiramisu") laid out like the common
//! PyTorch implementation (bfortuner/pytorch_tiramisu); see docs/model-format.md.

use super::builder::Builder;
use super::config::FcDenseNetConfig;
use super::weights::WeightSource;
use crate::graph::{Graph, NodeId, Op};

/// BN -> ReLU -> conv3x3 (-> dropout, identity at inference).
fn dense_layer(b: &mut Builder, prefix: &str, x: NodeId, cin: usize, growth: usize) -> NodeId {
    let y = b.batch_norm(&format!("{prefix}.norm"), x, cin);
    let y = b.relu(&format!("{prefix}.relu"), y);
    let y = b.conv(&format!("{prefix}.conv"), y, cin, growth, 3, true);
    b.op(&format!("{prefix}.drop"), Op::Dropout, &[y])
}

/// Returns (block output, its channel count). Each layer sees `[input, new features so far]`;
/// the block outputs either everything or only the new features.
fn dense_block(
    b: &mut Builder,
    prefix: &str,
    x: NodeId,
    cin: usize,
    growth: usize,
    layers: usize,
    only_new: bool,
) -> (NodeId, usize) {
    let mut parts = vec![x];
    let mut c = cin;
    let mut new = Vec::with_capacity(layers);
    for j in 0..layers {
        let input =
            if parts.len() == 1 { parts[0] } else { b.op(&format!("{prefix}.layers.{j}.in"), Op::Concat, &parts) };
        let y = dense_layer(b, &format!("{prefix}.layers.{j}"), input, c, growth);
        parts.push(y);
        new.push(y);
        c += growth;
    }
    if only_new {
        let out = if new.len() == 1 { new[0] } else { b.op(&format!("{prefix}.out"), Op::Concat, &new) };
        (out, growth * layers)
    } else {
        (b.op(&format!("{prefix}.out"), Op::Concat, &parts), c)
    }
}

/// The graph and its number of trainable parameters.
pub fn build(c: &FcDenseNetConfig, src: &mut dyn WeightSource) -> (Graph, usize) {
    let mut b = Builder::new(c.in_channels, src, c.bn_eps);
    let g = c.growth_rate;
    let x = b.input();
    let mut x = b.conv("firstconv", x, c.in_channels, c.first_conv_filters, 3, true);
    let mut ch = c.first_conv_filters;

    let mut skips = Vec::new();
    for (i, &layers) in c.down_blocks.iter().enumerate() {
        let (y, yc) = dense_block(&mut b, &format!("denseBlocksDown.{i}"), x, ch, g, layers, false);
        skips.push((y, yc));
        let p = format!("transDownBlocks.{i}");
        let t = b.batch_norm(&format!("{p}.norm"), y, yc);
        let t = b.relu(&format!("{p}.relu"), t);
        let t = b.conv(&format!("{p}.conv"), t, yc, yc, 1, true);
        let t = b.op(&format!("{p}.drop"), Op::Dropout, &[t]);
        x = b.op(&format!("{p}.maxpool"), Op::MaxPool2, &[t]);
        ch = yc;
    }
    let (mut x, mut ch) = dense_block(&mut b, "bottleneck.bottleneck", x, ch, g, c.bottleneck_layers, true);
    let n = c.up_blocks.len();
    for (i, &layers) in c.up_blocks.iter().enumerate() {
        let (skip, skip_c) = skips.pop().unwrap();
        let up = b.conv_transpose(&format!("transUpBlocks.{i}.convTrans"), x, ch, ch, 3);
        let cat = b.op(&format!("transUpBlocks.{i}.cat"), Op::Concat, &[up, skip]);
        let (y, yc) = dense_block(&mut b, &format!("denseBlocksUp.{i}"), cat, ch + skip_c, g, layers, i + 1 < n);
        x = y;
        ch = yc;
    }
    let logits = b.conv("finalConv", x, ch, c.classes, 1, true);
    b.op("softmax", Op::Softmax, &[logits]);
    (b.g, b.trainable)
}
