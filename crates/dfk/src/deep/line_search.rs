//! Backtracking line search with the Armijo sufficient-decrease condition.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Step-size rule: try `t`, accept when J(θ + t d) ≤ J(θ) + c₁ t ⟨∇J, d⟩, otherwise shrink.
///
/// Every trial re-encodes the images and re-solves the SVMs, so the rule aims at one trial per
/// search. With `adaptive` (the default): a rejected trial is retried at `shrink` t when
/// `early_rejection` is on (the default: the rejected trial's J is then not always computed),
/// otherwise at the minimiser of the quadratic through J(θ), the slope and the rejected value,
/// clamped to [0.1 t, `shrink` t] (safeguarded backtracking); the next search starts at the minimiser of the quadratic
/// through the accepted point, kept within [t, `grow` t] — it grows only where the model says
/// the last step was short, and an accepted step is never shrunk (the model, fitted to a
/// function that is not quadratic, tends to under-estimate it). Without `adaptive` (the rule
/// of the first sweep): halve on rejection, always start the next search at `grow` × the
/// accepted step. Steps stay in [`min_step`, `max_step`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineSearch {
    /// Armijo constant c₁ (1e-4).
    pub c1: f64,
    /// First step of the first search (0.1).
    pub initial_step: f64,
    /// Largest step (1.0).
    pub max_step: f64,
    /// Factor after a failed trial (0.5).
    pub shrink: f64,
    /// Factor applied to an accepted step to start the next search (1.5).
    pub grow: f64,
    /// The search gives up when the step falls below this (1e-4): the iterate is then
    /// (numerically) stationary along the direction.
    pub min_step: f64,
    /// Next search from the quadratic model of the accepted point (and, without
    /// `early_rejection`, quadratic retries) (true), or plain halving and growth.
    pub adaptive: bool,
    /// Offer each trial's evaluation the acceptance threshold, so that it may reject the step
    /// as soon as it can certify J above it ([`Trial::Above`]: the trainer stops the SVM solve
    /// once its dual bound is there). Every trial's accept/reject decision is the same either
    /// way, but J of a rejected trial is then not always known, so a rejected trial is retried
    /// at `shrink` t: the quadratic retry would depend on when the solve stopped, and so on
    /// the solver's thread count.
    pub early_rejection: bool,
}

impl Default for LineSearch {
    fn default() -> Self {
        Self {
            c1: 1e-4,
            initial_step: 0.1,
            max_step: 1.0,
            shrink: 0.5,
            grow: 1.5,
            min_step: 1e-4,
            adaptive: true,
            early_rejection: true,
        }
    }
}

/// An accepted step: its size, the objective there, what the evaluation produced, how many
/// trials (evaluations) the search took, and where the next search should start.
#[derive(Debug)]
pub struct Accepted<T> {
    /// Accepted step size t.
    pub step: f64,
    /// J(θ + t d).
    pub value: f64,
    /// Whatever the evaluation returned alongside J (encodings, SVMs).
    pub payload: T,
    /// Number of evaluations, including the accepted one.
    pub trials: usize,
    /// First step of the next search.
    pub next: f64,
}

/// What one evaluation of J at a trial step produced.
#[derive(Debug)]
pub enum Trial<T> {
    /// J(θ + t d) and whatever the evaluation returned alongside it.
    Value(f64, T),
    /// J(θ + t d) is certainly ≥ this bound, which exceeds the acceptance threshold the
    /// evaluation was given: the trial is rejected without J being computed.
    Above(f64),
    /// The step produced non-finite parameters or values.
    Invalid,
}

/// Result of one search: an accepted step, or none after `trials` rejected ones.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The Armijo condition held at some t ≥ `min_step`.
    Accepted(Accepted<T>),
    /// No step ≥ `min_step` decreased J enough (or the direction is not a descent direction).
    Failed {
        /// Number of evaluations made.
        trials: usize,
    },
}

