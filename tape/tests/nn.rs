//! Modules: names declared once through the visitor, and everything that follows from them
//! (parameter lists, parameter names, state dicts, checked loading, atomic files), on a small
//! model of every module kind.

use std::collections::BTreeMap;
use tape::nn::{
    self, BatchNorm2d, Conv2d, Dropout, Embedding, Init, LayerNorm, Linear, LoadOptions, Numbered,
    StateError, Stored,
};
use tape::{ops, DType, Device, Tape, Tensor};

struct Block {
    conv: Conv2d,
    bn: BatchNorm2d,
}
tape::module!(Block { "conv" => conv, "bn" => bn });

struct Net {
    emb: Embedding,
    blocks: Numbered<Block>,
    heads: Vec<Linear>,
    ln: Option<LayerNorm>,
}
tape::module!(Net { "emb" => emb, "features" => blocks, "heads" => heads, "ln" => ln });

fn net_on(dev: &Device, seed: u64, dtype: DType) -> Net {
    let mut init = Init::new(dtype, dev, seed);
    let mut blocks = Vec::new();
    for _ in 0..2 {
        blocks.push(Block {
            conv: Conv2d::new(2, 2, 3, 1, 1, &mut init).unwrap(),
            bn: BatchNorm2d::new(2, &mut init).unwrap(),
        });
    }
    let mut m = Net {
        emb: Embedding::new(5, 3, 1.0, &mut init).unwrap(),
        blocks: Numbered::new("block", 1, blocks),
        heads: vec![
            Linear::new(3, 4, &mut init).unwrap(),
            Linear::normal(3, 4, 0.02, false, &mut init).unwrap(),
        ],
        ln: Some(LayerNorm::new(3, &mut init).unwrap()),
    };
    nn::name_parameters(&mut m);
    m
}

fn net(seed: u64, dtype: DType) -> Net {
    net_on(&Device::cpu(), seed, dtype)
}

fn stored(m: &Net) -> BTreeMap<String, Stored> {
    nn::stored_state_dict(m).unwrap()
}

#[test]
fn names_follow_the_declaration() {
    let m = net(1, DType::F32);
    let names: Vec<&str> = nn::parameters(&m).iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "emb.weight",
            "features.block1.conv.weight",
            "features.block1.bn.weight",
            "features.block1.bn.bias",
            "features.block2.conv.weight",
            "features.block2.bn.weight",
            "features.block2.bn.bias",
            "heads.0.weight",
            "heads.0.bias",
            "heads.1.weight",
            "ln.weight",
            "ln.bias",
        ]
    );
    let stats: Vec<String> = nn::running_stats(&m).into_iter().map(|(n, _)| n).collect();
    assert_eq!(stats, ["features.block1.bn", "features.block2.bn"]);
    assert_eq!(
        nn::num_parameters(&m),
        15 + 2 * (36 + 4) + (12 + 4) + 12 + 6
    );
    assert_eq!(nn::parameter_bytes(&m), 4 * nn::num_parameters(&m));
    // parameters_mut sees the same parameters, in the same order.
    let mut m = m;
    let ids: Vec<_> = nn::parameters(&m).iter().map(|p| p.tensor().id()).collect();
    let ids_mut: Vec<_> = nn::parameters_mut(&mut m)
        .iter()
        .map(|p| p.tensor().id())
        .collect();
    assert_eq!(ids, ids_mut);
}

