'use strict';
// Build server: serves gateway build tarballs to the gateways of one environment.
// Deliberately tiny and strict (plain Node.js, no dependencies):
//   - only GET and HEAD (anything else: 405 with Allow),
//   - only request targets that are literally "/<name>.tar.gz" where <name> starts with a letter or
//     digit and has only [A-Za-z0-9._-]; no percent-encoding, no backslash, no query, no second
//     slash, no "..": checked on the raw request target BEFORE any decoding, so there is nothing to
//     normalize and no encoding trick can reach another path,
//   - the file must be a regular file directly in BUILD_DIR: opened with O_NOFOLLOW (a symlink is
//     refused, wherever it points) and checked with fstat on the opened descriptor (no race),
//   - everything else, including "/" (no listings) and dotfiles, is 404 with a fixed body.
const http = require('http');
const fs = require('fs');
const path = require('path');

const BUILD_DIR = fs.realpathSync(process.env.BUILD_DIR || '/srv/builds');
const PORT = Number(process.env.PORT || 8090);
const NAME_RE = /^\/([A-Za-z0-9][A-Za-z0-9._-]{0,200}\.tar\.gz)$/;

function log(entry) {
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), ...entry }) + '\n');
}

function refuse(req, res, status, reason) {
  const body = status === 405 ? 'method not allowed\n' : 'not found\n';
  const headers = { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), 'x-content-type-options': 'nosniff' };
  if (status === 405) headers.allow = 'GET, HEAD';
  res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
  log({ remote: req.socket.remoteAddress, method: req.method, target: req.url, status, reason });
}

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') return refuse(req, res, 405, 'method');
  const m = NAME_RE.exec(req.url || '');
  if (!m || m[1].includes('..')) return refuse(req, res, 404, 'name');
  const file = path.join(BUILD_DIR, m[1]);
  if (path.dirname(file) !== BUILD_DIR) return refuse(req, res, 404, 'name');

  fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK, (err, fd) => {
    if (err) return refuse(req, res, 404, err.code === 'ELOOP' ? 'symlink' : 'missing');
    fs.fstat(fd, (statErr, st) => {
      if (statErr || !st.isFile()) {
        fs.close(fd, () => undefined);
        return refuse(req, res, 404, 'not a regular file');
      }
      res.writeHead(200, {
        'content-type': 'application/gzip',
        'content-length': st.size,
        'last-modified': st.mtime.toUTCString(),
        'cache-control': 'no-store',
        'x-content-type-options': 'nosniff',
      });
      log({ remote: req.socket.remoteAddress, method: req.method, target: req.url, status: 200, bytes: st.size });
      if (req.method === 'HEAD') {
        fs.close(fd, () => undefined);
        return res.end();
      }
      // The descriptor pins the file: a concurrent `pack` renames a new file into place without
      // affecting a download in progress.
      const stream = fs.createReadStream('', { fd, autoClose: true });
      stream.on('error', () => res.destroy());
      stream.pipe(res);
      return undefined;
    });
    return undefined;
  });
  return undefined;
});
server.headersTimeout = 10000;
server.requestTimeout = 30000;
server.on('clientError', (_err, socket) => {
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
});

server.listen(PORT, '0.0.0.0', () => log({ msg: `serving *.tar.gz from ${BUILD_DIR} on :${PORT}` }));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    log({ msg: `${sig}: shutting down` });
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  });
}
