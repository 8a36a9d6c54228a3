-- Host quarantine (runtime/host-health.ts): a free gateway whose Docker host stopped
-- answering is 'unreachable' (never claimed) until the host answers again.
ALTER TABLE {{schema}}.gateways DROP CONSTRAINT IF EXISTS gateways_state_check;
ALTER TABLE {{schema}}.gateways ADD CONSTRAINT gateways_state_check
  CHECK (state IN ('registered', 'ready', 'allocating', 'allocated', 'releasing', 'retired', 'unreachable'));
