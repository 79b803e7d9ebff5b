//! The Prometheus rules of `ops/prometheus/commerce-rules.yaml` (docs/observability.md): read with
//! `.venv/bin/python` and PyYAML (installed by scripts/test), checked for the shape Prometheus and
//! the doc promise — every group has rules, every rule records or alerts with an `expr`, every
//! alert has `for`, a severity, a summary, a description and a runbook section that exists in the
//! doc — and every metric their expressions select is checked against the `/metrics` of a running
//! `commerce serve` (traces exported to the tests' collector, so `trace_spans_total` is there, after
//! a `GetBalance` and a `PlaceOrder` that is refused as invalid: nothing is ordered): its name
//! (a counter's samples end in `_total`, a histogram's in `_bucket`/`_sum`/`_count`), its label
//! names, and the label values it matches (a method or bucket boundary the server shows, a code
//! among the Connect codes, a span outcome among those the platform counts).
//!
//! Outside this test, `promtool check rules` and `promtool test rules
//! ops/prometheus/commerce-rules.test.yaml` check the PromQL itself and that the alerts fire.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const PLACE_ORDER: &str = "commerce.checkout.v1.OrderService/PlaceOrder";
const GET_BALANCE: &str = "commerce.loyalty.v1.MemberService/GetBalance";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The rules file as JSON, parsed by PyYAML.
fn rules() -> Value {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv missing: run scripts/test (it installs requirements-test.txt)"
    );
    let path = repo().join("ops/prometheus/commerce-rules.yaml");
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&path)
        .output()
        .expect("run .venv/bin/python");
    assert!(
        output.status.success(),
        "PyYAML could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from PyYAML")
}

/// One rule: what it records or alerts on, and its expression.
struct Rule {
    name: String,
    alert: bool,
    expr: String,
}

fn is_duration(text: &str) -> bool {
    let units = text.trim_start_matches(|c: char| c.is_ascii_digit());
    units.len() < text.len() && ["ms", "s", "m", "h", "d", "w", "y"].contains(&units)
}

