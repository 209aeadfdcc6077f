//! Bulk data for the legacy database: a realistic PromptStudio history in all nine
//! tables, sized by a scale factor.
//!
//! Guarantees:
//! - Parents are inserted before children, in batches of one statement each (see
//!   [`crate::insert`]); every batch commits on its own, so an interrupted seed leaves
//!   a consistent, smaller data set (never a dangling foreign key).
//! - Keys come from the tables' own sequences, so seeding a database that already has
//!   rows, or that a workload is writing to, is safe; new rows only reference rows of
//!   this seed run.
//! - Same seed, scale and starting sequences give the same rows (timestamps included:
//!   they are drawn from a fixed year, 2024).
//! - Scale 1.0 is ≈ 311k rows, ≈ 205 MB on disk; any positive scale yields at least one
//!   row per table. Covered edge cases: NULL foreign keys, forked templates (self
//!   reference), `text[]` with NULL elements, numeric(12,6) at full scale, Unicode,
//!   jsonb, labs without a tenant, and template bodies large enough to be TOASTed.

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::entity::{
    self, Collection, Execution, Flow, FlowExecution, FlowStep, Lab, Library, Template, Variable,
};
use crate::rng::Rng;
use crate::{insert, Error};

/// Rows per table at scale 1.0, in [`crate::schema::TABLES`] order.
const ROWS_AT_SCALE_1: [u64; 9] = [
    1_000, 5_000, 20_000, 60_000, 20_000, 150_000, 5_000, 20_000, 30_000,
];
/// Rows per insert statement for tables with small rows.
const BATCH_ROWS: usize = 5_000;
/// Rows per insert statement for templates (bodies up to ~12 kB).
const TEMPLATE_BATCH_ROWS: usize = 500;
/// Share of templates forked from another template of the same library.
const FORK_SHARE: f64 = 0.15;
/// Share of executions run with one of the template's variable collections.
const WITH_COLLECTION_SHARE: f64 = 0.7;

/// Rows inserted per table, and how long it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeedStats {
    pub labs: u64,
    pub libraries: u64,
    pub templates: u64,
    pub variables: u64,
    pub collections: u64,
    pub executions: u64,
    pub flows: u64,
    pub flow_steps: u64,
    pub flow_executions: u64,
    pub elapsed: Duration,
}

