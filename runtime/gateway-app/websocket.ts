/**
 * A minimal RFC 6455 WebSocket server with Node built-ins: the handshake,
 * a frame codec (text, binary, continuation, ping/pong, close) and an echo.
 * Enough to show that an upgrade travels stage 1 → stage 2 → app; not a
 * general-purpose library (no extensions, no subprotocols).
 */
import { createHash } from 'crypto';
import type { IncomingMessage } from 'http';
import type { Duplex } from 'stream';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
export const MAX_MESSAGE_BYTES = 1 << 20;

export const OPCODES = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa } as const;

export interface Frame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
}

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2). */
export function acceptKey(key: string): string {
  return createHash('sha1').update(key + GUID).digest('base64');
}

/** One frame; `mask` is what a client sends (servers send unmasked frames). */
export function encodeFrame(opcode: number, payload: Buffer, opts: { fin?: boolean; mask?: Buffer } = {}): Buffer {
  const len = payload.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const maskLen = opts.mask ? 4 : 0;
  const out = Buffer.alloc(head + maskLen + len);
  out[0] = (opts.fin === false ? 0 : 0x80) | (opcode & 0x0f);
  const maskBit = opts.mask ? 0x80 : 0;
  if (head === 2) out[1] = maskBit | len;
  else if (head === 4) {
    out[1] = maskBit | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = maskBit | 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  if (opts.mask) {
    opts.mask.copy(out, head, 0, 4);
    for (let i = 0; i < len; i += 1) out[head + 4 + i] = payload[i] ^ opts.mask[i % 4];
  } else payload.copy(out, head);
  return out;
}

export class ProtocolError extends Error {
  constructor(
    readonly closeCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Incremental decoder of client frames (which must be masked). */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly requireMask = true) {}

  /** Feeds bytes; returns the complete frames. Throws ProtocolError on a violation. */
  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buf.length < 2) return frames;
      const b0 = this.buf[0];
      const b1 = this.buf[1];
      if (b0 & 0x70) throw new ProtocolError(1002, 'reserved bits set');
      const masked = (b1 & 0x80) !== 0;
      if (this.requireMask && !masked) throw new ProtocolError(1002, 'client frames must be masked');
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) return frames;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return frames;
        const big = this.buf.readBigUInt64BE(2);
        if (big > BigInt(MAX_MESSAGE_BYTES)) throw new ProtocolError(1009, 'frame too large');
        len = Number(big);
        off = 10;
      }
      if (len > MAX_MESSAGE_BYTES) throw new ProtocolError(1009, 'frame too large');
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode >= 0x8 && (len > 125 || !fin)) throw new ProtocolError(1002, 'invalid control frame');
      const total = off + (masked ? 4 : 0) + len;
      if (this.buf.length < total) return frames;
      const payload = Buffer.from(this.buf.subarray(off + (masked ? 4 : 0), total));
      if (masked) {
        const mask = this.buf.subarray(off, off + 4);
        for (let i = 0; i < payload.length; i += 1) payload[i] ^= mask[i % 4];
      }
      frames.push({ fin, opcode, payload });
      this.buf = this.buf.subarray(total);
    }
  }
}

/** Joins a message's data frames (text or binary, then continuations) up to MAX_MESSAGE_BYTES; a close code when the peer breaks the rules. */
class MessageAssembler {
  private parts: Buffer[] = [];
  private opcode = 0;
  private size = 0;

  /** The whole message once its last frame is in; undefined while it is incomplete. */
  add(f: Frame): { closeCode: number } | { opcode: number; message: Buffer } | undefined {
    if ((f.opcode === OPCODES.continuation) !== (this.parts.length > 0)) return { closeCode: 1002 };
    if (f.opcode !== OPCODES.continuation) this.opcode = f.opcode;
    this.size += f.payload.length;
    if (this.size > MAX_MESSAGE_BYTES) return { closeCode: 1009 };
    this.parts.push(f.payload);
    if (!f.fin) return undefined;
    const message = Buffer.concat(this.parts);
    this.parts = [];
    this.size = 0;
    if (this.opcode === OPCODES.text && !isUtf8(message)) return { closeCode: 1007 };
    return { opcode: this.opcode, message };
  }
}

/** Answers the upgrade (or refuses it with 400) and echoes every message back; `onMessage` sees each one. */
export function acceptEcho(req: IncomingMessage, socket: Duplex, head: Buffer = Buffer.alloc(0), onMessage: () => void = () => undefined): boolean {
  const key = req.headers['sec-websocket-key'];
  const upgrade = String(req.headers.upgrade ?? '').toLowerCase();
  if (upgrade !== 'websocket' || req.headers['sec-websocket-version'] !== '13' || typeof key !== 'string' || !/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return false;
  }
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`);
  const decoder = new FrameDecoder();
  const messages = new MessageAssembler();
  const close = (code: number): void => {
    const body = Buffer.alloc(2);
    body.writeUInt16BE(code, 0);
    socket.end(encodeFrame(OPCODES.close, body));
  };
  const onData = (chunk: Buffer): void => {
    let frames: Frame[];
    try {
      frames = decoder.push(chunk);
    } catch (err) {
      close(err instanceof ProtocolError ? err.closeCode : 1002);
      return;
    }
    for (const f of frames) {
      if (f.opcode === OPCODES.ping) socket.write(encodeFrame(OPCODES.pong, f.payload));
      else if (f.opcode === OPCODES.pong) continue;
      else if (f.opcode === OPCODES.close) {
        // Echo the status code back, then close (RFC 6455 §5.5.1).
        socket.end(encodeFrame(OPCODES.close, f.payload.subarray(0, 2)));
        return;
      } else if (f.opcode === OPCODES.text || f.opcode === OPCODES.binary || f.opcode === OPCODES.continuation) {
        const done = messages.add(f);
        if (done && 'closeCode' in done) {
          close(done.closeCode);
          return;
        }
        if (done) {
          onMessage();
          socket.write(encodeFrame(done.opcode, done.message));
        }
      } else {
        close(1002);
        return;
      }
    }
  };
  socket.on('data', onData);
  socket.on('error', () => socket.destroy());
  // Bytes that arrived with the upgrade request are the first frames.
  if (head.length > 0) onData(head);
  return true;
}

function isUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}