fn is_metric_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// GitHub's anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Checks the file's shape; returns its rules.
fn checked_rules(file: &Value) -> Vec<Rule> {
    let doc = std::fs::read_to_string(repo().join("docs/observability.md"))
        .expect("docs/observability.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| slug(line.trim_start_matches('#')))
        .collect();

    let top = file.as_object().expect("the file is a mapping");
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        ["groups"],
        "the file holds `groups:` only"
    );
    let groups = top["groups"].as_array().expect("groups is a list");
    assert!(!groups.is_empty(), "no groups");
    let mut group_names = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut rules = Vec::new();
    for group in groups {
        let group = group.as_object().expect("a group is a mapping");
        for key in group.keys() {
            assert!(
                ["name", "interval", "rules", "limit", "query_offset"].contains(&key.as_str()),
                "unknown group key {key}"
            );
        }
        let name = group["name"].as_str().expect("a group has a name");
        assert!(group_names.insert(name.to_owned()), "group {name} twice");
        if let Some(interval) = group.get("interval") {
            assert!(
                interval.as_str().is_some_and(is_duration),
                "group {name}: interval {interval}"
            );
        }
        let group_rules = group["rules"].as_array().expect("rules is a list");
        assert!(!group_rules.is_empty(), "group {name} has no rules");
        for rule in group_rules {
            let rule = rule.as_object().expect("a rule is a mapping");
            let expr = rule
                .get("expr")
                .and_then(Value::as_str)
                .filter(|expr| !expr.trim().is_empty())
                .unwrap_or_else(|| panic!("a rule without expr in group {name}: {rule:?}"))
                .to_owned();
            match (rule.get("record"), rule.get("alert")) {
                (Some(record), None) => {
                    let record = record.as_str().expect("record is a string");
                    for key in rule.keys() {
                        assert!(
                            ["record", "expr", "labels"].contains(&key.as_str()),
                            "recording rule {record}: unexpected key {key}"
                        );
                    }
                    // level:metric:operations, the Prometheus naming convention.
                    assert!(
                        is_metric_name(record) && record.split(':').count() == 3,
                        "recording rule name {record} is not level:metric:operations"
                    );
                    assert!(names.insert(record.to_owned()), "{record} defined twice");
                    rules.push(Rule {
                        name: record.to_owned(),
                        alert: false,
                        expr,
                    });
                }
                (None, Some(alert)) => {
                    let alert = alert.as_str().expect("alert is a string");
                    for key in rule.keys() {
                        assert!(
                            [
                                "alert",
                                "expr",
                                "for",
                                "keep_firing_for",
                                "labels",
                                "annotations"
                            ]
                            .contains(&key.as_str()),
                            "alert {alert}: unexpected key {key}"
                        );
                    }
                    assert!(
                        alert.starts_with(|c: char| c.is_ascii_uppercase())
                            && alert.chars().all(|c| c.is_ascii_alphanumeric()),
                        "alert name {alert} is not CamelCase"
                    );
                    assert!(names.insert(alert.to_owned()), "{alert} defined twice");
                    assert!(
                        rule.get("for")
                            .and_then(Value::as_str)
                            .is_some_and(is_duration),
                        "alert {alert}: `for` must be a duration"
                    );
                    let labels = rule
                        .get("labels")
                        .and_then(Value::as_object)
                        .unwrap_or_else(|| panic!("alert {alert} has no labels"));
                    assert!(
                        ["page", "ticket"].contains(&labels["severity"].as_str().unwrap_or("")),
                        "alert {alert}: severity must be page or ticket"
                    );
                    let annotations = rule
                        .get("annotations")
                        .and_then(Value::as_object)
                        .unwrap_or_else(|| panic!("alert {alert} has no annotations"));
                    for key in ["summary", "description", "runbook"] {
                        assert!(
                            annotations
                                .get(key)
                                .and_then(Value::as_str)
                                .is_some_and(|text| !text.trim().is_empty()),
                            "alert {alert}: annotation {key} missing"
                        );
                    }
                    let runbook = annotations["runbook"].as_str().unwrap();
                    let anchor = runbook
                        .strip_prefix("docs/observability.md#")
                        .unwrap_or_else(|| panic!("alert {alert}: runbook {runbook} is not a section of docs/observability.md"));
                    assert!(
                        anchors.contains(anchor),
                        "alert {alert}: docs/observability.md has no section #{anchor}"
                    );
                    assert!(
                        doc.contains(alert),
                        "alert {alert} is not described in docs/observability.md"
                    );
                    rules.push(Rule {
                        name: alert.to_owned(),
                        alert: true,
                        expr,
                    });
                }
                _ => panic!("a rule must have exactly one of record and alert: {rule:?}"),
            }
        }
    }
    assert!(rules.iter().any(|rule| rule.alert), "no alerts");
    rules
}

/// A vector selector of an expression: the metric and its label matchers.
#[derive(Debug)]
struct Selector {
    metric: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "label_join",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];
/// Words that take a parenthesised label list.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The vector selectors of a PromQL expression (a small tokenizer: enough for rules written in
/// the usual style; anything it does not know fails the test rather than going unchecked).
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut at = 0;
    let mut found = Vec::new();
    let skip_space = |at: &mut usize| {
        while *at < chars.len() && chars[*at].is_whitespace() {
            *at += 1;
        }
    };
    let string = |at: &mut usize| -> String {
        let quote = chars[*at];
        let mut text = String::new();
        *at += 1;
        while *at < chars.len() && chars[*at] != quote {
            if chars[*at] == '\\' && quote != '`' {
                *at += 1;
            }
            text.push(chars[*at]);
            *at += 1;
        }
        assert!(*at < chars.len(), "unterminated string in {expr}");
        *at += 1;
        text
    };
    while at < chars.len() {
        let c = chars[at];
        if c.is_whitespace() || "()+-*/%^,=!<>@".contains(c) {
            at += 1;
        } else if c == '#' {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            string(&mut at);
        } else if c == '[' {
            let end = chars[at..]
                .iter()
                .position(|c| *c == ']')
                .expect("] in range");
            at += end + 1;
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`14.4`, `1e-3`, `5m`).
            at += 1;
            while at < chars.len()
                && (chars[at].is_ascii_alphanumeric()
                    || chars[at] == '.'
                    || (matches!(chars[at], '+' | '-') && matches!(chars[at - 1], 'e' | 'E')))
            {
                at += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = at;
            while at < chars.len()
                && (chars[at].is_ascii_alphanumeric() || chars[at] == '_' || chars[at] == ':')
            {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let mut next = at;
            skip_space(&mut next);
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    let end = chars[next..]
                        .iter()
                        .position(|c| *c == ')')
                        .expect(") of label list");
                    at = next + end + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (…) (…)` and `sum(…)` alike; the operands are read on.
            } else if called {
                assert!(
                    FUNCTIONS.contains(&word.as_str()),
                    "unknown PromQL function {word} in {expr}"
                );
            } else {
                let mut matchers = Vec::new();
                if chars.get(next) == Some(&'{') {
                    at = next + 1;
                    loop {
                        skip_space(&mut at);
                        match chars.get(at) {
                            Some('}') => {
                                at += 1;
                                break;
                            }
                            Some(',') => at += 1,
                            Some(_) => {
                                let start = at;
                                while chars[at].is_ascii_alphanumeric() || chars[at] == '_' {
                                    at += 1;
                                }
                                let label: String = chars[start..at].iter().collect();
                                skip_space(&mut at);
                                let op: String = if matches!(chars[at], '=' | '!')
                                    && matches!(chars[at + 1], '=' | '~')
                                {
                                    at += 2;
                                    chars[at - 2..at].iter().collect()
                                } else {
                                    assert_eq!(chars[at], '=', "matcher operator in {expr}");
                                    at += 1;
                                    "=".into()
                                };
                                skip_space(&mut at);
                                assert!(
                                    matches!(chars[at], '"' | '\'' | '`'),
                                    "matcher value in {expr}"
                                );
                                let value = string(&mut at);
                                matchers.push((label, op, value));
                            }
                            None => panic!("unterminated {{ in {expr}"),
                        }
                    }
                }
                found.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else if c == '{' {
            panic!("a selector without a metric name in {expr}: name the metric");
        } else {
            panic!("unexpected {c:?} in {expr}");
        }
    }
    found
}

