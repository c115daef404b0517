//! Fitness of an assignment: the mean KL divergence of the compressed model's
//! next-token distribution from the reference model's, on calibration windows.
//!
//! Costs are kept down three ways:
//! - the reference's probabilities are computed once per window and kept;
//! - every level's weights are decoded once and shared (candle tensors are
//!   reference-counted, so assembling a candidate model copies no weights);
//! - the hidden states of a *base* assignment (the current parent in the search,
//!   the reference model for per-unit errors) are cached at every block input, and
//!   a candidate is run only from the first block where it differs from the base.
//!
//! All positions of a window are scored (a search needs signal per token more
//! than llama-perplexity's second-half protocol, which `eval` still uses).
//!
//! With `top_k`, only the reference's `k` most likely tokens per position are
//! kept (plus the mass of the rest), bounding memory at `k` entries per position
//! instead of the vocabulary: the fitness is then the KL divergence between the
//! two distributions coarsened to those `k` tokens and one "other" bucket, a lower
//! bound of the full KL that is exact when the models agree outside the top `k`.

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use tersor_levels::LevelDb;
use tersor_model::Llama;
use tersor_search::{Assignment, Fitness, SearchError};

use crate::units::{Unit, UnitRef};
use crate::{CompressError, Result};

/// A candidate: a level per unit, `None` for the reference weight.
pub type Choice = Vec<Option<u16>>;

struct Window {
    tokens: Vec<u32>,
    reference: RefDist,
}

/// The reference's next-token distributions of one window.
enum RefDist {
    /// Probabilities `[ctx, vocab]` and per position `Σ p log p`.
    Dense { p: Vec<f32>, plogp: Vec<f64> },
    /// Per position the `k` most likely tokens and their probabilities
    /// (`[ctx, k]`), and `Σ p log p` over those buckets and the rest.
    TopK {
        k: usize,
        idx: Vec<u32>,
        p: Vec<f32>,
        rest: Vec<f64>,
        plogp: Vec<f64>,
    },
}

/// Hidden states of one assignment on the calibration batches, filled lazily.
struct Cache {
    key: Choice,
    /// Per batch: the input of every block (`n_layers`: the head's) and the batch's
    /// summed KL and scored positions; `None` until a stage needs the batch.
    batches: Vec<Option<CachedBatch>>,
}

#[derive(Clone)]
struct CachedBatch {
    hidden: Vec<Tensor>,
    kl_sum: f64,
    rows: usize,
}

/// The base's states, and those of the candidates scored in the current round (a
/// survivor scored again at a later stage reuses the windows it already ran, and the
/// winner, promoted to the next base, is not recomputed at all).
struct Caches {
    base: Option<Cache>,
    recent_stage: usize,
    recent: Vec<Cache>,
}

/// Evaluates assignments on calibration windows, stage by stage (see
/// [`Evaluator::kl`] for which windows a stage scores).
pub struct Evaluator {
    reference: Llama,
    units: Vec<Unit>,
    /// `weights[unit][level]`: the unit's tensor, `[rows, cols]` f32, or a sublayer
    /// unit's linears in [`crate::units::Sublayer::kinds`] order.
    weights: Vec<Vec<Vec<Tensor>>>,
    windows: Vec<Window>,
    stage_windows: Vec<usize>,
    batch: usize,
    /// The search's generation: early stages score a window set that rotates with it.
    round: std::sync::atomic::AtomicUsize,
    caches: Mutex<Caches>,
    evaluations: Mutex<Vec<usize>>,
}

