//! Data parallelism: several processes (ranks) train one model, each on its share of every global
//! batch, and end every step with the same gradient, bit for bit, as one process would.
//!
//! # The rule that makes N ranks equal one process
//! A step's gradient is the sum of its A = `--grad-accum` micro-batches' gradients, each computed
//! from zero, added in one fixed tree that depends on A alone: while the count is even, the sum
//! is (sum of the first half) + (sum of the second half); an odd count q is summed as a chain,
//! ((m0 + m1) + m2) + … . So A = 2^p·q gives a perfect binary tree of 2^p chains of q
//! micro-batches. One process walks the whole tree; with N ranks (N a power of two dividing
//! 2^p), rank r owns the micro-batches `r·A/N .. (r+1)·A/N`, a whole subtree, sums it the same
//! way, and the ranks combine their subtrees up the tree's top log2(N) levels (rank r + s sends
//! to rank r at level s: floating-point addition is commutative, so left + right is the same
//! bits whichever rank adds); rank 0 then broadcasts the total. Every rank applies the same
//! optimizer update to the same gradient, so the weights stay identical without being sent.
//!
//! Memory: one process with A = 2^p·q keeps up to p + 1 gradient-sized buffers besides the
//! model's own (none when A = 1); a rank keeps up to log2(A/N) + 1, plus one receive buffer.
//!
//! The per-step losses, token counts and Ctrl-C flags travel in a small all-gather, so every
//! rank takes the same decisions (divergence, stopping). Only rank 0 evaluates, prints, and
//! writes curves and checkpoints.
//!
//! [`Comm`] is what a step needs from a group of processes. [`Single`] is one process. With the
//! `mpi` feature, `Mpi` runs over MPI (`mpirun -np N ember-train pretrain ...`); [`threads`]
//! runs ranks as threads of one process, for tests.

use std::ops::Range;

/// A group of ranks: point-to-point sends in a fixed order, a broadcast and an all-gather.
pub trait Comm {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Sends `buf` to rank `to` (blocking until it may be reused).
    fn send(&self, to: usize, buf: &[f32]);
    /// Receives exactly `buf.len()` values from rank `from`.
    fn recv(&self, from: usize, buf: &mut [f32]);
    /// Rank `root`'s `buf` into every rank's `buf`.
    fn broadcast(&self, root: usize, buf: &mut [f32]);
    /// Every rank's `mine` (all of the same length), in rank order, into every rank's `all`.
    fn all_gather(&self, mine: &[f64], all: &mut [f64]);
    /// Whether this rank prints and writes files.
    fn leads(&self) -> bool {
        self.rank() == 0
    }
}

/// One process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn send(&self, _: usize, _: &[f32]) {
        unreachable!("one process sends nothing")
    }
    fn recv(&self, _: usize, _: &mut [f32]) {
        unreachable!("one process receives nothing")
    }
    fn broadcast(&self, _: usize, _: &mut [f32]) {}
    fn all_gather(&self, mine: &[f64], all: &mut [f64]) {
        all.copy_from_slice(mine);
    }
}

/// Why `ranks` ranks cannot share `grad_accum` micro-batches (`None`: they can).
pub fn check_split(ranks: usize, grad_accum: usize) -> Option<String> {
    if ranks <= 1 {
        return None;
    }
    let two_adic = 1usize << grad_accum.trailing_zeros();
    if !ranks.is_power_of_two() || two_adic % ranks != 0 {
        Some(format!(
            "{ranks} ranks cannot share --grad-accum {grad_accum}: the number of ranks must be a \
             power of two that divides --grad-accum's largest power-of-two factor ({two_adic}), \
             so that every rank's micro-batches are a whole subtree of the fixed summation tree \
             (e.g. --grad-accum {} for {ranks} ranks)",
            ranks.next_power_of_two().max(2)
        ))
    } else {
        None
    }
}

/// The micro-batches (indices into the step's `grad_accum`) that `rank` of `ranks` computes.
pub fn share(rank: usize, ranks: usize, grad_accum: usize) -> Range<usize> {
    let per = grad_accum / ranks;
    rank * per..(rank + 1) * per
}

