//! What a realistic PromptStudio row looks like: one struct per legacy table, with
//! generators for its field values.
//!
//! Guarantees: generation is deterministic for a given [`Rng`] state and ids; every
//! value satisfies the legacy schema's constraints (NOT NULL, numeric(12,6) precision,
//! enum labels, valid JSON, valid array literals). Keys and timestamps are chosen by
//! the caller (the seed or the workload), field contents here. Timestamps are Unix
//! epoch seconds, turned into `timestamptz` with `to_timestamp` on insert.

use crate::rng::Rng;
use crate::text::{self, json_string, pg_text_array};

/// 2024-01-01T00:00:00Z: seeded history starts here.
pub const HISTORY_START: f64 = 1_704_067_200.0;
/// Seeded history spans one year.
pub const HISTORY_SECONDS: f64 = 365.0 * 86_400.0;

/// Template bodies are 200 bytes to ~12 kB; this share is over 2 kB (TOASTed).
const LONG_TEMPLATE_SHARE: f64 = 0.45;

const MODELS: &[(&str, u64, u64)] = &[
    // (model, micro-dollars per 1k input tokens, per 1k output tokens)
    ("gpt-4o", 2_500, 10_000),
    ("gpt-4o-mini", 150, 600),
    ("claude-3-5-sonnet", 3_000, 15_000),
    ("claude-3-haiku", 250, 1_250),
    ("llama-3.1-70b-instruct", 880, 880),
    ("mistral-large", 2_000, 6_000),
    ("gemini-1.5-pro", 1_250, 5_000),
];

const TAGS: &[&str] = &[
    "support",
    "sales",
    "rag",
    "summarization",
    "classification",
    "extraction",
    "translation",
    "marketing",
    "legal",
    "internal",
    "beta",
    "prod",
    "eval",
    "日本語",
    "café",
    "🚀",
];

const VARIABLE_NAMES: &[&str] = &[
    "topic",
    "audience",
    "tone",
    "language",
    "context",
    "question",
    "customer_name",
    "product",
    "max_words",
    "format",
    "examples",
    "persona",
    "document",
    "date",
];

const VAR_TYPES: &[&str] = &["string", "number", "boolean", "json", "enum"];

pub const STATUSES: &[&str] = &["pending", "running", "succeeded", "failed", "cancelled"];

const FLOW_ERRORS: &[&str] = &[
    "timeout after 30s waiting for model response",
    "rate limited by provider (429), retries exhausted",
    "step output failed JSON schema validation",
    "context length exceeded: 131072 tokens",
    "provider returned 503 — service unavailable",
];

#[derive(Debug, Clone)]
pub struct Lab {
    pub id: i32,
    pub lab_id: String,
    pub tenant_id: Option<i32>,
    pub name: String,
    pub description: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone)]
pub struct Library {
    pub id: i32,
    pub prompt_lab_id: i32,
    pub name: String,
    pub description: Option<String>,
    /// A `text[]` literal, possibly with a NULL element.
    pub tags: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub id: i32,
    pub prompt_library_id: i32,
    pub parent_template_id: Option<i32>,
    pub name: String,
    pub content: String,
    pub version: i32,
    /// JSON text.
    pub parameters: Option<String>,
    pub is_archived: bool,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub id: i32,
    pub prompt_template_id: i32,
    pub name: String,
    pub var_type: String,
    pub default_value: Option<String>,
    pub is_required: bool,
}

#[derive(Debug, Clone)]
pub struct Collection {
    pub id: i32,
    pub prompt_template_id: i32,
    pub name: String,
    /// JSON text.
    pub variables: Option<String>,
    pub created_at: f64,
}

#[derive(Debug, Clone)]
pub struct Execution {
    pub id: i64,
    pub prompt_template_id: i32,
    pub variable_collection_id: Option<i32>,
    pub model: String,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    /// numeric(12,6) as text, always with all six decimals.
    pub cost_usd: Option<String>,
    pub latency_ms: Option<f64>,
    pub response: Option<String>,
    pub executed_at: f64,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub id: i32,
    pub prompt_lab_id: i32,
    pub name: String,
    /// JSON text.
    pub definition: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone)]
