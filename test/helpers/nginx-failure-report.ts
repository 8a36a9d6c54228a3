/**
 * Mocha root hook (loaded by the integration and e2e configs): after a failed
 * test, prints what the suites' stage-1 nginx instances wrote to their error
 * logs since the last report. nginx reports a refused reload (a listen address
 * in use, a certificate it cannot read) only there, so a failure that says
 * "nginx did not load …" is diagnosable from the CI log alone.
 */
import type { Context } from 'mocha';
import { liveStage1Nginx } from './stage1-nginx';

export const mochaHooks = {
  afterEach(this: Context): void {
    if (this.currentTest?.state !== 'failed') return;
    for (const nginx of liveStage1Nginx()) {
      const lines = nginx.newErrorLogLines();
      if (lines.length > 0) console.log(`      stage-1 nginx ${nginx.prefix} error log (new lines):\n${lines.map((l) => `        ${l}`).join('\n')}`);
    }
  },
};