/// The buffers of [`Reducer::step`], kept between steps.
#[derive(Debug, Default)]
pub struct Reducer {
    /// Partial sums waiting for their right sibling, with the number of chains each covers.
    stack: Vec<(Vec<f32>, usize)>,
    /// Free buffers.
    pool: Vec<Vec<f32>>,
    /// The running chain.
    chain: Vec<f32>,
    /// A subtree received from another rank.
    recv: Vec<f32>,
    /// Seconds spent combining the ranks' sums (sending, receiving, waiting, adding).
    pub comm_seconds: f64,
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

impl Reducer {
    fn take(&mut self, n: usize) -> Vec<f32> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.resize(n, 0.0);
        b
    }

    /// One step's gradient into `grads` by the module's rule: `leaf(k, grads)` computes
    /// micro-batch k's gradient into `grads` (zeroed before each call) for every k of this
    /// rank's [`share`], and the ranks combine their sums; on return every rank's `grads` holds
    /// the total. `leaf`'s error stops this rank (the others then wait on it: the caller makes
    /// such errors fatal to the job).
    pub fn step<M, E>(
        &mut self,
        comm: &dyn Comm,
        grad_accum: usize,
        model: &mut M,
        grads_of: impl Fn(&mut M) -> &mut [f32],
        mut leaf: impl FnMut(usize, &mut M) -> Result<(), E>,
    ) -> Result<(), E> {
        let (rank, ranks) = (comm.rank(), comm.size());
        debug_assert!(check_split(ranks, grad_accum).is_none());
        let n = grads_of(model).len();
        let mine = share(rank, ranks, grad_accum);
        let chain_len = (grad_accum >> grad_accum.trailing_zeros()).max(1);
        if mine.len() == 1 {
            grads_of(model).fill(0.0);
            leaf(mine.start, model)?;
        } else {
            // Chains of `chain_len` micro-batches, merged pairwise as a binary counter does:
            // a perfect binary tree over this rank's chains.
            for k in mine.clone() {
                grads_of(model).fill(0.0);
                leaf(k, model)?;
                let grads = grads_of(model);
                let first = (k - mine.start) % chain_len == 0;
                if first {
                    let mut c = std::mem::take(&mut self.chain);
                    if c.is_empty() {
                        c = self.take(n);
                    }
                    c.copy_from_slice(grads);
                    self.chain = c;
                } else {
                    add(&mut self.chain, grads);
                }
                if (k - mine.start) % chain_len == chain_len - 1 {
                    let mut sum = std::mem::take(&mut self.chain);
                    let mut chains = 1;
                    while let Some((left, c)) = self.stack.pop() {
                        if c != chains {
                            self.stack.push((left, c));
                            break;
                        }
                        let mut left = left;
                        add(&mut left, &sum);
                        self.pool.push(sum);
                        sum = left;
                        chains *= 2;
                    }
                    self.stack.push((sum, chains));
                }
            }
            let (sum, _) = self.stack.pop().expect("a rank sums at least one chain");
            debug_assert!(self.stack.is_empty());
            grads_of(model).copy_from_slice(&sum);
            self.pool.push(sum);
        }
        if ranks > 1 {
            let t0 = std::time::Instant::now();
            let grads = grads_of(model);
            // The tree's top levels: at level s (1, 2, 4, ...), rank r with r % 2s == 0 adds
            // rank r + s's subtree to its own.
            let mut s = 1;
            while s < ranks {
                if rank % (2 * s) == 0 {
                    let mut r = std::mem::take(&mut self.recv);
                    r.resize(n, 0.0);
                    comm.recv(rank + s, &mut r);
                    add(grads, &r);
                    self.recv = r;
                } else if rank % (2 * s) == s {
                    comm.send(rank - s, grads);
                    break;
                }
                s *= 2;
            }
            comm.broadcast(0, grads);
            self.comm_seconds += t0.elapsed().as_secs_f64();
        }
        Ok(())
    }
}

