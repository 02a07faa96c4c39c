//! HTML for the console: escaping, the page frame, and small building blocks (tables, forms,
//! charts as inline SVG). Pages are rendered on the server; the console needs no JavaScript.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes one query or path component.
pub fn url_part(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The pages in the navigation bar: (path, label).
pub const PAGES: &[(&str, &str)] = &[
    ("/console/plugins", "Plugins"),
    ("/console/policies", "Policies"),
    ("/console/shadow", "Shadow report"),
    ("/console/audit", "Audit"),
    ("/console/break-glass", "Break-glass review"),
    ("/console/keys", "Keys"),
    ("/console/evidence", "Evidence"),
];

/// A notice shown once at the top of the next page (after an action).
#[derive(Debug, Clone)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

/// Who is signed in, for the page frame.
pub struct Frame<'a> {
    pub subject: &'a str,
    pub csrf: &'a str,
    pub flash: Option<Flash>,
}

/// A whole page: navigation (when signed in), the notice, then `body`.
pub fn page(title: &str, active: &str, frame: Option<Frame<'_>>, body: &str) -> Response {
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Hearth console</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a><header><span class=\"brand\">Hearth console</span>",
        esc(title)
    );
    if let Some(frame) = &frame {
        html.push_str("<nav aria-label=\"Console pages\"><ul>");
        for (path, label) in PAGES {
            let current = if *path == active { " aria-current=\"page\"" } else { "" };
            let _ = write!(html, "<li><a href=\"{path}\"{current}>{label}</a></li>");
        }
        let _ = write!(
            html,
            "</ul></nav><form class=\"signout\" method=\"post\" action=\"/console/logout\">{}\
             <span>Signed in as <strong>{}</strong></span> <button type=\"submit\">Sign out</button></form>",
            csrf_field(frame.csrf),
            esc(frame.subject)
        );
    }
    let _ = write!(html, "</header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>", esc(title));
    if let Some(flash) = frame.as_ref().and_then(|f| f.flash.as_ref()) {
        let (class, role) = if flash.error { ("flash error", "alert") } else { ("flash", "status") };
        let _ = write!(html, "<p class=\"{class}\" role=\"{role}\">{}</p>", esc(&flash.text));
    }
    html.push_str(body);
    html.push_str("</main></body></html>\n");
    html_response(StatusCode::OK, html)
}

pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A one-button form posting to `action`.
pub fn button_form(action: &str, csrf: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\">{}<button type=\"submit\" class=\"{class}\">{}</button></form>",
        esc(action),
        csrf_field(csrf),
        esc(label)
    )
}

/// A confirmation: says what will change, then Confirm (posting `action`) or Cancel.
pub fn confirmation(what_changes: &[String], action: &str, csrf: &str, confirm: &str, cancel: &str) -> String {
    let mut html = String::from(
        "<section class=\"confirm\" aria-labelledby=\"confirm-h\"><h2 id=\"confirm-h\">What will change</h2><ul>",
    );
    for line in what_changes {
        let _ = write!(html, "<li>{}</li>", esc(line));
    }
    let _ = write!(
        html,
        "</ul><p>This action is recorded in the audit log under your name.</p><div class=\"actions\">{}\
         <a class=\"button secondary\" href=\"{}\">Cancel</a></div></section>",
        button_form(action, csrf, confirm, "primary"),
        esc(cancel)
    );
    html
}

/// A table; cells are already HTML.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut html = format!("<div class=\"scroll\"><table><caption>{}</caption><thead><tr>", esc(caption));
    for header in headers {
        let _ = write!(html, "<th scope=\"col\">{}</th>", esc(header));
    }
    html.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(html, "<tr><td colspan=\"{}\">None.</td></tr>", headers.len());
    }
    for row in rows {
        html.push_str("<tr>");
        // On a narrow screen each row becomes a card, its cells labelled by their headers.
        for (cell, header) in row.iter().zip(headers.iter().chain(std::iter::repeat(&""))) {
            let _ = write!(html, "<td data-label=\"{}\">{cell}</td>", esc(header));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

/// A bar chart of per-minute values over the last hour, as inline SVG: one bar group per
/// minute, `series` as (label, CSS class, value per minute). `minutes` are minutes since the
/// epoch; `now` is the current one.
pub fn minute_chart(label: &str, now: i64, minutes: &[i64], series: &[(&str, &str, Vec<u64>)]) -> String {
    const WIDTH: i64 = 240;
    const HEIGHT: u64 = 40;
    let peak = series.iter().flat_map(|(_, _, values)| values.iter().copied()).max().unwrap_or(0).max(1);
    let mut bars = String::new();
    let lanes = series.len().max(1) as i64;
    for (lane, (_, class, values)) in series.iter().enumerate() {
        for (minute, value) in minutes.iter().zip(values) {
            let age = now - minute;
            if !(0..60).contains(&age) || *value == 0 {
                continue;
            }
            let height = (value * HEIGHT).div_ceil(peak);
            let x = (59 - age) * 4 + lane as i64 * (4 / lanes).max(1);
            let _ = write!(
                bars,
                "<rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{height}\"></rect>",
                HEIGHT - height,
                (4 / lanes).max(1)
            );
        }
    }
    let totals: Vec<String> =
        series.iter().map(|(name, _, values)| format!("{} {name}", values.iter().sum::<u64>())).collect();
    let summary = format!("{label}, last hour: {}", totals.join(", "));
    format!(
        "<figure class=\"chart\"><svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" preserveAspectRatio=\"none\">{bars}</svg>\
         <figcaption>{}</figcaption></figure>",
        esc(&summary),
        esc(&summary)
    )
}

/// Microseconds for people.
pub fn micros(value: Option<u64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1_000.0),
        Some(us) => format!("{:.2} s", us as f64 / 1_000_000.0),
    }
}

