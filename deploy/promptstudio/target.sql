-- PromptStudio target schema: the new, UUID-keyed side of the rekey reference migration.
--
-- Same tables and column names as legacy.sql, with these conventions:
--
--   id              uuid PRIMARY KEY: the stable UUID rekey derives from (table, legacy key).
--   legacy_id       the old integer key (integer for serial tables, bigint for bigserial),
--                   NOT NULL UNIQUE: kept through the transition for old URLs and API
--                   clients, and used by verification to pair rows across the two stores.
--   <fk> uuid       every foreign key column keeps its legacy name but holds the parent's
--                   new id. Foreign keys are DEFERRABLE INITIALLY DEFERRED, so the writer
--                   may apply a transaction's rows in any order and the check runs at
--                   COMMIT. They have no ON DELETE action: legacy deletes arrive as soft
--                   deletes, so a parent row is never physically removed under its children.
--   organization_id uuid NULL, tenant isolation. On prompt_labs it is the rekeyed
--                   tenant_id (tenant_id itself is kept as well).
--   row_version     commit LSN of the last legacy change applied to the row. It is the
--                   order guard: the writer applies a change only if its commit LSN is
--                   not older than row_version (changes of one legacy transaction share
--                   it), so replays are idempotent and never go backwards. It also
--                   serves applications as the optimistic concurrency token.
--   deleted_at      soft delete: set (instead of DELETE) when the legacy row is deleted;
--                   live rows have deleted_at IS NULL.
--
-- Secondary uniqueness (prompt_labs.lab_id, prompt_variables(prompt_template_id, name))
-- holds among live rows only, so a soft-deleted row never blocks a legacy re-insert.
--
-- prompt_flow_steps is a junction table: composite key of (new flow id, position), no
-- legacy_id/organization_id/deleted_at; legacy deletes are applied as real deletes.
--
-- Applies to an empty database with psql or as one simple-query batch.

CREATE TYPE execution_status AS ENUM ('pending', 'running', 'succeeded', 'failed', 'cancelled');

CREATE TABLE prompt_labs (
    id              uuid PRIMARY KEY,
    legacy_id       integer NOT NULL UNIQUE,
    lab_id          text NOT NULL,
    tenant_id       integer NULL,
    name            text NOT NULL,
    description     text NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    organization_id uuid NULL,
    row_version     bigint NOT NULL,
    deleted_at      timestamptz NULL
);
CREATE UNIQUE INDEX prompt_labs_lab_id_live_key ON prompt_labs (lab_id) WHERE deleted_at IS NULL;
CREATE INDEX prompt_labs_organization_id_idx ON prompt_labs (organization_id);

CREATE TABLE prompt_libraries (
    id              uuid PRIMARY KEY,
    legacy_id       integer NOT NULL UNIQUE,
    prompt_lab_id   uuid NOT NULL REFERENCES prompt_labs (id) DEFERRABLE INITIALLY DEFERRED,
    name            text NOT NULL,
    description     text NULL,
    tags            text[] NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    organization_id uuid NULL,
    row_version     bigint NOT NULL,
    deleted_at      timestamptz NULL
);
CREATE INDEX prompt_libraries_prompt_lab_id_idx ON prompt_libraries (prompt_lab_id);

CREATE TABLE prompt_templates (
    id                 uuid PRIMARY KEY,
    legacy_id          integer NOT NULL UNIQUE,
    prompt_library_id  uuid NOT NULL REFERENCES prompt_libraries (id) DEFERRABLE INITIALLY DEFERRED,
    parent_template_id uuid NULL REFERENCES prompt_templates (id) DEFERRABLE INITIALLY DEFERRED,
    name               text NOT NULL,
    content            text NOT NULL,
    version            integer NOT NULL,
    parameters         jsonb NULL,
    is_archived        boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    organization_id    uuid NULL,
    row_version        bigint NOT NULL,
    deleted_at         timestamptz NULL
);
CREATE INDEX prompt_templates_prompt_library_id_idx ON prompt_templates (prompt_library_id);
CREATE INDEX prompt_templates_parent_template_id_idx ON prompt_templates (parent_template_id);

