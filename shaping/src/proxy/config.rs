//! The `[shaping]` section of the agent's config: the proxy, its policies and
//! their adaptive controllers.
//!
//! Reads nothing, needs nothing. Every table rejects unknown keys and every
//! value is checked while parsing (rates, durations, patterns, names, floor
//! below ceiling), so the TOML parser points at the offending line.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hostwatch_collectors::config::{Interval, Rate};
use serde::{Deserialize, Deserializer};

/// The `policy` label of traffic to hosts on the pass-through list.
pub const PASS_THROUGH: &str = "pass_through";

/// `[shaping]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Serve the proxy (off by default: it is an actuator, opt in).
    pub enabled: bool,
    /// Loopback by default: the proxy serves this host's clients only.
    pub listen: SocketAddr,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: Count<1, 1_000_000>,
    /// Time a client has to send its request head.
    pub header_timeout: Interval,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: Count<1024, 1_048_576>,
    /// A tunnel where no byte moved either way for this long is closed.
    pub idle_timeout: Interval,
    /// Time to resolve and connect to the upstream (504 beyond).
    pub connect_timeout: Interval,
    /// Destination ports a client may reach; the proxy is not an open relay.
    pub ports: Vec<u16>,
    /// Hosts reachable through the proxy without shaping.
    pub pass_through: Vec<HostPattern>,
    /// The upstream socket's buffer (SO_RCVBUF for downloads, SO_SNDBUF for
    /// uploads) as time at the policy's rate, set before connecting: pacing
    /// what the proxy reads does not pace the wire when the kernel's window
    /// lets the server send a whole large buffer at once.
    pub socket_buffer: Span,
    /// How often the adaptive controllers decide and metrics are published.
    pub interval: Interval,
    /// Adaptive controllers log what they would do and change nothing.
    pub dry_run: bool,
    pub policy: Policies,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9978)),
            max_connections: Count(1024),
            header_timeout: Interval::from_secs(5),
            max_header_bytes: Count(16384),
            idle_timeout: Interval::from_secs(120),
            connect_timeout: Interval::from_secs(10),
            ports: vec![443, 80],
            pass_through: Vec::new(),
            socket_buffer: Span(Duration::from_millis(2)),
            interval: Interval::from_secs(1),
            dry_run: false,
            policy: Policies::default(),
        }
    }
}

/// `[[shaping.policy]]` entries, with unique names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies(pub Vec<Policy>);

impl<'de> Deserialize<'de> for Policies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let policies = Vec::<Policy>::deserialize(deserializer)?;
        let mut names = BTreeSet::new();
        for policy in &policies {
            if !names.insert(policy.name.as_str()) {
                return Err(serde::de::Error::custom(format!(
                    "policy name {:?} is used twice",
                    policy.name
                )));
            }
        }
        Ok(Self(policies))
    }
}

/// One `[[shaping.policy]]`: which destinations, and their rates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct Policy {
    /// The `policy` label.
    pub name: String,
    /// Destination host patterns; the first policy that matches wins.
    pub hosts: Vec<HostPattern>,
    /// Bucket name patterns: when given, the policy matches only
    /// virtual-hosted names (`BUCKET.s3...`) whose bucket matches one.
    pub buckets: Vec<HostPattern>,
    /// Server to client; unlimited when absent.
    pub download: Option<Rate>,
    /// Client to server; unlimited when absent.
    pub upload: Option<Rate>,
    pub burst: Burst,
    pub adaptive: Adaptive,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    hosts: Vec<HostPattern>,
    #[serde(default)]
    buckets: Vec<HostPattern>,
    download: Option<Rate>,
    upload: Option<Rate>,
    #[serde(default)]
    burst: Burst,
    #[serde(default)]
    adaptive: Adaptive,
}