/// Bytes for people.
pub fn bytes(value: u64) -> String {
    match value {
        v if v < 1 << 10 => format!("{v} B"),
        v if v < 1 << 20 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{:.1} MiB", v as f64 / (1 << 20) as f64),
    }
}

/// The console's one stylesheet: readable from a 390 px phone to a desktop, visible focus,
/// no external fonts or scripts.
pub const CSS: &str = r#"
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #0b5cad; --bad: #b42318; --good: #1a7f37; --bg: #fff; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5rem; }
.skip:focus { left: .5rem; z-index: 10; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1.5rem; padding: .75rem 1rem; border-bottom: 1px solid var(--line); background: #f6f8fa; }
.brand { font-weight: 700; }
nav ul { display: flex; flex-wrap: wrap; gap: .25rem .75rem; list-style: none; margin: 0; padding: 0; }
nav a { color: var(--accent); text-decoration: none; padding: .25rem .25rem; border-radius: 4px; }
nav a[aria-current="page"] { font-weight: 700; text-decoration: underline; }
.signout { margin-left: auto; display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
main { padding: 1rem; max-width: 1400px; }
main:focus { outline: none; }
h1 { font-size: 1.5rem; margin: .25rem 0 1rem; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible, textarea:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; font-size: .95rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: .4rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; white-space: nowrap; }
td form { display: inline-block; margin: 0 .25rem .25rem 0; }
td form.review { min-width: 14rem; }
button, .button { font: inherit; padding: .35rem .8rem; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; text-decoration: none; display: inline-block; }
button.secondary, .button.secondary { background: #fff; color: var(--accent); }
button.danger { background: var(--bad); border-color: var(--bad); }
label { display: block; font-weight: 600; margin: .5rem 0 .2rem; }
input[type=text], input[type=password], input[type=datetime-local], select, textarea { font: inherit; width: 100%; max-width: 40rem; padding: .35rem; border: 1px solid #8c959f; border-radius: 4px; }
textarea { min-height: 6rem; font-family: ui-monospace, monospace; font-size: .9rem; }
.filters { display: grid; grid-template-columns: repeat(auto-fill, minmax(13rem, 1fr)); gap: 0 1rem; align-items: end; }
.filters div { min-width: 0; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .75rem 0; }
.actions form { margin: 0; }
.flash { padding: .6rem .8rem; border-left: 4px solid var(--good); background: #eefbf1; }
.flash.error { border-color: var(--bad); background: #fdeceb; }
.state-ok { color: var(--good); font-weight: 700; }
.state-bad { color: var(--bad); font-weight: 700; }
.muted { color: var(--muted); }
.pass { color: #0b6b0b; font-weight: 600; }
.warn { color: #8a5300; font-weight: 600; }
.fail { color: #b00020; font-weight: 600; }
.confirm { border: 1px solid var(--line); border-radius: 8px; padding: .5rem 1rem; max-width: 48rem; }
.chart { margin: 0; }
.chart svg { display: block; border-bottom: 1px solid var(--line); background: #fbfcfd; max-width: 100%; }
.chart figcaption { font-size: .8rem; color: var(--muted); }
rect.calls, rect.evaluated { fill: #0b5cad; }
rect.failures, rect.differed { fill: #b42318; }
rect.timeouts { fill: #b7791f; }
progress { width: 100%; max-width: 30rem; height: 1.2rem; }
code { font-family: ui-monospace, monospace; font-size: .9em; overflow-wrap: anywhere; }
@media (max-width: 600px) {
  main { padding: .75rem; } .signout { margin-left: 0; }
  table, tbody, tr, td { display: block; width: 100%; }
  thead { position: absolute; left: -9999px; }
  tr { border: 1px solid var(--line); border-radius: 6px; margin-bottom: .75rem; padding: .25rem .5rem; }
  td { border: 0; padding: .2rem 0; }
  td[data-label]::before { content: attr(data-label); display: block; font-size: .8rem; font-weight: 600; color: var(--muted); }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(esc(r#"<script>"a"&'b'</script>"#), "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;");
        assert_eq!(url_part("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn charts_place_bars_by_minute_and_describe_themselves() {
        let chart = minute_chart("consent calls", 1000, &[941, 999, 1000], &[("calls", "calls", vec![7, 2, 4])]);
        // The minute 59 minutes ago falls outside the last hour's 60 columns only when older.
        assert_eq!(chart.matches("<rect").count(), 3, "{chart}");
        assert!(chart.contains("aria-label=\"consent calls, last hour: 13 calls\""), "{chart}");
        let old = minute_chart("x", 1000, &[900], &[("calls", "calls", vec![5])]);
        assert_eq!(old.matches("<rect").count(), 0);
    }
}
