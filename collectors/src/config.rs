//! The `[collectors.*]` sections of the agent's TOML config.
//!
//! Reads nothing, needs nothing. Every section carries the same schedule keys
//! (`enabled`, `interval`, `timeout`) plus the collector's own options, and
//! rejects unknown keys. Values are validated while deserializing, so the
//! TOML parser can point at the offending line and column.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::{
    cgroups, cpu, ethtool, gpu, headroom, hotspots, instance, memory, netburst, netdev, pressure, process, python,
    stalls,
};

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
    pub instance: instance::Config,
    pub headroom: headroom::Config,
    pub netburst: netburst::Config,
    pub stalls: stalls::Config,
    pub hotspots: hotspots::Config,
    pub python: python::Config,
    pub gpu: gpu::Config,
    pub process: process::Config,
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

    /// A default written in code; `secs` must lie within the bounds.
    pub const fn from_secs(secs: u64) -> Self {
        assert!(secs >= 1 && secs <= 3600, "interval out of bounds");
        Self(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A bandwidth from the config: a decimal number and a unit with no space
/// between them, "25Gbit", "12.5Gbit", "500Mbit". Prefixes are decimal (SI), as
/// in EC2's figures and tc's: 1 Gbit is 10^9 bits. Held in bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    const UNITS: [(&str, f64); 5] = [
        ("bit", 1.0),
        ("kbit", 1e3),
        ("Mbit", 1e6),
        ("Gbit", 1e9),
        ("Tbit", 1e12),
    ];

    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |reason: &str| {
            format!(
                "invalid rate {text:?}: {reason}; write a number and one of bit, kbit, Mbit, Gbit, Tbit, such as \"12.5Gbit\""
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| invalid("no unit"))?;
        let (number, unit) = text.split_at(split);
        // Only plain decimals: a sign, an exponent or a bare "." is more likely
        // a typo than a bandwidth, and `f64::from_str` would take them all.
        let plain = match number.split_once('.') {
            Some((whole, fraction)) => !whole.is_empty() && !fraction.is_empty() && !fraction.contains('.'),
            None => !number.is_empty(),
        };
        if !plain {
            return Err(invalid("not a plain decimal number"));
        }
        let scale = Self::UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| invalid("unknown unit"))?;
        let value = number.parse::<f64>().map_err(|_| invalid("not a number"))? * scale;
        if !value.is_finite() {
            return Err(invalid("too large"));
        }
        if value <= 0.0 {
            return Err(invalid("must be more than zero"));
        }
        Ok(Self(value))
    }

    pub fn bits_per_second(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
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
    fn rates_are_strict() {
        let bps = |text: &str| Rate::parse(text).map(Rate::bits_per_second);
        assert_eq!(bps("25Gbit"), Ok(25e9));
        assert_eq!(bps("12.5Gbit"), Ok(12.5e9));
        assert_eq!(bps("500Mbit"), Ok(500e6));
        assert_eq!(bps("0.781Gbit"), Ok(0.781e9));
        assert_eq!(bps("64kbit"), Ok(64e3));
        assert_eq!(bps("3.2Tbit"), Ok(3.2e12));
        assert_eq!(bps("100bit"), Ok(100.0));
        for bad in [
            "",
            "25",
            "Gbit",
            "25 Gbit",
            " 25Gbit",
            "25Gbit ",
            "25gbit",
            "25GBit",
            "25Gbps",
            "25G",
            "-1Gbit",
            "+1Gbit",
            "1e3Gbit",
            ".5Gbit",
            "5.Gbit",
            "1.2.3Gbit",
            "0Gbit",
            "0.0Mbit",
            "1,5Gbit",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            Rate::parse("25 Gbit"),
            Err("invalid rate \"25 Gbit\": unknown unit; write a number and one of bit, kbit, Mbit, Gbit, Tbit, such as \"12.5Gbit\"".into())
        );
        let huge = format!("{}Tbit", "9".repeat(400));
        assert!(Rate::parse(&huge).is_err_and(|e| e.contains("too large")));
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
