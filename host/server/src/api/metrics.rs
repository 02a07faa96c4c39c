//! Prometheus metrics at `/metrics` (scope `admin/metrics`): request counts and latency
//! histograms per interaction (route template and method) and status class, and the audit
//! chain length. Labels carry route templates only, never ids or query values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::SharedState;
use crate::auth::Principal;
use crate::fhir::outcome::FhirError;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, &'static str), Series>>,
}

#[derive(Default)]
struct Series {
    /// Cumulative counts per bucket, then +Inf.
    buckets: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let mut requests = self.requests.lock().expect("metrics lock");
        let series = requests.entry((route.to_owned(), method.to_owned(), class)).or_default();
        if series.buckets.is_empty() {
            series.buckets = vec![0; BUCKETS.len() + 1];
        }
        for (index, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                series.buckets[index] += 1;
            }
        }
        series.buckets[BUCKETS.len()] += 1;
        series.count += 1;
        series.sum_seconds += seconds;
    }

    fn render(&self, out: &mut String) {
        let requests = self.requests.lock().expect("metrics lock");
        out.push_str("# HELP hearth_http_request_duration_seconds Time to answer a request, by route template, method and status class.\n");
        out.push_str("# TYPE hearth_http_request_duration_seconds histogram\n");
        for ((route, method, class), series) in requests.iter() {
            let labels = format!("route=\"{}\",method=\"{method}\",status=\"{class}\"", escape(route));
            for (index, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "hearth_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    series.buckets[index]
                );
            }
            let _ = writeln!(
                out,
                "hearth_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.buckets[BUCKETS.len()]
            );
            let _ = writeln!(out, "hearth_http_request_duration_seconds_sum{{{labels}}} {}", series.sum_seconds);
            let _ = writeln!(out, "hearth_http_request_duration_seconds_count{{{labels}}} {}", series.count);
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `GET /metrics`.
pub async fn metrics(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, FhirError> {
    principal.require_admin("metrics")?;
    let mut out = String::new();
    state.metrics.render(&mut out);
    let (chain_length, _) = state.store.audit_head().await?;
    out.push_str(
        "# HELP hearth_audit_chain_length Entries in the audit hash chain.\n# TYPE hearth_audit_chain_length gauge\n",
    );
    let _ = writeln!(out, "hearth_audit_chain_length {chain_length}");
    let depth = state.store.outbox_depth().await?;
    out.push_str(
        "# HELP hearth_outbox_events Integration events waiting for delivery (pending) or given up on (dead).\n\
         # TYPE hearth_outbox_events gauge\n",
    );
    for wanted in ["pending", "dead"] {
        let count = depth.iter().find(|(s, _)| s == wanted).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "hearth_outbox_events{{state=\"{wanted}\"}} {count}");
    }
    render_plugins(&state, &mut out);
    let mut response = out.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    Ok(response)
}

/// Per-plugin call counters on this host, and shadow-mode disagreement counts.
fn render_plugins(state: &SharedState, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let plugins = state.plugins.registry.all();
    type Reading = fn(&crate::plugins::registry::CallStats) -> u64;
    let counters: [(&str, &str, Reading); 5] = [
        ("hearth_plugin_calls_total", "Plugin calls.", |s| s.calls.load(Relaxed)),
        ("hearth_plugin_failures_total", "Plugin calls that trapped, timed out or answered malformed output.", |s| {
            s.failures.load(Relaxed)
        }),
        ("hearth_plugin_timeouts_total", "Plugin calls stopped at their deadline.", |s| s.timeouts.load(Relaxed)),
        ("hearth_plugin_denials_total", "Resources a policy plugin denied.", |s| s.denials.load(Relaxed)),
        ("hearth_plugin_call_seconds_total", "Time spent in plugin calls.", |s| s.total_micros.load(Relaxed)),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for plugin in &plugins {
            let raw = value(&plugin.stats);
            if name == "hearth_plugin_call_seconds_total" {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", escape(&plugin.name), raw as f64 / 1e6);
            } else {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {raw}", escape(&plugin.name));
            }
        }
    }
    out.push_str("# HELP hearth_policy_shadow_decisions_total Shadow-mode evaluations, and how many differed from what was enforced.\n");
    out.push_str("# TYPE hearth_policy_shadow_decisions_total counter\n");
    for (plugin, evaluated, differed, failed) in state.plugins.policies.shadow_counts() {
        let plugin = escape(&plugin);
        let _ = writeln!(
            out,
            "hearth_policy_shadow_decisions_total{{plugin=\"{plugin}\",result=\"evaluated\"}} {evaluated}"
        );
        let _ =
            writeln!(out, "hearth_policy_shadow_decisions_total{{plugin=\"{plugin}\",result=\"differed\"}} {differed}");
        let _ = writeln!(out, "hearth_policy_shadow_decisions_total{{plugin=\"{plugin}\",result=\"failed\"}} {failed}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe("/{type}/{id}", "GET", 200, 0.003);
        metrics.observe("/{type}/{id}", "GET", 200, 0.3);
        metrics.observe("/{type}/{id}", "GET", 404, 0.001);
        let mut out = String::new();
        metrics.render(&mut out);
        let ok = "route=\"/{type}/{id}\",method=\"GET\",status=\"2xx\"";
        assert!(out.contains(&format!("hearth_http_request_duration_seconds_bucket{{{ok},le=\"0.005\"}} 1")), "{out}");
        assert!(out.contains(&format!("hearth_http_request_duration_seconds_bucket{{{ok},le=\"0.5\"}} 2")), "{out}");
        assert!(out.contains(&format!("hearth_http_request_duration_seconds_count{{{ok}}} 2")), "{out}");
        assert!(out.contains("status=\"4xx\"} 1"), "{out}");
    }
}