impl Evaluator {
    /// Decode every level of `db` (in `units` order) and compute the reference's
    /// distributions on `windows` (each `ctx` tokens).
    pub fn new(
        reference: Llama,
        units: Vec<Unit>,
        db: &LevelDb,
        windows: Vec<Vec<u32>>,
        stage_windows: Vec<usize>,
        batch: usize,
        top_k: Option<usize>,
    ) -> Result<Self> {
        check_stages(&stage_windows, windows.len())?;
        let mut weights = Vec::with_capacity(units.len());
        for u in &units {
            let t = db.find(&u.name).ok_or_else(|| {
                CompressError::Invariant(format!("{} is not in the level database", u.name))
            })?;
            let mut lv = Vec::new();
            for l in 0..db.tensors()[t].levels.len() {
                let v = db.values(t, l)?;
                lv.push(Tensor::from_vec(v, (u.rows, u.cols), &Device::Cpu)?);
            }
            weights.push(lv);
        }
        Self::from_levels(
            reference,
            units,
            weights,
            windows,
            stage_windows,
            batch,
            top_k,
        )
    }

    /// [`Evaluator::new`] with every level's weights given: `weights[unit][level]`,
    /// `[rows, cols]` f32 (levels that are not in a database, such as a dropped
    /// sublayer's zeroed projection).
    pub fn from_levels(
        reference: Llama,
        units: Vec<Unit>,
        weights: Vec<Vec<Tensor>>,
        windows: Vec<Vec<u32>>,
        stage_windows: Vec<usize>,
        batch: usize,
        top_k: Option<usize>,
    ) -> Result<Self> {
        let weights = weights
            .into_iter()
            .map(|lv| lv.into_iter().map(|w| vec![w]).collect())
            .collect();
        Self::from_tensor_levels(
            reference,
            units,
            weights,
            windows,
            stage_windows,
            batch,
            top_k,
        )
    }