/// A `/metrics` exposition: families by type, and for each sample name its labels' values.
#[derive(Default, Debug)]
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut exposition = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            exposition.families.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // Drop an exemplar (`… # {trace_id="…"} 0.01`).
        let line = line.split(" # ").next().unwrap();
        let name_end = line.find(['{', ' ']).expect("sample name");
        let labels = exposition
            .samples
            .entry(line[..name_end].to_owned())
            .or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').expect("}")];
            let mut rest = body;
            while let Some((label, after)) = rest.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = after.len();
                while let Some((index, c)) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next().map(|(_, c)| c).unwrap_or('\\')),
                        '"' => {
                            end = index + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels
                    .entry(label.trim_start_matches(',').trim().to_owned())
                    .or_default()
                    .insert(value);
                rest = &after[end..];
            }
        }
    }
    exposition
}

/// Which family a sample name belongs to, by the suffixes its type gives its samples.
fn family_of<'a>(exposition: &'a Exposition, sample: &str) -> Result<(&'a str, &'a str), String> {
    for (family, kind) in &exposition.families {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &[""],
        };
        if suffixes
            .iter()
            .any(|suffix| sample.strip_suffix(suffix) == Some(family.as_str()))
        {
            return Ok((family, kind));
        }
    }
    Err(match exposition.families.get(sample) {
        Some(kind) => {
            format!("{sample} is a {kind} family: select its samples by their suffixed name")
        }
        None => format!("no metric family {sample} in the exposition"),
    })
}

/// A regex matcher value that is a plain alternation of words (`internal|unavailable`).
fn alternatives(regex: &str) -> Vec<&str> {
    assert!(
        regex
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|' || c == '.'),
        "only plain alternations are checked, not the regex {regex:?}: extend the test"
    );
    regex.split('|').collect()
}

