//! Bad input to the encoder and the backward pass comes back as `dfk::Error`, never a panic.

use dfk::fisher::{FisherEncoder, FisherOptions, GmmGradient};
use dfk::gmm::Gmm;
use dfk::Error;

fn encoder() -> FisherEncoder {
    let gmm = Gmm::new(
        2,
        3,
        vec![0.0, 0.5, -0.5, 1.0, -1.0, 0.25],
        vec![1.0, 0.5, 2.0, 0.75, 1.5, 1.0],
        vec![0.6, 0.4],
    )
    .unwrap();
    FisherEncoder::new(&gmm, FisherOptions::default()).unwrap()
}

fn data(rows: usize) -> Vec<f32> {
    (0..rows * 3)
        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
        .collect()
}

#[test]
fn empty_image_is_an_error() {
    let enc = encoder();
    let mut out = vec![0f32; enc.len()];
    let err = enc.encode(&[], &mut out, &mut enc.scratch()).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
    let mut g = GmmGradient::zeros(2, 3);
    let err = enc
        .backward(&[], &[1.0; 12], &mut g, &mut enc.scratch())
        .unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err}");
}

#[test]
fn non_finite_descriptor_names_the_row() {
    let enc = encoder();
    let mut out = vec![0f32; enc.len()];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = data(4);
        x[2 * 3 + 1] = bad;
        let err = enc.encode(&x, &mut out, &mut enc.scratch()).unwrap_err();
        match &err {
            Error::NonFinite { what, index } => {
                assert!(what.contains("row 2"), "{err}");
                assert_eq!(*index, 7);
            }
            _ => panic!("expected NonFinite, got {err}"),
        }
    }
    // In a batch the message also names the image.
    let mut x = data(6);
    x[4 * 3] = f32::NAN;
    let mut out = vec![0f32; 2 * enc.len()];
    let err = enc.encode_batch(&x, &[0, 3, 6], &mut out).unwrap_err();
    assert!(
        err.to_string().contains("image 1") && err.to_string().contains("row 1"),
        "{err}"
    );
}

#[test]
fn wrong_dimension_is_an_error() {
    let enc = encoder();
    let mut out = vec![0f32; enc.len()];
    let err = enc
        .encode(&[0.0; 7], &mut out, &mut enc.scratch())
        .unwrap_err();
    assert!(
        err.to_string().contains("multiple of the GMM dimension 3"),
        "{err}"
    );
    let mut out2 = vec![0f32; 2 * enc.len()];
    let err = enc
        .encode_batch(&[0.0; 8], &[0, 1, 2], &mut out2)
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[test]
fn bad_offsets_are_errors() {
    let enc = encoder();
    let x = data(6);
    let mut out = vec![0f32; 2 * enc.len()];
    for offsets in [&[0usize, 3, 3][..], &[0, 4, 2], &[0, 3, 7], &[]] {
        let err = enc.encode_batch(&x, offsets, &mut out).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{offsets:?}: {err}");
        let g = vec![1f32; 2 * enc.len()];
        assert!(enc.backward_batch(&x, offsets, &g).is_err(), "{offsets:?}");
    }
    let err = enc.encode_batch(&x, &[0, 3, 3], &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("image 1 would have no descriptors"),
        "{err}"
    );
    let err = enc.encode_batch(&x, &[0, 3, 7], &mut out).unwrap_err();
    assert!(
        err.to_string().contains("past the 6 descriptor rows"),
        "{err}"
    );
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let enc = encoder();
    let x = data(6);
    let mut short = vec![0f32; enc.len() - 1];
    let err = enc.encode(&x, &mut short, &mut enc.scratch()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimMismatch {
                expected: 12,
                got: 11,
                ..
            }
        ),
        "{err}"
    );
    let mut out = vec![0f32; enc.len()];
    let err = enc.encode_batch(&x, &[0, 3, 6], &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimMismatch {
                expected: 24,
                got: 12,
                ..
            }
        ),
        "{err}"
    );
    let err = enc.backward_batch(&x, &[0, 3, 6], &[0.0; 12]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimMismatch {
                expected: 24,
                got: 12,
                ..
            }
        ),
        "{err}"
    );
    let mut g = GmmGradient::zeros(2, 3);
    let err = enc
        .backward(&x, &[0.0; 11], &mut g, &mut enc.scratch())
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    let mut wrong = GmmGradient::zeros(3, 3);
    let err = enc
        .backward(&x, &[0.0; 12], &mut wrong, &mut enc.scratch())
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    let err = enc
        .backward(&x, &[f32::NAN; 12], &mut g, &mut enc.scratch())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let gmm = encoder().gmm().clone();
    for o in [
        FisherOptions {
            power: 0.0,
            ..FisherOptions::default()
        },
        FisherOptions {
            power: f32::NAN,
            ..FisherOptions::default()
        },
        FisherOptions {
            posterior_threshold: 1.0,
            ..FisherOptions::default()
        },
        FisherOptions {
            sqrt_epsilon: -1e-3,
            ..FisherOptions::default()
        },
    ] {
        let err = FisherEncoder::new(&gmm, o).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { .. }),
            "{o:?}: {err}"
        );
    }
}

#[test]
fn statistics_beyond_float32_are_an_error_not_infinities() {
    // Unnormalised, a value near the float32 limit gives a second-order statistic ~1e77.
    let gmm = Gmm::new(2, 3, vec![0.0; 6], vec![1.0; 6], vec![0.5, 0.5]).unwrap();
    let enc = FisherEncoder::new(&gmm, FisherOptions::plain()).unwrap();
    let mut x = data(4);
    x[3] = 3e38;
    let mut out = vec![0f32; enc.len()];
    let err = enc.encode(&x, &mut out, &mut enc.scratch()).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { what, .. } if what.contains("too large")),
        "{err}"
    );
    // Normalised, the same descriptors encode to a finite unit vector.
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    enc.encode(&x, &mut out, &mut enc.scratch()).unwrap();
    let norm = out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}
