//! Spatial pyramid of Fisher vectors (Perronnin, Sánchez, Mensink, ECCV 2010: 1×1, 2×2 and
//! 3×1 cells, concatenated), and its backward pass for the Deep Fisher Kernel trainer.
//!
//! A pyramid is a list of levels `[rows, cols]`, each splitting the image into a `rows × cols`
//! grid; `[3, 1]` is three horizontal stripes (top, middle, bottom), the paper's "3×1". A
//! descriptor at the normalised position `(x, y) ∈ [−0.5, 0.5]²` (`y` grows downwards, as the
//! pixel rows; see [`crate::pipeline::RawDescriptors::positions`]) falls in one cell per level:
//!
//! ```text
//! row = min(⌊(y + ½)·rows⌋, rows − 1),  col = min(⌊(x + ½)·cols⌋, cols − 1),  cell = row·cols + col
//! ```
//!
//! so each cell is half-open, `[r/rows, (r+1)/rows)` in `y + ½`, except that the last row and
//! column also hold `+½`: a descriptor exactly on an inner boundary goes to the lower / right
//! cell. The rule is applied exactly to the f32 position (no rounding of `y + ½`).
//!
//! With `C` cells in all and `φ(X_c)` the Fisher vector of [`FisherEncoder`] (with its
//! normalisation: improved = signed square root + L2) of the descriptors `X_c` of cell `c`:
//!
//! ```text
//! ψ(X) = [φ(X_1), …, φ(X_C)] / √C        (level by level, cells row-major within a level)
//! ```
//!
//! so that with the improved FV the whole vector has unit norm when no cell is empty, as the
//! plain FV does, and the SVM cost C keeps its meaning. An empty cell contributes a zero block
//! (its image's norm is then `√(non-empty cells / C)`); an image with no descriptors at all is an
//! error. With the single level `[1, 1]`, ψ is exactly the FV.
//!
//! The backward pass of `L = ⟨g, ψ(X)⟩` with respect to the GMM is
//! `(1/√C) Σ_c ∂⟨g_c, φ(X_c)⟩/∂θ`, `g_c` being cell `c`'s slice of `g`: each term is
//! [`FisherEncoder::backward`] on that cell's descriptors.
//!
//! Cost: each level passes over all of the image's descriptors through
//! [`FisherEncoder::encode`] (posteriors are not shared between levels) and each cell is
//! post-processed on its own, so `1x1,2x2,3x1` encoded 4.3–5.8× slower than one FV per image
//! (Fashion-MNIST, K = 64, D = 34, ~200 descriptors per image, loaded 2-core machine), and the
//! vectors the SVM sees are 8× longer.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fisher::{image_error, sum_gradients, FisherEncoder, FisherScratch, GmmGradient};

/// Largest number of rows or columns of one level.
pub const MAX_SIDE: usize = 16;

/// Largest total number of cells (the feature length is `cells · 2KD`).
pub const MAX_CELLS: usize = 64;

/// The grid levels of a spatial pyramid, validated: at least one level, each `[rows, cols]`
/// with `1 ≤ rows, cols ≤` [`MAX_SIDE`], at most [`MAX_CELLS`] cells in all. Serialises as the
/// list of levels, e.g. `[[1, 1], [2, 2], [3, 1]]`; parses from `"1x1,2x2,3x1"` (`ROWSxCOLS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Vec<usize>>", into = "Vec<[usize; 2]>")]
pub struct SpatialPyramid {
    levels: Vec<[usize; 2]>,
}

