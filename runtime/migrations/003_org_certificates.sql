-- Per-organization TLS certificates (org-<uuid>.<domain>, *.org-<uuid>.<domain>),
-- managed by runtime/tls/org-certificates.ts. PostgreSQL is the source of truth;
-- the bundle files under <nginx confDir>/certs/ are derived (reconcile() rewrites them).
-- A row outlives its organization's allocations so a returning organization
-- reuses its certificate instead of ordering a new one (Let's Encrypt: 50 new
-- certificates per registered domain per week).

CREATE TABLE IF NOT EXISTS {{schema}}.org_certificates (
  organization_id  uuid        PRIMARY KEY,
  -- The name set the row is for; a different set (domain changed) means a new certificate.
  names            text[]      NOT NULL,
  -- 'dev-ca' | 'acme': a certificate from another issuer is not reused (dev -> prod switch).
  issuer           text        NOT NULL,
  cert_pem         text,
  -- AES-256-GCM: version(1) || key id(8) || nonce(12) || tag(16) || ciphertext; the
  -- organization id is the additional authenticated data, so rows cannot be swapped.
  key_encrypted    bytea,
  serial           text,
  not_before       timestamptz,
  not_after        timestamptz,
  issued_at        timestamptz,
  -- First issuance for this name set: what counts against the new-certificate budget (renewals do not).
  first_issued_at  timestamptz,
  -- Back-off of failed issuance (persisted so restarts and other processes honour it).
  failures         integer     NOT NULL DEFAULT 0,
  retry_after      timestamptz,
  rate_limited     boolean     NOT NULL DEFAULT false,
  last_error       text,
  -- Cross-process issuance lease: one order per organization at a time.
  issuing_token    uuid,
  issuing_until    timestamptz,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT org_certificates_complete CHECK (
    (cert_pem IS NULL) = (key_encrypted IS NULL) AND (cert_pem IS NULL) = (not_after IS NULL)
  ),
  CONSTRAINT org_certificates_lease CHECK ((issuing_token IS NULL) = (issuing_until IS NULL))
);

CREATE INDEX IF NOT EXISTS org_certificates_budget_idx ON {{schema}}.org_certificates (first_issued_at) WHERE first_issued_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS org_certificates_expiry_idx ON {{schema}}.org_certificates (not_after) WHERE not_after IS NOT NULL;
