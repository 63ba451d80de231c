//! Dense multi-scale SIFT, a re-implementation of VLFeat's `vl_dsift` / `vl_phow` (0.9.21).
//!
//! For each bin size `b` of [`DsiftParams::bin_sizes`]:
//!
//! 1. the grey image (luma in `[0, 1]`) is smoothed by a Gaussian of standard deviation
//!    `sqrt((b / magnif)² − 1/4)` (the image is assumed to carry a blur of ½ pixel already),
//!    with VLFeat's `vl_imsmooth_f` kernel: half-width `⌈3σ⌉`, taps normalised to unit sum,
//!    borders padded by continuity;
//! 2. the gradient `(gx, gy)` is taken by central differences (one-sided on the border), its
//!    angle `θ = atan2(gy, gx)` (x to the right, y down) and modulus `m` with VLFeat's fast
//!    approximations, and `m` is split between the two nearest of 8 orientation bins
//!    (bilinear in angle, bin `t` centred at `θ = 2πt/8`);
//! 3. each of the 8 orientation planes is convolved with the spatial binning kernel and
//!    sampled on the descriptor grid. With [`Window::Flat`] (VLFeat's `useFlatWindow`, the
//!    "fast" mode of `vl_phow`) the kernel is the triangle `k(u) = (b − |u|)/b²`, `|u| < b`
//!    (bilinear interpolation between bin centres), and each spatial bin is then weighted by
//!    `b² ×` the mean of the Gaussian window over the bin; with [`Window::Gaussian`] the kernel
//!    of bin `(i, j)` is the triangle times the Gaussian window itself. The window has standard
//!    deviation `window_size · b` and is centred on the descriptor centre.
//!    Both convolutions are separable and evaluated only at the rows and columns the grid
//!    needs, on orientation-interleaved rows so that one spatial bin is 8 contiguous floats;
//! 4. each 4×4×8 descriptor is L2-normalised, clamped at [`DsiftParams::clamp`] and
//!    L2-normalised again; its contrast (VLFeat's keypoint `norm`: the sum of the raw
//!    descriptor divided by the frame area `(3b + 1)²`) below
//!    [`DsiftParams::contrast_threshold`] zeroes the descriptor (as `vl_phow`); optionally
//!    RootSIFT (`sqrt` of the L1-normalised descriptor) is applied last.
//!
//! Descriptor layout is VLFeat's: entry `t + 8·bx + 32·by` for orientation `t` and spatial
//! bin `(bx, by)` (bx to the right, by down). Descriptors of one image come scale by scale,
//! each scale row-major over the grid (x fastest). The grid of bin size `b` starts at
//! `off = ⌊3/2 (max b − b)⌋` (vl_phow's alignment: descriptor centres of all scales coincide,
//! the first at `3/2 · max b`) and advances by `step` while the frame of `3b + 1` pixels
//! fits in the image.
//!
//! The results agree with VLFeat's `vl_dsift_process` to float rounding (see `docs/sift.md`
//! and the fixtures in `fixtures/sift/`): VLFeat's fast `atan2` and `sqrt` approximations are
//! reproduced exactly, so orientation binning is identical.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_finite, Error, Result};

/// Length of one descriptor: 4 × 4 spatial bins × 8 orientations.
pub const DESCRIPTOR_LEN: usize = 128;
/// Orientation bins.
const NT: usize = 8;
/// Spatial bins per side.
const NB: usize = 4;

/// Spatial weighting of the gradients that fall into a descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// Triangular (bilinear) binning, each bin then weighted by the mean of the Gaussian
    /// window over it (VLFeat's `useFlatWindow`; `vl_phow`'s default "fast" mode).
    #[default]
    #[serde(alias = "flat")]
    Flat,
    /// Triangular binning times a Gaussian window centred on the descriptor.
    #[serde(alias = "gaussian")]
    Gaussian,
}

/// Parameters of [`dense_sift`]; defaults are `vl_phow`'s except `step` (4, not 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsiftParams {
    /// Spatial bin sizes in pixels, one scale each (default `[4, 6, 8, 10]`).
    pub bin_sizes: Vec<usize>,
    /// Grid step in pixels (default 4).
    pub step: usize,
    /// Smoothing is `σ = bin / magnif` (default 6).
    pub magnif: f32,
    /// Whether to smooth the image per scale (default true, as `vl_phow`; false = plain
    /// `vl_dsift` on the given image).
    pub smooth: bool,
    /// Spatial window (default [`Window::Flat`]).
    pub window: Window,
    /// Gaussian window standard deviation in bins (default 1.5 as `vl_phow`; `vl_dsift`'s is 2).
    pub window_size: f32,
    /// Descriptors whose contrast is below this are set to zero (default 0.005; 0 keeps all).
    pub contrast_threshold: f32,
    /// Apply RootSIFT (L1 normalise, then square root) to every descriptor (default false).
    pub root_sift: bool,
    /// Clamp of the L2-normalised descriptor entries before renormalising (default 0.2).
    pub clamp: f32,
    /// Resize the image to `(width, height)` before extraction (bilinear / triangle filter).
    /// Keypoints are reported in the coordinates of the image passed in. Serialised as
    /// `[width, height]` or `"none"` (TOML has no null; null is read too).
    #[serde(with = "resize_setting")]
    pub resize: Option<(u32, u32)>,
}