/// The burst allowance as time at the rate, per direction: one duration for
/// both (`burst = "1ms"`) or a table (`burst = { upload = "500us" }`, the
/// other direction keeping 1 ms). A bucket lets a millisecond carry its
/// depth on top of the millisecond's rate, so an upload burst of 500us holds
/// what the proxy writes to 1.5x the limit's millisecond. Downloads do
/// better at 1 ms: smaller reads open the server's window in smaller, later
/// steps, which bunch more on the wire (`bench/RESULTS.md`, S3 pacing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub download: Span,
    pub upload: Span,
}

impl Default for Burst {
    fn default() -> Self {
        let one = Span(Duration::from_millis(1));
        Self {
            download: one,
            upload: one,
        }
    }
}

impl<'de> Deserialize<'de> for Burst {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PerDirection {
            download: Option<Span>,
            upload: Option<Span>,
        }

        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Burst;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration, or a table of `download` and `upload` durations")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Burst, E> {
                let both = Span::parse(text).map_err(E::custom)?;
                Ok(Burst {
                    download: both,
                    upload: both,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Burst, A::Error> {
                let table = PerDirection::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let default = Burst::default();
                Ok(Burst {
                    download: table.download.unwrap_or(default.download),
                    upload: table.upload.unwrap_or(default.upload),
                })
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl TryFrom<RawPolicy> for Policy {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        let label = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !label {
            return Err(format!(
                "invalid policy name {:?}: 1 to 64 of a-z, 0-9, _ and -",
                raw.name
            ));
        }
        if raw.name == PASS_THROUGH {
            return Err(format!(
                "policy name {PASS_THROUGH:?} is reserved for the pass-through list"
            ));
        }
        if raw.hosts.is_empty() {
            return Err(format!("policy {:?} has no hosts", raw.name));
        }
        for rate in [raw.download, raw.upload].into_iter().flatten() {
            let (floor, ceiling) = (raw.adaptive.floor.of(rate), raw.adaptive.ceiling.of(rate));
            if raw.adaptive.enabled && floor > ceiling {
                return Err(format!(
                    "policy {:?}: adaptive floor ({floor} bit/s) above its ceiling ({ceiling} bit/s)",
                    raw.name
                ));
            }
        }
        Ok(Self {
            name: raw.name,
            hosts: raw.hosts,
            buckets: raw.buckets,
            download: raw.download,
            upload: raw.upload,
            burst: raw.burst,
            adaptive: raw.adaptive,
        })
    }
}

/// `[shaping.policy.adaptive]`: the AIMD controller of one policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptive {
    pub enabled: bool,
    /// The rate is never cut below this.
    pub floor: RateOrShare,
    /// Nor raised above this.
    pub ceiling: RateOrShare,
    /// Added each quiet interval.
    pub step: RateOrShare,
    /// The rate is multiplied by this when the host is congested.
    pub decrease: Factor,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            enabled: false,
            floor: RateOrShare::Share(0.1),
            ceiling: RateOrShare::Share(1.0),
            step: RateOrShare::Share(0.05),
            decrease: Factor(0.7),
        }
    }
}

/// A rate ("200Mbit") or a share of the policy's configured rate ("10%").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateOrShare {
    Rate(Rate),
    /// 1.0 is 100 %.
    Share(f64),
}

impl RateOrShare {
    /// In bits per second, for a direction configured at `rate`.
    pub fn of(self, rate: Rate) -> f64 {
        match self {
            Self::Rate(own) => own.bits_per_second(),
            Self::Share(share) => rate.bits_per_second() * share,
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('%') {
            Some(percent) => match percent.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 1000.0 => Ok(Self::Share(p / 100.0)),
                _ => Err(format!(
                    "invalid share {text:?}: a percentage of the policy's rate, above 0% and at most 1000%"
                )),
            },
            None => Rate::parse(text).map(Self::Rate),
        }
    }
}

