//! The body of each workload transaction, run inside a transaction the caller opened.
//!
//! Guarantees: each function either acts and returns `Some(rows touched)`, or finds
//! nothing to act on and returns `None` before writing anything. Rows are picked from
//! candidate keys (see [`super::state`]) in the order drawn, taking the first that
//! still exists, so no function fails because a row was deleted meanwhile. Keys of
//! inserted rows come from the table sequences and raise the known maxima.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Error as PgError, Transaction};

use super::state::{raise, State};
use super::TxnKind;
use crate::entity::{
    self, Collection, Execution, Flow, FlowExecution, FlowStep, Lab, Library, Template, Variable,
};
use crate::insert::{self, reserve_ids};
use crate::text;

type Rows = Result<Option<u64>, PgError>;

/// Share of new executions that use the template's newest variable collection.
const WITH_COLLECTION_SHARE: f64 = 0.7;

pub(super) async fn run(kind: TxnKind, tx: &Transaction<'_>, st: &mut State) -> Rows {
    match kind {
        TxnKind::InsertExecutions => insert_executions(tx, st).await,
        TxnKind::CreateLab => create_lab(tx, st).await,
        TxnKind::UpdateLab => update_lab(tx, st).await,
        TxnKind::UpdateTemplateMeta => update_template_meta(tx, st).await,
        TxnKind::UpdateTemplateContent => update_template_content(tx, st).await,
        TxnKind::MoveLibrary => move_library(tx, st).await,
        TxnKind::ForkTemplate => fork_template(tx, st).await,
        TxnKind::CreateFlow => create_flow(tx, st).await,
        TxnKind::ChangeFlowSteps => change_flow_steps(tx, st).await,
        TxnKind::RunFlow => run_flow(tx, st).await,
        TxnKind::AddVariable => add_variable(tx, st).await,
        TxnKind::DeleteVariable => delete_one(tx, st, "prompt_variables").await,
        TxnKind::UpdateCollection => update_collection(tx, st).await,
        TxnKind::DeleteExecution => delete_one(tx, st, "prompt_executions").await,
        TxnKind::DeleteLab => delete_one(tx, st, "prompt_labs").await,
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn some_if_any(n: u64) -> Option<u64> {
    (n > 0).then_some(n)
}

/// SQL for the first key of `$1::int8[]`, in array order, that exists in `table`.
fn first_existing(table: &str) -> String {
    format!(
        "(SELECT t.id FROM unnest($1::int8[]) WITH ORDINALITY AS c(id, n) \
         JOIN {table} t ON t.id = c.id ORDER BY c.n LIMIT 1)"
    )
}

fn max_of<'a>(st: &'a mut State, table: &str) -> &'a mut i64 {
    match table {
        "prompt_labs" => &mut st.max.labs,
        "prompt_libraries" => &mut st.max.libraries,
        "prompt_templates" => &mut st.max.templates,
        "prompt_variables" => &mut st.max.variables,
        "variable_collections" => &mut st.max.collections,
        "prompt_executions" => &mut st.max.executions,
        "prompt_flows" => &mut st.max.flows,
        "flow_executions" => &mut st.max.flow_executions,
        other => unreachable!("no serial key on {other}"),
    }
}

