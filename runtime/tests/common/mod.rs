//! Helpers shared by the integration tests that talk to a `ponder serve` process.

/// The Prometheus text of a server's `/metrics`.
pub fn metrics_text_of(url: &str) -> String {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .and_then(|c| c.get(format!("{url}/metrics")).send())
        .and_then(|r| r.text())
        .expect("metrics")
}

/// The sum of the samples of every series whose line starts with `name` (Prometheus text).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
