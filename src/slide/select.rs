//! Channel selection between a source and the model: pick and order channels (`--channels 2,0`),
//! or turn RGB into one grey channel (`--channels grey`). It is the first step after reading, so
//! the statistics pass, the tiles and the whole-image reference all see the same selected image,
//! and a pixel's selected values depend on that pixel alone (tiled == whole is unaffected).

use std::fmt;

use super::Source;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Which of the input's channels the model gets, in which order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channels {
    /// All, as stored.
    All,
    /// These channels (0-based), in this order; one may repeat.
    Pick(Vec<usize>),
    /// One channel: the luma of R, G, B (channels 0, 1, 2) with the ITU-R BT.601 weights, the
    /// usual grey of scanners and image tools.
    Grey,
}

/// BT.601 luma weights for R, G, B. Summed in this order, in f32, so every window gives the same
/// bits for the same pixel.
pub const GREY_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// Pick lists longer than this are refused (a model with more input channels is not plausible).
const MAX_PICK: usize = 4096;

impl Channels {
    /// `all`, `grey` (or `gray`), or a comma-separated list of 0-based channel numbers.
    pub fn parse(s: &str) -> Result<Channels> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "" | "all" => return Ok(Channels::All),
            "grey" | "gray" => return Ok(Channels::Grey),
            _ => {}
        }
        let bad = |why: &str| {
            Error::Usage(format!(
                "--channels '{s}': {why} (expected 'all', 'grey', or 0-based channel numbers such as 0 or 2,1,0)"
            ))
        };
        let pick: Vec<usize> = t
            .split(',')
            .map(|p| p.trim().parse::<usize>().map_err(|_| bad(&format!("'{}' is not a channel number", p.trim()))))
            .collect::<Result<_>>()?;
        if pick.len() > MAX_PICK {
            return Err(bad("too many channels"));
        }
        Ok(Channels::Pick(pick))
    }

    /// The number of channels the model gets from an image of `c` channels, or why this selection
    /// does not apply to it.
    pub fn output_channels(&self, c: usize) -> Result<usize, String> {
        match self {
            Channels::All => Ok(c),
            Channels::Grey if c == 3 || c == 4 => Ok(1),
            Channels::Grey => Err(format!("--channels grey needs an RGB image (3 or 4 channels), this one has {c}")),
            Channels::Pick(p) => match p.iter().find(|&&i| i >= c) {
                Some(i) => Err(format!("--channels names channel {i}, but the image has {c} (0 to {})", c - 1)),
                None => Ok(p.len()),
            },
        }
    }

    /// Wrap `src` so it reads the selected channels; `All` returns it unchanged.
    pub fn apply(&self, src: Box<dyn Source>) -> Result<Box<dyn Source>, String> {
        let (_, _, c) = src.shape();
        let out = self.output_channels(c)?;
        Ok(match self {
            Channels::All => src,
            _ => Box::new(Selected { inner: src, channels: self.clone(), out }),
        })
    }

    /// `img` with this selection applied: the same arithmetic [`Selected`] does, for
    /// an image already in memory.
    pub fn select(&self, img: &Tensor) -> Tensor {
        if *self == Channels::All {
            return img.clone();
        }
        let plane = img.h * img.w;
        let mut out = Tensor::zeros(self.output_channels(img.c).unwrap_or(img.c), img.h, img.w);
        match self {
            Channels::All => {}
            Channels::Pick(p) => {
                for (k, &i) in p.iter().enumerate() {
                    out.data[k * plane..(k + 1) * plane].copy_from_slice(&img.data[i * plane..(i + 1) * plane]);
                }
            }
            Channels::Grey => {
                let [r, g, b] = [&img.data[..plane], &img.data[plane..2 * plane], &img.data[2 * plane..3 * plane]];
                for (i, o) in out.data.iter_mut().enumerate() {
                    *o = GREY_WEIGHTS[0] * r[i] + GREY_WEIGHTS[1] * g[i] + GREY_WEIGHTS[2] * b[i];
                }
            }
        }
        out
    }
}

impl fmt::Display for Channels {
    /// The form `parse` reads back (recorded with a run, so `--resume` sees the same selection).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channels::All => write!(f, "all"),
            Channels::Grey => write!(f, "grey"),
            Channels::Pick(p) => {
                let list: Vec<String> = p.iter().map(|i| i.to_string()).collect();
                write!(f, "{}", list.join(","))
            }
        }
    }
}

/// A source read through a channel selection.
struct Selected {
    inner: Box<dyn Source>,
    channels: Channels,
    out: usize,
}

impl Source for Selected {
    fn shape(&self) -> (usize, usize, usize) {
        let (h, w, _) = self.inner.shape();
        (h, w, self.out)
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let t = self.inner.read(y0, x0, h, w)?;
        Ok(self.channels.select(&t))
    }
    fn sample_type(&self) -> &'static str {
        match self.channels {
            Channels::Grey => "f32 (grey from RGB)",
            _ => self.inner.sample_type(),
        }
    }
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings()
    }
    fn pixel_size(&self) -> Option<super::PixelSize> {
        self.inner.pixel_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_grey_and_all_and_refuses_the_rest() {
        assert_eq!(Channels::parse("2, 0,0").unwrap(), Channels::Pick(vec![2, 0, 0]));
        assert_eq!(Channels::parse("Gray").unwrap(), Channels::Grey);
        assert_eq!(Channels::parse("all").unwrap(), Channels::All);
        for bad in ["-1", "1,,2", "r", "1.5", "0,x"] {
            let e = Channels::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("--channels"), "{e}");
        }
        for s in ["grey", "all", "2,0,1"] {
            assert_eq!(Channels::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn selections_that_do_not_fit_the_image_say_why() {
        assert!(Channels::Pick(vec![3]).output_channels(3).unwrap_err().contains("channel 3"));
        assert!(Channels::Grey.output_channels(1).unwrap_err().contains("RGB"));
        assert_eq!(Channels::Grey.output_channels(4), Ok(1));
        assert_eq!(Channels::Pick(vec![0, 0]).output_channels(1), Ok(2));
    }

    #[test]
    fn grey_is_the_bt601_luma_and_picks_copy_planes() {
        let img = Tensor::from_vec(3, 1, 2, vec![255.0, 0.0, 0.0, 255.0, 10.0, 20.0]);
        let g = Channels::Grey.select(&img);
        assert_eq!((g.c, g.h, g.w), (1, 1, 2));
        assert_eq!(g.data[0], 0.299 * 255.0 + 0.587 * 0.0 + 0.114 * 10.0);
        assert_eq!(g.data[1], 0.299 * 0.0 + 0.587 * 255.0 + 0.114 * 20.0);
        let p = Channels::Pick(vec![2, 0]).select(&img);
        assert_eq!(p.data, vec![10.0, 20.0, 255.0, 0.0]);
    }
}
