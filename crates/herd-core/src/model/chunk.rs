//! Chunks: several items handed to one handler call, with a result per item.

use std::fmt;
use std::str::FromStr;

use super::invalid::InvalidField;

/// A rough class of how heavy one item is; picks a default chunk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeClass {
    /// 50 items per chunk.
    Simple,
    /// 20 items per chunk.
    Moderate,
    /// 10 items per chunk.
    Complex,
    /// 5 items per chunk.
    VeryComplex,
}

impl SizeClass {
    /// The default chunk size for the class.
    pub fn chunk_size(self) -> usize {
        match self {
            SizeClass::Simple => 50,
            SizeClass::Moderate => 20,
            SizeClass::Complex => 10,
            SizeClass::VeryComplex => 5,
        }
    }
}

impl FromStr for SizeClass {
    type Err = InvalidField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simple" => Ok(SizeClass::Simple),
            "moderate" => Ok(SizeClass::Moderate),
            "complex" => Ok(SizeClass::Complex),
            "very_complex" => Ok(SizeClass::VeryComplex),
            other => Err(InvalidField::new(
                "size_class",
                other,
                "use simple, moderate, complex or very_complex",
            )),
        }
    }
}

/// How a chunk as a whole went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkStatus {
    /// Every item succeeded.
    Success,
    /// Some items failed, no more than the threshold allows.
    Partial,
    /// More items failed than the threshold allows; the chunk is retried.
    Failed,
}

impl fmt::Display for ChunkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkStatus::Success => "success",
            ChunkStatus::Partial => "partial",
            ChunkStatus::Failed => "failed",
        })
    }
}

/// How items are grouped and when a chunk counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkPolicy {
    /// Items per chunk; at least 1.
    pub size: usize,
    /// The chunk fails when more than this share of its items (in percent) failed.
    pub max_failed_percent: f64,
}

impl ChunkPolicy {
    /// Chunks of `size` items, failing when more than half the items fail.
    pub fn new(size: usize) -> Self {
        ChunkPolicy {
            size,
            max_failed_percent: 50.0,
        }
    }

    /// Chunks sized by class.
    pub fn class(class: SizeClass) -> Self {
        ChunkPolicy::new(class.chunk_size())
    }

    /// The same policy with another failure share.
    pub fn max_failed_percent(mut self, percent: f64) -> Self {
        self.max_failed_percent = percent;
        self
    }

    /// Checks the size and threshold.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.size == 0 {
            return Err(InvalidField::new("chunk_size", 0, "must be at least 1"));
        }
        let p = self.max_failed_percent;
        if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
            return Err(InvalidField::new(
                "chunk.max_failed_percent",
                format!("{p}%"),
                "must be between 0% and 100%",
            ));
        }
        Ok(())
    }

    /// The status of a chunk with `failed` of `total` items failed.
    pub fn classify(&self, failed: usize, total: usize) -> ChunkStatus {
        if failed == 0 {
            ChunkStatus::Success
        } else if (failed as f64) * 100.0 > self.max_failed_percent * total as f64 {
            ChunkStatus::Failed
        } else {
            ChunkStatus::Partial
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_have_their_defaults() {
        let sizes: Vec<_> = [
            SizeClass::Simple,
            SizeClass::Moderate,
            SizeClass::Complex,
            SizeClass::VeryComplex,
        ]
        .map(SizeClass::chunk_size)
        .into();
        assert_eq!(sizes, [50, 20, 10, 5]);
        assert_eq!("very_complex".parse(), Ok(SizeClass::VeryComplex));
        assert!("huge".parse::<SizeClass>().is_err());
    }

    #[test]
    fn classification_by_threshold() {
        let p = ChunkPolicy::new(10);
        assert_eq!(p.classify(0, 10), ChunkStatus::Success);
        assert_eq!(p.classify(5, 10), ChunkStatus::Partial);
        assert_eq!(p.classify(6, 10), ChunkStatus::Failed);
        let strict = p.max_failed_percent(0.0);
        assert_eq!(strict.classify(1, 10), ChunkStatus::Failed);
    }

    #[test]
    fn validation() {
        assert_eq!(
            ChunkPolicy::new(0).validate().unwrap_err().field,
            "chunk_size"
        );
        assert!(
            ChunkPolicy::new(3)
                .max_failed_percent(101.0)
                .validate()
                .is_err()
        );
        assert!(ChunkPolicy::class(SizeClass::Simple).validate().is_ok());
    }
}