/// `DsiftParams::resize` as a setting: `[width, height]`, or `"none"` for no resizing, written
/// out so that a configuration printed as TOML reads back the same (a missing key means the
/// default, which for the pipeline is a resize).
pub(crate) mod resize_setting {
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::{Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<(u32, u32)>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(size) => size.serialize(s),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, u32)>, D::Error> {
        struct Setting;
        impl<'de> Visitor<'de> for Setting {
            type Value = Option<(u32, u32)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [width, height] pair or \"none\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                // Any case, as `--resize none` on the command line.
                if v.eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(Setting)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let width = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let height = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Some((width, height)))
            }
        }
        d.deserialize_any(Setting)
    }
}

impl Default for DsiftParams {
    fn default() -> Self {
        DsiftParams {
            bin_sizes: vec![4, 6, 8, 10],
            step: 4,
            magnif: 6.0,
            smooth: true,
            window: Window::Flat,
            window_size: 1.5,
            contrast_threshold: 0.005,
            root_sift: false,
            clamp: 0.2,
            resize: None,
        }
    }
}

/// Largest accepted bin size; keeps all index arithmetic far from overflow.
const MAX_BIN_SIZE: usize = 4096;

/// Smallest accepted `magnif`.
const MIN_MAGNIF: f32 = 0.5;

/// Largest accepted `resize` area: 2²⁶ pixels (e.g. 8192×8192), 256 MB as f32 (the image
/// crate's own decoding limit is 512 MB). Extraction holds several image-sized buffers per
/// image in flight (gradients, orientation planes, smoothed copies) and its descriptors: one
/// 4096×4096 image peaked at about 3 GB with the default bins and step (2048×2048 at
/// 0.8 GB), so the largest sizes need a machine with that much memory per thread. The cap is
/// not lowered further: models saved with a larger `resize` would no longer load.
const MAX_RESIZE_PIXELS: u64 = 1 << 26;