/// Read as lists of any length, so that a level of other than two numbers is an error (a
/// fixed-size array quietly dropped a third number of a TOML level).
impl TryFrom<Vec<Vec<usize>>> for SpatialPyramid {
    type Error = Error;
    fn try_from(levels: Vec<Vec<usize>>) -> Result<Self> {
        let levels = levels
            .into_iter()
            .map(|l| match l[..] {
                [rows, cols] => Ok([rows, cols]),
                _ => Err(Error::param(
                    "pyramid level",
                    format!("{l:?}"),
                    "[rows, cols]: two numbers",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(levels)
    }
}

impl From<SpatialPyramid> for Vec<[usize; 2]> {
    fn from(p: SpatialPyramid) -> Self {
        p.levels
    }
}

impl FromStr for SpatialPyramid {
    type Err = Error;

    /// Parses comma-separated `ROWSxCOLS` levels, e.g. `1x1,2x2,3x1`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::param(
                "pyramid",
                format!("{s:?}"),
                "comma-separated ROWSxCOLS levels, e.g. 1x1,2x2,3x1",
            )
        };
        let levels = s
            .split(',')
            .map(|level| {
                let (r, c) = level.trim().split_once(['x', 'X']).ok_or_else(bad)?;
                let r = r.trim().parse().map_err(|_| bad())?;
                let c = c.trim().parse().map_err(|_| bad())?;
                Ok([r, c])
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(levels)
    }
}

impl fmt::Display for SpatialPyramid {
    /// `ROWSxCOLS` levels separated by commas (what [`FromStr`] reads).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, [r, c]) in self.levels.iter().enumerate() {
            write!(f, "{}{r}x{c}", if i > 0 { "," } else { "" })?;
        }
        Ok(())
    }
}

/// Per-thread working memory of the pyramid encoder; reuse it across images.
#[derive(Clone, Debug)]
pub struct PyramidScratch {
    fisher: FisherScratch,
    /// `N`: cell of each descriptor in the current level.
    cell: Vec<u32>,
    /// `cells + 1` row offsets of the cells in `sorted`, and the fill cursors.
    starts: Vec<usize>,
    cursor: Vec<usize>,
    /// `N × D`: the descriptors ordered by cell (stable within a cell).
    sorted: Vec<f32>,
    /// Backward: one image's gradient before scaling by `1/√C`.
    grad: GmmGradient,
}

impl SpatialPyramid {
    /// Validates the levels (see the type's documentation).
    pub fn new(levels: Vec<[usize; 2]>) -> Result<Self> {
        if levels.is_empty() {
            return Err(Error::param(
                "pyramid",
                "[]",
                "at least one level [rows, cols]",
            ));
        }
        for &[r, c] in &levels {
            if !(1..=MAX_SIDE).contains(&r) || !(1..=MAX_SIDE).contains(&c) {
                return Err(Error::param(
                    "pyramid level",
                    format!("[{r}, {c}]"),
                    format!("rows and columns in 1..={MAX_SIDE}"),
                ));
            }
        }
        let cells: usize = levels.iter().map(|[r, c]| r * c).sum();
        if cells > MAX_CELLS {
            return Err(Error::param(
                "pyramid",
                format!("{levels:?} ({cells} cells)"),
                format!("at most {MAX_CELLS} cells in all"),
            ));
        }
        Ok(Self { levels })
    }

    /// The paper's pyramid: 1×1, 2×2 and three horizontal stripes (8 cells).
    pub fn perronnin2010() -> Self {
        Self {
            levels: vec![[1, 1], [2, 2], [3, 1]],
        }
    }

    /// The levels, `[rows, cols]` each.
    pub fn levels(&self) -> &[[usize; 2]] {
        &self.levels
    }

    /// Total number of cells `C`.
    pub fn cells(&self) -> usize {
        self.levels.iter().map(|[r, c]| r * c).sum()
    }

    /// Length of the pyramid vector for Fisher vectors of `fisher_len` values: `C · fisher_len`.
    pub fn feature_len(&self, fisher_len: usize) -> usize {
        self.cells() * fisher_len
    }

    /// The factor `1/√C` every cell's vector is multiplied by.
    pub fn scale(&self) -> f32 {
        (1.0 / (self.cells() as f64).sqrt()) as f32
    }

    /// Index (row-major, within its level) of the cell of level `level` holding the position
    /// `(x, y)`; see the module documentation for the boundary rule. Positions must be finite
    /// and in `[−0.5, 0.5]²`.
    pub fn cell_of(&self, level: usize, x: f32, y: f32) -> Result<usize> {
        let [rows, cols] = *self.levels.get(level).ok_or_else(|| {
            Error::param(
                "pyramid level index",
                level,
                format!("less than {}", self.levels.len()),
            )
        })?;
        check_positions(&[x, y])?;
        Ok(cell_index(rows, cols, x, y))
    }

    /// Fresh working memory for one thread.
    pub fn scratch(&self, encoder: &FisherEncoder) -> PyramidScratch {
        let (k, d) = (encoder.gmm().k(), encoder.gmm().d());
        PyramidScratch {
            fisher: encoder.scratch(),
            cell: Vec::new(),
            starts: Vec::new(),
            cursor: Vec::new(),
            sorted: Vec::new(),
            grad: GmmGradient::zeros(k, d),
        }
    }

