//! CPU kernels of channel concatenation: interleaved row copies, in parallel for large outputs.

use super::super::PAR_MIN;
use rayon::prelude::*;

/// Concatenates `outer` rows: row `o` of the output is row `o` of every part in turn, where the
/// rows of part `k` have `widths[k]` elements.
pub(super) fn concat<T: Copy + Default + Send + Sync>(
    parts: &[&[T]],
    widths: &[usize],
    outer: usize,
) -> Vec<T> {
    let total: usize = widths.iter().sum();
    let mut out = vec![T::default(); outer * total];
    if total == 0 {
        return out;
    }
    let fill = |(o, row): (usize, &mut [T])| {
        let mut at = 0;
        for (part, &w) in parts.iter().zip(widths) {
            row[at..at + w].copy_from_slice(&part[o * w..(o + 1) * w]);
            at += w;
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(total).enumerate().for_each(fill);
    } else {
        out.chunks_mut(total).enumerate().for_each(fill);
    }
    out
}

/// Columns `offset..offset + width` of each of the `outer` rows (of `total` elements) of `g`.
pub(super) fn slice<T: Copy + Default + Send + Sync>(
    g: &[T],
    outer: usize,
    total: usize,
    offset: usize,
    width: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); outer * width];
    if width == 0 {
        return out;
    }
    let take = |(o, row): (usize, &mut [T])| {
        let start = o * total + offset;
        row.copy_from_slice(&g[start..start + width]);
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(width).enumerate().for_each(take);
    } else {
        out.chunks_mut(width).enumerate().for_each(take);
    }
    out
}
