//! Benchmarks live in `benches/`; this library holds what several of them share.

/// Deterministic pseudo-random numbers in [-1, 1) (a 64-bit LCG; no rand dependency).
#[derive(Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number.
    pub fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `copies` copies of one array, back to back in one anonymous map advised to use huge pages, as
/// `Model::open`'s map of a model file is (with 4 KiB pages every 4 KiB read costs a TLB miss,
/// and the bandwidth probe reads huge pages too).
#[derive(Debug)]
pub struct Copies<T> {
    map: emberlm_formats::ember::HugeBuffer,
    len: usize,
    /// How many copies.
    pub copies: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Copies<T> {
    /// Copies `one` `copies` times.
    pub fn new(one: &[T], copies: usize) -> Copies<T> {
        let bytes: &[u8] = bytemuck::cast_slice(one);
        let mut map =
            emberlm_formats::ember::HugeBuffer::zeroed((bytes.len() * copies).max(1)).expect("map");
        for i in 0..copies {
            map[i * bytes.len()..(i + 1) * bytes.len()].copy_from_slice(bytes);
        }
        Copies {
            map,
            len: one.len(),
            copies,
            _t: std::marker::PhantomData,
        }
    }

    /// Copy `i % copies`.
    pub fn get(&self, i: usize) -> &[T] {
        let b = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice(&self.map[(i % self.copies) * b..][..b])
    }
}