CREATE TABLE prompt_variables (
    id                 uuid PRIMARY KEY,
    legacy_id          integer NOT NULL UNIQUE,
    prompt_template_id uuid NOT NULL REFERENCES prompt_templates (id) DEFERRABLE INITIALLY DEFERRED,
    name               text NOT NULL,
    var_type           text NOT NULL,
    default_value      text NULL,
    is_required        boolean NOT NULL,
    organization_id    uuid NULL,
    row_version        bigint NOT NULL,
    deleted_at         timestamptz NULL
);
CREATE UNIQUE INDEX prompt_variables_template_name_live_key
    ON prompt_variables (prompt_template_id, name) WHERE deleted_at IS NULL;
CREATE INDEX prompt_variables_prompt_template_id_idx ON prompt_variables (prompt_template_id);

CREATE TABLE variable_collections (
    id                 uuid PRIMARY KEY,
    legacy_id          integer NOT NULL UNIQUE,
    prompt_template_id uuid NOT NULL REFERENCES prompt_templates (id) DEFERRABLE INITIALLY DEFERRED,
    name               text NOT NULL,
    variables          jsonb NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    organization_id    uuid NULL,
    row_version        bigint NOT NULL,
    deleted_at         timestamptz NULL
);
CREATE INDEX variable_collections_prompt_template_id_idx ON variable_collections (prompt_template_id);

CREATE TABLE prompt_executions (
    id                     uuid PRIMARY KEY,
    legacy_id              bigint NOT NULL UNIQUE,
    prompt_template_id     uuid NOT NULL REFERENCES prompt_templates (id) DEFERRABLE INITIALLY DEFERRED,
    variable_collection_id uuid NULL REFERENCES variable_collections (id) DEFERRABLE INITIALLY DEFERRED,
    model                  text NOT NULL,
    input_tokens           integer NULL,
    output_tokens          integer NULL,
    cost_usd               numeric(12, 6) NULL,
    latency_ms             double precision NULL,
    response               text NULL,
    executed_at            timestamptz NOT NULL DEFAULT now(),
    organization_id        uuid NULL,
    row_version            bigint NOT NULL,
    deleted_at             timestamptz NULL
);
CREATE INDEX prompt_executions_prompt_template_id_idx ON prompt_executions (prompt_template_id);
CREATE INDEX prompt_executions_variable_collection_id_idx ON prompt_executions (variable_collection_id);

CREATE TABLE prompt_flows (
    id              uuid PRIMARY KEY,
    legacy_id       integer NOT NULL UNIQUE,
    prompt_lab_id   uuid NOT NULL REFERENCES prompt_labs (id) DEFERRABLE INITIALLY DEFERRED,
    name            text NOT NULL,
    definition      jsonb NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    organization_id uuid NULL,
    row_version     bigint NOT NULL,
    deleted_at      timestamptz NULL
);
CREATE INDEX prompt_flows_prompt_lab_id_idx ON prompt_flows (prompt_lab_id);

CREATE TABLE prompt_flow_steps (
    prompt_flow_id     uuid NOT NULL REFERENCES prompt_flows (id) DEFERRABLE INITIALLY DEFERRED,
    position           integer NOT NULL,
    prompt_template_id uuid NOT NULL REFERENCES prompt_templates (id) DEFERRABLE INITIALLY DEFERRED,
    row_version        bigint NOT NULL,
    PRIMARY KEY (prompt_flow_id, position)
);
CREATE INDEX prompt_flow_steps_prompt_template_id_idx ON prompt_flow_steps (prompt_template_id);

CREATE TABLE flow_executions (
    id              uuid PRIMARY KEY,
    legacy_id       bigint NOT NULL UNIQUE,
    prompt_flow_id  uuid NOT NULL REFERENCES prompt_flows (id) DEFERRABLE INITIALLY DEFERRED,
    status          execution_status NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NULL,
    result          jsonb NULL,
    error           text NULL,
    organization_id uuid NULL,
    row_version     bigint NOT NULL,
    deleted_at      timestamptz NULL
);
CREATE INDEX flow_executions_prompt_flow_id_idx ON flow_executions (prompt_flow_id);
