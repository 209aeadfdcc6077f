-- PromptStudio legacy schema: the source side of the rekey reference migration.
--
-- Every entity is keyed by a serial/bigserial integer; foreign keys are integers with
-- ON DELETE actions (cascade, or set null for optional links). prompt_flow_steps is a
-- junction table with a composite key. Tables keep the default REPLICA IDENTITY (the
-- primary key), so pgoutput sends the old key on UPDATE/DELETE and "unchanged TOAST"
-- placeholders for large values an UPDATE did not touch (prompt_templates.content).
--
-- Applies to an empty database with psql or as one simple-query batch (no psql
-- meta-commands).

CREATE TYPE execution_status AS ENUM ('pending', 'running', 'succeeded', 'failed', 'cancelled');

CREATE TABLE prompt_labs (
    id          serial PRIMARY KEY,
    lab_id      text NOT NULL UNIQUE,
    tenant_id   integer NULL,
    name        text NOT NULL,
    description text NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_labs_tenant_id_idx ON prompt_labs (tenant_id);

CREATE TABLE prompt_libraries (
    id            serial PRIMARY KEY,
    prompt_lab_id integer NOT NULL REFERENCES prompt_labs (id) ON DELETE CASCADE,
    name          text NOT NULL,
    description   text NULL,
    tags          text[] NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_libraries_prompt_lab_id_idx ON prompt_libraries (prompt_lab_id);

CREATE TABLE prompt_templates (
    id                 serial PRIMARY KEY,
    prompt_library_id  integer NOT NULL REFERENCES prompt_libraries (id) ON DELETE CASCADE,
    parent_template_id integer NULL REFERENCES prompt_templates (id) ON DELETE SET NULL,
    name               text NOT NULL,
    content            text NOT NULL,
    version            integer NOT NULL,
    parameters         jsonb NULL,
    is_archived        boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_templates_prompt_library_id_idx ON prompt_templates (prompt_library_id);
CREATE INDEX prompt_templates_parent_template_id_idx ON prompt_templates (parent_template_id);

CREATE TABLE prompt_variables (
    id                 serial PRIMARY KEY,
    prompt_template_id integer NOT NULL REFERENCES prompt_templates (id) ON DELETE CASCADE,
    name               text NOT NULL,
    var_type           text NOT NULL,
    default_value      text NULL,
    is_required        boolean NOT NULL,
    UNIQUE (prompt_template_id, name)
);
-- The unique (prompt_template_id, name) index also serves the foreign key.

CREATE TABLE variable_collections (
    id                 serial PRIMARY KEY,
    prompt_template_id integer NOT NULL REFERENCES prompt_templates (id) ON DELETE CASCADE,
    name               text NOT NULL,
    variables          jsonb NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX variable_collections_prompt_template_id_idx ON variable_collections (prompt_template_id);

CREATE TABLE prompt_executions (
    id                     bigserial PRIMARY KEY,
    prompt_template_id     integer NOT NULL REFERENCES prompt_templates (id) ON DELETE CASCADE,
    variable_collection_id integer NULL REFERENCES variable_collections (id) ON DELETE SET NULL,
    model                  text NOT NULL,
    input_tokens           integer NULL,
    output_tokens          integer NULL,
    cost_usd               numeric(12, 6) NULL,
    latency_ms             double precision NULL,
    response               text NULL,
    executed_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_executions_prompt_template_id_idx ON prompt_executions (prompt_template_id);
CREATE INDEX prompt_executions_variable_collection_id_idx ON prompt_executions (variable_collection_id);

CREATE TABLE prompt_flows (
    id            serial PRIMARY KEY,
    prompt_lab_id integer NOT NULL REFERENCES prompt_labs (id) ON DELETE CASCADE,
    name          text NOT NULL,
    definition    jsonb NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_flows_prompt_lab_id_idx ON prompt_flows (prompt_lab_id);

CREATE TABLE prompt_flow_steps (
    prompt_flow_id     integer NOT NULL REFERENCES prompt_flows (id) ON DELETE CASCADE,
    position           integer NOT NULL,
    prompt_template_id integer NOT NULL REFERENCES prompt_templates (id) ON DELETE CASCADE,
    PRIMARY KEY (prompt_flow_id, position)
);
-- The primary key (prompt_flow_id, position) also serves the prompt_flow_id foreign key.
CREATE INDEX prompt_flow_steps_prompt_template_id_idx ON prompt_flow_steps (prompt_template_id);

CREATE TABLE flow_executions (
    id             bigserial PRIMARY KEY,
    prompt_flow_id integer NOT NULL REFERENCES prompt_flows (id) ON DELETE CASCADE,
    status         execution_status NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NULL,
    result         jsonb NULL,
    error          text NULL
);
CREATE INDEX flow_executions_prompt_flow_id_idx ON flow_executions (prompt_flow_id);
