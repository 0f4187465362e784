//! The Grafana dashboard (`config/grafana-dashboard.json`) and the Prometheus alert rules
//! (`config/prometheus-alerts.yml`) against the code: they must be well formed, filter by
//! instance, name only metrics `actors/src/metrics.rs` defines, and query histograms and
//! summaries the way the daemon's exporter actually renders them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus-alerts.yml");
const METRICS_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/actors/src/metrics.rs");

/// The alerts operators were promised.
const REQUIRED_ALERTS: [&str; 11] = [
    "Ms1DeadLettersGrowing",
    "Ms1DlqLarge",
    "Ms1BacklogGrowing",
    "Ms1ConsumerLagGrowing",
    "Ms1Ms4BreakerOpen",
    "Ms1Ms4Unauthorized",
    "Ms1Down",
    "Ms1ActorRestarting",
    "Ms1NotDelivering",
    "Ms1GraphThrottled",
    "Ms1GraphCredentialRefused",
];

/// What a description may point the operator to next.
const NEXT_STEPS: [&str; 3] = ["journalctl -u ms1-ingestor", "ms1-ingestor dlq", "/ready"];

const INSTANCE_FILTER: &str = "instance=~\"$instance\"";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included (a collapsed row keeps its panels inside it).
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every panel that shows data (not a row).
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    all_panels(dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    data_panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The rule block of one alert: from its `- alert: NAME` line to the next alert.
fn alert_block<'a>(rules: &'a str, name: &str) -> Option<&'a str> {
    let start = rules
        .match_indices("- alert: ")
        .map(|(i, m)| i + m.len())
        .find(|&i| rules[i..].lines().next().map(str::trim) == Some(name))?;
    let end = rules[start..]
        .find("- alert: ")
        .map_or(rules.len(), |i| start + i);
    Some(&rules[start..end])
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every identifier starting with `ms1_` in `text`, with the byte offset just past it.
fn ms1_identifiers(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("ms1_").map(|i| from + i) {
        let boundary = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident_char(c));
        let len = text[i..]
            .find(|c: char| !is_ident_char(c))
            .unwrap_or(text.len() - i);
        if boundary {
            found.push((text[i..i + len].to_string(), i + len));
        }
        from = i + len;
    }
    found
}

/// A metric name as the code defines it: without the `_bucket`/`_sum`/`_count` series suffix.
fn base_metric(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The label matchers after an identifier ending at `end`, when it is followed by `{…}`.
fn selector_after(text: &str, end: usize) -> Option<&str> {
    let rest = text[end..].strip_prefix('{')?;
    rest.find('}').map(|close| &rest[..close])
}

/// The names defined as `pub const … = "ms1_…";` in actors/src/metrics.rs.
fn defined_metrics() -> BTreeSet<String> {
    let source = read(METRICS_RS);
    let names: BTreeSet<String> = source
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pub const ") && l.ends_with("\";"))
        .filter_map(|l| l.split_once("= \"").map(|(_, v)| v.trim_end_matches("\";")))
        .filter(|v| v.starts_with("ms1_"))
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 20,
        "expected the metric constants of {METRICS_RS}, found {names:?}"
    );
    names
}

#[test]
fn dashboard_is_an_importable_grafana_dashboard_with_a_prometheus_datasource_input() {
    let d = dashboard();
    assert_eq!(d["uid"], "ms1-ingestor");
    assert_eq!(d["title"], "ms1-ingestor");
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["id"].is_null(),
        "an exported dashboard carries no database id"
    );
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input, so the import asks which Prometheus to use: {inputs:?}"
    );
    let mut ids = BTreeSet::new();
    for p in all_panels(&d) {
        let id = p["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let pos = &p["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(pos[key].is_u64(), "panel {id} has gridPos.{key}");
        }
        let right = pos["x"].as_u64().unwrap_or(0) + pos["w"].as_u64().unwrap_or(0);
        assert!(right <= 24, "panel {id} sticks out of the 24-column grid");
    }
}

#[test]
fn every_dashboard_panel_queries_the_prometheus_input() {
    let d = dashboard();
    let panels = data_panels(&d);
    assert!(panels.len() >= 15, "only {} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title} has no targets"));
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title} has an empty expr");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
            let ref_id = t["refId"].as_str().expect("refId");
            assert!(
                ref_ids.insert(ref_id),
                "panel {title} repeats refId {ref_id}"
            );
        }
    }
}