impl DsiftParams {
    /// Checks every field; the error names the field and the valid range.
    pub fn validate(&self) -> Result<()> {
        if self.bin_sizes.is_empty() {
            return Err(Error::param(
                "bin_sizes",
                "[]",
                "at least one bin size (e.g. [4, 6, 8, 10])",
            ));
        }
        if let Some(&b) = self.bin_sizes.iter().find(|&&b| b == 0 || b > MAX_BIN_SIZE) {
            return Err(Error::param(
                "bin_sizes",
                format!("{:?} (contains {b})", self.bin_sizes),
                format!("bin sizes in 1..={MAX_BIN_SIZE} pixels"),
            ));
        }
        if self.step == 0 {
            return Err(Error::param("step", 0, "a grid step of at least 1 pixel"));
        }
        // Below ½ the smoothing σ = bin/magnif passes twice the bin size, and its kernel grows
        // without bound (1e-30 asked for 10^30 taps).
        if !(self.magnif.is_finite() && self.magnif >= MIN_MAGNIF) {
            return Err(Error::param(
                "magnif",
                self.magnif,
                format!("a finite value >= {MIN_MAGNIF} (smoothing σ = bin / magnif)"),
            ));
        }
        if !(self.window_size.is_finite() && self.window_size > 0.0) {
            return Err(Error::param(
                "window_size",
                self.window_size,
                "a finite value > 0 (in bins)",
            ));
        }
        if !(self.contrast_threshold.is_finite() && self.contrast_threshold >= 0.0) {
            return Err(Error::param(
                "contrast_threshold",
                self.contrast_threshold,
                "a finite value >= 0",
            ));
        }
        if !(self.clamp.is_finite() && self.clamp > 0.0) {
            return Err(Error::param("clamp", self.clamp, "a finite value > 0"));
        }
        if let Some((w, h)) = self.resize {
            if w == 0 || h == 0 || w as u64 * h as u64 > MAX_RESIZE_PIXELS {
                return Err(Error::param(
                    "resize",
                    format!("{w}x{h}"),
                    format!(
                        "a width and height of at least 1 pixel and at most {MAX_RESIZE_PIXELS} \
                         pixels in all (e.g. 8192x8192)"
                    ),
                ));
            }
            // Every image is resized to this size, so one too small for a descriptor would
            // fail on every image: a settings conflict, reported before any work.
            let need = self.min_image_side();
            if (w as usize) < need || (h as usize) < need {
                return Err(Error::param(
                    "resize",
                    format!("{w}x{h}"),
                    format!(
                        "at least {need}x{need} pixels, the extent of one descriptor with the \
                         bin sizes {:?} (3 · largest bin + 1): resize to more pixels or use \
                         smaller bins",
                        self.bin_sizes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Smallest width and height (after `resize`) that holds one descriptor of every scale:
    /// `3 · max bin + 1`.
    pub fn min_image_side(&self) -> usize {
        // Saturating: the fields are public, and unvalidated bins may be any size.
        let bin = self.bin_sizes.iter().copied().max().unwrap_or(0);
        bin.saturating_mul(3).saturating_add(1)
    }

    /// Number of descriptors [`dense_sift`] returns for an image of this size (before
    /// `resize`). Errors as [`dense_sift`] does for invalid parameters or too small images.
    pub fn keypoint_count(&self, width: usize, height: usize) -> Result<usize> {
        self.validate()?;
        let (w, h) = match self.resize {
            Some((rw, rh)) => (rw as usize, rh as usize),
            None => (width, height),
        };
        if width == 0 || height == 0 {
            return Err(Error::Empty {
                what: format!("image ({width}x{height} pixels)"),
            });
        }
        check_size_without_resize(self, width, height)?;
        let mut n = 0;
        for &b in &self.bin_sizes {
            n += ScaleGrid::new(self, b, w, h)?.count();
        }
        Ok(n)
    }
}

/// Where a descriptor sits: centre `(x, y)` in pixels of the input image (0-based, pixel
/// centres at integers), `scale` = bin size in input pixels (the mean of the two axes when
/// resized anisotropically), `contrast` = VLFeat's keypoint norm (raw descriptor mass over
/// the frame area), which is compared with the contrast threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keypoint {
    pub x: f32,
    pub y: f32,
    pub scale: f32,
    pub contrast: f32,
}

/// A grey image, `height × width` row-major, luma in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

impl GrayImage {
    /// Wraps `pixels` (`height × width`, row-major); errors on a length mismatch.
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> Result<Self> {
        let expected = width.checked_mul(height).ok_or_else(|| {
            Error::param(
                "image size",
                format!("{width}x{height}"),
                "a size that fits memory",
            )
        })?;
        if pixels.len() != expected {
            return Err(Error::dim(
                format!("pixels of a {width}x{height} grey image"),
                expected,
                pixels.len(),
            ));
        }
        Ok(GrayImage {
            width,
            height,
            pixels,
        })
    }

    /// 8-bit grey pixels (`height × width`, row-major), divided by 255.
    pub fn from_u8(width: usize, height: usize, pixels: &[u8]) -> Result<Self> {
        let expected = width.checked_mul(height).ok_or_else(|| {
            Error::param(
                "image size",
                format!("{width}x{height}"),
                "a size that fits memory",
            )
        })?;
        if pixels.len() != expected {
            return Err(Error::dim(
                format!("pixels of a {width}x{height} 8-bit image"),
                expected,
                pixels.len(),
            ));
        }
        Ok(GrayImage {
            width,
            height,
            pixels: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        })
    }

    /// Luma of any decoded image in `[0, 1]`, with the `image` crate's conversion (Rec. 709
    /// weights on the stored values; grey images are taken as they are).
    pub fn from_dynamic(image: &image::DynamicImage) -> Self {
        let luma = image.to_luma32f();
        GrayImage {
            width: luma.width() as usize,
            height: luma.height() as usize,
            pixels: luma.into_raw(),
        }
    }

    /// This image resized to `width × height` with the `image` crate's triangle filter
    /// (bilinear when enlarging, area-weighted when shrinking); values clamped to `[0, 1]`.
    pub fn resized(&self, width: u32, height: u32) -> Result<GrayImage> {
        self.check()?;
        if width == 0 || height == 0 || width as u64 * height as u64 > MAX_RESIZE_PIXELS {
            return Err(Error::param(
                "resize",
                format!("{width}x{height}"),
                format!(
                    "a width and height of at least 1 pixel and at most {MAX_RESIZE_PIXELS} \
                     pixels in all"
                ),
            ));
        }
        let buffer = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
            self.width as u32,
            self.height as u32,
            self.pixels.clone(),
        )
        .ok_or_else(|| Error::Invalid(format!("{}x{} image too large", self.width, self.height)))?;
        let out = image::imageops::resize(
            &buffer,
            width,
            height,
            image::imageops::FilterType::Triangle,
        );
        Ok(GrayImage {
            width: width as usize,
            height: height as usize,
            pixels: out.into_raw(),
        })
    }

    /// Checks size, pixel count and finiteness.
    fn check(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::Empty {
                what: format!("image ({}x{} pixels)", self.width, self.height),
            });
        }
        if self.width.checked_mul(self.height) != Some(self.pixels.len()) {
            return Err(Error::dim(
                format!("pixels of a {}x{} grey image", self.width, self.height),
                self.width.saturating_mul(self.height),
                self.pixels.len(),
            ));
        }
        check_finite("image pixels", &self.pixels)
    }
}

/// Reusable buffers of [`dense_sift_with`], so that a worker extracting many images allocates
/// only when an image is larger than any before.
#[derive(Default, Debug, Clone)]
pub struct DsiftScratch {
    smoothed: Vec<f32>,
    tmp: Vec<f32>,
    pad: Vec<f32>,
    /// Per-row gradient work: gx, gy (then the two orientation weights), lower bin.
    gx: Vec<f32>,
    gy: Vec<f32>,
    bins: Vec<u32>,
    /// `h × w × 8` orientation-interleaved gradient planes.
    grad: Vec<f32>,
    vert: Vec<f32>,
    horiz: Vec<f32>,
    row_of: Vec<usize>,
    col_of: Vec<usize>,
}

impl DsiftScratch {
    /// Empty buffers; they grow on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Dense SIFT of one image: returns the `N × 128` descriptors (row-major) and their
/// keypoints. See the module documentation for the exact computation.
///
/// Errors: invalid parameters ([`DsiftParams::validate`]), an empty image, a pixel count that
/// does not match the size, non-finite pixels, or an image (after `resize`) smaller than
/// [`DsiftParams::min_image_side`] on either side.
pub fn dense_sift(image: &GrayImage, params: &DsiftParams) -> Result<(Vec<f32>, Vec<Keypoint>)> {
    let mut scratch = DsiftScratch::new();
    let mut descriptors = Vec::new();
    let mut keypoints = Vec::new();
    dense_sift_with(
        image,
        params,
        &mut scratch,
        &mut descriptors,
        &mut keypoints,
    )?;
    Ok((descriptors, keypoints))
}

/// [`dense_sift`] on every image, in parallel on the current rayon pool (one scratch per
/// worker). Results are in input order and do not depend on the thread count.
pub fn dense_sift_batch(
    images: &[GrayImage],
    params: &DsiftParams,
) -> Result<Vec<(Vec<f32>, Vec<Keypoint>)>> {
    params.validate()?;
    images
        .par_iter()
        .enumerate()
        .map_init(DsiftScratch::new, |scratch, (i, image)| {
            let mut descriptors = Vec::new();
            let mut keypoints = Vec::new();
            dense_sift_with(image, params, scratch, &mut descriptors, &mut keypoints)
                .map_err(|e| Error::Invalid(format!("image {i}: {e}")))?;
            Ok((descriptors, keypoints))
        })
        .collect()
}

/// The cap of `resize`, for images used at their size: beyond it extraction needs tens of GB
/// (a 30000×3000 image ~16 GB) and would end in an allocation failure.
fn check_size_without_resize(params: &DsiftParams, width: usize, height: usize) -> Result<()> {
    if params.resize.is_none() && (width as u64).saturating_mul(height as u64) > MAX_RESIZE_PIXELS {
        return Err(Error::Invalid(format!(
            "a {width}x{height} image: more pixels than the {MAX_RESIZE_PIXELS} (2^26, e.g. \
             8192x8192) dense SIFT takes without a resize; scale it down first, or set a \
             resize (--resize when training; a model keeps the one it was trained with)"
        )));
    }
    Ok(())
}

/// [`dense_sift`] with caller-provided scratch; `descriptors` and `keypoints` are cleared and
/// refilled (their capacity is reused).
pub fn dense_sift_with(
    image: &GrayImage,
    params: &DsiftParams,
    scratch: &mut DsiftScratch,
    descriptors: &mut Vec<f32>,
    keypoints: &mut Vec<Keypoint>,
) -> Result<()> {
    params.validate()?;
    check_size_without_resize(params, image.width, image.height)?;
    image.check()?;
    descriptors.clear();
    keypoints.clear();
    let resized;
    let (work, sx, sy) = match params.resize {
        Some((w, h)) => {
            resized = image.resized(w, h)?;
            (
                &resized,
                image.width as f32 / w as f32,
                image.height as f32 / h as f32,
            )
        }
        None => (image, 1.0, 1.0),
    };
    let grids = params
        .bin_sizes
        .iter()
        .map(|&b| ScaleGrid::new(params, b, work.width, work.height))
        .collect::<Result<Vec<_>>>()?;
    let total: usize = grids.iter().map(ScaleGrid::count).sum();
    descriptors.reserve(total * DESCRIPTOR_LEN);
    keypoints.reserve(total);
    let arch = pulp::Arch::new();
    for grid in &grids {
        let start = keypoints.len();
        let half = 0.5 * (NB - 1) as f32 * grid.bin as f32;
        for j in 0..grid.ny {
            for i in 0..grid.nx {
                // VLFeat's keypoint centre, then mapped back to the input image.
                let x = (grid.min_x + i * grid.step) as f32 + half;
                let y = (grid.min_y + j * grid.step) as f32 + half;
                keypoints.push(Keypoint {
                    x: (x + 0.5) * sx - 0.5,
                    y: (y + 0.5) * sy - 0.5,
                    scale: grid.bin as f32 * 0.5 * (sx + sy),
                    contrast: 0.0,
                });
            }
        }
        let kps = &mut keypoints[start..];
        arch.dispatch(ScaleOp {
            image: work,
            params,
            grid,
            scratch,
            out: descriptors,
            kps,
        });
    }
    Ok(())
}

/// The descriptor grid of one scale, in the (possibly resized) working image.
#[derive(Clone, Copy, Debug)]
struct ScaleGrid {
    bin: usize,
    step: usize,
    /// Upper-left corner of the first frame (VLFeat's `boundMin`).
    min_x: usize,
    min_y: usize,
    nx: usize,
    ny: usize,
    width: usize,
    height: usize,
}

impl ScaleGrid {
    fn new(params: &DsiftParams, bin: usize, width: usize, height: usize) -> Result<Self> {
        let max_bin = params.bin_sizes.iter().copied().max().unwrap_or(bin);
        // vl_phow.m: off = floor(1 + 3/2 (max − b)) in 1-based MATLAB bounds.
        let off = (3 * (max_bin - bin)) / 2;
        let extent = bin * (NB - 1) + 1;
        let fits = |side: usize| side >= off + extent;
        if !fits(width) || !fits(height) {
            let need = params.min_image_side();
            return Err(Error::Invalid(format!(
                "image of {width}x{height} pixels is smaller than one descriptor: bin size \
                 {max_bin} needs at least {need}x{need} pixels (enlarge it with `resize` or use \
                 smaller bin sizes)"
            )));
        }
        Ok(ScaleGrid {
            bin,
            step: params.step,
            min_x: off,
            min_y: off,
            nx: (width - off - extent) / params.step + 1,
            ny: (height - off - extent) / params.step + 1,
            width,
            height,
        })
    }

    fn count(&self) -> usize {
        self.nx * self.ny
    }

    /// Raw descriptor mass is divided by this (VLFeat's `normConstant`, the frame area).
    fn frame_area(&self) -> f32 {
        ((self.bin * (NB - 1) + 1) as f32).powi(2)
    }
}

/// One scale's work, run through `pulp` so that it is compiled for the best instruction set
/// of this CPU (AVX2 where present; everything below is `#[inline(always)]` so that it lands
/// inside the dispatched function). The code is plain float arithmetic without fused
/// multiply-adds, so results do not depend on the dispatch.
struct ScaleOp<'a> {
    image: &'a GrayImage,
    params: &'a DsiftParams,
    grid: &'a ScaleGrid,
    scratch: &'a mut DsiftScratch,
    out: &'a mut Vec<f32>,
    kps: &'a mut [Keypoint],
}

impl pulp::WithSimd for ScaleOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        extract_scale(
            self.image,
            self.params,
            self.grid,
            self.scratch,
            self.out,
            self.kps,
        );
    }
}

