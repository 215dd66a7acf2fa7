//! The `[collectors.*]` sections of the agent's TOML config.
//!
//! Reads nothing, needs nothing. Every section carries the same schedule keys
//! (`enabled`, `interval`, `timeout`) plus the collector's own options, and
//! rejects unknown keys. Values are validated while deserializing, so the
//! TOML parser can point at the offending line and column.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::{cgroups, cpu, ethtool, memory, netdev, pressure, process, python};

/// All collector sections, one field per collector in [`crate::ALL`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    pub cpu: cpu::Config,
    pub memory: memory::Config,
    pub pressure: pressure::Config,
    pub cgroups: cgroups::Config,
    pub netdev: netdev::Config,
    pub ethtool: ethtool::Config,
    pub process: process::Config,
    pub python: python::Config,
}

/// The schedule keys every collector section has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub enabled: bool,
    pub interval: Option<Interval>,
    pub timeout: Option<Interval>,
}

/// What the registry needs from any collector section.
pub trait Section {
    fn schedule(&self) -> Schedule;
}

/// Declares a collector's config section: the schedule keys plus its own
/// options, each with its default.
macro_rules! collector_section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Run this collector (default true).
            pub enabled: bool,
            /// How often to collect; the collector's own default when absent.
            pub interval: Option<$crate::config::Interval>,
            /// How long one collection may take before it counts as a timeout.
            pub timeout: Option<$crate::config::Interval>,
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { enabled: true, interval: None, timeout: None, $( $field: $default, )* }
            }
        }

        impl $crate::config::Section for $name {
            fn schedule(&self) -> $crate::config::Schedule {
                $crate::config::Schedule {
                    enabled: self.enabled,
                    interval: self.interval,
                    timeout: self.timeout,
                }
            }
        }
    };
}
pub(crate) use collector_section;

/// A collection interval or timeout: a human duration ("250ms", "1s", "1m")
/// between 10 ms and 1 hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(Duration);

impl Interval {
    pub const MIN: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(3600);

    pub fn parse(text: &str) -> Result<Self, String> {
        let duration =
            humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))?;
        if !(Self::MIN..=Self::MAX).contains(&duration) {
            return Err(format!("duration {text:?} out of range: must be between 10ms and 1h"));
        }
        Ok(Self(duration))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An integer that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// `value` brought into range: for defaults, which are in range anyway.
    pub const fn clamped(value: u64) -> Self {
        Self(if value < MIN {
            MIN
        } else if value > MAX {
            MAX
        } else {
            value
        })
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        match u64::try_from(value) {
            Ok(value) if (MIN..=MAX).contains(&value) => Ok(Self(value)),
            _ => Err(serde::de::Error::custom(format!(
                "value {value} out of range: must be between {MIN} and {MAX}"
            ))),
        }
    }
}

/// A fraction greater than 0 and at most 1 (`0.01` is 1 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(f64);

impl Fraction {
    /// `value` brought into range: for defaults, which are in range anyway.
    pub const fn clamped(value: f64) -> Self {
        Self(if value > 1.0 {
            1.0
        } else if value > 0.0 {
            value
        } else {
            f64::MIN_POSITIVE
        })
    }

    pub fn new(value: f64) -> Result<Self, String> {
        if value > 0.0 && value <= 1.0 {
            Ok(Self(value))
        } else {
            Err(format!(
                "value {value} out of range: must be greater than 0 and at most 1"
            ))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A regular expression from the config, matched against a whole name
/// (it is anchored for you: `eth.*` does not match `veth0`).
#[derive(Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn new(text: &str) -> Result<Self, String> {
        regex::Regex::new(&format!("^(?:{text})$"))
            .map(Self)
            .map_err(|error| format!("invalid regular expression {text:?}: {error}"))
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// An include and exclude pair: a name is selected when it matches `include`
/// (or there is none) and does not match `exclude`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    pub include: Option<Pattern>,
    pub exclude: Option<Pattern>,
}

impl Selector {
    pub fn selects(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|p| p.is_match(name))
            && !self.exclude.as_ref().is_some_and(|p| p.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(
            Interval::parse("250ms").map(Interval::get),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            Interval::parse("1ms"),
            Err("duration \"1ms\" out of range: must be between 10ms and 1h".into())
        );
        assert!(Interval::parse("2h").is_err());
        assert!(Interval::parse("soon").is_err_and(|e| e.starts_with("invalid duration \"soon\"")));
    }

    #[test]
    fn patterns_are_anchored() {
        let selector = Selector {
            include: Pattern::new("eth.*").ok(),
            exclude: Pattern::new("eth9").ok(),
        };
        assert!(selector.selects("eth0"));
        assert!(!selector.selects("veth0"));
        assert!(!selector.selects("eth9"));
        assert!(Selector::default().selects("anything"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = toml::from_str::<CollectorsConfig>("[cpu]\nenabeld = false\n")
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("unknown field `enabeld`")));
        let config: CollectorsConfig =
            toml::from_str("[cpu]\nenabled = false\ninterval = \"5s\"\n").unwrap_or_default();
        assert!(!config.cpu.enabled);
        assert_eq!(config.cpu.interval.map(Interval::get), Some(Duration::from_secs(5)));
    }
}