#[test]
fn state_round_trips_through_a_file_and_loads_are_checked() {
    let a = net(1, DType::F64);
    // Move a's running statistics off their initial values so the round trip shows.
    for (_, rs) in nn::running_stats(&a) {
        let c = rs.channels();
        let dev = Device::cpu();
        rs.set(
            &Tensor::from_f64(&vec![0.5; c], &[c], DType::F64, &dev).unwrap(),
            &Tensor::from_f64(&vec![2.0; c], &[c], DType::F64, &dev).unwrap(),
        )
        .unwrap();
        rs.set_num_batches_tracked(7);
    }
    let dir = std::env::temp_dir().join(format!("tape-nn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    nn::save(&a, &path).unwrap();
    let mut b = net(2, DType::F64);
    assert_ne!(stored(&a), stored(&b));
    nn::load(&mut b, &path).unwrap();
    assert_eq!(stored(&a), stored(&b));
    // An f32 model loads the f64 file, rounding once.
    let mut c = net(3, DType::F32);
    nn::load(&mut c, &path).unwrap();
    let (sa, sc) = (stored(&a), stored(&c));
    for (k, v) in &sa {
        let rounded: Vec<f64> = v.values.iter().map(|&x| x as f32 as f64).collect();
        assert_eq!(sc[k].values, rounded, "{k}");
    }

    // Every bad file is a typed error naming the tensor, and leaves the model untouched.
    let before = stored(&b);
    let mut missing = stored(&a);
    missing.remove("heads.1.weight");
    assert!(matches!(
        nn::load_state_dict(&mut b, &missing, LoadOptions::default()),
        Err(StateError::MissingTensor(n)) if n == "heads.1.weight"
    ));
    let mut extra = stored(&a);
    extra.insert("heads.1.bias".into(), extra["heads.0.bias"].clone());
    assert!(matches!(
        nn::load_state_dict(&mut b, &extra, LoadOptions::default()),
        Err(StateError::UnexpectedTensors(n)) if n == ["heads.1.bias"]
    ));
    // One value out of range: a negative variance, a NaN, a negative count (in `b`) and one
    // too large for `c`'s f32.
    let cases = [
        ("features.block2.bn.running_var", 1, -1.0),
        ("emb.weight", 4, f64::NAN),
        ("ln.bias", 0, 1e300),
        ("features.block1.bn.num_batches_tracked", 0, -3.0),
    ];
    for (name, i, value) in cases {
        let mut bad = stored(&a);
        bad.get_mut(name).unwrap().values[i] = value;
        let model = if name == "ln.bias" { &mut c } else { &mut b };
        assert!(matches!(
            nn::load_state_dict(model, &bad, LoadOptions::default()),
            Err(StateError::BadValue { name: n, .. }) if n == name
        ));
    }
    let mut shape = stored(&a);
    shape.get_mut("ln.bias").unwrap().shape = vec![1, 3];
    assert!(matches!(
        nn::load_state_dict(&mut b, &shape, LoadOptions::default()),
        Err(StateError::TensorShape { name, .. }) if name == "ln.bias"
    ));
    assert_eq!(stored(&b), before, "failed loads leave the model untouched");
    // A lenient load ignores the extra tensor but still loads the rest.
    let mut fresh = net(4, DType::F64);
    nn::load_state_dict(&mut fresh, &extra, LoadOptions { lenient: true }).unwrap();
    assert_eq!(stored(&fresh), stored(&a));

    std::fs::write(dir.join("bad.safetensors"), b"not a file").unwrap();
    assert!(matches!(
        nn::load(&mut b, &dir.join("bad.safetensors")),
        Err(StateError::File { .. })
    ));
    assert!(matches!(
        nn::load(&mut b, &dir.join("absent.safetensors")),
        Err(StateError::Io { .. })
    ));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn modules_compute_what_their_ops_do() {
    let dev = Device::cpu();
    let m = net_on(&dev, 5, DType::F64);
    let mut tape = Tape::recording();
    // Linear over a 3-D input equals the op on the flattened rows.
    let x = Tensor::randn(&[2, 4, 3], DType::F64, &dev, 9).unwrap();
    let y = m.heads[0].forward(&mut tape, &x).unwrap();
    assert_eq!(y.shape(), &[2, 4, 4]);
    let flat = ops::reshape(&mut tape, &x, &[8, 3]).unwrap();
    let w = m.heads[0].weight.tensor();
    let b = m.heads[0].bias.as_ref().map(|b| b.tensor());
    let want = ops::linear(&mut tape, &flat, w, b).unwrap();
    assert_eq!(y.to_f64_vec(), want.to_f64_vec());
    // Embedding rows, layer norm statistics.
    let e = m.emb.forward(&mut tape, &[4, 0, 4], &[3]).unwrap();
    let table = m.emb.weight.tensor().to_f64_vec();
    assert_eq!(&e.to_f64_vec()[..3], &table[12..15]);
    assert_eq!(&e.to_f64_vec()[6..9], &table[12..15]);
    let ln = m.ln.as_ref().unwrap().forward(&mut tape, &e).unwrap();
    let row = &ln.to_f64_vec()[..3];
    assert!(row.iter().sum::<f64>().abs() < 1e-12);
    // Dropout: bad p refused, p = 0 is the identity, eval mode too.
    assert!(Dropout::new(1.0).is_err() && Dropout::new(-0.1).is_err());
    assert_eq!(
        Dropout::new(0.0)
            .unwrap()
            .forward(&mut tape, &x)
            .unwrap()
            .to_f64_vec(),
        x.to_f64_vec()
    );
    let mut eval = Tape::recording().training(false);
    let d = Dropout::new(0.5).unwrap().forward(&mut eval, &x).unwrap();
    assert_eq!(d.to_f64_vec(), x.to_f64_vec());
    let mut train = Tape::recording();
    let d = Dropout::new(0.5).unwrap().forward(&mut train, &x).unwrap();
    assert!(d.to_f64_vec().contains(&0.0));
    // Conv and batch norm through the modules' gradients: every parameter gets one.
    let img = Tensor::randn(&[2, 2, 4, 4], DType::F64, &dev, 3).unwrap();
    let mut tape = Tape::recording();
    let mut h = img;
    for blk in m.blocks.iter() {
        h = blk.conv.forward(&mut tape, &h).unwrap();
        h = blk.bn.forward_relu(&mut tape, &h).unwrap();
    }
    let grads = tape::testing::grads_of_sum(tape, &h);
    for blk in m.blocks.iter() {
        for p in nn::parameters(blk) {
            assert!(grads.get(p.tensor()).is_some(), "{}", p.name());
        }
    }
}
