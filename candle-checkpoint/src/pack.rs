//! Several outputs of a segment travel as one tensor (so that one backward call gets all their
//! gradients at once): [`pack`] flattens them end to end, [`unpack`] takes views back.

use candle_core::{Shape, Tensor};

/// The outputs as one tensor: the output itself, or all of them flattened end to end.
pub(crate) fn pack(outputs: &[Tensor]) -> candle_core::Result<Tensor> {
    match outputs {
        [one] => Ok(one.clone()),
        many => {
            let flat = many
                .iter()
                .map(Tensor::flatten_all)
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&flat, 0)
        }
    }
}

/// The outputs back from their packed form.
pub(crate) fn unpack(packed: &Tensor, shapes: &[Shape]) -> candle_core::Result<Vec<Tensor>> {
    if shapes.len() == 1 {
        return Ok(vec![packed.clone()]);
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(shapes.len());
    for s in shapes {
        let n = s.elem_count();
        out.push(packed.narrow(0, at, n)?.reshape(s)?);
        at += n;
    }
    Ok(out)
}