/// A fingerprint of a parameter buffer (FNV-1a over the bits), to check that every rank starts
/// from the same weights.
pub fn fingerprint(params: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in params {
        h ^= u64::from(p.to_bits());
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Checks that every rank holds the same `params`; the error names the first rank that differs.
pub fn check_same_start(comm: &dyn Comm, params: &[f32]) -> Result<(), String> {
    let mine = [f64::from_bits(fingerprint(params))];
    let mut all = vec![0.0; comm.size()];
    comm.all_gather(&mine, &mut all);
    match all.iter().position(|f| f.to_bits() != all[0].to_bits()) {
        None => Ok(()),
        Some(r) => Err(format!(
            "rank {r} starts from different weights than rank 0: every rank must read the same \
             --init/--resume checkpoint and the same settings"
        )),
    }
}

/// The number of ranks the environment says this process was started among (`mpirun` sets
/// `OMPI_COMM_WORLD_SIZE` for Open MPI, `PMI_SIZE` for MPICH's Hydra), if any.
pub fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// MPI's world communicator (feature `mpi`). Only the main thread calls MPI. MPI's default error
/// handler aborts the whole job on a communication error, so the calls below cannot fail
/// silently: when one rank dies, `mpirun` ends the others and names the rank.
#[cfg(feature = "mpi")]
pub struct Mpi {
    world: mpi::topology::SimpleCommunicator,
    // Finalizes MPI when dropped: declared last so the communicator goes first.
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

/// The most elements one MPI call moves (MPI counts are `int`).
#[cfg(feature = "mpi")]
const MPI_CHUNK: usize = 1 << 28;

#[cfg(feature = "mpi")]
impl Mpi {
    /// Initializes MPI (once per process).
    pub fn init() -> Result<Mpi, String> {
        let universe =
            mpi::initialize().ok_or_else(|| "MPI could not be initialized".to_string())?;
        Ok(Mpi {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Ends every rank of the job with exit code `code` (MPI_Abort).
    pub fn abort(&self, code: i32) -> ! {
        use mpi::traits::Communicator;
        self.world.abort(code)
    }
}

#[cfg(feature = "mpi")]
impl Comm for Mpi {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.size() as usize
    }
    fn send(&self, to: usize, buf: &[f32]) {
        use mpi::traits::{Communicator, Destination};
        let p = self.world.process_at_rank(to as i32);
        for c in buf.chunks(MPI_CHUNK) {
            p.send(c);
        }
    }
    fn recv(&self, from: usize, buf: &mut [f32]) {
        use mpi::traits::{Communicator, Source};
        let p = self.world.process_at_rank(from as i32);
        for c in buf.chunks_mut(MPI_CHUNK) {
            p.receive_into(c);
        }
    }
    fn broadcast(&self, root: usize, buf: &mut [f32]) {
        use mpi::traits::{Communicator, Root};
        let p = self.world.process_at_rank(root as i32);
        for c in buf.chunks_mut(MPI_CHUNK) {
            p.broadcast_into(c);
        }
    }
    fn all_gather(&self, mine: &[f64], all: &mut [f64]) {
        use mpi::traits::CommunicatorCollectives;
        self.world.all_gather_into(mine, all);
    }
}

/// Ranks as threads of one process, joined by channels: for tests of the summation rule.
pub mod threads {
    use super::Comm;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Arc, Barrier, Mutex};

    /// One rank of a group made by [`group`].
    #[derive(Debug)]
    pub struct Rank {
        rank: usize,
        size: usize,
        /// `to[r]`: this rank's sender to rank r.
        to: Vec<Sender<Vec<f32>>>,
        /// `from[r]`: this rank's receiver from rank r.
        from: Vec<Mutex<Receiver<Vec<f32>>>>,
        board: Arc<Mutex<Vec<f64>>>,
        barrier: Arc<Barrier>,
    }

    /// `size` connected ranks.
    pub fn group(size: usize) -> Vec<Rank> {
        // chans[a][b]: from a to b.
        let mut senders: Vec<Vec<Option<Sender<Vec<f32>>>>> = vec![];
        let mut receivers: Vec<Vec<Option<Receiver<Vec<f32>>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        for a in 0..size {
            let mut row = vec![];
            for rcv_row in receivers.iter_mut() {
                let (s, r) = channel();
                row.push(Some(s));
                rcv_row[a] = Some(r);
            }
            senders.push(row);
        }
        let board = Arc::new(Mutex::new(vec![]));
        let barrier = Arc::new(Barrier::new(size));
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| Rank {
                rank,
                size,
                to: to.into_iter().map(Option::unwrap).collect(),
                from: from.into_iter().map(|r| Mutex::new(r.unwrap())).collect(),
                board: board.clone(),
                barrier: barrier.clone(),
            })
            .collect()
    }

    impl Comm for Rank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn send(&self, to: usize, buf: &[f32]) {
            self.to[to].send(buf.to_vec()).expect("rank alive");
        }
        fn recv(&self, from: usize, buf: &mut [f32]) {
            let v = self.from[from].lock().unwrap().recv().expect("rank alive");
            buf.copy_from_slice(&v);
        }
        fn broadcast(&self, root: usize, buf: &mut [f32]) {
            if self.rank == root {
                for r in (0..self.size).filter(|&r| r != root) {
                    self.send(r, buf);
                }
            } else {
                self.recv(root, buf);
            }
        }
        fn all_gather(&self, mine: &[f64], all: &mut [f64]) {
            {
                let mut b = self.board.lock().unwrap();
                if b.len() != all.len() {
                    b.clear();
                    b.resize(all.len(), 0.0);
                }
                b[self.rank * mine.len()..][..mine.len()].copy_from_slice(mine);
            }
            self.barrier.wait();
            all.copy_from_slice(&self.board.lock().unwrap());
            self.barrier.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Micro-batch k's "gradient": values whose sums round differently in different orders.
    fn leaf_of(k: usize, g: &mut [f32]) {
        for (i, x) in g.iter_mut().enumerate() {
            let v = ((k * 7919 + i * 104_729) % 1000) as f32;
            *x += 1.0 + v * 1e-3 + (k as f32) * 3.3e-8 + 1e7 * (((k + i) % 3) as f32 - 1.0);
        }
    }

    /// The rule written plainly and independently: recursive halving, chains when odd.
    fn tree(lo: usize, hi: usize, n: usize) -> Vec<f32> {
        let c = hi - lo;
        if c % 2 == 0 {
            let mut l = tree(lo, lo + c / 2, n);
            let r = tree(lo + c / 2, hi, n);
            for (a, b) in l.iter_mut().zip(&r) {
                *a += *b;
            }
            l
        } else {
            let mut acc = vec![0.0; n];
            leaf_of(lo, &mut acc);
            for k in lo + 1..hi {
                let mut g = vec![0.0; n];
                leaf_of(k, &mut g);
                for (a, b) in acc.iter_mut().zip(&g) {
                    *a += *b;
                }
            }
            acc
        }
    }

    fn run_ranks(ranks: usize, ga: usize, n: usize) -> Vec<Vec<f32>> {
        let group = threads::group(ranks);
        std::thread::scope(|s| {
            let hs: Vec<_> = group
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let mut red = Reducer::default();
                        let mut g = vec![0.0f32; n];
                        for _ in 0..2 {
                            red.step::<_, ()>(
                                c,
                                ga,
                                &mut g,
                                |g| g.as_mut_slice(),
                                |k, g| {
                                    leaf_of(k, g);
                                    Ok(())
                                },
                            )
                            .unwrap();
                        }
                        g
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn one_process_follows_the_tree() {
        for ga in [1, 2, 3, 4, 6, 8, 12] {
            let want = tree(0, ga, 33);
            let got = run_ranks(1, ga, 33).pop().unwrap();
            assert_eq!(bits(&got), bits(&want), "grad_accum {ga}");
        }
    }

    #[test]
    fn ranks_equal_one_process_bit_for_bit() {
        for (ranks, ga) in [(2, 2), (2, 4), (4, 4), (2, 6), (4, 8), (2, 12), (4, 12)] {
            let want = tree(0, ga, 41);
            for (r, got) in run_ranks(ranks, ga, 41).iter().enumerate() {
                assert_eq!(bits(got), bits(&want), "{ranks} ranks, ga {ga}, rank {r}");
            }
        }
    }

    #[test]
    fn the_order_matters_so_the_test_can_fail() {
        // A plain chain over 4 micro-batches differs from the tree in some bit.
        let want = tree(0, 4, 41);
        let mut chain = vec![0.0; 41];
        for k in 0..4 {
            let mut g = vec![0.0; 41];
            leaf_of(k, &mut g);
            for (a, b) in chain.iter_mut().zip(&g) {
                *a += *b;
            }
        }
        assert_ne!(bits(&chain), bits(&want));
    }

    #[test]
    fn splits_that_are_not_subtrees_are_refused() {
        assert!(check_split(1, 3).is_none());
        assert!(check_split(2, 2).is_none());
        assert!(check_split(4, 12).is_none());
        assert!(check_split(2, 3).unwrap().contains("power of two"));
        assert!(check_split(3, 3).is_some());
        assert!(check_split(4, 6).is_some());
        assert!(check_split(8, 4).is_some());
    }

    #[test]
    fn different_starting_weights_are_named() {
        let group = threads::group(2);
        let errs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = group
                .iter()
                .map(|c| s.spawn(move || check_same_start(c, &[1.0, c.rank() as f32])))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(errs[0].as_ref().unwrap_err().contains("rank 1"));
        assert!(check_same_start(&Single, &[1.0]).is_ok());
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
