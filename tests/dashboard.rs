//! The Grafana dashboard `packaging/dashboards/hostwatch.json` cannot rot:
//! every metric name its expressions use is one the agent exports (a golden
//! exposition under `tests/golden/` shows it, or README's metric table lists
//! it for the families only a root, eBPF or GPU host exports), every
//! expression parses as PromQL (promtool), every query goes through the
//! `${datasource}` variable and filters on `$instance`, and the rows the
//! on-call expects are there.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::collections::BTreeSet;
use std::process::Command;

use regex::Regex;
use serde_json::Value;
use support::{TempDir, repo_root, require_program};

/// Families the dashboard shows before their collectors are on this branch:
/// the names the GIL, stalls, GPU, shaper and tunnel issues fix. The list
/// shrinks as those collectors land: once a name appears in a golden file or
/// in README's metric table, `pending_names_have_not_landed` fails until it
/// is removed here, and from then on the general check covers it.
const PENDING: &[&str] = &[];

/// Rows, by a word of their title, the issue asks for.
const ROWS: &[&str] = &[
    "Network headroom",
    "ENA allowance",
    "Microbursts",
    "GIL",
    "mmap_lock",
    "GPUs",
    "Shaper",
];

fn dashboard() -> Value {
    let path = repo_root().join("packaging/dashboards/hostwatch.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (where, expression) for every query: panel targets and template variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {target}"));
            out.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap();
            // label_values(SELECTOR, label): the selector is the expression.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            out.push((format!("variable {:?}", variable["name"]), selector.to_owned()));
        }
    }
    out
}

/// The metric names in a PromQL expression: what is left once strings, label
/// matchers, range and subquery brackets, label lists (`by (...)`,
/// `on (...)`, ...), function and aggregation names, keywords and numbers are
/// taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let matchers = Regex::new(r"\{[^}]*\}").unwrap();
    let brackets = Regex::new(r"\[[^\]]*\]").unwrap();
    let label_lists = Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").unwrap();
    let identifier = Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
    let text = strings.replace_all(expr, " ");
    let text = matchers.replace_all(&text, " ");
    let text = brackets.replace_all(&text, " ");
    let text = label_lists.replace_all(&text, " ");
    let keywords = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    identifier
        .find_iter(&text)
        .filter(|m| {
            // An identifier glued to a digit is part of a number (1e3).
            let before = text[..m.start()].chars().next_back();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '$')
        })
        .filter(|m| !text[m.end()..].trim_start().starts_with('('))
        .map(|m| m.as_str())
        .filter(|name| !keywords.contains(name))
        .map(str::to_owned)
        .collect()
}

/// The families README's metric table names: the backquoted names in the
/// first cell of each row.
fn readme_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let quoted = Regex::new(r"`([a-z_:]+)`").unwrap();
    let names: BTreeSet<String> = readme
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| quoted.captures_iter(cell).map(|c| c[1].to_owned()).collect::<Vec<_>>())
        .filter(|name| name.starts_with("hostwatch_") || name.starts_with("process_"))
        .collect();
    assert!(
        names.contains("hostwatch_net_bursts_total"),
        "README's metric table: {names:?}"
    );
    names
}

/// Whether `name` is exported: in a golden file, or documented (a histogram's
/// `_bucket`, `_sum` and `_count` series by their family), or pending.
fn unknown(name: &str, golden: &BTreeSet<String>, documented: &BTreeSet<String>) -> bool {
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    !golden.contains(name) && !documented.contains(name) && !documented.contains(family) && !PENDING.contains(&name)
}

fn unknown_names(dashboard: &Value) -> Vec<(String, String)> {
    let (golden, documented) = (support::golden_metric_names(), readme_names());
    expressions(dashboard)
        .into_iter()
        .flat_map(|(place, expr)| metric_names(&expr).into_iter().map(move |name| (place.clone(), name)))
        .filter(|(_, name)| unknown(name, &golden, &documented))
        .collect()
}