    /// Encodes one image: `x` is `N × D` (N ≥ 1), `positions` its `N × 2` positions `(x, y)`,
    /// `out` has [`feature_len`](Self::feature_len)`(encoder.len())` values (see the module
    /// documentation for ψ).
    pub fn encode(
        &self,
        encoder: &FisherEncoder,
        x: &[f32],
        positions: &[f32],
        out: &mut [f32],
        scratch: &mut PyramidScratch,
    ) -> Result<()> {
        let len = encoder.len();
        if out.len() != self.feature_len(len) {
            return Err(Error::dim(
                "spatial pyramid output (cells × 2KD)",
                self.feature_len(len),
                out.len(),
            ));
        }
        let d = encoder.gmm().d();
        check_image(encoder, x, positions)?;
        let scale = self.scale();
        let mut base = 0;
        for &[rows, cols] in &self.levels {
            if rows * cols == 1 {
                let block = &mut out[base * len..(base + 1) * len];
                encoder.encode(x, block, &mut scratch.fisher)?;
                scale_block(block, scale);
                base += 1;
                continue;
            }
            scratch.group(rows, cols, x, d, positions);
            for c in 0..rows * cols {
                let block = &mut out[(base + c) * len..(base + c + 1) * len];
                let (a, b) = (scratch.starts[c], scratch.starts[c + 1]);
                if a == b {
                    block.fill(0.0);
                    continue;
                }
                encoder.encode(&scratch.sorted[a * d..b * d], block, &mut scratch.fisher)?;
                scale_block(block, scale);
            }
            base += rows * cols;
        }
        Ok(())
    }

    /// Encodes images `i = 0..offsets.len()−1`, image `i` being rows `offsets[i]..offsets[i+1]`
    /// of `data` (`rows × D`) with positions the same rows of `positions` (`rows × 2`), into
    /// `out` (`images × C·2KD`), in parallel over images on the current rayon pool. An image
    /// without descriptors is an error naming it.
    pub fn encode_batch(
        &self,
        encoder: &FisherEncoder,
        data: &[f32],
        offsets: &[usize],
        positions: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let images = check_batch(encoder, data, offsets, positions)?;
        let len = self.feature_len(encoder.len());
        if out.len() != images * len {
            return Err(Error::dim(
                format!("spatial pyramid batch output ({images} images × {len})"),
                images * len,
                out.len(),
            ));
        }
        let d = encoder.gmm().d();
        out.par_chunks_mut(len).enumerate().try_for_each_init(
            || self.scratch(encoder),
            |scratch, (i, row)| {
                let (r0, r1) = (offsets[i], offsets[i + 1]);
                self.encode(
                    encoder,
                    &data[r0 * d..r1 * d],
                    &positions[2 * r0..2 * r1],
                    row,
                    scratch,
                )
                .map_err(|e| image_error(i, e))
            },
        )
    }