/// Appends the finished descriptors of one scale to `out` and sets the contrast of `kps`.
#[inline(always)]
fn extract_scale(
    image: &GrayImage,
    params: &DsiftParams,
    grid: &ScaleGrid,
    scratch: &mut DsiftScratch,
    out: &mut Vec<f32>,
    kps: &mut [Keypoint],
) {
    let (w, h) = (grid.width, grid.height);
    let sigma = grid.bin as f64 / params.magnif as f64;
    let smoothed = params.smooth && sigma * sigma > 0.25;
    if smoothed {
        let taps = gaussian_taps((sigma * sigma - 0.25).sqrt());
        smooth(&image.pixels, w, h, &taps, scratch);
    }
    let pixels = if smoothed {
        &scratch.smoothed[..w * h]
    } else {
        &image.pixels[..]
    };
    gradient_planes(
        pixels,
        w,
        h,
        &mut scratch.gx,
        &mut scratch.gy,
        &mut scratch.bins,
        &mut scratch.grad,
    );
    match params.window {
        Window::Flat => flat_window(grid, params, scratch, out, kps),
        Window::Gaussian => gaussian_window(grid, params, scratch, out, kps),
    }
}

/// Grows `v` to at least `n` elements (never shrinks, never clears) and returns `&mut v[..n]`;
/// callers overwrite every element they read.
fn buffer(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// VLFeat's `_vl_new_gaussian_fitler_f`: half-width `⌈3σ⌉`, taps `exp(−x²/2σ²)` rounded to
/// float, divided by their float sum.
fn gaussian_taps(sigma: f64) -> Vec<f32> {
    let half = (sigma * 3.0).ceil() as usize;
    let mut taps = vec![0.0f32; 2 * half + 1];
    let mut mass = 1.0f32;
    taps[half] = 1.0;
    for i in 1..=half {
        let x = i as f64 / sigma;
        let g = (-0.5 * x * x).exp();
        mass = (mass as f64 + (g + g)) as f32;
        taps[half - i] = g as f32;
        taps[half + i] = g as f32;
    }
    for t in &mut taps {
        *t /= mass;
    }
    taps
}

/// Separable convolution of `src` by the symmetric `taps` into `scratch.smoothed`, columns
/// then rows, borders padded by continuity (`vl_imsmooth_f`).
#[inline(always)]
fn smooth(src: &[f32], w: usize, h: usize, taps: &[f32], scratch: &mut DsiftScratch) {
    let r = taps.len() / 2;
    let tmp = buffer(&mut scratch.tmp, w * h);
    for (y, dst) in tmp.chunks_exact_mut(w).enumerate() {
        convolve_rows(src, w, h, y, taps, dst);
    }
    let pad = buffer(&mut scratch.pad, w + 2 * r);
    let out = buffer(&mut scratch.smoothed, w * h);
    for (row, dst) in scratch.tmp[..w * h]
        .chunks_exact(w)
        .zip(out.chunks_exact_mut(w))
    {
        pad[..r].fill(row[0]);
        pad[r..r + w].copy_from_slice(row);
        pad[r + w..].fill(row[w - 1]);
        dst.copy_from_slice(&pad[..w]);
        for t in dst.iter_mut() {
            *t *= taps[0];
        }
        for (k, &t) in taps.iter().enumerate().skip(1) {
            for (d, s) in dst.iter_mut().zip(&pad[k..k + w]) {
                *d += t * s;
            }
        }
    }
}

/// `out = Σ_k taps[k] · rows[clamp(y + k − r)]` for a `rows` matrix of `h` rows of `len`
/// floats (continuity padding), accumulated in register-sized chunks.
#[inline(always)]
fn convolve_rows(rows: &[f32], len: usize, h: usize, y: usize, taps: &[f32], out: &mut [f32]) {
    const CHUNK: usize = 64;
    let r = taps.len() / 2;
    let start = |k: usize| (y + k).saturating_sub(r).min(h - 1) * len;
    let mut c = 0;
    while c + CHUNK <= len {
        let mut acc = [0.0f32; CHUNK];
        for (k, &t) in taps.iter().enumerate() {
            let src = &rows[start(k) + c..][..CHUNK];
            for (a, s) in acc.iter_mut().zip(src) {
                *a += t * s;
            }
        }
        out[c..c + CHUNK].copy_from_slice(&acc);
        c += CHUNK;
    }
    let rest = &mut out[c..];
    rest.fill(0.0);
    for (k, &t) in taps.iter().enumerate() {
        for (a, s) in rest.iter_mut().zip(&rows[start(k) + c..start(k) + len]) {
            *a += t * s;
        }
    }
}

/// VLFeat's `vl_fast_resqrt_f`: bit-level initial guess and two Newton steps.
#[inline(always)]
fn fast_resqrt(x: f32) -> f32 {
    let xhalf = 0.5 * x;
    let mut y = f32::from_bits(0x5f37_59dfu32.wrapping_sub(x.to_bits() >> 1));
    y = y * (1.5 - xhalf * y * y);
    y * (1.5 - xhalf * y * y)
}

/// VLFeat's `vl_fast_sqrt_f` (relative error about 5e-6; exactly 0 below 1e-8).
#[inline(always)]
fn fast_sqrt(x: f32) -> f32 {
    if (x as f64) < 1e-8 {
        0.0
    } else {
        x * fast_resqrt(x)
    }
}

/// VLFeat's `vl_fast_atan2_f`: a cubic in `r = (x − |y|)/(x + |y|)`, error below 0.005 rad.
#[inline(always)]
fn fast_atan2(y: f32, x: f32) -> f32 {
    const C3: f32 = 0.1821;
    const C1: f32 = 0.9675;
    let abs_y = y.abs() + f32::EPSILON;
    let (r, base) = if x >= 0.0 {
        ((x - abs_y) / (x + abs_y), std::f32::consts::FRAC_PI_4)
    } else {
        (
            (x + abs_y) / (abs_y - x),
            (3.0 * std::f64::consts::PI / 4.0) as f32,
        )
    };
    let angle = base + (C3 * r * r - C1) * r;
    if y < 0.0 {
        -angle
    } else {
        angle
    }
}

/// Writes the 8 orientation planes of the gradient, interleaved: `grad[(y·w + x)·8 + t]`.
/// The modulus is split between the two orientation bins around the angle, linearly.
#[inline(always)]
fn gradient_planes(
    img: &[f32],
    w: usize,
    h: usize,
    gx: &mut Vec<f32>,
    gy: &mut Vec<f32>,
    bins: &mut Vec<u32>,
    grad: &mut Vec<f32>,
) {
    const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;
    let bins_per_radian = NT as f64 / (2.0 * std::f64::consts::PI);
    let gx = buffer(gx, w);
    let gy = buffer(gy, w);
    if bins.len() < w {
        bins.resize(w, 0);
    }
    let bins = &mut bins[..w];
    let grad = buffer(grad, w * h * NT);
    for (y, out) in grad.chunks_exact_mut(w * NT).enumerate() {
        let row = &img[y * w..(y + 1) * w];
        let (up, down, f) = if y == 0 {
            (row, &img[w..2 * w], 1.0f32)
        } else if y == h - 1 {
            (&img[(y - 1) * w..y * w], row, 1.0)
        } else {
            (
                &img[(y - 1) * w..y * w],
                &img[(y + 1) * w..(y + 2) * w],
                0.5,
            )
        };
        for ((g, d), u) in gy.iter_mut().zip(down).zip(up) {
            *g = f * (d - u);
        }
        gx[0] = row[1] - row[0];
        gx[w - 1] = row[w - 1] - row[w - 2];
        for (g, pair) in gx[1..w - 1].iter_mut().zip(row.windows(3)) {
            *g = 0.5 * (pair[2] - pair[0]);
        }
        // Polar form, in place: gx ← weight of the lower bin, gy ← weight of the upper one.
        for ((a, b), bin) in gx.iter_mut().zip(gy.iter_mut()).zip(bins.iter_mut()) {
            let (x, y) = (*a, *b);
            let angle = fast_atan2(y, x);
            let modulus = fast_sqrt(x * x + y * y);
            let angle = if angle < 0.0 { angle + TWO_PI } else { angle };
            let nt = (angle as f64 * bins_per_radian) as f32;
            let t = nt as i32; // nt >= 0: truncation is floor
            let frac = nt - t as f32;
            *bin = t as u32 % NT as u32;
            *a = (1.0 - frac) * modulus;
            *b = frac * modulus;
        }
        // Lane-wise selects rather than two indexed stores: vectorises, and avoids a
        // store-forwarding stall per pixel.
        for (((px, &t), &lo), &hi) in out.chunks_exact_mut(NT).zip(&*bins).zip(&*gx).zip(&*gy) {
            let next = (t + 1) % NT as u32;
            for (k, p) in px.iter_mut().enumerate() {
                let k = k as u32;
                *p = if k == t {
                    lo
                } else if k == next {
                    hi
                } else {
                    0.0
                };
            }
        }
    }
}

/// `Σ_k taps[k] · row[clamp(x + k − r)][0..8]` on an interleaved row of `w` pixels.
#[inline(always)]
fn horizontal_at(row: &[f32], w: usize, x: usize, taps: &[f32]) -> [f32; NT] {
    let r = taps.len() / 2;
    let mut acc = [0.0f32; NT];
    if x >= r && x + r < w {
        let span = &row[(x - r) * NT..(x + r + 1) * NT];
        for (px, &t) in span.chunks_exact(NT).zip(taps) {
            for (a, v) in acc.iter_mut().zip(px) {
                *a += t * v;
            }
        }
    } else {
        for (k, &t) in taps.iter().enumerate() {
            let xx = (x + k).saturating_sub(r).min(w - 1);
            for (a, v) in acc.iter_mut().zip(&row[xx * NT..(xx + 1) * NT]) {
                *a += t * v;
            }
        }
    }
    acc
}

/// VLFeat's `_vl_dsift_get_bin_window_mean`: mean of the Gaussian window over bin `index`.
fn window_mean(bin: usize, index: usize, window_size: f32) -> f32 {
    let delta = bin as f32 * (index as f32 - 0.5 * (NB - 1) as f32);
    let sigma = bin as f32 * window_size;
    let b = bin as i64;
    let mut acc = 0.0f32;
    for x in -b + 1..b {
        let z = (x as f32 - delta) / sigma;
        acc += (-0.5 * z * z).exp();
    }
    acc / (2 * bin - 1) as f32
}

/// Taps (for offsets `u = −(b−1)..=b−1`, weight of pixel `p + u`) of the Gaussian-window
/// binning kernel of bin `index`: VLFeat's `_vl_dsift_new_kernel`, mirrored because
/// `vl_imconvcol_vf` convolves (rather than correlates).
fn gaussian_bin_taps(bin: usize, index: usize, window_size: f32) -> Vec<f32> {
    let delta = bin as f32 * (index as f32 - 0.5 * (NB - 1) as f32);
    let sigma = bin as f32 * window_size;
    let b = bin as i64;
    (-b + 1..b)
        .map(|u| {
            let x = -u as f32;
            let z = (x - delta) / sigma;
            (1.0 - x.abs() / bin as f32) * (-0.5 * z * z).exp()
        })
        .collect()
}

/// Flat window: one triangular convolution per needed row and column, shared by all the
/// spatial bins that sample it, then the per-bin window weight.
#[inline(always)]
fn flat_window(
    grid: &ScaleGrid,
    params: &DsiftParams,
    scratch: &mut DsiftScratch,
    out: &mut Vec<f32>,
    kps: &mut [Keypoint],
) {
    let (w, h, b) = (grid.width, grid.height, grid.bin);
    let len = w * NT;
    let taps: Vec<f32> = (0..2 * b - 1)
        .map(|k| (b - k.abs_diff(b - 1)) as f32)
        .collect();
    // Needed rows and columns, and their index in the compact buffers.
    let mark = |marks: &mut Vec<usize>, size: usize, min: usize, n: usize| -> Vec<usize> {
        marks.clear();
        marks.resize(size, usize::MAX);
        for k in 0..n {
            for bi in 0..NB {
                marks[min + k * grid.step + bi * b] = 0;
            }
        }
        let mut list = Vec::new();
        for (p, m) in marks.iter_mut().enumerate() {
            if *m == 0 {
                *m = list.len();
                list.push(p);
            }
        }
        list
    };
    let rows = mark(&mut scratch.row_of, h, grid.min_y, grid.ny);
    let cols = mark(&mut scratch.col_of, w, grid.min_x, grid.nx);
    let ncols = cols.len();
    let vert = buffer(&mut scratch.vert, len);
    let horiz = buffer(&mut scratch.horiz, rows.len() * ncols * NT);
    for (&y, hrow) in rows.iter().zip(horiz.chunks_exact_mut(ncols * NT)) {
        convolve_rows(&scratch.grad, len, h, y, &taps, vert);
        for (&x, px) in cols.iter().zip(hrow.chunks_exact_mut(NT)) {
            px.copy_from_slice(&horizontal_at(vert, w, x, &taps));
        }
    }
    // VLFeat: triangle of unit integral (1/b² per axis), then × b · window mean per axis.
    let scale = (1.0 / (b as f64 * b as f64)) as f32;
    let weights: Vec<f32> = (0..NB)
        .map(|i| window_mean(b, i, params.window_size) * b as f32)
        .collect();
    let frame_area = grid.frame_area();
    let mut d = [0.0f32; DESCRIPTOR_LEN];
    for j in 0..grid.ny {
        for i in 0..grid.nx {
            for by in 0..NB {
                let ri = scratch.row_of[grid.min_y + j * grid.step + by * b];
                for bx in 0..NB {
                    let ci = scratch.col_of[grid.min_x + i * grid.step + bx * b];
                    let wgt = weights[bx] * weights[by];
                    let src = &horiz[(ri * ncols + ci) * NT..][..NT];
                    let dst = &mut d[(by * NB + bx) * NT..][..NT];
                    for (o, s) in dst.iter_mut().zip(src) {
                        *o = wgt * (scale * (scale * s));
                    }
                }
            }
            kps[j * grid.nx + i].contrast = finish_descriptor(&mut d, frame_area, params);
            out.extend_from_slice(&d);
        }
    }
}

/// Gaussian window: per spatial bin its own separable kernel (triangle × Gaussian). One grid
/// row at a time: the 4 vertically convolved image rows, then every descriptor of the row.
#[inline(always)]
fn gaussian_window(
    grid: &ScaleGrid,
    params: &DsiftParams,
    scratch: &mut DsiftScratch,
    out: &mut Vec<f32>,
    kps: &mut [Keypoint],
) {
    let (w, h, b) = (grid.width, grid.height, grid.bin);
    let len = w * NT;
    let taps: Vec<Vec<f32>> = (0..NB)
        .map(|i| gaussian_bin_taps(b, i, params.window_size))
        .collect();
    let frame_area = grid.frame_area();
    let vert = buffer(&mut scratch.vert, NB * len);
    let mut d = [0.0f32; DESCRIPTOR_LEN];
    for j in 0..grid.ny {
        for (by, v) in vert.chunks_exact_mut(len).enumerate() {
            let y = grid.min_y + j * grid.step + by * b;
            convolve_rows(&scratch.grad, len, h, y, &taps[by], v);
        }
        for i in 0..grid.nx {
            for (by, v) in vert.chunks_exact(len).enumerate() {
                for (bx, xtaps) in taps.iter().enumerate() {
                    let x = grid.min_x + i * grid.step + bx * b;
                    d[(by * NB + bx) * NT..][..NT].copy_from_slice(&horizontal_at(v, w, x, xtaps));
                }
            }
            kps[j * grid.nx + i].contrast = finish_descriptor(&mut d, frame_area, params);
            out.extend_from_slice(&d);
        }
    }
}

/// Sum of `d` with 8 interleaved partial sums (vectorisable; `d.len()` is a multiple of 8).
#[inline(always)]
fn sum8(d: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; NT];
    for c in d.chunks_exact(NT) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// VLFeat's `_vl_dsift_normalize_histogram`: divide by `fast_sqrt(Σ x²) + ε`.
#[inline(always)]
fn normalize_l2(d: &mut [f32]) {
    let norm = fast_sqrt(sum8(d, |v| v * v)) + f32::EPSILON;
    let inv = 1.0 / norm;
    for v in d {
        *v *= inv;
    }
}

/// Normalise, clamp, renormalise, threshold and optionally RootSIFT one raw descriptor;
/// returns its contrast (raw mass over the frame area, VLFeat's keypoint norm).
#[inline(always)]
fn finish_descriptor(d: &mut [f32], frame_area: f32, params: &DsiftParams) -> f32 {
    let contrast = sum8(d, |v| v) / frame_area;
    normalize_l2(d);
    for v in d.iter_mut() {
        *v = v.min(params.clamp);
    }
    normalize_l2(d);
    if contrast < params.contrast_threshold {
        d.fill(0.0);
    } else if params.root_sift {
        let l1 = sum8(d, |v| v);
        if l1 > 0.0 {
            let inv = 1.0 / l1;
            for v in d.iter_mut() {
                *v = (*v * inv).sqrt();
            }
        }
    }
    contrast
}