#[test]
fn every_metric_the_dashboard_uses_is_exported() {
    let dashboard = dashboard();
    let all: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .collect();
    assert!(all.len() >= 30, "the scan must see the expressions: {all:?}");
    assert!(
        all.contains("hostwatch_ena_allowance_exceeded_packets_total"),
        "{all:?}"
    );
    let unknown = unknown_names(&dashboard);
    assert!(
        unknown.is_empty(),
        "the dashboard uses names no golden file shows and README's metric table lacks (where, name): {unknown:?}"
    );
}

/// The check itself: a misspelled family in a panel is caught.
#[test]
fn the_check_catches_a_misspelled_metric() {
    let mut dashboard = dashboard();
    let target = &mut dashboard["panels"][1]["targets"][0]["expr"];
    let expr = target.as_str().unwrap().to_owned();
    let family = metric_names(&expr).into_iter().next().unwrap();
    *target = Value::String(expr.replace(&family, &format!("{family}_typo")));
    let unknown = unknown_names(&dashboard);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0].1, format!("{family}_typo"));
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{instance=~"$instance",x="y z"}[$__rate_interval]))) / ignoring(le) group_left b offset 1h > bool 1e3 and on (instance, job) c"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c"].map(str::to_owned).into_iter().collect());
    assert_eq!(
        metric_names("topk(10, sum without (cpu) (rate(x_total[5m:1m])) * 8)"),
        ["x_total".to_owned()].into_iter().collect()
    );
}

/// Pending names that have landed must leave the allowlist, and each must
/// still be used by the dashboard.
#[test]
fn pending_names_have_not_landed() {
    let (golden, documented) = (support::golden_metric_names(), readme_names());
    let landed: Vec<&&str> = PENDING
        .iter()
        .filter(|name| golden.contains(**name) || documented.contains(**name))
        .collect();
    assert!(
        landed.is_empty(),
        "now in tests/golden/ or README's metric table, remove from PENDING in tests/dashboard.rs: {landed:?}"
    );
    let used: BTreeSet<String> = expressions(&dashboard())
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .collect();
    let unused: Vec<&&str> = PENDING.iter().filter(|name| !used.contains(**name)).collect();
    assert!(
        unused.is_empty(),
        "PENDING names the dashboard does not use: {unused:?}"
    );
}

/// Every expression is valid PromQL: promtool checks them as recording rules,
/// with Grafana's variables replaced by values.
#[test]
fn promtool_parses_every_expression() {
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in expressions(&dashboard).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$instance", ".*")
            .replace("$interface", ".*");
        assert!(!expr.contains('$'), "an unknown Grafana variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:expression_{index}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard");
    let file = dir.write("dashboard.rules.yml", &rules);
    let output = Command::new(require_program("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool rejects a dashboard expression:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Queries go through the `${datasource}` variable and select on `$instance`;
/// the variables exist; the rows are there; panel ids are unique.
#[test]
fn panels_use_the_variables_and_the_rows_are_there() {
    let dashboard = dashboard();
    let variables: Vec<(&str, &str)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert!(variables.contains(&("datasource", "datasource")), "{variables:?}");
    assert!(variables.contains(&("instance", "query")), "{variables:?}");
    let datasource = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap();
    assert_eq!(datasource["query"], "prometheus");

    let selector = Regex::new(r"\b((?:hostwatch|process)_[a-z0-9_]+)(\{[^}]*\})?").unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id in {title:?}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title:?}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title:?} has no targets"));
        assert!(!targets.is_empty(), "{title:?} has no targets");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title:?}");
            let expr = target["expr"].as_str().unwrap();
            for m in selector.captures_iter(expr) {
                let matchers = m.get(2).map_or("", |g| g.as_str());
                assert!(
                    matchers.contains(r#"instance=~"$instance""#),
                    "{title:?}: {} without instance=~\"$instance\" in {expr}",
                    &m[1]
                );
            }
        }
    }

    let rows: Vec<&str> = panels(&dashboard)
        .into_iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for row in ROWS {
        assert!(
            rows.iter().any(|title| title.contains(row)),
            "no row about {row}: {rows:?}"
        );
    }
}