impl SeedStats {
    /// `(table, rows)` in [`crate::schema::TABLES`] order.
    pub fn per_table(&self) -> [(&'static str, u64); 9] {
        let counts = [
            self.labs,
            self.libraries,
            self.templates,
            self.variables,
            self.collections,
            self.executions,
            self.flows,
            self.flow_steps,
            self.flow_executions,
        ];
        let mut out = [("", 0); 9];
        for (i, table) in crate::schema::TABLES.iter().enumerate() {
            out[i] = (table, counts[i]);
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.per_table().iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for SeedStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeded {} rows in {:.1}s (",
            self.total(),
            self.elapsed.as_secs_f64()
        )?;
        for (i, (table, n)) in self.per_table().iter().enumerate() {
            write!(f, "{}{table}={n}", if i > 0 { " " } else { "" })?;
        }
        write!(f, ")")
    }
}

/// A timestamp after `t` and within the seeded year.
fn after(rng: &mut Rng, t: f64) -> f64 {
    let end = entity::HISTORY_START + entity::HISTORY_SECONDS;
    t + rng.unit() * (end - t).max(0.0)
}

/// How many of `total` children, dealt round-robin, the `parent`-th of `parents` gets.
fn dealt(total: usize, parents: usize, parent: usize) -> usize {
    total / parents + usize::from(parent < total % parents)
}

async fn reserve(client: &Client, table: &'static str, n: usize) -> Result<Vec<i64>, Error> {
    insert::reserve_ids(client, table, n)
        .await
        .map_err(|source| Error::Seed { table, source })
}

fn seed_err(table: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Seed { table, source }
}

/// Inserts a PromptStudio history of `scale` × ≈311k rows into the legacy schema.
pub async fn seed(client: &Client, scale: f64, seed: u64) -> Result<SeedStats, Error> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::InvalidScale(scale));
    }
    let started = Instant::now();
    let root = Rng::new(seed);
    let [n_labs, n_libs, n_tpls, n_vars, n_colls, n_execs, n_flows, n_steps, n_fexecs] =
        ROWS_AT_SCALE_1.map(|base| ((base as f64 * scale).round() as usize).max(1));
    let mut stats = SeedStats::default();

    // prompt_labs
    let mut rng = root.fork(1);
    let lab_ids = reserve(client, "prompt_labs", n_labs).await?;
    let mut lab_created = Vec::with_capacity(n_labs);
    for chunk in lab_ids.chunks(BATCH_ROWS) {
        let rows: Vec<Lab> = chunk
            .iter()
            .map(|&id| {
                let created = entity::HISTORY_START + rng.unit() * entity::HISTORY_SECONDS * 0.5;
                lab_created.push(created);
                let updated = after(&mut rng, created);
                Lab::generate(&mut rng, id as i32, created, updated)
            })
            .collect();
        stats.labs += insert::labs(client, &rows)
            .await
            .map_err(seed_err("prompt_labs"))?;
    }

    // prompt_libraries
    let mut rng = root.fork(2);
    let lib_ids = reserve(client, "prompt_libraries", n_libs).await?;
    let mut lib_lab = Vec::with_capacity(n_libs);
    let mut lib_created = Vec::with_capacity(n_libs);
    for chunk in lib_ids.chunks(BATCH_ROWS) {
        let rows: Vec<Library> = chunk
            .iter()
            .map(|&id| {
                let lab = rng.below(n_labs as u64) as usize;
                let created = after(&mut rng, lab_created[lab]);
                lib_lab.push(lab);
                lib_created.push(created);
                let updated = after(&mut rng, created);
                Library::generate(&mut rng, id as i32, lab_ids[lab] as i32, created, updated)
            })
            .collect();
        stats.libraries += insert::libraries(client, &rows)
            .await
            .map_err(seed_err("prompt_libraries"))?;
    }

    // prompt_templates: variables are dealt round-robin, so template t owns slots
    // 0..dealt(n_vars, n_tpls, t) and its body can refer to them.
    let mut rng = root.fork(3);
    let tpl_ids = reserve(client, "prompt_templates", n_tpls).await?;
    let mut tpl_created = Vec::with_capacity(n_tpls);
    let mut tpls_of_lib: Vec<Vec<u32>> = vec![Vec::new(); n_libs];
    let mut tpls_of_lab: Vec<Vec<u32>> = vec![Vec::new(); n_labs];
    for (c, chunk) in tpl_ids.chunks(TEMPLATE_BATCH_ROWS).enumerate() {
        let rows: Vec<Template> = chunk
            .iter()
            .enumerate()
            .map(|(j, &id)| {
                let t = c * TEMPLATE_BATCH_ROWS + j;
                let lib = rng.below(n_libs as u64) as usize;
                let siblings = &tpls_of_lib[lib];
                let parent = (!siblings.is_empty() && rng.chance(FORK_SHARE))
                    .then(|| tpl_ids[rng.pick(siblings) as usize] as i32);
                let created = after(&mut rng, lib_created[lib]);
                let updated = after(&mut rng, created);
                let names: Vec<String> = (0..dealt(n_vars, n_tpls, t).min(4))
                    .map(entity::variable_name)
                    .collect();
                tpls_of_lib[lib].push(t as u32);
                tpls_of_lab[lib_lab[lib]].push(t as u32);
                tpl_created.push(created);
                Template::generate(
                    &mut rng,
                    id as i32,
                    lib_ids[lib] as i32,
                    parent,
                    &names,
                    created,
                    updated,
                )
            })
            .collect();
        stats.templates += insert::templates(client, &rows)
            .await
            .map_err(seed_err("prompt_templates"))?;
    }
    drop(tpls_of_lib);

    // prompt_variables: the i-th variable goes to template i % n_tpls, slot i / n_tpls,
    // which keeps (prompt_template_id, name) unique.
    let mut rng = root.fork(4);
    let var_ids = reserve(client, "prompt_variables", n_vars).await?;
    for (c, chunk) in var_ids.chunks(BATCH_ROWS).enumerate() {
        let rows: Vec<Variable> = chunk
            .iter()
            .enumerate()
            .map(|(j, &id)| {
                let i = c * BATCH_ROWS + j;
                Variable::generate(&mut rng, id as i32, tpl_ids[i % n_tpls] as i32, i / n_tpls)
            })
            .collect();
        stats.variables += insert::variables(client, &rows)
            .await
            .map_err(seed_err("prompt_variables"))?;
    }

    // variable_collections
    let mut rng = root.fork(5);
    let coll_ids = reserve(client, "variable_collections", n_colls).await?;
    let mut colls_of_tpl: Vec<Vec<u32>> = vec![Vec::new(); n_tpls];
    for (c, chunk) in coll_ids.chunks(BATCH_ROWS).enumerate() {
        let rows: Vec<Collection> = chunk
            .iter()
            .enumerate()
            .map(|(j, &id)| {
                let t = rng.below(n_tpls as u64) as usize;
                colls_of_tpl[t].push((c * BATCH_ROWS + j) as u32);
                let names: Vec<String> = (0..dealt(n_vars, n_tpls, t))
                    .map(entity::variable_name)
                    .collect();
                let created = after(&mut rng, tpl_created[t]);
                Collection::generate(&mut rng, id as i32, tpl_ids[t] as i32, &names, created)
            })
            .collect();
        stats.collections += insert::collections(client, &rows)
            .await
            .map_err(seed_err("variable_collections"))?;
    }

    // prompt_executions: popular templates run more often (quadratic skew).
    let mut rng = root.fork(6);
    let exec_ids = reserve(client, "prompt_executions", n_execs).await?;
    for chunk in exec_ids.chunks(BATCH_ROWS) {
        let rows: Vec<Execution> = chunk
            .iter()
            .map(|&id| {
                let u = rng.unit();
                let t = ((u * u * n_tpls as f64) as usize).min(n_tpls - 1);
                let coll = (!colls_of_tpl[t].is_empty() && rng.chance(WITH_COLLECTION_SHARE))
                    .then(|| coll_ids[rng.pick(&colls_of_tpl[t]) as usize] as i32);
                let at = after(&mut rng, tpl_created[t]);
                Execution::generate(&mut rng, id, tpl_ids[t] as i32, coll, at)
            })
            .collect();
        stats.executions += insert::executions(client, &rows)
            .await
            .map_err(seed_err("prompt_executions"))?;
    }
    drop(colls_of_tpl);

    // prompt_flows; steps are dealt round-robin like variables.
    let mut rng = root.fork(7);
    let flow_ids = reserve(client, "prompt_flows", n_flows).await?;
    let mut flow_lab = Vec::with_capacity(n_flows);
    let mut flow_created = Vec::with_capacity(n_flows);
    for (c, chunk) in flow_ids.chunks(BATCH_ROWS).enumerate() {
        let rows: Vec<Flow> = chunk
            .iter()
            .enumerate()
            .map(|(j, &id)| {
                let f = c * BATCH_ROWS + j;
                let lab = rng.below(n_labs as u64) as usize;
                let created = after(&mut rng, lab_created[lab]);
                let updated = after(&mut rng, created);
                flow_lab.push(lab);
                flow_created.push(created);
                let steps = dealt(n_steps, n_flows, f);
                Flow::generate(
                    &mut rng,
                    id as i32,
                    lab_ids[lab] as i32,
                    steps,
                    created,
                    updated,
                )
            })
            .collect();
        stats.flows += insert::flows(client, &rows)
            .await
            .map_err(seed_err("prompt_flows"))?;
    }

    // prompt_flow_steps: step i is flow i % n_flows, position i / n_flows, running a
    // template of the flow's own lab when it has any.
    let mut rng = root.fork(8);
    let steps: Vec<FlowStep> = (0..n_steps)
        .map(|i| {
            let f = i % n_flows;
            let own = &tpls_of_lab[flow_lab[f]];
            let t = if own.is_empty() {
                rng.below(n_tpls as u64) as usize
            } else {
                rng.pick(own) as usize
            };
            FlowStep {
                prompt_flow_id: flow_ids[f] as i32,
                position: (i / n_flows) as i32,
                prompt_template_id: tpl_ids[t] as i32,
            }
        })
        .collect();
    for chunk in steps.chunks(BATCH_ROWS) {
        stats.flow_steps += insert::flow_steps(client, chunk)
            .await
            .map_err(seed_err("prompt_flow_steps"))?;
    }

    // flow_executions
    let mut rng = root.fork(9);
    let fexec_ids = reserve(client, "flow_executions", n_fexecs).await?;
    for chunk in fexec_ids.chunks(BATCH_ROWS) {
        let rows: Vec<FlowExecution> = chunk
            .iter()
            .map(|&id| {
                let f = rng.below(n_flows as u64) as usize;
                let started = after(&mut rng, flow_created[f]);
                FlowExecution::generate(&mut rng, id, flow_ids[f] as i32, started)
            })
            .collect();
        stats.flow_executions += insert::flow_executions(client, &rows)
            .await
            .map_err(seed_err("flow_executions"))?;
    }

    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dealing_covers_every_child_once() {
        for (total, parents) in [(0, 1), (1, 1), (7, 3), (60_000, 20_000), (5, 9)] {
            let sum: usize = (0..parents).map(|p| dealt(total, parents, p)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn scale_one_is_311k_rows() {
        assert_eq!(ROWS_AT_SCALE_1.iter().sum::<u64>(), 311_000);
    }

    #[test]
    fn timestamps_stay_in_the_seeded_year() {
        let mut rng = Rng::new(1);
        let end = entity::HISTORY_START + entity::HISTORY_SECONDS;
        let mut t = entity::HISTORY_START;
        for _ in 0..100 {
            let next = after(&mut rng, t);
            assert!(next >= t && next <= end);
            t = next;
        }
    }
}
