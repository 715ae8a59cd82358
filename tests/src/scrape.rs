//! Reading a service's `GET /metrics` the way Prometheus would: fetched over HTTP and parsed with a real
//! parser of the text format (`openmetrics-parser`), so a malformed exposition fails the test.

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue, Sample};

/// One scrape of a `/metrics` endpoint.
#[derive(Debug)]
pub struct Scrape(MetricsExposition<PrometheusType, PrometheusValue>);

impl Scrape {
    /// Fetches and parses `url`.
    ///
    /// # Errors
    /// When the request fails, the answer is not 200 in the Prometheus text format, or does not parse.
    pub async fn fetch(url: &str) -> anyhow::Result<Self> {
        let response = reqwest::get(url).await?.error_for_status()?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{url} answered {content_type:?}, not the Prometheus text format"
        );
        let text = response.text().await?;
        Self::parse(&text)
    }

    /// Parses an exposition.
    ///
    /// # Errors
    /// When it does not parse.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // No metric recorded yet: a valid, empty exposition the parser's grammar does not accept.
        if text.trim().is_empty() {
            return Ok(Self(MetricsExposition::new()));
        }
        parse_prometheus(text)
            .map(Self)
            .map_err(|e| anyhow::anyhow!("the exposition does not parse: {e:?}\n{text}"))
    }

    /// The samples of family `name` whose labels include every `(label, value)` of `labels`.
    fn matching<'a>(
        &'a self,
        name: &str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample<PrometheusValue>> + 'a {
        self.0
            .families
            .get(name)
            .into_iter()
            .flat_map(|family| family.iter_samples())
            .filter(move |sample| {
                sample.get_labelset().is_ok_and(|set| {
                    labels
                        .iter()
                        .all(|(label, value)| set.get_label_value(label) == Some(*value))
                })
            })
    }

    /// The sum of the counters (or gauges) of family `name` matching `labels`; 0 when there is none.
    #[must_use]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|sample| match &sample.value {
                PrometheusValue::Counter(counter) => counter.value.as_f64(),
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                _ => 0.0,
            })
            .sum()
    }

    /// How many observations the histograms of family `name` matching `labels` hold; 0 when there is
    /// none.
    #[must_use]
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|sample| match &sample.value {
                PrometheusValue::Histogram(histogram) => histogram
                    .buckets
                    .iter()
                    .map(|bucket| bucket.count.as_f64())
                    .fold(0.0, f64::max),
                _ => 0.0,
            })
            .sum()
    }

    /// Every distinct value of `label` on the samples of family `name`.
    #[must_use]
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .matching(name, &[])
            .filter_map(|sample| {
                sample
                    .get_labelset()
                    .ok()?
                    .get_label_value(label)
                    .map(str::to_owned)
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_holding_braces_and_histograms_are_read() {
        let scrape = Scrape::parse(
            "# TYPE requests_total counter\n\
             requests_total{route=\"/tasks/{id}\",status=\"200\"} 3\n\
             requests_total{route=\"/tasks\",status=\"202\"} 1\n\
             # TYPE took_seconds histogram\n\
             took_seconds_bucket{le=\"0.1\"} 1\n\
             took_seconds_bucket{le=\"+Inf\"} 2\n\
             took_seconds_sum 0.3\n\
             took_seconds_count 2\n",
        )
        .unwrap();
        assert_eq!(
            scrape.value("requests_total", &[("route", "/tasks/{id}")]),
            3.0
        );
        assert_eq!(scrape.value("requests_total", &[]), 4.0);
        assert_eq!(scrape.observations("took_seconds", &[]), 2.0);
        assert_eq!(
            scrape.label_values("requests_total", "route"),
            ["/tasks", "/tasks/{id}"]
        );
    }
}