/// The first candidate key of `table` that still exists.
async fn pick(tx: &Transaction<'_>, st: &mut State, table: &str) -> Result<Option<i64>, PgError> {
    let max = *max_of(st, table);
    let candidates = st.candidates(max);
    let row = tx
        .query_opt(
            &format!("SELECT {}::int8", first_existing(table)),
            &[&candidates],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
}

/// Reserves `n` keys of `table` and raises its known maximum.
async fn reserve(
    tx: &Transaction<'_>,
    st: &mut State,
    table: &str,
    n: usize,
) -> Result<Vec<i64>, PgError> {
    let ids = reserve_ids(tx, table, n).await?;
    raise(max_of(st, table), &ids);
    Ok(ids)
}

async fn insert_executions(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.templates);
    let found = tx
        .query_opt(
            "SELECT t.id::int8,
                    (SELECT v.id::int8 FROM variable_collections v
                      WHERE v.prompt_template_id = t.id ORDER BY v.id DESC LIMIT 1)
             FROM unnest($1::int8[]) WITH ORDINALITY AS c(id, n)
             JOIN prompt_templates t ON t.id = c.id ORDER BY c.n LIMIT 1",
            &[&candidates],
        )
        .await?;
    let Some(found) = found else { return Ok(None) };
    let (template, collection): (i64, Option<i64>) = (found.get(0), found.get(1));
    let n = st.rng.range_usize(1, 4);
    let ids = reserve(tx, st, "prompt_executions", n).await?;
    let at = now();
    let rows: Vec<Execution> = ids
        .iter()
        .map(|&id| {
            let coll = collection
                .filter(|_| st.rng.chance(WITH_COLLECTION_SHARE))
                .map(|c| c as i32);
            Execution::generate(&mut st.rng, id, template as i32, coll, at)
        })
        .collect();
    Ok(Some(insert::executions(tx, &rows).await?))
}

async fn create_lab(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let at = now();
    let lab_id = reserve(tx, st, "prompt_labs", 1).await?[0];
    let lab = Lab::generate(&mut st.rng, lab_id as i32, at, at);
    let mut touched = insert::labs(tx, &[lab]).await?;

    let n_libs = st.rng.range_usize(1, 3);
    let lib_ids = reserve(tx, st, "prompt_libraries", n_libs).await?;
    let libs: Vec<Library> = lib_ids
        .iter()
        .map(|&id| Library::generate(&mut st.rng, id as i32, lab_id as i32, at, at))
        .collect();
    touched += insert::libraries(tx, &libs).await?;

    let tpl_libs: Vec<i64> = lib_ids
        .iter()
        .flat_map(|&lib| std::iter::repeat_n(lib, st.rng.range_usize(1, 4)))
        .collect();
    let tpl_ids = reserve(tx, st, "prompt_templates", tpl_libs.len()).await?;
    let var_counts: Vec<usize> = tpl_ids.iter().map(|_| st.rng.range_usize(0, 4)).collect();
    let coll_counts: Vec<usize> = tpl_ids.iter().map(|_| st.rng.range_usize(0, 2)).collect();
    let mut templates = Vec::with_capacity(tpl_ids.len());
    for (i, &id) in tpl_ids.iter().enumerate() {
        let names: Vec<String> = (0..var_counts[i]).map(entity::variable_name).collect();
        templates.push(Template::generate(
            &mut st.rng,
            id as i32,
            tpl_libs[i] as i32,
            None,
            &names,
            at,
            at,
        ));
    }
    touched += insert::templates(tx, &templates).await?;

    let var_ids = reserve(tx, st, "prompt_variables", var_counts.iter().sum()).await?;
    let mut next = var_ids.iter();
    let mut variables = Vec::with_capacity(var_ids.len());
    for (i, &tpl) in tpl_ids.iter().enumerate() {
        for slot in 0..var_counts[i] {
            let id = *next.next().expect("one key reserved per variable");
            variables.push(Variable::generate(&mut st.rng, id as i32, tpl as i32, slot));
        }
    }
    touched += insert::variables(tx, &variables).await?;

    let coll_ids = reserve(tx, st, "variable_collections", coll_counts.iter().sum()).await?;
    let mut next = coll_ids.iter();
    let mut collections = Vec::with_capacity(coll_ids.len());
    for (i, &tpl) in tpl_ids.iter().enumerate() {
        let names: Vec<String> = (0..var_counts[i]).map(entity::variable_name).collect();
        for _ in 0..coll_counts[i] {
            let id = *next.next().expect("one key reserved per collection");
            collections.push(Collection::generate(
                &mut st.rng,
                id as i32,
                tpl as i32,
                &names,
                at,
            ));
        }
    }
    touched += insert::collections(tx, &collections).await?;
    Ok(Some(touched))
}

