-- Builds: every version of a projection lives in its own schema.
--
-- A build is one schema (`rm_<name>_v<N>`, or `rm_<name>_v<N>_r<k>` for a
-- forced rebuild of the same version) holding that version's tables under
-- their usual names, with its own checkpoint row here. At most one build per
-- projection is `live`: the views in `public` (`public.rm_listings`, …) that
-- the queries read select from its tables. A build that is not live is being
-- built (a rebuild) while the live one keeps serving; one transaction
-- switches the views and the `live` flags, and the build it replaced is
-- `retired`, then dropped with its schema.
--
-- `indexed` says whether a build's secondary indexes exist: a rebuild loads
-- in bulk without them and creates them before it switches.
--
-- Leadership generations now come from one sequence, so a generation names
-- one leadership term of one build and is never reused, even after a build
-- and its row are dropped.
--
-- The read-model tables created by the earlier migrations move into the
-- schema of the build their checkpoint row describes (data, indexes and
-- checkpoint kept: no rebuild needed); the tables of read models that never
-- ran are empty and dropped (the runtime creates their first build).

ALTER TABLE projection_checkpoints
    ADD COLUMN schema_name  TEXT,
    ADD COLUMN live         BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN indexed      BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN retired      BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN live_since   TIMESTAMPTZ;

UPDATE projection_checkpoints
    SET schema_name = 'rm_' || name || '_v' || version,
        live = true, indexed = true, live_since = now();

ALTER TABLE projection_checkpoints DROP CONSTRAINT projection_checkpoints_pkey;
ALTER TABLE projection_checkpoints ALTER COLUMN schema_name SET NOT NULL;
ALTER TABLE projection_checkpoints ADD PRIMARY KEY (schema_name);
CREATE UNIQUE INDEX projection_checkpoints_one_live ON projection_checkpoints (name) WHERE live;
CREATE INDEX projection_checkpoints_name_idx ON projection_checkpoints (name);

CREATE SEQUENCE projection_generations;
SELECT setval('projection_generations',
              COALESCE((SELECT max(generation) FROM projection_checkpoints), 0) + 1, false);

DO $$
DECLARE
    build   RECORD;
    tbl     TEXT;
    legacy  TEXT[] := ARRAY['rm_accounts', 'rm_account_balances', 'rm_listings',
                            'rm_orders', 'rm_order_lines', 'rm_reviews'];
BEGIN
    FOR build IN SELECT name, schema_name FROM projection_checkpoints LOOP
        EXECUTE format('CREATE SCHEMA %I', build.schema_name);
        FOREACH tbl IN ARRAY CASE build.name
                WHEN 'accounts' THEN ARRAY['rm_accounts', 'rm_account_balances']
                WHEN 'listings' THEN ARRAY['rm_listings']
                WHEN 'orders'   THEN ARRAY['rm_orders', 'rm_order_lines']
                WHEN 'reviews'  THEN ARRAY['rm_reviews']
                ELSE ARRAY[]::TEXT[] END
        LOOP
            EXECUTE format('ALTER TABLE public.%I SET SCHEMA %I', tbl, build.schema_name);
            EXECUTE format('CREATE VIEW public.%I AS SELECT * FROM %I.%I',
                           tbl, build.schema_name, tbl);
        END LOOP;
    END LOOP;
    FOREACH tbl IN ARRAY legacy LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'public' AND c.relname = tbl AND c.relkind = 'r') THEN
            EXECUTE format('DROP TABLE public.%I', tbl);
        END IF;
    END LOOP;
END
$$;