#[test]
fn the_rules_file_has_the_shape_prometheus_and_the_doc_promise() {
    let file = rules();
    let rules = checked_rules(&file);
    let records: BTreeSet<&str> = rules
        .iter()
        .filter(|rule| !rule.alert)
        .map(|rule| rule.name.as_str())
        .collect();
    // Every alert's expression reads recording rules or metrics, and every recording rule an
    // alert reads is defined here.
    for rule in rules.iter().filter(|rule| rule.alert) {
        let used = selectors(&rule.expr);
        assert!(!used.is_empty(), "alert {} selects nothing", rule.name);
        for selector in used {
            if selector.metric.contains(':') {
                assert!(
                    records.contains(selector.metric.as_str()),
                    "alert {} reads {}, which no rule records",
                    rule.name,
                    selector.metric
                );
            }
        }
    }
    // The two SLOs of the doc, each with a page and a ticket.
    for slo in ["placeorder-availability", "placeorder-latency"] {
        let severities: BTreeSet<String> = file["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().unwrap())
            .filter(|rule| rule["labels"]["slo"] == slo)
            .map(|rule| rule["labels"]["severity"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            severities,
            BTreeSet::from(["page".to_owned(), "ticket".to_owned()]),
            "SLO {slo}: a fast-burn page and a slow-burn ticket"
        );
    }
}

fn metrics(admin: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(admin).expect("admin port");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_select_is_exposed_by_the_binary() {
    let rules = checked_rules(&rules());
    let records: BTreeSet<&str> = rules
        .iter()
        .filter(|rule| !rule.alert)
        .map(|rule| rule.name.as_str())
        .collect();

    let endpoint = common::otlp::Received::default().start().await;
    let admin = format!("127.0.0.1:{}", common::free_port());
    let server = common::start_with(
        tempfile::tempdir().unwrap(),
        &["--admin-listen", &admin],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let token = common::token_for("slo-rules");
    // A read of a member that does not exist (not_found) and a PlaceOrder refused before it
    // does anything (invalid_argument): both methods get their series.
    let (status, _) = common::connect_json(
        &server.addr,
        &format!("/{GET_BALANCE}"),
        r#"{"memberId":"nobody"}"#,
        Some(&token),
        &[],
    );
    assert_eq!(status, 404);
    let (status, refused) = common::connect_json(
        &server.addr,
        &format!("/{PLACE_ORDER}"),
        "{}",
        Some(&token),
        &[("Idempotency-Key", "slo-rules")],
    );
    assert_eq!(status, 400, "{refused}");

    // The batch exporter sends within 500 ms; wait for its first export to be counted.
    let started = Instant::now();
    let exposition = loop {
        let text = metrics(&admin);
        if text.contains("trace_spans_total{outcome=\"exported\"}")
            || started.elapsed() > Duration::from_secs(8)
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exposition = parse_exposition(&exposition);
    assert!(
        exposition.families.contains_key("rpc_calls"),
        "no rpc_calls in {exposition:?}"
    );

    // Values a label may take that the exposition need not show right now.
    let codes: BTreeSet<&str> = (0..=16)
        .map(|n| connect::Code::from_grpc(n).name())
        .collect();
    let outcomes = BTreeSet::from(["ended", "exported", "failed"]);
    // The codes that mark a SERVER span failed (interceptors/observe.rs): the SLO's server errors.
    let server_errors: BTreeSet<&str> = [2, 4, 12, 13, 14, 15]
        .map(|n| connect::Code::from_grpc(n).name())
        .into();
    for value in exposition
        .samples
        .get("rpc_calls_total")
        .and_then(|labels| labels.get("code"))
        .expect("rpc_calls_total has codes")
    {
        assert!(
            codes.contains(value.as_str()),
            "rpc_calls_total code {value} is not a Connect code"
        );
    }

    let mut checked = BTreeSet::new();
    for rule in &rules {
        for selector in selectors(&rule.expr) {
            if records.contains(selector.metric.as_str()) {
                continue;
            }
            let context = format!("{} (in {})", selector.metric, rule.name);
            let (family, kind) = family_of(&exposition, &selector.metric)
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            let labels = exposition.samples.get(&selector.metric).unwrap_or_else(|| {
                panic!(
                    "{context}: the {kind} {family} has no {} samples",
                    selector.metric
                )
            });
            for (label, op, value) in &selector.matchers {
                let shown = labels.get(label).unwrap_or_else(|| {
                    panic!("{context}: no label {label} (has {:?})", labels.keys())
                });
                let values: Vec<&str> = match op.as_str() {
                    "=" | "!=" => vec![value.as_str()],
                    _ => alternatives(value),
                };
                if label == "code" && op == "=~" {
                    assert_eq!(
                        values.iter().copied().collect::<BTreeSet<_>>(),
                        server_errors,
                        "{context}: the server errors are the codes that fail a SERVER span"
                    );
                }
                for value in values {
                    let known = match label.as_str() {
                        "code" => codes.contains(value),
                        "outcome" => outcomes.contains(value),
                        _ => shown.contains(value),
                    };
                    assert!(
                        known,
                        "{context}: {label}{op}{value:?} matches nothing the server exposes (it shows {shown:?})"
                    );
                }
            }
            checked.insert(selector.metric);
        }
    }
    eprintln!("checked against the exposition: {checked:?}");
    assert!(checked.contains("rpc_calls_total") && checked.contains("rpc_duration_seconds_bucket"));
}
