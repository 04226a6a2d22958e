//! A dense f32 feature map in CHW order (batch 1). Everything the executor moves between layers.

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn zeros(c: usize, h: usize, w: usize) -> Tensor {
        Tensor { c, h, w, data: vec![0.0; c * h * w] }
    }

    pub fn from_vec(c: usize, h: usize, w: usize, data: Vec<f32>) -> Tensor {
        assert_eq!(data.len(), c * h * w, "tensor data length does not match {c}x{h}x{w}");
        Tensor { c, h, w, data }
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        &self.data[c * self.h * self.w..(c + 1) * self.h * self.w]
    }

    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.h + y) * self.w + x]
    }

    /// Copy of the window `[y0, y0+h) x [x0, x0+w)`; rows/columns past the tensor's extent are zero.
    pub fn window(&self, y0: usize, x0: usize, h: usize, w: usize) -> Tensor {
        let mut out = Tensor::zeros(self.c, h, w);
        let rows = h.min(self.h.saturating_sub(y0));
        let cols = w.min(self.w.saturating_sub(x0));
        for c in 0..self.c {
            for y in 0..rows {
                let src = (c * self.h + y0 + y) * self.w + x0;
                let dst = (c * h + y) * w;
                out.data[dst..dst + cols].copy_from_slice(&self.data[src..src + cols]);
            }
        }
        out
    }

    /// Write `src[sy0.., sx0..]` of extent `h x w` into `self[dy0.., dx0..]`.
    #[allow(clippy::too_many_arguments)]
    pub fn paste(&mut self, src: &Tensor, sy0: usize, sx0: usize, dy0: usize, dx0: usize, h: usize, w: usize) {
        assert_eq!(self.c, src.c);
        for c in 0..self.c {
            for y in 0..h {
                let s = (c * src.h + sy0 + y) * src.w + sx0;
                let d = (c * self.h + dy0 + y) * self.w + dx0;
                self.data[d..d + w].copy_from_slice(&src.data[s..s + w]);
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// A borrowed CHW feature map: a slice of an arena or of a [`Tensor`].
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: &'a [f32],
}

impl<'a> View<'a> {
    pub fn new(c: usize, h: usize, w: usize, data: &'a [f32]) -> View<'a> {
        assert_eq!(data.len(), c * h * w, "view data length does not match {c}x{h}x{w}");
        View { c, h, w, data }
    }

    pub fn plane(&self, c: usize) -> &'a [f32] {
        &self.data[c * self.h * self.w..(c + 1) * self.h * self.w]
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_vec(self.c, self.h, self.w, self.data.to_vec())
    }
}

impl Tensor {
    pub fn view(&self) -> View<'_> {
        View { c: self.c, h: self.h, w: self.w, data: &self.data }
    }
}