async fn update_lab(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.labs);
    let target = first_existing("prompt_labs");
    let n = if st.rng.chance(0.5) {
        let tenant: Option<i32> = st.rng.chance(0.8).then(|| st.rng.range(1, 250) as i32);
        tx.execute(
            &format!("UPDATE prompt_labs SET tenant_id = $2::int4, updated_at = now() WHERE id = {target}"),
            &[&candidates, &tenant],
        )
        .await?
    } else {
        let name = format!("{} Lab", text::title(&mut st.rng));
        let description = text::prose_between(&mut st.rng, 20, 300);
        tx.execute(
            &format!(
                "UPDATE prompt_labs SET name = $2, description = $3, updated_at = now() WHERE id = {target}"
            ),
            &[&candidates, &name, &description],
        )
        .await?
    };
    Ok(some_if_any(n))
}

async fn update_template_meta(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.templates);
    let target = first_existing("prompt_templates");
    let n = match st.rng.below(3) {
        0 => {
            let name = text::title(&mut st.rng);
            tx.execute(
                &format!(
                    "UPDATE prompt_templates SET name = $2, updated_at = now() WHERE id = {target}"
                ),
                &[&candidates, &name],
            )
            .await?
        }
        1 => {
            let params = st
                .rng
                .chance(0.95)
                .then(|| entity::template_parameters(&mut st.rng));
            tx.execute(
                &format!(
                    "UPDATE prompt_templates SET version = version + 1, parameters = $2::text::jsonb,
                            updated_at = now() WHERE id = {target}"
                ),
                &[&candidates, &params],
            )
            .await?
        }
        _ => {
            tx.execute(
                &format!(
                    "UPDATE prompt_templates SET is_archived = NOT is_archived, updated_at = now()
                     WHERE id = {target}"
                ),
                &[&candidates],
            )
            .await?
        }
    };
    Ok(some_if_any(n))
}

async fn update_template_content(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.templates);
    let names: Vec<String> = (0..3).map(entity::variable_name).collect();
    let content = entity::template_content(&mut st.rng, &names);
    let n = tx
        .execute(
            &format!(
                "UPDATE prompt_templates SET content = $2, version = version + 1, updated_at = now()
                 WHERE id = {}",
                first_existing("prompt_templates")
            ),
            &[&candidates, &content],
        )
        .await?;
    Ok(some_if_any(n))
}

async fn move_library(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let Some(lab) = pick(tx, st, "prompt_labs").await? else {
        return Ok(None);
    };
    let candidates = st.candidates(st.max.libraries);
    let n = tx
        .execute(
            &format!(
                "UPDATE prompt_libraries SET prompt_lab_id = $2::int8, updated_at = now()
                 WHERE id = {} AND prompt_lab_id <> $2::int8",
                first_existing("prompt_libraries")
            ),
            &[&candidates, &lab],
        )
        .await?;
    Ok(some_if_any(n))
}

async fn fork_template(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.templates);
    // Half the forks keep the body byte for byte, half append a paragraph.
    let suffix = if st.rng.chance(0.5) {
        String::new()
    } else {
        format!("\n\n{}", text::prose_between(&mut st.rng, 50, 800))
    };
    let forked = tx
        .query_opt(
            &format!(
                "INSERT INTO prompt_templates (prompt_library_id, parent_template_id, name, content,
                                               version, parameters, is_archived)
                 SELECT prompt_library_id, id, left(name, 60) || ' (fork)', content || $2, 1,
                        parameters, false
                 FROM prompt_templates WHERE id = {}
                 RETURNING id::int8, parent_template_id::int8",
                first_existing("prompt_templates")
            ),
            &[&candidates, &suffix],
        )
        .await?;
    let Some(forked) = forked else {
        return Ok(None);
    };
    let (id, parent): (i64, i64) = (forked.get(0), forked.get(1));
    raise(&mut st.max.templates, &[id]);
    let copied = tx
        .query(
            "INSERT INTO prompt_variables (prompt_template_id, name, var_type, default_value, is_required)
             SELECT $1::int8, name, var_type, default_value, is_required
             FROM prompt_variables WHERE prompt_template_id = $2::int8
             RETURNING id::int8",
            &[&id, &parent],
        )
        .await?;
    let copied: Vec<i64> = copied.iter().map(|r| r.get(0)).collect();
    raise(&mut st.max.variables, &copied);
    Ok(Some(1 + copied.len() as u64))
}

