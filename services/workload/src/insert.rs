//! Multi-row inserts into the legacy tables: one `INSERT ... SELECT FROM unnest(...)`
//! statement per batch, each column sent as one array parameter.
//!
//! Guarantees: a call inserts exactly the given rows with the given keys (keys come
//! from [`reserve_ids`], so they are valid sequence values even with concurrent
//! writers), in one statement: all or nothing. Rows inside one batch may reference each
//! other (a template forked from a template in the same batch): foreign keys are
//! checked at the end of the statement. Callers insert parents before children.

use tokio_postgres::GenericClient;

use crate::entity::{
    Collection, Execution, Flow, FlowExecution, FlowStep, Lab, Library, Template, Variable,
};

/// Draws `n` fresh keys from the sequence behind `table.id`.
pub async fn reserve_ids(
    client: &impl GenericClient,
    table: &str,
    n: usize,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2::int8)",
            &[&table, &(n as i64)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

fn col<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

pub async fn labs(client: &impl GenericClient, rows: &[Lab]) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_labs (id, lab_id, tenant_id, name, description, created_at, updated_at)
             SELECT id, lab_id, tenant_id, name, description, to_timestamp(c), to_timestamp(u)
             FROM unnest($1::int4[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::float8[], $7::float8[])
                  AS t(id, lab_id, tenant_id, name, description, c, u)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.lab_id.as_str()),
                &col(rows, |r| r.tenant_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.description.as_deref()),
                &col(rows, |r| r.created_at),
                &col(rows, |r| r.updated_at),
            ],
        )
        .await
}

pub async fn libraries(
    client: &impl GenericClient,
    rows: &[Library],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_libraries (id, prompt_lab_id, name, description, tags, created_at, updated_at)
             SELECT id, lab, name, description, tags::text[], to_timestamp(c), to_timestamp(u)
             FROM unnest($1::int4[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::float8[])
                  AS t(id, lab, name, description, tags, c, u)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_lab_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.description.as_deref()),
                &col(rows, |r| r.tags.as_deref()),
                &col(rows, |r| r.created_at),
                &col(rows, |r| r.updated_at),
            ],
        )
        .await
}

pub async fn templates(
    client: &impl GenericClient,
    rows: &[Template],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_templates (id, prompt_library_id, parent_template_id, name, content,
                                           version, parameters, is_archived, created_at, updated_at)
             SELECT id, lib, parent, name, content, version, parameters::jsonb, archived,
                    to_timestamp(c), to_timestamp(u)
             FROM unnest($1::int4[], $2::int4[], $3::int4[], $4::text[], $5::text[], $6::int4[],
                         $7::text[], $8::bool[], $9::float8[], $10::float8[])
                  AS t(id, lib, parent, name, content, version, parameters, archived, c, u)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_library_id),
                &col(rows, |r| r.parent_template_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.content.as_str()),
                &col(rows, |r| r.version),
                &col(rows, |r| r.parameters.as_deref()),
                &col(rows, |r| r.is_archived),
                &col(rows, |r| r.created_at),
                &col(rows, |r| r.updated_at),
            ],
        )
        .await
}

pub async fn variables(
    client: &impl GenericClient,
    rows: &[Variable],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_variables (id, prompt_template_id, name, var_type, default_value, is_required)
             SELECT * FROM unnest($1::int4[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::bool[])",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_template_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.var_type.as_str()),
                &col(rows, |r| r.default_value.as_deref()),
                &col(rows, |r| r.is_required),
            ],
        )
        .await
}

pub async fn collections(
    client: &impl GenericClient,
    rows: &[Collection],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO variable_collections (id, prompt_template_id, name, variables, created_at)
             SELECT id, tpl, name, vars::jsonb, to_timestamp(c)
             FROM unnest($1::int4[], $2::int4[], $3::text[], $4::text[], $5::float8[])
                  AS t(id, tpl, name, vars, c)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_template_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.variables.as_deref()),
                &col(rows, |r| r.created_at),
            ],
        )
        .await
}

pub async fn executions(
    client: &impl GenericClient,
    rows: &[Execution],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_executions (id, prompt_template_id, variable_collection_id, model,
                                            input_tokens, output_tokens, cost_usd, latency_ms,
                                            response, executed_at)
             SELECT id, tpl, coll, model, tin, tout, cost::numeric, latency, response, to_timestamp(at)
             FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[], $5::int4[], $6::int4[],
                         $7::text[], $8::float8[], $9::text[], $10::float8[])
                  AS t(id, tpl, coll, model, tin, tout, cost, latency, response, at)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_template_id),
                &col(rows, |r| r.variable_collection_id),
                &col(rows, |r| r.model.as_str()),
                &col(rows, |r| r.input_tokens),
                &col(rows, |r| r.output_tokens),
                &col(rows, |r| r.cost_usd.as_deref()),
                &col(rows, |r| r.latency_ms),
                &col(rows, |r| r.response.as_deref()),
                &col(rows, |r| r.executed_at),
            ],
        )
        .await
}

pub async fn flows(
    client: &impl GenericClient,
    rows: &[Flow],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_flows (id, prompt_lab_id, name, definition, created_at, updated_at)
             SELECT id, lab, name, def::jsonb, to_timestamp(c), to_timestamp(u)
             FROM unnest($1::int4[], $2::int4[], $3::text[], $4::text[], $5::float8[], $6::float8[])
                  AS t(id, lab, name, def, c, u)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_lab_id),
                &col(rows, |r| r.name.as_str()),
                &col(rows, |r| r.definition.as_deref()),
                &col(rows, |r| r.created_at),
                &col(rows, |r| r.updated_at),
            ],
        )
        .await
}

pub async fn flow_steps(
    client: &impl GenericClient,
    rows: &[FlowStep],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id)
             SELECT * FROM unnest($1::int4[], $2::int4[], $3::int4[])",
            &[
                &col(rows, |r| r.prompt_flow_id),
                &col(rows, |r| r.position),
                &col(rows, |r| r.prompt_template_id),
            ],
        )
        .await
}

pub async fn flow_executions(
    client: &impl GenericClient,
    rows: &[FlowExecution],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO flow_executions (id, prompt_flow_id, status, started_at, finished_at, result, error)
             SELECT id, flow, status::execution_status, to_timestamp(s), to_timestamp(f), result::jsonb, error
             FROM unnest($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::float8[], $6::text[], $7::text[])
                  AS t(id, flow, status, s, f, result, error)",
            &[
                &col(rows, |r| r.id),
                &col(rows, |r| r.prompt_flow_id),
                &col(rows, |r| r.status.as_str()),
                &col(rows, |r| r.started_at),
                &col(rows, |r| r.finished_at),
                &col(rows, |r| r.result.as_deref()),
                &col(rows, |r| r.error.as_deref()),
            ],
        )
        .await
}