impl<'de> Deserialize<'de> for RateOrShare {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The multiplicative decrease: strictly between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor(pub f64);

impl<'de> Deserialize<'de> for Factor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value > 0.0 && value < 1.0 {
            Ok(Self(value))
        } else {
            Err(serde::de::Error::custom(format!(
                "decrease {value} out of range: must be above 0 and below 1"
            )))
        }
    }
}

/// A short duration ("1ms", "500us", "4ms") between 100 us and 1 s: burst
/// allowances and socket buffers, below what [`Interval`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    pub fn get(self) -> Duration {
        self.0
    }

    fn parse(text: &str) -> Result<Self, String> {
        let duration =
            humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))?;
        if !(Duration::from_micros(100)..=Duration::from_secs(1)).contains(&duration) {
            return Err(format!("duration {text:?} out of range: must be between 100us and 1s"));
        }
        Ok(Self(duration))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An integer that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Count<MIN, MAX> {
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Count<MIN, MAX> {
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

/// A host name pattern: `*` stands for any non-empty run of characters
/// (`*.s3.amazonaws.com`, `s3.*.amazonaws.com`, `10.1.*.2`); compared
/// without regard to case. A pattern that starts with `*.` names the bucket
/// of a virtual-hosted S3 name: what the leading `*` matched.
#[derive(Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn new(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 253
            && !text.contains("**")
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*' | b':' | b'[' | b']'));
        if valid {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(format!(
                "invalid host pattern {text:?}: letters, digits, '.', '-', '_', ':' and '*' wildcards"
            ))
        }
    }

    /// Whether `host` (lower case) matches the whole pattern.
    pub fn is_match(&self, host: &str) -> bool {
        glob(self.0.as_bytes(), host.as_bytes())
    }

    /// The bucket of a virtual-hosted `host`: the longest prefix the leading
    /// `*` can take (bucket names may contain dots).
    pub fn bucket<'h>(&self, host: &'h str) -> Option<&'h str> {
        let rest = self.0.strip_prefix('*')?;
        if !rest.starts_with('.') {
            return None;
        }
        (1..host.len())
            .rev()
            .filter(|&split| host.as_bytes()[split] == b'.')
            .find(|&split| glob(rest.as_bytes(), &host.as_bytes()[split..]))
            .map(|split| &host[..split])
    }
}

