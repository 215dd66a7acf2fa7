//! A real Prometheus server (Debian's `prometheus` package) scrapes the agent on
//! loopback; the test asks Prometheus' HTTP API for the series and checks
//! the values the fixture holds.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use support::{Agent, Prometheus};

#[test]
fn prometheus_scrapes_the_fixture_values() {
    let agent = Agent::on_fixture("basic", &[]);
    agent.wait_ready();
    let prometheus = Prometheus::scraping(agent.addr);
    prometheus.wait_scraping();

    let expectations = [
        ("hostwatch_cpu_seconds_total{cpu=\"1\",mode=\"system\"}", 17.55),
        ("hostwatch_net_receive_bytes_total{interface=\"eth0\"}", 214_682_743.0),
        ("hostwatch_net_transmit_bytes_total{interface=\"eth0\"}", 284_836.0),
        ("hostwatch_collector_up{collector=\"netdev\"}", 1.0),
        ("count(hostwatch_cpu_seconds_total)", 16.0),
    ];
    for (expr, expected) in expectations {
        let result = prometheus.query(expr);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        assert_eq!(result[0].1, expected, "{expr}");
    }
    let build = prometheus.query("hostwatch_build_info");
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    // Prometheus saw no scrape errors: every sample parsed.
    let samples = prometheus.query("scrape_samples_scraped{job=\"hostwatch\"}");
    assert!(samples.first().is_some_and(|(_, n)| *n > 50.0), "{samples:?}");
}