async fn create_flow(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.labs);
    let labs = tx
        .query(
            "SELECT l.id::int8,
                    ARRAY(SELECT t.id::int8 FROM prompt_libraries b
                          JOIN prompt_templates t ON t.prompt_library_id = b.id
                          WHERE b.prompt_lab_id = l.id ORDER BY t.id DESC LIMIT 16)
             FROM unnest($1::int8[]) WITH ORDINALITY AS c(id, n)
             JOIN prompt_labs l ON l.id = c.id ORDER BY c.n",
            &[&candidates],
        )
        .await?;
    let Some((lab, templates)) = labs
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<i64>>(1)))
        .find(|(_, templates)| !templates.is_empty())
    else {
        return Ok(None);
    };
    let n_steps = st.rng.range_usize(1, 6);
    let at = now();
    let flow_id = reserve(tx, st, "prompt_flows", 1).await?[0];
    let flow = Flow::generate(&mut st.rng, flow_id as i32, lab as i32, n_steps, at, at);
    let mut touched = insert::flows(tx, &[flow]).await?;
    let steps: Vec<FlowStep> = (0..n_steps)
        .map(|p| FlowStep {
            prompt_flow_id: flow_id as i32,
            position: p as i32,
            prompt_template_id: st.rng.pick(&templates) as i32,
        })
        .collect();
    touched += insert::flow_steps(tx, &steps).await?;
    Ok(Some(touched))
}

async fn change_flow_steps(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.flows);
    let flows = tx
        .query(
            "SELECT c.id, ARRAY(SELECT s.position FROM prompt_flow_steps s
                                WHERE s.prompt_flow_id = c.id ORDER BY s.position)
             FROM unnest($1::int8[]) WITH ORDINALITY AS c(id, n) ORDER BY c.n",
            &[&candidates],
        )
        .await?;
    let Some((flow, positions)) = flows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<i32>>(1)))
        .find(|(_, positions)| !positions.is_empty())
    else {
        return Ok(None);
    };
    let end = positions[positions.len() - 1] + 1;
    let at = st.rng.pick(&positions);
    let mut touched = match st.rng.weighted(&[20, 30, 25, 25]) {
        0 => {
            tx.execute(
                "INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id)
                 SELECT prompt_flow_id, $2::int4, prompt_template_id FROM prompt_flow_steps
                 WHERE prompt_flow_id = $1::int8 AND position = $3::int4",
                &[&flow, &end, &at],
            )
            .await?
        }
        1 => {
            tx.execute(
                "DELETE FROM prompt_flow_steps WHERE prompt_flow_id = $1::int8 AND position = $2::int4",
                &[&flow, &at],
            )
            .await?
        }
        choice => {
            let moves: Vec<(i32, i32)> = if choice == 3 && positions.len() >= 2 {
                // Swap two steps through a free position: the key is non-deferrable.
                let other = loop {
                    let p = st.rng.pick(&positions);
                    if p != at {
                        break p;
                    }
                };
                vec![(at, -1), (other, at), (-1, other)]
            } else {
                vec![(at, end)]
            };
            let mut n = 0;
            for (from, to) in moves {
                n += tx
                    .execute(
                        "UPDATE prompt_flow_steps SET position = $3::int4
                         WHERE prompt_flow_id = $1::int8 AND position = $2::int4",
                        &[&flow, &from, &to],
                    )
                    .await?;
            }
            n
        }
    };
    touched += tx
        .execute(
            "UPDATE prompt_flows SET updated_at = now() WHERE id = $1::int8",
            &[&flow],
        )
        .await?;
    Ok(Some(touched))
}

