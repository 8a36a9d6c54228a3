-- Gateway pool state. PostgreSQL is the source of truth; PowerDNS records and
-- nginx route files are derived from it (reconcile() rebuilds them).
-- {{schema}} is replaced by the allocator's quoted schema name.

CREATE SEQUENCE IF NOT EXISTS {{schema}}.allocation_seq;

CREATE TABLE IF NOT EXISTS {{schema}}.gateways (
  name              text        PRIMARY KEY,
  host              text        NOT NULL,
  http_port         integer     NOT NULL CHECK (http_port BETWEEN 1 AND 65535),
  vpn_port          integer     NOT NULL CHECK (vpn_port BETWEEN 1 AND 65535),
  -- registered: known, not yet ready; ready: can be claimed;
  -- allocating/releasing: effects in flight (lease_expires_at says until when the owner may work);
  -- allocated: DNS + route live; retired: removed from the inventory.
  state             text        NOT NULL DEFAULT 'registered'
                    CHECK (state IN ('registered', 'ready', 'allocating', 'allocated', 'releasing', 'retired')),
  -- One organization per gateway (a column) and one gateway per organization (UNIQUE).
  organization_id   uuid        UNIQUE,
  -- Fencing token: every claim takes a new value; late writers of an old claim match nothing.
  allocation_id     bigint,
  token_hash        bytea,
  state_since       timestamptz NOT NULL DEFAULT now(),
  lease_expires_at  timestamptz,
  last_heartbeat_at timestamptz,
  last_error        text,
  registered_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT org_iff_held CHECK ((state IN ('allocating', 'allocated', 'releasing')) = (organization_id IS NOT NULL)),
  CONSTRAINT lease_iff_transitional CHECK ((state IN ('allocating', 'releasing')) = (lease_expires_at IS NOT NULL)),
  -- Deferred so a renumbered pool can swap endpoints between names in one transaction.
  CONSTRAINT endpoint_unique UNIQUE (host, http_port) DEFERRABLE INITIALLY DEFERRED
);

-- The claim query: oldest ready gateway first (spreads wear), skipping rows other claims hold.
CREATE INDEX IF NOT EXISTS gateways_ready_idx ON {{schema}}.gateways (state_since, name) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS gateways_transitional_idx ON {{schema}}.gateways (lease_expires_at) WHERE state IN ('allocating', 'releasing');
CREATE UNIQUE INDEX IF NOT EXISTS gateways_token_idx ON {{schema}}.gateways (token_hash) WHERE token_hash IS NOT NULL;
