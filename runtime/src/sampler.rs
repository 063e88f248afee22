//! Choosing the next token from logits: greedy, temperature, top-k (the book's rule), top-p and a
//! repetition penalty; seeded and reproducible; allocation-free after construction.
//!
//! Letters: V logits (vocabulary size).

use crate::error::RuntimeError;

/// How to pick tokens. `temperature == 0` is greedy (the book's `temperature=0.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token (first one on ties, like `argmax`).
    pub temperature: f32,
    /// Keep only logits at least as large as the k-th largest (ties survive, as in the book).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: Option<f32>,
    /// Divide positive (multiply negative) logits of already-seen tokens by this (1 = off).
    pub repetition_penalty: f32,
    /// Seed of the sampler's random generator.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 123,
        }
    }
}

impl Sampling {
    /// Checks every field's range.
    pub fn validate(&self, vocab_size: usize) -> Result<(), RuntimeError> {
        let bad = |option, reason: String| Err(RuntimeError::BadOption { option, reason });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                format!("{} must be a finite number >= 0", self.temperature),
            );
        }
        if let Some(k) = self.top_k {
            if k == 0 || k > vocab_size {
                return bad("top-k", format!("{k} must be in 1..={vocab_size}"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top-p", format!("{p} must be in (0, 1]"));
            }
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition-penalty",
                format!("{} must be a finite number > 0", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (xorshift64*), stable across platforms and releases.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        // SplitMix64 step so that nearby seeds give unrelated streams and 0 is not a fixed point.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Scratch for sampling over V logits.
#[derive(Debug)]
pub struct Sampler {
    rng: Rng,
    /// Candidate ids, (V).
    ids: Vec<u32>,
    /// Working logits/probabilities, (V).
    work: Vec<f32>,
    /// For each id, the generation in which it was last penalised, (V).
    seen: Vec<u32>,
    generation: u32,
}

impl Sampler {
    /// Allocates scratch for `vocab_size` logits.
    pub fn new(vocab_size: usize, seed: u64) -> Sampler {
        Sampler {
            rng: Rng::new(seed),
            ids: Vec::with_capacity(vocab_size),
            work: vec![0.0; vocab_size],
            seen: vec![0; vocab_size],
            generation: 0,
        }
    }

    /// Restarts the random stream.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Picks a token from `logits` (V). `history` holds the tokens the repetition penalty applies
    /// to. Allocates nothing.
    pub fn sample(&mut self, logits: &[f32], history: &[u32], s: &Sampling) -> u32 {
        let v = logits.len().min(self.work.len());
        // Plain greedy reads the logits in place (a copy is V floats a token).
        if s.temperature == 0.0 && s.repetition_penalty == 1.0 {
            return argmax(&logits[..v]) as u32;
        }
        let work = &mut self.work[..v];
        work.copy_from_slice(&logits[..v]);
        if s.repetition_penalty != 1.0 {
            self.generation = self.generation.wrapping_add(1);
            if self.generation == 0 {
                self.seen.iter_mut().for_each(|g| *g = 0);
                self.generation = 1;
            }
            for &t in history {
                let t = t as usize;
                if t < v && self.seen[t] != self.generation {
                    self.seen[t] = self.generation;
                    let l = &mut work[t];
                    *l = if *l > 0.0 {
                        *l / s.repetition_penalty
                    } else {
                        *l * s.repetition_penalty
                    };
                }
            }
        }
        if s.temperature == 0.0 {
            return argmax(work) as u32;
        }
        // Candidates: every id, or the top-k survivors (all logits >= the k-th largest).
        self.ids.clear();
        match s.top_k {
            Some(k) if k < v => {
                // The k-th largest value, found in the probability buffer used as scratch below.
                self.ids.extend(0..v as u32);
                let kth = {
                    let (_, kth, _) = self.ids.select_nth_unstable_by(k - 1, |&a, &b| {
                        work[b as usize].total_cmp(&work[a as usize])
                    });
                    work[*kth as usize]
                };
                self.ids.clear();
                self.ids
                    .extend((0..v as u32).filter(|&i| work[i as usize] >= kth));
            }
            _ => self.ids.extend(0..v as u32),
        }
        // Softmax over the candidates at this temperature.
        let max = self
            .ids
            .iter()
            .map(|&i| work[i as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for &i in &self.ids {
            let p = ((work[i as usize] - max) / s.temperature).exp();
            work[i as usize] = p;
            total += p as f64;
        }
        // Top-p: keep the most likely candidates until their mass reaches p.
        let mut mass = total;
        if let Some(p) = s.top_p {
            if p < 1.0 {
                self.ids.sort_unstable_by(|&a, &b| {
                    work[b as usize]
                        .total_cmp(&work[a as usize])
                        .then(a.cmp(&b))
                });
                let mut acc = 0.0f64;
                let mut keep = self.ids.len();
                for (n, &i) in self.ids.iter().enumerate() {
                    acc += work[i as usize] as f64;
                    if acc >= p as f64 * total {
                        keep = n + 1;
                        break;
                    }
                }
                self.ids.truncate(keep);
                mass = acc.min(total);
            }
        }
        let mut r = self.rng.next_f32() as f64 * mass;
        for &i in &self.ids {
            r -= work[i as usize] as f64;
            if r < 0.0 {
                return i;
            }
        }
        *self.ids.last().unwrap_or(&0)
    }
}

/// Index of the largest value (the first one on ties); NaNs are never chosen over numbers (all
/// NaN: the last index; empty: 0).
pub fn argmax(x: &[f32]) -> usize {
    // Two passes the compiler vectorizes (a running index would chain every step to the last):
    // the largest number, 8 lanes at a time (a NaN never compares greater), then its first index.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    x.iter()
        .position(|&v| v == max)
        .unwrap_or(x.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one step at a time.
    fn argmax_scalar(x: &[f32]) -> usize {
        let mut best = 0;
        for (i, &v) in x.iter().enumerate() {
            if v > x[best] || x[best].is_nan() {
                best = i;
            }
        }
        best
    }

    #[test]
    fn argmax_matches_its_definition() {
        let (n, inf) = (f32::NAN, f32::INFINITY);
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![n],
            vec![n, n, n],
            vec![n, 1.0, n, 2.0],
            vec![-inf, n],
            vec![n, -inf],
            vec![1.0, 3.0, 3.0, 2.0],
            vec![-inf; 9],
            vec![-0.0, 0.0],
            vec![0.0, -0.0],
            vec![inf, 1.0, inf],
        ];
        for x in &cases {
            assert_eq!(argmax(x), argmax_scalar(x), "{x:?}");
        }
        // Random vectors of every length up to 70 with ties, NaNs and infinities mixed in.
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u32
        };
        for len in 0..=70 {
            for _ in 0..20 {
                let x: Vec<f32> = (0..len)
                    .map(|_| match next() % 10 {
                        0 => f32::NAN,
                        1 => -inf,
                        2 => 5.0,
                        _ => (next() % 1000) as f32 / 100.0 - 5.0,
                    })
                    .collect();
                assert_eq!(argmax(&x), argmax_scalar(&x), "{x:?}");
            }
        }
    }

    // BOOK.md chapter 5 [TV]: toy logits over 9 words (6.28 is the book's value, not τ).
    #[allow(clippy::approx_constant)]
    const LOGITS: [f32; 9] = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79];

    #[test]
    fn greedy_picks_forward() {
        let mut s = Sampler::new(9, 1);
        assert_eq!(s.sample(&LOGITS, &[], &Sampling::default()), 3);
    }

    #[test]
    fn top_k_three_keeps_the_books_three_words() {
        let cfg = Sampling {
            temperature: 1.0,
            top_k: Some(3),
            ..Sampling::default()
        };
        let mut s = Sampler::new(9, 7);
        let mut counts = [0usize; 9];
        for _ in 0..20_000 {
            counts[s.sample(&LOGITS, &[], &cfg) as usize] += 1;
        }
        // The book's softmax over the top 3: [0.0615, 0, 0, 0.5775, 0, 0, 0, 0.3610, 0].
        for (i, p) in [(0, 0.0615), (3, 0.5775), (7, 0.3610)] {
            let f = counts[i] as f64 / 20_000.0;
            assert!((f - p).abs() < 0.015, "word {i}: {f} vs {p}");
        }
        assert_eq!(
            counts.iter().sum::<usize>(),
            counts[0] + counts[3] + counts[7]
        );
    }

    #[test]
    fn top_k_ties_survive() {
        let logits = [1.0, 3.0, 3.0, 3.0, 0.0];
        let cfg = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            ..Sampling::default()
        };
        let mut s = Sampler::new(5, 3);
        let mut seen = [false; 5];
        for _ in 0..2000 {
            seen[s.sample(&logits, &[], &cfg) as usize] = true;
        }
        assert_eq!(seen, [false, true, true, true, false]);
    }

    #[test]
    fn temperature_five_gives_pizza_four_percent() {
        // BOOK.md: at T=5, P(pizza) = 0.0430.
        let cfg = Sampling {
            temperature: 5.0,
            ..Sampling::default()
        };
        let mut s = Sampler::new(9, 11);
        let n = 50_000;
        let pizza = (0..n).filter(|_| s.sample(&LOGITS, &[], &cfg) == 6).count();
        let f = pizza as f64 / n as f64;
        assert!((f - 0.0430).abs() < 0.005, "{f}");
    }

    #[test]
    fn top_p_keeps_the_smallest_head() {
        // Probabilities at T=1 of [6.75, 6.28, 4.51] dominate: p=0.5 keeps only "forward".
        let cfg = Sampling {
            temperature: 1.0,
            top_p: Some(0.5),
            ..Sampling::default()
        };
        let mut s = Sampler::new(9, 5);
        assert!((0..500).all(|_| s.sample(&LOGITS, &[], &cfg) == 3));
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let cfg = Sampling {
            repetition_penalty: 2.0,
            ..Sampling::default()
        };
        let mut s = Sampler::new(9, 5);
        // forward (6.75) seen -> 3.375 < toward (6.28).
        assert_eq!(s.sample(&LOGITS, &[3, 3], &cfg), 7);
    }

    #[test]
    fn same_seed_same_tokens() {
        let cfg = Sampling {
            temperature: 1.4,
            top_k: Some(5),
            seed: 9,
            ..Sampling::default()
        };
        let run = || {
            let mut s = Sampler::new(9, cfg.seed);
            (0..50)
                .map(|_| s.sample(&LOGITS, &[], &cfg))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn options_are_validated() {
        let bad = |s: Sampling| s.validate(9).unwrap_err();
        assert!(matches!(
            bad(Sampling {
                temperature: -1.0,
                ..Sampling::default()
            }),
            RuntimeError::BadOption {
                option: "temperature",
                ..
            }
        ));
        assert!(matches!(
            bad(Sampling {
                top_k: Some(0),
                ..Sampling::default()
            }),
            RuntimeError::BadOption {
                option: "top-k",
                ..
            }
        ));
        assert!(matches!(
            bad(Sampling {
                top_p: Some(1.5),
                ..Sampling::default()
            }),
            RuntimeError::BadOption {
                option: "top-p",
                ..
            }
        ));
    }
}
