//! U-Net laid out like the common PyTorch definition (milesial/Pytorch-UNet), generalised to any
//! depth and base width; see docs/model-format.md for the tensor names.

use super::builder::Builder;
use super::config::UnetConfig;
use super::weights::WeightSource;
use crate::graph::{Graph, NodeId, Op, UpsampleMode};

fn double_conv(b: &mut Builder, prefix: &str, x: NodeId, cin: usize, mid: usize, cout: usize, bn: bool) -> NodeId {
    let p = format!("{prefix}.double_conv");
    if bn {
        let x = b.conv(&format!("{p}.0"), x, cin, mid, 3, false);
        let x = b.batch_norm(&format!("{p}.1"), x, mid);
        let x = b.relu(&format!("{p}.2"), x);
        let x = b.conv(&format!("{p}.3"), x, mid, cout, 3, false);
        let x = b.batch_norm(&format!("{p}.4"), x, cout);
        b.relu(&format!("{p}.5"), x)
    } else {
        let x = b.conv(&format!("{p}.0"), x, cin, mid, 3, true);
        let x = b.relu(&format!("{p}.1"), x);
        let x = b.conv(&format!("{p}.2"), x, mid, cout, 3, true);
        b.relu(&format!("{p}.3"), x)
    }
}

/// The graph and its number of trainable parameters.
pub fn build(c: &UnetConfig, src: &mut dyn WeightSource) -> (Graph, usize) {
    let mut b = Builder::new(c.in_channels, src, c.bn_eps);
    let (f, d, bn) = (c.base_filters, c.depth, c.batch_norm);
    let transpose = c.up_mode == "transpose";
    let factor = if transpose { 1 } else { 2 };

    let x = b.input();
    let mut skips = vec![double_conv(&mut b, "inc", x, c.in_channels, f, f, bn)];
    for i in 1..=d {
        let cin = f << (i - 1);
        let cout = if i == d { (f << i) / factor } else { f << i };
        let p = format!("down{i}.maxpool_conv");
        let pooled = b.op(&format!("{p}.0"), Op::MaxPool2, &[*skips.last().unwrap()]);
        skips.push(double_conv(&mut b, &format!("{p}.1"), pooled, cin, cout, cout, bn));
    }
    let mut x = skips.pop().unwrap();
    for i in 1..=d {
        let cin = f << (d - i + 1);
        let cout = if i == d { f << (d - i) } else { (f << (d - i)) / factor };
        let skip = skips.pop().unwrap();
        let up = match c.up_mode.as_str() {
            "transpose" => b.conv_transpose(&format!("up{i}.up"), x, cin, cin / 2, 2),
            "bilinear" => b.upsample(&format!("up{i}.up"), x, UpsampleMode::Bilinear),
            _ => b.upsample(&format!("up{i}.up"), x, UpsampleMode::Nearest),
        };
        let cat = b.op(&format!("up{i}.cat"), Op::Concat, &[skip, up]);
        let mid = if transpose { cout } else { cin / 2 };
        x = double_conv(&mut b, &format!("up{i}.conv"), cat, cin, mid, cout, bn);
    }
    let logits = b.conv("outc.conv", x, f, c.classes, 1, true);
    b.op("softmax", Op::Softmax, &[logits]);
    (b.g, b.trainable)
}