async fn run_flow(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let open = if st.rng.chance(0.6) {
        st.take_open_run()
    } else {
        None
    };
    let candidates = match open {
        Some(id) => vec![id],
        None if st.rng.chance(0.5) => return start_flow_run(tx, st).await,
        None => st.candidates(st.max.flow_executions),
    };
    let found = tx
        .query_opt(
            "SELECT f.id::int8, f.status::text
             FROM unnest($1::int8[]) WITH ORDINALITY AS c(id, n)
             JOIN flow_executions f ON f.id = c.id
             WHERE f.status IN ('pending', 'running')
             ORDER BY c.n LIMIT 1
             FOR UPDATE OF f",
            &[&candidates],
        )
        .await?;
    let Some(found) = found else { return Ok(None) };
    let (id, status): (i64, String) = (found.get(0), found.get(1));
    let n = if status == "pending" {
        st.remember_open_run(id);
        tx.execute(
            "UPDATE flow_executions SET status = 'running', started_at = now() WHERE id = $1::int8",
            &[&id],
        )
        .await?
    } else {
        match st.rng.weighted(&[75, 20, 5]) {
            0 => {
                let result = entity::flow_result(&mut st.rng);
                tx.execute(
                    "UPDATE flow_executions SET status = 'succeeded', finished_at = now(),
                            result = $2::text::jsonb WHERE id = $1::int8",
                    &[&id, &result],
                )
                .await?
            }
            1 => {
                let error = entity::flow_error(&mut st.rng);
                tx.execute(
                    "UPDATE flow_executions SET status = 'failed', finished_at = now(), error = $2
                     WHERE id = $1::int8",
                    &[&id, &error],
                )
                .await?
            }
            _ => {
                tx.execute(
                    "UPDATE flow_executions SET status = 'cancelled', finished_at = now() WHERE id = $1::int8",
                    &[&id],
                )
                .await?
            }
        }
    };
    Ok(some_if_any(n))
}

async fn start_flow_run(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let Some(flow) = pick(tx, st, "prompt_flows").await? else {
        return Ok(None);
    };
    let id = reserve(tx, st, "flow_executions", 1).await?[0];
    let run = FlowExecution {
        id,
        prompt_flow_id: flow as i32,
        status: "pending".to_string(),
        started_at: now(),
        finished_at: None,
        result: None,
        error: None,
    };
    let n = insert::flow_executions(tx, &[run]).await?;
    st.remember_open_run(id);
    Ok(Some(n))
}

async fn add_variable(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let Some(template) = pick(tx, st, "prompt_templates").await? else {
        return Ok(None);
    };
    // Templates own about three variable slots, so some of these names are taken:
    // the unique violation is part of the workload (the transaction is skipped).
    let slot = st.rng.range_usize(0, 11);
    let id = reserve(tx, st, "prompt_variables", 1).await?[0];
    let variable = Variable::generate(&mut st.rng, id as i32, template as i32, slot);
    Ok(Some(insert::variables(tx, &[variable]).await?))
}

async fn update_collection(tx: &Transaction<'_>, st: &mut State) -> Rows {
    let candidates = st.candidates(st.max.collections);
    let names: Vec<String> = (0..st.rng.range_usize(1, 4))
        .map(entity::variable_name)
        .collect();
    let values = st
        .rng
        .chance(0.95)
        .then(|| entity::collection_values(&mut st.rng, &names));
    let n = tx
        .execute(
            &format!(
                "UPDATE variable_collections SET variables = $2::text::jsonb WHERE id = {}",
                first_existing("variable_collections")
            ),
            &[&candidates, &values],
        )
        .await?;
    Ok(some_if_any(n))
}

/// Deletes one row of `table`; its dependents go by ON DELETE CASCADE / SET NULL.
async fn delete_one(tx: &Transaction<'_>, st: &mut State, table: &str) -> Rows {
    let max = *max_of(st, table);
    let candidates = st.candidates(max);
    let n = tx
        .execute(
            &format!("DELETE FROM {table} WHERE id = {}", first_existing(table)),
            &[&candidates],
        )
        .await?;
    Ok(some_if_any(n))
}
