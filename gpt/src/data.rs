//! A character-level tokenizer and dataset, built at run time from text: here, the Rust
//! sources (`*.rs`) under a folder (the workspace's own code), read in sorted path order so
//! that the vocabulary and the token stream are the same on every run. Batches are random
//! windows of the token stream drawn from a seed: the same seed gives the same batch.

use crate::error::{GptError, Result};
use crate::model::TokenBatch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// SplitMix64: a small deterministic generator for batch offsets and sampling.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits: the engine's SplitMix64 finaliser ([`tape::rng::mix64`], which
    /// adds the golden-ratio step itself) of the state, which then moves on by that step.
    pub fn next_u64(&mut self) -> u64 {
        let z = tape::rng::mix64(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Maps each distinct character of a text to an id (in character order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: BTreeMap<char, usize>,
}

impl CharTokenizer {
    /// The tokenizer of `text`'s characters; fails on an empty text.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return Err(GptError::Data("no text to build a vocabulary from".into()));
        }
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        Ok(CharTokenizer { chars, ids })
    }

    /// Number of distinct characters.
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// The ids of `text`'s characters; fails on a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .map(|c| {
                self.ids.get(&c).copied().ok_or_else(|| {
                    GptError::Data(format!("character {c:?} is not in the vocabulary"))
                })
            })
            .collect()
    }

    /// The text of `ids`; fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.chars
                    .get(i)
                    .copied()
                    .ok_or_else(|| GptError::Data(format!("token id {i} is not in the vocabulary")))
            })
            .collect()
    }
}

/// Which part of the token stream batches come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The first 90%.
    Train,
    /// The last 10%.
    Val,
}

/// A tokenized text split into training and validation parts.
#[derive(Clone, Debug)]
pub struct TextDataset {
    /// The tokenizer of the whole text.
    pub tokenizer: CharTokenizer,
    train: Vec<usize>,
    val: Vec<usize>,
}

impl TextDataset {
    /// The dataset of `text` (90% train, 10% validation).
    pub fn from_text(text: &str) -> Result<Self> {
        let tokenizer = CharTokenizer::from_text(text)?;
        let mut train = tokenizer.encode(text)?;
        let val = train.split_off(train.len() * 9 / 10);
        Ok(TextDataset {
            tokenizer,
            train,
            val,
        })
    }

    /// The dataset of the `*.rs` files under `dir` ([`rust_sources`]), at most `max_chars`
    /// characters of them.
    pub fn from_rust_sources(dir: &Path, max_chars: usize) -> Result<Self> {
        let text = rust_sources(dir)?;
        let text: String = text.chars().take(max_chars).collect();
        Self::from_text(&text)
    }

    /// Tokens of a split.
    pub fn tokens(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `batch` random windows of `seq + 1` tokens of `split` (inputs and next-token targets),
    /// drawn from `seed`; fails if the split is not longer than `seq`.
    pub fn batch(&self, split: Split, batch: usize, seq: usize, seed: u64) -> Result<TokenBatch> {
        let data = self.tokens(split);
        if data.len() <= seq {
            return Err(GptError::Data(format!(
                "{split:?} split has {} tokens, windows need {}",
                data.len(),
                seq + 1
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let start = rng.below(data.len() - seq);
            inputs.extend_from_slice(&data[start..start + seq]);
            targets.extend_from_slice(&data[start + 1..start + seq + 1]);
        }
        TokenBatch::new(inputs, targets, batch, seq)
    }
}

/// The text of every `*.rs` file under `dir` (recursively, skipping `target` and hidden
/// folders), in sorted path order, each file followed by a newline; fails if there is none.
pub fn rust_sources(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(GptError::Data(format!(
            "no .rs file under {}",
            dir.display()
        )));
    }
    let mut text = String::new();
    for f in files {
        let s = std::fs::read_to_string(&f).map_err(|source| GptError::Io {
            path: f.display().to_string(),
            source,
        })?;
        text.push_str(&s);
        text.push('\n');
    }
    Ok(text)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| GptError::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}