/// Glob match where `*` takes one or more bytes; patterns are short, so
/// plain backtracking is enough.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (1..=text.len()).any(|taken| glob(rest, &text[taken..])),
        Some((byte, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t == byte && glob(rest, tail)),
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn off_by_default_on_loopback() {
        let config = parse("").unwrap_or_default();
        assert!(!config.enabled);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9978");
        assert_eq!(config.ports, [443, 80]);
    }

    #[test]
    fn a_full_policy() {
        let config = parse(
            r#"
            enabled = true
            [[policy]]
            name = "s3"
            hosts = ["*.s3.amazonaws.com", "*.s3.*.amazonaws.com", "s3.*.amazonaws.com"]
            buckets = ["backup-*"]
            download = "800Mbit"
            upload = "200Mbit"
            burst = "500us"
            [policy.adaptive]
            enabled = true
            floor = "50Mbit"
            step = "5%"
            decrease = 0.5
            "#,
        );
        let config = config.unwrap();
        let policy = &config.policy.0[0];
        let half = Span(Duration::from_micros(500));
        assert_eq!(
            policy.burst,
            Burst {
                download: half,
                upload: half
            }
        );
        assert_eq!(policy.download.map(Rate::bits_per_second), Some(800e6));
        let upload = policy.upload.unwrap();
        assert_eq!(policy.adaptive.floor.of(upload), 50e6);
        assert_eq!(policy.adaptive.ceiling.of(upload), 200e6);
        assert_eq!(policy.adaptive.step.of(upload), 10e6);
        assert_eq!(policy.adaptive.decrease, Factor(0.5));
    }

    #[test]
    fn the_burst_is_one_duration_or_one_per_direction() {
        let burst = |line: &str| {
            let text = format!("[[policy]]\nname = \"s3\"\nhosts = [\"*.s3.amazonaws.com\"]\n{line}");
            parse(&text).map(|config| config.policy.0[0].burst)
        };
        let span = |micros| Span(Duration::from_micros(micros));
        assert_eq!(
            burst(""),
            Ok(Burst {
                download: span(1000),
                upload: span(1000)
            })
        );
        assert_eq!(
            burst("burst = \"2ms\""),
            Ok(Burst {
                download: span(2000),
                upload: span(2000)
            })
        );
        assert_eq!(
            burst("burst = { upload = \"500us\" }"),
            Ok(Burst {
                download: span(1000),
                upload: span(500)
            })
        );
        assert_eq!(
            burst("burst = { download = \"4ms\", upload = \"250us\" }"),
            Ok(Burst {
                download: span(4000),
                upload: span(250)
            })
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let policy = |extra: &str| format!("[[policy]]\nname = \"s3\"\nhosts = [\"*.s3.amazonaws.com\"]\n{extra}");
        for (text, reason) in [
            (policy("burst = \"10us\""), "out of range"),
            (policy("burst = { upload = \"2s\" }"), "out of range"),
            (policy("burst = { sideways = \"1ms\" }"), "unknown field"),
            (policy("burst = 1"), "a duration, or a table"),
            (policy("download = \"fast\""), "invalid rate"),
            (policy("[policy.adaptive]\ndecrease = 1.5"), "decrease 1.5 out of range"),
            (policy("[policy.adaptive]\nfloor = \"0%\""), "invalid share"),
            (
                policy("upload = \"100Mbit\"\n[policy.adaptive]\nenabled = true\nfloor = \"1Gbit\""),
                "above its ceiling",
            ),
            (policy("colour = 1"), "unknown field"),
            (
                "[[policy]]\nname = \"Bad Name\"\nhosts = [\"a\"]".into(),
                "invalid policy name",
            ),
            (
                "[[policy]]\nname = \"pass_through\"\nhosts = [\"a\"]".into(),
                "reserved",
            ),
            ("[[policy]]\nname = \"a\"\nhosts = []".into(), "no hosts"),
            (
                "[[policy]]\nname = \"a\"\nhosts = [\"a b\"]".into(),
                "invalid host pattern",
            ),
            (
                "[[policy]]\nname = \"a\"\nhosts = [\"a\"]\n[[policy]]\nname = \"a\"\nhosts = [\"b\"]".into(),
                "used twice",
            ),
            ("max_connections = 0".into(), "out of range"),
        ] {
            let error = parse(&text).err().unwrap_or_default();
            assert!(error.contains(reason), "{text:?}: {error:?}");
        }
    }

    #[test]
    fn host_patterns() {
        let pattern = |p: &str| HostPattern::new(p).unwrap();
        let virtual_hosted = pattern("*.s3.*.amazonaws.com");
        assert!(virtual_hosted.is_match("logs.s3.us-east-1.amazonaws.com"));
        assert!(!virtual_hosted.is_match("s3.us-east-1.amazonaws.com"));
        assert!(!virtual_hosted.is_match("logs.s3.us-east-1.amazonaws.com.evil.net"));
        assert_eq!(
            virtual_hosted.bucket("my.logs.s3.us-east-1.amazonaws.com"),
            Some("my.logs")
        );
        assert_eq!(pattern("s3.*.amazonaws.com").bucket("s3.eu-west-1.amazonaws.com"), None);
        assert!(pattern("S3.*.AmazonAWS.com").is_match("s3.eu-west-1.amazonaws.com"));
        assert!(pattern("10.251.*.2").is_match("10.251.7.2"));
        assert!(!pattern("*.example.com").is_match(".example.com"));
        assert!(HostPattern::new("").is_err());
        assert!(HostPattern::new("a/b").is_err());
    }
}
