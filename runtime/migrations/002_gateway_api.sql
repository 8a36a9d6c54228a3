-- State of the API-server integration (runtime/http): gateway registration
-- tokens, one-time handshakes, retired gateway tokens and org data snapshots.

-- Per-gateway registration token (GATEWAY_TOKEN in the container, a stack secret),
-- stored hashed; /gateway/ready proves the caller is that gateway.
ALTER TABLE {{schema}}.gateways ADD COLUMN IF NOT EXISTS registration_token_hash bytea;

-- One row per (gateway, allocation): the handshake that hands the gateway its
-- organization. A handshake token is single use (consumed_at) and short-lived.
CREATE TABLE IF NOT EXISTS {{schema}}.gateway_sessions (
  gateway            text        NOT NULL,
  allocation_id      bigint      NOT NULL,
  organization_id    uuid        NOT NULL,
  handshake_hash     bytea       UNIQUE,
  handshake_expires  timestamptz,
  handshake_sent_at  timestamptz,
  consumed_at        timestamptz,
  loaded_at          timestamptz,
  PRIMARY KEY (gateway, allocation_id)
);

-- Tokens of released allocations, kept for a while so a late second
-- /gateway/stop is recognised (harmless) instead of looking like garbage.
CREATE TABLE IF NOT EXISTS {{schema}}.retired_tokens (
  token_hash      bytea       PRIMARY KEY,
  gateway         text        NOT NULL,
  organization_id uuid        NOT NULL,
  retired_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS retired_tokens_age_idx ON {{schema}}.retired_tokens (retired_at);

-- Org data snapshots pushed by gateways. The payload is the exact JSON text of
-- { yjs_state, gateway_state } as accepted (bytea, not jsonb: jsonb reorders
-- keys and normalises numbers, and a pull must give back what was pushed).
-- The newest version is current; a few older ones are kept for rollback.
CREATE TABLE IF NOT EXISTS {{schema}}.org_snapshots (
  organization_id uuid        NOT NULL,
  version         bigint      NOT NULL CHECK (version > 0),
  payload         bytea       NOT NULL,
  sha256          bytea       NOT NULL,
  gateway         text        NOT NULL,
  allocation_id   bigint,
  -- The gateway's own time of the snapshot (optional); pushes older than the current one are refused.
  snapshot_at     timestamptz,
  restored_from   bigint,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, version)
);
