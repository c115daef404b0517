//! The allocations EvoPress is compared with, beside tersor-search's generic ones:
//! the uniform level and llama.cpp's preset rules, both scaled to the budget.

use tersor_model::LinearKind;
use tersor_search::{greedy_topup, Assignment, Problem};

use crate::units::{Unit, UnitRef};

fn bpw(p: &Problem, units: &[Unit], u: usize, l: usize) -> f64 {
    p.units[u].costs[l] as f64 * 8.0 / units[u].params() as f64
}

/// Each unit at its largest level of at most `t` bits per weight (its smallest
/// level if none is that small).
fn at_threshold(p: &Problem, units: &[Unit], t: f64) -> Assignment {
    (0..p.units.len())
        .map(|u| {
            (0..p.units[u].costs.len())
                .rev()
                .find(|&l| bpw(p, units, u, l) <= t + 1e-9)
                .unwrap_or(0) as u16
        })
        .collect()
}

/// The largest threshold whose assignment (after `adjust`) fits, and that assignment.
fn largest_fitting(
    p: &Problem,
    units: &[Unit],
    adjust: &dyn Fn(Assignment) -> Assignment,
) -> Assignment {
    let mut ts: Vec<f64> = (0..p.units.len())
        .flat_map(|u| (0..p.units[u].costs.len()).map(move |l| (u, l)))
        .map(|(u, l)| bpw(p, units, u, l))
        .collect();
    ts.sort_by(|a, b| b.total_cmp(a));
    ts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    for t in ts {
        let a = adjust(at_threshold(p, units, t));
        if p.fits(&a) {
            return a;
        }
    }
    vec![0; p.units.len()]
}

/// Uniform: every tensor at the same bits per weight (the largest that fits; a
/// tensor without a level at exactly that width takes its largest narrower one),
/// then the leftover bytes spent greedily in tensor order.
pub fn uniform(p: &Problem, units: &[Unit]) -> Assignment {
    let a = largest_fitting(p, units, &|a| a);
    let order: Vec<usize> = (0..p.units.len()).collect();
    greedy_topup(p, &a, &order)
}

/// llama.cpp's `_M` preset rules (`llama_tensor_get_type`, e.g. Q4_K_M) scaled to
/// the budget: the output projection (the embedding when tied) two levels above
/// the base width, `attn_v` and `ffn_down` one level above it in the layers
/// llama.cpp's `use_more_bits` picks (the first and last eighth and every third
/// layer between), the rest at the base width; the base is the widest that fits,
/// and leftover bytes go to the same tensors in that order of priority.
pub fn heuristic(p: &Problem, units: &[Unit], n_layers: usize, tied: bool) -> Assignment {
    // llama.cpp's `use_more_bits(i_layer, n_layers)`.
    let more_bits = |l: usize| {
        let e = n_layers / 8;
        l < e || l >= 7 * n_layers / 8 || (l - e) % 3 == 2
    };
    let bump = |u: &Unit| -> u16 {
        match u.what {
            UnitRef::Output => 2,
            UnitRef::Embedding if tied => 2,
            UnitRef::Linear(_, LinearKind::V) => 1,
            UnitRef::Linear(l, LinearKind::Down) if more_bits(l) => 1,
            _ => 0,
        }
    };
    let adjust = |a: Assignment| -> Assignment {
        a.iter()
            .enumerate()
            .map(|(u, &l)| (l + bump(&units[u])).min(p.units[u].costs.len() as u16 - 1))
            .collect()
    };
    let a = largest_fitting(p, units, &adjust);
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(bump(&units[u])));
    greedy_topup(p, &a, &order)
}
