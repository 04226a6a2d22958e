//! `synth:WxH[:seed]`: the synthetic cell generator as an image source of any size, generated a
//! window at a time (nothing is stored).

use super::Source;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::tile_grid::{Size, parse_size};

pub struct SynthSource {
    pub width: usize,
    pub height: usize,
    pub seed: u64,
}

impl SynthSource {
    /// `WxH` or `WxH:seed` (`N` for a square: [`parse_size`]).
    pub fn parse(spec: &str) -> Result<SynthSource> {
        let (size, seed) = match spec.split_once(':') {
            Some((s, seed)) => (
                s,
                seed.parse().map_err(|_| {
                    Error::Usage(format!("synth:{spec}: expected synth:WxH or synth:WxH:seed (seed: a number)"))
                })?,
            ),
            None => (spec, 1),
        };
        let Size { width, height } = parse_size("synth:WxH", size)?;
        Ok(SynthSource { width, height, seed })
    }
}

impl Source for SynthSource {
    fn shape(&self) -> (usize, usize, usize) {
        (self.height, self.width, 1)
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let (img, _) = crate::synth::generate(self.seed, x0 as i64, y0 as i64, w, h);
        Ok(Tensor::from_vec(1, h, w, img.into_iter().map(f32::from).collect()))
    }
    fn sample_type(&self) -> &'static str {
        "u8"
    }
}