pub struct FlowStep {
    pub prompt_flow_id: i32,
    pub position: i32,
    pub prompt_template_id: i32,
}

#[derive(Debug, Clone)]
pub struct FlowExecution {
    pub id: i64,
    pub prompt_flow_id: i32,
    /// An `execution_status` label.
    pub status: String,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    /// JSON text.
    pub result: Option<String>,
    pub error: Option<String>,
}

/// The public lab slug for legacy key `id`: unique per id (a bijective scramble), not
/// guessable from it.
pub fn lab_slug(id: i64) -> String {
    format!("lab_{:016x}", crate::rng::mix64(id as u64))
}

/// Name of a template's `slot`-th variable; distinct slots give distinct names.
pub fn variable_name(slot: usize) -> String {
    let base = VARIABLE_NAMES[slot % VARIABLE_NAMES.len()];
    match slot / VARIABLE_NAMES.len() {
        0 => base.to_string(),
        n => format!("{base}_{n}"),
    }
}

/// Micro-dollars as a numeric(12,6) literal with the full six-digit scale.
pub fn usd(micros: u64) -> String {
    let micros = micros.min(999_999_999_999);
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn maybe<T>(rng: &mut Rng, p: f64, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if rng.chance(p) {
        Some(f(rng))
    } else {
        None
    }
}

impl Lab {
    pub fn generate(rng: &mut Rng, id: i32, created_at: f64, updated_at: f64) -> Self {
        Self {
            id,
            lab_id: lab_slug(i64::from(id)),
            tenant_id: maybe(rng, 0.8, |r| r.range(1, 250) as i32),
            name: format!("{} Lab", text::title(rng)),
            description: maybe(rng, 0.7, |r| text::prose_between(r, 20, 300)),
            created_at,
            updated_at,
        }
    }
}

impl Library {
    pub fn generate(
        rng: &mut Rng,
        id: i32,
        prompt_lab_id: i32,
        created_at: f64,
        updated_at: f64,
    ) -> Self {
        Self {
            id,
            prompt_lab_id,
            name: text::title(rng),
            description: maybe(rng, 0.6, |r| text::prose_between(r, 20, 400)),
            tags: maybe(rng, 0.85, tags),
            created_at,
            updated_at,
        }
    }
}

/// A `text[]` literal: usually a few tags, sometimes empty, sometimes with a NULL.
fn tags(rng: &mut Rng) -> String {
    let n = rng.range_usize(0, 4);
    let mut items: Vec<Option<&str>> = (0..n).map(|_| Some(rng.pick(TAGS))).collect();
    if rng.chance(0.1) {
        let at = rng.range_usize(0, items.len());
        items.insert(at, None);
    }
    pg_text_array(&items)
}

impl Template {
    /// `variables` are the names the body refers to as `{{name}}`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        rng: &mut Rng,
        id: i32,
        prompt_library_id: i32,
        parent_template_id: Option<i32>,
        variables: &[String],
        created_at: f64,
        updated_at: f64,
    ) -> Self {
        Self {
            id,
            prompt_library_id,
            parent_template_id,
            name: text::title(rng),
            content: template_content(rng, variables),
            version: rng.range(1, 12) as i32,
            parameters: maybe(rng, 0.9, template_parameters),
            is_archived: rng.chance(0.07),
            created_at,
            updated_at,
        }
    }
}

/// A prompt body of 200 bytes to ~12 kB, a good share (see `LONG_TEMPLATE_SHARE`)
/// over 2 kB even after compression.
pub fn template_content(rng: &mut Rng, variables: &[String]) -> String {
    let len = if rng.chance(LONG_TEMPLATE_SHARE) {
        rng.range_usize(2_000, 12_000)
    } else {
        rng.range_usize(200, 2_000)
    };
    let names: Vec<&str> = variables.iter().map(String::as_str).collect();
    let mut out = String::from("### System\nYou are a helpful assistant. ");
    out.push_str(&text::prose(rng, len.saturating_sub(out.len()), &names));
    out
}