impl LineSearch {
    /// Checks the constants; the error names the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::param(name, v, "a finite value > 0"))
            }
        };
        pos("min_step", self.min_step)?;
        if !(self.c1 > 0.0 && self.c1 < 1.0) {
            return Err(Error::param("c1", self.c1, "a value in (0, 1)"));
        }
        if !(self.shrink > 0.0 && self.shrink < 1.0) {
            return Err(Error::param("shrink", self.shrink, "a value in (0, 1)"));
        }
        if !(self.grow.is_finite() && self.grow >= 1.0) {
            return Err(Error::param("grow", self.grow, "a finite value >= 1"));
        }
        if !(self.max_step.is_finite() && self.max_step >= self.min_step) {
            return Err(Error::param(
                "max_step",
                self.max_step,
                format!("a finite value >= min_step = {}", self.min_step),
            ));
        }
        if !(self.initial_step >= self.min_step && self.initial_step <= self.max_step) {
            return Err(Error::param(
                "initial_step",
                self.initial_step,
                format!(
                    "a value in [min_step, max_step] = [{}, {}]",
                    self.min_step, self.max_step
                ),
            ));
        }
        Ok(())
    }

    /// The starting step of the search after one that accepted step `t` at its trial number
    /// `trials`.
    pub fn next_step(&self, t: f64, trials: usize) -> f64 {
        let next = if trials <= 1 || !self.adaptive {
            t * self.grow
        } else {
            t
        };
        self.within_bounds(next)
    }

    /// The starting step of the next search after accepting `t` with J = `value` at trial
    /// number `trials`: with `adaptive`, the minimiser of the quadratic through J(θ) = `f0`, the
    /// slope and the accepted value, kept within [t, `grow` t] (`grow` t where that quadratic
    /// is not convex); otherwise [`Self::next_step`].
    pub fn next_after(&self, f0: f64, slope: f64, t: f64, value: f64, trials: usize) -> f64 {
        if !self.adaptive {
            return self.next_step(t, trials);
        }
        let next =
            quadratic_min(f0, slope, t, value).map_or(t * self.grow, |q| q.clamp(t, t * self.grow));
        self.within_bounds(next)
    }

    /// `t` within [`min_step`, `max_step`], without `f64::clamp`'s panic when constants that
    /// [`Self::validate`] refuses (min above max, NaN) come in.
    fn within_bounds(&self, t: f64) -> f64 {
        t.min(self.max_step).max(self.min_step)
    }

    /// The step to try after `t` was rejected with J = `value` (`None`: not finite).
    fn retry_step(&self, f0: f64, slope: f64, t: f64, value: Option<f64>) -> f64 {
        let halved = t * self.shrink;
        match value.and_then(|v| quadratic_min(f0, slope, t, v)) {
            // Never below a tenth of t, never above the plain shrink (which may itself be
            // below a tenth).
            Some(s) if self.adaptive && !self.early_rejection => {
                s.clamp((0.1 * t).min(halved), halved)
            }
            _ => halved,
        }
    }

    /// Searches along a direction with slope `slope` = ⟨∇J(θ), d⟩ from J(θ) = `f0`, starting at
    /// step `t0`. `eval(t, threshold)` evaluates J(θ + t d), which is accepted when it is
    /// ≤ f0 + c₁ t `slope`; `threshold` is that value with `early_rejection`, +∞ without. It
    /// returns [`Trial::Value`], or [`Trial::Above`] with a lower bound of J above `threshold`
    /// when it can certify the rejection early, or [`Trial::Invalid`] for non-finite results,
    /// which count as failed trials and are shrunk like them. Errors from `eval` (and an
    /// [`Trial::Above`] whose bound is not above the acceptance threshold) are passed on.
    pub fn search<T>(
        &self,
        f0: f64,
        slope: f64,
        t0: f64,
        mut eval: impl FnMut(f64, f64) -> Result<Trial<T>>,
    ) -> Result<Outcome<T>> {
        // Constants outside their ranges could loop for ever (a `min_step` of 0).
        self.validate()?;
        if !(slope < 0.0 && slope.is_finite() && f0.is_finite()) {
            return Ok(Outcome::Failed { trials: 0 });
        }
        let mut t = self.within_bounds(t0);
        let mut trials = 0;
        while t >= self.min_step {
            trials += 1;
            let threshold = f0 + self.c1 * t * slope;
            let offered = if self.early_rejection {
                threshold
            } else {
                f64::INFINITY
            };
            let value = match eval(t, offered)? {
                Trial::Value(value, payload) if value.is_finite() => {
                    if value <= threshold {
                        return Ok(Outcome::Accepted(Accepted {
                            step: t,
                            value,
                            payload,
                            trials,
                            next: self.next_after(f0, slope, t, value, trials),
                        }));
                    }
                    Some(value)
                }
                Trial::Above(bound) => {
                    if bound.is_nan() || bound <= threshold {
                        return Err(Error::Invalid(format!(
                            "line search: a trial rejected early reported the bound {bound}, which is not above its threshold {threshold}"
                        )));
                    }
                    None
                }
                Trial::Value(..) | Trial::Invalid => None,
            };
            t = self.retry_step(f0, slope, t, value);
        }
        Ok(Outcome::Failed { trials })
    }
}

