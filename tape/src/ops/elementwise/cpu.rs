//! CPU kernels of the element-wise ops.

use crate::dtype::Elem;
use rayon::prelude::*;

/// `acc[i] += g[i]`, in parallel for large buffers.
pub(crate) fn add_assign<T: Elem>(acc: &mut [T], g: &[T]) {
    if acc.len() >= super::super::PAR_MIN {
        acc.par_iter_mut().zip(g).for_each(|(a, &b)| *a += b);
    } else {
        acc.iter_mut().zip(g).for_each(|(a, &b)| *a += b);
    }
}