#[test]
fn dashboard_offers_an_instance_variable_from_the_received_counter() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` template variable");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${DS_PROMETHEUS}");
    let query = instance["query"]["query"]
        .as_str()
        .or_else(|| instance["query"].as_str())
        .expect("the variable's query");
    assert_eq!(query, "label_values(ms1_emails_received_total, instance)");
}

#[test]
fn every_dashboard_query_is_filtered_by_the_instance_variable() {
    let d = dashboard();
    for expr in dashboard_exprs(&d) {
        let mut selectors = 0;
        for (name, end) in ms1_identifiers(&expr) {
            let matchers = selector_after(&expr, end)
                .unwrap_or_else(|| panic!("{name} without label matchers in: {expr}"));
            assert!(
                matchers.contains(INSTANCE_FILTER),
                "{name} is not filtered by {INSTANCE_FILTER} in: {expr}"
            );
            selectors += 1;
        }
        if let Some(i) = expr.find("up{") {
            let matchers = selector_after(&expr, i + 2).unwrap_or_default();
            assert!(matchers.contains(INSTANCE_FILTER), "up unfiltered: {expr}");
            selectors += 1;
        }
        assert!(selectors > 0, "a query on no known metric: {expr}");
    }
}

#[test]
fn dashboard_latency_quantiles_come_from_buckets_by_le() {
    let d = dashboard();
    for expr in dashboard_exprs(&d) {
        if expr.contains("_bucket{") {
            assert!(
                expr.contains("histogram_quantile(") && expr.contains(" le)"),
                "a _bucket query must be histogram_quantile over `by (…, le)`: {expr}"
            );
        }
    }
}

#[test]
fn alert_rules_define_every_required_alert_with_expr_for_severity_and_summary() {
    let rules = read(ALERTS);
    assert!(rules.contains("- name: ms1-ingestor"), "group ms1-ingestor");
    for name in REQUIRED_ALERTS {
        let block = alert_block(&rules, name).unwrap_or_else(|| panic!("alert {name} missing"));
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no `{key}`");
        }
    }
}

#[test]
fn alert_severities_are_known_and_descriptions_say_what_to_check_next() {
    let rules = read(ALERTS);
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= REQUIRED_ALERTS.len(), "alerts: {names:?}");
    for name in &names {
        let block = alert_block(&rules, name).expect("block");
        let severity = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("alert {name} has no severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "alert {name}: severity {severity}"
        );
        if REQUIRED_ALERTS.contains(name) {
            assert!(
                NEXT_STEPS.iter().any(|s| block.contains(s)),
                "alert {name}'s description names none of {NEXT_STEPS:?}"
            );
        }
    }
    for step in NEXT_STEPS {
        assert!(rules.contains(step), "no alert points to {step}");
    }
}

#[test]
fn alert_aggregations_keep_the_instance_so_each_daemon_alerts_on_its_own() {
    let rules = read(ALERTS);
    let mut aggregations = 0;
    for (i, _) in rules.match_indices(" by (") {
        let labels = &rules[i + 5..];
        let labels = &labels[..labels.find(')').expect("closing parenthesis")];
        assert!(
            labels.split(',').any(|l| l.trim() == "instance"),
            "an aggregation `by ({labels})` drops the instance"
        );
        aggregations += 1;
    }
    assert!(aggregations > 0);
    assert!(
        !rules.contains("without"),
        "aggregate `by (job, instance, …)` instead"
    );
}

#[test]
fn dashboard_and_alerts_name_only_metrics_the_code_defines() {
    let defined = defined_metrics();
    for (file, text) in [(DASHBOARD, read(DASHBOARD)), (ALERTS, read(ALERTS))] {
        let used: BTreeSet<String> = ms1_identifiers(&text)
            .into_iter()
            .map(|(name, _)| base_metric(&name).to_string())
            .collect();
        assert!(!used.is_empty(), "{file} names no ms1_ metric");
        let unknown: Vec<&String> = used.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics actors/src/metrics.rs does not define: {unknown:?}"
        );
    }
}

#[test]
fn every_metric_the_code_defines_is_on_the_dashboard() {
    let text = read(DASHBOARD);
    let used: BTreeSet<String> = ms1_identifiers(&text)
        .into_iter()
        .map(|(name, _)| base_metric(&name).to_string())
        .collect();
    let missing: Vec<String> = defined_metrics().difference(&used).cloned().collect();
    assert!(missing.is_empty(), "metrics without a panel: {missing:?}");
}

/// The daemon's own exporter (same buckets and quantiles), installed once for this test binary.
fn exporter() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| ms1_ingestor::daemon::install_metrics().expect("recorder installs"))
}

#[test]
fn histogram_and_summary_queries_match_how_the_exporter_renders_each_metric() {
    // metrics-exporter-prometheus renders a histogram as `_bucket` series only when the daemon
    // configured buckets for it, and as a summary with `quantile` labels otherwise.
    let mut bucketed = BTreeSet::new();
    let mut quantiled: BTreeSet<(String, String)> = BTreeSet::new();
    let mut exprs = dashboard_exprs(&dashboard());
    exprs.extend(
        read(ALERTS)
            .lines()
            .filter(|l| l.contains("ms1_"))
            .map(str::to_string),
    );
    for expr in &exprs {
        for (name, end) in ms1_identifiers(expr) {
            if let Some(base) = name.strip_suffix("_bucket") {
                bucketed.insert(base.to_string());
            }
            let matchers = selector_after(expr, end).unwrap_or_default();
            if let Some(i) = matchers.find("quantile=~\"") {
                let values = &matchers[i + 11..];
                let values = &values[..values.find('"').expect("closing quote")];
                for q in values.split('|') {
                    quantiled.insert((name.clone(), q.to_string()));
                }
            }
        }
    }
    assert!(!bucketed.is_empty() && !quantiled.is_empty());

    let handle = exporter();
    let names: BTreeSet<&String> = bucketed
        .iter()
        .chain(quantiled.iter().map(|(n, _)| n))
        .collect();
    for name in &names {
        metrics::histogram!(name.to_string()).record(0.042);
    }
    let rendered = handle.render();
    for name in &bucketed {
        assert!(
            rendered.contains(&format!("{name}_bucket{{")),
            "{name} is queried by _bucket but the exporter renders no buckets for it \
             (add it to set_buckets_for_metric in src/daemon.rs, or query its quantiles):\n{rendered}"
        );
    }
    for (name, q) in &quantiled {
        let series = format!("{name}{{quantile=\"{q}\"}}");
        assert!(
            rendered.contains(&series),
            "{series} is queried but not rendered (a histogram with buckets has no quantiles, \
             and the daemon's quantiles are set in src/daemon.rs):\n{rendered}"
        );
    }
}
