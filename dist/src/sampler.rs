//! [`DistributedSampler`]: which samples of an epoch each rank trains on, as PyTorch's
//! `DistributedSampler(drop_last=False)` decides: every rank takes the same permutation of the
//! epoch (the caller's, from its seed and the epoch), padded by wrapping around to a multiple of
//! the world size, and rank `r` takes positions `r, r + world, r + 2 world, ...`. The shards are
//! disjoint up to the padding and together cover the epoch; rank `r`'s `b`-th batch of `B`
//! samples and the other ranks' make up positions `b B world .. (b + 1) B world` of the
//! permutation: the global batch one process with batch `B world` would take.

/// One rank's share of every epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistributedSampler {
    len: usize,
    rank: usize,
    world: usize,
}

impl DistributedSampler {
    /// The share of rank `rank` of `world` of a dataset of `len` samples. A `world` of 0
    /// counts as 1, a rank beyond the world as the last rank.
    pub fn new(len: usize, rank: usize, world: usize) -> Self {
        let world = world.max(1);
        DistributedSampler {
            len,
            rank: rank.min(world - 1),
            world,
        }
    }

    /// Samples each rank takes per epoch: `ceil(len / world)`.
    pub fn num_samples(&self) -> usize {
        self.len.div_ceil(self.world)
    }

    /// All ranks' samples per epoch, padding included.
    pub fn total_size(&self) -> usize {
        self.num_samples() * self.world
    }

    /// This rank's samples of the epoch whose order (a permutation of `0..len`, the same on
    /// every rank) is `order`: padded by repeating `order` from its start, then every
    /// `world`-th from position `rank`.
    pub fn indices(&self, order: &[usize]) -> Vec<usize> {
        if order.is_empty() {
            return Vec::new();
        }
        (0..self.num_samples())
            .map(|k| order[(self.rank + k * self.world) % order.len()])
            .collect()
    }

    /// [`DistributedSampler::indices`] cut into batches of `batch` (the last one may be
    /// shorter). A `batch` of 0 counts as 1.
    pub fn batches(&self, order: &[usize], batch: usize) -> Vec<Vec<usize>> {
        self.indices(order)
            .chunks(batch.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: usize) -> Vec<usize> {
        // A fixed permutation: multiplication by a unit modulo n.
        (0..n).map(|i| (i * 7 + 3) % n).collect()
    }

    #[test]
    fn shards_are_disjoint_cover_the_epoch_and_match_pytorch_padding() {
        for n in [1usize, 2, 5, 10, 11, 64, 100] {
            for world in 1..=5 {
                let o = order(n);
                let shards: Vec<Vec<usize>> = (0..world)
                    .map(|r| DistributedSampler::new(n, r, world).indices(&o))
                    .collect();
                // PyTorch: indices += indices[:padding] (repeated when padding > n); shard r is
                // indices[r:total:world].
                let total = n.div_ceil(world) * world;
                let padded: Vec<usize> = o.iter().copied().cycle().take(total).collect();
                for (r, s) in shards.iter().enumerate() {
                    let want: Vec<usize> = padded.iter().copied().skip(r).step_by(world).collect();
                    assert_eq!(s, &want, "n {n} world {world} rank {r}");
                    assert_eq!(s.len(), n.div_ceil(world));
                }
                let mut all: Vec<usize> = shards.concat();
                all.sort_unstable();
                all.dedup();
                assert_eq!(
                    all,
                    (0..n).collect::<Vec<_>>(),
                    "covering, n {n} world {world}"
                );
                if n % world == 0 {
                    assert_eq!(shards.concat().len(), n, "disjoint, n {n} world {world}");
                }
            }
        }
    }

    #[test]
    fn global_batches_are_the_single_process_batches() {
        let (n, world, b) = (256, 2, 32);
        let o = order(n);
        let single: Vec<Vec<usize>> = o.chunks(b * world).map(<[usize]>::to_vec).collect();
        let ranks: Vec<Vec<Vec<usize>>> = (0..world)
            .map(|r| DistributedSampler::new(n, r, world).batches(&o, b))
            .collect();
        for (i, global) in single.iter().enumerate() {
            let mut got: Vec<usize> = ranks.iter().flat_map(|r| r[i].clone()).collect();
            let mut want = global.clone();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "batch {i}");
        }
    }

    #[test]
    fn world_of_one_is_the_order_itself() {
        let o = order(37);
        assert_eq!(DistributedSampler::new(37, 0, 1).indices(&o), o);
        assert_eq!(
            DistributedSampler::new(0, 0, 1).indices(&[]),
            Vec::<usize>::new()
        );
    }
}