/// Minimiser −slope / (2a) of q(s) = f0 + slope·s + a s² through (t, ft), when q is convex.
fn quadratic_min(f0: f64, slope: f64, t: f64, ft: f64) -> Option<f64> {
    let a = (ft - f0 - slope * t) / (t * t);
    let s = -slope / (2.0 * a);
    (a > 0.0 && s.is_finite() && s > 0.0).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_first_sufficient_decrease_and_halves_before() {
        // J(t) = (t − 0.01)² along d with slope −0.02 at t = 0: the decrease condition
        // (t − 0.01)² ≤ 1e-4 − 1e-4·0.02·t holds only for t ≲ 0.02.
        let ls = LineSearch {
            adaptive: false,
            ..LineSearch::default()
        };
        let mut tried = Vec::new();
        let out = ls
            .search(1e-4, -0.02, 0.1, |t, _| {
                tried.push(t);
                Ok(Trial::Value((t - 0.01) * (t - 0.01), ()))
            })
            .unwrap();
        match out {
            Outcome::Accepted(a) => {
                assert_eq!(tried, vec![0.1, 0.05, 0.025, 0.0125]);
                assert_eq!(a.step, 0.0125);
                assert_eq!(a.trials, 4);
                assert!(a.value < 1e-4);
                // Plain rule: 1.5× the accepted step even after backtracking.
                assert!((a.next - 0.01875).abs() < 1e-15);
            }
            Outcome::Failed { .. } => panic!("search failed"),
        }
        assert_eq!(ls.next_step(0.9, 1), 1.0);
    }

    #[test]
    fn adaptive_retry_lands_on_the_minimiser_of_a_quadratic() {
        // J(t) = 1 − t + 10 t²: minimiser 0.05, Armijo holds for t ≤ 0.1 (1 − 1e-4).
        let j = |t: f64| 1.0 - t + 10.0 * t * t;
        let ls = LineSearch {
            early_rejection: false,
            ..LineSearch::default()
        };
        let mut tried = Vec::new();
        let out = ls
            .search(1.0, -1.0, 0.5, |t, _| {
                tried.push(t);
                Ok(Trial::Value(j(t), ()))
            })
            .unwrap();
        let Outcome::Accepted(a) = out else {
            panic!("search failed")
        };
        // The rejected t = 0.5 gives the exact quadratic: the retry is its minimiser.
        assert_eq!(tried.len(), 2);
        assert!((a.step - 0.05).abs() < 1e-12, "{tried:?}");
        // Accepted after backtracking: the next search starts at the same step.
        assert!((a.next - 0.05).abs() < 1e-12);
        // Halving would have needed 0.5, 0.25, 0.125, 0.0625.
        let halving = LineSearch {
            adaptive: false,
            ..LineSearch::default()
        };
        let Outcome::Accepted(h) = halving
            .search(1.0, -1.0, 0.5, |t, _| Ok(Trial::Value(j(t), ())))
            .unwrap()
        else {
            panic!("search failed")
        };
        assert_eq!((h.step, h.trials), (0.0625, 4));
        // Accepted at the first trial: the next search starts at the quadratic's minimiser
        // 0.05, but at most 1.5× further and never closer.
        for (t, next) in [(0.02, 0.03), (0.04, 0.05), (0.08, 0.08)] {
            assert!(
                (ls.next_after(1.0, -1.0, t, j(t), 1) - next).abs() < 1e-12,
                "t = {t}"
            );
        }
        // A concave model gives no minimiser: 1.5×.
        assert!((ls.next_after(1.0, -1.0, 0.02, 1.0 - 0.02 - 0.01, 1) - 0.03).abs() < 1e-12);
        assert_eq!(ls.next_after(1.0, -1.0, 0.9, j(0.9) - 10.0, 1), 1.0);
        assert!((halving.next_after(1.0, -1.0, 0.04, j(0.04), 3) - 0.06).abs() < 1e-12);
        // The plain rule's growth.
        assert!((ls.next_step(0.01, 1) - 0.015).abs() < 1e-12);
        assert_eq!(ls.next_step(0.8, 1), 1.0);
        assert_eq!(halving.next_step(0.04, 3), 0.06);
        // A retry is never below a tenth of the rejected step (t = 0.1 then just fails the
        // Armijo test and the quadratic through it gives 0.05).
        let mut tried = Vec::new();
        let far = ls.search(1.0, -1.0, 1.0, |t, _| {
            tried.push(t);
            Ok(Trial::Value(if t > 0.15 { 1e6 } else { j(t) }, ()))
        });
        let Outcome::Accepted(f) = far.unwrap() else {
            panic!("search failed")
        };
        assert_eq!(tried[..2], [1.0, 0.1]);
        assert!((f.step - 0.05).abs() < 1e-12 && f.trials == 3, "{tried:?}");
    }

    #[test]
    fn early_rejection_gives_the_same_decisions_and_steps() {
        // J(t) = 1 − t + 10 t²: Armijo holds for t ≤ 0.1 (1 − 1e-4).
        let j = |t: f64| 1.0 - t + 10.0 * t * t;
        let run = |ls: &LineSearch, certify: bool| {
            let mut tried = Vec::new();
            let out = ls
                .search(1.0, -1.0, 0.9, |t, threshold| {
                    tried.push((t, threshold));
                    Ok(if certify && j(t) > threshold {
                        // The bound just above the threshold, as an early stop reports it.
                        Trial::Above(threshold + 1e-9)
                    } else {
                        Trial::Value(j(t), t)
                    })
                })
                .unwrap();
            let Outcome::Accepted(a) = out else {
                panic!("search failed")
            };
            (tried, a.step, a.value, a.payload, a.trials, a.next)
        };
        let ls = LineSearch::default();
        let (tried, step, value, payload, trials, next) = run(&ls, false);
        // Rejected at 0.9, 0.45, 0.225, 0.1125; accepted at 0.05625.
        assert_eq!(trials, 5);
        assert_eq!((step, payload), (0.05625, 0.05625));
        assert_eq!(value, j(0.05625));
        for &(t, threshold) in &tried {
            assert_eq!(threshold, 1.0 - 1e-4 * t);
        }
        assert_eq!(run(&ls, true), (tried, step, value, payload, trials, next));
        // Without early rejection the evaluation is offered no threshold, and the retries
        // follow the quadratic model of the rejected values.
        let quadratic = LineSearch {
            early_rejection: false,
            ..LineSearch::default()
        };
        let (tried, step, ..) = run(&quadratic, false);
        assert!(tried.iter().all(|&(_, th)| th == f64::INFINITY));
        // (0.9 overshoots so far that the quadratic's minimiser is clamped to 0.1 · 0.9.)
        assert_eq!(tried.len(), 2);
        assert!((step - 0.09).abs() < 1e-15, "{tried:?}");
        // A bound that does not exceed the acceptance threshold is an error, not a rejection.
        let bad = ls.search(1.0, -1.0, 0.9, |_, threshold| {
            Ok(Trial::<()>::Above(threshold))
        });
        assert!(matches!(bad, Err(Error::Invalid(_))));
    }

    #[test]
    fn non_finite_trials_are_shrunk() {
        let ls = LineSearch::default();
        let out = ls
            .search(1.0, -1.0, 1.0, |t, _| {
                Ok(if t > 0.3 {
                    Trial::Invalid
                } else if t > 0.2 {
                    Trial::Value(f64::NAN, ())
                } else {
                    Trial::Value(1.0 - t, ())
                })
            })
            .unwrap();
        match out {
            Outcome::Accepted(a) => assert_eq!((a.step, a.trials), (0.125, 4)),
            Outcome::Failed { .. } => panic!("search failed"),
        }
    }

    #[test]
    fn fails_on_ascent_or_flat_objective() {
        let ls = LineSearch::default();
        let mut calls = 0;
        let out = ls
            .search(1.0, 0.5, 0.1, |_, _| {
                calls += 1;
                Ok(Trial::Value(0.0, ()))
            })
            .unwrap();
        assert!(matches!(out, Outcome::Failed { trials: 0 }));
        assert_eq!(calls, 0);
        let out = ls
            .search(1.0, -1.0, 0.1, |_, _| Ok(Trial::Value(1.0, ())))
            .unwrap();
        // 0.1 → 0.05 → … halving while ≥ 1e-4: 10 trials.
        assert!(matches!(out, Outcome::Failed { trials: 10 }));
    }

    #[test]
    fn errors_pass_through_and_bad_constants_are_rejected() {
        let ls = LineSearch::default();
        let r: Result<Outcome<()>> =
            ls.search(1.0, -1.0, 0.1, |_, _| Err(Error::Invalid("x".into())));
        assert!(r.is_err());
        assert!(ls.validate().is_ok());
        for bad in [
            LineSearch {
                c1: 0.0,
                ..ls.clone()
            },
            LineSearch {
                shrink: 1.0,
                ..ls.clone()
            },
            LineSearch {
                grow: 0.5,
                ..ls.clone()
            },
            LineSearch {
                min_step: 0.0,
                ..ls.clone()
            },
            LineSearch {
                initial_step: 2.0,
                ..ls.clone()
            },
            LineSearch {
                max_step: f64::INFINITY,
                ..ls.clone()
            },
        ] {
            assert!(matches!(
                bad.validate(),
                Err(Error::InvalidParameter { .. })
            ));
        }
    }

    #[test]
    fn quadratic_retry_stays_within_a_small_shrink() {
        // f0 = 1, slope −1, J(1) = 2: the quadratic's minimiser is t = 0.25, above
        // shrink · t = 0.05 and so clamped to it (a shrink below 0.1 once made the clamp's
        // bounds cross and panic).
        let ls = LineSearch {
            shrink: 0.05,
            early_rejection: false,
            ..LineSearch::default()
        };
        assert!(ls.validate().is_ok());
        let s = ls.retry_step(1.0, -1.0, 1.0, Some(2.0));
        assert_eq!(s, 0.05);
        // With the shrink 0.5 the minimiser 0.25 is kept.
        let quadratic = LineSearch {
            early_rejection: false,
            ..LineSearch::default()
        };
        let s = quadratic.retry_step(1.0, -1.0, 1.0, Some(2.0));
        assert!((s - 0.25).abs() < 1e-12, "{s}");
        // With early rejection (the default) a rejected trial is retried at shrink · t.
        let s = LineSearch::default().retry_step(1.0, -1.0, 1.0, Some(2.0));
        assert_eq!(s, 0.5);
    }
}