/// Model parameters as JSON, with nested arrays and a Unicode note now and then.
pub fn template_parameters(rng: &mut Rng) -> String {
    let (model, _, _) = rng.pick(MODELS);
    let mut json = format!(
        r#"{{"model":{},"temperature":{:.2},"top_p":{:.3},"max_tokens":{},"stop":["</s>","\n\n"]"#,
        json_string(model),
        rng.unit() * 1.5,
        0.5 + rng.unit() * 0.5,
        rng.range(64, 8192),
    );
    if rng.chance(0.3) {
        json.push_str(r#","response_format":{"type":"json_object"}"#);
    }
    if rng.chance(0.2) {
        json.push_str(&format!(
            r#","note":{}"#,
            json_string(rng.pick(text::UNICODE_PHRASES))
        ));
    }
    json.push('}');
    json
}

impl Variable {
    pub fn generate(rng: &mut Rng, id: i32, prompt_template_id: i32, slot: usize) -> Self {
        let var_type = rng.pick(VAR_TYPES);
        let default_value = maybe(rng, 0.6, |r| match var_type {
            "number" => r.range(0, 1000).to_string(),
            "boolean" => r.chance(0.5).to_string(),
            "json" => r#"{"k":[1,2,3]}"#.to_string(),
            _ => {
                let n = r.range_usize(1, 5);
                text::words(r, n)
            }
        });
        Self {
            id,
            prompt_template_id,
            name: variable_name(slot),
            var_type: var_type.to_string(),
            default_value,
            is_required: rng.chance(0.6),
        }
    }
}

impl Collection {
    /// `variables` are the template's variable names the collection fills in.
    pub fn generate(
        rng: &mut Rng,
        id: i32,
        prompt_template_id: i32,
        variables: &[String],
        created_at: f64,
    ) -> Self {
        Self {
            id,
            prompt_template_id,
            name: format!("{} set", text::title(rng)),
            variables: maybe(rng, 0.95, |r| collection_values(r, variables)),
            created_at,
        }
    }
}

/// A JSON object giving a value to each variable name.
pub fn collection_values(rng: &mut Rng, variables: &[String]) -> String {
    let mut json = String::from("{");
    for (i, name) in variables.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&json_string(name));
        json.push(':');
        match rng.below(4) {
            0 => json.push_str(&rng.range(-1000, 100_000).to_string()),
            1 => json.push_str(if rng.chance(0.5) { "true" } else { "false" }),
            2 => json.push_str("null"),
            _ => json.push_str(&json_string(&text::prose_between(rng, 5, 120))),
        }
    }
    json.push('}');
    json
}

impl Execution {
    pub fn generate(
        rng: &mut Rng,
        id: i64,
        prompt_template_id: i32,
        variable_collection_id: Option<i32>,
        executed_at: f64,
    ) -> Self {
        let (model, in_price, out_price) = rng.pick(MODELS);
        let failed = rng.chance(0.03);
        let input = rng.range(20, 8_000) as u64;
        let output = if failed {
            0
        } else {
            rng.range(1, 2_000) as u64
        };
        Self {
            id,
            prompt_template_id,
            variable_collection_id,
            model: model.to_string(),
            input_tokens: maybe(rng, 0.98, |_| input as i32),
            output_tokens: (!failed).then_some(output as i32),
            cost_usd: maybe(rng, 0.97, |_| {
                usd((input * in_price + output * out_price) / 1_000 + 1)
            }),
            latency_ms: maybe(rng, 0.98, |r| 40.0 + r.unit() * 9_000.0),
            response: (!failed).then(|| text::prose_between(rng, 40, 800)),
            executed_at,
        }
    }
}

impl Flow {
    pub fn generate(
        rng: &mut Rng,
        id: i32,
        prompt_lab_id: i32,
        steps: usize,
        created_at: f64,
        updated_at: f64,
    ) -> Self {
        Self {
            id,
            prompt_lab_id,
            name: format!("{} flow", text::title(rng)),
            definition: maybe(rng, 0.95, |r| flow_definition(r, steps)),
            created_at,
            updated_at,
        }
    }
}

