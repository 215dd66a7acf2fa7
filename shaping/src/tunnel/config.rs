//! `[compression]` and its `[[compression.tunnel]]` entries.
//!
//! Reads nothing, needs nothing. Everything is checked while parsing (names,
//! duplicates, which keys fit which side), so the agent's config errors point
//! at the entry.

use std::net::SocketAddr;

use hostwatch_collectors::config::Interval;
use serde::{Deserialize, Deserializer};

/// `[compression]`: the tunnels, and what "near the allowance" means for
/// those that compress only then.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub tunnel: TunnelList,
    /// Compress while some interface's headroom ratio (its peak rate over
    /// the instance's baseline, from the `headroom` collector) reaches this.
    pub headroom_ratio: Ratio,
    /// Keep compressing this long after the last sign of the allowance (a
    /// rise of an ENA allowance counter, or the ratio above), so a transfer
    /// that compressed its way below the allowance does not flap back.
    pub hold: Interval,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            tunnel: TunnelList::default(),
            headroom_ratio: Ratio(0.8),
            hold: Interval::from_secs(60),
        }
    }
}

/// A headroom ratio threshold: more than 0, at most 10.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(f64);

impl Ratio {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value > 0.0 && value <= 10.0 {
            Ok(Self(value))
        } else {
            Err(serde::de::Error::custom(format!(
                "ratio {value} out of range: must be more than 0 and at most 10"
            )))
        }
    }
}

/// The tunnel entries, with distinct names and listen addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelList(Vec<TunnelConfig>);

impl TunnelList {
    pub fn iter(&self) -> std::slice::Iter<'_, TunnelConfig> {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for TunnelList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tunnels = Vec::<TunnelConfig>::deserialize(deserializer)?;
        for (i, tunnel) in tunnels.iter().enumerate() {
            for earlier in &tunnels[..i] {
                if earlier.name == tunnel.name {
                    return Err(serde::de::Error::custom(format!(
                        "two tunnels are named {:?}",
                        tunnel.name
                    )));
                }
                if earlier.listen == tunnel.listen {
                    return Err(serde::de::Error::custom(format!(
                        "tunnels {:?} and {:?} both listen on {}",
                        earlier.name, tunnel.name, tunnel.listen
                    )));
                }
            }
        }
        Ok(Self(tunnels))
    }
}

/// Which end of a tunnel this agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Applications connect to `listen`; each connection goes on to the peer
    /// agent at `connect`, compressed.
    Client,
    /// Client agents connect to `listen`; each connection goes on to the
    /// local target at `connect`, decompressed.
    Server,
}

/// When a client tunnel compresses. Chosen per connection as it opens; the
/// header tells the server, and both directions follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Always,
    /// Only while the host is near its network allowance (see [`CompressionConfig`]).
    NearAllowance,
}

/// One `[[compression.tunnel]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawTunnel")]
pub struct TunnelConfig {
    /// The `tunnel` label of its metrics.
    pub name: String,
    pub side: Side,
    pub listen: SocketAddr,
    pub connect: SocketAddr,
    /// The client's choice; `None` on a server, which follows each connection's header.
    pub mode: Option<Mode>,
    /// Connections open at once; more are refused (closed at once) and counted.
    pub max_connections: u32,
}

const NAME_MAX: usize = 64;
const MAX_CONNECTIONS: u32 = 65536;

/// The entry as written, before the checks that involve several keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: String,
    side: Side,
    listen: SocketAddr,
    connect: SocketAddr,
    mode: Option<Mode>,
    max_connections: Option<i64>,
}

impl TryFrom<RawTunnel> for TunnelConfig {
    type Error = String;

    fn try_from(raw: RawTunnel) -> Result<Self, String> {
        let name = raw.name;
        let fits = !name.is_empty()
            && name.len() <= NAME_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !fits {
            return Err(format!(
                "tunnel name {name:?} must be 1 to {NAME_MAX} letters, digits, '_', '-' or '.'"
            ));
        }
        let mode = match (raw.side, raw.mode) {
            (Side::Client, mode) => Some(mode.unwrap_or(Mode::Always)),
            (Side::Server, None) => None,
            (Side::Server, Some(_)) => {
                return Err(format!(
                    "tunnel {name:?}: mode belongs to the client side; a server follows what each connection's client chose"
                ));
            }
        };
        let max_connections = match raw.max_connections {
            None => 256,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    format!(
                        "tunnel {name:?}: max_connections {n} out of range: must be between 1 and {MAX_CONNECTIONS}"
                    )
                })?,
        };
        Ok(Self {
            name,
            side: raw.side,
            listen: raw.listen,
            connect: raw.connect,
            mode,
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        compression: CompressionConfig,
    }

    fn parse(text: &str) -> Result<CompressionConfig, String> {
        toml::from_str::<Root>(text)
            .map(|root| root.compression)
            .map_err(|e| e.message().to_owned())
    }

    const CLIENT: &str = "[[compression.tunnel]]\nname = \"backups\"\nside = \"client\"\nlisten = \"127.0.0.1:7400\"\nconnect = \"10.0.0.2:7401\"\n";

    #[test]
    fn entries_parse_with_defaults() {
        let config = parse(CLIENT).unwrap();
        assert_eq!(config.headroom_ratio, Ratio(0.8));
        assert_eq!(config.hold, Interval::from_secs(60));
        let tunnel = config.tunnel.iter().next().unwrap();
        assert_eq!(tunnel.mode, Some(Mode::Always));
        assert_eq!(tunnel.max_connections, 256);
        let server = parse(
            "[[compression.tunnel]]\nname = \"in\"\nside = \"server\"\nlisten = \"0.0.0.0:7401\"\nconnect = \"127.0.0.1:873\"\n",
        )
        .unwrap();
        assert_eq!(server.tunnel.iter().next().unwrap().mode, None);
        let near = parse(&format!(
            "[compression]\nheadroom_ratio = 0.5\nhold = \"5s\"\n{CLIENT}mode = \"near_allowance\"\nmax_connections = 4\n"
        ))
        .unwrap();
        assert_eq!(near.headroom_ratio.get(), 0.5);
        let tunnel = near.tunnel.iter().next().unwrap();
        assert_eq!((tunnel.mode, tunnel.max_connections), (Some(Mode::NearAllowance), 4));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (format!("{CLIENT}mode = \"sometimes\"\n"), "unknown variant `sometimes`"),
            (format!("{CLIENT}lisen = 1\n"), "unknown field `lisen`"),
            (CLIENT.replace("backups", "back ups"), "must be 1 to 64 letters"),
            (
                CLIENT.replace("client", "server") + "mode = \"always\"\n",
                "mode belongs to the client side",
            ),
            (
                format!("{CLIENT}max_connections = 0\n"),
                "max_connections 0 out of range",
            ),
            (format!("{CLIENT}{CLIENT}"), "two tunnels are named \"backups\""),
            (
                format!("{CLIENT}{}", CLIENT.replace("backups", "other")),
                "both listen on 127.0.0.1:7400",
            ),
            ("[compression]\nheadroom_ratio = 0\n".to_owned(), "ratio 0 out of range"),
            (CLIENT.replace("10.0.0.2:7401", "peer"), "invalid socket address"),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text}\n-> {error}");
        }
    }
}
