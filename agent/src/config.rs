//! The agent's TOML config: typed sections, defaults, and validation errors
//! that point at `PATH:LINE:COLUMN`.
//!
//! Reads the config file it is given (or `/etc/hostwatch/hostwatch.toml` when it
//! exists); needs read access to it. Every section rejects unknown keys and
//! every value is range-checked while parsing, so nothing starts on a config
//! that would fail later.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hostwatch_collectors::CollectorsConfig;
use hostwatch_collectors::config::{Bounded, Interval};
use hostwatch_shaping::tunnel::config::CompressionConfig;
use serde::Deserialize;

/// Where the packaged config lives; used when it exists and `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/hostwatch/hostwatch.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub http: HttpConfig,
    pub collectors: CollectorsConfig,
    pub compression: CompressionConfig,
    pub shaping: hostwatch_shaping::proxy::Config,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Address of the scrape endpoint.
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// TLS and basic authentication for the endpoint: a web config file in
    /// the format of Prometheus' exporter-toolkit (relative to this file).
    pub web_config_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9977)),
            log_format: LogFormat::Plain,
            web_config_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event; without timestamps under systemd, where journald adds them.
    Plain,
    /// One JSON object per line.
    Json,
}

/// `[http]`: the bounds that keep the endpoint safe from slow or greedy clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: Bounded<1, 65536>,
    /// Time a client has to send its request headers (slowloris protection).
    pub header_timeout: Interval,
    /// Largest request head accepted.
    pub max_header_bytes: Bounded<8192, 1_048_576>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: Bounded::clamped(512),
            header_timeout: Interval::from_secs(5),
            max_header_bytes: Bounded::clamped(16384),
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Located { path, line: *line, column: *column, message })]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

struct Located<'a> {
    path: &'a Path,
    line: usize,
    column: usize,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Where the config comes from: the file given, the packaged file when it
/// exists, or the embedded defaults.
pub fn resolve_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|path| path.exists()),
    }
}

/// Loads the config at `path`, or the embedded defaults when there is none.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let Some(path) = path else { return Ok(Config::default()) };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let (line, column) = error.span().map_or((1, 1), |span| line_column(text, span.start));
        ConfigError::Invalid {
            path: path.into(),
            line,
            column,
            message: error.message().trim_end().to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse(Path::new("t.toml"), text).expect_err("invalid").to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse(Path::new("t.toml"), "").unwrap(), Config::default());
        assert_eq!(Config::default().agent.listen.to_string(), "0.0.0.0:9977");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        assert_eq!(
            error_of("[agent]\nlisten = \"127.0.0.1:9977\"\nlisen = 1\n"),
            "t.toml:3:1: unknown field `lisen`, expected one of `listen`, `log_format`, `web_config_file`"
        );
        assert_eq!(
            error_of("[agent]\nlisten = \"nowhere\"\n"),
            "t.toml:2:10: invalid socket address syntax"
        );
        assert_eq!(
            error_of("[http]\nmax_connections = 0\n"),
            "t.toml:2:19: value 0 out of range: must be between 1 and 65536"
        );
        assert_eq!(
            error_of("[collectors.cpu]\ninterval = \"1ms\"\n"),
            "t.toml:2:12: duration \"1ms\" out of range: must be between 10ms and 1h"
        );
        assert_eq!(
            error_of("[collectors.cpu]\nenabled = \"yes\"\n"),
            "t.toml:2:11: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            error_of(
                "[shaping]\nenabled = true\n[[shaping.policy]]\nname = \"s3\"\nhosts = [\"*.s3.amazonaws.com\"]\nupload = \"1 Gbit\"\n"
            ),
            "t.toml:6:10: invalid rate \"1 Gbit\": unknown unit; write a number and one of bit, kbit, Mbit, Gbit, Tbit, such as \"12.5Gbit\""
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("é = x", 5), (1, 5));
        assert_eq!(line_column("a\néé = x", 9), (2, 6));
    }
}