    /// [`Evaluator::from_levels`] where a level may set several tensors:
    /// `weights[unit][level]` is one tensor, or a [`UnitRef::Sublayer`] unit's linears
    /// in [`crate::units::Sublayer::kinds`] order.
    pub fn from_tensor_levels(
        reference: Llama,
        units: Vec<Unit>,
        weights: Vec<Vec<Vec<Tensor>>>,
        windows: Vec<Vec<u32>>,
        stage_windows: Vec<usize>,
        batch: usize,
        top_k: Option<usize>,
    ) -> Result<Self> {
        check_stages(&stage_windows, windows.len())?;
        let shapes = |u: &Unit| -> Result<Vec<Vec<usize>>> {
            Ok(match u.what {
                UnitRef::Sublayer(l, s) => s
                    .kinds()
                    .iter()
                    .map(|&k| Ok(reference.linear_weight(l, k)?.dims().to_vec()))
                    .collect::<Result<_>>()?,
                _ => vec![vec![u.rows, u.cols]],
            })
        };
        let mut ok = weights.len() == units.len();
        for (u, lv) in units.iter().zip(&weights) {
            let want = shapes(u)?;
            ok &= !lv.is_empty()
                && lv.iter().all(|ws| {
                    ws.len() == want.len() && ws.iter().zip(&want).all(|(w, d)| w.dims() == d)
                });
        }
        if !ok {
            return Err(CompressError::Invariant(
                "every unit needs at least one level of its own shape".into(),
            ));
        }
        let n_needed = *stage_windows.iter().max().expect("non-empty");
        let mut ws = Vec::with_capacity(n_needed);
        for chunk in windows[..n_needed].chunks(batch.max(1)) {
            let refs: Vec<&[u32]> = chunk.iter().map(|w| w.as_slice()).collect();
            let logits = reference.forward_batch(&refs)?;
            let v = reference.vocab_size();
            let logits = logits.flatten_all()?.to_vec1::<f32>()?;
            for (w, lg) in chunk.iter().zip(logits.chunks(w_len(chunk) * v)) {
                let (p, plogp) = probabilities(lg, v);
                let reference = match top_k {
                    Some(k) if k < v => top_k_dist(&p, v, k.max(1)),
                    _ => RefDist::Dense { p, plogp },
                };
                ws.push(Window {
                    tokens: w.clone(),
                    reference,
                });
            }
        }
        let n_stages = stage_windows.len();
        Ok(Evaluator {
            reference,
            units,
            weights,
            windows: ws,
            stage_windows,
            batch: batch.max(1),
            round: std::sync::atomic::AtomicUsize::new(0),
            caches: Mutex::new(Caches {
                base: None,
                recent_stage: 0,
                recent: Vec::new(),
            }),
            evaluations: Mutex::new(vec![0; n_stages]),
        })
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    pub fn n_levels(&self, unit: usize) -> usize {
        self.weights[unit].len()
    }

    /// Tokens scored at `stage`.
    pub fn stage_tokens(&self, stage: usize) -> usize {
        self.stage_batch_ids(stage)
            .into_iter()
            .flat_map(|b| self.batch_windows(b))
            .map(|w| w.tokens.len())
            .sum()
    }

    /// Model calls made per stage so far.
    pub fn evaluations(&self) -> Vec<usize> {
        self.evaluations.lock().expect("not poisoned").clone()
    }

    /// The reference model with the weights of `choice`.
    pub fn model(&self, choice: &[Option<u16>]) -> Result<Llama> {
        let mut m = self.reference.clone();
        for ((u, levels), c) in self.units.iter().zip(&self.weights).zip(choice) {
            let Some(l) = c else { continue };
            let mut ws = levels
                .get(*l as usize)
                .cloned()
                .ok_or_else(|| CompressError::Invariant(format!("{}: no level {l}", u.name)))?
                .into_iter();
            let mut w = || {
                ws.next().ok_or_else(|| {
                    CompressError::Invariant(format!("{}: level {l} lacks a tensor", u.name))
                })
            };
            match u.what {
                UnitRef::Embedding => m.set_embedding(w()?)?,
                UnitRef::Output => m.set_output_weight(w()?)?,
                UnitRef::Linear(layer, kind) => m.set_linear_weight(layer, kind, w()?)?,
                UnitRef::Sublayer(layer, s) => {
                    for &kind in s.kinds() {
                        m.set_linear_weight(layer, kind, w()?)?;
                    }
                }
            }
        }
        Ok(m)
    }

    /// Mean KL divergence of `choice` from the reference on the windows of `stage`,
    /// running only the blocks after the first one where `choice` differs from `base`.
    /// The stage with the most windows scores the first ones; a smaller stage scores a
    /// block of them that moves on with each generation ([`Fitness::begin_generation`]).
    ///
    /// Bit-identical to a full forward pass of `choice`: the skipped blocks' outputs are
    /// the base's, computed by the same operations on the same inputs.
    pub fn kl(&self, stage: usize, choice: &[Option<u16>], base: &[Option<u16>]) -> Result<f64> {
        let n_layers = self.reference.n_layers();
        let ids = self.stage_batch_ids(stage);
        let mut guard = self.caches.lock().expect("not poisoned");
        let caches = &mut *guard;
        if caches.base.as_ref().map(|c| c.key.as_slice()) != Some(base) {
            let reuse = caches.recent.iter().position(|c| c.key == base);
            caches.base = Some(match reuse {
                Some(i) => caches.recent.swap_remove(i),
                None => Cache {
                    key: base.to_vec(),
                    batches: vec![None; self.n_batches()],
                },
            });
            caches.recent.clear();
        }
        // A lower stage than the last call's starts a new round (a new generation).
        if stage < caches.recent_stage {
            caches.recent.clear();
        }
        caches.recent_stage = stage;
        let cache = caches.base.as_mut().expect("set above");
        let mut base_model = None;
        for &b in &ids {
            if cache.batches[b].is_none() {
                let m = match &base_model {
                    Some(m) => m,
                    None => base_model.insert(self.model(base)?),
                };
                cache.batches[b] = Some(self.run_batch(m, b, 0, None)?);
            }
        }
        let first = self
            .units
            .iter()
            .zip(choice.iter().zip(base))
            .filter(|(_, (a, b))| a != b)
            .map(|(u, _)| u.first_layer(n_layers))
            .min();
        let (kl_sum, rows) = match first {
            None => ids
                .iter()
                .filter_map(|&b| cache.batches[b].as_ref())
                .fold((0.0, 0), |(s, n), b| (s + b.kl_sum, n + b.rows)),
            Some(first) => {
                // A candidate scored at an earlier stage keeps its batches.
                let i = match caches.recent.iter().position(|c| c.key == choice) {
                    Some(i) => i,
                    None => {
                        caches.recent.push(Cache {
                            key: choice.to_vec(),
                            batches: vec![None; self.n_batches()],
                        });
                        caches.recent.len() - 1
                    }
                };
                let mine = &mut caches.recent[i];
                let mut model = None;
                let (mut kl_sum, mut rows) = (0.0, 0);
                for &b in &ids {
                    if mine.batches[b].is_none() {
                        let m = match &model {
                            Some(m) => m,
                            None => model.insert(self.model(choice)?),
                        };
                        let from = cache.batches[b].as_ref().expect("filled above");
                        mine.batches[b] = Some(self.run_batch(m, b, first, Some(&from.hidden))?);
                    }
                    let cb = mine.batches[b].as_ref().expect("filled");
                    kl_sum += cb.kl_sum;
                    rows += cb.rows;
                }
                // Bound memory: keep at most twice the batches of all windows, dropping
                // the oldest candidates first (a one-off scan such as the per-unit
                // table would otherwise keep every candidate).
                let limit = 2 * self.n_batches().max(8);
                let held = |r: &[Cache]| -> usize {
                    r.iter().map(|c| c.batches.iter().flatten().count()).sum()
                };
                while caches.recent.len() > 1 && held(&caches.recent) > limit {
                    caches.recent.remove(0);
                }
                (kl_sum, rows)
            }
        };
        self.evaluations.lock().expect("not poisoned")[stage] += 1;
        Ok(kl_sum / rows.max(1) as f64)
    }

    /// Batches of all windows (stage `s` uses the first [`Self::stage_batch_count`]).
    fn n_batches(&self) -> usize {
        self.windows.len().div_ceil(self.batch)
    }

    fn stage_batch_count(&self, stage: usize) -> usize {
        self.stage_windows[stage].div_ceil(self.batch)
    }

    /// The batches scored at `stage`. The stage with the most windows always scores the
    /// first ones (its values are compared across generations); a smaller stage scores
    /// `k` consecutive batches of those, starting at `round · k` (wrapping), so each
    /// generation's cheap selection sees other tokens, and round 0 (the per-unit table,
    /// the baselines) the first ones.
    fn stage_batch_ids(&self, stage: usize) -> Vec<usize> {
        let k = self.stage_batch_count(stage);
        let all = (0..self.stage_windows.len())
            .map(|s| self.stage_batch_count(s))
            .max()
            .unwrap_or(k);
        let round = self.round.load(std::sync::atomic::Ordering::Relaxed);
        if k >= all {
            return (0..k).collect();
        }
        (0..k).map(|i| (round * k + i) % all).collect()
    }

    fn batch_windows(&self, b: usize) -> &[Window] {
        let end = ((b + 1) * self.batch).min(self.windows.len());
        &self.windows[b * self.batch..end]
    }

    /// Runs batch `b` through `m` from block `first` (the embedding when 0), taking the
    /// inputs of the blocks before it from `prefix`.
    fn run_batch(
        &self,
        m: &Llama,
        b: usize,
        first: usize,
        prefix: Option<&[Tensor]>,
    ) -> Result<CachedBatch> {
        let n_layers = self.reference.n_layers();
        let chunk = self.batch_windows(b);
        let mut hidden: Vec<Tensor> = Vec::with_capacity(n_layers + 1);
        let mut h = match prefix {
            Some(p) if first > 0 => {
                hidden.extend(p[..first].iter().cloned());
                p[first].clone()
            }
            _ => {
                let refs: Vec<&[u32]> = chunk.iter().map(|w| w.tokens.as_slice()).collect();
                m.embed_batch(&refs)?
            }
        };
        let first = if prefix.is_some() { first } else { 0 };
        for l in first..n_layers {
            hidden.push(h.clone());
            h = m.block_forward(l, &h, None)?;
        }
        hidden.push(h.clone());
        let (kl_sum, rows) = self.batch_kl(m, &h, chunk)?;
        Ok(CachedBatch {
            hidden,
            kl_sum,
            rows,
        })
    }

    /// Sum of per-position KL over a batch and the number of positions.
    fn batch_kl(&self, m: &Llama, h: &Tensor, chunk: &[Window]) -> Result<(f64, usize)> {
        let v = m.vocab_size();
        let logits = m.head(h)?.flatten_all()?.to_vec1::<f32>()?;
        let mut sum = 0.0;
        let mut rows = 0;
        let t = chunk.first().map_or(0, |w| w.tokens.len());
        for (w, lg) in chunk.iter().zip(logits.chunks(t * v)) {
            let s: f64 = match &w.reference {
                RefDist::Dense { p, plogp } => lg
                    .par_chunks(v)
                    .zip(p.par_chunks(v))
                    .zip(plogp.par_iter())
                    .map(|((x, p), &plogp)| kl_row(x, p, plogp))
                    .sum(),
                RefDist::TopK {
                    k,
                    idx,
                    p,
                    rest,
                    plogp,
                } => lg
                    .par_chunks(v)
                    .zip(idx.par_chunks(*k).zip(p.par_chunks(*k)))
                    .zip(rest.par_iter().zip(plogp.par_iter()))
                    .map(|((x, (i, p)), (&r, &plogp))| kl_row_top_k(x, i, p, r, plogp))
                    .sum(),
            };
            if !s.is_finite() {
                return Err(CompressError::Invariant(
                    "KL divergence is not finite (the compressed model produced NaN or infinite logits)"
                        .into(),
                ));
            }
            sum += s;
            rows += w.tokens.len();
        }
        Ok((sum, rows))
    }

    /// Per-unit KL table: `table[u][l]` = KL of the reference with only unit `u` at
    /// level `l` (the per-layer errors of the dynamic-programming baseline).
    pub fn unit_table(
        &self,
        stage: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<Vec<f64>>> {
        let base: Choice = vec![None; self.units.len()];
        let total: usize = self.weights.iter().map(|w| w.len()).sum();
        let mut done = 0;
        let mut table = Vec::with_capacity(self.units.len());
        for (u, w) in self.weights.iter().enumerate() {
            let mut row = Vec::with_capacity(w.len());
            for l in 0..w.len() {
                let mut c = base.clone();
                c[u] = Some(l as u16);
                row.push(self.kl(stage, &c, &base)?);
                done += 1;
                progress(done, total);
            }
            table.push(row);
        }
        Ok(table)
    }

    /// The per-unit table from one model call per unit: `table[u][l] = KL(u, 0) ·
    /// e[u][l] / e[u][0]`, with `e` the levels' relative output errors. For small
    /// perturbations the KL divergence is a quadratic form in the output change, so it
    /// scales with the layer's output error between levels of one tensor; only the
    /// tensors' different sensitivities need a model run (at their lowest level, where
    /// the KL signal is strongest).
    pub fn unit_table_scaled(
        &self,
        stage: usize,
        output_errors: &[Vec<f64>],
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<Vec<f64>>> {
        let anchors = vec![vec![0]; self.units.len()];
        self.unit_table_anchored(stage, output_errors, &anchors, progress)
    }

    /// [`Evaluator::unit_table_scaled`] with the KL measured at several levels of each
    /// unit (`anchors[u]`, level indices): a measured level keeps its KL, any other is
    /// scaled from the anchor whose output error is nearest its own (in ratio). A level
    /// far outside the quadratic regime (a removed linear) gets its own anchor, so that
    /// it neither stands for the others nor is estimated from them.
    pub fn unit_table_anchored(
        &self,
        stage: usize,
        output_errors: &[Vec<f64>],
        anchors: &[Vec<usize>],
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<Vec<f64>>> {
        if output_errors.len() != self.units.len()
            || anchors.len() != self.units.len()
            || output_errors
                .iter()
                .zip(&self.weights)
                .zip(anchors)
                .any(|((e, w), a)| {
                    e.len() != w.len() || a.is_empty() || a.iter().any(|&l| l >= w.len())
                })
        {
            return Err(CompressError::Invariant(
                "output errors or anchors do not match the level database".into(),
            ));
        }
        let base: Choice = vec![None; self.units.len()];
        let total: usize = anchors.iter().map(|a| a.len()).sum();
        let mut done = 0;
        let mut table = Vec::with_capacity(self.units.len());
        for (u, errs) in output_errors.iter().enumerate() {
            let mut measured = Vec::with_capacity(anchors[u].len());
            for &a in &anchors[u] {
                let mut c = base.clone();
                c[u] = Some(a as u16);
                measured.push((a, self.kl(stage, &c, &base)?));
                done += 1;
                progress(done, total);
            }
            let usable = |e: f64| e > 0.0 && e.is_finite();
            let row: Vec<f64> = errs
                .iter()
                .enumerate()
                .map(|(l, &e)| {
                    if let Some(&(_, kl)) = measured.iter().find(|(a, _)| *a == l) {
                        return kl;
                    }
                    // The anchor nearest in output error (log ratio); a lossless anchor
                    // (zero error) says every level is lossless.
                    let (a, kl) = measured
                        .iter()
                        .copied()
                        .min_by(|x, y| {
                            let d = |a: usize| {
                                if usable(errs[a]) && usable(e) {
                                    (errs[a] / e).ln().abs()
                                } else {
                                    f64::INFINITY
                                }
                            };
                            d(x.0).total_cmp(&d(y.0))
                        })
                        .expect("anchors are not empty");
                    if usable(errs[a]) {
                        kl * e / errs[a]
                    } else {
                        kl
                    }
                })
                .collect();
            table.push(row);
        }
        Ok(table)
    }
}

/// Every selection stage scores between 1 and `n_windows` windows. Checked before the
/// levels are decoded.
fn check_stages(stage_windows: &[usize], n_windows: usize) -> Result<()> {
    if stage_windows.is_empty() || stage_windows.iter().any(|&n| n == 0 || n > n_windows) {
        return Err(CompressError::Usage(format!(
            "fitness stages need between 1 and {n_windows} calibration windows each, got {stage_windows:?}"
        )));
    }
    Ok(())
}

fn w_len(chunk: &[Vec<u32>]) -> usize {
    chunk.first().map_or(0, |w| w.len())
}

/// Softmax of each row of `logits` (`[T, vocab]`) and its `Σ p log p`.
fn probabilities(logits: &[f32], v: usize) -> (Vec<f32>, Vec<f64>) {
    let mut p = vec![0f32; logits.len()];
    let plogp: Vec<f64> = p
        .par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .map(|(p, x)| {
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let sum: f64 = x.iter().map(|&y| (y as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            let mut plogp = 0.0;
            for (pi, &xi) in p.iter_mut().zip(x) {
                let lp = xi as f64 - lse;
                let e = lp.exp();
                *pi = e as f32;
                plogp += e * lp;
            }
            plogp
        })
        .collect();
    (p, plogp)
}

/// Keep the `k` largest probabilities of each row of `p` (`[T, vocab]`).
fn top_k_dist(p: &[f32], v: usize, k: usize) -> RefDist {
    let rows = p.len() / v;
    let mut idx = Vec::with_capacity(rows * k);
    let mut top = Vec::with_capacity(rows * k);
    let mut rest = Vec::with_capacity(rows);
    let mut plogp = Vec::with_capacity(rows);
    for row in p.chunks(v) {
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        let mut kept = 0.0f64;
        let mut h = 0.0f64;
        for &i in &order[..k] {
            let pi = row[i as usize];
            idx.push(i);
            top.push(pi);
            kept += pi as f64;
            if pi > 0.0 {
                h += pi as f64 * (pi as f64).ln();
            }
        }
        let r = (1.0 - kept).max(0.0);
        if r > 0.0 {
            h += r * r.ln();
        }
        rest.push(r);
        plogp.push(h);
    }
    RefDist::TopK {
        k,
        idx,
        p: top,
        rest,
        plogp,
    }
}

/// KL over the buckets {top-k tokens, everything else}:
/// `Σ_top p (log p − log q) + r (log r − log q_rest)`.
fn kl_row_top_k(x: &[f32], idx: &[u32], p: &[f32], rest: f64, plogp: f64) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = max + x.iter().map(|&y| (y as f64 - max).exp()).sum::<f64>().ln();
    let mut cross = 0.0;
    let mut q_top = 0.0;
    for (&i, &pi) in idx.iter().zip(p) {
        let lq = x[i as usize] as f64 - lse;
        cross += pi as f64 * lq;
        q_top += lq.exp();
    }
    if rest > 0.0 {
        cross += rest * (1.0 - q_top).max(1e-30).ln();
    }
    (plogp - cross).max(0.0)
}

/// `KL(p ‖ softmax(x)) = Σ p log p − Σ p x + logsumexp(x)` (Σ p = 1).
fn kl_row(x: &[f32], p: &[f32], plogp: f64) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut sum = 0.0;
    let mut dot = 0.0;
    for (&xi, &pi) in x.iter().zip(p) {
        sum += (xi as f64 - max).exp();
        dot += pi as f64 * xi as f64;
    }
    (plogp - dot + max + sum.ln()).max(0.0)
}

impl Fitness for Evaluator {
    fn n_stages(&self) -> usize {
        self.stage_windows.len()
    }

    fn begin_generation(&self, generation: usize) {
        self.round
            .store(generation, std::sync::atomic::Ordering::Relaxed);
    }

    fn evaluate(
        &self,
        stage: usize,
        parent: &Assignment,
        candidates: &[Assignment],
    ) -> std::result::Result<Vec<f64>, SearchError> {
        let some = |a: &Assignment| -> Choice { a.iter().map(|&l| Some(l)).collect() };
        let base = some(parent);
        candidates
            .iter()
            .map(|c| {
                self.kl(stage, &some(c), &base)
                    .map_err(|e| SearchError::Fitness(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_row_matches_the_definition() {
        let x = [0.3f32, -1.0, 2.0, 0.5];
        let r = [1.0f32, 0.0, -0.5, 0.25];
        let (p, plogp) = probabilities(&r, 4);
        let lse_x = x.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let lse_r = r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let direct: f64 = (0..4)
            .map(|i| {
                let lp = r[i] as f64 - lse_r;
                let lq = x[i] as f64 - lse_x;
                lp.exp() * (lp - lq)
            })
            .sum();
        assert!((kl_row(&x, &p, plogp[0]) - direct).abs() < 1e-6);
        assert!(kl_row(&r, &p, plogp[0]).abs() < 1e-6);

        // Top-k: all tokens kept → the full KL; fewer → a lower bound.
        let RefDist::TopK {
            k,
            idx,
            p: tp,
            rest,
            plogp: tl,
        } = top_k_dist(&p, 4, 4)
        else {
            panic!("top-k")
        };
        assert_eq!(k, 4);
        assert!((kl_row_top_k(&x, &idx, &tp, rest[0], tl[0]) - direct).abs() < 1e-6);
        let RefDist::TopK {
            idx,
            p: tp,
            rest,
            plogp: tl,
            ..
        } = top_k_dist(&p, 4, 2)
        else {
            panic!("top-k")
        };
        // The two largest reference probabilities are tokens 0 and 3.
        let mut kept: Vec<u32> = idx.clone();
        kept.sort();
        assert_eq!(kept, [0, 3]);
        let coarse = kl_row_top_k(&x, &idx, &tp, rest[0], tl[0]);
        assert!(
            coarse > 0.0 && coarse <= direct + 1e-12,
            "{coarse} vs {direct}"
        );
        // Closed form over the buckets {0}, {3}, {1, 2}.
        let q: Vec<f64> = x.iter().map(|&v| (v as f64).exp() / lse_x.exp()).collect();
        let pp: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        let want = pp[0] * (pp[0] / q[0]).ln()
            + pp[3] * (pp[3] / q[3]).ln()
            + (pp[1] + pp[2]) * ((pp[1] + pp[2]) / (q[1] + q[2])).ln();
        assert!((coarse - want).abs() < 1e-6, "{coarse} vs {want}");
    }
}
