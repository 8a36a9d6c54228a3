/**
 * Messages between the soak orchestrator (soak/run.ts) and its allocator
 * worker processes (soak/worker.ts), over the Node IPC channel of `fork`.
 *
 * Workers are separate processes so a fault can SIGKILL one in the middle of
 * an operation, exactly like a deploy killing the API server.
 */

export type OpKind = 'allocate' | 'release' | 'push' | 'pull' | 'heartbeat' | 'reconcile' | 'reap';

export const OP_KINDS: readonly OpKind[] = ['allocate', 'release', 'push', 'pull', 'heartbeat', 'reconcile', 'reap'];

export interface WorkerInit {
  /** Worker slot (0..workers-1) and how many processes have held it; together they name the process. */
  slot: number;
  generation: number;
  envName: string;
  domain: string;
  publicIp: string;
  pgUrl: string;
  pgMax: number;
  schema: string;
  powerdns: { apiUrl: string; apiKey: string; zone: string; timeoutMs: number; database?: { connectionString: string } };
  nginx: {
    confDir: string;
    tls: { certPath: string; keyPath: string };
    listen: string;
    statusListen: string;
    testCommand: string[];
    reloadCommand: string[];
  };
  leaseMs: number;
  waitTimeoutMs: number;
  orgs: string[];
  lanes: number;
  weights: Record<OpKind, number>;
  seed: number;
  /**
   * Mean pause of a lane between two operations (uniform 0..2x): requests arrive
   * like an API server's, so a run lasts long enough for healthy stretches
   * between faults; the number of lanes (the concurrency) stays fixed.
   */
  thinkMs: number;
  /** After a retryable error a lane also backs off (uniform lo..hi ms), as a well-behaved caller does. */
  backoffMs: [number, number];
  /** An operation running longer than this is reported as a hang (a violation). */
  hangMs: number;
  /** reapStale's silence threshold. */
  reapSilenceMs: number;
  /** Largest generated snapshot (bytes of JSON text, roughly). */
  maxSnapshotBytes: number;
}

export interface OpError {
  /** AllocatorError code, or null for an untyped error (a violation). */
  code: string | null;
  retryable: boolean | null;
  message: string;
}

/** What an operation produced, for the orchestrator's books. */
export type OpResult =
  | { kind: 'allocate'; gateway: string; created: boolean }
  | { kind: 'release'; gateway: string }
  | { kind: 'push'; version: number; hash: string; bytes: number; storeSha256: string | null }
  | { kind: 'push-skipped'; reason: string }
  | { kind: 'pull'; version: number | null; hash: string | null; startedAt: number }
  | { kind: 'heartbeat'; gateway: string }
  | { kind: 'heartbeat-skipped'; reason: string }
  | { kind: 'reconcile'; recovered: number; repaired: number; orphansRemoved: number; inFlight: number; errors: Array<{ code: string; message: string }> }
  | { kind: 'reap'; released: number; errors: Array<{ code: string; message: string }> };

export type WorkerMessage =
  | { t: 'ready'; slot: number; generation: number; pid: number }
  | { t: 'op-start'; id: string; op: OpKind; org: string | null; at: number }
  | { t: 'op-end'; id: string; op: OpKind; org: string | null; at: number; ms: number; ok: true; result: OpResult }
  | { t: 'op-end'; id: string; op: OpKind; org: string | null; at: number; ms: number; ok: false; error: OpError }
  /** Sent (and delivered to the pipe) BEFORE the push is issued, so a push that lands but is never acknowledged is still known. */
  | { t: 'push-intent'; id: string; org: string; hash: string; bytes: number; at: number }
  | { t: 'hang'; id: string; op: OpKind; org: string | null; ms: number }
  | { t: 'crash'; message: string }
  | { t: 'done'; metrics: Record<string, number> };

/** `slow`: think-time multiplier while a fault is overdue (operations keep flowing, so a kill still lands mid-operation). */
export type OrchestratorMessage = { t: 'init'; init: WorkerInit } | { t: 'slow'; factor: number } | { t: 'stop' };