/// A flow's definition: per-step settings plus flow-level policy.
pub fn flow_definition(rng: &mut Rng, steps: usize) -> String {
    let steps: Vec<String> = (0..steps)
        .map(|p| {
            format!(
                r#"{{"position":{p},"retries":{},"timeout_s":{},"output_key":{}}}"#,
                rng.range(0, 3),
                rng.range(5, 120),
                json_string(&variable_name(rng.range_usize(0, 20))),
            )
        })
        .collect();
    format!(
        r#"{{"version":{},"on_error":{},"steps":[{}]}}"#,
        rng.range(1, 4),
        json_string(rng.pick(&["stop", "continue", "retry"])),
        steps.join(","),
    )
}

/// The JSON result of a successful flow run.
pub fn flow_result(rng: &mut Rng) -> String {
    format!(
        r#"{{"output":{},"tokens":{},"cost_usd":{},"steps_ok":{}}}"#,
        json_string(&text::prose_between(rng, 20, 600)),
        rng.range(50, 20_000),
        usd(rng.range(1, 5_000_000) as u64),
        rng.range(1, 8),
    )
}

/// The error text of a failed flow run.
pub fn flow_error(rng: &mut Rng) -> String {
    format!("step {}: {}", rng.range(0, 6), rng.pick(FLOW_ERRORS))
}

impl FlowExecution {
    /// A historical run: mostly finished, some still pending or running.
    pub fn generate(rng: &mut Rng, id: i64, prompt_flow_id: i32, started_at: f64) -> Self {
        let status = STATUSES[rng.weighted(&[10, 10, 60, 15, 5])];
        let finished = matches!(status, "succeeded" | "failed" | "cancelled");
        Self {
            id,
            prompt_flow_id,
            status: status.to_string(),
            started_at,
            finished_at: finished.then(|| started_at + 0.2 + rng.unit() * 600.0),
            result: (status == "succeeded").then(|| flow_result(rng)),
            error: (status == "failed").then(|| flow_error(rng)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_keeps_six_decimals() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(12_345_678), "12.345678");
        assert_eq!(usd(u64::MAX), "999999.999999");
    }

    #[test]
    fn variable_names_are_distinct_per_slot() {
        let names: std::collections::HashSet<String> = (0..100).map(variable_name).collect();
        assert_eq!(names.len(), 100);
    }

    #[test]
    fn lab_slugs_are_distinct() {
        let slugs: std::collections::HashSet<String> = (1..5_000).map(lab_slug).collect();
        assert_eq!(slugs.len(), 4_999);
    }

    #[test]
    fn template_contents_span_sizes_with_a_long_share() {
        let mut rng = Rng::new(42);
        let lens: Vec<usize> = (0..2_000)
            .map(|_| template_content(&mut rng, &["topic".to_string()]).len())
            .collect();
        assert!(lens.iter().all(|&l| (200..12_400).contains(&l)));
        let long = lens.iter().filter(|&&l| l > 2_500).count() as f64 / lens.len() as f64;
        assert!(long >= 0.35, "long share {long}");
    }

    #[test]
    fn flow_executions_are_consistent() {
        let mut rng = Rng::new(8);
        for i in 0..1_000 {
            let e = FlowExecution::generate(&mut rng, i, 1, HISTORY_START);
            let finished = matches!(e.status.as_str(), "succeeded" | "failed" | "cancelled");
            assert_eq!(e.finished_at.is_some(), finished);
            assert_eq!(e.result.is_some(), e.status == "succeeded");
            assert_eq!(e.error.is_some(), e.status == "failed");
        }
    }

    #[test]
    fn tags_sometimes_hold_a_null() {
        let mut rng = Rng::new(3);
        let all: Vec<String> = (0..500).map(|_| tags(&mut rng)).collect();
        assert!(all.iter().any(|t| t.contains("NULL")));
        assert!(all.iter().any(|t| t == "{}"));
    }
}