    /// Adds to `grad` the gradient of `L = ⟨grad_psi, ψ(x)⟩` with respect to the GMM (means,
    /// log σ, weight logits, as [`GmmGradient`]) for one image: `(1/√C)` times the sum over the
    /// non-empty cells of [`FisherEncoder::backward`] on the cell's descriptors with the cell's
    /// slice of `grad_psi`. Cells whose slice is all zero are skipped.
    pub fn backward(
        &self,
        encoder: &FisherEncoder,
        x: &[f32],
        positions: &[f32],
        grad_psi: &[f32],
        grad: &mut GmmGradient,
        scratch: &mut PyramidScratch,
    ) -> Result<()> {
        let (k, d, len) = (encoder.gmm().k(), encoder.gmm().d(), encoder.len());
        if grad_psi.len() != self.feature_len(len) {
            return Err(Error::dim(
                "upstream gradient ∂L/∂ψ (cells × 2KD)",
                self.feature_len(len),
                grad_psi.len(),
            ));
        }
        // Every array of the accumulator and of the scratch's (their fields are public, and a
        // scratch may come from another encoder): merged below, so checked here.
        for (what, g) in [("gradient accumulator", &*grad), ("scratch", &scratch.grad)] {
            let shapes = [
                (g.k, k),
                (g.d, d),
                (g.means.len(), k * d),
                (g.log_std.len(), k * d),
                (g.weight_logits.len(), k),
            ];
            if shapes.iter().any(|(got, want)| got != want) {
                return Err(Error::Invalid(format!(
                    "{what}: K = {}, D = {} with {} / {} / {} means / log-std / weight-logit \
                     entries, expected K = {k}, D = {d} ({} / {} / {k})",
                    g.k,
                    g.d,
                    g.means.len(),
                    g.log_std.len(),
                    g.weight_logits.len(),
                    k * d,
                    k * d
                )));
            }
        }
        check_image(encoder, x, positions)?;
        let acc = &mut scratch.grad;
        acc.means.fill(0.0);
        acc.log_std.fill(0.0);
        acc.weight_logits.fill(0.0);
        let mut base = 0;
        for &[rows, cols] in &self.levels {
            let single = rows * cols == 1;
            if !single {
                scratch.group(rows, cols, x, d, positions);
            }
            for c in 0..rows * cols {
                let g = &grad_psi[(base + c) * len..(base + c + 1) * len];
                if g.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let xs = if single {
                    x
                } else {
                    let (a, b) = (scratch.starts[c], scratch.starts[c + 1]);
                    if a == b {
                        continue;
                    }
                    &scratch.sorted[a * d..b * d]
                };
                encoder.backward(xs, g, &mut scratch.grad, &mut scratch.fisher)?;
            }
            base += rows * cols;
        }
        scratch.grad.scale(1.0 / (self.cells() as f64).sqrt());
        grad.merge(&scratch.grad);
        Ok(())
    }

    /// Sum over images of [`backward`](Self::backward), image `i` being rows
    /// `offsets[i]..offsets[i+1]` of `data` and `positions`, its upstream gradient row `i` of
    /// `grad_psis` (`images × C·2KD`). Parallel over images in fixed chunks, so the result does
    /// not depend on the thread count; images whose upstream gradient is all zero are skipped.
    pub fn backward_batch(
        &self,
        encoder: &FisherEncoder,
        data: &[f32],
        offsets: &[usize],
        positions: &[f32],
        grad_psis: &[f32],
    ) -> Result<GmmGradient> {
        let d = encoder.gmm().d();
        let images = check_batch(encoder, data, offsets, positions)?;
        let len = self.feature_len(encoder.len());
        if grad_psis.len() != images * len {
            return Err(Error::dim(
                format!("upstream gradients ({images} images × {len})"),
                images * len,
                grad_psis.len(),
            ));
        }
        sum_gradients(
            encoder.gmm().k(),
            d,
            images,
            len,
            grad_psis,
            || self.scratch(encoder),
            |i, gp, g, scratch| {
                let (r0, r1) = (offsets[i], offsets[i + 1]);
                self.backward(
                    encoder,
                    &data[r0 * d..r1 * d],
                    &positions[2 * r0..2 * r1],
                    gp,
                    g,
                    scratch,
                )
            },
        )
    }
}

impl PyramidScratch {
    /// Orders the descriptors of `x` by their cell in the `rows × cols` grid (counting sort,
    /// stable): cell `c` owns rows `starts[c]..starts[c+1]` of `sorted`.
    fn group(&mut self, rows: usize, cols: usize, x: &[f32], d: usize, positions: &[f32]) {
        let cells = rows * cols;
        self.starts.clear();
        self.starts.resize(cells + 1, 0);
        self.cell.clear();
        for p in positions.chunks_exact(2) {
            let c = cell_index(rows, cols, p[0], p[1]);
            self.cell.push(c as u32);
            self.starts[c + 1] += 1;
        }
        for c in 0..cells {
            self.starts[c + 1] += self.starts[c];
        }
        self.cursor.clear();
        self.cursor.extend_from_slice(&self.starts[..cells]);
        self.sorted.resize(x.len(), 0.0);
        for (row, &c) in x.chunks_exact(d).zip(&self.cell) {
            let r = self.cursor[c as usize];
            self.sorted[r * d..(r + 1) * d].copy_from_slice(row);
            self.cursor[c as usize] += 1;
        }
    }
}

/// The cell of `(x, y)` (already checked to lie in `[−0.5, 0.5]²`) in a `rows × cols` grid.
fn cell_index(rows: usize, cols: usize, x: f32, y: f32) -> usize {
    bin(y, rows) * cols + bin(x, cols)
}

/// `min(⌊(v + ½)·n⌋, n − 1)` for `v ∈ [−0.5, 0.5]`, decided exactly: `v + ½` rounds for tiny
/// `v`, but `j ≤ (v + ½)·n` ⇔ `2n·v ≥ 2j − n`, whose product is exact in f64 (24-bit `v`,
/// `n ≤ 16`), so the estimate is corrected by exact comparisons.
fn bin(v: f32, n: usize) -> usize {
    let t = 2.0 * n as f64 * v as f64;
    let at_least = |j: usize| t >= (2 * j) as f64 - n as f64;
    let mut j = (((v as f64 + 0.5) * n as f64).floor().max(0.0) as usize).min(n - 1);
    while j > 0 && !at_least(j) {
        j -= 1;
    }
    while j + 1 < n && at_least(j + 1) {
        j += 1;
    }
    j
}

/// Multiplies a cell's block by `1/√C` (nothing to do for a single cell).
fn scale_block(block: &mut [f32], scale: f32) {
    if scale != 1.0 {
        block.iter_mut().for_each(|v| *v *= scale);
    }
}

/// Checks positions (`N × 2` flattened): finite and within `[−0.5, 0.5]²`.
fn check_positions(positions: &[f32]) -> Result<()> {
    for (i, &v) in positions.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::NonFinite {
                what: format!("descriptor position (row {}, {})", i / 2, ["x", "y"][i % 2]),
                index: i,
            });
        }
        if !(-0.5..=0.5).contains(&v) {
            return Err(Error::Invalid(format!(
                "descriptor position (row {}, {}) = {v} is outside [−0.5, 0.5]",
                i / 2,
                ["x", "y"][i % 2]
            )));
        }
    }
    Ok(())
}

