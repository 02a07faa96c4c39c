//! Results: every subject next to its baseline from the same run, as a table and as JSON.

use serde::Serialize;

use crate::load::Measurement;

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub errors: u64,
}

impl From<&Measurement> for Stats {
    fn from(m: &Measurement) -> Self {
        Stats {
            throughput_per_s: m.throughput(),
            p50_ms: m.percentile_ms(0.50),
            p95_ms: m.percentile_ms(0.95),
            p99_ms: m.percentile_ms(0.99),
            requests: m.requests,
            errors: m.errors,
        }
    }
}

/// One comparison: `subject` measured against `baseline` in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub case: String,
    pub subject: String,
    pub baseline: String,
    pub subject_stats: Stats,
    pub baseline_stats: Stats,
    /// subject throughput / baseline throughput.
    pub throughput_ratio: f64,
    pub target: String,
    /// Whether the target was met, where the target is a throughput ratio.
    pub met: Option<bool>,
}

impl Comparison {
    pub fn new(
        case: &str,
        subject: (&str, &Measurement),
        baseline: (&str, &Measurement),
        target: &str,
        min_ratio: Option<f64>,
    ) -> Self {
        let subject_stats = Stats::from(subject.1);
        let baseline_stats = Stats::from(baseline.1);
        let ratio = subject_stats.throughput_per_s / baseline_stats.throughput_per_s.max(1e-9);
        Comparison {
            case: case.to_owned(),
            subject: subject.0.to_owned(),
            baseline: baseline.0.to_owned(),
            subject_stats,
            baseline_stats,
            throughput_ratio: ratio,
            target: target.to_owned(),
            met: min_ratio.map(|min| ratio >= min),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub mode: String,
    pub concurrency: usize,
    pub seconds_per_measurement: f64,
    pub comparisons: Vec<Comparison>,
    /// In-process call latencies next to native baselines.
    pub calls: Vec<crate::plugins::CallComparison>,
    /// (what, resident set size in MiB)
    pub memory_mib: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        println!("\nHearth benchmarks, {} ({} mode), {}", self.date, self.mode, self.machine);
        println!(
            "closed loop, {} connections, {:.0} s per measurement, loopback TLS; ratio = subject / baseline throughput\n",
            self.concurrency, self.seconds_per_measurement
        );
        println!(
            "{:<34} {:>10} {:>8} {:>8} {:>8}   {:<30} {:>10} {:>8}   {:>6}  target",
            "subject", "req/s", "p50 ms", "p95 ms", "p99 ms", "baseline", "req/s", "p50 ms", "ratio"
        );
        let mut case = "";
        for c in &self.comparisons {
            if c.case != case {
                case = &c.case;
                println!("[{case}]");
            }
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8.2}   {:<30} {:>10.0} {:>8.2}   {:>6.2}  {} {}",
                c.subject,
                c.subject_stats.throughput_per_s,
                c.subject_stats.p50_ms,
                c.subject_stats.p95_ms,
                c.subject_stats.p99_ms,
                c.baseline,
                c.baseline_stats.throughput_per_s,
                c.baseline_stats.p50_ms,
                c.throughput_ratio,
                c.target,
                verdict
            );
        }
        for c in &self.calls {
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "\n{}: {} p50 {:.1} us, p99 {:.1} us vs {} p50 {:.1} us, p99 {:.1} us; p50 ratio {:.2}; target {} {} \
                 (component {} KB, compiled in {:.0} ms, once)",
                c.case,
                c.subject,
                c.subject_p50_us,
                c.subject_p99_us,
                c.baseline,
                c.baseline_p50_us,
                c.baseline_p99_us,
                c.p50_ratio,
                c.target,
                verdict,
                c.component_bytes / 1024,
                c.compile_ms
            );
        }
        for (what, mib) in &self.memory_mib {
            println!("memory: {what}: {mib:.1} MiB resident");
        }
        for note in &self.notes {
            println!("note: {note}");
        }
    }
}
