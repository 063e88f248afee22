//! Rotary position tables, built once per session ([`RopeTables::new`] in `Session::new`) for
//! every position of the session's context: a token never computes a sine.
//!
//! Letters: T the session's context, D head dim.

use emberlm_formats::config::ModelConfig;

/// cos and sin of every (position, frequency) pair, (T, D/2) each, for the global layers and,
/// when they differ (Gemma 3's local base, or a rescaled global base), for the sliding layers.
///
/// Angles follow Hugging Face: `inv_freq` ([`emberlm_formats::config::Rope::inv_freq`]) rounded
/// to f32, the angle `p · inv_freq` computed in f32 (as its f32 outer product does), its cosine
/// and sine rounded to f32.
#[derive(Debug, Default)]
pub(super) struct RopeTables {
    half: usize,
    global: (Vec<f32>, Vec<f32>),
    /// `None`: local layers use the global table.
    local: Option<(Vec<f32>, Vec<f32>)>,
}

fn table(inv_freq: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(t * inv_freq.len());
    let mut sin = Vec::with_capacity(t * inv_freq.len());
    for p in 0..t {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

impl RopeTables {
    /// Tables for positions 0..t of `cfg`'s layers; empty for a model without rotary positions.
    pub(super) fn new(cfg: &ModelConfig, t: usize) -> RopeTables {
        let Some(rope) = cfg.rope else {
            return RopeTables::default();
        };
        let d = cfg.head_dim;
        let global_freq = rope.inv_freq(d, false);
        let local_freq = rope.inv_freq(d, true);
        let local =
            (cfg.sliding.is_some() && local_freq != global_freq).then(|| table(&local_freq, t));
        RopeTables {
            half: d / 2,
            global: table(&global_freq, t),
            local,
        }
    }

    /// (cos, sin), D/2 each, of position `pos` for a layer (`local`: a sliding-window layer).
    pub(super) fn at(&self, pos: usize, local: bool) -> (&[f32], &[f32]) {
        let (c, s) = match (&self.local, local) {
            (Some(t), true) => t,
            _ => &self.global,
        };
        let r = pos * self.half..(pos + 1) * self.half;
        (&c[r.clone()], &s[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberlm_formats::config::{Rope, RopeScaling};

    // A hand-computed case: D = 4, θ = 100 → inv_freq = (1, 0.1); position 2 rotates the pair
    // (x0, x2) by 2 rad and (x1, x3) by 0.2 rad.
    #[test]
    fn tables_and_rotation_match_a_hand_computed_case() {
        let mut cfg = ModelConfig::preset("smollm2-135m").unwrap();
        cfg.head_dim = 4;
        cfg.rope = Some(Rope {
            theta: 100.0,
            local_theta: 100.0,
            scaling: RopeScaling::None,
        });
        let t = RopeTables::new(&cfg, 3);
        let (c, s) = t.at(2, false);
        assert!((c[0] - 2f32.cos()).abs() < 1e-6 && (s[0] - 2f32.sin()).abs() < 1e-6);
        assert!((c[1] - 0.2f32.cos()).abs() < 1e-6 && (s[1] - 0.2f32.sin()).abs() < 1e-6);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        crate::kernels::reference::rope(&mut x, c, s);
        let want = [
            1.0 * 2f64.cos() - 3.0 * 2f64.sin(),
            2.0 * 0.2f64.cos() - 4.0 * 0.2f64.sin(),
            3.0 * 2f64.cos() + 1.0 * 2f64.sin(),
            4.0 * 0.2f64.cos() + 2.0 * 0.2f64.sin(),
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{x:?} vs {want:?}");
        }
    }

    // RMSNorm by hand: x = (3, 4), mean(x²) = 12.5, eps 0 → x / √12.5 · w.
    #[test]
    fn rmsnorm_matches_a_hand_computed_case() {
        let mut out = [0f32; 2];
        crate::kernels::reference::rmsnorm(&[3.0, 4.0], &[1.0, 2.0], &mut out, 0.0);
        let r = 12.5f64.sqrt();
        assert!((f64::from(out[0]) - 3.0 / r).abs() < 1e-6);
        assert!((f64::from(out[1]) - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn gemma_local_layers_get_their_own_table() {
        let cfg = ModelConfig::preset("gemma3-270m").unwrap();
        let t = RopeTables::new(&cfg, 4);
        let (g, _) = t.at(3, false);
        let (l, _) = t.at(3, true);
        assert_ne!(g[1], l[1]);
        assert_eq!(g[0], l[0]); // frequency 1 in both
    }
}