/// Checks one image as the encoder does (a whole number of `D`-rows, at least one, all
/// finite) and its `N × 2` positions.
fn check_image(encoder: &FisherEncoder, x: &[f32], positions: &[f32]) -> Result<()> {
    let n = encoder.check_image(x)?;
    if positions.len() != 2 * n {
        return Err(Error::dim(
            "descriptor positions (N × 2)",
            2 * n,
            positions.len(),
        ));
    }
    check_positions(positions)
}

/// Validates a batch layout (as [`FisherEncoder::encode_batch`] does) and the positions'
/// length; returns the number of images.
fn check_batch(
    encoder: &FisherEncoder,
    data: &[f32],
    offsets: &[usize],
    positions: &[f32],
) -> Result<usize> {
    let images = encoder.check_batch(data, offsets)?;
    let rows = data.len() / encoder.gmm().d();
    if positions.len() != 2 * rows {
        return Err(Error::dim(
            "descriptor positions (rows × 2)",
            2 * rows,
            positions.len(),
        ));
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_serialises_levels() {
        let p: SpatialPyramid = "1x1, 2X2,3x1".parse().unwrap();
        assert_eq!(p, SpatialPyramid::perronnin2010());
        assert_eq!(p.to_string(), "1x1,2x2,3x1");
        assert_eq!(p.cells(), 8);
        assert_eq!(p.feature_len(10), 80);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "[[1,1],[2,2],[3,1]]");
        assert_eq!(serde_json::from_str::<SpatialPyramid>(&json).unwrap(), p);
        assert!(serde_json::from_str::<SpatialPyramid>("[[0,1]]").is_err());
        assert!(serde_json::from_str::<SpatialPyramid>("[]").is_err());
        for bad in [
            "", "2", "2x", "x2", "1x1,", "1x1;2x2", "-1x2", "0x1", "17x1", "8x8,1x1",
        ] {
            assert!(
                matches!(
                    bad.parse::<SpatialPyramid>(),
                    Err(Error::InvalidParameter { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn grouping_is_stable_and_complete() {
        let p = SpatialPyramid::new(vec![[2, 2]]).unwrap();
        let gmm = crate::gmm::Gmm::new(1, 1, vec![0.0], vec![1.0], vec![1.0]).unwrap();
        let enc = FisherEncoder::new(&gmm, Default::default()).unwrap();
        let mut s = p.scratch(&enc);
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let pos = [0.3, 0.3, -0.3, -0.3, 0.3, -0.3, -0.1, -0.2, 0.0, 0.0];
        s.group(2, 2, &x, 1, &pos);
        assert_eq!(s.starts, [0, 2, 3, 3, 5]);
        assert_eq!(s.sorted, [1.0, 3.0, 2.0, 0.0, 4.0]);
    }
}
