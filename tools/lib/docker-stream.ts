/**
 * Docker's multiplexed stream format (exec output and the logs of a container without a TTY):
 * frames of an 8-byte header (stream type: 1 stdout, 2 stderr; bytes 4..7 the payload's length,
 * big-endian) and the payload. Whole bodies (demuxDockerStream) and a followed log, frame by frame
 * as its chunks arrive, into lines (DockerLineDecoder).
 */

/** A whole multiplexed body: its stdout and stderr. */
export function demuxDockerStream(buf: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let off = 0;
  while (off + 8 <= buf.length) {
    const type = buf[off];
    const size = buf.readUInt32BE(off + 4);
    const payload = buf.subarray(off + 8, off + 8 + size);
    if (type === 2) err.push(payload);
    else out.push(payload);
    off += 8 + size;
  }
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/**
 * A multiplexed stream as it arrives, into complete lines (without their newline), stdout and
 * stderr each line-buffered on its own: a chunk may end inside a header, a payload or a line.
 */
export class DockerLineDecoder {
  private pending: Buffer = Buffer.alloc(0);
  private readonly partial: Record<'out' | 'err', string> = { out: '', err: '' };

  /** The lines this chunk completes, in the order their frames came. */
  push(chunk: Buffer): string[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const lines: string[] = [];
    let off = 0;
    while (off + 8 <= this.pending.length) {
      const size = this.pending.readUInt32BE(off + 4);
      if (off + 8 + size > this.pending.length) break;
      const which = this.pending[off] === 2 ? 'err' : 'out';
      const text = this.partial[which] + this.pending.subarray(off + 8, off + 8 + size).toString('utf8');
      const parts = text.split('\n');
      this.partial[which] = parts.pop() ?? '';
      lines.push(...parts);
      off += 8 + size;
    }
    this.pending = this.pending.subarray(off);
    return lines;
  }

  /** What is left once the stream ended: unterminated last lines. */
  end(): string[] {
    const rest = [this.partial.out, this.partial.err].filter((l) => l !== '');
    this.partial.out = '';
    this.partial.err = '';
    return rest;
  }
}
