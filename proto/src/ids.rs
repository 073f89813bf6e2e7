//! Strong identifiers: no bare integers or strings travel between layers.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::Error;

/// A task's identifier, unique for the life of a server's database (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

/// A worker's identifier, given by the server when the worker first registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

macro_rules! numeric_id {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self, Error> {
                text.trim().parse::<u64>().map($ty).map_err(|_| {
                    Error::invalid(
                        $what,
                        format!("`{text}` is not a {} (a positive whole number)", $what),
                    )
                })
            }
        }
    };
}

numeric_id!(TaskId, "task id");
numeric_id!(WorkerId, "worker id");

/// The name of a batch: what groups tasks and the workers that take them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BatchName(String);

impl BatchName {
    /// The longest batch name accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates a batch name: 1 to 128 letters, digits, `_`, `-`, `.`, `:` or `@`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid(
                "batch",
                "the batch name is empty; give a name such as `assembly`",
            ));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                "batch",
                format!(
                    "the batch name is {} characters long; the limit is {}",
                    name.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')))
        {
            return Err(Error::invalid(
                "batch",
                format!(
                    "`{}` contains `{}`; use letters, digits and _ - . : @",
                    name.escape_debug(),
                    bad.escape_debug()
                ),
            ));
        }
        Ok(BatchName(name))
    }

    /// The batch every task and worker belongs to unless told otherwise.
    pub fn default_batch() -> Self {
        BatchName("default".to_owned())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BatchName {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        BatchName::new(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_are_validated() {
        assert!(BatchName::new("assembly_genome-ecoli.v2").is_ok());
        assert!(BatchName::new("").is_err());
        assert!(BatchName::new("has space").is_err());
        assert!(BatchName::new("x".repeat(129)).is_err());
    }

    #[test]
    fn ids_parse_and_refuse_garbage() {
        assert_eq!("42".parse::<TaskId>(), Ok(TaskId(42)));
        let error = "abc".parse::<TaskId>().unwrap_err();
        assert!(
            error.to_string().contains("`abc` is not a task id"),
            "{error}"
        );
        assert!("-1".parse::<WorkerId>().is_err());
    }
}
