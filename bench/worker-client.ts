/** The orchestrator's side of the measured allocator process (bench/worker.ts), over IPC. */
import { ChildProcess, fork } from 'child_process';
import type { BurstResult, ProfileSummary, Request, Response } from './protocol';

type Call = Request extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

export class Worker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Response) => void; reject: (e: Error) => void }>();
  readonly pid: number;

  constructor(private readonly child: ChildProcess) {
    this.pid = child.pid as number;
    child.on('message', (m: Response) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m);
      else p.reject(new Error(`allocator process: ${m.error}`));
    });
    child.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`allocator process exited (${code})`));
      this.pending.clear();
    });
  }

  /** `workerJs`: the worker transpiled to plain JavaScript, so no ts-node or compiler sits in its memory. */
  static start(workerJs: string): Worker {
    return new Worker(fork(workerJs, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] }));
  }

  call(req: Call): Promise<Response> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ ...req, id } as Request);
    });
  }

  async burst(kind: 'allocate' | 'release', orgs: string[], concurrency: number, check = true): Promise<BurstResult> {
    const r = await this.call({ type: 'burst', kind, orgs, concurrency, check });
    if (r.ok && r.type === 'burst') return r.result;
    throw new Error('unexpected answer to burst');
  }

  async profile(action: 'start' | 'stop'): Promise<ProfileSummary | undefined> {
    const r = await this.call({ type: 'profile', action });
    return r.ok && r.type === 'profile' ? r.profile : undefined;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
  }
}
